"""The boot hook's box health check and on-box helpers (scripts/_box_helpers.sh.j2): before the
job the hook checks the box (scripts/_gpu_health.sh.j2, the same code as the rendered
gpu_health.sh) and a failed check is the attempt's outcome at once: `failed` with the reason
`health: ...`, before the job, its files or its setup run; `rgt poll` says so and routes to the
reference; nothing is destroyed. Where the profile lists them, the memory monitor runs beside
the job and the GPU orphan reaper before it.

No GPU exists on this machine or in the emulator's boxes: the GPU paths run against a stand-in
`nvidia-smi` on PATH (a mock, because no real GPU can run here) that prints what the real one
prints for the same queries. The hooks are the real rendered scripts, run with the real bash
(as the platform runs them) and on the emulator (real vastai SDK, real sshd)."""

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

from rgt.job import JobRequest, load_job
from rgt.jobstatus import parse_status
from rgt.profile import Profile, load_profile
from rgt.render import render_template

RUN_ID = "example-run"
# One RTX 4090 as `nvidia-smi --query-gpu=...` prints it: healthy but for its free memory.
GPU_ROW = "0, NVIDIA GeForce RTX 4090, 550.54.14, 24564, {used}, {free}, 2520, 3120, 0x1, 0"


@pytest.fixture(autouse=True)
def _no_real_gpu() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("a real nvidia-smi is on PATH: these tests need a machine without a GPU")


