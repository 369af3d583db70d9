"""The emulator's wire protocol, driven by the real `vastai` 1.9.1 CLI (subprocess) and SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import vastai
from conftest import CANARY_API_KEY, assert_no_canary

from rgt.sim import Emulator

pytestmark = pytest.mark.timeout(60)


def cli(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """The stock `vastai` CLI of this venv (VAST_URL and the key come from the environment)."""
    env = dict(os.environ)
    if key is not None:
        env["VAST_API_KEY"] = key
    return subprocess.run(
        [str(Path(sys.executable).parent / "vastai"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def sdk(emulator: Emulator, key: str = CANARY_API_KEY) -> Any:
    return vastai.VastAI(api_key=key, server_url=emulator.url, retry=1)


def wait_status(client: Any, instance_id: int, status: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = client.show_instance(id=instance_id)
        if row and row["actual_status"] == status:
            return dict(row)
        assert time.monotonic() < deadline, f"{instance_id} never {status}: {row}"
        time.sleep(0.05)


def test_wrong_or_missing_key_gets_401_with_a_clear_body(emulator: Emulator) -> None:
    with pytest.raises(requests.HTTPError) as caught:
        sdk(emulator, key="not-the-key").show_instances()
    assert caught.value.response.status_code == 401
    assert caught.value.response.json()["msg"] == "Invalid user key"
    bare = requests.get(f"{emulator.url}/api/v0/users/current", timeout=5)
    # vast.ai's body exactly; the emulator's hint rides in a header of its own.
    assert bare.status_code == 401 and bare.json()["msg"] == "Invalid user key"
    assert "Authorization: Bearer" in bare.headers["X-Rgt-Sim-Hint"]
    assert bare.headers["Content-Type"] == "application/json"
    done = cli("show", "user", key="not-the-key")
    assert "Failed with error 401" in done.stdout + done.stderr
    # Nothing was created or billed by the refused calls.
    assert emulator.instance_ids() == []


def _search(emulator: Emulator, body: dict[str, Any]) -> list[dict[str, Any]]:
    answer = requests.post(
        f"{emulator.url}/api/v0/bundles/",
        json=body,
        headers={"Authorization": f"Bearer {CANARY_API_KEY}"},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    offers: list[dict[str, Any]] = answer.json()["offers"]
    return offers


def test_search_filter_operators_order_and_limit(emulator: Emulator) -> None:
    everything = _search(emulator, {})
    assert len(everything) > 50
    names = {o["gpu_name"] for o in everything}
    assert len(names) >= 3

    def ids(rows: list[dict[str, Any]]) -> set[int]:
        return {r["id"] for r in rows}

    def expect(body: dict[str, Any], keep: Any) -> None:
        assert ids(_search(emulator, body)) == ids([o for o in everything if keep(o)]), body

    expect({"num_gpus": {"eq": "2"}}, lambda o: o["num_gpus"] == 2)  # numbers arrive as text
    expect({"num_gpus": {"neq": 1}}, lambda o: o["num_gpus"] != 1)
    expect({"dph_total": {"gt": "0.5"}}, lambda o: o["dph_total"] > 0.5)
    expect({"dph_total": {"gte": 0.5, "lte": 1.5}}, lambda o: 0.5 <= o["dph_total"] <= 1.5)
    expect({"reliability": {"lt": 0.98}}, lambda o: o["reliability"] < 0.98)
    expect(
        {"gpu_name": {"in": ["RTX 4090", "L40S"]}}, lambda o: o["gpu_name"] in ("RTX 4090", "L40S")
    )
    expect({"gpu_name": {"notin": ["RTX 4090"]}}, lambda o: o["gpu_name"] != "RTX 4090")
    expect({"verified": {"eq": True}, "external": {"eq": False}}, lambda o: o["verified"])
    expect({"direct_port_count": {"gte": "1"}}, lambda o: o["direct_port_count"] >= 1)

    ordered = _search(emulator, {"order": [["dph_total", "desc"]], "limit": 7})
    assert len(ordered) == 7
    assert [o["dph_total"] for o in ordered] == sorted(
        (o["dph_total"] for o in everything), reverse=True
    )[:7]
    bad = requests.post(
        f"{emulator.url}/api/v0/bundles/",
        json={"num_gpus": {"about": 1}},
        headers={"Authorization": f"Bearer {CANARY_API_KEY}"},
        timeout=5,
    )
    assert bad.status_code == 400 and "about" in bad.json()["msg"]


def test_marketplace_is_deterministic_per_seed(tmp_path: Path) -> None:
    def offers(seed: int) -> list[dict[str, Any]]:
        with Emulator(seed=seed, api_key="k", ssh=False) as sim:
            return list(vastai.VastAI(api_key="k", server_url=sim.url).search_offers(
                query={}, no_default=True, limit=1000
            ))  # fmt: skip

    first, again, other = offers(1), offers(1), offers(2)
    assert first == again
    assert [o["id"] for o in first] != [o["id"] for o in other]


def test_list_pages_like_the_sdk_does(emulator: Emulator) -> None:
    client = sdk(emulator)
    created = []
    for index in range(30):
        offer = client.search_offers(query={}, limit=1)[0]  # rentable only: GPUs get used up
        answer = client.create_instance(id=offer["id"], image="img", disk=10, label=f"p{index}")
        created.append(answer["new_contract"])
    before = emulator.request_count("GET", "/api/v1/instances/")
    rows = client.show_instances()
    assert sorted(r["id"] for r in rows) == sorted(created)
    assert emulator.request_count("GET", "/api/v1/instances/") - before == 2  # 25 + 5
    page = client.show_instances_v1(
        {
            "select_filters": {"label": {"in": ["p1", "p2"]}},
            "order_by": [{"col": "id", "dir": "desc"}],
            "limit": 1,
        }
    )
    assert page["total_instances"] == 2 and page["next_token"]
    assert page["instances"][0]["label"] in ("p1", "p2")


def test_faults_are_served_as_vast_ai_would(emulator: Emulator) -> None:
    assert cli("show", "user").returncode == 0  # the CLI's one-off role probe, out of the way
    emulator.fail_next(2, status=429, retry_after=0.1)
    started = time.monotonic()
    done = cli("show", "instances", "--raw")
    assert done.returncode == 0 and json.loads(done.stdout) == []
    assert emulator.request_count("GET", "/api/v1/instances/") == 3
    assert time.monotonic() - started >= 0.2

    client = sdk(emulator)
    offer = client.search_offers(query={}, limit=1)[0]
    emulator.fail_next(1, status=502, after_commit=True)
    with pytest.raises(requests.HTTPError):
        client.create_instance(id=offer["id"], image="img", disk=10, label="rgt:committed")
    assert [r["label"] for r in client.show_instances()] == ["rgt:committed"]

    emulator.fail_next(1, status=503, skip=1)
    client.show_user()
    with pytest.raises(requests.HTTPError) as caught:
        client.show_user()
    assert caught.value.response.status_code == 503
    client.show_user()

    emulator.add_latency(0.3)
    started = time.monotonic()
    client.show_user()
    assert time.monotonic() - started >= 0.3


def test_cut_off_answers_do_the_work_and_lose_the_answer(emulator: Emulator) -> None:
    client = sdk(emulator)
    offer = client.search_offers(query={}, limit=1)[0]
    # The connection closes mid-body: the client reads less than the Content-Length promised.
    emulator.fail_next(1, cut="connection", method="PUT", path="/api/v0/asks/*")
    assert client.show_instances() == []  # not a PUT: untouched
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        client.create_instance(id=offer["id"], image="img", disk=10, label="rgt:cut")
    assert [r["label"] for r in client.show_instances()] == ["rgt:cut"]  # the work was done
    # A complete answer whose body was cut: a 200 that is not JSON.
    emulator.fail_next(1, cut="body", path="/api/v1/instances/")
    with pytest.raises(requests.exceptions.JSONDecodeError):
        client.show_instances()
    assert [r["label"] for r in client.show_instances()] == ["rgt:cut"]
    # A transient 404 with vast.ai's "no such instance" body, for one path only.
    instance_id = client.show_instances()[0]["id"]
    emulator.fail_next(1, status=404, path=f"/api/v0/instances/{instance_id}/")
    with pytest.raises(requests.HTTPError) as caught:
        client.show_instance(id=instance_id)
    assert caught.value.response.status_code == 404
    assert caught.value.response.json()["error"] == "no_such_instance"
    assert client.show_instance(id=instance_id)["label"] == "rgt:cut"


def test_logs_result_url_needs_no_key_and_unknown_ids_are_404(emulator: Emulator) -> None:
    client = sdk(emulator)
    offer = client.search_offers(query={}, limit=1)[0]
    instance_id = client.create_instance(
        id=offer["id"], image="img", disk=10, onstart_cmd="for i in 1 2 3; do echo line$i; done"
    )["new_contract"]
    wait_status(client, instance_id, "running")
    asked = requests.put(
        f"{emulator.url}/api/v0/instances/request_logs/{instance_id}/",
        json={"tail": "2"},
        headers={"Authorization": f"Bearer {CANARY_API_KEY}"},
        timeout=5,
    ).json()
    deadline = time.monotonic() + 5
    while "line3" not in (text := requests.get(asked["result_url"], timeout=5).text):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert text.splitlines() == ["line2", "line3"]
    with pytest.raises(requests.HTTPError) as caught:
        client.stop_instance(id=999)
    assert caught.value.response.status_code == 404
    assert client.show_instance(id=999) is None


def test_bulk_calls_launch_and_no_key_on_disk(emulator: Emulator) -> None:
    client = sdk(emulator)
    done = cli(
        "launch", "instance", "-g", "RTX_4090", "-n", "1", "-i", "pytorch/pytorch",
        "--ssh", "--direct", "--raw",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    launched = int(json.loads(done.stdout)["new_contract"])
    assert client.show_instance(id=launched)["gpu_name"] == "RTX 4090"
    offer = client.search_offers(query={}, limit=1)[0]
    other = int(client.create_instance(id=offer["id"], image="img", disk=10)["new_contract"])
    wait_status(client, other, "running")
    client.stop_instances(ids=[launched, other])  # PUT /api/v0/instances/ {"ids", "state"}
    assert {r["actual_status"] for r in client.show_instances()} == {"stopped"}
    client.destroy_instances(ids=[launched, other])  # DELETE /api/v0/instances/
    assert client.show_instances() == []
    # The key is held in memory only: nothing the emulator wrote contains it.
    for path in emulator.state_dir.rglob("*"):
        if path.is_file():
            assert_no_canary(path.read_bytes())
    assert_no_canary(done.stdout, done.stderr)


def test_create_refusals_name_the_problem_and_rent_nothing(emulator: Emulator) -> None:
    from rgt.profile import load_profile

    client = sdk(emulator)
    offer = client.search_offers(query={}, type="bid", limit=1)[0]
    limit = load_profile("vastai").onstart_limit_bytes
    assert limit is not None
    cases = [
        ({"id": 1, "image": "img"}, 404, "does not exist"),
        ({"id": offer["id"], "image": "img", "onstart_cmd": "x" * (limit + 1)}, 400, str(limit)),
        ({"id": offer["id"], "image": "img", "price": offer["min_bid"] / 2}, 400, "min_bid"),
        ({"id": offer["id"], "image": "img", "disk": 10**6}, 400, "disk"),
    ]
    for arguments, status, needle in cases:
        with pytest.raises(requests.HTTPError) as caught:
            client.create_instance(**arguments)
        assert caught.value.response.status_code == status
        assert needle in caught.value.response.json()["msg"]
    assert client.show_instances() == []


def test_a_trailing_slash_on_the_url_still_reaches_the_api(emulator: Emulator) -> None:
    # `VAST_URL=http://host:port/` makes the CLI and SDK request `//api/v0/...`.
    client = vastai.VastAI(api_key=CANARY_API_KEY, server_url=emulator.url + "/", retry=1)
    assert client.show_user()["username"] == "rgt-sim"
    assert emulator.request_count("GET", "/api/v0/users/current") == 1


def test_the_control_endpoints_drive_faults_time_and_money(tmp_path: Path) -> None:
    with Emulator(state_dir=tmp_path / "sim", api_key="k", ssh=False, time_scale=0) as sim:
        client = vastai.VastAI(api_key="k", server_url=sim.url, retry=1)
        auth = {"Authorization": "Bearer k"}

        def control(route: str, body: dict[str, Any] | None = None) -> Any:
            answer = requests.post(
                f"{sim.url}/_sim/{route}", json=body or {}, headers=auth, timeout=5
            )
            assert answer.status_code == 200, answer.text
            return answer.json()

        offer = client.search_offers(query={}, type="bid", limit=1)[0]
        bid = client.create_instance(id=offer["id"], image="i", disk=10, price=offer["min_bid"])
        instance_id = int(bid["new_contract"])
        control(f"stall_loading/{instance_id}")
        control("advance", {"seconds": 3600})
        assert client.show_instance(id=instance_id)["actual_status"] == "loading"
        control(f"stall_loading/{instance_id}", {"seconds": 1})
        control("advance", {"seconds": 1})
        assert client.show_instance(id=instance_id)["actual_status"] == "running"
        control(f"preempt/{instance_id}")
        assert "Outbid" in client.show_instance(id=instance_id)["status_msg"]
        control(f"win_bid/{instance_id}")
        control("advance", {"seconds": 1})
        control(f"host_offline/{instance_id}")
        assert client.show_instance(id=instance_id)["actual_status"] == "offline"
        control(f"host_online/{instance_id}")
        control("advance", {"seconds": 1})
        assert client.show_instance(id=instance_id)["actual_status"] == "running"
        meter = requests.get(f"{sim.url}/_sim/meter/{instance_id}", headers=auth, timeout=5).json()
        assert meter["storage"] > 0 and meter["total"] == pytest.approx(
            sim.meter(instance_id)["total"]
        )
        assert control("balance", {"dollars": 12.5})["balance"] == 12.5
        control("latency", {"seconds": 0.2})
        started = time.monotonic()
        client.show_user()
        assert time.monotonic() - started >= 0.2
        seen = requests.get(f"{sim.url}/_sim/requests", headers=auth, timeout=5).json()["requests"]
        assert {"method": "POST", "path": "/_sim/advance", "count": 4} in seen
        bad = requests.post(
            f"{sim.url}/_sim/fail_next", json={"n": 1, "status": 400}, headers=auth, timeout=5
        )
        assert bad.status_code == 400 and "429, 404 or 5xx" in bad.json()["msg"]
        bad_cut = requests.post(
            f"{sim.url}/_sim/fail_next", json={"n": 1, "cut": "half"}, headers=auth, timeout=5
        )
        assert bad_cut.status_code == 400 and "connection, body" in bad_cut.json()["msg"]
        # Over HTTP too: a show of this instance only answers 404 once; other calls are untouched.
        control("latency", {"seconds": 0})
        control("fail_next", {"n": 1, "status": 404, "path": f"/api/v0/instances/{instance_id}/"})
        client.show_user()
        with pytest.raises(requests.HTTPError) as caught:
            client.show_instance(id=instance_id)
        assert caught.value.response.json()["error"] == "no_such_instance"
        assert client.show_instance(id=instance_id)["id"] == instance_id
        wrong = requests.post(f"{sim.url}/_sim/preempt/{instance_id}", timeout=5)
        assert wrong.status_code == 401
