"""MCP server: spawn → first tools/list, and the poll round trip against the emulator.

1. Start-up. A real MCP client spawns `python -m rgt mcp` over stdio and times from the spawn to
   the answer of the first tools/list, both protocol generations (auto = 2026-07-28, legacy =
   2025-11-25). Baseline in the same run: a minimal MCPServer with one tool (the SDK's floor).
   Target: under 1.5 s.
2. Poll. One instance launched on the in-process emulator; the client calls `poll` repeatedly.
   Baseline: the provider's own `show` in-process (the API floor under the tool). Target: p50
   under 30 ms.
3. Poll while the API fails (every call answers 503): seconds until the error answer, bounded by
   the tool's prompt retry policy. Target: under 10 s (tests/test_mcp_poll.py asserted this
   until issue #18 item 12; the test now checks the retry count, the seconds are here).
4. Verify. 50,000 small files (10 folders x 5,000, bench_hashing's dataset b) with a manifest:
   the MCP `verify` tool (stdio round trip; it runs `rgt verify --json` in a subprocess) against
   `rgt verify --json` from a shell, interleaved. Target: MCP median within 1.2x of the CLI's.

    .venv/bin/python bench/bench_mcp.py [--spawns N] [--polls N] [--verifies N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from benchlib import REPO, compile_rgt, emit, machine_line, median, percentile, table

sys.path.insert(0, str(REPO))

from mcp import Client, StdioServerParameters

SPAWN_TARGET_SECONDS = 1.5
POLL_TARGET_MS = 30.0
FAILING_POLL_TARGET_SECONDS = 10.0
VERIFY_TARGET_RATIO = 1.2
MINIMAL_SERVER = """
from mcp.server.mcpserver import MCPServer
server = MCPServer("floor")

@server.tool()
def ping() -> str:
    return "pong"

