"""Drive `rgt` on a real pseudo-terminal (stdlib pty), the way a human at a terminal does.

The child gets the pty as stdin/stdout/stderr AND as its controlling terminal, so /dev/tty and
getpass behave exactly as for a person typing. Used by the approval and end-to-end tests.
"""

from __future__ import annotations

import os
import pty
import select
import sys
import time


class PtyProcess:
    """`python -m rgt ARGS` on a pty; `expect` output, `send` lines, `wait` for the exit code."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, command: list[str] | None = None
    ) -> None:
        # `command`: run this argv (e.g. rgt through sudo as another user) instead of rgt.
        argv = command or [sys.executable, "-m", "rgt", *args]
        pid, fd = pty.fork()
        if pid == 0:  # child: the pty is our controlling terminal
            try:
                os.execvpe(argv[0], argv, dict(os.environ if env is None else env))
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self.output = b""
        self.returncode: int | None = None

    def expect(self, text: str, timeout: float = 20.0) -> str:
        """Read until `text` appears in the output; returns everything read so far."""
        deadline = time.monotonic() + timeout
        needle = text.encode()
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                raise AssertionError(f"did not see {text!r}; output so far:\n{self.text}")
        return self.text

    def send(self, line: str) -> None:
        """Type a line and press Enter."""
        os.write(self.fd, line.encode() + b"\r")

    def wait(self, timeout: float = 30.0) -> int:
        """Drain output and return the exit code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.05):
                    pass
                os.close(self.fd)
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
            self._read(0.05)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"rgt did not exit; output:\n{self.text}")

    @property
    def text(self) -> str:
        """Everything the child wrote, decoded."""
        return self.output.decode("utf-8", "replace")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += chunk
        return bool(chunk)
