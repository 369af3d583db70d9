"""MCP `sync` (durable checkpoints without the supervisor) through the real MCP client spawning
`rgt mcp` over stdio against the emulator: the real rendered boot hook's watcher writes a
sha256 sidecar per completed checkpoint, rgt copies each over rsync and verifies it against
that hash (tests/test_durable.py's job and helpers). The result is typed (the tool's output
schema), small, with progress notifications and the next step in tool terms."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from rgt import durable
from rgt.mcp_server.results import SYNC_LISTED
from tests.mcp_client import connect, write_job
from tests.test_durable import (
    TEMP_NAME,
    _assert_alive,
    _box_checkpoints,
    _finish,
    _job_file,
    _launch,
    _rgt,
    _sidecars,
    _wait_for,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
# Bytes of one round's result (measured, rounded up): a base (run, target, the newest durable
# checkpoint, next) and each checkpoint verified in the round; how many the first round finds
# depends on the machine's speed.
SYNC_BASE_BUDGET = 900
SYNC_PER_CHECKPOINT = 140


async def test_mcp_sync_makes_checkpoints_durable_while_the_job_runs(
    emulator: Any, tmp_path: Path
) -> None:
    run_id = "mcp-durable"
    instance_id = _launch(_job_file(tmp_path, run_id, "local"))
    _wait_for(lambda: len(_sidecars(emulator, instance_id, run_id)) >= 3, "3 sidecars on the box")
    notes: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, total, message))

    async with connect(emulator, "auto") as session:
        tools = {tool.name: tool for tool in (await session.client.list_tools()).tools}
        schema = tools["sync"].output_schema
        assert schema is not None and schema.get("properties")
        first = await session.data(
            "sync", {"instance_id": instance_id}, progress_callback=on_progress
        )
        jsonschema.validate(first, schema)
        size = len(json.dumps(first, separators=(",", ":")))
        assert first["target"] == "local" and first["run_id"] == run_id
        assert first["verified_count"] >= 3 and not first["refused"]
        assert len(first["verified"]) == min(first["verified_count"], SYNC_LISTED)
        local = durable.files_dir(run_id)
        for entry in first["verified"]:
            copied = (local / entry["name"]).read_bytes()
            assert hashlib.sha256(copied).hexdigest() == entry["sha256"]
            assert len(copied) == entry["size"]
        newest = first["newest"]
        assert newest["name"] == max(e["name"] for e in first["verified"])
        assert newest["location"] == str(local / newest["name"])
        assert first["next"] == (
            f'poll(instance_id="{instance_id}") to follow the job; '
            f'sync(instance_id="{instance_id}") again for its next checkpoints'
        )
        # Progress: bytes copied, in order, the last one the round's whole.
        assert notes and notes[-1][0] == notes[-1][1] == first["bytes_transferred"], notes
        assert [n for n, _, _ in notes] == sorted(n for n, _, _ in notes)
        assert all(str(m).startswith(f"sync {instance_id}: ") for _, _, m in notes)

        _finish(emulator, instance_id, run_id)
        await session.data("sync", {"instance_id": instance_id})
        again = await session.data("sync", {"instance_id": instance_id})
        assert again["verified"] == [] and again["bytes_transferred"] == 0
        base = len(json.dumps(again, separators=(",", ":")))
        on_box = _box_checkpoints(emulator, instance_id)
        assert again["already"] == len(on_box)
        index = {entry.name: entry.sha256 for entry in durable.durable_index(run_id)}
        assert index == on_box and TEMP_NAME not in index
        # The CLI's --json says the same (one report: rgt.durable.SyncReport).
        cli = json.loads(_rgt("sync", instance_id, "--json").stdout)
        assert cli["newest"] == again["newest"] | {"target": "local", "run_id": run_id}

        # A job without a `durable:` target: one line naming the field, nothing synced.
        plain = _launch(write_job(tmp_path, "not-durable"))
        refused = await session.call("sync", {"instance_id": plain})
        assert refused.is_error
        text = refused.content[0].text  # type: ignore[union-attr]
        assert "rgt does not know its durable target" in text and "\n" not in text.strip()
        bad = await session.call("sync", {"instance_id": f"0{instance_id}"})
        assert bad.is_error and "invalid argument: instance_id" in bad.content[0].text  # type: ignore[union-attr]
    count = len(first["verified"])  # listed (at most SYNC_LISTED): what the size grows with
    print(f"sync result: {size} bytes with {count} checkpoints verified, {base} with none")
    assert base <= SYNC_BASE_BUDGET, again
    assert size <= SYNC_BASE_BUDGET + SYNC_PER_CHECKPOINT * count, first
    _assert_alive(emulator, instance_id)
