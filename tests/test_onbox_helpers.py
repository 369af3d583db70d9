"""The on-box helpers the references call for (scripts/gpu_health, mem_monitor,
reap_gpu_zombies .sh.j2), rendered like the other scripts (the render matrix in test_render.py
shellchecks them for every profile) and run with the real bash here.

This machine has no GPU: the helpers must say so and exit 0. The GPU paths run against a
stand-in `nvidia-smi` on PATH (a mock, because no real GPU can run here) that prints what the
real one prints for the same query. The reaper's orphan detection runs on real processes
holding a real file that stands in for /dev/nvidia*. On the emulator, all three run inside a
box over its real ssh."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from rgt.job import load_job
from rgt.profile import load_profile
from rgt.render import render_template

HELPERS = ("gpu_health", "mem_monitor", "reap_gpu_zombies")
RUN_ID = "example-run"


@pytest.fixture(autouse=True)
def _no_real_gpu() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("a real nvidia-smi is on PATH: these tests need a machine without a GPU")


def _render(tmp_path: Path, name: str) -> Path:
    rendered = render_template(load_profile("vastai"), name, load_job())
    path = tmp_path / f"{name}.sh"
    path.write_text(rendered.text)
    return path


def _run(
    script: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _fake_nvidia_smi(bin_dir: Path, gpu_rows: list[str], used_file: Path | None = None) -> None:
    """A stand-in nvidia-smi: the --query-gpu CSV rows for the health check; for the memory
    monitor's `memory.used` query, the next number from `used_file` (one per call)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(gpu_rows)
    memory = (
        f'read -r n <"{used_file}"; echo "$n"; sed -i 1d "{used_file}"' if used_file else "echo 0"
    )
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        f"  *--query-gpu=memory.used*) {memory} ;;\n"
        f"  *--query-gpu=*) printf '%s\\n' '{rows}' ;;\n"
        "  *) exit 9 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)


def test_without_a_gpu_each_helper_says_so_and_exits_0(tmp_path: Path) -> None:
    box = tmp_path / "box"
    env = {"RGT_BOX_ROOT": str(box), "RGT_GPU_DEVICE_PREFIX": str(tmp_path / "no-such-dev")}
    health = _run(_render(tmp_path, "gpu_health"), env=env)
    assert health.returncode == 0, health.stdout
    # The example job needs no GPU (health.gpu_required false): said, not failed.
    assert health.stdout.endswith(
        "gpu_health: no GPU driver on this box (nvidia-smi not found); the job needs none "
        "(health.gpu_required)\n"
    )
    assert health.stdout.startswith("disk: ") and " inodes free in " in health.stdout
    reap = _run(_render(tmp_path, "reap_gpu_zombies"), env=env)
    assert reap.returncode == 0, reap.stderr
    assert "reap: no GPU device" in reap.stdout and "nothing to reap" in reap.stdout
    monitor = _run(_render(tmp_path, "mem_monitor"), "--once", env=env)
    assert monitor.returncode == 0, monitor.stderr
    assert "no NVIDIA GPU on this box" in monitor.stdout
    state = box / "workspace" / ".rgt" / RUN_ID  # beside job.log and status.json
    peak = dict(line.split("=", 1) for line in (state / "memory-peak.txt").read_text().split())
    assert peak["gpu_mib"] == "none" and int(peak["host_bytes"]) > 0
    assert peak["host_source"] in ("cgroup-v2", "cgroup-v1", "host")
    samples = (state / "memory.tsv").read_text().splitlines()
    assert samples[0] == "time\tgpu_used_mib\thost_bytes\thost_source" and len(samples) == 2
    for script in HELPERS:  # usage errors: exit 2, one line
        bad = _run(tmp_path / f"{script}.sh", "--nope", env=env)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, (script, bad.stderr)


def test_gpu_health_names_ecc_errors_and_throttling(tmp_path: Path) -> None:
    script = _render(tmp_path, "gpu_health")
    fake = tmp_path / "bin"
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    _fake_nvidia_smi(
        fake,
        [
            "0, NVIDIA GeForce RTX 4090, 550.54.14, 24564, 1, 24108, 2520, 3120, "
            "0x0000000000000001, [N/A]"
        ],
    )
    healthy = _run(script, env=env)
    assert healthy.returncode == 0, healthy.stdout
    assert "gpu 0: NVIDIA GeForce RTX 4090, driver 550.54.14, memory used 1 MiB" in healthy.stdout
    assert "\nhealth: " not in healthy.stdout  # no problem line
    assert healthy.stdout.endswith("gpu_health: healthy\n")

    _fake_nvidia_smi(
        fake,
        [
            "0, NVIDIA A100-SXM4-80GB, 535.104.05, 81920, 20480, 61440, 1005, 1410, "
            "0x0000000000000040, 2",
            "1, NVIDIA A100-SXM4-80GB, 535.104.05, 81920, 4, 81916, 1410, 1410, "
            "0x0000000000000000, 0",
        ],
    )
    sick = _run(script, env=env)
    assert sick.returncode == 1, sick.stdout
    assert "health: gpu 0: 2 uncorrected ECC errors (UNIV12)" in sick.stdout
    assert "health: gpu 0: clocks held down, throttle 0x0000000000000040 (UNIV12)" in sick.stdout
    # 61440 of 81920 MiB free is under the default 90 %: someone else holds memory.
    assert (
        "health: gpu 0: 61440 of 81920 MiB free, need 73728 (health.min_gpu_free_mib; UNIV10)"
        in sick.stdout
    )
    assert "\nhealth: gpu 1" not in sick.stdout
    assert "gpu_health: 3 problem(s) found" in sick.stdout


