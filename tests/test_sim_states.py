"""The emulator's state machine, read through the real vastai SDK and rgt's own classifier:
VAST1 (stopped still bills disk), VAST3 (stuck scheduling), abrupt preemption (VAST4),
VAST7 (host offline), zero balance, destroy. A frozen clock makes every step deterministic."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vastai
from conftest import CANARY_API_KEY

from rgt.providers.vastai import instance_state
from rgt.sim import Emulator
from tests.procs import alive

pytestmark = pytest.mark.timeout(60)

# A job that records each container start, notes any signal it gets, and keeps a child alive.
JOB = (
    "trap 'echo signalled >> signals.txt' TERM INT HUP\n"
    'echo "start $CONTAINER_ID" >> runs.txt\n'
    "sleep 300 &\n"
    "echo $! > child.pid\n"
    "wait\n"
)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(state_dir=tmp_path / "sim", api_key=CANARY_API_KEY, time_scale=0) as emulator:
        yield emulator


@pytest.fixture
def client(sim: Emulator) -> Any:
    return vastai.VastAI(api_key=CANARY_API_KEY, server_url=sim.url, retry=1)


def rent(
    client: Any, query: dict[str, Any] | None = None, **create: Any
) -> tuple[int, dict[str, Any]]:
    offer = client.search_offers(query=query or {}, order="dph_total", limit=1)[0]
    arguments: dict[str, Any] = {"image": "img", "disk": 10, "onstart_cmd": JOB}
    arguments.update(create)
    return int(client.create_instance(id=offer["id"], **arguments)["new_contract"]), offer


def state(client: Any, instance_id: int) -> str:
    return instance_state(client.show_instance(id=instance_id))


def wait_file_lines(path: Path, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, f"{path} has {lines}, expected {count} lines"
        time.sleep(0.02)


def boot_and_run_once(sim: Emulator, instance_id: int) -> tuple[Path, int]:
    """Let a new instance boot and its onstart (JOB) start once: its disk and the onstart's pid."""
    sim.clock.advance(0.5)
    disk = sim.instance_disk(instance_id)
    wait_file_lines(disk / "runs.txt", 1)
    pid = sim.process_id(instance_id)
    assert pid is not None
    return disk, pid


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_create_loads_then_runs_the_onstart_with_the_box_environment(
    sim: Emulator, client: Any
) -> None:
    instance_id, _ = rent(client, env={"MY_SETTING": "42"})
    row = client.show_instance(id=instance_id)
    assert (row["actual_status"], row["intended_status"], row["cur_state"]) == (
        "loading",
        "running",
        "running",
    )
    assert "Pulling image" in row["status_msg"] and row["ssh_port"] is None
    sim.clock.advance(0.5)  # the image pull (boot_seconds)
    row = client.show_instance(id=instance_id)
    assert row["actual_status"] == "running" and state(client, instance_id) == "running"
    assert row["ssh_host"] == "127.0.0.1" and isinstance(row["ssh_port"], int)
    assert row["ports"]["22/tcp"][0]["HostPort"] == str(row["ssh_port"])
    disk = sim.instance_disk(instance_id)
    assert wait_file_lines(disk / "runs.txt", 1) == [f"start {instance_id}"]
    assert (disk / "root" / "onstart.sh").read_text() == JOB  # the profile's boot hook path
    assert (disk / "workspace").is_dir()
    pid = sim.process_id(instance_id)
    assert pid is not None
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in item
    )
    assert environ["CONTAINER_ID"] == str(instance_id)
    assert environ["VAST_CONTAINERLABEL"] == f"C.{instance_id}"
    assert environ["RGT_BOX_ROOT"] == str(disk) and environ["HOME"] == str(disk / "root")
    assert environ["MY_SETTING"] == "42"
    assert CANARY_API_KEY not in Path(f"/proc/{pid}/environ").read_text()
    assert os.getpgid(pid) == pid  # its own process group


def test_vast1_a_stopped_instance_keeps_billing_its_disk(sim: Emulator, client: Any) -> None:
    instance_id, _ = rent(client)
    sim.clock.advance(0.5)
    sim.clock.advance(3600)
    running = sim.meter(instance_id)
    assert running["compute"] > 0 and running["storage"] > 0
    client.stop_instance(id=instance_id)
    row = client.show_instance(id=instance_id)
    assert (row["actual_status"], row["intended_status"], row["cur_state"]) == ("stopped",) * 3
    assert state(client, instance_id) == "stopped" and row["ssh_port"] is None
    sim.clock.advance(10 * 3600)
    stopped = sim.meter(instance_id)
    assert stopped["compute"] == running["compute"]  # compute off
    assert stopped["storage"] == pytest.approx(running["storage"] * (3600.5 + 36000) / 3600.5)
    assert sim.instance_disk(instance_id).is_dir()  # the disk survives stop


