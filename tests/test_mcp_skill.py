"""The agent skill: Agent Skills frontmatter, and a platforms table equal to the one generated
from the bundled profiles (regenerate with `python -m rgt.skilldoc` after changing a profile)."""

from __future__ import annotations

from pathlib import Path

import yaml

from rgt import skilldoc
from rgt.profile import list_profiles


def _skill_text() -> str:
    return skilldoc.skill_path().read_text(encoding="utf-8")


def test_skill_has_agent_skills_frontmatter() -> None:
    text = _skill_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n", 2)[1])
    assert front["name"] == "remote-gpu-trainer" == skilldoc.skill_path().parent.name
    assert 50 < len(front["description"]) <= 1024
    assert len(text.splitlines()) < 120, "keep SKILL.md concise"


def test_platforms_table_is_the_generated_one() -> None:
    assert skilldoc.current_table(_skill_text()) == skilldoc.platform_table(), (
        "SKILL.md's platforms table is stale: run `python -m rgt.skilldoc`"
    )
    assert skilldoc.main(["--check"]) == 0


def test_every_profile_has_a_row_built_from_its_fields() -> None:
    table = skilldoc.platform_table()
    for profile in list_profiles():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{profile.name}` |"))
        if profile.meter_stop_verb == skilldoc.PER_VARIANT:
            assert "per variant" in row
        elif profile.meter_stop_verb:
            assert f"`{profile.meter_stop_verb}`" in row
        billing = profile.stop_verb and profile.stop_verb != skilldoc.PER_VARIANT
        for item in profile.stop_still_bills if billing else []:
            assert item in row


def test_a_changed_table_is_detected(tmp_path) -> None:
    text = _skill_text()
    stale = text.replace("| `vastai` |", "| `vastai-old` |")
    assert skilldoc.current_table(stale) != skilldoc.platform_table()
    assert skilldoc.replace_table(stale, skilldoc.platform_table()) == text


def test_example_mcp_json_registers_rgt_mcp_without_a_key() -> None:
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "mcp.json"
    servers = json.loads(path.read_text())["mcpServers"]
    # Recommended: the server runs as the keeper through sudo, which holds the key itself.
    assert servers["rgt"]["command"] == "sudo"
    assert servers["rgt"]["args"][:3] == ["-n", "-u", "rgt-keeper"]
    assert servers["rgt"]["args"][-1] == "mcp"
    # No entry hands a real key through the client's (and so the agent's) environment: the
    # same-user entry reads the vastai key file; only the emulator's made-up key is written.
    assert "env" not in servers["rgt"] and "env" not in servers["rgt-same-user"]
    assert "VAST_API_KEY" not in path.read_text().replace('"VAST_API_KEY": "sim-local-key"', "")
    assert servers["rgt-emulator"]["env"]["VAST_URL"].startswith("http://127.0.0.1:")
    for server in servers.values():
        assert server["args"][-1] == "mcp"


def _tools_in_table(text: str, header: str, column: int) -> set[str]:
    """The backquoted names in `column` of the Markdown table under the `header` row."""
    import re

    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names: set[str] = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names |= set(re.findall(r"`([a-z_]+)`", line.split("|")[column + 1]))
    return names


def test_the_skill_and_the_mcp_doc_list_exactly_the_servers_tools() -> None:
    # Was: nothing checked them, so a new tool (sync) could be served but never documented.
    import anyio
    from mcp import Client

    from rgt.mcp_server import build_server

    async def served() -> set[str]:
        async with Client(build_server()) as client:
            return {tool.name for tool in (await client.list_tools()).tools}

    tools = anyio.run(served)
    skill = _tools_in_table(_skill_text(), "| step | MCP tool |", 1)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "mcp.md").read_text(encoding="utf-8")
    assert skill == tools, (skill ^ tools, "SKILL.md's 'Which tool when' table")
    assert _tools_in_table(doc, "| tool | what it does |", 0) == tools, "docs/mcp.md's table"
