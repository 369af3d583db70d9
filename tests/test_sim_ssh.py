"""rgt.sim.ssh: the emulator's per-instance sshd, with the real OpenSSH sshd, ssh and rsync.

Each test copies or reads through rgt.providers.rsync (the code rgt uses against real boxes)
and checks that box paths land in the instance disk and nowhere else."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rgt.errors import ProviderError
from rgt.providers.base import CopyProgress
from rgt.providers.rsync import (
    CopySettings,
    SshEndpoint,
    SshSettings,
    read_remote_file,
    rsync_pull,
    transport_name,
)
from rgt.sim.ssh import (
    FORCE_LOCAL_ENV,
    PathEscape,
    SshServer,
    ensure_client_key,
    map_path,
    rewrite_command,
    ssh_client_environment,
    sshd_unavailable_reason,
)
from tests.copy_helpers import raw_ssh
from tests.procs import rsync_processes

pytestmark = pytest.mark.timeout(60)

NEEDS_SSHD = pytest.mark.skipif(
    sshd_unavailable_reason() is not None, reason=f"no sshd here: {sshd_unavailable_reason()}"
)


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    root = tmp_path / "disk"
    (root / "root").mkdir(parents=True)
    (root / "workspace" / "results").mkdir(parents=True)
    return root


@pytest.fixture
def server(disk: Path, key_dir: Path) -> Iterator[SshServer]:
    running = SshServer(disk, key_dir)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def settings_for(key_dir: Path, tmp_path: Path) -> SshSettings:
    return SshSettings(
        known_hosts=tmp_path / "known_hosts", identity_file=ensure_client_key(key_dir)
    )


def endpoint_of(server: SshServer) -> SshEndpoint:
    assert server.port is not None
    return SshEndpoint(server.host, server.port)


def ssh_run(
    server: SshServer, key_dir: Path, tmp_path: Path, command: str
) -> subprocess.CompletedProcess[str]:
    """One raw ssh login (no rgt code in between) running `command`."""
    assert server.port is not None
    return raw_ssh(server.port, ensure_client_key(key_dir), tmp_path / "known_hosts_raw", command)


# -- path mapping (pure) -------------------------------------------------------------------------


def test_map_path_reroots_absolute_paths_and_keeps_trailing_slashes(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    (disk / "root").mkdir(parents=True)
    real = os.path.realpath(disk)
    assert map_path(disk, "/workspace/x", disk / "root") == f"{real}/workspace/x"
    assert map_path(disk, "/workspace/x/", disk / "root") == f"{real}/workspace/x/"
    assert map_path(disk, "/", disk / "root") == f"{real}/"
    assert map_path(disk, "/a/../b", disk / "root") == f"{real}/b"
    for escaping in ("/../etc/passwd", "/workspace/../../etc"):
        with pytest.raises(PathEscape, match="outside the instance disk"):
            map_path(disk, escaping, disk / "root")
    with pytest.raises(PathEscape):
        map_path(disk, "../../x", disk / "root")
    assert map_path(disk, "../workspace", disk / "root") == "../workspace"
    # A symlink on the disk that points off it does not lead off it.
    (disk / "link").symlink_to("/etc")
    with pytest.raises(PathEscape):
        map_path(disk, "/link/passwd", disk / "root")


def test_rewrite_command_maps_rsync_and_cat_arguments(tmp_path: Path) -> None:
    disk = tmp_path / "d"
    disk.mkdir()
    real = os.path.realpath(disk)
    rsync = "rsync --server --sender -logDtpre.iLsfxCIvu --partial-dir=/tmp/p . /workspace/r"
    assert rewrite_command(rsync.split(), disk, disk) == [
        "rsync",
        "--server",
        "--sender",
        "-logDtpre.iLsfxCIvu",
        f"--partial-dir={real}/tmp/p",
        ".",
        f"{real}/workspace/r",
    ]
    assert rewrite_command(["cat", "--", "/workspace/M.json"], disk, disk) == [
        "cat",
        "--",
        f"{real}/workspace/M.json",
    ]
    with pytest.raises(ValueError, match="without a shell"):
        rewrite_command(["cat", "/x", ";", "rm", "-rf", "/"], disk, disk)


# -- the real sshd -------------------------------------------------------------------------------


@NEEDS_SSHD
def test_rsync_copies_box_paths_out_of_the_instance_disk(
    server: SshServer, disk: Path, key_dir: Path, tmp_path: Path
) -> None:
    assert server.transport == "sshd" and server.running
    payload = {f"part{i}.bin": os.urandom(30_000 + i) for i in range(3)}
    for name, data in payload.items():
        (disk / "workspace" / "results" / name).write_bytes(data)
    (disk / "workspace" / "results" / "with space.txt").write_text("spaced\n")
    settings = settings_for(key_dir, tmp_path)
    report = rsync_pull(endpoint_of(server), "/workspace/results", tmp_path / "local", settings)
    for name, data in payload.items():
        assert (tmp_path / "local" / "results" / name).read_bytes() == data
    assert (tmp_path / "local" / "results" / "with space.txt").read_text() == "spaced\n"
    assert report.bytes_transferred == sum(len(d) for d in payload.values()) + 7
    assert transport_name() == "rsync+ssh"
    # The session's bytes were counted for the emulator's bandwidth meter.
    out, into = server.traffic()
    assert out >= report.bytes_transferred and into > 0
    # The host key the client pinned is the emulator's.
    host_key = (key_dir / "rgt_sim_host_ed25519.pub").read_text().split()[1]
    assert host_key in settings.known_hosts.read_text()


@NEEDS_SSHD
def test_reads_stay_inside_the_disk(
    server: SshServer, disk: Path, key_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(key_dir, tmp_path)
    endpoint = endpoint_of(server)
    (disk / "workspace" / "results" / "PULL_MANIFEST.json").write_text('{"ok": 1}')
    path = "/workspace/results/PULL_MANIFEST.json"
    assert read_remote_file(endpoint, path, settings) == b'{"ok": 1}'
    # /etc/hostname exists on this machine, not on the instance disk.
    assert Path("/etc/hostname").exists()
    with pytest.raises(ProviderError, match="No such file"):
        read_remote_file(endpoint, "/etc/hostname", settings, attempts=1)
    with pytest.raises(ProviderError, match="outside the instance disk"):
        read_remote_file(endpoint, "/../../etc/hostname", settings, attempts=1)
    (disk / "workspace" / "escape").symlink_to("/etc")
    with pytest.raises(ProviderError, match="outside the instance disk"):
        read_remote_file(endpoint, "/workspace/escape/hostname", settings, attempts=1)


@NEEDS_SSHD
def test_shell_operators_are_refused_and_nothing_runs(
    server: SshServer, disk: Path, key_dir: Path, tmp_path: Path
) -> None:
    victim = disk / "workspace" / "results" / "keep.txt"
    victim.write_text("still here")
    done = ssh_run(server, key_dir, tmp_path, f"cat /workspace/results/keep.txt ; rm {victim}")
    assert done.returncode == 126
    assert "refused" in done.stderr and "without a shell" in done.stderr
    assert victim.read_text() == "still here"
    listing = ssh_run(server, key_dir, tmp_path, "ls /workspace/results")
    assert listing.returncode == 0 and listing.stdout.split() == ["keep.txt"]
    # Commands run in the box's home with the box root exported, as onstart scripts see it.
    env = ssh_run(server, key_dir, tmp_path, "env")
    assert f"RGT_BOX_ROOT={os.path.realpath(disk)}" in env.stdout
    assert f"HOME={os.path.realpath(disk)}/root" in env.stdout


@NEEDS_SSHD
def test_a_login_does_not_run_this_machines_shell_startup_files(
    server: SshServer, disk: Path, key_dir: Path, tmp_path: Path
) -> None:
    # sshd runs its ForceCommand through the user's shell, and bash sources ~/.bashrc for a
    # command sshd starts. With HOME from this machine's passwd that was this machine's
    # startup files on every login (a pyenv/conda init: ~0.5 s a login, rsync logs in once
    # per copy). The wrapper must see a HOME of the emulator's own, without startup files.
    argv = ["ssh", "-p", str(server.port), "-i", str(ensure_client_key(key_dir))]
    argv += ["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    argv += ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={tmp_path}/kh"]
    session = subprocess.Popen([*argv, "root@127.0.0.1", "sleep 60"], stdin=subprocess.DEVNULL)
    try:
        wrapper = _wait_for_process(f"serve-command\0{os.path.realpath(disk)}\0")
        environment = dict(
            entry.split("=", 1)
            for entry in Path(f"/proc/{wrapper}/environ").read_text().split("\0")
            if "=" in entry
        )
    finally:
        session.kill()
        session.wait()
    home = environment["HOME"]
    assert home != pwd.getpwuid(os.getuid()).pw_dir, "the login's shell read this user's home"
    assert not any((Path(home) / name).exists() for name in (".bashrc", ".profile")), home


def _wait_for_process(cmdline_part: str, seconds: float = 30) -> int:
    """The pid of the process whose command line holds `cmdline_part` (NUL-separated)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline_part in cmdline:
                return int(entry)
        time.sleep(0.05)
    raise AssertionError(f"no process with {cmdline_part!r} in its command line")