def test_vast3_restart_sticks_in_scheduling_while_its_gpu_is_rented_by_another(
    sim: Emulator, client: Any
) -> None:
    # A multi-GPU machine, so it still looks rentable while our GPU is taken.
    first, offer = rent(client, {"num_gpus": {"eq": 1}, "gpu_frac": {"lt": 0.5}})
    boot_and_run_once(sim, first)  # its first start has run the job (the 2nd line below)
    client.stop_instance(id=first)
    # Someone rents the same offer meanwhile: the lowest free GPU is the one we released.
    other = int(client.create_instance(id=offer["id"], image="img", disk=10)["new_contract"])
    client.start_instance(id=first)
    sim.clock.advance(3600)
    row = client.show_instance(id=first)
    assert (row["actual_status"], row["intended_status"]) == ("stopped", "running")
    assert "Scheduling" in row["status_msg"] and state(client, first) == "scheduling"
    # The machine still shows an offer for rent: other GPUs are free (the VAST3 trap).
    again = client.search_offers(query={"machine_id": {"eq": offer["machine_id"]}}, limit=10)
    assert any(o["id"] == offer["id"] for o in again)
    assert sim.meter(first)["compute"] == 0.0  # ran 0 s, then waited unbilled
    client.destroy_instance(id=other)  # the GPU is free again: the start goes through
    assert state(client, first) == "loading"
    sim.clock.advance(0.3)
    assert state(client, first) == "running"
    assert wait_file_lines(sim.instance_disk(first) / "runs.txt", 2)


def test_preemption_kills_the_job_with_no_signal_and_winning_the_bid_reruns_onstart(
    sim: Emulator, client: Any
) -> None:
    offer = client.search_offers(query={}, type="bid", order="min_bid", limit=1)[0]
    instance_id = int(
        client.create_instance(
            id=offer["id"], image="img", disk=10, onstart_cmd=JOB, price=offer["min_bid"] * 1.2
        )["new_contract"]
    )
    disk, pid = boot_and_run_once(sim, instance_id)
    wait_file_lines(disk / "child.pid", 1)
    assert pid is not None
    child = int((disk / "child.pid").read_text())
    assert alive(child)

    sim.preempt(instance_id)
    row = client.show_instance(id=instance_id)
    assert row["is_bid"] is True and row["actual_status"] == "stopped"
    assert row["intended_status"] == "running" and "Outbid" in row["status_msg"]
    assert state(client, instance_id) == "paused"
    assert not alive(pid) and not alive(child) and group_members(pid) == []
    assert not (disk / "signals.txt").exists()  # SIGKILL, no signal first
    compute = sim.meter(instance_id)["compute"]
    sim.clock.advance(600)
    assert sim.meter(instance_id)["compute"] == compute  # paused: no compute billed

    sim.win_bid(instance_id)
    assert state(client, instance_id) == "loading"
    sim.clock.advance(0.3)
    assert state(client, instance_id) == "running"
    assert wait_file_lines(disk / "runs.txt", 2) == [f"start {instance_id}"] * 2


def test_on_demand_instances_cannot_be_outbid(sim: Emulator, client: Any) -> None:
    instance_id, _ = rent(client)
    sim.clock.advance(0.5)
    with pytest.raises(Exception, match="on-demand"):
        sim.preempt(instance_id)
    assert state(client, instance_id) == "running"


def test_vast7_host_offline_kills_the_process_and_returns_with_onstart(
    sim: Emulator, client: Any
) -> None:
    instance_id, _ = rent(client)
    disk, pid = boot_and_run_once(sim, instance_id)
    sim.take_host_offline(instance_id)
    row = client.show_instance(id=instance_id)
    assert row["actual_status"] == "offline" and state(client, instance_id) == "offline"
    assert "offline" in row["status_msg"].lower() and row["ssh_port"] is None
    assert not alive(pid) and group_members(pid) == []
    assert not (disk / "signals.txt").exists()
    sim.bring_host_online(instance_id)
    sim.clock.advance(0.3)
    assert state(client, instance_id) == "running"
    assert len(wait_file_lines(disk / "runs.txt", 2)) == 2


def test_zero_balance_stops_everything_then_deletes_after_the_grace(
    sim: Emulator, client: Any
) -> None:
    instance_id, _ = rent(client)
    sim.clock.advance(0.5)
    row = client.show_instance(id=instance_id)
    per_hour = row["dph_total"]  # compute + storage while running
    sim.set_balance(per_hour * 2)  # two hours left
    sim.clock.advance(2 * 3600 - 1)
    assert state(client, instance_id) == "running"
    sim.clock.advance(2)
    row = client.show_instance(id=instance_id)
    assert state(client, instance_id) == "stopped" and "balance" in row["status_msg"]
    assert client.show_user()["balance"] <= 0
    assert sim.process_id(instance_id) is None
    with pytest.raises(Exception, match="402"):
        client.start_instance(id=instance_id)
    sim.clock.advance(3600 - 2)  # the grace period (zero_balance_grace_seconds)
    assert client.show_instance(id=instance_id) is not None
    sim.clock.advance(2)
    assert client.show_instance(id=instance_id) is None
    assert not sim.instance_disk(instance_id).exists()


