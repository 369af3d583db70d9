"""Child processes that must not outlive rgt, even when rgt is killed with SIGKILL: the servers
it starts (the emulator's per-box sshd, the demo's `rclone serve s3`), the copies it runs
(rsync) and the emulator's boxes.

On Linux the kernel does it: `prctl(PR_SET_PDEATHSIG, SIGTERM)` in the child before exec asks
for SIGTERM when the parent dies. Linux sends it when the *thread* that forked the child exits,
not the process; so `start_server` forks every server from one thread that lives as long as
the servers it started, never from the HTTP request or worker thread that asked for it (which
ends a moment later and would take the server with it).

A box is a process group (its job forks freely) and the death signal reaches only the group's
leader. `watch_group` registers a box's group with one watcher process (this file run as a
script, `watch-groups`) that reads registrations from a pipe and, at the pipe's end of file
(rgt is gone: the kernel closed its end), SIGKILLs every registered group still running, as a
vast.ai host that vanished would. The watcher has no death signal: one arriving before it has
set up would end it with nothing killed, while an end of file waits for it to read it. A group
is only killed while one of its processes still carries the box's marker in its environment, so
a reused process id is left alone.

Elsewhere (no PR_SET_PDEATHSIG, no /proc) children are started as before and outlive a killed
rgt; the emulator's restart on the same state dir still stops what its predecessor left
(rgt.sim.ssh.reap_stale_servers, rgt.sim.boxes.kill_orphan).

The script side uses only the standard library (it runs as `python3 -I children.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send SIGTERM to the child when its parent dies (even
    by kill -9); None where the OS has no such thing.

    The parent is the *thread* that forks: call it from a thread that lives as long as the
    child (one that waits for it, or `start_server`'s). The function only calls prctl and
    getppid: nothing that takes a lock another thread could hold at the fork."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


class _Forker:
    """The one thread that forks servers: it lives as long as a server it started does, so a
    server's death signal fires when the process dies and not before. Once every server it
    started has exited it ends (the next start begins a new one): a process that ran servers
    and stopped them is single-threaded again, which rgt.manifest and rgt.verify need before
    they fork their hashing workers."""

    IDLE_CHECK_SECONDS = 0.2  # how soon after its last server exits the thread ends

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._pid = 0  # the process whose thread runs (0: none runs; a forked copy has none)

    def run(self, start: Callable[[], Any]) -> Any:
        done: Future[Any] = Future()
        with self._lock:  # the thread decides to end under this lock: a request is never orphaned
            if self._pid != os.getpid():
                self._requests = queue.SimpleQueue()
                threading.Thread(
                    target=self._serve, args=(self._requests,), name="rgt-forker", daemon=True
                ).start()
                self._pid = os.getpid()
            self._requests.put((start, done))
        return done.result()

    def _serve(self, requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        children: list[subprocess.Popen[bytes]] = []
        while True:
            try:
                start, done = requests.get(timeout=self.IDLE_CHECK_SECONDS)
            except queue.Empty:
                # poll() reaps an exited server and keeps its returncode for its owner's wait().
                children = [child for child in children if child.poll() is None]
                with self._lock:
                    if not children and requests.empty():
                        self._pid = 0
                        return
                continue
            try:
                child = start()
            except BaseException as exc:  # the caller's thread raises it
                done.set_exception(exc)
            else:
                children.append(child)
                done.set_result(child)


_forker = _Forker()


def start_server(argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(argv, **popen)` for a long-lived server that must die with this
    process (SIGTERM on Linux, even when this process is SIGKILLed; see the module docstring).
    Raises what Popen raises."""
    preexec = die_with_parent()
    if preexec is None:
        return subprocess.Popen(argv, **popen)
    process: subprocess.Popen[bytes] = _forker.run(
        lambda: subprocess.Popen(argv, preexec_fn=preexec, **popen)
    )
    return process


# -- process groups (the emulator's boxes) ------------------------------------------------------


class _GroupWatch:
    """This process's end of the watcher: a pipe of registrations (one JSON line each)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[int, str] = {}  # pgid -> marker
        self._fd: int | None = None
        self._pid = 0

    def add(self, pgid: int, marker: str) -> None:
        with self._lock:
            self._groups[pgid] = marker
            self._send({"add": pgid, "marker": marker})

    def remove(self, pgid: int) -> None:
        with self._lock:
            if self._groups.pop(pgid, None) is not None:
                self._send({"remove": pgid})

    def _send(self, message: dict[str, Any]) -> None:
        """Write one registration; (re)start the watcher when there is none or it died."""
        line = (json.dumps(message) + "\n").encode()
        for _ in range(2):
            if self._fd is None or self._pid != os.getpid():
                if not self._start():
                    return
                line = b"".join(  # a new watcher learns every group still registered
                    (json.dumps({"add": g, "marker": m}) + "\n").encode()
                    for g, m in self._groups.items()
                )
                if not line:
                    return
            fd = self._fd
            assert fd is not None
            try:
                os.write(fd, line)  # short lines: one atomic write each
                return
            except OSError:  # the watcher died: start another
                with contextlib.suppress(OSError):
                    os.close(fd)
                self._fd = None
        log.warning("rgt: the process group watcher cannot run: boxes may outlive this process")

    def _start(self) -> bool:
        if not Path("/proc").is_dir() or die_with_parent() is None:
            return False  # not Linux: boxes outlive a killed emulator, as before
        read, write = os.pipe()
        try:
            subprocess.Popen(
                [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "watch-groups"],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C at the terminal is for rgt, not the watcher
            )
        except OSError as exc:
            os.close(write)
            log.warning("rgt: no process group watcher (%s)", exc)
            return False
        finally:
            os.close(read)
        self._fd, self._pid = write, os.getpid()
        return True


_watch = _GroupWatch()


def watch_group(pgid: int, marker: str) -> None:
    """Have process group `pgid` SIGKILLed when this process dies (even by kill -9) while one
    of its processes still has `marker` (`NAME=value`) in its environment. Linux only; a no-op
    elsewhere."""
    _watch.add(pgid, marker)


def unwatch_group(pgid: int) -> None:
    """Forget `pgid` (its group was ended by its owner)."""
    _watch.remove(pgid)


# -- the watcher (runs as a script; standard library only) -------------------------------------


def _group_of(pid: str) -> int | None:
    """The process group of a live (not zombie) process, from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[2])


def kill_marked_groups(groups: dict[int, str]) -> list[int]:
    """SIGKILL each group of `groups` (pgid -> marker) that still has a process carrying its
    marker in its environment; returns the groups killed."""
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        group = _group_of(entry)
        if group not in groups or group in killed:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if groups[group].encode() in environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
                killed.append(group)
    return killed


def watch_groups(stream: Any) -> int:
    """Read registrations from `stream` until its end, then kill the groups still registered."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: dict[int, str] = {}
    for line in stream:
        try:
            message = json.loads(line)
            if "add" in message:
                groups[int(message["add"])] = str(message["marker"])
            else:
                groups.pop(int(message["remove"]), None)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short when rgt died mid-write
    if groups:
        kill_marked_groups(groups)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["watch-groups"]:
        sys.stderr.write("usage: children.py watch-groups  (registrations on stdin)\n")
        sys.exit(2)
    sys.exit(watch_groups(sys.stdin.buffer))
