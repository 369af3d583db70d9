"""The emulator's clock: wall time, optionally sped up or frozen, plus manual jumps.

Everything that bills or times out in the emulator reads `SimClock.now()`, so a test can freeze
time (`time_scale=0`) and script a timeline exactly with `advance(seconds)`, and `rgt sim serve`
can run a day of billing in minutes (`time_scale=60`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class SimClock:
    """Simulated epoch seconds: start + elapsed real time x `time_scale` + every `advance()`."""

    def __init__(self, time_scale: float = 1.0, start: float | None = None) -> None:
        if time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {time_scale}")
        self._lock = threading.Lock()
        self._real_origin = time.monotonic()
        self._sim_origin = time.time() if start is None else float(start)
        self._time_scale = float(time_scale)
        self._listeners: list[Callable[[], None]] = []

    @property
    def time_scale(self) -> float:
        """Simulated seconds per real second (0 = frozen: only `advance` moves time)."""
        return self._time_scale

    def set_time_scale(self, time_scale: float) -> None:
        """Change the speed from now on (time already elapsed keeps its old speed)."""
        if time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {time_scale}")
        with self._lock:
            self._sim_origin = self._now_locked()
            self._real_origin = time.monotonic()
            self._time_scale = float(time_scale)

    def now(self) -> float:
        """Simulated time now, in epoch seconds."""
        with self._lock:
            return self._now_locked()

    def _now_locked(self) -> float:
        return self._sim_origin + (time.monotonic() - self._real_origin) * self._time_scale

    def real_seconds(self, sim_seconds: float) -> float:
        """How long `sim_seconds` take in real time (infinite when frozen)."""
        return float("inf") if self._time_scale == 0 else sim_seconds / self._time_scale

    def advance(self, seconds: float) -> None:
        """Jump forward `seconds`; whatever falls due in between happens before this returns."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, got advance({seconds})")
        with self._lock:
            self._sim_origin += float(seconds)
        for listener in list(self._listeners):
            listener()

    def on_advance(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every `advance()` (the emulator settles due events)."""
        self._listeners.append(listener)
