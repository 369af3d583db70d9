"""Every rendered launcher runs the bundled example job (schemas/job.example.yaml) end to end.

run_one, run_queue, the boot hook, the Slurm batch script and the Kubernetes entry point all share
scripts/_job.sh.j2: each one, RUN with bash on this machine standing in for the box (box paths
under $RGT_BOX_ROOT, as the emulator runs them), must write the job's files (the example's
train.py), keep the job status record `rgt poll` reads, and end with a PULL_MANIFEST.json that
the real `rgt verify` accepts after a local copy of the results. No scheduler runs here: the
sbatch script and the Kubernetes entry point are run by bash directly, as Slurm and the
container runtime would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rgt.jobstatus import parse_status
from rgt.profile import load_profile

pytestmark = pytest.mark.timeout(120)

RGT = [sys.executable, "-m", "rgt"]
EXAMPLE = Path(__file__).parents[1] / "schemas" / "job.example.yaml"


def _box_env(box: Path, **extra: str) -> dict[str, str]:
    (box / "root").mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(box / "root"),
        "RGT_BOX_ROOT": str(box),
        **extra,
    }


def _render(profile: str, template: str, tmp_path: Path) -> str:
    """`rgt render PROFILE TEMPLATE --job schemas/job.example.yaml -o FILE`, the documented way."""
    out = tmp_path / f"{template}.sh"
    result = subprocess.run(
        [*RGT, "render", profile, template, "--job", str(EXAMPLE), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return out.read_text()


def _status(box: Path, data_dir: str) -> dict[str, Any]:
    data = (box / data_dir.lstrip("/") / ".rgt/example-run/status.json").read_bytes()
    record = json.loads(data)
    assert parse_status(data).to_json() == record
    return dict(record)


def _copy_and_verify(box: Path, tmp_path: Path) -> dict[str, Any]:
    """Copy the results root off the 'box' and run the real `rgt verify` on the copy."""
    local = tmp_path / "pulled"
    shutil.copytree(box / "workspace/results", local)
    result = subprocess.run(
        [*RGT, "verify", str(local), "--run-id", "example-run", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((local / "cell-a/metrics.json").read_text())
    assert metrics["steps"] == 40
    return dict(json.loads(result.stdout))


def _assert_finished(box: Path, data_dir: str, tmp_path: Path) -> dict[str, Any]:
    assert (box / "workspace/job/train.py").is_file()  # the job's files were written
    record = _status(box, data_dir)
    assert (record["outcome"], record["manifest"], record["exit_code"]) == ("succeeded", True, None)
    assert record["last_checkpoint"] == "step-000040.ckpt"
    return _copy_and_verify(box, tmp_path)


def test_run_one_runs_the_example_job_to_a_verified_manifest(tmp_path: Path) -> None:
    box = tmp_path / "box"
    script = tmp_path / "run_one.sh"
    script.write_text(_render("generic-ssh", "run_one", tmp_path))
    result = subprocess.run(
        ["bash", str(script)], env=_box_env(box), capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done at step 40" in result.stdout
    verified = _assert_finished(box, "/root/rgt", tmp_path)
    # No instance id on a plain SSH box: the manifest names the box by its host name.
    assert verified["instance_id"] == os.uname().nodename
    # The launcher's own log on the box, and the job's output for `rgt poll`'s failure tail.
    state = box / "root/rgt/.rgt/example-run"
    assert "DONE run example-run" in (state / "run_one.log").read_text()
    assert "done at step 40" in (state / "job.log").read_text()


def test_run_queue_runs_the_example_job_to_a_verified_manifest(tmp_path: Path) -> None:
    box = tmp_path / "box"
    (tmp_path / "run_one.sh").write_text(_render("lambda", "run_one", tmp_path))
    queue = tmp_path / "run_queue.sh"
    queue.write_text(_render("lambda", "run_queue", tmp_path))
    cells = tmp_path / "cells.txt"
    cells.write_text("cell-a\n")
    result = subprocess.run(
        ["bash", str(queue), str(cells)],
        env=_box_env(box, RGT_INSTANCE_ID="rgt-attached-7"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every cell is done; manifest at" in result.stdout
    verified = _assert_finished(box, "/home/ubuntu/rgt", tmp_path)
    # Whoever starts the launcher may name the instance (rgt's own id for the box).
    assert verified["instance_id"] == "rgt-attached-7"


def test_the_boot_hook_runs_the_example_job_to_a_verified_manifest(tmp_path: Path) -> None:
    box = tmp_path / "box"
    text = _render("vastai", "onstart", tmp_path)
    assert len(text.encode()) <= load_profile("vastai").onstart_limit_bytes  # type: ignore[operator]
    result = subprocess.run(
        ["bash", "-c", text],
        cwd=box.parent,
        env=_box_env(box, CONTAINER_ID="4242"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    verified = _assert_finished(box, "/workspace", tmp_path)
    assert verified["instance_id"] == "4242"
    # vast.ai has a provider: the closing line names rgt's own next steps.
    assert "next: rgt pull, rgt verify, then rgt destroy" in result.stdout


def test_the_slurm_batch_script_runs_the_example_job_to_a_verified_manifest(
    tmp_path: Path,
) -> None:
    box = tmp_path / "box"
    script = tmp_path / "sbatch.sh"
    script.write_text(_render("generic-ssh:slurm", "sbatch", tmp_path))
    result = subprocess.run(
        ["bash", str(script)],
        env=_box_env(box, SLURM_JOB_ID="4242"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    verified = _assert_finished(box, "/root/rgt", tmp_path)
    assert verified["instance_id"] == "4242"
    # No provider drives Slurm: the hook names the human's meter-stop, not an rgt gate.
    log = (box / "root/rgt/.rgt/example-run/onstart.log").read_text()
    assert "then stop the meter yourself: scancel" in log
    assert "rgt's gate" not in log and "rgt destroy" not in log
    # ... and `rgt verify` does not send the person to `rgt approve 4242` (no such instance).
    told = subprocess.run(
        [*RGT, "verify", str(tmp_path / "pulled")], capture_output=True, text=True, timeout=60
    )
    assert told.returncode == 0, told.stderr
    assert "rgt approve" not in told.stdout
    assert "next: 4242 is not an instance rgt rented (not in the ledger)" in told.stdout


def test_verify_names_rgt_approve_for_an_instance_rgt_rented(tmp_path: Path) -> None:
    from rgt.ledger import Ledger

    box = tmp_path / "box"
    text = _render("vastai", "onstart", tmp_path)
    result = subprocess.run(
        ["bash", "-c", text],
        env=_box_env(box, CONTAINER_ID="4243"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", "4243", label="rgt:example-run", profile="vastai")
    local = tmp_path / "pulled"
    shutil.copytree(box / "workspace/results", local)
    told = subprocess.run([*RGT, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert told.returncode == 0, told.stderr
    assert "next: rgt approve 4243" in told.stdout


def test_the_kubernetes_entry_point_runs_the_example_job_to_a_verified_manifest(
    tmp_path: Path,
) -> None:
    box = tmp_path / "box"
    manifest = yaml.safe_load(_render("generic-ssh:kubernetes", "k8s_job", tmp_path))
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    result = subprocess.run(
        container["command"],
        env=_box_env(box, RGT_POD_NAME="rgt-example-run-x7"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_finished(box, "/workspace/rgt", tmp_path)


def test_rendered_scripts_name_rgt_actions_only_where_rgt_has_a_provider() -> None:
    """No rendered text sends the person to an rgt command their platform cannot run (the
    provider commands exit 2 without a provider), nor to "rgt's gate"."""
    import re

    from rgt.consistency import provider_commands
    from rgt.job import load_job
    from rgt.profile import list_profiles
    from rgt.render import render_template, template_names

    promise = re.compile(
        rf"\brgt(?:'s)?\s+(?:{'|'.join(provider_commands())})\b(?![-.]\w)|rgt's gate"
    )
    checked = 0
    for profile in list_profiles():
        for each in profile.all_variants():
            for template in template_names(each):
                text = render_template(each, template, load_job()).inner
                found = promise.findall(text)
                assert each.has_provider or not found, (each.name, template, found)
                checked += 1
    assert checked >= 40
    vast = render_template(load_profile("vastai"), "pull", load_job()).inner
    assert "rgt destroy" in vast  # where rgt has a provider, the script does name it
