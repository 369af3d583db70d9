"""A real small disk for full-disk tests: a tmpfs of a given size (mounting needs root; where it
is not permitted the test is skipped, saying why), and a way to fill it to the last byte."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(where: Path, kib: int) -> Iterator[Path]:
    """A fresh tmpfs of `kib` KiB mounted on the new directory `where`, unmounted on exit."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(disk: Path) -> None:
    """Take every free byte of `disk` (dd stops at ENOSPC)."""
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4096"], capture_output=True, check=False
    )
    assert os.statvfs(disk).f_bavail == 0
