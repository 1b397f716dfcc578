"""Graceful stop on SIGINT / SIGTERM: the first signal asks the loop to stop after the current
optimiser step; a second one aborts at once (``KeyboardInterrupt``).

The loop polls :attr:`GracefulStop.requested` after every step, so no checkpoint is ever written
from inside a signal handler.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """A context manager that turns the first SIGINT / SIGTERM into a stop request.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None  # the signal's name once one arrived
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"second {name}: aborted without saving")
        self.requested = name
