"""Bounded retries for platform API calls: which failures are transient, and how long to wait.

One policy object bounds both the number of attempts and the total time, and honours a
server's `Retry-After`. Providers call the SDK with its own retry loop turned off (one attempt
per call), so attempts are counted here and only here: retries never multiply.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

# 429 = rate limited; 500/502/503/504 = the platform or its gateway hiccupped.
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: at most `attempts` tries within `total_seconds` of waiting and working."""

    attempts: int = 5
    total_seconds: float = 90.0
    first_backoff: float = 0.5
    max_backoff: float = 10.0
    # The longest Retry-After rgt waits out; a longer one fails fast with a clear message.
    max_retry_after: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), with jitter."""
        base = min(self.first_backoff * (2 ** (attempt - 1)), self.max_backoff)
        # Full-range jitter on the upper half spreads out clients that failed together.
        return base * (0.5 + random.random() / 2)


@dataclass
class RetryClock:
    """Tracks one call's attempts against a policy."""

    policy: RetryPolicy
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.started = self.monotonic()
        self.attempt = 0

    def start_attempt(self) -> int:
        """Count a new attempt; returns its 1-based number."""
        self.attempt += 1
        return self.attempt

    def wait_before_retry(self, retry_after: float | None) -> float | None:
        """Sleep before the next attempt and return the wait, or None when the budget is spent.

        `retry_after` is the server's requested wait (seconds), if it sent one.
        """
        if self.attempt >= self.policy.attempts:
            return None
        if retry_after is not None:
            if retry_after > self.policy.max_retry_after:
                return None
            wait = max(retry_after, 0.0)
        else:
            wait = self.policy.backoff(self.attempt)
        remaining = self.policy.total_seconds - (self.monotonic() - self.started)
        if wait > remaining:
            return None
        self.sleep(wait)
        return wait


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (the delta-seconds form; HTTP dates are not used by
    vast.ai), or None when absent or unparseable."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
