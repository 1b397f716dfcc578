"""Parse a loss spec such as ``ce:0.7,dice:0.3`` into (name, weight) terms.

The spec is a comma-separated weighted sum so a run's loss fits in one config string and one CLI
flag. A bare name means weight 1. Weights must be finite and non-negative (a zero weight keeps the
term for logging only) and at least one must be positive.
"""

from __future__ import annotations

import math

LOSS_NAMES = ("bce", "ce", "dice", "focal")
"""Names accepted in a loss spec."""

SPEC_EXAMPLE = "ce:0.7,dice:0.3"


def parse_loss_spec(spec: str) -> list[tuple[str, float]]:
    """``"ce:0.7,dice:0.3"`` -> ``[("ce", 0.7), ("dice", 0.3)]``; ValueError when malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise _spec_error(spec, "it is empty")
    terms: list[tuple[str, float]] = []
    for item in spec.split(","):
        name, weight = _parse_term(spec, item)
        if name in (seen for seen, _ in terms):
            raise _spec_error(spec, f"{name!r} appears twice; give each loss once")
        terms.append((name, weight))
    if not any(weight > 0 for _, weight in terms):
        raise _spec_error(spec, "every weight is 0; at least one must be positive")
    return terms


def _parse_term(spec: str, item: str) -> tuple[str, float]:
    name, sep, raw_weight = item.partition(":")
    name = name.strip().lower()
    if not name:
        raise _spec_error(spec, f"term {item.strip()!r} has no loss name")
    if name not in LOSS_NAMES:
        raise _spec_error(spec, f"unknown loss name {name!r}")
    if not sep:
        return name, 1.0
    try:
        weight = float(raw_weight)
    except ValueError:
        raise _spec_error(
            spec, f"weight {raw_weight.strip()!r} of {name!r} is not a number"
        ) from None
    if not math.isfinite(weight) or weight < 0:
        raise _spec_error(spec, f"weight {weight} of {name!r} must be finite and >= 0")
    return name, weight


def _spec_error(spec: object, problem: str) -> ValueError:
    return ValueError(
        f"loss spec {spec!r}: {problem}. Write a weighted sum of names separated by commas, "
        f"e.g. {SPEC_EXAMPLE!r} (a bare name means weight 1); "
        f"accepted names: {', '.join(LOSS_NAMES)}"
    )