server.run()
"""


async def spawn_to_list(params: StdioServerParameters, mode: str) -> float:
    """Seconds from spawning the server to the answer of its first tools/list."""
    began = time.perf_counter()
    async with Client(params, mode=mode) as client:
        await client.list_tools()
        elapsed = time.perf_counter() - began
    return elapsed


async def measure_spawns(runs: int, env: dict[str, str]) -> list[list[Any]]:
    floor_file = Path(tempfile.mkdtemp(prefix="rgt-bench-mcp-")) / "floor.py"
    floor_file.write_text(MINIMAL_SERVER)
    servers = {
        "rgt mcp": StdioServerParameters(
            command=sys.executable, args=["-m", "rgt", "mcp"], env=env, cwd=str(REPO)
        ),
        "minimal MCPServer (baseline)": StdioServerParameters(
            command=sys.executable, args=[str(floor_file)], env=env, cwd=str(REPO)
        ),
    }
    rows = []
    for name, params in servers.items():
        for mode in ("auto", "legacy"):
            await spawn_to_list(params, mode)  # warm the bytecode and page caches
            seconds = [await spawn_to_list(params, mode) for _ in range(runs)]
            rows.append([name, mode, f"{median(seconds):.3f}", f"{max(seconds):.3f}"])
    return rows


def launch_instance(env: dict[str, str]) -> str:
    """Rent one instance on the emulator in-process (the lifecycle code the tools use)."""
    os.environ.update(env)
    from rgt import lifecycle
    from rgt.job import load_job
    from rgt.ledger import Ledger
    from rgt.profile import load_profile
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider

    provider = VastProvider()
    job = load_job(None)
    offer = lifecycle.search(provider, OfferQuery(gpu_name=job.gpu_name, disk_gb=job.disk_gb))[0]
    with Ledger.open() as ledger:
        launched = lifecycle.launch(
            provider=provider,
            ledger=ledger,
            profile=load_profile("vastai"),
            job=job,
            offer_id=offer["offer_id"],
            max_price_per_hour=offer["price_per_hour"] + 0.01,
        )
    return launched.instance_id


def provider_show_ms(instance_id: str, runs: int) -> list[float]:
    from rgt.providers.vastai import VastProvider

    provider = VastProvider()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        provider.show(instance_id)
        times.append((time.perf_counter() - began) * 1000)
    return times


async def poll_ms(
    params: StdioServerParameters, mode: str, instance_id: str, runs: int
) -> list[float]:
    times = []
    async with Client(params, mode=mode) as client:
        for _ in range(5):  # warm: imports, provider, ledger
            await client.call_tool("poll", {"instance_id": instance_id})
        for _ in range(runs):
            began = time.perf_counter()
            result = await client.call_tool("poll", {"instance_id": instance_id})
            times.append((time.perf_counter() - began) * 1000)
            assert not result.is_error, result.content
    return times


async def failing_poll_seconds(
    params: StdioServerParameters, instance_id: str, sim: Any, runs: int
) -> list[float]:
    """Seconds of `runs` poll calls while every API call answers 503 (each an error answer)."""
    times = []
    async with Client(params, mode="auto") as client:
        await client.call_tool("poll", {"instance_id": instance_id})  # warm
        for _ in range(runs):
            sim.fail_next(100, status=503)
            began = time.perf_counter()
            result = await client.call_tool("poll", {"instance_id": instance_id})
            times.append(time.perf_counter() - began)
            assert result.is_error, result.content
        sim.fail_next(0)
    return times


async def verify_seconds(
    params: StdioServerParameters, env: dict[str, str], root: Path, runs: int
) -> tuple[list[float], list[float]]:
    """(MCP verify seconds, `rgt verify --json` seconds), interleaved, on 50,000 files."""
    import subprocess

    from bench_hashing import make_small

    results = root / "results"
    make_small(results, 10, 5000)
    shutil.move(str(results / "roster.txt"), root / "roster.txt")
    manifest = ["--run-id", "bench", "--roster", str(root / "roster.txt"), "--instance-id", "1"]
    cli = [sys.executable, "-m", "rgt"]
    subprocess.run([*cli, "manifest", str(results), *manifest], env=env, check=True)
    mcp_times, cli_times = [], []
    async with Client(params, mode="auto") as client:
        await client.call_tool("list_profiles", {})  # warm: the server is up
        for _ in range(runs):
            began = time.perf_counter()
            result = await client.call_tool("verify", {"local_dir": str(results)})
            mcp_times.append(time.perf_counter() - began)
            assert not result.is_error and result.structured_content["ok"], result.content
            began = time.perf_counter()
            subprocess.run(
                [*cli, "verify", "--json", str(results)], env=env, check=True, capture_output=True
            )
            cli_times.append(time.perf_counter() - began)
    return mcp_times, cli_times


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from rgt.sim import Emulator

    compile_rgt()  # the spawned server starts from bytecode, as an installed rgt does
    state = Path(tempfile.mkdtemp(prefix="rgt-bench-mcp-state-"))
    base_env = {
        "HOME": str(state / "home"),
        "RGT_STATE_DIR": str(state / "rgt"),
        "RGT_CONFIG_DIR": str(state / "config"),
        "VASTAI_NO_UPDATE_CHECK": "1",
        "PATH": os.environ.get("PATH", ""),
    }
    spawn_rows = await measure_spawns(args.spawns, base_env)

    with Emulator(state_dir=state / "sim") as sim:
        env = {**base_env, "VAST_URL": sim.url, "VAST_API_KEY": sim.api_key}
        if sim.client_key_path is not None:
            env["RGT_SSH_KEY"] = str(sim.client_key_path)
        instance_id = launch_instance(env)
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "rgt", "mcp"], env=env, cwd=str(REPO)
        )
        poll_rows = []
        figures: dict[str, Any] = {}
        show = provider_show_ms(instance_id, args.polls)
        poll_rows.append(
            [
                "provider.show in-process (baseline)",
                "-",
                f"{median(show):.2f}",
                f"{percentile(show, 0.95):.2f}",
            ]
        )
        for mode in ("auto", "legacy"):
            times = await poll_ms(params, mode, instance_id, args.polls)
            figures[mode] = {"p50_ms": median(times), "p95_ms": percentile(times, 0.95)}
            poll_rows.append(
                [
                    "rgt mcp poll (stdio round trip)",
                    mode,
                    f"{median(times):.2f}",
                    f"{percentile(times, 0.95):.2f}",
                ]
            )
        failing = await failing_poll_seconds(params, instance_id, sim, 5)
        data = Path(tempfile.mkdtemp(prefix="rgt-bench-mcp-verify-", dir=_data_parent()))
        try:
            mcp_verify, cli_verify = await verify_seconds(params, env, data, args.verifies)
        finally:
            shutil.rmtree(data, ignore_errors=True)
    ratio = median(mcp_verify) / median(cli_verify)
    verify_rows = [
        ["rgt verify --json (shell)", f"{median(cli_verify):.3f}", f"{max(cli_verify):.3f}"],
        ["rgt mcp verify (stdio)", f"{median(mcp_verify):.3f}", f"{max(mcp_verify):.3f}"],
    ]

    print(machine_line())
    print(
        f"\nspawn → first tools/list ({args.spawns} runs each; target < {SPAWN_TARGET_SECONDS} s)"
    )
    print(table(["server", "mode", "median s", "max s"], spawn_rows))
    print(f"\npoll round trip ({args.polls} calls; target p50 < {POLL_TARGET_MS:.0f} ms)")
    print(table(["what", "mode", "p50 ms", "p95 ms"], poll_rows))
    print(
        f"\npoll while every API call answers 503 (5 calls; target < "
        f"{FAILING_POLL_TARGET_SECONDS:.0f} s): median {median(failing):.2f} s, "
        f"max {max(failing):.2f} s"
    )
    print(
        f"\nverify of 50,000 files ({args.verifies} runs each, interleaved; target MCP within "
        f"{VERIFY_TARGET_RATIO}x): MCP/CLI median ratio {ratio:.2f}"
    )
    print(table(["what", "median s", "max s"], verify_rows))
    rgt_spawn = [float(r[2]) for r in spawn_rows if r[0] == "rgt mcp"]
    verdict = {
        "spawn_ok": max(rgt_spawn) < SPAWN_TARGET_SECONDS,
        "poll_ok": all(f["p50_ms"] < POLL_TARGET_MS for f in figures.values()),
        "failing_poll_ok": max(failing) < FAILING_POLL_TARGET_SECONDS,
        "verify_ok": ratio <= VERIFY_TARGET_RATIO,
    }
    print(f"\ntargets met: {verdict}")
    return {
        "spawn": spawn_rows,
        "poll": poll_rows,
        "poll_figures": figures,
        "failing_poll_s": failing,
        "verify": verify_rows,
        "verify_ratio": round(ratio, 3),
        "targets": verdict,
    }


def _data_parent() -> str | None:
    """/dev/shm when it is a writable tmpfs (warm page cache, quick to fill), else the default."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=5)
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--verifies", type=int, default=5)
    args = parser.parse_args()
    result = anyio.run(main_async, args)
    emit("mcp", result)
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
