"""The process table as the tests read it (/proc): whether a process lives, and which rsync
processes a copy under test started."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) from /proc/PID/stat; None when the process is gone.

    The name is cut at the last ')' because a command name may itself hold spaces or parens."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie is dead for our purpose)."""
    stat = _stat(pid)
    return stat is not None and stat[1][0] != "Z"


def rsync_processes(*, with_receiver: bool = False) -> list[int]:
    """Our own rsync children (the copy under test runs in a thread of this process) and, when
    asked, the receiver processes they forked."""
    table: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        stat = _stat(entry) if entry.isdigit() else None
        if stat is not None:
            name, fields = stat
            table[int(entry)] = (name, int(fields[1]))
    ours = [pid for pid, (name, ppid) in table.items() if name == "rsync" and ppid == os.getpid()]
    if with_receiver:
        ours += [pid for pid, (name, ppid) in table.items() if name == "rsync" and ppid in ours]
    return ours


def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid` now (pid -> command name): children, grandchildren..."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        stat = _stat(entry) if entry.isdigit() else None
        if stat is not None and stat[1][0] != "Z":
            children.setdefault(int(stat[1][1]), []).append((int(entry), stat[0]))
    found: dict[int, str] = {}
    stack = [pid]
    while stack:
        for child, name in children.get(stack.pop(), []):
            found[child] = name
            stack.append(child)
    return found
