"""A box that looks like a container: its command runs where `/workspace` is the instance disk.

vast.ai runs the onstart script (or, in `args` mode, the image's command) inside a Docker
container, so `/workspace/...` is the container's disk. An emulated box has no image: its
processes run on this machine. To keep what they write off the host, the command is started in
its own mount namespace (`unshare --mount`), whose root is a tmpfs holding bind mounts of the
host's top-level entries, except the platform's data dir, which is the instance disk's copy
(`<disk>/workspace`). The namespace dies with the box; nothing is mounted on the host.

Where no mount namespace can be made (no `unshare`, no privilege, no user namespaces), boxes
run as before, with absolute paths on the host, and `unavailable_reason()` says why.

This file is also a script (`python3 -I container.py enter ...`), run by `unshare` inside the
new namespace: it uses only the standard library and ends by exec'ing the box's command, so
the box keeps the pid (= process group) the emulator recorded.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

_MS_BIND = 0x1000
_MS_REC = 0x4000


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when boxes can get their own mount namespace here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare program"
    try:
        probe = subprocess.run(
            [*_unshare(), "true"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if probe.returncode != 0:
        return f"unshare failed: {probe.stderr.strip() or probe.returncode}"
    return None


def _unshare() -> list[str]:
    # Root makes the namespace directly; anyone else through a user namespace (uid 0 inside).
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private", "--"]
    return ["unshare", "--map-root-user", "--mount", "--propagation", "private", "--"]


def wrap(argv: list[str], disk: Path, box_dirs: list[str], rootfs: Path) -> list[str]:
    """The command line that runs `argv` with each box dir (`/workspace`) bound to its copy in
    `disk`; `rootfs` is an empty directory for the namespace's root (outside the disk)."""
    return [
        *_unshare(),
        sys.executable,
        "-I",
        "-S",  # no site: the box starts as fast as a bare `bash -c` would, nearly
        str(Path(__file__).resolve()),
        "enter",
        str(rootfs),
        str(disk),
        ",".join(box_dirs),
        "--",
        *argv,
    ]


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.mount(
        source.encode(),
        target.encode(),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        None if data is None else data.encode(),
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def enter(rootfs: str, disk: str, box_dirs: list[str], argv: list[str]) -> None:
    """Inside the new mount namespace: build the root, chroot into it, exec `argv`."""
    real_disk = os.path.realpath(disk)
    # A box dir holding the disk itself (a state dir under /workspace) cannot be shadowed.
    shadowed = {
        name
        for name in box_dirs
        if name and not (real_disk + os.sep).startswith(os.path.realpath("/" + name) + os.sep)
    }
    _mount("tmpfs", rootfs, "tmpfs", 0, "mode=755")
    for name in sorted(os.listdir("/")):
        if name in shadowed:
            continue
        source, target = "/" + name, os.path.join(rootfs, name)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        elif os.path.isdir(source):
            os.mkdir(target)
            _mount(source, target, None, _MS_BIND | _MS_REC, None)
        elif os.path.exists(source):
            open(target, "w").close()
            _mount(source, target, None, _MS_BIND, None)
    for name in sorted(shadowed):
        source = os.path.join(real_disk, name)
        os.makedirs(source, exist_ok=True)
        target = os.path.join(rootfs, name)
        os.mkdir(target)
        _mount(source, target, None, _MS_BIND | _MS_REC, None)
    cwd = os.getcwd()
    os.chroot(rootfs)
    os.chdir(cwd if os.path.isdir(cwd) else "/")
    os.execvp(argv[0], argv)


def main(args: list[str]) -> int:
    """`enter ROOTFS DISK DIR[,DIR...] -- COMMAND...`"""
    if len(args) < 6 or args[0] != "enter" or args[4] != "--":
        sys.stderr.write("usage: container.py enter ROOTFS DISK DIRS -- COMMAND...\n")
        return 2
    try:
        enter(args[1], args[2], [d for d in args[3].split(",") if d], args[5:])
    except OSError as exc:
        sys.stderr.write(f"rgt sim: the box could not start: {exc}\n")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached: enter execs


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
