"""MCP destroy and discard of an attached box (issue 16 item 3, issue 17): the human confirms,
in the same elicitation as their approval passphrase, that they stopped the box's meter in the
platform's console.

Real parts: the real MCP client (tests/mcp_client.py's scripted `Human`, answering the form
the way a person in the client UI would) spawning `rgt mcp` over stdio, a real loopback sshd
standing in for a RunPod pod (tests/ssh_box.py), the boot hook and job run over ssh, rsync,
SQLite. Before this, MCP destroy of an attached box always refused ("run `rgt destroy` on a
terminal"): the meter-stop confirmation had no channel but a TTY.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.types import ElicitRequestParams, ElicitResult

from rgt.ledger import Ledger
from tests.conftest import assert_no_canary
from tests.mcp_client import PASSPHRASE, Human, configure_passphrase
from tests.ssh_box import StandInBox
from tests.test_provider_ssh import attach, box_job, box_profile, rgt

pytestmark = pytest.mark.timeout(240)


class MeterStopHuman(Human):
    """A person who, asked to stop the box's meter themselves, does it (or not) before typing
    `stopped ID` (or `typed_stop`) next to their passphrase."""

    def __init__(self, typed_stop: str, *, stop_box: StandInBox | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.typed_stop = typed_stop
        self.stop_box = stop_box

    async def __call__(self, context: Any, params: ElicitRequestParams) -> ElicitResult:
        answer = await super().__call__(context, params)
        if self.stop_box is not None:
            self.stop_box.stop()  # terminated in the console: the pod stops answering
        assert answer.content is not None
        answer.content["meter_stopped"] = self.typed_stop
        return answer


@pytest.fixture
def box(tmp_path: Path) -> Iterator[StandInBox]:
    stand_in = StandInBox(tmp_path / "box").start()
    yield stand_in
    stand_in.close()


def finished_and_verified(box: StandInBox, tmp_path: Path) -> str:
    """An attached RunPod box whose job finished, pulled and verified: all evidence present."""
    instance = attach(box, box_profile(tmp_path, box.disk))
    job = box_job(tmp_path, box.disk, step_seconds="0")
    assert rgt("launch", "--on", instance, "--job", str(job)).returncode == 0
    done = rgt("poll", instance, "--until", "done", "--interval", "1", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    local = tmp_path / "pulled"
    pulled = rgt("pull", instance, f"{box.disk}/workspace/results", str(local))
    assert pulled.returncode == 0, pulled.stderr
    assert rgt("verify", str(local)).returncode == 0
    return instance


async def call_destroy(instance: str, human: Human) -> dict[str, Any]:
    return await call_tool("destroy", {"instance_id": instance}, human)


async def call_tool(name: str, arguments: dict[str, Any], human: Any) -> dict[str, Any]:
    """One call of the tool through a real MCP client spawning `rgt mcp` over stdio."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "rgt", "mcp"],
        env=dict(os.environ),
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    async with Client(
        params, mode="auto", elicitation_callback=human, read_timeout_seconds=120
    ) as client:
        result = await client.call_tool(name, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert_no_canary(json.dumps(result.structured_content))
    return dict(result.structured_content)


@pytest.mark.anyio
async def test_mcp_destroy_of_an_attached_box_takes_the_humans_meter_stop_in_the_same_form(
    box: StandInBox, tmp_path: Path
) -> None:
    configure_passphrase()
    instance = finished_and_verified(box, tmp_path)

    # The human approves but does not say they stopped the pod: nothing is recorded as ended.
    silent = MeterStopHuman("", typed=instance)
    refused = await call_destroy(instance, silent)
    assert refused["destroyed"] is False and "not confirmed" in refused["message"], refused
    (asked,) = silent.asked
    form = asked.requested_schema["properties"]  # type: ignore[union-attr]
    assert {"instance_id", "passphrase", "meter_stopped"} <= set(form)
    assert "terminate: RunPod console" in asked.message
    assert f"stopped {instance}" in asked.message
    with Ledger.open() as ledger:
        assert [d.status for d in ledger.destroys(instance)] == ["failed"]
    assert rgt("poll", instance, "--json").returncode == 0
    assert json.loads(rgt("poll", instance, "--json").stdout)["state"] == "running"

    # The right phrase without the passphrase (what an agent's own client could type): refused.
    agent = MeterStopHuman(f"stopped {instance}", typed=instance, passphrase="guessed")
    assert (await call_destroy(instance, agent))["destroyed"] is False
    assert json.loads(rgt("poll", instance, "--json").stdout)["state"] == "running"

    # The human terminates the pod in the console, then confirms with the passphrase.
    human = MeterStopHuman(f"stopped {instance}", typed=instance, stop_box=box)
    ended = await call_destroy(instance, human)
    assert ended["destroyed"] is True, ended["missing"]
    assert "the human confirmed terminate" in ended["message"]
    with Ledger.open() as ledger:
        ends = ledger.destroys(instance)
        assert [d.status for d in ends] == ["failed", "confirmed"]  # a wrong passphrase claims none
        approval = ledger.approval(ends[-1].approval_id)  # type: ignore[arg-type]
        assert approval is not None and approval.channel == "mcp-elicitation"
    assert json.loads(rgt("poll", instance, "--json").stdout)["state"] == "gone"
    assert PASSPHRASE not in json.dumps(ended)


class DiscardMeterStopHuman:
    """A person answering the MCP discard form of an attached box: `discard ID`, the passphrase,
    and (after stopping the pod in the console, or not) their word `typed_stop`."""

    def __init__(self, instance: str, typed_stop: str, *, stop_box: StandInBox | None = None):
        self.instance = instance
        self.typed_stop = typed_stop
        self.stop_box = stop_box
        self.asked: list[ElicitRequestParams] = []

    async def __call__(self, context: Any, params: ElicitRequestParams) -> ElicitResult:
        self.asked.append(params)
        if self.stop_box is not None:
            self.stop_box.stop()  # terminated in the console: the pod stops answering
        content = {
            "confirm": f"discard {self.instance}",
            "passphrase": PASSPHRASE,
            "meter_stopped": self.typed_stop,
        }
        return ElicitResult(action="accept", content=content)


@pytest.mark.anyio
async def test_mcp_discard_of_an_attached_box_takes_the_humans_meter_stop_in_the_same_form(
    box: StandInBox, tmp_path: Path
) -> None:
    # Was: MCP discard of an attached box always refused ("run `rgt destroy` on a terminal"),
    # and its form had no field for the human's meter stop.
    configure_passphrase()
    instance = attach(box, box_profile(tmp_path, box.disk))
    job = box_job(tmp_path, box.disk)
    data = yaml.safe_load(job.read_text())
    # A job that writes no result file and no checkpoint: nothing to keep.
    data["command"] = 'mkdir -p "$RGT_RESULTS_ROOT/cell-a"'
    job.write_text(yaml.safe_dump(data))
    assert rgt("launch", "--on", instance, "--job", str(job)).returncode == 0
    done = rgt("poll", instance, "--until", "done", "--interval", "1", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    arguments = {"instance_id": instance, "reason": "nothing-to-keep"}

    # The human approves but does not say they stopped the pod: nothing is recorded as ended.
    silent = DiscardMeterStopHuman(instance, "")
    refused = await call_tool("discard", arguments, silent)
    assert refused["discarded"] is False and refused["outcome"] == "refused", refused
    assert "not confirmed" in refused["message"], refused
    assert f'discard(instance_id="{instance}", reason="nothing-to-keep")' in refused["message"]
    assert "rgt " not in refused["message"], refused
    (asked,) = silent.asked
    form = asked.requested_schema["properties"]  # type: ignore[union-attr]
    assert {"confirm", "passphrase", "meter_stopped"} <= set(form)
    assert "terminate: RunPod console" in asked.message and f"stopped {instance}" in asked.message
    assert "What is LOST" in asked.message
    with Ledger.open() as ledger:
        assert [(d.status, d.purpose) for d in ledger.destroys(instance)] == [("failed", "discard")]
    assert json.loads(rgt("poll", instance, "--json").stdout)["state"] == "running"

    # The human terminates the pod in the console, then confirms next to the passphrase.
    human = DiscardMeterStopHuman(instance, f"stopped {instance}", stop_box=box)
    ended = await call_tool("discard", arguments, human)
    assert ended["discarded"] is True, ended
    assert "the human confirmed terminate" in ended["message"]
    with Ledger.open() as ledger:
        ends = ledger.destroys(instance)
        assert [(d.status, d.purpose, d.reason) for d in ends][-1] == (
            "confirmed",
            "discard",
            "nothing-to-keep",
        )
    assert json.loads(rgt("poll", instance, "--json").stdout)["state"] == "gone"
    assert PASSPHRASE not in json.dumps(ended)
    print("discard result bytes:", len(json.dumps(ended, separators=(",", ":"))))
