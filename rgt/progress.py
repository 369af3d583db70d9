"""A small progress bar on stderr, drawn only when stderr is a terminal.

Reusable by any long step (copy, hash, upload):

    bar = ProgressBar("pull", total=bytes_total)
    bar.update(done_bytes, note="ckpt/step_100.pt")
    bar.finish()

On a non-TTY stderr (CI, pipes, an agent's captured output) it stays silent, so logs are not
flooded with carriage returns. Redraws are throttled to ~10 per second.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_REDRAW_SECONDS = 0.1


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


class ProgressBar:
    """A one-line byte progress bar: label, bar, done/total, rate, and an optional note."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        width: int = 28,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_tty(self.stream) if enabled is None else enabled
        self.width = width
        self.done = 0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def update(self, done: int, *, total: int | None = None, note: str | None = None) -> None:
        """Set the absolute progress (bytes done) and redraw if due."""
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if not self.enabled or now - self._last_draw < _REDRAW_SECONDS:
            return
        self._last_draw = now
        self._draw(note)

    def finish(self, note: str | None = None) -> None:
        """Draw the final state and end the line."""
        if not self.enabled:
            return
        self._draw(note)
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, note: str | None) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = f"{human_bytes(self.done / elapsed)}/s"
        if self.total:
            fraction = min(max(self.done / self.total, 0.0), 1.0)
            filled = int(fraction * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            amount = f"{human_bytes(self.done)}/{human_bytes(self.total)} {fraction:6.1%}"
        else:
            bar = "?" * self.width
            amount = human_bytes(self.done)
        line = f"{self.label} [{bar}] {amount} {rate}"
        if note:
            line += f" {note[-40:]}"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._drawn = True


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
