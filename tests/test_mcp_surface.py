"""The MCP server's tool surface, through a real MCP client (in-process transport), both protocol
generations: names, strict inputs (no approval/override/key can be an argument), annotations,
instructions, and the profile tools. The lifecycle over stdio against the emulator is in
tests/test_mcp_lifecycle.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from mcp import Client
from mcp.types import ElicitResult

from rgt.lifecycle import danger_clocks
from rgt.mcp_server import build_server
from rgt.profile import load_profile
from tests.conftest import assert_no_canary

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])
TOOLS = {
    "list_profiles",
    "get_profile",
    "search_offers",
    "launch",
    "run",
    "poll",
    "copy",
    "sync",
    "verify",
    "destroy",
    "discard",
    "stop",
    "start",
    "cost",
    "sweep",
    "logs",
}
# No argument of any tool may look like it could carry an approval, override or secret.
FORBIDDEN_ARGUMENT = re.compile(
    r"approv|overrid|force|confirm|passphrase|secret|token|key|auth|yes|skip|allow", re.I
)


def _never_asked() -> tuple[Any, list[Any]]:
    asked: list[Any] = []

    async def callback(context: Any, params: Any) -> ElicitResult:
        asked.append(params)
        return ElicitResult(action="accept", content={"instance_id": "1"})

    return callback, asked


@MODES
async def test_tools_are_strict_and_carry_no_approval_argument(mode: str) -> None:
    async with Client(build_server(), mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            schema = tool.input_schema
            assert schema.get("additionalProperties") is False, tool.name
            for name in schema.get("properties", {}):
                assert not FORBIDDEN_ARGUMENT.search(name), f"{tool.name}.{name}"
        destroy = tools["destroy"]
        assert list(destroy.input_schema["properties"]) == ["instance_id"]
        assert destroy.annotations is not None and destroy.annotations.destructive_hint is True
        assert destroy.annotations.read_only_hint is False
        discard = tools["discard"]
        # The reason is a closed set; the approval comes only from the human's prompt.
        assert list(discard.input_schema["properties"]) == ["instance_id", "reason"]
        assert set(discard.input_schema["properties"]["reason"]["enum"]) == {
            "failed-job",
            "host-lost",
            "superseded",
            "nothing-to-keep",
        }
        assert discard.input_schema["required"] == ["instance_id", "reason"]
        assert discard.annotations is not None and discard.annotations.destructive_hint is True
        for name in (
            "poll",
            "get_profile",
            "list_profiles",
            "search_offers",
            "sweep",
            "cost",
            "logs",
        ):
            assert tools[name].annotations.read_only_hint is True, name
        for name in ("stop", "start", "copy", "sync", "verify", "launch", "run"):
            assert tools[name].annotations.destructive_hint is False, name


@MODES
async def test_instructions_state_lifecycle_and_iron_law(mode: str) -> None:
    async with Client(build_server(), mode=mode) as client:
        text = client.instructions or ""
    assert "Iron Law" in text
    for step in ("search_offers", "launch", "poll", "copy", "verify", "destroy"):
        assert step in text
    assert len(text.splitlines()) <= 12


@MODES
async def test_smuggled_approval_is_rejected_before_anything_runs(mode: str) -> None:
    callback, asked = _never_asked()
    async with Client(build_server(), mode=mode, elicitation_callback=callback) as client:
        for extra in (
            {"approval": "granted"},
            {"confirmation": {"instance_id": "123"}},
            {"override": True},
            {"api_key": "x"},
        ):
            result = await client.call_tool("destroy", {"instance_id": "123", **extra})
            assert result.is_error
            assert "Extra inputs are not permitted" in result.content[0].text
        result = await client.call_tool("get_profile", {"name": "vastai", "api_key": "k"})
        assert result.is_error
    assert asked == []


@MODES
async def test_get_profile_puts_the_danger_clocks_first(mode: str) -> None:
    profile = load_profile("vastai")
    async with Client(build_server(), mode=mode) as client:
        result = await client.call_tool("get_profile", {"name": "vastai"})
        listed = await client.call_tool("list_profiles", {})
        unknown = await client.call_tool("get_profile", {"name": "nosuch"})
    data = result.structured_content
    assert data is not None and next(iter(data)) == "danger_clocks"
    assert data["danger_clocks"] == danger_clocks(profile)
    assert data["meter_stop_verb"] == profile.meter_stop_verb
    assert data["stop_still_bills"] == profile.stop_still_bills
    names = [p["name"] for p in listed.structured_content["profiles"]]
    assert "vastai" in names
    assert unknown.is_error and "unknown profile 'nosuch'" in unknown.content[0].text
    assert_no_canary(str(data), str(listed.structured_content), unknown.content[0].text)


async def test_missing_api_key_is_a_clear_tool_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAST_API_KEY")
    async with Client(build_server()) as client:
        result = await client.call_tool("search_offers", {"gpu": "RTX_4090"})
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert "no vast.ai API key: set VAST_API_KEY" in text


async def test_a_bad_local_path_is_a_one_line_tool_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    async with Client(build_server()) as client:
        result = await client.call_tool("verify", {"local_dir": str(blocker / "sub")})
        job = await client.call_tool(
            "launch",
            {
                "profile": "vastai",
                "offer_id": "1",
                "job": str(tmp_path / "missing.yaml"),
                "max_price_per_hour": 1.0,
            },
        )
    for bad in (result, job):
        assert bad.is_error
        text = bad.content[0].text  # type: ignore[union-attr]
        assert "\n" not in text.strip() and text != "Error executing tool"
    assert "missing.yaml" in job.content[0].text  # type: ignore[union-attr]
