"""The platform profiles and the scheduler templates (Slurm sbatch script, Kubernetes Job).

Real parts: the `rgt lint`/`rgt render` CLIs, real shellcheck, the official Kubernetes JSON
schema (kubernetes-validate, strict) for the rendered manifest, and the rendered scripts run for
real with bash. No Slurm or Kubernetes runs here: the scheduler's part (sending SIGUSR1/SIGTERM,
`scontrol requeue`) is played by the test — signals sent to the real script, and a recording
`scontrol` stand-in on PATH.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rgt.errors import UsageError
from rgt.job import JobRequest, load_job
from rgt.profile import bundled_profile_paths, list_profiles, load_profile
from rgt.render import (
    PRIMITIVE_TEMPLATES,
    check_manifest,
    render_template,
    template_files,
    template_names,
)
from tests.conftest import CANARY_API_KEY, assert_no_canary
from tests.procs import alive
from tests.shell import assert_shellcheck_clean

RGT = [sys.executable, "-m", "rgt"]
SECRETS = ("WANDB_API_KEY", "HF_TOKEN")

# A trainer that does what references/spot-resilience.md asks: SIGTERM sets a flag, the loop
# saves atomically at the next step and exits 143; a start loads the newest checkpoint.
TRAINER = """\
import json, os, pathlib, signal, sys, time

stop = False


def request_stop(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, request_stop)
ckpt = pathlib.Path(os.environ["RGT_CHECKPOINT_DIR"])
ckpt.mkdir(parents=True, exist_ok=True)
resume = os.environ.get("RGT_RESUME_FROM", "")
step = json.loads(pathlib.Path(resume).read_text())["step"] if resume else 0
with open(ckpt / "starts.log", "a") as log:
    log.write(f"{step}\\n")
(ckpt / "running").write_text(str(os.getpid()))
total = int(os.environ.get("STEPS", "20"))
while step < total:
    time.sleep(0.02)
    step += 1
    if stop or step == total:
        tmp = ckpt / f".step-{step:06d}.tmp"
        tmp.write_text(json.dumps({"step": step}))
        os.replace(tmp, ckpt / f"step-{step:06d}.ckpt")
    if stop:
        sys.exit(143)
