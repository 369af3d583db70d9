"""The emulator's copy endpoint: one real OpenSSH `sshd` per running instance, on 127.0.0.1.

Why a real sshd: rgt copies results off a box with rsync over ssh (rgt.providers.rsync), and the
emulator must exercise exactly that code: key authentication, host-key pinning, rsync's
protocol, a connection killed mid-copy. Each emulated instance gets its own sshd on a free
loopback port; the emulator reports that port as the instance's direct ssh endpoint.

An emulated instance has no container filesystem: its "disk" is a host directory. Every login
is therefore forced (`ForceCommand`) through this file's command wrapper, which rewrites the
absolute paths in the incoming command into the disk (`/workspace/x` becomes
`<disk>/workspace/x`), refuses paths that would leave the disk, and runs the command without a
shell. That covers what rgt sends (`rsync --server --sender ...`, `cat -- PATH`), simple
commands a user types (`ls /workspace`, `test -e PATH`) and `scp -O` (the classic scp protocol;
no sftp subsystem is served, so plain `scp` of OpenSSH 9 fails with "subsystem request failed").
It is an emulator, not a sandbox: a program can still open any path it computes itself
(`python3 -c ...`).

Where sshd cannot run (not installed, no privilege-separation directory, not root: the client
logs in as `root`, as on vast.ai), copies fall back to a local pipe: `ssh_client_environment`
then names this file's `local-ssh` command in RGT_SSH_COMMAND, which rsync runs in place of
ssh; it looks the port up in the key directory and runs the same wrapper locally. The copy is
then plain local rsync (same rsync protocol and paths, no network, no keys), and
`SshServer.note` says so.

The file is also a script (`python3 ssh.py serve-command DISK` / `local-ssh ...`), so it uses
only the standard library: sshd runs it for every login, and it must start fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path
CLIENT_KEY_NAME = "rgt_sim_client_ed25519"
HOST_KEY_NAME = "rgt_sim_host_ed25519"
AUTHORIZED_KEYS_NAME = "authorized_keys"
LOCAL_REGISTRY_NAME = "local-endpoints.json"
SSH_COMMAND_ENV = "RGT_SSH_COMMAND"  # read by rgt.providers.rsync: the ssh program to run
SSH_KEY_ENV = "RGT_SSH_KEY"
FORCE_LOCAL_ENV = "RGT_SIM_NO_SSHD"  # 1: never start sshd (exercise the fallback)
START_TIMEOUT_SECONDS = 10.0
# The key exchange an sshd on loopback offers: classic X25519. OpenSSH 9's default
# (sntrup761x25519) cost the client ~75 ms of CPU per login here (0.09 s -> 0.014 s), and rgt
# logs in for every status read, manifest read, box listing and copy.
LOOPBACK_KEX = "curve25519-sha256,curve25519-sha256@libssh.org"

# Shell control operators: the wrapper runs one command without a shell, so a command line
# that relies on them would silently do something else. Refuse it instead.
_SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "2>", "2>&1"})
_REFUSED = 126  # the exit status of a command that could not be run as asked


class SshUnavailable(RuntimeError):
    """sshd cannot run on this machine (the reason is the message)."""


# -- keys ----------------------------------------------------------------------------------------


def _keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_name(path.name + ".pub").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)


def ensure_client_key(key_dir: Path) -> Path:
    """The emulator's client private key (created once per key dir), authorised for every
    instance's sshd. Export it as RGT_SSH_KEY so rgt's copies use it."""
    key_dir = Path(key_dir)
    key = key_dir / CLIENT_KEY_NAME
    _keygen(key, "rgt-sim-client")
    authorized = key_dir / AUTHORIZED_KEYS_NAME
    public = key.with_name(key.name + ".pub").read_text()
    if not authorized.exists() or authorized.read_text() != public:
        authorized.write_text(public)
    authorized.chmod(0o600)
    return key


client_key_path = ensure_client_key  # the name the emulator calls


def ensure_host_key(key_dir: Path) -> Path:
    """The emulator's sshd host key (one per key dir; each instance's client pins it)."""
    key = Path(key_dir) / HOST_KEY_NAME
    _keygen(key, "rgt-sim-host")
    return key


# -- can sshd run here? ----------------------------------------------------------------------


def sshd_unavailable_reason() -> str | None:
    """Why a loopback sshd cannot serve copies here, or None when it can."""
    if os.environ.get(FORCE_LOCAL_ENV, "") not in ("", "0"):
        return f"{FORCE_LOCAL_ENV} is set"
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen", "rsync"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        # vast.ai boxes are logged into as root; an unprivileged sshd can only admit its own
        # user, so the client's root@ login could not work.
        return "sshd needs root to admit root@ logins and this process is not root"
    privsep = Path("/run/sshd")  # OpenSSH refuses to start without it
    if not privsep.is_dir():
        try:
            privsep.mkdir(mode=0o755)
        except OSError as exc:
            return f"{privsep} is missing and cannot be created ({exc.strerror})"
    return None


def ssh_client_environment(key_dir: Path) -> dict[str, str]:
    """What a client process needs in its environment to copy off this emulator's instances:
    RGT_SSH_KEY always, and RGT_SSH_COMMAND (the local pipe) when sshd cannot run."""
    environment = {SSH_KEY_ENV: str(ensure_client_key(key_dir))}
    if sshd_unavailable_reason() is not None:
        environment[SSH_COMMAND_ENV] = shlex.join(
            [sys.executable, "-I", str(Path(__file__).resolve()), "local-ssh", str(key_dir)]
        )
    return environment


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server --------------------------------------------------------------------------------


class SshServer:
    """A loopback sshd whose logins all run in one instance's disk (see module docstring)."""

    host = "127.0.0.1"

    def __init__(self, disk: Path, key_dir: Path) -> None:
        self.disk = Path(disk).resolve()
        self.key_dir = Path(key_dir).resolve()
        self.port: int | None = None
        self.transport = "none"  # "sshd" or "local" once started
        self.note = ""  # one line for humans: what serves copies, and why
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None
        # Names this server's files in the shared key dir (the traffic log survives restarts
        # of the same server object, so the emulator can bill its deltas). Random, not id():
        # a new server must never inherit (and re-bill) a collected server's log.
        self._token = f"{os.getpid()}-{secrets.token_hex(6)}"

    def __repr__(self) -> str:
        return f"SshServer(disk={str(self.disk)!r}, port={self.port}, transport={self.transport})"

    @property
    def running(self) -> bool:
        """True while the endpoint serves (a local endpoint always does once started)."""
        if self.transport == "local":
            return True
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> int:
        """Start serving; returns the port to report as the instance's ssh port."""
        if self.running and self.port is not None:
            return self.port
        self.disk.mkdir(parents=True, exist_ok=True)
        ensure_client_key(self.key_dir)
        reason = sshd_unavailable_reason()
        if reason is None:
            try:
                return self._start_sshd()
            except SshUnavailable as exc:
                reason = str(exc)
        return self._start_local(reason)

    def stop(self) -> None:
        """Stop serving (the disk is left alone). Safe to call twice."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self.transport == "local" and self.port is not None:
            _register_local(self.key_dir, self.port, None)
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
        self.transport = "none"

    @property
    def traffic_file(self) -> Path:
        """Where each session appends `OUT IN` byte counts (one file per server)."""
        return self.key_dir / f"traffic-{self._token}.log"

    def traffic(self) -> tuple[int, int]:
        """Cumulative (bytes out of the box, bytes into the box) over every finished session
        (stdin/stdout payload of the commands; ssh's own framing is not counted)."""
        out = into = 0
        try:
            lines = self.traffic_file.read_text().splitlines()
        except OSError:
            return 0, 0
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                out += int(parts[0])
                into += int(parts[1])
        return out, into

    def _start_sshd(self) -> int:
        host_key = ensure_host_key(self.key_dir)
        self._run_dir = Path(tempfile.mkdtemp(prefix="sshd-", dir=self.key_dir))
        force = shlex.join(
            [
                sys.executable,
                "-I",
                str(Path(__file__).resolve()),
                "serve-command",
                str(self.disk),
                str(self.traffic_file),
            ]
        )
        # Imported here: this file also runs as a stdlib-only script (module docstring).
        from rgt.children import start_server
        from rgt.loopback import START_TRIES, NotListening, PortTaken, free_port, wait_listening

        log_file = self._run_dir / "sshd.log"
        last = ""
        for _ in range(START_TRIES):  # a free port can be taken between probing and binding
            port = free_port()
            config = self._run_dir / "sshd_config"
            config.write_text(
                "\n".join(
                    [
                        f"Port {port}",
                        f"ListenAddress {self.host}",
                        f"HostKey {host_key}",
                        # The emulator's client key, and keys attached to this instance
                        # (`vastai attach ssh`: the box's /root/.ssh/authorized_keys).
                        f"AuthorizedKeysFile {self.key_dir / AUTHORIZED_KEYS_NAME} "
                        f"{self.disk / 'root' / '.ssh' / AUTHORIZED_KEYS_NAME}",
                        f"PidFile {self._run_dir / 'sshd.pid'}",
                        "AllowUsers root",
                        "PermitRootLogin prohibit-password",
                        "PubkeyAuthentication yes",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        # Key files live under /tmp (world-writable): ownership checks would
                        # refuse every login although only this process can write them.
                        "StrictModes no",
                        "PermitUserEnvironment no",
                        "AllowTcpForwarding no",
                        "AllowAgentForwarding no",
                        "X11Forwarding no",
                        "PrintMotd no",
                        "UseDNS no",
                        f"KexAlgorithms {LOOPBACK_KEX}",
                        "MaxStartups 64",
                        "LogLevel INFO",
                        # sshd runs the ForceCommand through the user's shell with HOME from
                        # this machine's passwd: bash then sources this machine's ~/.bashrc
                        # (it does for sshd's commands) on every login, which is neither the
                        # box's (the wrapper sets the box's HOME for the command itself) nor
                        # free (a pyenv/conda init there costs ~0.5 s a login, and rsync logs in
                        # once per copy). A HOME of our own, without startup files, skips it.
                        f'SetEnv "HOME={self._run_dir}"',
                        f"ForceCommand {force}",
                        "",
                    ]
                )
            )
            checked = subprocess.run(
                [SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False
            )
            if checked.returncode != 0:
                raise SshUnavailable("sshd rejected its config: " + _tail(checked.stderr))
            log_file.unlink(missing_ok=True)  # a clash's log must not fail the next try
            self._proc = start_server(
                [SSHD, "-D", "-f", str(config), "-E", str(log_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C aimed at the emulator's terminal is ours
            )
            try:
                # Listening means this sshd's own socket: another process listening on the
                # port would pass a mere connect and leave rgt copying from the wrong server.
                wait_listening(
                    self._proc,
                    port,
                    START_TIMEOUT_SECONDS,
                    lambda: log_file.read_text() if log_file.exists() else "",
                )
            except (PortTaken, NotListening) as exc:
                if self._proc.poll() is None:
                    self._proc.kill()
                self._proc.wait()
                self._proc = None
                last = str(exc)
                if isinstance(exc, PortTaken):
                    continue
                break
            self.port = port
            self.transport = "sshd"
            self.note = f"OpenSSH sshd on {self.host}:{port}"
            return port
        raise SshUnavailable(f"sshd did not start: {last}")

    def _start_local(self, reason: str) -> int:
        port = self.port or _free_port()
        _register_local(self.key_dir, port, (self.disk, self.traffic_file))
        self.port = port
        self.transport = "local"
        self.note = f"no sshd ({reason}); copies use local rsync through {SSH_COMMAND_ENV}"
        log.warning("rgt sim: %s", self.note)
        return port


def reap_stale_servers(key_dir: Path) -> int:
    """Stop sshds that an earlier emulator process using `key_dir` left behind (it was killed
    before it could stop them) and remove their files; returns how many servers were stopped.
    Call it once when an emulator starts on a persisted state dir, before starting any server."""
    stopped: set[bytes] = set()  # the servers (by config) whose sshd processes were signalled
    run_dirs = list(Path(key_dir).glob("sshd-*"))
    # Found by command line, not by pid file: sshd writes its pid file a moment after it starts
    # listening, and a pid in an old file may belong to another process by now.
    configs = [str(run_dir / "sshd_config").encode() for run_dir in run_dirs]
    for entry in os.listdir("/proc") if configs else ():
        if not entry.isdigit():
            continue
        try:
            # sshd rewrites its title ("sshd: /usr/sbin/sshd -D -f CONFIG ... [listener]"),
            # so search the raw command line rather than argv[0].
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        # A server's listener and any connection it is still serving (a child sshd with the
        # same command line) are all stopped; the count is of servers.
        config = next((config for config in configs if config in raw), None)
        if SSHD.encode() in raw and config is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGTERM)
                stopped.add(config)
    for run_dir in run_dirs:
        shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        (Path(key_dir) / LOCAL_REGISTRY_NAME).unlink()
    return len(stopped)


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _register_local(key_dir: Path, port: int, target: tuple[Path, Path] | None) -> None:
    """Record (or forget, target=None) which (disk, traffic file) a fallback port leads to."""
    registry = key_dir / LOCAL_REGISTRY_NAME
    try:
        table = json.loads(registry.read_text())
    except (OSError, ValueError):
        table = {}
    if target is None:
        table.pop(str(port), None)
    else:
        table[str(port)] = [str(target[0]), str(target[1])]
    fd, temp = tempfile.mkstemp(dir=key_dir, prefix=".registry-")
    with os.fdopen(fd, "w") as handle:
        json.dump(table, handle)
    os.replace(temp, registry)


# -- the command wrapper (runs for every login; stdlib only) -------------------------------------


class PathEscape(ValueError):
    """A path in the command would resolve outside the instance disk."""


def map_path(disk: Path, box_path: str, cwd: Path) -> str:
    """The host path for a path on the box: absolute paths are re-rooted at `disk`, relative
    ones resolved from `cwd`; symlinks are followed for the check. Keeps a trailing slash
    (rsync treats `dir/` and `dir` differently). Raises PathEscape when it leaves the disk."""
    root = os.path.realpath(disk)
    if box_path.startswith("/"):
        joined = os.path.join(root, box_path.lstrip("/"))
    else:
        joined = os.path.join(cwd, box_path)
    resolved = os.path.realpath(joined)
    if resolved != root and not resolved.startswith(root + os.sep):
        raise PathEscape(f"path {box_path} is outside the instance disk")
    if not box_path.startswith("/"):
        return box_path  # relative and inside: leave it to the program, as the user wrote it
    mapped = os.path.normpath(joined)
    return mapped + "/" if box_path.endswith("/") and not mapped.endswith("/") else mapped


def rewrite_command(argv: list[str], disk: Path, cwd: Path) -> list[str]:
    """`argv` with every box path (absolute argument, `--opt=/path`, or relative argument
    containing `..`) mapped into `disk`. Raises PathEscape or ValueError (shell operators)."""
    operators = [word for word in argv if word in _SHELL_OPERATORS]
    if operators:
        raise ValueError(
            f"shell operator {operators[0]!r}: the emulator's sshd runs one command without a shell"
        )
    out = argv[:1]
    for word in argv[1:]:
        if word.startswith("/"):
            out.append(map_path(disk, word, cwd))
        elif word.startswith("--") and "=/" in word:
            option, value = word.split("=", 1)
            out.append(option + "=" + map_path(disk, value, cwd))
        elif not word.startswith("-") and ".." in word.split("/"):
            out.append(map_path(disk, word, cwd))
        else:
            out.append(word)
    return out


def _box_environment(disk: Path, home: Path) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "LANG", "LC_ALL", "TERM", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY")
    }
    environment.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    environment.update({"HOME": str(home), "RGT_BOX_ROOT": str(disk), "USER": "root"})
    return environment


def serve_command(disk: Path, original: str | None, traffic_file: Path | None = None) -> int:
    """Run one login's command inside `disk`; with `traffic_file`, count the bytes it sends
    and receives there (else exec it). Returns the command's exit status."""
    disk = Path(os.path.realpath(disk))
    home = disk / "root"
    cwd = home if home.is_dir() else disk
    environment = _box_environment(disk, home)
    if not original or not original.strip():
        # An interactive login: a shell that starts in the box's home. Paths typed there are
        # not mapped; say so instead of pretending.
        sys.stderr.write(
            f"rgt sim: emulated instance; its disk is {disk} (box path /x is {disk}/x here)\n"
        )
        sys.stderr.flush()
        os.chdir(cwd)
        shell = shutil.which("bash") or "/bin/sh"
        os.execve(shell, [shell, "-i"], environment)
    try:
        argv = shlex.split(original)
        if not argv:
            raise ValueError("empty command")
        argv = rewrite_command(argv, disk, cwd)
    except ValueError as exc:  # PathEscape is a ValueError
        sys.stderr.write(f"rgt sim: refused: {exc}\n")
        return _REFUSED
    program = shutil.which(argv[0], path=environment["PATH"])
    if program is None:
        sys.stderr.write(f"rgt sim: {argv[0]}: command not found\n")
        return 127
    if traffic_file is None:
        os.chdir(cwd)
        os.execve(program, argv, environment)
    return _relay_counting(program, argv, cwd, environment, traffic_file)


def _read(fd: int) -> bytes:
    """os.read that waits on a non-blocking fd. The local fallback shares its pipes with the
    rsync client, which makes them non-blocking: EAGAIN there means "not yet", not an error."""
    while True:
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            select.select([fd], [], [], 1.0)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data`, waiting whenever a non-blocking fd is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [], 1.0)


def _relay_counting(
    program: str, argv: list[str], cwd: Path, environment: dict[str, str], traffic_file: Path
) -> int:
    """Run the command with its stdin/stdout relayed and counted, so the emulator can bill
    the bytes that left and entered the box; appends `OUT IN` to `traffic_file`."""
    child = subprocess.Popen(
        argv,
        executable=program,
        cwd=cwd,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    counts = [0, 0]  # out of the box, into the box

    def inbound() -> None:
        assert child.stdin is not None
        try:
            while chunk := _read(0):
                child.stdin.write(chunk)
                child.stdin.flush()
                counts[1] += len(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                child.stdin.close()

    reader = threading.Thread(target=inbound, daemon=True)
    reader.start()
    try:
        while chunk := os.read(child.stdout.fileno(), 65536):
            _write_all(1, chunk)
            counts[0] += len(chunk)
    except OSError:
        # The client went away (a killed copy): stop the command instead of leaving it blocked.
        child.kill()
    status = child.wait()
    with contextlib.suppress(OSError):
        fd = os.open(traffic_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{counts[0]} {counts[1]}\n".encode())  # one short write: atomic
        finally:
            os.close(fd)
    return status if status >= 0 else 128 - status


# -- the local fallback: an ssh stand-in for rsync's -e ------------------------------------------

# ssh options that take a value (so the host is found after them).
_SSH_VALUE_OPTIONS = frozenset("BbcDEeFIiJLlmOopQRSWw")


def local_ssh(key_dir: Path, args: list[str]) -> int:
    """Act as `ssh [options] host command...` for a fallback endpoint: find the disk behind
    `-p PORT` in the key dir's registry and run the command there through `serve_command`."""
    port: str | None = None
    index = 0
    while index < len(args) and args[index].startswith("-"):
        flag = args[index]
        letter = flag[1:2]
        if letter in _SSH_VALUE_OPTIONS:
            value = flag[2:] or (args[index + 1] if index + 1 < len(args) else "")
            if letter == "p":
                port = value
            index += 1 if flag[2:] else 2
        else:
            index += 1
    command = args[index + 1 :]  # args[index] is [user@]host
    try:
        table = json.loads((Path(key_dir) / LOCAL_REGISTRY_NAME).read_text())
    except (OSError, ValueError):
        table = {}
    target = table.get(str(port))
    if not isinstance(target, list) or len(target) != 2:
        sys.stderr.write(f"ssh: connect to host 127.0.0.1 port {port}: Connection refused\n")
        return 255  # what ssh returns when it cannot connect: rgt treats it as retryable
    return serve_command(Path(target[0]), " ".join(command), Path(target[1]))


def main(argv: list[str]) -> int:
    """`serve-command DISK` (sshd's ForceCommand) or `local-ssh KEY_DIR SSH-ARGS...`."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if len(argv) in (2, 3) and argv[0] == "serve-command":
        traffic = Path(argv[2]) if len(argv) == 3 else None
        return serve_command(Path(argv[1]), os.environ.get("SSH_ORIGINAL_COMMAND"), traffic)
    if len(argv) >= 2 and argv[0] == "local-ssh":
        return local_ssh(Path(argv[1]), argv[2:])
    sys.stderr.write("usage: ssh.py serve-command DISK | local-ssh KEY_DIR [ssh args]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
