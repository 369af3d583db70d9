"""Choosing a machine as a user would (issue 17 item 4): filters on GPU RAM, the host driver's
CUDA, region, RAM, disk and network speed, ranking by DLPerf per dollar, and a cost estimate
before renting, the same through `rgt search` and the MCP `search_offers` tool, against the
emulator's marketplace (the real vastai SDK)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.mcp_client import connect

pytestmark = pytest.mark.timeout(120)


def _search(*flags: str) -> list[dict[str, Any]]:
    found = subprocess.run(
        [sys.executable, "-m", "rgt", "search", "--json", "--limit", "100", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)


def test_filters_keep_only_offers_that_meet_every_minimum(emulator: Any) -> None:
    everything = _search()
    assert len(everything) > 5
    cuda = sorted({o["cuda_max_good"] for o in everything})[1]  # not the lowest: a real cut
    ram = sorted(o["gpu_ram_gb"] for o in everything)[len(everything) // 2]
    region = everything[0]["region"].rsplit(",", 1)[-1].strip()
    inet = sorted(o["inet_down_mbps"] for o in everything)[len(everything) // 2]
    found = _search(
        "--min-cuda", str(cuda), "--min-gpu-ram", str(ram), "--min-inet-down", str(inet)
    )
    expected = [
        o["offer_id"]
        for o in everything
        if o["cuda_max_good"] >= cuda and o["gpu_ram_gb"] >= ram and o["inet_down_mbps"] >= inet
    ]
    assert found and sorted(o["offer_id"] for o in found) == sorted(expected)
    assert len(found) < len(everything)
    in_region = _search("--region", region)
    assert in_region and all(o["region"].endswith(region) for o in in_region)
    assert len(in_region) == sum(o["region"].endswith(region) for o in everything)
    # No host has that much RAM: nothing, not the nearest thing.
    assert _search("--min-ram", "100000") == []


def test_ranking_by_dlperf_per_dollar_and_an_estimate_before_renting(emulator: Any) -> None:
    by_price = _search()
    prices = [o["price_per_hour"] for o in by_price]
    assert prices == sorted(prices)
    ranked = _search("--order", "dlperf_per_dollar", "--hours", "10", "--results-gb", "50")
    ratios = [o["dlperf_per_dollar"] for o in ranked]
    assert ratios == sorted(ratios, reverse=True) and ratios != [
        o["dlperf_per_dollar"] for o in by_price
    ]
    for offer in ranked:
        rental = round(offer["price_per_hour"] * 10, 4)
        bandwidth = round(offer["inet_up_cost_per_gb"] * 50, 4)
        assert offer["estimate"] == {
            "rental": rental,
            "bandwidth": bandwidth,
            "total": round(rental + bandwidth, 4),
        }
    assert "estimate" not in by_price[0]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--min-cuda", "nan"], "--min-cuda: nan"),
        (["--min-gpu-ram", "-1"], "--min-gpu-ram: -1"),
        (["--hours", "0"], "--hours: 0"),
        (["--results-gb", "-2"], "--results-gb: -2"),
    ],
)
def test_bad_filters_are_one_line_usage_errors(flags: list[str], named: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rgt", "search", *flags], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr


@pytest.mark.anyio
async def test_search_offers_tool_filters_ranks_and_estimates(emulator: Any) -> None:
    cli = _search("--order", "dlperf_per_dollar", "--min-cuda", "12", "--hours", "3")
    async with connect(emulator, "auto") as session:
        found = await session.data(
            "search_offers",
            {"order": "dlperf_per_dollar", "min_cuda": 12, "hours": 3, "limit": 100},
        )
    assert [o["offer_id"] for o in found["offers"]] == [o["offer_id"] for o in cli]
    assert all(o["cuda_max_good"] >= 12 and o["estimate"] for o in found["offers"])
    assert "upload" in found["estimate_basis"]