def test_credit_before_the_grace_ends_keeps_the_instance(sim: Emulator, client: Any) -> None:
    instance_id, _ = rent(client)
    sim.clock.advance(0.5)
    sim.set_balance(0.0001)
    sim.clock.advance(3600)
    assert state(client, instance_id) == "stopped"
    sim.set_balance(50)
    sim.clock.advance(10 * 3600)
    assert state(client, instance_id) == "stopped"
    client.start_instance(id=instance_id)
    sim.clock.advance(0.3)
    assert state(client, instance_id) == "running"


def test_destroy_removes_row_process_and_disk(sim: Emulator, client: Any) -> None:
    instance_id, _ = rent(client)
    disk, pid = boot_and_run_once(sim, instance_id)
    client.destroy_instance(id=instance_id)
    assert client.show_instance(id=instance_id) is None
    assert state(client, instance_id) == "gone"
    assert not disk.exists() and not alive(pid)
    assert all(row["id"] != instance_id for row in client.show_instances())


def test_an_on_demand_rental_outbids_a_bid_which_resumes_when_the_gpu_is_free(
    sim: Emulator, client: Any
) -> None:
    # A one-GPU machine: the newcomer can only get the bid's GPU.
    offer = client.search_offers(query={"gpu_frac": {"eq": 1}, "num_gpus": {"eq": 1}}, limit=1)[0]
    low = int(
        client.create_instance(
            id=offer["id"], image="img", disk=10, onstart_cmd=JOB, price=offer["min_bid"]
        )["new_contract"]
    )
    disk, pid = boot_and_run_once(sim, low)
    # A bid no higher does not take the GPU.
    with pytest.raises(Exception, match="400"):
        client.create_instance(id=offer["id"], image="img", disk=10, price=offer["min_bid"])
    assert state(client, low) == "running"
    winner = int(client.create_instance(id=offer["id"], image="img", disk=10)["new_contract"])
    assert state(client, low) == "paused" and not alive(pid)
    assert not (disk / "signals.txt").exists()
    sim.clock.advance(3600)
    assert state(client, low) == "paused"
    client.destroy_instance(id=winner)
    sim.clock.advance(0.3)
    assert state(client, low) == "running"
    assert len(wait_file_lines(disk / "runs.txt", 2)) == 2


def test_vast13_a_stalled_image_pull_stays_loading_until_released(
    sim: Emulator, client: Any
) -> None:
    instance_id, _ = rent(client)
    sim.stall_loading(instance_id)
    sim.clock.advance(24 * 3600)
    row = client.show_instance(id=instance_id)
    assert state(client, instance_id) == "loading" and "stalled" in row["status_msg"]
    assert sim.meter(instance_id)["compute"] == 0.0  # no compute billed while loading
    assert sim.meter(instance_id)["storage"] > 0
    sim.stall_loading(instance_id, 60)
    sim.clock.advance(59)
    assert state(client, instance_id) == "loading"
    sim.clock.advance(1)
    assert state(client, instance_id) == "running"


def test_an_instance_stopped_while_its_host_is_offline_comes_back_stopped(
    sim: Emulator, client: Any
) -> None:
    instance_id, _ = rent(client)
    sim.clock.advance(0.5)
    sim.take_host_offline(instance_id)
    client.stop_instance(id=instance_id)
    row = client.show_instance(id=instance_id)
    assert (row["actual_status"], row["intended_status"]) == ("offline", "stopped")
    sim.bring_host_online(instance_id)
    sim.clock.advance(5)
    row = client.show_instance(id=instance_id)
    assert (row["actual_status"], row["intended_status"]) == ("stopped", "stopped")
    assert sim.process_id(instance_id) is None
    client.start_instance(id=instance_id)  # its GPU was released and is free: it starts
    sim.clock.advance(0.3)
    assert state(client, instance_id) == "running"


def test_emulator_platform_facts_come_only_from_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rgt import profile as profile_module
    from rgt.errors import UsageError
    from rgt.sim.world import Platform

    real = profile_module.load_profile
    facts = Platform.from_profile()
    vast = real("vastai")
    assert (facts.id_env, facts.data_dir) == (vast.instance_id_env, vast.overrides["data_dir"])
    assert facts.onstart_path == vast.overrides["detach"]
    # A profile without data_dir: the emulator says so instead of assuming /workspace.
    text = vast.path.read_text()
    assert "\n  data_dir: " in text
    edited = tmp_path / "vastai.md"
    edited.write_text("".join(line for line in text.splitlines(keepends=True)
                              if not line.startswith("  data_dir: ")))  # fmt: skip
    monkeypatch.setattr(profile_module, "load_profile", lambda name: real(edited))
    with pytest.raises(UsageError, match="data_dir"):
        Platform.from_profile()
