"""`rgt sim serve` as a user runs it, and emulator state surviving a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import vastai
from conftest import CANARY_API_KEY, assert_no_canary

from rgt.sim import Emulator
from tests.procs import alive, descendants

pytestmark = pytest.mark.timeout(60)

BIN = Path(sys.executable).parent
JOB = 'echo "start" >> runs.txt\nsleep 300\n'


def wait_for(predicate: Any, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_restarted_emulator_keeps_instances_disks_meters_and_ids(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Emulator(state_dir=state, api_key="k1", ssh=False) as sim:
        client = vastai.VastAI(api_key="k1", server_url=sim.url, retry=1)
        offers = client.search_offers(query={}, order="dph_total", limit=3)
        running, stopped, destroyed = (
            int(client.create_instance(id=o["id"], image="img", disk=10, onstart_cmd=JOB,
                                       label=f"rgt:{n}")["new_contract"])
            for n, o in zip(("running", "stopped", "destroyed"), offers, strict=True)
        )  # fmt: skip
        runs = sim.instance_disk(running) / "runs.txt"
        wait_for(lambda: runs.exists(), what="first container start")
        (sim.instance_disk(running) / "workspace" / "result.txt").write_text("kept")
        wait_for(lambda: client.show_instance(id=stopped)["actual_status"] == "running")
        client.stop_instance(id=stopped)
        client.destroy_instance(id=destroyed)
        pid = sim.process_id(running)
        assert pid is not None
        before = sim.meter(running)
        final = sim.meter(destroyed)
        balance = client.show_user()["balance"]
    assert not alive(pid)  # stop() killed the container processes it started

    with Emulator(state_dir=state, api_key="k1", ssh=False) as sim:
        client = vastai.VastAI(api_key="k1", server_url=sim.url, retry=1)
        rows = {row["id"]: row for row in client.show_instances()}
        assert set(rows) == {running, stopped}
        assert rows[running]["label"] == "rgt:running"
        assert rows[stopped]["actual_status"] == "stopped"
        assert client.show_instance(id=destroyed) is None
        assert sim.meter(destroyed) == final
        assert sim.meter(running)["storage"] >= before["storage"]
        assert client.show_user()["balance"] == pytest.approx(balance, abs=0.01)
        # The container restarts with the emulator: onstart runs again, the disk is intact.
        wait_for(lambda: client.show_instance(id=running)["actual_status"] == "running")
        wait_for(lambda: runs.read_text().count("start") == 2, what="onstart re-run")
        assert (sim.instance_disk(running) / "workspace" / "result.txt").read_text() == "kept"
        fresh = client.create_instance(id=offers[0]["id"], image="img", disk=10)
        assert int(fresh["new_contract"]) > max(running, stopped, destroyed)


def test_a_corrupt_state_file_is_a_one_line_usage_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    done = subprocess.run(
        [str(BIN / "rgt"), "sim", "serve", "--state", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "state.json" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--port", "70000"], "--port"), (["--time-scale", "-1"], "--time-scale"), ([], "serve")],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], needle: str) -> None:
    command = ["sim", "serve", *args] if args else ["sim"]
    done = subprocess.run([str(BIN / "rgt"), *command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and needle in done.stderr
    assert "Traceback" not in done.stderr


def _serve(state: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "rgt"), "sim", "serve", "--state", str(state), "--boot-seconds", "0.2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _stop(server: subprocess.Popen[str]) -> str:
    server.send_signal(signal.SIGTERM)
    _, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    return err


def test_serve_prints_a_line_the_stock_cli_runs_and_keeps_its_key_across_restarts(
    tmp_path: Path,
) -> None:
    state = tmp_path / "sim"
    server = _serve(state, "--seed", "7")
    try:
        assert server.stdout is not None
        banner = [server.stdout.readline() for _ in range(6)]
        url = banner[0].split(" at ")[1].split()[0]
        key = banner[1].split()[2]
        assert key.startswith("sim-") and "generated" in banner[1]
        pasted = next(line.strip() for line in banner if line.strip().startswith("VAST_URL="))
        environment = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
        environment.pop("VAST_API_KEY")  # the user's shell has no key: the line carries it
        done = subprocess.run(
            ["bash", "-c", pasted + " --raw"],
            capture_output=True, text=True, timeout=30, env=environment,
        )  # fmt: skip
        offers = json.loads(done.stdout)
        assert offers and {o["gpu_name"] for o in offers} == {"RTX 4090"}
        client = vastai.VastAI(api_key=key, server_url=url, retry=1)
        created = client.create_instance(id=offers[0]["id"], image="img", disk=10, label="rgt:s")
    finally:
        _stop(server)

    server = _serve(state, "--json")
    try:
        assert server.stdout is not None
        summary = json.loads(server.stdout.readline())
        assert summary["api_key"] == key and summary["env"]["VAST_API_KEY"] == key
        client = vastai.VastAI(api_key=key, server_url=summary["url"], retry=1)
        assert [r["label"] for r in client.show_instances()] == ["rgt:s"]
        assert client.show_instance(id=created["new_contract"])["label"] == "rgt:s"
        # Fault control over HTTP, as a `rgt sim serve` user drives it.
        import requests

        auth = {"Authorization": f"Bearer {key}"}
        requests.post(f"{summary['url']}/_sim/fail_next", json={"n": 1, "status": 503},
                      headers=auth, timeout=5).raise_for_status()  # fmt: skip
        with pytest.raises(requests.HTTPError):
            client.show_user()
        meter = requests.get(f"{summary['url']}/_sim/meter", headers=auth, timeout=5).json()
        assert meter["storage"] > 0
        refused = requests.get(f"{summary['url']}/_sim/meter", timeout=5)
        assert refused.status_code == 401
    finally:
        _stop(server)


def test_serve_never_echoes_a_key_taken_from_the_environment(tmp_path: Path) -> None:
    server = _serve(tmp_path / "sim", "--api-key", CANARY_API_KEY)
    try:
        assert server.stdout is not None
        banner = "".join(server.stdout.readline() for _ in range(12))
        assert "not shown" in banner
    finally:
        err = _stop(server)
    assert_no_canary(banner, err)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _running_job(state: Path) -> tuple[subprocess.Popen[str], Path, int, int]:
    """`rgt sim serve` with one instance running a job: (the server, the job's runs.txt, the
    job's pid, the instance's sshd port), once the state file records the container start."""
    server = _serve(state, "--json", "--api-key", "k")
    assert server.stdout is not None
    url = json.loads(server.stdout.readline())["url"]
    client = vastai.VastAI(api_key="k", server_url=url, retry=1)
    offer = client.search_offers(query={}, limit=1)[0]
    job = 'echo "start $$" >> runs.txt\nsleep 300\n'
    instance_id = client.create_instance(id=offer["id"], image="i", disk=10, onstart_cmd=job)[
        "new_contract"
    ]
    runs = state / "instances" / str(instance_id) / "disk" / "runs.txt"
    wait_for(lambda: runs.exists() and runs.read_text().count("start") == 1, what="onstart")
    orphan = int(runs.read_text().split()[1])

    def recorded() -> bool:
        try:
            saved = json.loads((state / "state.json").read_text())
        except (OSError, ValueError):
            return False
        return any(i["id"] == instance_id and i["pid"] == orphan for i in saved["instances"])

    wait_for(recorded, what="the container start in the state file")
    ssh_port = client.show_instance(id=instance_id)["ssh_port"]
    assert ssh_port and _listening(ssh_port)
    return server, runs, orphan, ssh_port


def test_kill_9_of_the_emulator_ends_its_jobs_and_sshds_and_a_restart_reruns_them(
    tmp_path: Path,
) -> None:
    state = tmp_path / "sim"
    server, runs, orphan, ssh_port = _running_job(state)
    server.kill()  # SIGKILL: none of the emulator's own shutdown runs
    server.communicate(timeout=10)
    # Its container process and sshd die with it (rgt.children): nothing keeps running, holding
    # the disk and the port, for an emulator that is gone.
    wait_for(
        lambda: not alive(orphan) and not _listening(ssh_port),
        what="the job and the sshd to end with the emulator",
    )
    server = _serve(state, "--json", "--api-key", "k")
    try:
        assert server.stdout is not None
        json.loads(server.stdout.readline())
        wait_for(lambda: runs.read_text().count("start") == 2, what="onstart re-run")
    finally:
        _stop(server)


def test_a_job_that_outlived_a_crash_is_killed_by_the_restarted_emulator(tmp_path: Path) -> None:
    """Where nothing ended the job with the emulator (no group watcher: not Linux; here it is
    killed first), the restarted emulator kills the orphan before it re-runs the onstart: one
    job per disk, never two."""
    state = tmp_path / "sim"
    server, runs, orphan, _ = _running_job(state)
    watchers = [
        pid
        for pid, name in descendants(server.pid).items()
        if b"watch-groups" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(watchers) == 1, watchers
    os.kill(watchers[0], signal.SIGKILL)
    wait_for(lambda: not alive(watchers[0]), what="the watcher to die")
    server.kill()
    server.communicate(timeout=10)
    assert alive(orphan)

    server = _serve(state, "--json", "--api-key", "k")
    try:
        assert server.stdout is not None
        json.loads(server.stdout.readline())
        assert not alive(orphan)  # killed on load
        wait_for(lambda: runs.read_text().count("start") == 2, what="onstart re-run")
    finally:
        _stop(server)


def test_where_sshd_cannot_run_serve_says_so_and_exports_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RGT_SIM_NO_SSHD", "1")  # as on a machine without sshd / without root
    server = _serve(tmp_path / "sim", "--json", "--api-key", "k")
    try:
        assert server.stdout is not None
        summary = json.loads(server.stdout.readline())
    finally:
        _stop(server)
    assert "fall back to local rsync" in summary["ssh"]
    assert "RGT_SSH_COMMAND" in summary["env"] and "RGT_SSH_KEY" in summary["env"]
