"""Injected faults and request accounting for the emulator's HTTP API.

A fault is armed for the next N API requests (`/api/...`; after `skip` untouched ones), or only
for those whose method and path match (`method`, `path`; a trailing `*` on the path is a
prefix). What the client then sees:

* a status (`429`, a `5xx`, or `404`: vast.ai's "no such instance" body, as a flaky show can
  answer for a box that exists), with Retry-After when set; `after_commit` carries the request
  out first, so only the answer says it failed;
* `cut: "connection"`: the request is carried out and its real answer starts (status line,
  headers with the full Content-Length) but the connection closes after half of the body: the
  client reads an incomplete body (requests raises ChunkedEncodingError);
* `cut: "body"`: the request is carried out and answered with its real status, but the body is
  cut in half and the Content-Length says so: a complete HTTP answer whose JSON does not parse.

A cut answer is always one whose work is done: that is what makes it dangerous for a create.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

# How an answer can be cut off (see the module docstring).
CUT_KINDS = ("connection", "body")


@dataclass(frozen=True)
class Fault:
    """Answer `status` (with Retry-After when set); `after_commit`: do the work first; `cut`:
    do the work and cut its real answer short instead of answering `status`."""

    status: int
    retry_after: float | None = None
    after_commit: bool = False
    cut: str | None = None

    def body(self) -> dict[str, object]:
        """The JSON body vast.ai answers such a status with."""
        if self.status == 429:
            return {
                "success": False,
                "error": "rate_limited",
                "msg": "API requests too frequent (injected by the emulator)",
                "detail": "API requests too frequent endpoint threshold=1.0",
            }
        if self.status == 404:
            return {
                "success": False,
                "error": "no_such_instance",
                "msg": "Instance not found (injected 404: emulator fault)",
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
        self._method: str | None = None
        self._path: str | None = None
        self.latency = 0.0
        self.requests: Counter[tuple[str, str]] = Counter()

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: float | None = None,
        after_commit: bool = False,
        skip: int = 0,
        *,
        cut: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Fail the next `n` matching API requests after letting `skip` matching ones through;
        n=0 clears. `method`/`path` (None: any) choose which requests count."""
        if n < 0 or skip < 0:
            raise ValueError(f"fail_next needs n >= 0 and skip >= 0, got n={n}, skip={skip}")
        if cut is not None and cut not in CUT_KINDS:
            raise ValueError(f"fail_next cut must be one of {', '.join(CUT_KINDS)}, got {cut!r}")
        if n and cut is None and not (status in (404, 429) or 500 <= status <= 599):
            raise ValueError(f"fail_next status must be 429, 404 or 5xx, got {status}")
        with self._lock:
            self._remaining = int(n)
            self._skip = int(skip)
            # A cut answer is the real one cut short: its work is always done.
            done_first = bool(after_commit) or cut is not None
            self._fault = Fault(int(status), retry_after, done_first, cut)
            self._method = method.upper() if method else None
            self._path = path or None

    def take(self, method: str = "GET", path: str = "/") -> Fault | None:
        """The fault for this request, if one is due."""
        with self._lock:
            if self._remaining <= 0 or not self._matches(method, path):
                return None
            if self._skip > 0:
                self._skip -= 1
                return None
            self._remaining -= 1
            return self._fault

    def _matches(self, method: str, path: str) -> bool:
        if self._method is not None and method.upper() != self._method:
            return False
        return self._path is None or _path_matches(path, self._path)

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
            if path is not None and not _path_matches(seen_path, path):
                continue
            total += number
        return total


def _path_matches(seen: str, pattern: str) -> bool:
    """`seen` is `pattern` (a trailing slash on either side does not matter: vast.ai serves
    both forms), or starts with it when the pattern ends in `*`."""
    if pattern.endswith("*"):
        return seen.startswith(pattern[:-1])
    return seen.rstrip("/") == pattern.rstrip("/")
