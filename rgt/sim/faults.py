"""Injected faults and request accounting for the emulator's HTTP API."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    """Answer `status` (with Retry-After when set); `after_commit`: do the work first."""

    status: int
    retry_after: float | None = None
    after_commit: bool = False

    def body(self) -> dict[str, object]:
        """The JSON body vast.ai answers such a status with."""
        if self.status == 429:
            return {
                "success": False,
                "error": "rate_limited",
                "msg": "API requests too frequent (injected by the emulator)",
                "detail": "API requests too frequent endpoint threshold=1.0",
            }
        return {
            "success": False,
            "error": "server_error",
            "msg": f"injected HTTP {self.status} (emulator fault)",
        }


class Faults:
    """The next N API requests (after `skip` untouched ones) fail; plus added latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._remaining = 0
        self._skip = 0
        self._fault = Fault(503)
        self.latency = 0.0
        self.requests: Counter[tuple[str, str]] = Counter()

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: float | None = None,
        after_commit: bool = False,
        skip: int = 0,
    ) -> None:
        """Fail the next `n` API requests after letting `skip` through; n=0 clears."""
        if n < 0 or skip < 0:
            raise ValueError(f"fail_next needs n >= 0 and skip >= 0, got n={n}, skip={skip}")
        if n and not (status == 429 or 500 <= status <= 599):
            raise ValueError(f"fail_next status must be 429 or 5xx, got {status}")
        with self._lock:
            self._remaining = int(n)
            self._skip = int(skip)
            self._fault = Fault(int(status), retry_after, bool(after_commit))

    def take(self) -> Fault | None:
        """The fault for this request, if one is due."""
        with self._lock:
            if self._remaining <= 0:
                return None
            if self._skip > 0:
                self._skip -= 1
                return None
            self._remaining -= 1
            return self._fault

    def count(self, method: str, path: str) -> None:
        """Record one request."""
        with self._lock:
            self.requests[(method.upper(), path)] += 1

    def request_count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests seen with this method (any if None) and path (a trailing `*` = prefix)."""
        with self._lock:
            items = list(self.requests.items())
        total = 0
        for (seen_method, seen_path), number in items:
            if method is not None and seen_method != method.upper():
                continue
            if path is not None:
                if path.endswith("*"):
                    if not seen_path.startswith(path[:-1]):
                        continue
                elif seen_path != path:
                    continue
            total += number
        return total
