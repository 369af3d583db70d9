"""A server on a loopback port of its own: choose a free port, start the server on it, and when
another process took the port in between (the choice is a bind-and-close probe, so nothing holds
the port until the server binds it), start it again on another.

Two things tell a clash from a server that is merely slow: the server exited saying its address
was in use (EADDRINUSE, in its own words: "Address already in use" from sshd, "address already in
use" from Go and uvicorn), and, on Linux, whose socket listens: a server is up only once a
listening socket on the port is in the server's own file table (/proc), so another process
listening on the chosen port is never mistaken for it. Elsewhere any listener on the port counts,
as before.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
ADDRESS_IN_USE = "address already in use"  # strerror(EADDRINUSE), lower-cased
START_TRIES = 5  # ports tried before giving up (each clash needs another process's timing)

T = TypeVar("T")


class PortTaken(Exception):
    """The server could not bind its port: another process has it. Start again elsewhere."""


class NotListening(Exception):
    """The server exited or did not listen in time, for another reason (the message says)."""


def free_port() -> int:
    """A loopback TCP port nothing was bound to a moment ago (it can be taken any time after)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP `port` (/proc/net/tcp, tcp6); None without /proc."""
    found: set[str] = set()
    seen_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen_table = True
        for line in lines:
            fields = line.split()
            # fields: sl, local address (hex IP:PORT), remote, state (0A = LISTEN), ..., inode
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found if seen_table else None


def listens(pid: int, port: int) -> bool:
    """True when process `pid` itself holds a socket listening on `port` (Linux); elsewhere,
    when anything on this machine accepts connections there."""
    inodes = _listening_inodes(port)
    if inodes is None:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((HOST, port)) == 0
    if not inodes:
        return False
    try:
        links = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in links:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def wait_listening(
    process: subprocess.Popen[bytes] | subprocess.Popen[str],
    port: int,
    timeout: float,
    said: Callable[[], str],
) -> None:
    """Wait until `process` listens on `port`. Raises PortTaken when it exited because the port
    was in use (`said()` returns what it wrote), NotListening when it exited for another reason
    or did not listen within `timeout` seconds (it is then still running: the caller stops it)."""
    deadline = time.monotonic() + timeout
    while not listens(process.pid, port):
        if process.poll() is not None:
            text = said()
            if ADDRESS_IN_USE in text.lower():
                raise PortTaken(f"port {port} was taken: {_last_line(text)}")
            raise NotListening(f"exited with status {process.returncode}: {_last_line(text)}")
        if time.monotonic() > deadline:
            raise NotListening(f"did not listen on {HOST}:{port} within {timeout:g} s")
        time.sleep(0.02)


def start_on_free_port(start: Callable[[int], T], tries: int = START_TRIES) -> T:
    """`start(port)` on a free port, again on another each time it raises PortTaken; returns
    what `start` returns. Raises the last PortTaken when every try clashed."""
    for attempt in range(tries):
        try:
            return start(free_port())
        except PortTaken:
            if attempt == tries - 1:
                raise
    raise AssertionError("not reached")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