def _stand_in_nvidia_smi(bin_dir: Path, *, free_mib: int, cuda: str) -> Path:
    """A stand-in nvidia-smi: the --query-gpu CSV row for the health check, and its plain
    output's header (the driver's CUDA version) without arguments."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    row = GPU_ROW.format(used=24564 - free_mib, free=free_mib)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        f"  *--query-gpu=memory.used*) echo {24564 - free_mib} ;;\n"
        f"  *--query-gpu=*) echo '{row}' ;;\n"
        f"  '') echo '| Driver Version: 550.54.14   CUDA Version: {cuda} |' ;;\n"
        "  *) exit 9 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return bin_dir


def _job(**health: Any) -> JobRequest:
    data = load_job().as_dict()
    data["health"] = {**data["health"], **health}
    return JobRequest.from_dict(data, source="test-job")


def _box_env(box: Path, path_first: Path | None = None) -> dict[str, str]:
    (box / "root").mkdir(parents=True, exist_ok=True)
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return {
        "PATH": f"{path_first}:{path}" if path_first else path,
        "HOME": str(box / "root"),
        "RGT_BOX_ROOT": str(box),
        "CONTAINER_ID": "4242",
    }


def _run_hook(profile: Profile, template: str, job: JobRequest, box: Path, **env: Any) -> Any:
    rendered = render_template(profile, template, job)
    script = box.parent / f"{template}.sh"
    script.write_text(rendered.text)
    return subprocess.run(
        ["bash", str(script)],
        cwd=box.parent,
        env=_box_env(box, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _state(box: Path, data_dir: str = "/workspace") -> Path:
    return box / data_dir.lstrip("/") / ".rgt" / RUN_ID


def _record(state: Path) -> dict[str, Any]:
    data = (state / "status.json").read_bytes()
    assert parse_status(data).to_json() == json.loads(data)
    return dict(json.loads(data))


@pytest.mark.parametrize(
    ("free_mib", "cuda", "reason"),
    [
        (812, "12.4", "health: gpu 0: 812 of 24564 MiB free, need 22107"),
        (24000, "12.2", "health: the image's CUDA 12.4 is newer than the driver's 12.2 (UNIV11)"),
    ],
    ids=["too-little-gpu-memory", "too-old-driver"],
)
def test_a_sick_box_fails_the_attempt_before_the_job(
    tmp_path: Path, free_mib: int, cuda: str, reason: str
) -> None:
    box = tmp_path / "box"
    fake = _stand_in_nvidia_smi(tmp_path / "bin", free_mib=free_mib, cuda=cuda)
    job = _job(gpu_required=True)
    done = _run_hook(load_profile("vastai"), "onstart", job, box, path_first=fake)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the box failed its health check; the job was not started: health: " in done.stdout
    state = _state(box)
    record = _record(state)
    assert (record["outcome"], record["exit_code"], record["manifest"]) == ("failed", 1, False)
    assert record["reason"].startswith(reason), record["reason"]
    assert any(line.startswith(reason) for line in record["log_tail"])
    # Nothing of the job ran: not its files, not its command.
    assert not (box / "workspace/job/train.py").exists()
    assert not (state / "job.log").exists()
    assert not list((box / "workspace/checkpoints").iterdir())
    assert reason in (state / "health.log").read_text()


def test_a_healthy_gpu_box_runs_the_job(tmp_path: Path) -> None:
    box = tmp_path / "box"
    fake = _stand_in_nvidia_smi(tmp_path / "bin", free_mib=24000, cuda="12.6")
    done = _run_hook(
        load_profile("vastai"), "onstart", _job(gpu_required=True), box, path_first=fake
    )
    assert done.returncode == 0, done.stdout + done.stderr
    health = (_state(box) / "health.log").read_text()
    assert "cuda: driver 12.6, image 12.4" in health and health.endswith("gpu_health: healthy\n")
    record = _record(_state(box))
    assert (record["outcome"], record["reason"]) == ("succeeded", None)


def test_without_a_gpu_driver_a_gpu_job_fails_and_a_cpu_job_runs(tmp_path: Path) -> None:
    vast = load_profile("vastai")
    gpu_box = tmp_path / "gpu-job"
    failed = _run_hook(vast, "onstart", _job(gpu_required=True), gpu_box)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    record = _record(_state(gpu_box))
    assert record["outcome"] == "failed"
    assert record["reason"] == (
        "health: no GPU driver on this box (nvidia-smi not found); the job needs a GPU (UNIV33)"
    )
    cpu_box = tmp_path / "cpu-job"
    ran = _run_hook(vast, "onstart", load_job(), cpu_box)  # the example: gpu_required false
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "gpu_health: no GPU driver on this box (nvidia-smi not found); the job needs none" in (
        ran.stdout
    )
    assert _record(_state(cpu_box))["outcome"] == "succeeded"


def test_disk_and_inode_thresholds_come_from_the_job(tmp_path: Path) -> None:
    box = tmp_path / "box"
    done = _run_hook(
        load_profile("vastai"), "onstart", _job(min_disk_free_gb=10**6), box
    )  # a million GB: no disk here has that much free
    assert done.returncode == 1, done.stdout + done.stderr
    reason = _record(_state(box))["reason"]
    assert reason.startswith("health: ") and "need 1000000 (health.min_disk_free_gb; UNIV27)" in (
        reason
    )


def _processes_running(script: Path) -> list[int]:
    """Pids whose command line names `script` (the hook and any subshell it left behind)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(script).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_the_profiles_helpers_run_around_the_job_where_it_lists_them(tmp_path: Path) -> None:
    """runpod lists all three helpers: the reaper and the health check before the job, the
    memory monitor beside it (stopped when the job ends), each saying there is no GPU here."""
    runpod = load_profile("runpod")
    assert runpod.box_helpers == ["gpu_health", "mem_monitor", "reap_gpu_zombies"]
    box = tmp_path / "box"
    done = _run_hook(runpod, "run_one", load_job(), box)
    assert done.returncode == 0, done.stdout + done.stderr
    state = _state(box, runpod.overrides["data_dir"])
    log = (state / "run_one.log").read_text()
    assert "reap: no GPU device (/dev/nvidia*) on this box: nothing to reap" in log
    assert log.index("nothing to reap") < log.index("gpu_health: no GPU driver on this box")
    assert "gpu_health: no GPU driver" in (state / "health.log").read_text()
    # The monitor's files sit beside job.log; it said there is no GPU; it is gone with the job.
    assert (state / "job.log").is_file()
    peak = dict(line.split("=", 1) for line in (state / "memory-peak.txt").read_text().split())
    assert peak["gpu_mib"] == "none" and int(peak["host_bytes"]) > 0
    assert (state / "memory.tsv").read_text().startswith("time\tgpu_used_mib\thost_bytes")
    assert "no NVIDIA GPU on this box" in (state / "mem_monitor.log").read_text()
    assert _processes_running(tmp_path / "run_one.sh") == []
    # vast.ai lists the health check only (the 16 KB hook has room for no more): no monitor.
    assert load_profile("vastai").box_helpers == ["gpu_health"]
    vast = render_template(load_profile("vastai"), "onstart", load_job()).inner
    assert "gpu_health() {" in vast and "mem_monitor() {" not in vast
    assert "reap_gpu_zombies() {" not in vast


