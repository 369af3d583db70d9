"""Fail closed (issue 15 item 2): through MCP, destroy refuses until the human has set an approval
passphrase — typing the id back alone is an answer the agent's own client could give — and
`rgt mcp` says so when it starts. Real MCP client spawning `rgt mcp` over stdio, the emulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.mcp_client import (
    Human,
    assert_refused,
    connect,
    copy_arguments,
    launch_and_finish,
    write_job,
)

pytestmark = pytest.mark.timeout(180)


@pytest.mark.anyio
async def test_destroy_refuses_without_a_passphrase_even_when_the_client_answers(
    emulator: Any, tmp_path: Path
) -> None:
    human = Human("accept", passphrase=None)
    async with connect(emulator, "auto", human, passphrase_set=False) as session:
        instance_id = await launch_and_finish(session, emulator, write_job(tmp_path, "closed"))
        human.typed = instance_id
        local = tmp_path / "pulled"
        await session.data("copy", copy_arguments(instance_id, local))
        await session.data("verify", {"local_dir": str(local)})
        refused = await assert_refused(
            session, emulator, instance_id, "no-passphrase", codes=["no-passphrase"]
        )
        assert "rgt approval init" in refused["message"]
        assert human.asked == []  # the client was never even asked


def test_rgt_mcp_warns_at_start_without_a_passphrase(isolated_user: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rgt", "mcp"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "no approval passphrase is set: destroy and discard refuse" in done.stderr
    from tests.mcp_client import configure_passphrase

    configure_passphrase()
    again = subprocess.run(
        [sys.executable, "-m", "rgt", "mcp"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "no approval passphrase" not in again.stderr