out = pathlib.Path(os.environ["RGT_RESULTS_ROOT"]) / "cell-a"
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({"steps": step}) + "\\n")
"""


def _job(**changes: Any) -> JobRequest:
    data = load_job().as_dict()
    data.update(
        {
            "run_id": "sched-test",
            "command": 'python3 "${RGT_BOX_ROOT:-}/workspace/job/train.py"',
            "files": {"/workspace/job/train.py": TRAINER},
            "env": {"PYTHONUNBUFFERED": "1"},
        }
    )
    data.update(changes)
    return JobRequest.from_dict(data, source="test-job")


def _wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {seconds} s"
        time.sleep(0.05)


@dataclass(frozen=True)
class SignalledRun:
    """How a job signalled while training ended."""

    returncode: int
    stdout: str
    stderr: str
    trainer_pid: int  # the trainer's pid, from the job's checkpoints/running file


def _signal_the_running_job(
    argv: list[str], cwd: Path, env: dict[str, str], sig: signal.Signals
) -> SignalledRun:
    """Start the job, wait until its trainer runs (checkpoints/running under RGT_BOX_ROOT),
    send `sig` to the job and wait (bounded) for it to exit."""
    running = Path(env["RGT_BOX_ROOT"]) / "workspace/checkpoints/running"
    job = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(running, 30)
        trainer_pid = int(running.read_text())
        job.send_signal(sig)
        # A bound against a hang only: how soon the job exits is a speed, not a test verdict.
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    return SignalledRun(job.returncode, out, err, trainer_pid)


# -- profiles ------------------------------------------------------------------------------------


def test_eight_profiles_and_their_variants() -> None:
    names = [p.stem for p in bundled_profile_paths()]
    assert len(names) == 8
    variants = sorted(v.name for p in list_profiles() for v in p.all_variants() if v.variant)
    assert variants == [
        "china:featurize",
        "china:gpushare",
        "china:lanrui",
        "china:matpool",
        "generic-ssh:kubernetes",
        "generic-ssh:slurm",
        "paperspace:notebook",
    ]


def test_rgt_lint_is_clean_over_all_profiles() -> None:
    # How fast: bench/bench_startup.py (a time limit here would fail on a loaded machine).
    result = subprocess.run(
        [*RGT, "lint", "--format", "json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    findings = report["findings"] if isinstance(report, dict) else report
    assert [f for f in findings if f.get("severity", "error") == "error"] == []


def test_scheduler_variants_facts() -> None:
    slurm = load_profile("generic-ssh:slurm")
    assert (slurm.kind, slurm.detach_primitive, slurm.spot_grace_seconds) == ("slurm", "sbatch", 30)
    assert slurm.meter_stop_verb == "scancel" and slurm.instance_id_env == "SLURM_JOB_ID"
    k8s = load_profile("generic-ssh:kubernetes")
    assert (k8s.kind, k8s.detach_primitive, k8s.spot_grace_seconds) == ("kubernetes", "k8s-job", 30)
    assert k8s.frontmatter["residual_billables"] == ["compute", "volume"]
    # The base stays a plain SSH box.
    assert load_profile("generic-ssh").detach_primitive == "tmux"


# -- which templates exist for whom --------------------------------------------------------------


def test_scheduler_templates_belong_to_their_detach_primitive() -> None:
    assert {"sbatch", "k8s_job"} <= set(template_files())
    assert template_files()["k8s_job"] == "k8s_job.yaml.j2"
    generic = set(template_names())
    assert generic == {
        *("run_one", "run_queue", "onstart", "pull"),
        *("gpu_health", "mem_monitor", "reap_gpu_zombies"),  # on-box helpers
    }
    assert set(template_names(load_profile("generic-ssh:slurm"))) == generic | {"sbatch"}
    assert set(template_names(load_profile("generic-ssh:kubernetes"))) == generic | {"k8s_job"}
    for profile in list_profiles():
        for each in profile.all_variants():
            extra = set(template_names(each)) - generic
            assert extra == {
                t for t, p in PRIMITIVE_TEMPLATES.items() if p == each.detach_primitive
            }


def test_the_shared_matrix_covers_every_profile_and_variant() -> None:
    """The new profiles join tests/test_render.py's template x profile matrix (no duplicate)."""
    from tests.test_render import MATRIX

    ids = {param.id for param in MATRIX}
    for profile in list_profiles():
        for each in profile.all_variants():
            for template in template_names():
                assert f"{each.name}-{template}" in ids


