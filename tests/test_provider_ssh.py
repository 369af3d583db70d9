"""Boxes rgt did not rent (issue 16 item 2): `rgt attach`, `rgt launch --on`, and poll, logs,
pull, verify, sweep and the gate through the ssh provider (rgt.providers.ssh).

Real parts: a real OpenSSH sshd on 127.0.0.1 standing in for the box (tests/ssh_box.py: real
bash, tmux and python3 over ssh, as root; skipped where sshd cannot run), the real `rgt` CLI in
subprocesses, the boot hook rendered from scripts/onstart.sh.j2, rsync over ssh, SQLite, and a
real pseudo-terminal for the human's approval and meter-stop confirmation. The job checkpoints,
is killed (its tmux server and processes, kill -9), is launched again, resumes from its newest
checkpoint and finishes; its results are pulled and verified, and the gate decides.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rgt.errors import EXIT_PROVIDER, EXIT_REFUSED, EXIT_USAGE
from rgt.job import load_job
from rgt.ledger import Ledger
from rgt.profile import load_profile
from tests.conftest import assert_no_canary
from tests.ptyrun import PtyProcess
from tests.ssh_box import StandInBox

pytestmark = pytest.mark.timeout(180)

RUN_ID = "ssh-run"
PASSPHRASE = "correct horse battery staple"


def rgt(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """`python -m rgt ARGS` with this test's environment (state dir, config dir)."""
    return subprocess.run(
        [sys.executable, "-m", "rgt", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def box(tmp_path: Path) -> Iterator[StandInBox]:
    stand_in = StandInBox(tmp_path / "box").start()
    yield stand_in
    stand_in.close()


def box_profile(tmp_path: Path, disk: Path, name: str = "runpod") -> Path:
    """The bundled profile with its box paths under the stand-in's disk and a 1 s heartbeat."""
    text = load_profile(name).path.read_text()
    text = text.replace("/workspace", f"{disk}/workspace")
    anchor = "\n  python: python3\n"
    assert anchor in text
    text = text.replace(anchor, anchor + "  status_heartbeat_seconds: 1\n", 1)
    path = tmp_path / "profiles" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def box_job(tmp_path: Path, disk: Path, *, step_seconds: str = "0.25") -> Path:
    """The documented example job (a resumable trainer) with its paths on the stand-in's disk."""
    data: dict[str, Any] = load_job().as_dict()
    root = f"{disk}/workspace"

    def moved(text: str) -> str:
        return text.replace("${RGT_BOX_ROOT:-}", "").replace("/workspace", root)

    data.update(
        run_id=RUN_ID,
        command=moved(data["command"]),
        results_root=moved(data["results_root"]),
        checkpoint_dir=moved(data["checkpoint_dir"]),
        files={moved(path): content for path, content in data["files"].items()},
        env={**data["env"], "STEP_SECONDS": step_seconds},
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def attach(box: StandInBox, profile: Path) -> str:
    done = rgt("attach", str(profile), box.target, "--identity", str(box.client_key), "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["instance_id"])


def poll(instance: str) -> dict[str, Any]:
    done = rgt("poll", instance, "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def checkpoints(disk: Path) -> list[str]:
    return sorted(p.name for p in (disk / "workspace/checkpoints").glob("step-*.ckpt"))


def test_attach_records_the_box_once_and_refuses_bad_input(box: StandInBox, tmp_path: Path) -> None:
    profile = box_profile(tmp_path, box.disk)
    first = attach(box, profile)
    assert first == "ssh-1"
    assert attach(box, profile) == "ssh-1"  # the same endpoint again: the same id
    with Ledger.open() as ledger:
        (attached,) = ledger.attached_boxes()
        record = ledger.instance("runpod", "ssh-1")
    assert (attached.host, attached.port, attached.user) == ("127.0.0.1", box.port, "root")
    assert record is not None and record.last_state == "running"
    known = Path(os.environ["RGT_STATE_DIR"]) / "known_hosts.d" / "attached-ssh-1"
    host_key = (box.keys / "rgt_sim_host_ed25519.pub").read_text().split()[1]
    assert host_key in known.read_text()  # its host key is pinned

    bad = rgt("attach", "runpod", "root@host:99999")
    assert bad.returncode == EXIT_USAGE and "user@host:port" in bad.stderr
    vast = rgt("attach", "vastai", box.target)
    assert vast.returncode == EXIT_USAGE and "rgt launch OFFER" in vast.stderr
    family = rgt("attach", "china", box.target)
    assert family.returncode == EXIT_USAGE and "china:matpool" in family.stderr
    box.stop()
    key = str(box.client_key)
    silent = rgt("attach", str(profile), box.target, "--identity", key, "--label", "x")
    assert silent.returncode == EXIT_PROVIDER and "nothing attached" in silent.stderr
    with Ledger.open() as ledger:
        assert [b.instance_id for b in ledger.attached_boxes()] == ["ssh-1"]

    # A vast.ai command given a local id that was never attached: one line, exit 2.
    unknown = rgt("poll", "ssh-9")
    assert unknown.returncode == EXIT_USAGE and "no box is attached" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_job_is_killed_resumes_finishes_and_the_gate_needs_the_humans_meter_stop(
    box: StandInBox, tmp_path: Path
) -> None:
    from rgt import approval

    approval.store_passphrase(PASSPHRASE, n=2**14)
    profile = box_profile(tmp_path, box.disk)
    job = box_job(tmp_path, box.disk)
    instance = attach(box, profile)
    outputs: list[str] = []

    launched = rgt("launch", "--on", instance, "--job", str(job))
    assert launched.returncode == 0, launched.stderr
    assert f"tmux session rgt-{RUN_ID}" in launched.stdout
    wait_for(lambda: len(checkpoints(box.disk)) >= 1, "a first checkpoint")
    report = poll(instance)
    assert report["state"] == "running" and report["run_id"] == RUN_ID
    assert report["job"]["state"] in ("running", "no-record")

    # Killed: the hook, its tmux server and the job die without a word.
    box.kill_jobs()
    wait_for(lambda: not box.hook_pids(), "the killed job to be gone")
    killed_at = checkpoints(box.disk)[-1]
    assert not (box.disk / "workspace/results/PULL_MANIFEST.json").exists()

    # Launched again: the hook resumes from the newest checkpoint and finishes.
    again = rgt("launch", "--on", instance, "--job", str(job))
    assert again.returncode == 0, again.stderr
    done = rgt("poll", instance, "--until", "done", "--interval", "1", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    starts = (box.disk / "workspace/checkpoints/starts.log").read_text().split()
    assert starts[0] == "0" and int(starts[1]) >= int(killed_at[5:11]) > 0, starts
    metrics = json.loads((box.disk / "workspace/results/cell-a/metrics.json").read_text())
    assert metrics == {"steps": 40, "total": 820}  # 1 + ... + 40: nothing lost or redone wrong

    logs = rgt("logs", instance, "--tail", "50")
    assert logs.returncode == 0 and "resuming from" in logs.stdout, logs.stderr

    # The gate, before any pull: refused, and the box still answers.
    early = rgt("destroy", instance)
    assert early.returncode == EXIT_REFUSED and "[no-pull]" in early.stderr
    assert poll(instance)["state"] == "running"

    local = tmp_path / "pulled"
    root = f"{box.disk}/workspace/results"
    pulled = rgt("pull", instance, root, str(local), "--json")
    assert pulled.returncode == 0, pulled.stderr
    verified = rgt("verify", str(local))
    assert verified.returncode == 0, verified.stderr
    check = rgt("destroy", instance, "--check", "--json")
    assert check.returncode == EXIT_REFUSED
    assert [m["code"] for m in json.loads(check.stdout)["missing"]] == ["no-approval"]

    # No terminal: the meter stop cannot be confirmed by a script.
    headless = rgt("destroy", instance)
    assert headless.returncode == EXIT_REFUSED
    assert poll(instance)["state"] == "running"

    # A human approves, is told exactly what to do, and declines: nothing recorded as ended.
    human = PtyProcess("destroy", instance)
    human.expect("Type the instance id")
    human.send(instance)
    human.expect("Approval passphrase")
    human.send(PASSPHRASE)
    told = human.expect("to confirm, or press Enter")
    assert "terminate: RunPod console" in told and "runpodctl remove pod" in told
    human.send("")
    assert human.wait(timeout=60) == EXIT_REFUSED, human.text
    assert "not confirmed" in human.text
    with Ledger.open() as ledger:
        assert [d.status for d in ledger.destroys(instance)] == ["failed"]
    assert poll(instance)["state"] == "running"

    # Again: the human terminates the pod (the box stops answering) and confirms.
    human = PtyProcess("destroy", instance)
    human.expect("Type the instance id")
    human.send(instance)
    human.expect("Approval passphrase")
    human.send(PASSPHRASE)
    human.expect("to confirm, or press Enter")
    box.stop()
    human.send(instance)
    assert human.wait(timeout=90) == 0, human.text
    assert "you confirmed terminate" in human.text
    with Ledger.open() as ledger:
        assert [d.status for d in ledger.destroys(instance)] == ["failed", "confirmed"]
    after = poll(instance)
    assert after["state"] == "gone" and "destroyed" in after["classification"]
    outputs += [launched.stdout, done.stdout, pulled.stdout, verified.stdout, human.text]
    assert_no_canary(*outputs)


def test_without_tmux_the_hook_runs_under_nohup_and_a_stopped_hook_is_launched_again(
    tmp_path: Path,
) -> None:
    box = StandInBox(tmp_path / "box", without_tmux=True).start()
    try:
        instance = attach(box, box_profile(tmp_path, box.disk))
        job = box_job(tmp_path, box.disk)
        launched = rgt("launch", "--on", instance, "--job", str(job))
        assert launched.returncode == 0, launched.stderr
        assert "(nohup)" in launched.stdout and "tmux is not installed" in launched.stderr
        # The hook outlived the ssh session that started it; SIGTERM it (a host's shutdown).
        wait_for(lambda: len(checkpoints(box.disk)) >= 1, "a first checkpoint")
        hooks = [pid for pid in box.hook_pids() if b"onstart.sh" in box.cmdline(pid)]
        assert hooks, "the hook is not running"
        for pid in hooks:
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: poll(instance)["job"]["state"] == "interrupted", "interrupted")
        advice = poll(instance)["next_action"]
        assert f"rgt launch --on {instance} --job JOB.yaml` again" in advice
        again = rgt("launch", "--on", instance, "--job", str(job))
        assert again.returncode == 0, again.stderr
        done = rgt("poll", instance, "--until", "done", "--interval", "1", "--timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr
        starts = (box.disk / "workspace/checkpoints/starts.log").read_text().split()
        assert len(starts) == 2 and int(starts[1]) > 0, starts  # resumed, not from step 0
        manifest = json.loads((box.disk / "workspace/results/PULL_MANIFEST.json").read_text())
        assert manifest["instance_id"] == instance and manifest["run_id"] == RUN_ID
    finally:
        box.close()


def test_a_silent_box_is_offline_not_gone_and_rgt_sends_no_platform_verbs(
    box: StandInBox, tmp_path: Path
) -> None:
    instance = attach(box, box_profile(tmp_path, box.disk))
    stop = rgt("stop", instance)
    assert stop.returncode == EXIT_USAGE
    assert "terminate: RunPod console" in stop.stderr and "Traceback" not in stop.stderr
    other = rgt("launch", "--on", instance, "--job", str(box_job(tmp_path, box.disk)), "--bid", "1")
    assert other.returncode == EXIT_USAGE and "--bid" in other.stderr

    box.stop()
    report = poll(instance)
    assert report["state"] == "offline", report  # silence alone is never "gone"
    swept = rgt("sweep", "--platform", "runpod", "--json")
    rows = json.loads(swept.stdout)["instances"]
    assert [(row["instance_id"], row["state"]) for row in rows] == [(instance, "offline")]
    with Ledger.open() as ledger:
        assert ledger.destroys(instance) == []


def test_a_failed_job_is_discarded_through_the_same_human_meter_stop(
    box: StandInBox, tmp_path: Path
) -> None:
    from rgt import approval

    approval.store_passphrase(PASSPHRASE, n=2**14)
    instance = attach(box, box_profile(tmp_path, box.disk))
    job = box_job(tmp_path, box.disk)
    data = yaml.safe_load(job.read_text())
    data["command"] = "echo 'out of memory' >&2; exit 3"
    job.write_text(yaml.safe_dump(data))
    assert rgt("launch", "--on", instance, "--job", str(job)).returncode == 0
    failed = rgt("poll", instance, "--until", "done", "--interval", "1", "--timeout", "120")
    assert failed.returncode == 1 and "failed (exit 3)" in failed.stdout, failed.stdout
    assert "rgt discard" in failed.stdout

    human = PtyProcess("discard", instance, "--reason", "failed-job")
    human.expect("to confirm: ")
    human.send(f"discard {instance}")
    human.expect("Approval passphrase")
    human.send(PASSPHRASE)
    told = human.expect("to confirm, or press Enter")
    assert "terminate: RunPod console" in told
    box.stop()
    human.send(instance)
    assert human.wait(timeout=90) == 0, human.text
    with Ledger.open() as ledger:
        (ended,) = ledger.destroys(instance)
    assert (ended.status, ended.purpose, ended.reason) == ("confirmed", "discard", "failed-job")
    assert poll(instance)["state"] == "gone"


@pytest.mark.anyio
async def test_an_mcp_agent_polls_an_attached_box_by_its_local_id(
    box: StandInBox, tmp_path: Path
) -> None:
    # The MCP tools take the attached box's local id (`ssh-1`), not only vast.ai numbers.
    from mcp import Client, StdioServerParameters

    instance = attach(box, box_profile(tmp_path, box.disk))
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "rgt", "mcp"],
        env=dict(os.environ),
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    async with Client(params, mode="auto", read_timeout_seconds=60) as client:
        result = await client.call_tool("poll", {"instance_id": instance})
        assert not result.is_error, result.content
        assert result.structured_content is not None
        assert result.structured_content["state"] == "running"
        wrong = await client.call_tool("poll", {"instance_id": "ssh-99"})
        assert wrong.is_error