@pytest.mark.timeout(240)
def test_poll_reports_a_failed_health_check_and_leaves_the_box_alone(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the emulator, a box whose (stand-in) GPU has too little free memory: the first poll
    says the box failed its health check, names UNIV10, and suggests leaving the box (a human
    approves a discard); nothing is destroyed."""
    from tests.test_poll_job import _assert_alive, _box_status, _launch, _rgt, _wait_for

    fake = _stand_in_nvidia_smi(tmp_path / "bin", free_mib=812, cuda="12.4")
    # The emulator's boxes inherit this process's PATH: the stand-in is their nvidia-smi.
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    data = _job(gpu_required=True).as_dict()
    path = tmp_path / "gpu-job.yaml"
    path.write_text(yaml.safe_dump(data))
    instance_id = _launch(path)
    _wait_for(
        lambda: (s := _box_status(emulator, instance_id, RUN_ID)) and s["outcome"] == "failed",
        "the boot hook to record the failed health check",
    )
    polled = _rgt("poll", instance_id, "--json")
    assert polled.returncode == 0, polled.stderr
    job = json.loads(polled.stdout)["job"]
    assert job["state"] == "failed"
    assert job["reason"].startswith("health: gpu 0: 812 of 24564 MiB free, need 22107")
    assert job["summary"].startswith("failed the box health check on attempt 1: health: gpu 0")
    assert job["reference"].startswith("UNIV10")
    report = json.loads(polled.stdout)
    assert "the BOX failed its health check" in report["next_action"]
    assert f"rgt discard {instance_id} --reason failed-job" in report["next_action"]
    human = _rgt("poll", instance_id)
    assert "  job: failed the box health check on attempt 1: health: gpu 0: 812" in human.stdout
    _assert_alive(emulator, instance_id)


def test_the_hook_reaps_an_orphan_holding_the_gpu_before_the_job(tmp_path: Path) -> None:
    """runpod's hook runs reap_gpu_zombies --kill before the job: a dead run's leftover holding
    the GPU (a real process holding a real file that stands in for /dev/nvidia0, re-parented to
    PID 1) is ended, then the job runs."""
    import signal
    import time

    device = tmp_path / "nvidia0"
    device.write_text("")
    pid_file = tmp_path / "orphan.pid"
    subprocess.run(
        [
            "bash",
            "-c",
            f'(exec 3<"{device}"; exec sleep 300) >/dev/null 2>&1 & echo $! >"{pid_file}"',
        ],
        check=True,
        timeout=30,
    )
    orphan = int(pid_file.read_text())
    try:
        stat = Path(f"/proc/{orphan}/stat").read_text()
        if int(stat.rsplit(")", 1)[1].split()[1]) != 1:
            pytest.skip("orphans are re-parented to a subreaper here, not to PID 1")
        runpod = load_profile("runpod")
        box = tmp_path / "box"
        rendered = render_template(runpod, "run_one", load_job())
        script = tmp_path / "run_one.sh"
        script.write_text(rendered.text)
        env = {
            **_box_env(box),
            "RGT_GPU_DEVICE_PREFIX": str(tmp_path / "nvidia"),
            "RGT_REAP_MIN_AGE": "0",
        }
        done = subprocess.run(
            ["bash", str(script)], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        log = (_state(box, runpod.overrides["data_dir"]) / "run_one.log").read_text()
        assert f"reap: ORPHAN pid {orphan}" in log and f"reap: ended pid {orphan}" in log
        assert log.index("reap: ended pid") < log.index("gpu_health:")
        deadline = time.monotonic() + 30
        while Path(f"/proc/{orphan}").exists() and "Z" not in _proc_state(orphan):
            assert time.monotonic() < deadline, "the orphan survived the hook's reaper"
            time.sleep(0.1)
    finally:
        if Path(f"/proc/{orphan}").exists():
            os.kill(orphan, signal.SIGKILL)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
