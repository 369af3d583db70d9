"""`rgt sweep` without --platform covers every platform with boxes in the ledger (issue 16
item 4): vast.ai through its API when a key is set (the emulator, driven by the real vastai
SDK) and the boxes attached over ssh of every profile (a real loopback sshd standing in for a
RunPod pod and a lab server: tests/ssh_box.py). Before, it swept vast.ai only, and attached
boxes were seen only with --platform naming their profile.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rgt.errors import EXIT_USAGE
from rgt.ledger import Ledger
from tests.conftest import assert_no_canary
from tests.ssh_box import StandInBox

pytestmark = pytest.mark.timeout(180)


def rgt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rgt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def box(tmp_path: Path) -> Iterator[StandInBox]:
    stand_in = StandInBox(tmp_path / "box").start()
    yield stand_in
    stand_in.close()


def attach(box: StandInBox, profile: str, label: str) -> str:
    done = rgt("attach", profile, box.target, "--identity", str(box.client_key), "--label", label)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[1].rstrip(":")


def test_sweep_without_a_platform_covers_vastai_and_every_attached_profile(
    emulator: Any, box: StandInBox
) -> None:
    from rgt.providers.vastai import VastProvider
    from tests.ironlaw_emulator import create_instance

    rented = create_instance(VastProvider(), "sweep-all")
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", rented, label="rgt:sweep-all", state="created")
    pod = attach(box, "runpod", "pod")
    lab = attach(box, "generic-ssh", "lab")
    assert (pod, lab) == ("ssh-1", "ssh-2")

    swept = rgt("sweep", "--json")
    assert swept.returncode in (0, 1), swept.stderr
    report = json.loads(swept.stdout)
    rows = {row["instance_id"]: row for row in report["instances"]}
    assert {rented, pod, lab} <= set(rows)
    assert (rows[rented]["platform"], rows[pod]["platform"], rows[lab]["platform"]) == (
        "vastai",
        "runpod",
        "generic-ssh",
    )
    assert rows[pod]["state"] == rows[lab]["state"] == "running"
    assert report["platforms"] == ["vastai", "generic-ssh", "runpod"] and report["skipped"] == {}
    text = rgt("sweep")
    assert "swept: vastai, generic-ssh, runpod" in text.stdout
    assert all(i in text.stdout for i in (rented, pod, lab)), text.stdout

    # A box that stops answering is offline, still on the bill: the sweep says so.
    box.stop()
    again = json.loads(rgt("sweep", "--json").stdout)
    states = {row["instance_id"]: row["state"] for row in again["instances"]}
    assert states[pod] == states[lab] == "offline"
    assert_no_canary(swept.stdout, swept.stderr, text.stdout, text.stderr)


def test_without_an_api_key_the_attached_boxes_are_swept_and_vastai_is_named_unswept(
    box: StandInBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAST_API_KEY")
    # Nothing attached and no key: the missing key is the usage error it always was.
    bare = rgt("sweep")
    assert bare.returncode == EXIT_USAGE and "no vast.ai API key" in bare.stderr

    pod = attach(box, "runpod", "pod")
    swept = rgt("sweep", "--json")
    assert swept.returncode == 0, swept.stderr
    report = json.loads(swept.stdout)
    assert [(r["instance_id"], r["platform"]) for r in report["instances"]] == [(pod, "runpod")]
    assert report["platforms"] == ["runpod"]
    assert "no vast.ai API key" in report["skipped"]["vastai"]
    text = rgt("sweep")
    assert "NOT swept: vastai (no vast.ai API key" in text.stdout, text.stdout


@pytest.mark.anyio
async def test_the_mcp_sweep_covers_every_platform_like_the_cli(
    emulator: Any, box: StandInBox
) -> None:
    # Was: MCP sweep took a profile defaulting to vastai and never saw an attached box.
    from rgt.providers.vastai import VastProvider
    from tests.ironlaw_emulator import create_instance
    from tests.mcp_client import connect

    rented = create_instance(VastProvider(), "sweep-mcp")
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", rented, label="rgt:sweep-mcp", state="created")
    pod = attach(box, "runpod", "pod")
    async with connect(emulator, "auto") as session:
        every = await session.data("sweep", {})
        one = await session.data("sweep", {"profile": "vastai"})
    assert every["platforms"] == ["vastai", "runpod"] and every["skipped"] == {}
    rows = {row["instance_id"]: row["platform"] for row in every["instances"]}
    assert rows == {rented: "vastai", pod: "runpod"}
    assert [row["instance_id"] for row in one["instances"]] == [rented]
    assert one["platforms"] == ["vastai"]
    # The CLI's `--json` says the same (one source: rgt.sweep.sweep_every_platform).
    cli = json.loads(rgt("sweep", "--json").stdout)
    assert {r["instance_id"]: r["platform"] for r in cli["instances"]} == rows
    print("sweep result bytes:", len(json.dumps(every, separators=(",", ":"))))
