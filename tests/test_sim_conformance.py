"""The emulator against vast.ai's documented request and response shapes (issue 14).

Each test sends what a third-party client sends to vast.ai, through the stock `vastai` SDK/CLI
or raw HTTP (`requests`), and checks the answer against the shapes in vast.ai's API reference
and the SDK's own code (vastai/api/*.py, vastai/data/*.py, vastai/cli/main.py). The clock is
frozen: a test moves time with `advance`, so bills are exact."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import vastai
from conftest import CANARY_API_KEY, assert_no_canary

from rgt.providers.vastai import instance_state
from rgt.sim import Emulator
from rgt.sim.container import unavailable_reason as no_container_view
from rgt.sim.ssh import sshd_unavailable_reason
from tests.copy_helpers import raw_ssh

pytestmark = pytest.mark.timeout(60)

NEEDS_SSHD = pytest.mark.skipif(
    sshd_unavailable_reason() is not None, reason=f"no sshd here: {sshd_unavailable_reason()}"
)
NEEDS_CONTAINER_VIEW = pytest.mark.skipif(
    no_container_view() is not None, reason=f"no mount namespace here: {no_container_view()}"
)
AUTH = {"Authorization": f"Bearer {CANARY_API_KEY}"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with Emulator(
        state_dir=tmp_path_factory.mktemp("sim"), api_key=CANARY_API_KEY, time_scale=0
    ) as emulator:
        yield emulator


@pytest.fixture
def client(sim: Emulator) -> Any:
    return vastai.VastAI(api_key=CANARY_API_KEY, server_url=sim.url, retry=1)


def cheapest(client: Any, **query: Any) -> dict[str, Any]:
    """The cheapest rentable offer matching `query` (a search filter object)."""
    offers = client.search_offers(
        query={"rentable": {"eq": True}, **query}, order="dph_total", limit=1
    )
    return dict(offers[0])


def create_raw(sim: Emulator, offer_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """PUT /api/v0/asks/ID/ with `body` as a third-party client sends it."""
    answer = requests.put(f"{sim.url}/api/v0/asks/{offer_id}/", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_for(check: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """Poll `check` until it returns something truthy (processes run in real time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def boot(sim: Emulator, client: Any, instance_id: int) -> dict[str, Any]:
    """Let the instance pull its image; returns its row once running."""
    sim.clock.advance(0.5)
    return dict(
        wait_for(
            lambda: (
                (row := client.show_instance(id=instance_id))["actual_status"] == "running" and row
            ),
            f"instance {instance_id} running",
        )
    )


def logs(sim: Emulator, instance_id: int) -> str:
    """`vastai logs` as raw HTTP: ask for a result URL, fetch it without a key."""
    asked = requests.put(
        f"{sim.url}/api/v0/instances/request_logs/{instance_id}/",
        json={"tail": "200"},
        headers=AUTH,
        timeout=10,
    )
    assert asked.status_code == 200, asked.text
    return str(requests.get(asked.json()["result_url"], timeout=10).text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- 1. routes ------------------------------------------------------------------------------------


def test_routes_answer_with_and_without_the_trailing_slash(sim: Emulator, client: Any) -> None:
    offer = cheapest(client)
    bodies = {}
    for slash in ("/", ""):
        found = requests.post(
            f"{sim.url}/api/v0/bundles{slash}", json={"limit": 3}, headers=AUTH, timeout=10
        )
        assert found.status_code == 200 and len(found.json()["offers"]) == 3
        created = requests.put(
            f"{sim.url}/api/v0/asks/{offer['id']}{slash}",
            json={"image": "img", "disk": 10, "label": f"slash{slash!r}"},
            headers=AUTH,
            timeout=10,
        )
        assert created.status_code == 200, created.text
        instance_id = created.json()["new_contract"]
        shown = requests.get(f"{sim.url}/api/v0/instances/{instance_id}{slash}", headers=AUTH)
        assert shown.status_code == 200 and shown.json()["instances"]["id"] == instance_id
        listed = requests.get(f"{sim.url}/api/v0/instances{slash}?owner=me", headers=AUTH)
        assert listed.status_code == 200
        assert instance_id in [row["id"] for row in listed.json()["instances"]]
        bodies[slash] = instance_id
    for instance_id in bodies.values():
        client.destroy_instance(id=instance_id)


# -- 2. older clients: ?api_key= and GET /bundles?q= ----------------------------------------------


def test_key_in_the_query_string_and_get_bundles_with_q(
    sim: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rgt.sim.http")
    query = json.dumps({"num_gpus": {"eq": 1}, "rentable": {"eq": True}, "limit": 5})
    found = requests.get(
        f"{sim.url}/api/v0/bundles", params={"q": query, "api_key": CANARY_API_KEY}, timeout=10
    )
    assert found.status_code == 200, found.text
    offers = found.json()["offers"]
    assert 0 < len(offers) <= 5 and all(o["num_gpus"] == 1 for o in offers)
    user = requests.get(f"{sim.url}/api/v0/users/current?api_key={CANARY_API_KEY}", timeout=10)
    assert user.status_code == 200 and user.json()["username"] == "rgt-sim"
    wrong = requests.get(f"{sim.url}/api/v0/users/current?api_key=not-the-key", timeout=10)
    assert wrong.status_code == 401
    # The request lines (with ?api_key=) were logged, and the key was masked in every one.
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/api/v0/bundles" in logged and "api_key=***" in logged
    assert_no_canary(logged)


# -- 3. runtype "args" ----------------------------------------------------------------------------


def test_args_runtype_runs_the_args_and_the_box_exits_with_its_code(
    sim: Emulator, client: Any
) -> None:
    offer = cheapest(client)
    body = {
        "image": "img",
        "disk": 10,
        "runtype": "args",
        "args": ["bash", "-c", "echo from-args; exit 3"],
        "onstart": "touch onstart-ran",
    }
    instance_id = create_raw(sim, offer["id"], body)["new_contract"]
    sim.clock.advance(0.5)
    row = wait_for(
        lambda: (r := client.show_instance(id=instance_id))["actual_status"] == "exited" and r,
        "the args command to exit",
    )
    assert row["image_runtype"] == "args" and row["image_args"] == body["args"]
    assert row["intended_status"] == "running" and instance_state(row) == "exited"
    text = logs(sim, instance_id)
    assert "from-args" in text and "exited with code 3" in text
    assert not (sim.instance_disk(instance_id) / "onstart-ran").exists()  # not the entrypoint
    computed = sim.meter(instance_id)["compute"]
    sim.clock.advance(3600)  # an exited container bills its disk, not its GPU
    assert sim.meter(instance_id)["compute"] == computed
    client.destroy_instance(id=instance_id)
    # A command killed by a signal exits as Docker reports it: 128 + the signal (SIGKILL: 137).
    killed = create_raw(sim, offer["id"], {**body, "args": ["bash", "-c", "kill -KILL $$"]})
    sim.clock.advance(0.5)
    wait_for(
        lambda: "exited with code 137" in logs(sim, killed["new_contract"]), "the killed command"
    )
    client.destroy_instance(id=killed["new_contract"])


# -- 4. attach ssh --------------------------------------------------------------------------------


@NEEDS_SSHD
def test_an_attached_key_logs_in_to_that_box(sim: Emulator, client: Any, tmp_path: Path) -> None:
    key = tmp_path / "mine_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    offer = cheapest(client)
    instance_id = int(client.create_instance(id=offer["id"], image="img", disk=10)["new_contract"])
    port = boot(sim, client, instance_id)["ssh_port"]
    (sim.instance_disk(instance_id) / "workspace" / "hello.txt").write_text("hello\n")
    known = tmp_path / "known_hosts"
    refused = raw_ssh(port, key, known, "cat /workspace/hello.txt")
    assert refused.returncode != 0  # not attached yet
    answer = client.attach_ssh(instance_id, key.with_suffix(".pub").read_text())
    assert answer["success"] is True
    done = raw_ssh(port, key, known, "cat /workspace/hello.txt")
    assert done.returncode == 0 and done.stdout == "hello\n", done.stderr
    bad = requests.post(
        f"{sim.url}/api/v0/instances/{instance_id}/ssh/",
        json={"ssh_key": "not a key"},
        headers=AUTH,
        timeout=10,
    )
    assert bad.status_code == 400 and "ssh_key" in bad.json()["msg"]
    client.destroy_instance(id=instance_id)


# -- 5. boxes that look like containers -----------------------------------------------------------


@NEEDS_CONTAINER_VIEW
def test_a_box_writes_workspace_into_its_disk_and_gets_the_container_environment(
    sim: Emulator, client: Any
) -> None:
    inner = free_port()
    # A name of this run only: the check "never on the host" must not see an older file, and
    # if the box ever writes to the host again, the test removes what it wrote.
    out = f"out-{secrets.token_hex(4)}"
    onstart = (
        f"mkdir -p /workspace/{out} && echo made-in-box > /workspace/{out}/result.txt\n"
        # Renamed into place: the test waits for env.txt, which `env >` creates before writing.
        f"env > /workspace/{out}/env.tmp && mv /workspace/{out}/env.tmp /workspace/{out}/env.txt\n"
        f"exec python3 -m http.server {inner} --bind 127.0.0.1 --directory /workspace/{out}\n"
    )
    offer = cheapest(client, direct_port_count={"gte": 4})
    created = create_raw(
        sim,
        offer["id"],
        {"image": "img", "disk": 10, "onstart": onstart, "env": {f"-p {inner}:{inner}": "1"}},
    )
    instance_id = created["new_contract"]
    row = boot(sim, client, instance_id)
    disk = sim.instance_disk(instance_id)
    on_host = Path("/workspace") / out
    try:
        wait_for(lambda: (disk / "workspace" / out / "env.txt").exists(), "the onstart to write")
        assert (disk / "workspace" / out / "result.txt").read_text() == "made-in-box\n"
        assert not on_host.exists()  # never on the host
    finally:
        shutil.rmtree(on_host, ignore_errors=True)
    env = dict(
        line.split("=", 1)
        for line in (disk / "workspace" / out / "env.txt").read_text().splitlines()
        if "=" in line
    )
    public = int(row["ports"][f"{inner}/tcp"][0]["HostPort"])
    assert env["PUBLIC_IPADDR"] == row["public_ipaddr"] == "127.0.0.1"
    assert env[f"VAST_TCP_PORT_{inner}"] == str(public)
    assert env["CONTAINER_API_KEY"] == created["instance_api_key"]
    # The emulator's state file holds that key: only its owner may read it.
    assert (sim.state_dir / "state.json").stat().st_mode & 0o777 == 0o600
    assert row["direct_port_start"] <= public <= row["direct_port_end"]
    page = wait_for(
        lambda: _fetch(f"http://127.0.0.1:{public}/result.txt"), "the box's server via its port"
    )
    assert page == "made-in-box\n"
    # The instance key works for this instance only.
    mine = {"Authorization": f"Bearer {env['CONTAINER_API_KEY']}"}
    shown = requests.get(f"{sim.url}/api/v0/instances/{instance_id}/", headers=mine, timeout=10)
    assert shown.status_code == 200 and shown.json()["instances"]["id"] == instance_id
    other = int(client.create_instance(id=cheapest(client)["id"], image="i")["new_contract"])
    for path in (f"/api/v0/instances/{other}/", "/api/v0/instances/", "/api/v0/users/current"):
        refused = requests.get(f"{sim.url}{path}", headers=mine, timeout=10)
        assert refused.status_code == 401, path
    for instance in (instance_id, other):
        client.destroy_instance(id=instance)
    assert not _fetch(f"http://127.0.0.1:{public}/result.txt")  # the port closed with the box


def _fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


# -- 6. target_state "stopped" --------------------------------------------------------------------


def test_target_state_stopped_creates_without_starting_and_bills_the_disk(
    sim: Emulator, client: Any
) -> None:
    offer = cheapest(client)
    body = {"image": "img", "disk": 20, "onstart": "touch ran", "target_state": "stopped"}
    instance_id = create_raw(sim, offer["id"], body)["new_contract"]
    sim.clock.advance(3600)
    row = client.show_instance(id=instance_id)
    assert (row["actual_status"], row["intended_status"]) == ("stopped", "stopped")
    assert instance_state(row) == "stopped" and sim.process_id(instance_id) is None
    meter = sim.meter(instance_id)
    assert meter["compute"] == 0.0
    assert meter["storage"] == pytest.approx(20 * row["storage_cost"] / (30 * 24))
    client.start_instance(id=instance_id)
    assert boot(sim, client, instance_id)["actual_status"] == "running"
    wait_for(lambda: (sim.instance_disk(instance_id) / "ran").exists(), "the onstart")
    client.destroy_instance(id=instance_id)


# -- 7. the 401 -----------------------------------------------------------------------------------


def test_a_bad_key_gets_vast_ais_401_body_exactly(sim: Emulator) -> None:
    answer = requests.get(
        f"{sim.url}/api/v0/instances/", headers={"Authorization": "Bearer wrong"}, timeout=10
    )
    assert answer.status_code == 401
    assert answer.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}
    assert answer.headers["X-Rgt-Sim-Hint"]  # the emulator's own hint, out of the body
    done = subprocess.run(
        [str(Path(sys.executable).parent / "vastai"), "show", "instances", "--api-key", "wrong"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VAST_URL": sim.url},
        check=False,
    )
    assert "Failed with error 401: Invalid user key" in done.stderr


# -- 8. volumes, invoices, cloud copy -------------------------------------------------------------


def test_volumes_bind_to_their_machine_and_bill_per_gb_while_they_exist(
    sim: Emulator, client: Any
) -> None:
    offer = cheapest(client)
    assert offer["avail_vol_size"] > 0 and offer["avail_vol_dph"] > 0
    before = sim.account_meter()["volumes"]
    answer = client.create_volume(id=offer["avail_vol_ask_id"], size=50, name="data")
    volume_id = answer["volume_id"]
    rows = client.show_volumes()
    mine = next(v for v in rows if v["id"] == volume_id)
    assert mine["machine_id"] == offer["machine_id"] and mine["disk_space"] == 50
    assert client.show_volumes(type="network") == []  # network volumes are not emulated
    sim.clock.advance(3600)
    billed = sim.account_meter()["volumes"] - before
    assert billed == pytest.approx(50 * offer["avail_vol_dph"], rel=1e-4)  # dph is rounded
    client.delete_volume(id=volume_id)
    sim.clock.advance(3600)  # deleted: no more billing
    assert sim.account_meter()["volumes"] - before == pytest.approx(billed)
    assert volume_id not in [v["id"] for v in client.show_volumes()]
    too_big = requests.put(
        f"{sim.url}/api/v0/volumes/",
        json={"id": offer["avail_vol_ask_id"], "size": 10**7},
        headers=AUTH,
        timeout=10,
    )
    assert too_big.status_code == 400 and "size" in too_big.json()["msg"]


def test_invoices_list_charges_and_cloud_copy_bills_upload_from_a_stopped_box(
    sim: Emulator, client: Any
) -> None:
    offer = cheapest(client, inet_up_cost={"gt": 0})
    instance_id = int(client.create_instance(id=offer["id"], image="img", disk=10)["new_contract"])
    boot(sim, client, instance_id)
    client.stop_instance(id=instance_id)
    (sim.instance_disk(instance_id) / "workspace" / "ckpt.bin").write_bytes(b"x" * 4_000_000)
    answer = client.cloud_copy(
        src="/workspace", dst="bucket/run", instance=str(instance_id), connection="7"
    )
    assert answer["success"] is True
    meter = sim.meter(instance_id)
    assert meter["bytes_out"] == 4_000_000
    assert meter["bandwidth"] == pytest.approx(0.004 * offer["inet_up_cost"])
    invoices = requests.get(f"{sim.url}/api/v1/invoices", headers=AUTH, timeout=10).json()
    charge = next(i for i in invoices["invoices"] if i.get("instance_id") == instance_id)
    assert charge["amount"] == pytest.approx(sim.meter(instance_id)["total"], abs=1e-6)
    client.destroy_instance(id=instance_id)


# -- 9. fields and types --------------------------------------------------------------------------


def test_instance_and_offer_rows_carry_vast_ais_fields_and_types(
    sim: Emulator, client: Any
) -> None:
    offer = cheapest(client)
    for name in (
        "gpu_totalram",
        "dlperf",
        "dlperf_per_dphtotal",
        "total_flops",
        "hosting_type",
        "cuda_max_good",
        "driver_version",
        "compute_cap",
        "direct_port_count",
    ):
        assert name in offer, name
    assert re.fullmatch(r".+, [A-Z]{2}", offer["geolocation"])
    country = offer["geolocation"].rsplit(", ", 1)[1]
    by_code = client.search_offers(query={"geolocation": {"in": [country]}}, limit=500)
    assert by_code and all(o["geolocation"].endswith(", " + country) for o in by_code)
    kinds = {o["hosting_type"] for o in client.search_offers(query={}, limit=500)}
    assert kinds == {0, 1}  # some datacenter offers
    # A create without `disk` gets 8 GB.
    created = create_raw(sim, offer["id"], {"image": "img", "runtype": "ssh"})
    instance_id = created["new_contract"]
    row = boot(sim, client, instance_id)
    assert row["disk_space"] == 8.0
    assert row["bundle_id"] == offer["id"] != row["id"]
    assert isinstance(row["disk_util"], int) and isinstance(row["ssh_idx"], str)
    assert row["mem_limit"] == pytest.approx(row["cpu_ram"] / 1024)
    assert row["geolocation"] == offer["geolocation"]
    for name in (
        "cpu_name",
        "cpu_cores",
        "cpu_ghz",
        "cpu_cores_effective",
        "gpu_totalram",
        "dlperf",
        "dlperf_per_dphtotal",
        "total_flops",
        "inet_up_billed",
        "inet_down_billed",
        "hosting_type",
        "cuda_max_good",
        "driver_version",
        "compute_cap",
        "direct_port_count",
    ):
        assert name in row, name
    for block in ("instance", "search"):
        prices = row[block]
        assert prices["totalHour"] == pytest.approx(prices["gpuCostPerHour"] + prices["diskHour"])
    assert row["instance"]["totalHour"] == pytest.approx(row["dph_total"])
    listed = requests.get(f"{sim.url}/api/v0/instances/?owner=me", headers=AUTH, timeout=10)
    assert listed.json()["instances_found"] == len(listed.json()["instances"])
    client.destroy_instance(id=instance_id)