def test_mem_monitor_keeps_the_peak_and_stops_with_the_job(tmp_path: Path) -> None:
    script = _render(tmp_path, "mem_monitor")
    fake = tmp_path / "bin"
    used = tmp_path / "used.txt"
    used.write_text("".join(f"{n}\n" for n in (100, 9000, 300) + (50,) * 500))
    _fake_nvidia_smi(fake, [], used_file=used)
    box = tmp_path / "box"
    env = {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "RGT_BOX_ROOT": str(box),
        "RGT_MEM_INTERVAL": "0",
    }
    # The job it watches: it stops when this exits (a zombie until reaped counts as exited).
    job = subprocess.Popen(["sleep", "0.5"])
    try:
        watched = _run(script, str(job.pid), env=env)
    finally:
        job.wait(timeout=30)
    assert watched.returncode == 0, watched.stderr
    state = box / "workspace" / ".rgt" / RUN_ID
    peak = dict(line.split("=", 1) for line in (state / "memory-peak.txt").read_text().split())
    assert peak["gpu_mib"] == "9000"
    rows = (state / "memory.tsv").read_text().splitlines()[1:]
    assert len(rows) >= 3 and [r.split("\t")[1] for r in rows[:3]] == ["100", "9000", "300"]
    # A restarted monitor keeps the peak it had recorded.
    again = _run(script, "--once", env=env)
    assert again.returncode == 0 and "peaks: GPU 9000 MiB" in again.stdout
    # Bounded: a PID that never exits still ends at RGT_MEM_MAX_SECONDS.
    bounded = _run(script, "1", env={**env, "RGT_MEM_INTERVAL": "1", "RGT_MEM_MAX_SECONDS": "1"})
    assert bounded.returncode == 0 and "stopping after 1 s" in bounded.stdout


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_the_reaper_lists_and_ends_only_orphans_holding_the_gpu(tmp_path: Path) -> None:
    script = _render(tmp_path, "reap_gpu_zombies")
    device = tmp_path / "nvidia0"  # stands in for /dev/nvidia0: a real file, really held open
    device.write_text("")
    pid_file = tmp_path / "orphan.pid"
    # A dead run's leftover: its parent shell exits at once, so it is re-parented to PID 1.
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
    with device.open() as held:  # a live job's process: its parent (this test) is alive
        live = subprocess.Popen(["sleep", "300"], stdin=held)
    try:
        if _ppid(orphan) != 1:
            pytest.skip("orphans are re-parented to a subreaper here, not to PID 1")
        env = {"RGT_GPU_DEVICE_PREFIX": str(tmp_path / "nvidia"), "RGT_REAP_MIN_AGE": "0"}
        listed = _run(script, env=env)
        assert listed.returncode == 1, listed.stdout
        assert f"reap: ORPHAN pid {orphan} (age " in listed.stdout
        assert f"reap: pid {live.pid} holds the GPU (parent {os.getpid()}" in listed.stdout
        assert "run again with --kill" in listed.stdout
        assert Path(f"/proc/{orphan}").exists()  # listing ends nothing
        # Too young to be a leftover: left alone.
        young = _run(script, env={**env, "RGT_REAP_MIN_AGE": "3600"})
        assert young.returncode == 0 and "no orphan holds the GPU" in young.stdout

        reaped = _run(script, "--kill", env=env)
        assert reaped.returncode == 0, reaped.stdout
        assert f"reap: ended pid {orphan}" in reaped.stdout
        deadline = time.monotonic() + 30
        while Path(f"/proc/{orphan}").exists() and _state(orphan) != "Z":
            assert time.monotonic() < deadline, "the orphan survived the reaper"
            time.sleep(0.1)
        assert live.poll() is None  # the live job's process is untouched
    finally:
        live.kill()
        live.wait(timeout=30)
        if Path(f"/proc/{orphan}").exists():
            os.kill(orphan, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.timeout(180)
def test_the_helpers_run_in_an_emulated_box(emulator: Any, tmp_path: Path) -> None:
    """Each rendered helper runs in an emulated box over the box's real ssh (no GPU there): each
    says so and exits 0, and the monitor's files sit beside the job's log."""
    from rgt.providers.vastai import VastProvider
    from tests.test_poll_job import _assert_alive, _box_status, _launch, _wait_for

    job = load_job()
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(job.as_dict()))
    instance_id = _launch(path)
    _wait_for(lambda: _box_status(emulator, instance_id, RUN_ID), "the job's status record")
    provider = VastProvider()
    said = {}
    for name in HELPERS:
        text = render_template(load_profile("vastai"), name, job).text
        args = ["--once"] if name == "mem_monitor" else []
        out = provider.run_remote_command(
            instance_id, ["bash", "-c", text, name, *args], max_bytes=65536
        )
        said[name] = out.decode()
    assert "gpu_health: no GPU driver on this box" in said["gpu_health"]
    assert said["mem_monitor"].startswith("mem_monitor: no NVIDIA GPU on this box")
    assert (
        "reap: no GPU device (/dev/nvidia*) on this box: nothing to reap"
        in said["reap_gpu_zombies"]
    )
    state = emulator.instance_disk(instance_id) / "workspace" / ".rgt" / RUN_ID
    assert (state / "job.log").is_file() or (state / "onstart.log").is_file()
    assert "gpu_mib=none" in (state / "memory-peak.txt").read_text()
    _assert_alive(emulator, instance_id)
