"""Read a file the user named (a profile, a job request, a pulled manifest) with bounds.

A path on the command line can be anything: `/dev/zero` (endless), a FIFO (a plain open waits
for a writer forever), a directory, or a file far bigger than any real one. Each is refused
before its content is read: the file is opened non-blocking (a FIFO opens at once), must be a
regular file (fstat), and must fit a cap checked on its size first; the read itself stops at
cap + 1 bytes, so a file that grows (or a filesystem that misreports sizes) is still bounded.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class InputFileError(Exception):
    """A file rgt will not read; `reason` is a phrase to follow the file's name."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def size_text(size: int) -> str:
    """Bytes as people write a limit: '1 MiB (1,048,576 bytes)'."""
    mib = size / (1024 * 1024)
    whole = f"{mib:g} MiB" if mib >= 1 else f"{size / 1024:g} KiB"
    return f"{whole} ({size:,} bytes)"


def read_input_file(path: str | Path, *, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` of them.

    Raises InputFileError (never blocks, never reads past max_bytes + 1) for a missing or
    unreadable file, anything but a regular file, and a file over the cap."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a file")
            raise InputFileError(path, f"is {kind}, not a regular file")
        if info.st_size > max_bytes:
            raise InputFileError(path, _too_big(max_bytes, info.st_size))
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:  # it grew past the cap while being read (or its size lied)
            raise InputFileError(path, _too_big(max_bytes, None))
        return b"".join(chunks)
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _too_big(max_bytes: int, size: int | None) -> str:
    found = f"{size:,} bytes, " if size is not None else ""
    return f"is {found}larger than rgt reads ({size_text(max_bytes)} at most)"
