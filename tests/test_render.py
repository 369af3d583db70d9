"""Rendered scripts: the whole template x profile matrix passes real shellcheck, and the scripts do
what they say when run for real (resume from the newest checkpoint, bounded retries, exit codes).

Scripts run with bash on this machine; box paths are prefixed by $RGT_BOX_ROOT (the emulator
seam), so a temp dir stands in for the rented box's filesystem.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rgt.errors import UsageError
from rgt.job import JobRequest, load_job
from rgt.profile import Profile, list_profiles, load_profile
from rgt.render import Rendered, _environment, render_template, template_names
from tests.conftest import CANARY_API_KEY, assert_no_canary
from tests.shell import assert_shellcheck_clean

# Every template each profile (and variant) renders: the four universal ones, plus the template
# of its detach primitive (sbatch for Slurm, k8s_job for Kubernetes).
MATRIX = [
    pytest.param(each.name, template, id=f"{each.name}-{template}")
    for profile in list_profiles()
    for each in profile.all_variants()
    for template in template_names(each)
]
SECRETS = ("WANDB_API_KEY", "HF_TOKEN")


def _profile(name: str) -> Profile:
    return load_profile(name)


def _job(**changes: Any) -> JobRequest:
    data = load_job().as_dict()
    data.update(changes)
    return JobRequest.from_dict(data, source="test-job")


def _profile_copy(tmp_path: Path, name: str, *replacements: tuple[str, str]) -> Profile:
    """A bundled profile with some frontmatter lines replaced, saved under its own name."""
    text = load_profile(name).path.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / f"{name}.md"
    path.write_text(text)
    return load_profile(path)


def _preamble_sets_strict_mode(text: str) -> bool:
    """`set -euo pipefail` comes before any command (only the shebang, comments, blanks)."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        return stripped == "set -euo pipefail"
    return False


