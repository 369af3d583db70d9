"""With an approval passphrase configured (`rgt approval init`), the MCP destroy prompt asks for
the instance id AND the passphrase: a client that answers prompts by itself cannot approve alone.
Real MCP client spawning `rgt mcp` over stdio against the emulator, both protocol generations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rgt.ledger import Ledger
from tests.mcp_client import (
    Human,
    assert_refused,
    connect,
    copy_arguments,
    launch_and_finish,
    write_job,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_passphrase_is_asked_when_configured(
    mode: str, emulator: Any, tmp_path: Path
) -> None:
    from rgt import approval

    approval.store_passphrase("correct horse battery", n=2**10)
    local = tmp_path / "pulled"
    human = Human("accept", passphrase="wrong horse")
    async with connect(emulator, mode, human) as session:
        instance_id = await launch_and_finish(session, emulator, write_job(tmp_path, "phrase"))
        human.typed = instance_id
        copy_args = copy_arguments(instance_id, local)
        await session.data("copy", copy_args)
        await session.data("verify", {"local_dir": str(local)})

        wrong = await assert_refused(session, emulator, instance_id, "refused")
        assert "wrong approval passphrase" in wrong["message"]
        schema = human.asked[0].requested_schema
        assert set(schema["properties"]) == {"instance_id", "passphrase"}

        human.passphrase = "correct horse battery"
        done = await session.data("destroy", {"instance_id": instance_id})
        assert done["destroyed"] is True
    assert emulator.request_count("DELETE") == 1
    with Ledger.open() as ledger:
        assert [f["reason"] for f in ledger.approval_failures()] == ["wrong passphrase"]
        assert [a.channel for a in ledger.approvals(instance_id)] == ["mcp-elicitation"]
