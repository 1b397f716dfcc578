"""``--time-budget``: train for a wall-clock duration instead of a fixed number of epochs.

Durations read as ``"90s"``, ``"20m"``, ``"1.5h"`` or a plain number of seconds.

How the budget drives the run:

* The learning-rate decay follows the *elapsed fraction* of the budget, not the step count:
  ``progress = elapsed / (budget - reserve)``, clamped to [0, 1], where ``reserve`` is how long
  the latest validation took (0 before the first one). Warm-up still counts steps.
* Training steps stop once ``progress`` reaches 1 (mid-epoch if need be); that epoch is then
  validated and checkpointed as usual, so validation sits inside the budget, up to the error of
  predicting its length from the previous one. The first epoch has no such estimate, so a run
  may overshoot by one validation.
* ``final_reserve`` seconds (``train.final_reserve``, set by the planner from a measured
  estimate) are kept at the end for the test evaluation, so the whole run fits the budget. The
  clock may start before training does (``started``): planning and the data check count.
* Elapsed time is stored in checkpoints: a resumed run continues the same budget. Because the
  schedule reads a clock, a budgeted run is not bit-for-bit repeatable (an epoch-count run is).
"""

from __future__ import annotations

import re
import time

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds in ``value``: a number of seconds or a string like ``90s``, ``20m``, ``1.5h``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(value).lower())
        if match is None:
            raise ValueError(
                f"train.time_budget {value!r} is not a duration; write e.g. 90s, 20m, 1.5h or "
                f"a number of seconds"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not seconds > 0:
        raise ValueError(f"train.time_budget must be > 0 seconds; got {value!r}")
    return seconds


class TimeBudget:
    """Wall-clock accounting for one run (a resumed run continues it with :meth:`continue_from`)."""

    def __init__(
        self, seconds: float, final_reserve: float = 0.0, started: float | None = None
    ) -> None:
        self.seconds = seconds
        self.final_reserve = final_reserve
        self._started = time.perf_counter() if started is None else started
        self.validation_reserve = 0.0

    def continue_from(self, spent: float) -> None:
        """Count ``spent`` seconds (a resumed run's) as already used, from now on."""
        self._started = time.perf_counter() - spent

    @property
    def elapsed(self) -> float:
        """Seconds spent so far, including those before a resume."""
        return time.perf_counter() - self._started

    def progress(self) -> float:
        """The fraction of the training time used, in [0, 1] (see the module docstring)."""
        training_seconds = max(self.seconds - self.validation_reserve - self.final_reserve, 1e-9)
        return min(max(self.elapsed / training_seconds, 0.0), 1.0)

    @property
    def remaining(self) -> float:
        """Seconds of the whole budget left (negative once over)."""
        return self.seconds - self.elapsed

    def exhausted(self) -> bool:
        """Whether training steps should stop now."""
        return self.progress() >= 1.0