def test_matrix_covers_every_template_and_profile() -> None:
    assert set(template_names()) == {
        *("run_one", "run_queue", "onstart", "pull"),
        *("gpu_health", "mem_monitor", "reap_gpu_zombies"),  # on-box helpers (issue 19)
    }
    names = {p.name for p in list_profiles()}
    assert names >= {"vastai", "local", "generic-ssh"}
    ids = {param.id for param in MATRIX}
    for profile in list_profiles():
        for each in profile.all_variants():
            assert {f"{each.name}-{t}" for t in template_names(each)} <= ids
    assert len(MATRIX) >= 12


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("profile_name", "template"), MATRIX)
def test_every_template_renders_for_every_profile_and_passes_shellcheck(
    profile_name: str, template: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The secrets are in the environment while rendering: none may reach the script.
    for name in SECRETS:
        monkeypatch.setenv(name, CANARY_API_KEY)
    profile = _profile(profile_name)
    job = _job(secret_env=list(SECRETS))
    rendered = render_template(profile, template, job)

    texts = [rendered.text] + ([rendered.inner] if rendered.compressed else [])
    if template == "k8s_job":
        # A Kubernetes manifest (schema-checked while rendering): its shell is the entry point.
        import yaml

        assert_no_canary(rendered.text)
        manifest = yaml.safe_load(rendered.text)
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        assert container["command"][:2] == ["bash", "-c"]
        texts = [container["command"][2]]
    for index, text in enumerate(texts):
        assert_shellcheck_clean(text, tmp_path / f"{template}.{index}.sh")
        assert text.startswith("#!/usr/bin/env bash\n")
        assert _preamble_sets_strict_mode(text), text[:400]
        assert_no_canary(text)
    if template in ("onstart", "run_one"):
        # Secrets appear by name only, checked at start time.
        for name in SECRETS:
            assert re.search(rf"\b{name}\b", rendered.inner)
    limit = profile.onstart_limit_bytes
    if template == "onstart" and limit is not None:
        assert len(rendered.text.encode()) <= limit
        assert rendered.compressed == (len(rendered.inner.encode()) > limit)
    else:
        assert not rendered.compressed
        assert rendered.text == rendered.inner


def test_no_unquoted_interpolation_can_render() -> None:
    env = _environment()
    with pytest.raises(UsageError, match="without a quoting filter"):
        env.from_string("echo {{ value }}").render(value="$(rm -rf /)")
    assert env.from_string("echo {{ value|q }}").render(value="$(rm -rf /)") == (
        "echo '$(rm -rf /)'"
    )


def test_strict_undefined() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        _environment().from_string("{{ profile.nope|q }}").render(profile={})


def test_unknown_template_and_bad_layout_are_usage_errors() -> None:
    with pytest.raises(
        UsageError,
        match="unknown template 'deploy'; templates: gpu_health, mem_monitor, onstart, pull",
    ):
        render_template(_profile("vastai"), "deploy", _job())
    with pytest.raises(UsageError, match="results_root '/workspace' contains the profile's"):
        render_template(_profile("vastai"), "run_one", _job(results_root="/workspace"))


def test_empty_override_means_empty(tmp_path: Path) -> None:
    bare = _profile_copy(
        tmp_path, "generic-ssh", ("hf_home: $HOME/rgt/.cache/huggingface", 'hf_home: ""')
    )
    assert bare.overrides["proxy_hook"] == bare.overrides["cred_file"] == ""
    assert bare.overrides["durable_dir"] == bare.overrides["hf_home"] == ""
    for template in ("run_one", "onstart"):
        text = render_template(bare, template, _job()).inner
        # No hook, no cred file, no HF cache, no durable copy -- and no other platform's default.
        for absent in ("eval ", "cred_file", "RGT_CRED_FILE", "HF_HOME", "network_turbo", "autodl"):
            assert absent not in text, (template, absent)
    run_one = render_template(bare, "run_one", _job()).inner
    assert "results copied to" not in run_one
    assert "no on-box durable dir" in run_one
    # The same keys, set, do render.
    vast = render_template(_profile("vastai"), "run_one", _job()).inner
    assert 'export HF_HOME="${RGT_BOX_ROOT:-}"/workspace/.cache/huggingface' in vast


# --- run_one / run_queue, for real ---------------------------------------------------------

RUN_ONE_COMMAND = r"""python3 - <<'EOF'
import json, os, pathlib, sys
ckpt = pathlib.Path(os.environ["RGT_CHECKPOINT_DIR"])
resume = os.environ["RGT_RESUME_FROM"]
step = json.loads(pathlib.Path(resume).read_text())["step"] if resume else 0
(ckpt / f"step-{step + 1:03d}.ckpt").write_text(json.dumps({"step": step + 1}))
(ckpt / "latest.pt").write_text("scratch")
out = pathlib.Path(os.environ["RGT_RESULTS_ROOT"]) / "cell-a"
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({"step": step + 1, "cell": os.environ["RGT_CELL"]}))
print("job says:", "it's", os.environ["RGT_RUN_ID"], flush=True)
sys.exit(int(os.environ.get("FAIL_CELL") == os.environ["RGT_CELL"]) * 7)
EOF"""


def _box_env(box: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": os.environ["HOME"],
        "RGT_BOX_ROOT": str(box),
        **extra,
    }


def _write(tmp_path: Path, rendered: Rendered, name: str) -> Path:
    path = tmp_path / f"{name}.sh"
    path.write_text(rendered.text)
    return path


def _run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60
    )


def _status(data_dir: Path, run_id: str) -> dict[str, Any]:
    """The job status record a launcher left under the profile's data_dir, checked by rgt's own
    parser."""
    from rgt.jobstatus import parse_status

    data = (data_dir / ".rgt" / run_id / "status.json").read_bytes()
    record = json.loads(data)
    assert parse_status(data).to_json() == record
    return dict(record)


@pytest.mark.timeout(60)
def test_run_one_resumes_prunes_scratch_and_copies_to_the_durable_dir(tmp_path: Path) -> None:
    box = tmp_path / "box"
    local = _profile("local")
    job = _job(command=RUN_ONE_COMMAND, run_id="r1")
    script = _write(tmp_path, render_template(local, "run_one", job), "run_one")
    env = _box_env(box)
    first = _run(script, "cell1", env=env)
    assert first.returncode == 0, first.stderr
    assert "fresh start" in first.stdout
    assert "job says: it's r1" in first.stdout
    second = _run(script, "cell1", env=env)
    assert second.returncode == 0, second.stderr
    assert f"resuming from {box}/workspace/checkpoints/step-001.ckpt" in second.stdout
    checkpoints = sorted(p.name for p in (box / "workspace/checkpoints").iterdir())
    assert checkpoints == ["step-001.ckpt", "step-002.ckpt"]  # latest.pt (scratch) pruned
    durable = Path(os.environ["HOME"]) / "rgt/final/r1/cell-a/metrics.json"
    assert json.loads(durable.read_text()) == {"step": 2, "cell": "cell1"}
    assert "DONE run r1 cell cell1; results copied to" in second.stdout


