"""rgt.providers.rsync against a real OpenSSH sshd on 127.0.0.1 and the real rsync.

The sshd here is this test module's own (generated host and client keys, loopback only), so the
copy mechanics are tested without the vast.ai emulator; tests/test_provider_vastai.py copies
off emulated instances through VastProvider.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rgt import loopback
from rgt.errors import CheckFailed, ProviderError, UsageError
from rgt.loopback import start_on_free_port, wait_listening
from rgt.providers.base import CopyProgress
from rgt.providers.rsync import (
    PARTIAL_DIR,
    CopySettings,
    SshEndpoint,
    SshSettings,
    identity_from_environment,
    low_priority_copy,
    read_remote_file,
    rsync_pull,
)
from tests.copy_helpers import (
    CUT_FILE_BYTES,
    bytes_on_disk,
    make_result_tree,
    wait_for_cut_file,
)
from tests.procs import rsync_processes
from tests.smalldisk import small_disk

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SshEndpoint, Path]]:
    """A loopback sshd accepting one generated client key; yields (endpoint, client key)."""
    if not (os.path.exists(SSHD) and shutil.which("rsync") and shutil.which("ssh-keygen")):
        pytest.skip("sshd, rsync or ssh-keygen not installed")
    # OpenSSH refuses to start without its privilege separation directory.
    try:
        Path("/run/sshd").mkdir(exist_ok=True)
    except OSError:
        if not Path("/run/sshd").is_dir():
            pytest.skip("sshd needs /run/sshd and it cannot be created here")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True
        )
    authorized = root / "authorized_keys"
    shutil.copy(root / "client_key.pub", authorized)
    authorized.chmod(0o600)
    user = (
        os.environ.get("USER")
        or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    )

    def start_on(port: int) -> tuple[int, subprocess.Popen[bytes]]:
        """sshd on `port` once it listens; PortTaken when another process took the port."""
        (root / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
            f"StrictModes no\nPidFile {root / 'sshd.pid'}\nAllowUsers {user}\n"
            # A HOME without startup files: bash sources ~/.bashrc for sshd's commands.
            f"SetEnv HOME={root}\n"
        )
        log = root / "sshd.log"
        log.unlink(missing_ok=True)
        proc = subprocess.Popen([SSHD, "-D", "-f", str(root / "sshd_config"), "-E", str(log)])
        try:
            wait_listening(proc, port, 10, lambda: log.read_text() if log.exists() else "")
        except loopback.NotListening as exc:
            proc.kill()
            proc.wait()
            pytest.skip(f"sshd did not start: {exc}")
        return port, proc

    port, proc = start_on_free_port(start_on)
    try:
        yield SshEndpoint("127.0.0.1", port, user=user), root / "client_key"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def settings(sshd: tuple[SshEndpoint, Path], tmp_path: Path) -> SshSettings:
    return SshSettings(known_hosts=tmp_path / "known_hosts", identity_file=sshd[1])


@pytest.mark.timeout(60)
def test_copies_a_tree_and_pins_the_host_key(
    sshd: tuple[SshEndpoint, Path], settings: SshSettings, tmp_path: Path
) -> None:
    endpoint = sshd[0]
    box = tmp_path / "box"
    contents = make_result_tree(box, files=4, size=50_000)
    ticks: list[CopyProgress] = []
    report = rsync_pull(
        endpoint, str(box / "results"), tmp_path / "local", settings, progress=ticks.append
    )
    for relative, data in contents.items():
        assert (tmp_path / "local" / relative).read_bytes() == data
    assert len(report.attempts) == 1
    assert report.bytes_transferred == 200_000
    assert ticks and ticks[-1].bytes_done == 200_000 and ticks[-1].bytes_total == 200_000
    # First contact pinned the box's own host key in rgt's known_hosts file.
    host_key = (sshd[1].parent / "host_key.pub").read_text().split()[1]
    assert host_key in settings.known_hosts.read_text()

    # A second pull of an unchanged tree sends no file content at all.
    again = rsync_pull(endpoint, str(box / "results"), tmp_path / "local", settings)
    assert again.bytes_transferred == 0


@pytest.mark.timeout(60)
def test_a_low_priority_copy_runs_the_boxs_rsync_at_the_lowest_priority(
    sshd: tuple[SshEndpoint, Path], settings: SshSettings, tmp_path: Path
) -> None:
    """A copy made while the job runs (durable checkpoints) must not take the job's CPU: the
    box-side rsync (the sender, under the box's sshd) runs at nice 19, a normal copy's at 0."""
    endpoint = sshd[0]
    box = tmp_path / "box"
    make_result_tree(box, files=2, size=1_000_000)
    source = str(box / "results")

    def box_side_nice() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # The box's rsync itself (not the local ssh whose arguments carry its command).
            is_rsync = os.path.basename(argv[0]) == b"rsync"
            if is_rsync and b"--sender" in argv and source.encode() in argv[-2]:
                found.append(int(fields[16]))
        return found

    for copy, expected in (
        (low_priority_copy(CopySettings(bwlimit_kbps=2000)), 19),
        # The box's default: the niceness this test runs at (`nice make test` raises it).
        (CopySettings(bwlimit_kbps=2000), os.nice(0)),
    ):
        seen: list[int] = []
        local = tmp_path / f"local-{expected}"
        rsync_pull(
            endpoint,
            source,
            local,
            settings,
            copy=copy,
            progress=lambda tick, seen=seen: seen.extend(box_side_nice()),
        )
        assert (local / "results").is_dir()
        assert seen and set(seen) == {expected}, seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_receiver", [False, True], ids=["kill-rsync", "kill-all-rsyncs"])
def test_killed_copy_resumes_without_resending_completed_bytes(
    sshd: tuple[SshEndpoint, Path], settings: SshSettings, tmp_path: Path, with_receiver: bool
) -> None:
    endpoint, _ = sshd
    box = tmp_path / "box"
    size = 1_500_000
    contents = make_result_tree(box, files=6, size=size)
    total = 6 * size
    local = tmp_path / "local"
    complete_at_kill: list[int] = []
    present_at_kill: list[int] = []

    def kill_midway(tick: CopyProgress) -> None:
        # Kill the copy once about 40% has arrived and the next file is under way.
        if complete_at_kill or tick.bytes_done < 0.4 * total:
            return
        wait_for_cut_file(local)
        complete_at_kill.append(
            sum(len(data) for relative, data in contents.items() if (local / relative).exists())
        )
        # Every byte on the local disk now: complete files plus rsync's temp file of the cut one.
        present_at_kill.append(bytes_on_disk(local))
        # SIGKILL: no chance to clean up. Killing the receiver too leaves its temp file
        # behind instead of a file in the partial dir.
        for pid in rsync_processes(with_receiver=with_receiver):
            os.kill(pid, signal.SIGKILL)

    report = rsync_pull(
        endpoint,
        str(box / "results"),
        local,
        settings,
        copy=CopySettings(bwlimit_kbps=6000, first_backoff=0.1),
        progress=kill_midway,
    )
    assert complete_at_kill, "the copy finished before it could be interrupted"
    assert len(report.attempts) == 2
    first, resumed = report.attempts
    assert first.returncode == -signal.SIGKILL
    assert resumed.returncode == 0 and resumed.literal_bytes is not None
    # The resumed run re-sent nothing that had arrived before the kill: not the complete files,
    # not the cut file's head (a block of slack: delta transfer works in blocks)...
    assert complete_at_kill[0] >= size
    assert present_at_kill[0] > complete_at_kill[0], "the kill did not cut a file"
    assert resumed.literal_bytes <= total - present_at_kill[0] + 64 * 1024
    # ...and every byte is right (rsync checks each file's whole-file checksum; we re-read).
    for relative, data in contents.items():
        assert (local / relative).read_bytes() == data
    assert not list(local.rglob(PARTIAL_DIR))


@pytest.mark.timeout(60)
def test_a_killed_attempt_never_moves_a_users_file_named_like_a_temp_file(
    sshd: tuple[SshEndpoint, Path], settings: SshSettings, tmp_path: Path
) -> None:
    # Was: between attempts every ".NAME.XXXXXX" under the target whose NAME was absent was
    # taken for rsync's temp file and moved into the partial dir, the biggest per name first.
    endpoint, _ = sshd
    box = tmp_path / "box"
    size = 1_500_000
    contents = make_result_tree(box, files=6, size=size)
    local = tmp_path / "local"
    # The user's file, named like rsync's temp file of a result, and bigger than one could be.
    theirs = local / "results" / "ckpt" / ".part5.bin.backup"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"mine" * 500_000)
    killed: list[int] = []

    def kill_midway(tick: CopyProgress) -> None:
        # Two files done: ckpt/part5.bin (the third in rsync's order) is next; kill once some
        # of it has arrived.
        if killed or tick.bytes_done < 2 * size:
            return
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not [
            p
            for p in theirs.parent.glob(".part5.bin.*")
            if p != theirs and p.stat().st_size >= CUT_FILE_BYTES
        ]:
            time.sleep(0.02)
        killed.extend(rsync_processes(with_receiver=True))
        for pid in killed:
            os.kill(pid, signal.SIGKILL)  # its temp file stays behind, next to the user's

    report = rsync_pull(
        endpoint,
        str(box / "results"),
        local,
        settings,
        copy=CopySettings(bwlimit_kbps=6000, first_backoff=0.1),
        progress=kill_midway,
    )
    assert killed and len(report.attempts) == 2
    assert theirs.read_bytes() == b"mine" * 500_000
    for relative, data in contents.items():
        assert (local / relative).read_bytes() == data
    assert sorted(p.name for p in theirs.parent.iterdir()) == [
        ".part5.bin.backup",
        "part1.bin",
        "part3.bin",
        "part5.bin",
    ]


@pytest.mark.timeout(60)
def test_missing_remote_path_fails_once_with_one_line(
    sshd: tuple[SshEndpoint, Path], settings: SshSettings, tmp_path: Path
) -> None:
    endpoint, _ = sshd
    with pytest.raises(ProviderError) as caught:
        rsync_pull(
            endpoint,
            str(tmp_path / "no-such-dir"),
            tmp_path / "local",
            settings,
            copy=CopySettings(first_backoff=0.01),
        )
    message = str(caught.value)
    assert "\n" not in message and "No such file" in message
    assert "after 1 attempt(s)" in message


@pytest.mark.timeout(60)
def test_unreachable_host_gives_up_after_bounded_attempts(
    settings: SshSettings, tmp_path: Path
) -> None:
    dead = SshEndpoint("127.0.0.1", loopback.free_port())
    waits: list[float] = []
    with pytest.raises(ProviderError, match="after 3 attempt"):
        rsync_pull(
            dead,
            "/results",
            tmp_path / "local",
            settings,
            copy=CopySettings(attempts=3, first_backoff=0.05),
            sleep=waits.append,
        )
    assert waits == [0.05, 0.1]  # bounded by count and backoff, not by this machine's speed


@pytest.mark.timeout(120)
def test_a_full_local_disk_stops_the_copy_without_a_retry(
    sshd: tuple[SshEndpoint, Path], settings: SshSettings, tmp_path: Path
) -> None:
    # Issue #18 item 7: rsync's "No space left on device" (exit 11) was retried like a dropped
    # link, five attempts over 35 s. A real full disk: a 128 KiB tmpfs for 600 kB of results.
    endpoint, _ = sshd
    box = tmp_path / "box"
    make_result_tree(box, files=2, size=300_000)
    waits: list[float] = []
    with small_disk(tmp_path / "disk", 128) as local, pytest.raises(UsageError) as caught:
        rsync_pull(
            endpoint,
            str(box / "results"),
            local,
            settings,
            copy=CopySettings(attempts=5, first_backoff=0.01),
            sleep=waits.append,
        )
    assert waits == []  # stopped at the first failure
    message = str(caught.value)
    assert "no space left on device" in message and str(local) in message, message
    assert caught.value.exit_code == 2 and "\n" not in message


@pytest.mark.timeout(60)
def test_read_remote_file_returns_bytes_and_names_a_missing_file(
    sshd: tuple[SshEndpoint, Path], settings: SshSettings, tmp_path: Path
) -> None:
    endpoint, _ = sshd
    target = tmp_path / "with space" / "PULL_MANIFEST.json"
    target.parent.mkdir()
    target.write_bytes(b'{"run_id": "r1"}\n')
    assert read_remote_file(endpoint, str(target), settings) == b'{"run_id": "r1"}\n'
    with pytest.raises(ProviderError, match="No such file"):
        read_remote_file(endpoint, str(tmp_path / "missing.json"), settings)
    with pytest.raises(UsageError):
        read_remote_file(endpoint, "relative/path", settings)


@pytest.mark.timeout(60)
def test_read_remote_file_stops_reading_once_past_its_cap(
    sshd: tuple[SshEndpoint, Path], settings: SshSettings, tmp_path: Path
) -> None:
    # Issue #18 item 6: a 400 MB manifest on the box was read whole (~1 GB of memory) before
    # the size refusal. Here the box's file is a FIFO fed 4 MiB and then held open without an
    # end: a reader that waits for EOF (the old subprocess.run) times out; a streaming reader
    # refuses once past its cap and kills ssh, which ends the writer with EPIPE.
    fifo = tmp_path / "PULL_MANIFEST.json"
    os.mkfifo(fifo)
    stop = threading.Event()
    fed: list[int] = []

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as handle:
            for _ in range(4):
                handle.write(b"x" * 1024 * 1024)
                handle.flush()
                fed.append(1)
            stop.wait(30)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    endpoint, _ = sshd
    try:
        with pytest.raises(CheckFailed) as caught:
            read_remote_file(
                endpoint, str(fifo), settings, attempts=1, timeout=20, max_bytes=1024 * 1024
            )
    finally:
        stop.set()
        writer.join(timeout=30)
    message = str(caught.value)
    assert "larger than rgt reads over ssh (1 MiB (1,048,576 bytes) at most" in message, message
    assert "\n" not in message


@pytest.mark.timeout(60)
def test_a_changed_host_key_is_refused(
    sshd: tuple[SshEndpoint, Path], settings: SshSettings, tmp_path: Path
) -> None:
    endpoint, _ = sshd
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
        check=True,
    )
    other_key = (tmp_path / "other.pub").read_text().split()[:2]
    settings.known_hosts.write_text(f"[127.0.0.1]:{endpoint.port} {' '.join(other_key)}\n")
    with pytest.raises(ProviderError, match=r"(?i)host key"):
        read_remote_file(endpoint, "/etc/hostname", settings, attempts=1)


def test_ssh_key_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RGT_SSH_KEY", raising=False)
    assert identity_from_environment() is None
    key = tmp_path / "id_test"
    key.write_text("not really a key")
    monkeypatch.setenv("RGT_SSH_KEY", str(key))
    assert identity_from_environment() == key
    monkeypatch.setenv("RGT_SSH_KEY", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="RGT_SSH_KEY"):
        identity_from_environment()
