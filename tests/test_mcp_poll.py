"""poll through a real MCP client spawning `rgt mcp` over stdio, on emulated faults: each state
classified with the profile's gotcha (offline VAST7, stopped-but-billing VAST1, stuck scheduling
VAST3, preempted VAST4), stop/cost/sweep, and a prompt answer while the API fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rgt.ledger import Ledger
from rgt.mcp_server.server import PROMPT_ATTEMPTS
from tests.mcp_client import assert_alive, connect, launch_and_finish, write_job

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


async def test_poll_classifies_emulated_faults(emulator: Any, tmp_path: Path) -> None:
    from rgt.providers.vastai import VastProvider

    async with connect(emulator, "auto") as session:
        instance_id = await launch_and_finish(session, emulator, write_job(tmp_path, "faults"))
        shown = await session.data("logs", {"instance_id": instance_id, "tail": 50})
        assert any("rgt onstart" in line for line in shown["lines"]), shown
        assert len(shown["lines"]) <= 50
        first = await session.data("poll", {"instance_id": instance_id})
        assert first["classification"] == "running" and first["keeps_billing"][0] == "compute"

        emulator.take_host_offline(instance_id)
        offline = await session.data("poll", {"instance_id": instance_id})
        assert (offline["classification"], offline["gotcha"]) == ("offline", "VAST7")
        emulator.bring_host_online(instance_id)

        stopped = await session.data("stop", {"instance_id": instance_id})
        assert stopped["keeps_billing"] == ["disk", "bandwidth"]
        assert "still bills" in stopped["message"]
        report = await session.data("poll", {"instance_id": instance_id})
        assert (report["classification"], report["gotcha"]) == ("stopped-but-billing", "VAST1")
        assert report["keeps_billing"] == ["disk", "bandwidth"]
        assert report["hourly_cost"] > 0 and report["cost_so_far"] > 0
        swept = await session.data("sweep", {})
        assert "stopped-but-billing" in swept["instances"][0]["flags"]

        # Someone else rents the stopped instance's GPU; starting it then waits (VAST3).
        with Ledger.open() as ledger:
            records = ledger.instances()
        offer_id = next(r.offer_id for r in records if r.instance_id == instance_id)
        other = await session.data(
            "launch",
            {
                "profile": "vastai",
                "offer_id": offer_id,
                "job": str(write_job(tmp_path, "other")),
                "max_price_per_hour": 10.0,
            },
        )
        VastProvider().start(instance_id)
        waiting = await session.data("poll", {"instance_id": instance_id})
        assert (waiting["classification"], waiting["gotcha"]) == ("stuck-scheduling", "VAST3")

        # An interruptible rental outbid: preempted (VAST4).
        offers = (await session.data("search_offers", {"gpu": "RTX_4090", "interruptible": True}))[
            "offers"
        ]
        bid = await session.data(
            "launch",
            {
                "profile": "vastai",
                "offer_id": offers[0]["offer_id"],
                "job": str(write_job(tmp_path, "bid")),
                "max_price_per_hour": offers[0]["price_per_hour"] * 2,
                "interruptible": True,
                "bid": offers[0]["price_per_hour"] * 1.5,
            },
        )
        emulator.preempt(bid["instance_id"])
        preempted = await session.data("poll", {"instance_id": bid["instance_id"]})
        assert (preempted["classification"], preempted["gotcha"]) == ("preempted", "VAST4")

        costs = await session.data("cost", {})
        assert {row["instance_id"] for row in costs["instances"]} == {
            instance_id,
            other["instance_id"],
            bid["instance_id"],
        }
        assert costs["total_so_far"] > 0

        # The API failing: poll still answers promptly, saying what failed. Asserted as the
        # bound on its retries (at most PROMPT_ATTEMPTS requests, then the answer; fewer when
        # its time budget runs out first), not as seconds: those are bench/bench_mcp.py's.
        emulator.fail_next(100, status=503)
        before = emulator.request_count()
        failing = await session.call("poll", {"instance_id": instance_id})
        assert failing.is_error and "503" in failing.content[0].text  # type: ignore[union-attr]
        assert 1 <= emulator.request_count() - before <= PROMPT_ATTEMPTS
    assert_alive(emulator, instance_id)
