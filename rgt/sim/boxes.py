"""The real side of an emulated instance: its container disk and the onstart process.

Each container start runs `bash -c ONSTART` (or, for `runtype: "args"`, the args as the
container's command) in its own process group (cwd = the disk), with the environment vast.ai
gives a container plus the create's env, where the platform allows in a mount namespace that
makes `/workspace` the instance disk (rgt.sim.container). Stopping, preemption and a host
going offline kill the whole group with SIGKILL: vast.ai gives a container no signal first. So
does the emulator's end, even by SIGKILL (rgt.children.watch_group; Linux)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from rgt.children import unwatch_group, watch_group
from rgt.sim import container

# Host variables a box may inherit; nothing else of the emulator's environment (API keys!)
# reaches an instance.
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


def box_environment(
    disk: Path,
    instance_id: int,
    env: dict[str, str],
    id_env: str,
    *,
    container_key: str = "",
    ports: dict[int, int] | None = None,
) -> dict[str, str]:
    """The environment of instance `instance_id`'s onstart process: the create's env, the
    variables vast.ai sets in a container (instance id, PUBLIC_IPADDR, CONTAINER_API_KEY,
    VAST_TCP_PORT_<container port> = the public port mapped to it) and the emulator's own."""
    environment = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    environment.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    # Docker-style flags (`-p 8080:8080`) arrive as env keys in the create body; they are not
    # variables.
    environment.update({k: v for k, v in env.items() if k and not k.startswith("-")})
    environment.update(
        {
            id_env: str(instance_id),
            "VAST_CONTAINERLABEL": f"C.{instance_id}",
            "RGT_BOX_ROOT": str(disk),
            "HOME": str(disk / "root"),
            "PUBLIC_IPADDR": "127.0.0.1",
        }
    )
    if container_key:
        environment["CONTAINER_API_KEY"] = container_key
    for inner, outer in sorted((ports or {}).items()):
        environment[f"VAST_TCP_PORT_{inner}"] = str(outer)
    return environment


class Box:
    """The onstart process of one running container (not persisted: a restart re-runs it)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @classmethod
    def start(
        cls,
        argv: list[str],
        disk: Path,
        environment: dict[str, str],
        log_path: Path,
        *,
        box_dirs: list[str] | None = None,
    ) -> Box:
        """Run `argv` (`["bash", "-c", onstart]`, or args-mode's command) in a new session (its
        own process group), output to the log. With `box_dirs` (e.g. `["workspace"]`) and a
        mount namespace available, those top-level paths are the disk's (rgt.sim.container)."""
        (disk / "root").mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if box_dirs and container.unavailable_reason() is None:
            rootfs = log_path.parent / "rootfs"  # outside the disk: nothing of it is the box's
            rootfs.mkdir(exist_ok=True)
            argv = container.wrap(argv, disk, box_dirs, rootfs)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=disk,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Its group dies with the emulator, even a SIGKILLed one (rgt.children): a box must not
        # keep running, holding its disk and ports, for an emulator that is gone.
        watch_group(process.pid, f"RGT_BOX_ROOT={environment.get('RGT_BOX_ROOT', disk)}")
        return cls(process)

    @property
    def pid(self) -> int:
        """The process id (= its process group id)."""
        return self.process.pid

    def alive(self) -> bool:
        """True while the onstart script itself still runs."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, no signal first (as vast.ai does), and reap."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        unwatch_group(self.process.pid)


def kill_orphan(pgid: int, disk: Path) -> bool:
    """SIGKILL the process group a crashed emulator left running for the instance on `disk`.

    Only a group whose leader still runs with RGT_BOX_ROOT=<disk> in its environment is killed:
    a reused pid belonging to anything else is left alone. Returns True when it killed one."""
    try:
        environ = Path(f"/proc/{pgid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    if f"RGT_BOX_ROOT={disk}".encode() not in environ:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    # SIGKILL is delivered asynchronously: wait (bounded) until the leader is really dead, so the
    # instance's onstart never runs twice on one disk, not even for a moment.
    deadline = time.monotonic() + 5
    while _running(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan's zombie waits for init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