def test_scheduler_template_for_the_wrong_profile_is_a_usage_error() -> None:
    with pytest.raises(
        UsageError,
        match=r"'sbatch' is for profiles whose detach_primitive is 'sbatch' "
        r"\(e\.g\. generic-ssh:slurm\); vastai uses 'onstart'",
    ):
        render_template(load_profile("vastai"), "sbatch", _job())
    result = subprocess.run(
        [*RGT, "render", "runpod", "k8s_job"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "generic-ssh:kubernetes" in result.stderr
    assert "Traceback" not in result.stderr


# -- Slurm ---------------------------------------------------------------------------------------


def test_sbatch_script_renders_passes_shellcheck_and_carries_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SECRETS:
        monkeypatch.setenv(name, CANARY_API_KEY)
    job = _job(gpu="A100:2", secret_env=list(SECRETS))
    rendered = render_template(load_profile("generic-ssh:slurm"), "sbatch", job)
    text = rendered.text
    assert_shellcheck_clean(text, tmp_path / "sbatch.sh")
    assert_no_canary(text)
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert "#SBATCH --gpus=2" in directives
    assert "#SBATCH --job-name=rgt-sched-test" in directives
    assert "#SBATCH --requeue" in directives
    assert "#SBATCH --signal=B:USR1@300" in directives
    # sbatch stops reading directives at the first command: all of them come first.
    first_command = next(
        i for i, line in enumerate(lines[1:], 1) if line and not line.startswith("#")
    )
    assert all(lines.index(d) < first_command for d in directives)
    assert lines[first_command] == "set -euo pipefail"


def test_sbatch_script_forwards_the_time_limit_warning_requeues_and_resumes(tmp_path: Path) -> None:
    """USR1 (Slurm's --signal=B:USR1 warning) reaches the job as SIGTERM; it checkpoints and
    exits 143; the script requeues itself; the next run resumes and builds the manifest."""
    script = tmp_path / "sbatch.sh"
    script.write_text(render_template(load_profile("generic-ssh:slurm"), "sbatch", _job()).text)
    box, home, bin_dir = tmp_path / "box", tmp_path / "home", tmp_path / "bin"
    for folder in (box, home, bin_dir):
        folder.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"  # stand-in: no Slurm controller runs here
    scontrol.write_text(f'#!/usr/bin/env bash\necho "$@" >>{calls}\n')
    scontrol.chmod(0o755)
    env = {
        **os.environ,
        "RGT_BOX_ROOT": str(box),
        "HOME": str(home),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "777",
        "STEPS": "100000",
    }
    ckpt = box / "workspace/checkpoints"

    first = _signal_the_running_job(["bash", str(script)], tmp_path, env, signal.SIGUSR1)
    out, err, trainer_pid = first.stdout, first.stderr, first.trainer_pid
    assert first.returncode == 143, out + err
    assert "received SIGUSR1" in err and "the job exited 143" in err
    assert "requeued Slurm job 777" in out
    assert calls.read_text().split() == ["requeue", "777"]
    assert not alive(trainer_pid)
    saved = sorted(ckpt.glob("step-*.ckpt"))
    assert saved, "the job saved nothing on SIGTERM"
    step = json.loads(saved[-1].read_text())["step"]
    assert step > 0

    second = subprocess.run(
        ["bash", str(script)],
        cwd=tmp_path,
        env={**env, "STEPS": str(step + 3)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert (ckpt / "starts.log").read_text().split() == ["0", str(step)]
    manifest = json.loads((box / "workspace/results/PULL_MANIFEST.json").read_text())
    assert manifest["run_id"] == "sched-test" and manifest["instance_id"] == "777"
    assert calls.read_text().split() == ["requeue", "777"]  # a clean finish does not requeue


# -- Kubernetes ----------------------------------------------------------------------------------


def _manifest(job: JobRequest) -> dict[str, Any]:
    text = render_template(load_profile("generic-ssh:kubernetes"), "k8s_job", job).text
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def test_k8s_job_validates_against_the_official_kubernetes_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for name in SECRETS:
        monkeypatch.setenv(name, CANARY_API_KEY)
    job = _job(gpu="H100:4", secret_env=list(SECRETS), run_id="My_Run.v2")
    text = render_template(load_profile("generic-ssh:kubernetes"), "k8s_job", job).text
    assert_no_canary(text)
    data = yaml.safe_load(text)
    kubernetes_validate.validate(data, kubernetes_validate.latest_version(), strict=True)

    assert (data["apiVersion"], data["kind"]) == ("batch/v1", "Job")
    assert data["metadata"]["name"] == "rgt-my-run-v2"
    pod = data["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 30  # the profile's spot_grace
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["volumeMounts"] == [{"name": "rgt-data", "mountPath": "/workspace"}]
    by_name = {e["name"]: e for e in container["env"]}
    for name in SECRETS:
        assert by_name[name] == {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": "rgt-secrets", "key": name}},
        }
    assert by_name["RGT_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    rules = data["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert container["command"][:2] == ["bash", "-c"]
    assert_shellcheck_clean(container["command"][2], tmp_path / "entry.sh")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("spec", "template", "spec", "restartPolicy"), "Always", "never restarts in place"),
        (
            ("spec", "template", "spec", "containers", 0, "env", 0),
            {"name": "HF_TOKEN", "value": "x" * 12},
            "from a Kubernetes Secret",
        ),
        (
            ("spec", "template", "spec", "containers", 0, "resources"),
            {"limits": {}},
            "nvidia.com/gpu",
        ),
        (
            ("spec", "template", "spec", "containers", 0, "imagePullPolicyy"),
            "Always",
            "unknown key",
        ),
    ],
)
def test_rgt_manifest_schema_refuses_what_rgt_relies_on(
    path: tuple[Any, ...], value: Any, message: str
) -> None:
    data = _manifest(_job())
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(UsageError, match=re.escape(message)):
        check_manifest(yaml.safe_dump(data), source="mutant.yaml")


def test_k8s_entry_point_forwards_sigterm_and_the_next_pod_resumes(tmp_path: Path) -> None:
    """The container command as PID 1 would run it: SIGTERM (eviction) reaches the job, which
    checkpoints within the grace; a new pod resumes from the volume and builds the manifest."""
    entry = _manifest(_job())["spec"]["template"]["spec"]["containers"][0]["command"][2]
    box = tmp_path / "box"
    box.mkdir()
    env = {
        **os.environ,
        "RGT_BOX_ROOT": str(box),
        "RGT_POD_NAME": "rgt-sched-test-abcde",
        "STEPS": "100000",
    }
    ckpt = box / "workspace/checkpoints"

    first = _signal_the_running_job(["bash", "-c", entry], tmp_path, env, signal.SIGTERM)
    out, err, trainer_pid = first.stdout, first.stderr, first.trainer_pid
    # The grace (terminationGracePeriodSeconds) is kept by forwarding: the signal reached the
    # job, which saved and exited, rather than the trainer running on to its last step.
    assert first.returncode == 143, out + err
    assert "received SIGTERM" in err
    assert not alive(trainer_pid)
    step = json.loads(sorted(ckpt.glob("step-*.ckpt"))[-1].read_text())["step"]

    second = subprocess.run(
        ["bash", "-c", entry],
        cwd=tmp_path,
        env={**env, "STEPS": str(step + 2), "RGT_POD_NAME": "rgt-sched-test-fghij"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert (ckpt / "starts.log").read_text().split() == ["0", str(step)]
    manifest = json.loads((box / "workspace/results/PULL_MANIFEST.json").read_text())
    assert manifest["instance_id"] == "rgt-sched-test-fghij"


# -- references ----------------------------------------------------------------------------------

REFERENCES = Path(__file__).resolve().parents[1] / "references"


def test_universal_gotchas_have_unique_ids_and_symptom_causes_check_fix() -> None:
    text = (REFERENCES / "gotchas-universal.md").read_text(encoding="utf-8")
    entries = re.split(r"^### ", text, flags=re.M)[1:]
    ids = [re.match(r"(UNIV\d+) — ", entry) for entry in entries]
    assert all(ids), [e[:40] for e, m in zip(entries, ids, strict=True) if not m]
    numbers = [int(m.group(1)[4:]) for m in ids if m]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 20
    for entry in entries:
        for part in ("**Symptom:**", "**Causes:**", "**Check:**", "**Fix:**"):
            assert part in entry, (entry.splitlines()[0], part)


def test_references_links_resolve_and_profiles_link_them() -> None:
    for path in REFERENCES.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), (path.name, target)
    for profile in bundled_profile_paths():
        text = profile.read_text(encoding="utf-8")
        for name in ("iron-law.md", "gotchas-universal.md", "spot-resilience.md"):
            assert f"references/{name}" in text, (profile.name, name)


def test_spot_resilience_grace_table_matches_the_profiles() -> None:
    """Every profile/variant with spot has its window in the reference's table, same value."""
    table = (REFERENCES / "spot-resilience.md").read_text(encoding="utf-8")
    for name, row in (
        ("vastai", "vast.ai interruptible"),
        ("runpod", "RunPod spot"),
        ("generic-ssh:slurm", "Slurm"),
        ("generic-ssh:kubernetes", "Kubernetes"),
    ):
        grace = load_profile(name).frontmatter["spot_grace"]
        line = next(line for line in table.splitlines() if line.startswith(f"| {row}"))
        assert f"`{grace}`" in line, (name, grace, line)
