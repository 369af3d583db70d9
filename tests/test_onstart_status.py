"""The job status record written by the real rendered boot hook, run with bash on this machine
(box paths under $RGT_BOX_ROOT, as the emulator runs it): success, a failing job (exit 2), a
SIGTERM'd hook, the heartbeat, a hook killed -9, the Slurm launcher that supervises the hook, and
every record against schemas/job_status.schema.json."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rgt.job import JobRequest, load_job
from rgt.jobstatus import parse_status
from rgt.profile import Profile, load_profile
from rgt.render import bundle_path, render_template

pytestmark = pytest.mark.timeout(90)

RUN_ID = "status-test"


def _job(command: str, **changes: Any) -> JobRequest:
    data = load_job().as_dict()
    data.update(run_id=RUN_ID, command=command, checkpoint_glob="step-*.ckpt", files={})
    data.update(changes)
    return JobRequest.from_dict(data, source="test-job")


def _beating_every_second(tmp_path: Path, name: str = "vastai") -> Profile:
    """The profile with `status_heartbeat_seconds: 1` (tests need not wait a minute)."""
    text = load_profile(name).path.read_text()
    anchor = "\n  python: python3\n"
    assert anchor in text
    text = text.replace(anchor, anchor + "  status_heartbeat_seconds: 1\n", 1)
    path = tmp_path / f"{name}.md"
    path.write_text(text)
    profile = load_profile(path)
    assert profile.status_heartbeat_seconds == 1
    return profile


def _env(box: Path, **extra: str) -> dict[str, str]:
    (box / "root").mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(box / "root"),
        "RGT_BOX_ROOT": str(box),
        **extra,
    }


def _state(box: Path) -> Path:
    return box / "workspace/.rgt" / RUN_ID


def _record(box: Path) -> dict[str, Any]:
    """The status record on the box, checked against the JSON Schema and the parser."""
    import jsonschema

    from rgt.yamlsource import load_schema

    data = (_state(box) / "status.json").read_bytes()
    record = json.loads(data)
    jsonschema.validate(record, load_schema("job_status.schema.json"))
    assert parse_status(data).to_json() == record
    return dict(record)


def _run(text: str, box: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", text], cwd=box, env=env, capture_output=True, text=True, timeout=60
    )


def _wait_until(check: Any, what: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _read_record(box: Path) -> dict[str, Any] | None:
    try:
        return _record(box)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


FAILING = (
    'for i in $(seq 1 30); do echo "line $i"; done; echo "Traceback: bad flag --lr" >&2; exit 2'
)
SUCCEEDING = (
    'echo 1 >"$RGT_CHECKPOINT_DIR/step-000001.ckpt"; sleep 0.05; '
    'echo 2 >"$RGT_CHECKPOINT_DIR/step-000002.ckpt"; '
    'mkdir -p "$RGT_RESULTS_ROOT/cell-a"; echo "{}" >"$RGT_RESULTS_ROOT/cell-a/m.json"; '
    "echo trained"
)


def test_a_failing_job_is_recorded_failed_with_its_exit_code_and_last_lines(
    tmp_path: Path,
) -> None:
    box = tmp_path / "box"
    # The real (packed) vast.ai hook: fails on its first start, succeeds once the flag is fixed.
    job = _job(f'if [ ! -e "$RGT_BOX_ROOT/fixed" ]; then {FAILING}; fi; {SUCCEEDING}')
    rendered = render_template(load_profile("vastai"), "onstart", job)
    assert rendered.compressed
    env = _env(box)
    failed = _run(rendered.text, box, env)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    record = _record(box)
    assert record["outcome"] == "failed" and record["exit_code"] == 2
    assert (record["run_id"], record["attempt"], record["manifest"]) == (RUN_ID, 1, False)
    # The job's own last 20 lines (stdout and stderr), not the hook's.
    assert record["log_tail"] == [f"line {i}" for i in range(12, 31)] + ["Traceback: bad flag --lr"]
    assert record["ended"] is not None and record["last_checkpoint"] is None
    assert "rgt onstart: start #1" in (_state(box) / "onstart.log").read_text()

    (box / "fixed").touch()
    again = _run(rendered.text, box, env)
    assert again.returncode == 0, again.stdout + again.stderr
    record = _record(box)
    assert (record["outcome"], record["attempt"], record["manifest"]) == ("succeeded", 2, True)
    assert record["exit_code"] is None and record["log_tail"] == []
    assert record["last_checkpoint"] == "step-000002.ckpt"
    assert (box / "workspace/results/PULL_MANIFEST.json").is_file()
    assert (_state(box) / "job.log").read_text() == "trained\n"  # this attempt's output only

    # A later start of the finished run changes nothing, the record included.
    finished = (_state(box) / "status.json").read_bytes()
    third = _run(rendered.text, box, env)
    assert third.returncode == 0 and "already finished" in third.stdout
    assert (_state(box) / "status.json").read_bytes() == finished


def test_a_failure_of_the_hook_itself_is_recorded_with_the_hooks_log(tmp_path: Path) -> None:
    # A secret env var missing: the hook exits 1 before the job starts.
    box = tmp_path / "box"
    text = render_template(load_profile("vastai"), "onstart", _job("true", secret_env=["HF_TOKEN"]))
    result = _run(text.text, box, _env(box))
    assert result.returncode == 1
    record = _record(box)
    assert (record["outcome"], record["exit_code"], record["attempt"]) == ("failed", 1, 1)
    assert not (box / "workspace/checkpoints/starts.log").exists()


def test_sigterm_to_the_hook_records_interrupted_after_the_job_saved(tmp_path: Path) -> None:
    box = tmp_path / "box"
    profile = _beating_every_second(tmp_path)
    command = (
        'trap \'echo "saving on TERM"; echo 5 >"$RGT_CHECKPOINT_DIR/step-000005.ckpt"; '
        "echo saved; exit 143' TERM; "
        'echo 1 >"$RGT_CHECKPOINT_DIR/step-000001.ckpt"; echo started; '
        "while true; do sleep 0.05; done"
    )
    text = render_template(profile, "onstart", _job(command)).text
    hook = subprocess.Popen(
        ["bash", "-c", text],
        cwd=box.mkdir(parents=True) or box,
        env=_env(box),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_until(
            lambda: "started" in _read_file(_state(box) / "job.log"), "the job to start", 60
        )
        # A preemption's grace or a scheduler's stop: SIGTERM to the whole process group.
        os.killpg(hook.pid, signal.SIGTERM)
        out, _ = hook.communicate(timeout=60)
    finally:
        if hook.poll() is None:
            os.killpg(hook.pid, signal.SIGKILL)
            hook.wait(timeout=10)
    assert hook.returncode == 143, out
    record = _record(box)
    assert (record["outcome"], record["exit_code"], record["attempt"]) == ("interrupted", None, 1)
    assert record["last_checkpoint"] == "step-000005.ckpt"  # what the job saved on SIGTERM
    assert record["ended"] is not None
    # The job could still log while it saved (the tees ignore SIGTERM).
    assert (_state(box) / "job.log").read_text().splitlines()[-2:] == ["saving on TERM", "saved"]
    assert "recorded the attempt as interrupted" in out
    _wait_until(lambda: not _group_alive(hook.pid), "the hook's processes to exit")


def _read_file(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _group(pgid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every live process in process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append((int(entry.name), [a.decode(errors="replace") for a in argv]))
    return found


def _group_alive(pgid: int) -> bool:
    return bool(_group(pgid))


def test_the_heartbeat_beats_while_the_job_runs_and_stops_when_the_hook_is_killed(
    tmp_path: Path,
) -> None:
    box = tmp_path / "box"
    profile = _beating_every_second(tmp_path)
    command = (
        'for i in 1 2 3 4 5 6 7 8 9; do echo $i >"$RGT_CHECKPOINT_DIR/step-00000$i.ckpt"; '
        "sleep 0.3; done; while true; do sleep 0.1; done"
    )
    rendered = render_template(profile, "onstart", _job(command))
    box.mkdir()
    hook = subprocess.Popen(
        ["bash", "-c", rendered.text],
        cwd=box,
        env=_env(box),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        first = _wait_until(lambda: _read_record(box), "the first record")
        assert (first["outcome"], first["heartbeat_seconds"], first["ended"]) == (
            "running",
            1,
            None,
        )
        # The heartbeat refreshes the record, with the newest checkpoint the job wrote.
        later = _wait_until(
            lambda: (r := _read_record(box)) and r["heartbeat"] > first["heartbeat"] and r,
            "a later heartbeat",
        )
        assert later["outcome"] == "running" and later["attempt"] == 1
        _wait_until(
            lambda: (r := _read_record(box)) and r["last_checkpoint"] == "step-000009.ckpt",
            "the heartbeat to see the newest checkpoint",
        )
        # kill -9 of the hook alone (its job lives on): the heartbeat loop notices and stops,
        # so the record is left saying running with a heartbeat that ages: stale.
        # The packed form execs the unpacked hook: the same process, and the heartbeat loop is
        # a fork of it (the same argv).
        hook_argv = next(argv for pid, argv in _group(hook.pid) if pid == hook.pid)
        assert hook_argv[-1] == str(_state(box) / "onstart.full.sh")
        assert len([pid for pid, argv in _group(hook.pid) if argv == hook_argv]) >= 2
        os.kill(hook.pid, signal.SIGKILL)
        hook.wait(timeout=10)  # reaped, as a box's init reaps it (a zombie still answers kill -0)
        _wait_until(
            lambda: not [pid for pid, argv in _group(hook.pid) if argv == hook_argv],
            "the heartbeat loop (a fork of the hook) to stop",
        )
        last = _record(box)
        assert last["outcome"] == "running"
        status = parse_status(json.dumps(last).encode())
        beat = status.heartbeat_age(0) * -1
        assert status.is_running(beat) and status.is_stale(beat + status.stale_after() + 1)
        assert _group_alive(hook.pid), "the job itself was not killed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hook.pid, signal.SIGKILL)
        hook.wait(timeout=10)


def test_the_slurm_launcher_records_the_outcome_through_the_hook_it_supervises(
    tmp_path: Path,
) -> None:
    # sbatch (and the Kubernetes entry point: the same scripts/_supervise.sh.j2) run the boot
    # hook, so the record comes from the one fragment: failed, then interrupted on SIGTERM.
    slurm = load_profile("generic-ssh:slurm")
    box = tmp_path / "box"
    home = box / "root"
    state = home / "rgt/.rgt" / RUN_ID  # the profile's data_dir is $HOME/rgt
    env = {**_env(box), "SLURM_JOB_ID": "42"}
    failing = render_template(slurm, "sbatch", _job(FAILING)).text
    result = subprocess.run(
        ["bash", "-c", failing], cwd=box, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    record = json.loads((state / "status.json").read_text())
    assert (record["outcome"], record["exit_code"]) == ("failed", 2)
    assert record["log_tail"][-1] == "Traceback: bad flag --lr"

    running = render_template(slurm, "sbatch", _job("echo up; while true; do sleep 0.05; done"))
    batch = subprocess.Popen(
        ["bash", "-c", running.text],
        cwd=box,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_until(lambda: "up" in _read_file(state / "job.log"), "the job to start", 60)
        batch.send_signal(signal.SIGTERM)  # Slurm signals the batch shell only (--signal=B:)
        assert batch.wait(timeout=60) == 143
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
            batch.wait(timeout=10)
    record = json.loads((state / "status.json").read_text())
    assert (record["outcome"], record["attempt"]) == ("interrupted", 2)


def test_one_fragment_writes_the_record_for_every_launcher_that_runs_the_hook() -> None:
    marker = "RGT_STATUS_PY"
    scripts = bundle_path("scripts")
    holders = sorted(p.name for p in scripts.iterdir() if marker in p.read_text())
    assert holders == ["_status.sh.j2"]
    job = _job("true")
    for name, template in (
        ("vastai", "onstart"),
        ("generic-ssh:slurm", "sbatch"),
        ("generic-ssh:kubernetes", "k8s_job"),
    ):
        profile = load_profile(name)
        hook = render_template(profile, "onstart", job).inner
        assert hook.count(f"<<'{marker}'") == 1, name
        if template != "onstart":  # the supervisor ships that very hook, base64-encoded
            shipped = base64.b64encode(hook.encode()).decode()
            assert shipped in render_template(profile, template, job).text, (name, template)
