"""`start` (issue 12 item 3): after `stop`, the CLI and an MCP-only agent can start the box again
and carry on (copy → verify → destroy); boxes that starting cannot help are told what can.
Real MCP client spawning `rgt mcp` over stdio, the vast.ai emulator, the box's real sshd."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.mcp_client import connect, copy_arguments, launch_and_finish, write_job

pytestmark = pytest.mark.timeout(180)


def _rgt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rgt", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.anyio
async def test_mcp_stop_then_start_then_copy(emulator: Any, tmp_path: Path) -> None:
    async with connect(emulator, "auto") as session:
        instance_id = await launch_and_finish(session, emulator, write_job(tmp_path, "restart"))
        stopped = await session.data("stop", {"instance_id": instance_id})
        # The stop result names the next step the caller can take, and what it costs.
        assert f'start(instance_id="{instance_id}")' in stopped["message"]
        deadline = time.monotonic() + 30
        while (await session.data("poll", {"instance_id": instance_id}))["state"] != "stopped":
            assert time.monotonic() < deadline
        polled = await session.data("poll", {"instance_id": instance_id})
        assert f'start(instance_id="{instance_id}")' in polled["next_action"]
        # copy cannot reach a stopped box, and says how to start it.
        refused = await session.call("copy", copy_arguments(instance_id, tmp_path / "a"))
        said = refused.content[0].text  # type: ignore[union-attr]
        # In tool terms: the agent is told the tool call, never a command it cannot run.
        assert refused.is_error and f'Start it (`start(instance_id="{instance_id}")`' in said
        assert "`rgt " not in said
        started = await session.data("start", {"instance_id": instance_id, "wait_seconds": 60})
        assert started["state"] == "running" and started["started"] is True
        assert "bills compute again" in started["message"]
        copied = await session.data("copy", copy_arguments(instance_id, tmp_path / "b"))
        assert copied["files"] > 0


@pytest.mark.anyio
async def test_mcp_remedies_for_an_offline_box_are_tool_calls(
    emulator: Any, tmp_path: Path
) -> None:
    """An offline host: start, copy and destroy each say to wait with the poll TOOL (not `rgt
    poll`), through the real MCP client; nothing is started or destroyed."""
    async with connect(emulator, "auto") as session:
        instance_id = await launch_and_finish(session, emulator, write_job(tmp_path, "offline"))
        emulator.take_host_offline(instance_id)
        deadline = time.monotonic() + 30
        while (await session.data("poll", {"instance_id": instance_id}))["state"] != "offline":
            assert time.monotonic() < deadline
        poll_call = f'`poll(instance_id="{instance_id}")`'
        start = await session.call("start", {"instance_id": instance_id})
        copy = await session.call("copy", copy_arguments(instance_id, tmp_path / "a"))
        for refused in (start, copy):
            said = refused.content[0].text  # type: ignore[union-attr]
            assert refused.is_error and "wait for it to come back" in said
            assert poll_call in said and "`rgt " not in said and "{poll}" not in said
        destroyed = await session.data("destroy", {"instance_id": instance_id})
        assert destroyed["destroyed"] is False
        unreachable = [m for m in destroyed["missing"] if m["code"] == "box-unreachable"]
        assert unreachable and poll_call in unreachable[0]["message"]
        assert "`rgt " not in unreachable[0]["message"]
        emulator.bring_host_online(instance_id)
        assert int(instance_id) in emulator.instance_ids()
        assert emulator.request_count("DELETE") == 0


def test_cli_start_refuses_what_starting_cannot_help(emulator: Any) -> None:
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider, run_label

    provider = VastProvider()
    offer = provider.search_offers(OfferQuery(limit=1))[0]
    box = provider.create(
        offer.id, image="i", disk_gb=10, onstart="sleep 600", label=run_label("s")
    )
    deadline = time.monotonic() + 30
    while provider.show(box.id).state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    again = _rgt("start", box.id)
    assert again.returncode == 0 and "(it already was)" in again.stdout, again.stderr
    emulator.take_host_offline(box.id)
    while provider.show(box.id).state != "offline" and time.monotonic() < deadline + 30:
        time.sleep(0.1)
    offline = _rgt("start", box.id)
    assert offline.returncode == 2, offline.stderr
    assert "offline: Its host stopped answering" in offline.stderr
    assert f"(`rgt poll {box.id}`)" in offline.stderr  # the CLI's terms
    assert offline.stderr.count("\n") == 1
    emulator.bring_host_online(box.id)
    provider.stop(box.id)
    while provider.show(box.id).state != "stopped" and time.monotonic() < deadline + 60:
        time.sleep(0.1)
    started = _rgt("start", box.id, "--wait", "60", "--json")
    assert started.returncode == 0, started.stderr
    assert '"state": "running"' in started.stdout
