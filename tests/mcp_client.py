"""Helpers for the MCP tests: a real MCP client spawning `rgt mcp` over stdio against the
emulator, a scripted "human" answering elicitations, and the checks every refusal repeats."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, ElicitRequestParams, ElicitResult

from tests.conftest import CANARY_API_KEY, assert_no_canary

REPO = Path(__file__).resolve().parents[1]
REMOTE_ROOT = "/workspace/results"
PASSED_ENV = (
    "HOME",
    "XDG_CONFIG_HOME",
    "RGT_STATE_DIR",
    "RGT_CONFIG_DIR",
    "RGT_SSH_KEY",
    "RGT_SSH_COMMAND",
    "VASTAI_NO_UPDATE_CHECK",
)


def child_env(emulator: Any) -> dict[str, str]:
    """What the MCP host passes to `rgt mcp`: the emulator's URL and key, the ssh key, and the
    test's isolated state directories (StdioServerParameters passes little else)."""
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env.update(VAST_URL=emulator.url, VAST_API_KEY=CANARY_API_KEY, PYTHONPATH=str(REPO))
    return env


def server_params(emulator: Any, stderr_to: Path | None = None) -> StdioServerParameters:
    """`python -m rgt mcp` over stdio (the same entry point as the `rgt mcp` console script);
    with `stderr_to`, the server's stderr (its log) is appended to that file via `exec`."""
    command = [sys.executable, "-m", "rgt", "mcp"]
    if stderr_to is not None:
        script = 'exec "$0" "$@" 2>>' + shlex.quote(str(stderr_to))
        return StdioServerParameters(
            command="/bin/sh",
            args=["-c", script, *command],
            env=child_env(emulator),
            cwd=str(REPO),
        )
    return StdioServerParameters(
        command=command[0], args=command[1:], env=child_env(emulator), cwd=str(REPO)
    )


# The approval passphrase the scripted human knows: MCP destroy refuses until one is set.
PASSPHRASE = "correct horse battery mcp"


def configure_passphrase(passphrase: str = PASSPHRASE) -> None:
    """Set the approval passphrase (cheap scrypt cost) as `rgt approval init` would."""
    from rgt import approval

    approval.store_passphrase(passphrase, n=2**10)


class Human:
    """Answers the destroy prompt the way a person in the client UI would (scripted)."""

    def __init__(
        self, action: str = "accept", typed: str | None = None, passphrase: str | None = PASSPHRASE
    ) -> None:
        self.action = action
        self.typed = typed
        self.passphrase = passphrase
        self.asked: list[ElicitRequestParams] = []

    async def __call__(self, context: Any, params: ElicitRequestParams) -> ElicitResult:
        self.asked.append(params)
        if self.action == "accept":
            content = {"instance_id": self.typed or ""}
            if self.passphrase is not None:
                content["passphrase"] = self.passphrase
            return ElicitResult(action="accept", content=content)
        return ElicitResult(action=self.action)  # type: ignore[arg-type]


class Session:
    """A connected client; every result it sees is kept for the canary check."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[str] = []

    async def call(self, name: str, arguments: dict[str, Any], **options: Any) -> CallToolResult:
        result = await self.client.call_tool(name, arguments, **options)
        text = json.dumps(result.structured_content) + " ".join(
            getattr(block, "text", "") for block in result.content
        )
        self.seen.append(text)
        assert_no_canary(text)
        return result

    async def data(self, name: str, arguments: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Call and return the structured result; fail with the tool's text on an error."""
        result = await self.call(name, arguments, **options)
        assert not result.is_error, f"{name}: {result.content[0].text}"  # type: ignore[union-attr]
        assert result.structured_content is not None
        return result.structured_content


@asynccontextmanager
async def connect(
    emulator: Any,
    mode: str,
    human: Human | None = None,
    stderr_to: Path | None = None,
    *,
    passphrase_set: bool = True,
) -> AsyncIterator[Session]:
    """A real MCP client spawning `rgt mcp` (stdio) in protocol generation `mode`; the human's
    approval passphrase is set first unless `passphrase_set` is False (or one already is)."""
    from rgt import approval

    if passphrase_set and not approval.is_configured():
        configure_passphrase()
    async with Client(
        server_params(emulator, stderr_to),
        mode=mode,
        elicitation_callback=human,
        read_timeout_seconds=60,
    ) as client:
        yield Session(client)


def write_job(directory: Path, run_id: str) -> Path:
    """The bundled example job (checkpoints + results + manifest in ~2 s) under a new run id."""
    text = (REPO / "schemas" / "job.example.yaml").read_text()
    path = directory / f"{run_id}.yaml"
    path.write_text(text.replace("run_id: example-run", f"run_id: {run_id}"))
    return path


async def launch_and_finish(session: Session, emulator: Any, job: Path) -> str:
    """search → launch → poll until running → wait for the job's manifest on the box."""
    offers = (await session.data("search_offers", {"gpu": "RTX_4090", "disk_gb": 40}))["offers"]
    assert offers, "the emulator offers no RTX 4090"
    offer = offers[0]
    launched = await session.data(
        "launch",
        {
            "profile": "vastai",
            "offer_id": offer["offer_id"],
            "job": str(job),
            "max_price_per_hour": offer["price_per_hour"] + 0.01,
        },
    )
    instance_id = str(launched["instance_id"])
    deadline = time.monotonic() + 30
    # The manifest is watched on the emulated disk (no request): each poll is a provider call
    # and an ssh login (~0.3 s of CPU), and the job takes seconds.
    manifest = emulator.instance_disk(instance_id) / REMOTE_ROOT.lstrip("/") / "PULL_MANIFEST.json"
    while not manifest.exists():
        assert time.monotonic() < deadline, "job did not write its manifest"
        await anyio.sleep(0.1)
    seen: list[str] = []
    while True:
        report = await session.data("poll", {"instance_id": instance_id})
        seen.append(report["classification"])
        if report["classification"] == "running":
            return instance_id
        assert time.monotonic() < deadline, f"job did not finish: polls saw {seen}"
        await anyio.sleep(0.2)


def assert_alive(emulator: Any, instance_id: str) -> None:
    """The instance and its disk (with the results and manifest) still exist; no DELETE sent."""
    assert int(instance_id) in emulator.instance_ids()
    disk = emulator.instance_disk(instance_id)
    assert (disk / REMOTE_ROOT.lstrip("/") / "PULL_MANIFEST.json").is_file()
    assert emulator.request_count("DELETE") == 0


def copy_arguments(instance_id: str, local: Path) -> dict[str, str]:
    """The copy tool's arguments: the job's results root on the box into `local`."""
    return {"instance_id": instance_id, "remote_root": REMOTE_ROOT, "local_dir": str(local)}


async def assert_refused(
    session: Session, emulator: Any, instance_id: str, outcome: str, codes: Sequence[str] = ()
) -> dict[str, Any]:
    """Call destroy and check it refused with `outcome` (naming each of `codes` as missing),
    said nothing was destroyed, and left the instance and its disk alive."""
    result = await session.data("destroy", {"instance_id": instance_id})
    assert result["destroyed"] is False
    assert result["outcome"] == outcome, result
    assert "nothing" in result["message"] and "destroyed" in result["message"]
    found = [item["code"] for item in result["missing"]]
    for code in codes:
        assert code in found, (code, result)
    assert_alive(emulator, instance_id)
    return result
