"""`rgt poll` reads the job status record the real boot hook keeps on the box: on the emulator
(real vastai SDK, real sshd on loopback, the real rendered onstart) a failing job is reported
`failed (exit 2)` at the first poll after it exits, with its logs pulled to the run's local dir;
`poll --until done` (CLI) and `poll` with wait_seconds (a real MCP client) return when the
manifest appears. The stale and unreachable cases use the directory-backed stand-in provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from rgt import lifecycle
from rgt.job import load_job
from rgt.jobstatus import status_remote_path
from rgt.ledger import Ledger
from rgt.profile import load_profile
from tests.conftest import assert_no_canary
from tests.ironlaw_standin import LocalBoxProvider

REPO = Path(__file__).resolve().parents[1]
GATE = "$RGT_BOX_ROOT/go"  # the job waits for this file: the test decides when it finishes
WAITING = (
    f'echo waiting; for _ in $(seq 600); do [ -e "{GATE}" ] && break; sleep 0.1; done; '
    'echo 7 >"$RGT_CHECKPOINT_DIR/step-000007.ckpt"; '
    'mkdir -p "$RGT_RESULTS_ROOT/cell-a"; echo "{}" >"$RGT_RESULTS_ROOT/cell-a/metrics.json"'
)
FAILING = (
    'for i in $(seq 1 25); do echo "epoch $i"; done; '
    'echo "error: unrecognized arguments: --lr-typo" >&2; exit 2'
)


def _write_job(directory: Path, run_id: str, command: str) -> Path:
    data = yaml.safe_load((REPO / "schemas" / "job.example.yaml").read_text())
    data.update(run_id=run_id, command=command, files={})
    path = directory / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _launch(job_path: Path) -> str:
    """Rent the cheapest fitting offer for the job through the real SDK; the instance id."""
    from rgt.providers.vastai import VastProvider

    provider = VastProvider()
    job = load_job(job_path)
    query = lifecycle.offer_query_for_job(job, interruptible=False, limit=5)
    offer = provider.search_offers(query)[0]
    with Ledger.open() as ledger:
        launched = lifecycle.launch(
            provider=provider,
            ledger=ledger,
            profile=load_profile("vastai"),
            job=job,
            offer_id=offer.id,
            max_price_per_hour=offer.dph_total + 1,
        )
    return launched.instance_id


def _rgt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "rgt", *args], capture_output=True, text=True, timeout=timeout
    )
    assert_no_canary(result.stdout, result.stderr)
    return result


def _box_status(emulator: Any, instance_id: str, run_id: str) -> dict[str, Any] | None:
    remote = status_remote_path(load_profile("vastai"), run_id)
    path = emulator.instance_disk(instance_id) / remote.lstrip("/")
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _wait_for(check: Any, what: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)
    return value


def _assert_alive(emulator: Any, instance_id: str) -> None:
    """Polling never ends a rental: the instance and its disk are still there."""
    assert int(instance_id) in emulator.instance_ids()
    assert emulator.instance_disk(instance_id).is_dir()
    assert emulator.request_count("DELETE") == 0


@pytest.mark.timeout(180)
def test_a_failing_job_is_failed_exit_2_at_the_next_poll_with_its_logs_pulled(
    emulator: Any, tmp_path: Path
) -> None:
    run_id = "fails-fast"
    instance_id = _launch(_write_job(tmp_path, run_id, FAILING))
    # The job exits 2 on the box; the record says so (the boot hook wrote it).
    _wait_for(
        lambda: (s := _box_status(emulator, instance_id, run_id)) and s["outcome"] == "failed",
        "the boot hook to record the failure",
    )
    polled = _rgt("poll", instance_id, "--json")
    assert polled.returncode == 0, polled.stderr
    report = json.loads(polled.stdout)
    job = report["job"]
    assert (report["state"], report["run_id"]) == ("running", run_id)
    assert (job["state"], job["exit_code"], job["attempt"]) == ("failed", 2, 1)
    assert job["summary"] == "failed (exit 2) on attempt 1"
    assert job["log_tail"][-1] == "error: unrecognized arguments: --lr-typo"
    assert job["log_tail"][-2] == "epoch 25" and len(job["log_tail"]) == 20
    # The box's state dir of the run was copied before anything was suggested.
    local = Path(os.environ["RGT_STATE_DIR"]) / "runs" / run_id
    assert job["logs_dir"] == str(local)
    assert json.loads((local / "status.json").read_text())["outcome"] == "failed"
    assert "error: unrecognized arguments" in (local / "job.log").read_text()
    assert "the job exited 2" in (local / "onstart.log").read_text()
    assert (
        str(local) in report["next_action"] and "FAILED with exit code 2" in report["next_action"]
    )
    assert "still bills compute" in report["next_action"]

    human = _rgt("poll", instance_id)
    assert human.returncode == 0, human.stderr
    assert "  job: failed (exit 2) on attempt 1\n" in human.stdout
    assert "    | error: unrecognized arguments: --lr-typo" in human.stdout
    # Waiting for a job that already failed returns at once, exit 1.
    waited = _rgt("poll", instance_id, "--until", "done", "--timeout", "60", "--json")
    assert waited.returncode == 1, waited.stderr
    assert json.loads(waited.stdout)["job"]["state"] == "failed"
    _assert_alive(emulator, instance_id)


@pytest.mark.timeout(180)
def test_poll_until_done_returns_when_the_manifest_appears(emulator: Any, tmp_path: Path) -> None:
    run_id = "waits-for-go"
    instance_id = _launch(_write_job(tmp_path, run_id, WAITING))
    disk = emulator.instance_disk(instance_id)
    _wait_for(lambda: _box_status(emulator, instance_id, run_id), "the first status record")

    running = _rgt("poll", instance_id, "--json")
    report = json.loads(running.stdout)
    assert report["job"]["state"] == "running" and report["job"]["attempt"] == 1
    assert "--until done" in report["next_action"]
    # Not done within the timeout: exit 5, the job still running.
    short = _rgt("poll", instance_id, "--until", "done", "--timeout", "1", "--interval", "1")
    assert short.returncode == 5, short.stdout + short.stderr
    assert "job: running" in short.stdout and "waited:" in short.stdout

    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rgt",
            "poll",
            instance_id,
            "--until",
            "done",
            "--json",
            "--timeout",
            "120",
            "--interval",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # It polled once and waits (it says so on stderr); the job finishes only now.
        assert waiting.stderr is not None
        first = waiting.stderr.readline()
        assert ": job running (attempt 1)" in first and waiting.poll() is None, first
        (disk / "go").touch()
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, out + err
    assert "job succeeded" in err
    done = json.loads(out)
    assert done["job"]["state"] == "succeeded" and done["job"]["last_checkpoint"] == (
        "step-000007.ckpt"
    )
    assert done["waited_seconds"] > 0
    assert (disk / "workspace/results/PULL_MANIFEST.json").is_file()
    assert f"rgt pull {instance_id} /workspace/results " in done["next_action"]
    _assert_alive(emulator, instance_id)


@pytest.mark.timeout(180)
@pytest.mark.anyio
async def test_mcp_poll_waits_with_progress_and_reports_failures(
    emulator: Any, tmp_path: Path
) -> None:
    from tests.mcp_client import connect

    waiting_id = await anyio.to_thread.run_sync(
        lambda: _launch(_write_job(tmp_path, "mcp-waits", WAITING))
    )
    failing_id = await anyio.to_thread.run_sync(
        lambda: _launch(_write_job(tmp_path, "mcp-fails", FAILING))
    )
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))
        if message and "running" in message:
            (emulator.instance_disk(waiting_id) / "go").touch()

    async with connect(emulator, "auto") as session:
        bounded = await session.call("poll", {"instance_id": waiting_id, "wait_seconds": 601})
        assert bounded.is_error and "600" in bounded.content[0].text  # type: ignore[union-attr]
        done = await session.data(
            "poll",
            {"instance_id": waiting_id, "wait_seconds": 120, "interval_seconds": 1},
            progress_callback=on_progress,
        )
        assert done["job"]["state"] == "succeeded", done
        assert progress and all(total == 120 for _, total, _ in progress)
        assert any("job running" in (message or "") for _, _, message in progress)
        assert done["waited_seconds"] > 0
        disk = emulator.instance_disk(waiting_id)
        assert (disk / "workspace/results/PULL_MANIFEST.json").is_file()

        failed = await session.data(
            "poll", {"instance_id": failing_id, "wait_seconds": 120, "interval_seconds": 1}
        )
        assert (failed["job"]["state"], failed["job"]["exit_code"]) == ("failed", 2)
        assert Path(failed["job"]["logs_dir"], "job.log").is_file()
        once = await session.data("poll", {"instance_id": failing_id})
        assert once["waited_seconds"] is None and once["job"]["state"] == "failed"
    for instance_id in (waiting_id, failing_id):
        _assert_alive(emulator, instance_id)


# -- the stand-in provider: records the real hook could leave behind ---------------------------


def _standin_with_record(tmp_path: Path, record: dict[str, Any] | bytes | None) -> Any:
    provider = LocalBoxProvider(tmp_path / "boxes")
    provider.add_box("42", state="running")
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", "42", label="rgt:r1", profile="vastai", price_per_hour=1)
    if record is not None:
        path = provider.box_path("42", status_remote_path(load_profile("vastai"), "r1"))
        path.parent.mkdir(parents=True)
        path.write_bytes(record if isinstance(record, bytes) else json.dumps(record).encode())
    return provider


def _poll(provider: Any, **options: Any) -> lifecycle.PollReport:
    with Ledger.open() as ledger:
        return lifecycle.poll(
            "42", provider=provider, ledger=ledger, profile=load_profile("vastai"), **options
        )


def _old_running_record(beat: str) -> dict[str, Any]:
    return {
        "schema": "rgt.job-status/v1",
        "run_id": "r1",
        "attempt": 3,
        "outcome": "running",
        "started": beat,
        "ended": None,
        "heartbeat": beat,
        "heartbeat_seconds": 60,
        "last_checkpoint": "step-000035.ckpt",
        "exit_code": None,
        "log_tail": [],
        "manifest": False,
    }


def test_a_record_whose_heartbeat_stopped_is_stale_not_running(tmp_path: Path) -> None:
    from rgt.jobstatus import utc_seconds

    provider = _standin_with_record(tmp_path, _old_running_record("2026-01-01T00:00:00Z"))
    beat = utc_seconds("2026-01-01T00:00:00Z")
    fresh = _poll(provider, read_job=True, now=beat + 240)
    assert fresh.job is not None and fresh.job.state == "running"
    assert fresh.job.summary == "running step 35 (attempt 3, last checkpoint step-000035.ckpt)"
    stale = _poll(provider, read_job=True, now=beat + 241)
    assert stale.job is not None and stale.job.state == "stale"
    assert "last heartbeat was 241 s ago" in stale.job.summary
    assert "killed" in stale.next_action and "probably not running" in stale.next_action
    # Without read_job (rgt cost polls every instance) nothing is read off the box.
    assert _poll(provider).job is None


def test_no_record_unreadable_record_and_a_box_that_is_not_running(tmp_path: Path) -> None:
    provider = _standin_with_record(tmp_path, None)
    missing = _poll(provider, read_job=True)
    assert missing.job is not None and missing.job.state == "no-record"
    assert "poll again" in missing.next_action
    provider = _standin_with_record(tmp_path / "other", b'{"schema": "something else"}')
    bad = _poll(provider, read_job=True)
    assert bad.job is not None and bad.job.state == "unreadable"
    assert "schema is 'something else'" in bad.job.summary
    provider.stop("42")
    stopped = _poll(provider, read_job=True)
    assert stopped.job is not None and stopped.job.state == "not-read"
    assert stopped.classification == "stopped-but-billing"
    assert "still bills" in stopped.next_action  # the instance's state speaks


def test_cli_flags_of_waiting_are_checked() -> None:
    for args, message in (
        (["--timeout", "5"], "--timeout and --interval go with --until done"),
        (["--until", "done", "--timeout", "0"], "--timeout 0: must be a number of seconds > 0"),
        (["--until", "done", "--interval", "nan"], "--interval nan: must be a number"),
    ):
        result = _rgt("poll", "1", *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr
