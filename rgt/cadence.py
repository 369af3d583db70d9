"""Checkpoint cadence: how often to save so a preemption costs the least expected work.

Young's first-order optimum (refined by Daly) for the interval between checkpoints is

    W = sqrt(2 * mu * C)

with mu the mean time between failures (here: preemptions) and C the cost of writing one
checkpoint. Saving more often wastes time writing; less often loses more work per preemption.
The approximation holds while C is much smaller than mu.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)")


class DurationError(ValueError):
    """A duration string that cannot be read (the message says what is allowed)."""


def parse_duration(text: str) -> float:
    """Seconds in '3h', '30s', '1h30m', '2.5min', '250ms' or a bare number of seconds ('90').

    Raises DurationError for anything else, zero, or negative values.
    """
    cleaned = text.strip().lower()
    allowed = "a positive duration such as 30s, 5m, 3h, 1h30m, 250ms (units: ms s m h d)"
    if not cleaned:
        raise DurationError(f"empty duration; expected {allowed}")
    try:
        seconds = float(cleaned)
    except ValueError:
        position, seconds = 0, 0.0
        for match in _PART.finditer(cleaned):
            between = cleaned[position : match.start()]
            unit = match[2]
            if between.strip() or unit not in _UNITS:
                raise DurationError(f"cannot read duration {text!r}; expected {allowed}") from None
            seconds += float(match[1]) * _UNITS[unit]
            position = match.end()
        if position == 0 or cleaned[position:].strip():
            raise DurationError(f"cannot read duration {text!r}; expected {allowed}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        what = "positive" if math.isfinite(seconds) or math.isnan(seconds) else "finite"
        raise DurationError(f"duration {text!r} must be {what}; expected {allowed}")
    return seconds


@dataclass(frozen=True)
class Cadence:
    """The recommended checkpoint interval."""

    mtbf_seconds: float
    checkpoint_cost_seconds: float
    interval_seconds: float
    step_seconds: float | None = None
    interval_steps: int | None = None
    overhead_fraction: float = 0.0  # expected share of time spent writing + redoing lost work

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready form."""
        return {
            "mtbf_seconds": self.mtbf_seconds,
            "checkpoint_cost_seconds": self.checkpoint_cost_seconds,
            "interval_seconds": self.interval_seconds,
            "step_seconds": self.step_seconds,
            "interval_steps": self.interval_steps,
            "overhead_fraction": self.overhead_fraction,
        }


def young_daly(mtbf: float, checkpoint_cost: float, step_time: float | None = None) -> Cadence:
    """Checkpoint every W = sqrt(2*mtbf*cost) seconds; with a step time, every floor(W/step)
    steps (at least 1), the interval then being that many whole steps."""
    interval = math.sqrt(2.0 * mtbf * checkpoint_cost)
    steps = None
    if step_time is not None:
        steps = max(1, math.floor(interval / step_time))
        interval = steps * step_time
    # First-order expected overhead: C/W for writing, W/(2*mu) for work redone after a failure.
    overhead = checkpoint_cost / interval + interval / (2.0 * mtbf)
    return Cadence(mtbf, checkpoint_cost, interval, step_time, steps, overhead)


def format_seconds(seconds: float) -> str:
    """'1h 02m 05s' style for people."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"