@NEEDS_SSHD
def test_a_login_uses_the_cheap_key_exchange(
    server: SshServer, key_dir: Path, tmp_path: Path
) -> None:
    # OpenSSH 9's default exchange (sntrup761x25519) cost the client ~75 ms of CPU per login,
    # and the suite logs in thousands of times: the emulator's sshd offers X25519 only.
    argv = ["ssh", "-v", "-p", str(server.port), "-i", str(ensure_client_key(key_dir))]
    argv += ["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    argv += ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={tmp_path}/kh"]
    done = subprocess.run(
        [*argv, "root@127.0.0.1", "true"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kex: algorithm: curve25519-sha256" in done.stderr, done.stderr[-2000:]


@NEEDS_SSHD
def test_a_key_the_emulator_did_not_issue_is_refused(
    server: SshServer, key_dir: Path, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    settings = SshSettings(known_hosts=tmp_path / "kh", identity_file=stranger)
    with pytest.raises(ProviderError, match=r"(?i)permission denied"):
        read_remote_file(endpoint_of(server), "/workspace", settings, attempts=1)


@NEEDS_SSHD
def test_each_instance_sees_only_its_own_disk_and_stop_closes_the_port(
    key_dir: Path, tmp_path: Path
) -> None:
    servers = []
    for name in ("a", "b"):
        disk = tmp_path / name
        (disk / "workspace").mkdir(parents=True)
        (disk / "workspace" / "who").write_text(name)
        servers.append(SshServer(disk, key_dir))
    try:
        ports = [s.start() for s in servers]
        assert ports[0] != ports[1]
        settings = settings_for(key_dir, tmp_path)
        seen = [read_remote_file(endpoint_of(s), "/workspace/who", settings) for s in servers]
        assert seen == [b"a", b"b"]
        servers[0].stop()
        servers[0].stop()  # idempotent
        assert not servers[0].running
        with pytest.raises(ProviderError, match=r"(?i)refused"):
            read_remote_file(
                SshEndpoint("127.0.0.1", ports[0]), "/workspace/who", settings, attempts=1
            )
        # A restart (the instance started again) serves the same disk again.
        servers[0].start()
        assert read_remote_file(endpoint_of(servers[0]), "/workspace/who", settings) == b"a"
    finally:
        for s in servers:
            s.stop()


@NEEDS_SSHD
def test_a_killed_copy_resumes_through_the_counting_relay(
    server: SshServer, disk: Path, key_dir: Path, tmp_path: Path
) -> None:
    size, files = 1_000_000, 4
    contents = {}
    for index in range(files):
        data = os.urandom(size)
        (disk / "workspace" / "results" / f"p{index}.bin").write_bytes(data)
        contents[f"p{index}.bin"] = data
    local = tmp_path / "local"
    killed: list[int] = []

    def kill_midway(tick: CopyProgress) -> None:
        if not killed and tick.bytes_done >= 0.4 * size * files:
            killed.extend(rsync_processes())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    report = rsync_pull(
        endpoint_of(server),
        "/workspace/results",
        local,
        settings_for(key_dir, tmp_path),
        copy=CopySettings(bwlimit_kbps=5000, first_backoff=0.1),
        progress=kill_midway,
    )
    assert killed and len(report.attempts) == 2
    for name, data in contents.items():
        assert (local / "results" / name).read_bytes() == data
    # The resumed attempt sent less than everything: what had arrived was not sent again.
    assert report.attempts[1].payload_bytes < size * files * 0.7
    # The box-side sender of the killed session did not linger.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lingering = subprocess.run(
            ["pgrep", "-f", f"rsync --server --sender .*{os.path.realpath(disk)}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if not lingering:
            break
        time.sleep(0.2)
    assert not lingering


# -- the fallback without sshd -------------------------------------------------------------------


def test_without_sshd_copies_fall_back_to_local_rsync_and_say_so(
    disk: Path, key_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORCE_LOCAL_ENV, "1")
    # Megabytes, not a few bytes: the stand-in shares non-blocking pipes with rsync, and a
    # small file fits in one pipe buffer without ever meeting a full pipe.
    data = os.urandom(2_000_000)
    (disk / "workspace" / "results" / "a.bin").write_bytes(data)
    fallback = SshServer(disk, key_dir)
    port = fallback.start()
    try:
        assert fallback.transport == "local"
        assert "no sshd" in fallback.note and "local rsync" in fallback.note
        for name, value in ssh_client_environment(key_dir).items():
            monkeypatch.setenv(name, value)
        assert "local-ssh" in os.environ["RGT_SSH_COMMAND"]
        assert transport_name() == "rsync over RGT_SSH_COMMAND"
        settings = settings_for(key_dir, tmp_path)
        endpoint = SshEndpoint("127.0.0.1", port)
        report = rsync_pull(endpoint, "/workspace/results", tmp_path / "local", settings)
        assert (tmp_path / "local" / "results" / "a.bin").read_bytes() == data
        assert len(report.attempts) == 1 and report.bytes_transferred == len(data)
        assert fallback.traffic()[0] >= len(data)
        with pytest.raises(ProviderError, match="outside the instance disk"):
            read_remote_file(endpoint, "/../etc/hostname", settings, attempts=1)
    finally:
        fallback.stop()
    # Once stopped, the port leads nowhere, like a closed sshd (ssh's exit status 255).
    with pytest.raises(ProviderError, match=r"(?i)refused"):
        read_remote_file(
            SshEndpoint("127.0.0.1", port),
            "/workspace",
            settings_for(key_dir, tmp_path),
            attempts=1,
        )


@NEEDS_SSHD
def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def test_sshds_left_by_a_killed_emulator_are_reaped(disk: Path, key_dir: Path) -> None:
    from rgt.sim.ssh import reap_stale_servers

    orphan = SshServer(disk, key_dir)
    port = orphan.start()
    assert orphan._proc is not None
    pid = orphan._proc.pid
    # The emulator process died without stop(): forget the server object, keep its sshd.
    orphan._proc = None
    # A connection it still serves is a child sshd with the same command line: stopped too,
    # and still one server (a probe's connection once made this count 2 on a busy machine).
    held = socket.create_connection(("127.0.0.1", port))
    deadline = time.monotonic() + 10
    while not _children(pid):
        assert time.monotonic() < deadline, "sshd never forked for the held connection"
        time.sleep(0.05)
    assert reap_stale_servers(key_dir) == 1
    held.close()
    # It ends (sshd exits 0 on SIGTERM); waitpid would block, and the test time out, if not.
    # It is our child here; after a real crash init would reap it.
    os.waitpid(pid, 0)
    with pytest.raises(ProviderError):
        read_remote_file(
            SshEndpoint("127.0.0.1", port),
            "/workspace",
            SshSettings(
                known_hosts=key_dir.parent / "kh", identity_file=ensure_client_key(key_dir)
            ),
            attempts=1,
        )
    assert not list(key_dir.glob("sshd-*"))
    assert reap_stale_servers(key_dir) == 0


def test_every_server_counts_its_own_traffic_from_zero(disk: Path, key_dir: Path) -> None:
    """The emulator starts a new server per container start and bills its totals from zero:
    a new server must never pick up an earlier one's log."""
    key_dir.mkdir(parents=True)
    seen = set()
    for _ in range(50):
        server = SshServer(disk, key_dir)
        assert server.traffic() == (0, 0)
        assert server.traffic_file not in seen
        seen.add(server.traffic_file)
        server.traffic_file.write_text("100 10\n")
        assert server.traffic() == (100, 10)
        del server
