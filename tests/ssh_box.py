"""A stand-in for a box rgt did not rent: a real OpenSSH sshd on 127.0.0.1 whose logins get a
real shell (bash, tmux, python3) on this machine, as root, the way a RunPod pod or a lab server
answers. The box's "disk" is a temp directory: the test's profile puts its data_dir there and
the job writes its results and checkpoints there, so the paths rgt reads over ssh are the real
paths the hook wrote.

Reuses the emulator's key and sshd-availability machinery (rgt.sim.ssh); unlike the emulator's
sshd it has no ForceCommand path-rewriting wrapper, because an attached box runs shell command
lines (starting tmux, copying the hook) that the wrapper refuses. Each box has its own tmux
server (TMUX_TMPDIR in the box), so no test touches a tmux the machine runs, and `without_tmux`
gives a box whose PATH has no tmux (the nohup path).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from rgt.loopback import NotListening, start_on_free_port, wait_listening
from rgt.sim import ssh as sim_ssh


class StandInBox:
    """One loopback sshd serving a temp directory as a box's disk."""

    host = "127.0.0.1"

    def __init__(
        self,
        root: Path,
        *,
        without_tmux: bool = False,
        env: dict[str, str] | None = None,
        path_first: Path | None = None,
    ) -> None:
        self.root = root
        # Set in every login's environment (a scheduler's client config, say), and a folder
        # searched before the system's on PATH (a stand-in scheduler client).
        self.env = dict(env or {})
        self.path_first = path_first
        self.disk = root / "disk"
        self.keys = root / "keys"
        self.tmux_dir = root / "tmux"
        # The box's own home: with this machine's (passwd's) HOME, bash would source this
        # machine's ~/.bashrc on every login (sshd's commands get it), a pyenv/conda init of
        # ~0.5 s each here, and its PATH changes on top of the box's.
        self.home = root / "home"
        self.without_tmux = without_tmux
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def client_key(self) -> Path:
        """The private key the box accepts."""
        return sim_ssh.ensure_client_key(self.keys)

    @property
    def target(self) -> str:
        """`root@127.0.0.1:PORT`, as a human gives it to `rgt attach`."""
        return f"root@{self.host}:{self.port}"

    def start(self) -> StandInBox:
        """Start (or restart on the same port) the box's sshd; a first start takes a free port,
        and another when that one is taken before sshd binds it (rgt.loopback)."""
        reason = sim_ssh.sshd_unavailable_reason()
        if reason is not None:
            pytest.skip(f"a real sshd cannot run here: {reason}")
        for folder in (self.disk, self.keys, self.tmux_dir, self.home):
            folder.mkdir(parents=True, exist_ok=True)
        self.tmux_dir.chmod(0o700)  # tmux refuses a socket dir others can write
        host_key = sim_ssh.ensure_host_key(self.keys)
        self.client_key  # noqa: B018  (creates the key and authorized_keys)
        if self.port is not None:
            self._start_on(self.port, host_key)
        else:
            start_on_free_port(lambda port: self._start_on(port, host_key))
        return self

    def _start_on(self, port: int, host_key: Path) -> None:
        """Start sshd on `port`; raises PortTaken when another process holds it."""
        path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        if self.without_tmux:
            path = str(self._bin_without_tmux()) + ":/usr/sbin:/sbin"
        if self.path_first is not None:
            path = f"{self.path_first}:{path}"
        extra = "".join(f" {name}={value}" for name, value in self.env.items())
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {self.keys / sim_ssh.AUTHORIZED_KEYS_NAME}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    "AllowUsers root",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PrintMotd no",
                    "UseDNS no",
                    "MaxStartups 64",
                    f"KexAlgorithms {sim_ssh.LOOPBACK_KEX}",
                    f"SetEnv HOME={self.home} TMUX_TMPDIR={self.tmux_dir} PATH={path}{extra}",
                    "",
                ]
            )
        )
        log = self.root / "sshd.log"
        log.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [sim_ssh.SSHD, "-D", "-f", str(config), "-E", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_listening(self._proc, port, 10, lambda: log.read_text() if log.exists() else "")
        except NotListening as exc:
            self.stop()
            raise AssertionError(f"sshd did not start: {exc}") from None
        self.port = port

    def stop(self) -> None:
        """Stop answering over ssh (the listener only; jobs it started keep running)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._proc = None

    def kill_jobs(self) -> None:
        """Kill everything the box runs: its tmux server and any hook started under nohup."""
        subprocess.run(
            ["tmux", "kill-server"],
            env={**os.environ, "TMUX_TMPDIR": str(self.tmux_dir)},
            capture_output=True,
            check=False,
        )
        ours = os.getpgid(0)
        for pid in self.hook_pids():
            with contextlib.suppress(ProcessLookupError):
                group = os.getpgid(pid)
                if group != ours:  # never the test's own process group
                    os.killpg(group, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)

    def hook_pids(self) -> list[int]:
        """Processes whose command line names a file on this box's disk (the hook, the job)."""
        needle = str(self.disk).encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if needle in raw and int(entry) != os.getpid():
                found.append(int(entry))
        return found

    @staticmethod
    def cmdline(pid: int) -> bytes:
        """A process's raw command line (empty once it is gone)."""
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    def close(self) -> None:
        """Stop the sshd and everything the box runs."""
        self.stop()
        self.kill_jobs()

    def _bin_without_tmux(self) -> Path:
        """A PATH folder with every program of /usr/bin and /bin except tmux."""
        folder = self.root / "bin-without-tmux"
        if folder.is_dir():
            return folder
        folder.mkdir()
        for source in (Path("/usr/bin"), Path("/bin"), Path("/usr/local/bin")):
            if not source.is_dir():
                continue
            for program in source.iterdir():
                target = folder / program.name
                if program.name != "tmux" and not target.exists():
                    target.symlink_to(program)
        return folder