@pytest.mark.timeout(60)
def test_scratch_pruning_keeps_the_newest_checkpoint(tmp_path: Path) -> None:
    # vast.ai's scratch globs are latest.pt and periodic-*.pt; here they are the checkpoints too.
    command = (
        'for i in 1 2 3; do echo $i >"$RGT_CHECKPOINT_DIR/periodic-$i.pt"; sleep 0.02; done; '
        'echo best >"$RGT_CHECKPOINT_DIR/best.pt"; touch -d @1 "$RGT_CHECKPOINT_DIR/best.pt"; '
        'mkdir -p "$RGT_RESULTS_ROOT/cell-a"'  # the roster dir the manifest needs
    )
    job = _job(command=command, checkpoint_glob="*.pt")
    script = _write(tmp_path, render_template(_profile("vastai"), "run_one", job), "run_one")
    result = _run(script, env=_box_env(tmp_path / "box"))
    assert result.returncode == 0, result.stderr
    left = sorted(p.name for p in (tmp_path / "box/workspace/checkpoints").iterdir())
    assert left == ["best.pt", "periodic-3.pt"]


@pytest.mark.timeout(60)
def test_run_one_exit_codes(tmp_path: Path) -> None:
    box = tmp_path / "box"
    job = _job(command=RUN_ONE_COMMAND, run_id="r2")
    script = _write(tmp_path, render_template(_profile("local"), "run_one", job), "run_one")
    failed = _run(script, "c", env=_box_env(box, FAIL_CELL="c"))
    assert failed.returncode == 7
    assert "FAILED run r2 cell c: the job exited 7" in failed.stderr
    assert "DONE" not in failed.stdout
    # The status record `rgt poll` reads, kept as the boot hook keeps it.
    record = _status(Path(os.environ["HOME"]) / "rgt", "r2")
    assert (record["outcome"], record["exit_code"], record["attempt"]) == ("failed", 7, 1)
    assert "job says: it's r2" in record["log_tail"]
    # The durable copy fails (a file where a result dir must go): the success line depends on it.
    target = Path(os.environ["HOME"]) / "rgt/final/r2"
    target.mkdir(parents=True)
    (target / "cell-a").write_text("in the way")
    blocked = _run(script, "c", env=_box_env(box))
    assert blocked.returncode == 2
    assert "the durable copy to" in blocked.stderr
    assert "DONE" not in blocked.stdout
    record = _status(Path(os.environ["HOME"]) / "rgt", "r2")
    assert (record["outcome"], record["exit_code"], record["attempt"]) == ("failed", 2, 2)
    assert (box / "workspace/results/PULL_MANIFEST.json").is_file()
    bad_cell = _run(script, "../x", env=_box_env(box))
    assert bad_cell.returncode == 2


@pytest.mark.timeout(60)
def test_run_one_secret_and_proxy_hook_failures_stop_the_job(tmp_path: Path) -> None:
    box = tmp_path / "box"
    hooked = _profile_copy(tmp_path, "generic-ssh", ('proxy_hook: ""', "proxy_hook: 'false'"))
    job = _job(command=RUN_ONE_COMMAND, secret_env=["HF_TOKEN"])
    script = _write(tmp_path, render_template(hooked, "run_one", job), "run_one")
    missing = _run(script, env=_box_env(box))
    assert missing.returncode == 1
    assert "missing secret env var(s): HF_TOKEN" in missing.stderr
    hook = _run(script, env=_box_env(box, HF_TOKEN=CANARY_API_KEY))
    assert hook.returncode == 1
    assert "the profile's proxy_hook failed" in hook.stderr
    assert_no_canary(hook.stdout, hook.stderr)
    assert not (box / "workspace/checkpoints/step-001.ckpt").exists()


