"""Helpers for the tests that copy off a box: a tree of random result files, the moment a
killed copy would cut a file in half, and a raw ssh login with no rgt code in between."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

# rsync writes a file in transfer as a dot-file next to it; this much of it means a kill now
# cuts the file rather than landing between two files.
CUT_FILE_BYTES = 128 * 1024


def make_result_tree(root: Path, files: int, size: int) -> dict[str, bytes]:
    """`files` random files of `size` bytes under ROOT/results/{logs,ckpt}/partN.bin; returns
    their contents by path relative to `root`."""
    contents = {}
    for index in range(files):
        data = os.urandom(size)
        path = root / "results" / ("ckpt" if index % 2 else "logs") / f"part{index}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        contents[str(path.relative_to(root))] = data
    return contents


def wait_for_cut_file(local: Path, seconds: float = 2.0) -> None:
    """Wait (at most `seconds`) until rsync's temp file of the file in transfer under `local`
    holds CUT_FILE_BYTES, so that a kill now interrupts a file midway."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not any(
        p.name.startswith(".") and p.stat().st_size >= CUT_FILE_BYTES
        for p in local.rglob("*")
        if p.is_file()
    ):
        time.sleep(0.02)


def bytes_on_disk(local: Path) -> int:
    """Every byte of every file under `local`: complete files plus rsync's temp files."""
    return sum(p.stat().st_size for p in local.rglob("*") if p.is_file())


def raw_ssh(
    port: int | str,
    identity: Path,
    known_hosts: Path,
    command: str,
    *,
    program: Sequence[str] = ("ssh",),
) -> subprocess.CompletedProcess[str]:
    """One plain ssh login as root@127.0.0.1 running `command`: no rgt code in between, so a
    test of the box side does not lean on rgt's own client."""
    argv = [
        *program,
        "-p",
        str(port),
        "-i",
        str(identity),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "LogLevel=ERROR",
        "root@127.0.0.1",
        command,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
