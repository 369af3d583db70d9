"""Files a user can name that are not small regular files, and a way to run `rgt` on them that
cannot take the machine down: the child's address space is capped (an unbounded read of
/dev/zero ends in MemoryError instead of eating every GB), and a child still running after the
timeout (blocked on a FIFO) fails the test instead of hanging it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

# Room for rgt and its imports (~100 MB), far below what an unbounded read would reach.
CHILD_MEMORY_BYTES = 1024 * 1024 * 1024


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))


def run_rgt_bounded(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m rgt ARGS` with its memory capped; fails the test if it is still running after
    `timeout` seconds (a read that blocks forever), killing it."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "rgt", *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            preexec_fn=_cap_memory,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"rgt {' '.join(args)} still running after {timeout:.0f} s (blocked?)")


def hostile_file(kind: str, where: Path, *, size: int = 0) -> Path:
    """A path under `where` (or /dev/zero) that is `kind`: fifo, dev-zero, directory, or
    oversized (a sparse regular file of `size` bytes: no disk space used)."""
    path = where / f"{kind}.input"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        return Path("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "oversized":
        with open(path, "wb") as handle:
            handle.truncate(size)
    else:
        raise ValueError(kind)
    return path


# What each kind's one-line refusal says.
REFUSALS = {
    "fifo": "is a FIFO (named pipe), not a regular file",
    "dev-zero": "is a character device, not a regular file",
    "directory": "is a directory, not a regular file",
    "oversized": "larger than rgt reads",
}