@pytest.mark.timeout(60)
def test_run_queue_resumes_from_an_index_and_fails_when_a_cell_failed(tmp_path: Path) -> None:
    box = tmp_path / "box"
    job = _job(command=RUN_ONE_COMMAND, run_id="q1")
    _write(tmp_path, render_template(_profile("vastai"), "run_one", job), "run_one")
    queue = _write(tmp_path, render_template(_profile("vastai"), "run_queue", job), "run_queue")
    cells = tmp_path / "cells.txt"
    cells.write_text("# the ablation\na\n\nbad  # fails\nc\n")
    env = _box_env(box, FAIL_CELL="bad")
    manifest = box / "workspace/results/PULL_MANIFEST.json"
    first = _run(queue, str(cells), env=env)
    assert first.returncode == 1
    assert "QUEUE DONE: 3 cells, 3 run, 1 failed" in first.stdout
    assert "[2] FAILED bad (exit 7); resume later with: run_queue.sh" in first.stderr
    done = box / "workspace/.rgt/q1/queue"
    assert sorted(p.name for p in done.glob("*.done")) == ["a.done", "c.done"]
    # One run: one status record for the queue, failed with the failed cell's last lines.
    record = _status(box / "workspace", "q1")
    assert (record["outcome"], record["attempt"], record["exit_code"]) == ("failed", 1, 1)
    assert record["manifest"] is False and not manifest.exists()
    assert any("job says: it's q1" in line for line in record["log_tail"])
    again = _run(queue, str(cells), "2", env=env)
    assert again.returncode == 1
    assert "QUEUE DONE: 3 cells, 1 run, 1 failed" in again.stdout
    assert "[3] c already done, skipping" in again.stdout
    assert (_status(box / "workspace", "q1")["attempt"], manifest.exists()) == (2, False)
    # Past the failed cell: nothing runs, and the queue is still not complete (bad is not done).
    past = _run(queue, str(cells), "3", env=env)
    assert past.returncode == 1
    assert "QUEUE DONE: 3 cells, 0 run, 0 failed" in past.stdout
    assert "not done: bad" in past.stderr
    assert _status(box / "workspace", "q1")["outcome"] == "failed" and not manifest.exists()
    # The cell fixed: the queue completes, builds the manifest once and records success.
    fixed = _run(queue, str(cells), env=_box_env(box))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "QUEUE DONE: 3 cells, 1 run, 0 failed" in fixed.stdout
    record = _status(box / "workspace", "q1")
    assert (record["outcome"], record["attempt"], record["manifest"]) == ("succeeded", 4, True)
    assert json.loads(manifest.read_text())["run_id"] == "q1"
    for bad_index in ("0", "x", "-1"):
        assert _run(queue, str(cells), bad_index, env=env).returncode == 2
    assert _run(queue, str(tmp_path / "missing.txt"), env=env).returncode == 2
    assert _status(box / "workspace", "q1")["attempt"] == 4  # a usage error starts no attempt


# --- onstart, for real: resume after a kill, the self-extracting form -----------------------

TRAIN = """\
import json, os, pathlib, time
ckpt = pathlib.Path(os.environ["RGT_CHECKPOINT_DIR"])
resume = os.environ["RGT_RESUME_FROM"]
step = json.loads(pathlib.Path(resume).read_text())["step"] if resume else 0
with open(ckpt / "starts.log", "a") as log:
    log.write(f"{step}\\n")
while step < 8:
    if step == int(os.environ.get("HOLD_AT_STEP", "-1")):
        time.sleep(3600)  # the test kills it here: where the kill lands never depends on speed
    time.sleep(float(os.environ["STEP_SECONDS"]))
    step += 1
    tmp = ckpt / f".step-{step:03d}.tmp"
    tmp.write_text(json.dumps({"step": step}))
    os.replace(tmp, ckpt / f"step-{step:03d}.json")
out = pathlib.Path(os.environ["RGT_RESULTS_ROOT"]) / "cell-a"
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps({"steps": step}))
"""


def _onstart_job(step_seconds: str) -> JobRequest:
    return _job(
        run_id="resume-test",
        command='python3 "${RGT_BOX_ROOT:-}/workspace/job/train.py"',
        checkpoint_glob="step-*.json",
        env={"STEP_SECONDS": step_seconds},
        files={"/workspace/job/train.py": TRAIN},
    )


