"""The stock `vastai` 1.9.1 CLI (a subprocess, as a user runs it) through a whole lifecycle
against the emulator, with `--raw` JSON checked. Kept in its own file: each CLI start costs ~1 s."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import assert_no_canary
from test_sim_api import cli, sdk, wait_status

from rgt.sim import Emulator

pytestmark = pytest.mark.timeout(90)


def test_stock_cli_lifecycle_with_raw_json(emulator: Emulator) -> None:
    outputs: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = cli(*args)
        outputs.extend([done.stdout, done.stderr])
        assert done.returncode == 0, done.stderr
        return done

    found = run(
        "search",
        "offers",
        "gpu_name=RTX_4090 num_gpus=1 verified=true direct_port_count>=1 rentable=true",
        "-o",
        "dph+",
        "--raw",
    )
    offers = json.loads(found.stdout)
    assert offers and {o["gpu_name"] for o in offers} == {"RTX 4090"}
    assert all(o["num_gpus"] == 1 and o["direct_port_count"] >= 1 for o in offers)
    assert [o["dph_total"] for o in offers] == sorted(o["dph_total"] for o in offers)
    # The CLI asked for gpu names at start-up, without a key, from VAST_URL.
    assert emulator.request_count("GET", "/api/v0/gpu_names/unique/") >= 1

    created = run(
        "create", "instance", str(offers[0]["id"]), "--image", "pytorch/pytorch",
        "--disk", "20", "--ssh", "--direct", "--label", "rgt:cli",
        "--onstart-cmd", "echo hello-from-$CONTAINER_ID; sleep 300", "--raw",
    )  # fmt: skip
    answer = json.loads(created.stdout)
    assert answer["success"] is True
    instance_id = int(answer["new_contract"])

    client = sdk(emulator)
    wait_status(client, instance_id, "running")
    shown = json.loads(run("show", "instance", str(instance_id), "--raw").stdout)
    assert shown["actual_status"] == "running" and shown["intended_status"] == "running"
    assert shown["label"] == "rgt:cli" and shown["disk_space"] == 20.0
    assert shown["image_runtype"] == "ssh_direc ssh_proxy"
    listed = json.loads(run("show", "instances", "--raw").stdout)
    assert [row["id"] for row in listed] == [instance_id]

    ssh_url = run("ssh-url", str(instance_id)).stdout.strip()
    assert ssh_url == f"ssh://root@127.0.0.1:{shown['ssh_port']}"
    assert shown["ports"]["22/tcp"][0]["HostPort"] == str(shown["ssh_port"])

    assert "stopping" in run("stop", "instance", str(instance_id)).stdout
    stopped = json.loads(run("show", "instance", str(instance_id), "--raw").stdout)
    assert (stopped["actual_status"], stopped["intended_status"], stopped["cur_state"]) == (
        "stopped",
        "stopped",
        "stopped",
    )
    run("start", "instance", str(instance_id))
    wait_status(client, instance_id, "running")
    client.reboot_instance(id=instance_id)  # the SDK here: each CLI start costs ~1 s
    wait_status(client, instance_id, "running")
    logs = run("logs", str(instance_id)).stdout
    assert f"hello-from-{instance_id}" in logs

    user = client.show_user()
    assert 0 < user["balance"] < 100 and "api_key" not in user

    run("destroy", "instance", str(instance_id), "-y")
    gone = run("show", "instance", str(instance_id), "--raw")
    assert json.loads(gone.stdout) == {"instances": None}
    assert not emulator.instance_disk(instance_id).exists()
    assert_no_canary(*outputs)
