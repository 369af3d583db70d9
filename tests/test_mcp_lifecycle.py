"""The whole lifecycle through a real MCP client that spawns `rgt mcp` over stdio, against the
emulator (real vastai SDK, real sshd + rsync), in both protocol generations:
launch → poll until running → the job writes checkpoints, results and its manifest on the box →
copy → verify → destroy with an accepting elicitation → poll shows it gone, billing stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rgt.ledger import Ledger
from tests.conftest import assert_no_canary
from tests.mcp_client import (
    REMOTE_ROOT,
    Human,
    assert_alive,
    connect,
    copy_arguments,
    launch_and_finish,
    write_job,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_whole_lifecycle_over_stdio(mode: str, emulator: Any, tmp_path: Path) -> None:
    human = Human("accept")
    local = tmp_path / "pulled"
    server_log = tmp_path / "server.log"
    async with connect(emulator, mode, human, stderr_to=server_log) as session:
        if mode == "legacy":
            assert session.client.protocol_version == "2025-11-25"
        instance_id = await launch_and_finish(session, emulator, write_job(tmp_path, "life"))
        disk = emulator.instance_disk(instance_id)
        assert sorted(p.name for p in (disk / "workspace" / "checkpoints").glob("step-*.ckpt"))
        assert (disk / REMOTE_ROOT.lstrip("/") / "cell-a" / "metrics.json").is_file()

        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append((done, total, message))

        copied = await session.data(
            "copy",
            copy_arguments(instance_id, local),
            progress_callback=on_progress,
        )
        assert copied["files"] >= 1 and (local / "cell-a" / "metrics.json").is_file()
        assert progress and progress[-1][0] == progress[-1][1] == copied["bytes_total"]
        # A manifest of another instance is a failed verification (ok false, its problems),
        # not a tool error; verify runs as `rgt verify --json` in a subprocess (no progress).
        other = await session.data("verify", {"local_dir": str(local), "instance_id": "999"})
        assert other["ok"] is False and "999" in " ".join(other["problems"]), other
        assert other["next"].startswith("do NOT destroy: copy(")
        verified = await session.data(
            "verify", {"local_dir": str(local), "instance_id": instance_id}
        )
        assert verified["next"] == f'destroy(instance_id="{instance_id}")'
        # The outcome and totals, not one row per file (50,000 rows would flood the agent).
        assert verified["ok"] is True and verified["totals"]["files"] == copied["files"]
        assert "files" not in verified and "snapshot" not in verified
        assert verified["record"] == str(local.resolve() / "PULL_VERIFIED.json")

        human.typed = instance_id
        assert_alive(emulator, instance_id)
        destroyed = await session.data("destroy", {"instance_id": instance_id})
        assert destroyed["destroyed"] is True and destroyed["outcome"] == "destroyed"
        assert len(human.asked) == 1 and instance_id in human.asked[0].message

        gone = await session.data("poll", {"instance_id": instance_id})
        # Not a bare "gone": the ledger says how it ended.
        assert gone["classification"] == "destroyed" and gone["state"] == "gone"
        assert gone["keeps_billing"] == [] and gone["hourly_cost"] == 0
        assert (
            "destroyed through rgt after its results were pulled and verified"
            in (gone["next_action"])
        )

    assert server_log.exists()  # the server ran through the redirect
    assert_no_canary(server_log.read_bytes())
    assert int(instance_id) not in emulator.instance_ids()
    assert emulator.request_count("DELETE") == 1
    bill = emulator.meter(instance_id)["total"]
    emulator.clock.advance(3600)
    assert emulator.meter(instance_id)["total"] == bill, "the meter still runs after destroy"
    with Ledger.open() as ledger:
        approvals = ledger.approvals(instance_id)
        assert [a.channel for a in approvals] == ["mcp-elicitation"]
        assert approvals[0].consumed is not None
        assert [d.status for d in ledger.destroys(instance_id)] == ["confirmed"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_launch_refuses_above_the_price_cap(mode: str, emulator: Any, tmp_path: Path) -> None:
    async with connect(emulator, mode) as session:
        offers = (await session.data("search_offers", {"gpu": "RTX_4090"}))["offers"]
        for offer in offers:
            assert offer["verified"] and offer["direct_port_count"] >= 1
            assert offer["reliability"] >= 0.98
        cheapest = offers[0]
        refused = await session.call(
            "launch",
            {
                "profile": "vastai",
                "offer_id": cheapest["offer_id"],
                "job": str(write_job(tmp_path, "capped")),
                "max_price_per_hour": cheapest["price_per_hour"] / 2,
            },
        )
        assert refused.is_error
        assert "above the cap" in refused.content[0].text  # type: ignore[union-attr]
        assert "nothing was rented" in refused.content[0].text  # type: ignore[union-attr]
    assert emulator.instance_ids() == []
    assert emulator.request_count("PUT") == 0