def _wait_for(path: Path, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_onstart_resumes_from_the_newest_checkpoint_after_a_kill(tmp_path: Path) -> None:
    box = tmp_path / "box"
    (box / "root").mkdir(parents=True)
    vast = _profile("vastai")
    rendered = render_template(vast, "onstart", _onstart_job("0.3"))
    # The real boot hook is over vast.ai's 16 KB: this runs the self-extracting form for real.
    assert rendered.compressed
    assert len(rendered.text.encode()) <= 16384
    assert "gzip+base64 self-extracting form" in rendered.notes[0]
    env = _box_env(box, HOME=str(box / "root"), CONTAINER_ID="4242")
    ckpt = box / "workspace/checkpoints"

    # First start, killed like a preemption (SIGKILL to the whole process group) after step 3
    # (the trainer holds there until killed).
    first = subprocess.Popen(
        ["bash", "-c", rendered.text],
        cwd=box,
        env={**env, "HOLD_AT_STEP": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(ckpt / "step-003.json", 30)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    newest = max(int(p.stem.split("-")[1]) for p in ckpt.glob("step-*.json"))
    assert newest == 3

    # Second start: resumes from the newest complete checkpoint and finishes, with a manifest.
    second = subprocess.run(
        ["bash", "-c", rendered.text],
        cwd=box,
        env={**env, "STEP_SECONDS": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"start #2, resuming from {ckpt}/step-{newest:03d}.json" in second.stdout
    assert (ckpt / "starts.log").read_text().split() == ["0", str(newest)]
    manifest = json.loads((box / "workspace/results/PULL_MANIFEST.json").read_text())
    assert manifest["run_id"] == "resume-test"
    assert manifest["instance_id"] == "4242"
    assert [f["path"] for f in manifest["files"]] == ["cell-a/metrics.json"]

    # Third start (the platform restarts the container): nothing runs again.
    third = subprocess.run(
        ["bash", "-c", rendered.text], cwd=box, env=env, capture_output=True, text=True, timeout=60
    )
    assert third.returncode == 0
    assert "already finished" in third.stdout
    assert (ckpt / "starts.log").read_text().split() == ["0", str(newest)]


@pytest.mark.timeout(60)
def test_onstart_checks_secret_names_and_never_logs_their_values(tmp_path: Path) -> None:
    box = tmp_path / "box"
    (box / "root").mkdir(parents=True)
    job = _onstart_job("0")
    job = _job(**{**job.as_dict(), "secret_env": ["HF_TOKEN"]})
    text = render_template(_profile("vastai"), "onstart", job).text
    env = _box_env(box, HOME=str(box / "root"))
    missing = subprocess.run(
        ["bash", "-c", text], cwd=box, env=env, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1
    assert "missing secret env var(s): HF_TOKEN" in missing.stdout + missing.stderr
    assert not (box / "workspace/checkpoints/starts.log").exists()  # the job never started
    ran = subprocess.run(
        ["bash", "-c", text],
        cwd=box,
        env={**env, "HF_TOKEN": CANARY_API_KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    log = box / "workspace/.rgt/resume-test/onstart.log"
    assert "finished; manifest at" in log.read_text()
    assert_no_canary(ran.stdout, ran.stderr, log.read_bytes(), text)
    for path in (box / "workspace").rglob("*"):
        if path.is_file():
            assert_no_canary(path.read_bytes())


@pytest.mark.timeout(60)
def test_onstart_runs_once_at_a_time_and_without_flock_still_runs(tmp_path: Path) -> None:
    box = tmp_path / "box"
    (box / "root").mkdir(parents=True)
    text = render_template(_profile("vastai"), "onstart", _onstart_job("0")).text
    env = _box_env(box, HOME=str(box / "root"))
    state = box / "workspace/.rgt/resume-test"
    state.mkdir(parents=True)
    # A start still holding the lock: a second start leaves it alone (and runs nothing).
    holder = subprocess.Popen(["flock", str(state / "onstart.lock"), "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["flock", "-n", str(state / "onstart.lock"), "true"]).returncode == 0:
            assert time.monotonic() < deadline, "the lock holder never took the lock"
            time.sleep(0.05)
        second = subprocess.run(
            ["bash", "-c", text], cwd=box, env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert second.returncode == 0
    assert "another start of this run holds the lock" in second.stdout
    assert not (box / "workspace/checkpoints/starts.log").exists()
    # An image without flock: the job still runs (a PATH with every tool but flock).
    tools = tmp_path / "bin"
    tools.mkdir()
    for directory in [str(Path(sys.executable).parent), *os.environ["PATH"].split(os.pathsep)]:
        for tool in Path(directory).glob("*") if Path(directory).is_dir() else []:
            target = tools / tool.name
            if tool.name != "flock" and not target.exists() and os.access(tool, os.X_OK):
                target.symlink_to(tool)
    unlocked = subprocess.run(
        ["bash", "-c", text],
        cwd=box,
        env={**env, "PATH": str(tools)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert "flock not found" in unlocked.stdout + unlocked.stderr  # the hook logs both
    assert (box / "workspace/results/PULL_MANIFEST.json").exists()


def _python38() -> str | None:
    """A Python 3.8 interpreter (the oldest the box-side builder supports), if one is installed."""
    import glob

    candidates = [
        shutil.which("python3.8"),
        *sorted(glob.glob("/root/.pyenv/versions/3.8*/bin/python3.8")),
    ]
    for candidate in candidates:
        if (
            candidate
            and subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0
        ):
            return candidate
    return None


@pytest.mark.timeout(120)
def test_shipped_manifest_builder_is_the_command_line_code_without_its_documentation(
    tmp_path: Path,
) -> None:
    import ast

    from rgt.boxcode import strip_annotations, strip_docstrings, strip_help_texts
    from rgt.render import manifest_source

    full = Path(__file__).parents[1] / "rgt" / "manifest.py"
    shipped = manifest_source()
    assert len(shipped) < 0.9 * len(full.read_text())
    tree = ast.parse(shipped)
    assert ast.get_docstring(tree) is None
    # Each shipped statement is the original's, without docstrings, annotations and help
    # texts, in the original's order; what is left behind is only what other rgt code imports.
    original = ast.parse(full.read_text())
    strip_docstrings(original)
    strip_annotations(original)
    strip_help_texts(original)
    originals = {ast.dump(node): index for index, node in enumerate(original.body)}
    positions = [originals.get(ast.dump(node)) for node in tree.body]
    assert None not in positions and positions == sorted(positions)
    defined = {getattr(node, "name", None) for node in tree.body}
    assert {"main", "fork_map", "_list_and_hash_forked", "_rows_leaving_big"} <= defined
    left = {getattr(node, "name", None) for node in original.body} - defined
    assert left == {"build_manifest", "write_manifest", "path_problem"}
    assert "argparse" in shipped and "help=" not in shipped and "->" not in shipped

    script = tmp_path / "manifest.py"
    script.write_text(shipped)
    pythons = {"shipped": sys.executable}
    old = _python38()
    if old:
        pythons["shipped-py38"] = old
    # Every way the builder hashes, each run by the shipped text and compared with rgt.manifest's
    # result in this process: threads; forked workers that list and hash whole roster
    # directories (roster >= 2 x workers), with a big file they leave to the parent's threads;
    # forked workers over one listing (>= PROCESS_MIN_FILES small files in one directory).
    from rgt import manifest

    trees: dict[str, dict[str, bytes]] = {
        "threads": {"cell-a/m.json": b"{}", "cell-b/x/w.bin": os.urandom(3000)},
        "forked-dirs": {
            **{f"cell-{c}/f{i}.txt": f"{c}{i}".encode() for c in "abcd" for i in range(30)},
            "cell-c/big.bin": os.urandom(manifest.BIG_FILE + 1),
        },
        "forked-listing": {
            f"cell-a/d{i % 7}/f{i}.txt": str(i).encode() for i in range(manifest.PROCESS_MIN_FILES)
        },
    }
    for shape, files in trees.items():
        results = tmp_path / shape
        for relative, content in files.items():
            (results / relative).parent.mkdir(parents=True, exist_ok=True)
            (results / relative).write_bytes(content)
        roster = sorted({relative.split("/")[0] for relative in files})
        roster_file = tmp_path / f"{shape}.roster"
        roster_file.write_text("".join(f"{name}\n" for name in roster))
        expected = tmp_path / f"{shape}.expected.json"
        manifest.write_manifest(results, "r", roster, "7", output=str(expected), workers=2)
        want = _comparable(expected)
        assert want["totals"]["files"] == len(files)
        for label, python in pythons.items():
            out = tmp_path / f"{shape}.{label}.json"
            args = ["--run-id", "r", "--roster", str(roster_file), "--instance-id", "7"]
            done = subprocess.run(
                [python, str(script), str(results), *args, "--workers", "2", "--output", str(out)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, (shape, label, done.stderr)
            assert _comparable(out) == want, (shape, label)
    # A refusal reads the same: one line per problem, exit 1, nothing written.
    (tmp_path / "threads" / "cell-a" / "link").symlink_to("m.json")
    roster_file = tmp_path / "threads.roster"
    args = ["--run-id", "r", "--roster", str(roster_file), "--output", str(tmp_path / "no.json")]
    refused = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "threads"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "refused: cell-a/link" in refused.stderr
    assert not (tmp_path / "no.json").exists()


def _comparable(path: Path) -> dict[str, Any]:
    """A manifest without what differs between two builds of the same tree."""
    document = json.loads(path.read_text())
    document.pop("created_at")
    document["builder"].pop("python")
    return dict(document)


def test_the_example_boot_hook_fits_the_limit_packed_without_template_comments() -> None:
    """The bundled example job's vast.ai boot hook fits the profile's limit, packed; the packed
    form drops the templates' shell comments but no byte of a here-document, a job file or the
    command (where a line starting with # is data)."""
    import base64
    import gzip
    import shlex

    from rgt.render import drop_comment_lines

    vast = _profile("vastai")
    limit = vast.onstart_limit_bytes
    assert limit is not None
    rendered = render_template(vast, "onstart", load_job())
    assert rendered.compressed and len(rendered.text.encode()) <= limit
    payload = re.search(r"printf '%s' '([A-Za-z0-9+/=]+)'", rendered.text)
    assert payload
    assert gzip.decompress(base64.b64decode(payload.group(1))).decode() == rendered.inner
    shell_comments = [
        line
        for line in rendered.inner.split("RGT_STATUS_PY")[0].splitlines()
        if line.lstrip().startswith("#") and not line.startswith(("#!", "# shellcheck"))
    ]
    assert shell_comments == []
    assert "# shellcheck disable=SC2016" in rendered.inner  # directives stay

    data = "#!/bin/sh\n# a comment that is the file's data\n  # indented, too\n"
    command = "python3 - <<'EOF'\n# data of the command\nprint(1)\nEOF"
    job = _job(files={"/workspace/job/data.sh": data}, command=command)
    packed = render_template(vast, "onstart", job)
    assert packed.compressed
    assert data in packed.inner and shlex.quote(command) in packed.inner
    # A static here-document in a template keeps its lines starting with #.
    source = "# drop\ncat <<'X'\n# keep\nX\n  # drop too\n{# keep: jinja #}\n# {% if x %}\n"
    assert drop_comment_lines(source) == "cat <<'X'\n# keep\nX\n{# keep: jinja #}\n# {% if x %}\n"


def test_onstart_under_the_limit_is_plain_and_too_big_is_refused(tmp_path: Path) -> None:
    roomy = _profile_copy(
        tmp_path, "vastai", ("onstart_limit_bytes: 16384", "onstart_limit_bytes: 1000000")
    )
    plain = render_template(roomy, "onstart", _job())
    assert not plain.compressed
    assert plain.text == plain.inner
    assert plain.notes == []
    # Incompressible content cannot be squeezed under 16 KB: a clear error, not a broken hook.
    noise = os.urandom(30_000).hex()[:60_000] + "\n"
    with pytest.raises(UsageError, match=r"still \d+ bytes compressed; vast.ai accepts 16384"):
        render_template(_profile("vastai"), "onstart", _job(files={"/workspace/noise.txt": noise}))


def test_onstart_ships_files_exactly(tmp_path: Path) -> None:
    tricky = "line with 'quotes', $HOME, `ticks` and \\backslash\nRGT_EOF\n"
    no_newline = "no final newline; $(not run)"
    job = _job(
        command="true",
        files={"/workspace/a.txt": tricky, "/workspace/b.txt": no_newline},
    )
    box = tmp_path / "box"
    (box / "root").mkdir(parents=True)
    rendered = render_template(_profile("local"), "onstart", job)
    result = subprocess.run(
        ["bash", "-c", rendered.text],
        cwd=box,
        env=_box_env(box, HOME=str(box / "root")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (box / "workspace/a.txt").read_text() == tricky
    assert (box / "workspace/b.txt").read_text() == no_newline
    # `true` writes no results, so the manifest builder refuses the missing roster dir.
    assert result.returncode != 0
    assert "cell-a" in result.stdout + result.stderr


# --- pull: bounded, resumable ---------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(60)
def test_pull_retry_loop_is_bounded(tmp_path: Path) -> None:
    script = _write(tmp_path, render_template(_profile("vastai"), "pull", _job()), "pull")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ["HOME"],
        "RGT_PULL_ATTEMPTS": "3",
        "RGT_PULL_RETRY_WAIT": "0",
        "RGT_PULL_ATTEMPT_TIMEOUT": "20",
    }
    # Bounded by its attempt count (a hang would hit _run's timeout); not timed: a duration
    # limit here would depend on the machine's load.
    result = _run(script, "127.0.0.1", str(_closed_port()), str(tmp_path / "out"), env=env)
    assert result.returncode == 1
    retries = re.findall(r"attempt (\d)/3 for \S+ failed", result.stderr)
    assert retries == ["1", "2"]
    assert "giving up on /workspace/results/PULL_MANIFEST.json after 3 attempts" in result.stderr
    assert "no manifest on the box yet" in result.stderr
    assert "VERIFIED" not in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["h", "22"], {}, "usage: pull.sh SSH_HOST SSH_PORT LOCAL_DIR"),
        (["h", "2x2", "out"], {}, "SSH_PORT must be a number, got '2x2'"),
        (["h", "22", "out"], {"RGT_PULL_ATTEMPTS": "many"}, "RGT_PULL_ATTEMPTS must be a whole"),
        (["h", "22", "out"], {"RGT_PULL_ATTEMPTS": "0"}, "RGT_PULL_ATTEMPTS must be 1-100, got 0"),
        (["h", "22", "out"], {"RGT_PULL_RETRY_WAIT": "-1"}, "RGT_PULL_RETRY_WAIT must be a whole"),
    ],
)
def test_pull_usage_errors_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    script = _write(tmp_path, render_template(_profile("generic-ssh"), "pull", _job()), "pull")
    result = _run(script, *args, env={"PATH": os.environ["PATH"], **env})
    assert result.returncode == 2
    assert message in result.stderr


def _finished_box(tmp_path: Path) -> Path:
    """A box disk on which the rendered onstart ran the job to the end (results + manifest)."""
    box = tmp_path / "box"
    (box / "root").mkdir(parents=True)
    rendered = render_template(_profile("vastai"), "onstart", _onstart_job("0"))
    env = _box_env(box, HOME=str(box / "root"), CONTAINER_ID="4242")
    done = subprocess.run(
        ["bash", "-c", rendered.text], cwd=box, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return box


@pytest.mark.timeout(60)
def test_pull_copies_over_real_ssh_and_succeeds_only_when_verified(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("rgt.commands.verify") is None:
        pytest.skip("`rgt verify` has not landed yet (verify helper)")
    from rgt.sim.ssh import SshServer, ssh_client_environment

    box = _finished_box(tmp_path)
    server = SshServer(box, tmp_path / "keys")
    port = server.start()
    try:
        script = _write(tmp_path, render_template(_profile("vastai"), "pull", _job()), "pull")
        env = {
            **os.environ,
            **ssh_client_environment(tmp_path / "keys"),
            "RGT_BIN": str(Path(sys.executable).parent / "rgt"),
            "RGT_PULL_RETRY_WAIT": "0",
        }
        out = tmp_path / "pulled"
        pulled = _run(script, "127.0.0.1", str(port), str(out), env=env)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert f"pull: VERIFIED {out}" in pulled.stdout
        assert json.loads((out / "cell-a/metrics.json").read_text()) == {"steps": 8}
        # A box whose files no longer match its manifest: copied, but never reported as verified.
        (box / "workspace/results/cell-a/metrics.json").write_text('{"steps": 9}')
        tampered = _run(script, "127.0.0.1", str(port), str(tmp_path / "again"), env=env)
        assert tampered.returncode == 1
        assert "verification FAILED; do not destroy the box" in tampered.stderr
        assert "VERIFIED" not in tampered.stdout
    finally:
        server.stop()


def test_pull_login_user_comes_from_env_then_profile() -> None:
    vast = render_template(_profile("vastai"), "pull", _job()).text
    assert "user=${RGT_SSH_USER:-root}" in vast
    bare = render_template(_profile("generic-ssh"), "pull", _job()).text
    assert "user=${RGT_SSH_USER:-''}" in bare  # none: ~/.ssh/config decides


# --- the CLI -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cli_render_writes_an_executable_script_and_notes_compression(tmp_path: Path) -> None:
    out = tmp_path / "scripts" / "onstart.sh"
    result = subprocess.run(
        [sys.executable, "-m", "rgt", "render", "vastai", "onstart", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o755
    assert "gzip+base64 self-extracting form" in result.stderr
    assert f"wrote {out}" in result.stderr
    assert result.stdout == ""
    assert len(out.read_bytes()) <= 16384


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "run_one"], "unknown profile 'nope'; bundled profiles:"),
        (["vastai", "deploy"], "unknown template 'deploy'"),
        (["vastai", "run_one", "--job", "/nonexistent.yaml"], "cannot read"),
        (["generic-ssh:nope", "run_one"], "has no variant 'nope'"),
        (["vastai", "run_one", "-o", "/"], "-o /: is a folder"),
        (["vastai", "run_one", "-o", "/proc/no-such-dir/x.sh"], "cannot write"),
        # A folder as PROFILE once said "not found"; a file where -o needs a parent folder
        # once said only "File exists".
        ([str(Path(__file__).parent), "run_one"], "is a directory; expected a profile file"),
        (
            ["vastai", "run_one", "-o", f"{__file__}/x.sh"],
            f"cannot write: parent {__file__} is not a directory",
        ),
        (
            ["vastai", "run_one", "-o", f"{__file__}/sub/x.sh"],
            f"cannot write: parent {__file__} is not a directory",
        ),
    ],
)
def test_cli_render_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rgt", "render", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""
