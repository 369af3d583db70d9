"""Locks that keep two rgt commands off the same instance, or the same local folder, at once.

One lock per instance covers the steps that must not interleave: a pull (the whole copy and its
ledger record), the ledger record of a verification, and a destroy. A destroy can then never run
while a pull of the same instance is still writing files, and two pulls cannot mix their copies.
One lock per local folder keeps two pulls (of any instances) out of the same folder.

Each lock is an flock(2) on a small file under rgt's state directory: non-blocking (a held lock
is a refusal naming the holder, never a wait), and the kernel releases it when the holding
process dies, even by kill -9, so a crash never leaves a lock behind. Locks are taken per open
file, so two threads of one process (the MCP server's tools) exclude each other too.

The instance lock is keyed by the instance id alone: the ledger's pulls and verifications are
keyed that way, so the lock covers exactly what they cover.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from rgt.errors import Refused

LOCKS_DIR = "locks"


@contextlib.contextmanager
def instance_lock(instance_id: str, action: str) -> Iterator[None]:
    """Hold the lock of `instance_id` for `action` ("pull", "verification", "destroy" or
    "discard").

    Raises Refused (exit 4) naming the action and process that hold it."""
    path = _lock_file("instance", str(instance_id))
    with _held(path, action) as holder:
        if holder is not None:
            raise Refused(
                f"instance {instance_id}: another {holder[0]} of it is in progress right now"
                f"{holder[1]}; try again when it has finished"
            )
        yield


@contextlib.contextmanager
def folder_lock(local_dir: Path, action: str) -> Iterator[None]:
    """Hold the lock of the local folder `local_dir` (give it resolved) for `action`.

    Raises Refused (exit 4) naming the folder and the process that holds it."""
    path = _lock_file("folder", str(local_dir))
    with _held(path, action) as holder:
        if holder is not None:
            raise Refused(
                f"LOCAL_DIR {local_dir}: another {holder[0]} into it is in progress right now"
                f"{holder[1]}; wait for it to finish, or pull into another directory"
            )
        yield


@contextlib.contextmanager
def run_lock(run_id: str, action: str) -> Iterator[None]:
    """Hold the lock of run `run_id` for `action` (e.g. "sync": two rounds of durable sync of
    one run must not interleave their index writes).

    Raises Refused (exit 4) naming the action and process that hold it."""
    path = _lock_file("run", run_id)
    with _held(path, action) as holder:
        if holder is not None:
            raise Refused(
                f"run {run_id}: another {holder[0]} of it is in progress right now{holder[1]}; "
                "try again when it has finished"
            )
        yield


def _lock_file(kind: str, key: str) -> Path:
    from rgt.paths import state_dir

    locks = state_dir() / LOCKS_DIR
    locks.mkdir(parents=True, exist_ok=True)
    # A hash: an instance id or a path is not a safe file name as it is.
    return locks / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"


@contextlib.contextmanager
def _held(path: Path, action: str) -> Iterator[tuple[str, str] | None]:
    """Yield None holding the lock at `path`; without it, the holder's action and " (pid N)"
    as the holder wrote them ("rgt command" and "" if it has not written them yet)."""
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            action_held, _, pid = handle.read(200).decode("utf-8", "replace").partition(" ")
            pid = pid.strip()
            yield (
                action_held.strip() or "rgt command",
                f" (pid {pid})" if pid.isdigit() else "",
            )
            return
        try:
            # Only to name the holder in another process's refusal; the lock is the flock.
            handle.truncate(0)
            handle.write(f"{action} {os.getpid()}".encode())
            handle.flush()
            yield None
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def supervisor_lock(run_id: str) -> Iterator[None]:
    """Hold the supervisor lock of run `run_id` (`rgt run`): one supervisor per run, so two
    never rent for it at once. The kernel drops it when the supervisor dies (kill -9), and the
    next `rgt run` of the run takes it over from the ledger. (Not `run_lock`: a supervisor runs
    durable sync rounds, which take that one.)

    Raises Refused (exit 4) naming the process that supervises the run now."""
    path = _lock_file("supervisor", str(run_id))
    with _held(path, "supervisor") as holder:
        if holder is not None:
            raise Refused(
                f"run {run_id}: another supervisor of it runs right now{holder[1]}; follow it "
                f"with `rgt poll {run_id}`"
            )
        yield


def run_supervised(run_id: str) -> bool:
    """True when a live process holds the supervisor lock of run `run_id`."""
    path = _lock_file("supervisor", str(run_id))
    with _held(path, "look") as holder:
        return holder is not None
