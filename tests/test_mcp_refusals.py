"""Every way the MCP destroy must refuse, through a real MCP client spawning `rgt mcp` over stdio
against the emulator, in both protocol generations. After each refusal the instance and its disk
(with the results and the manifest) still exist and no DELETE reached the emulator.

One instance walks the whole corpus in order (before copy, before verify, declined, cancelled,
wrong id, no elicitation, smuggled approval, local file changed, a pull of another directory
than the job's results root), then two clients race to destroy it: at most one DELETE reaches
the emulator."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from rgt.ledger import Ledger
from tests.mcp_client import (
    REMOTE_ROOT,
    Human,
    assert_alive,
    assert_refused,
    connect,
    copy_arguments,
    launch_and_finish,
    write_job,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_refusal_corpus_then_a_race(mode: str, emulator: Any, tmp_path: Path) -> None:
    local = tmp_path / "pulled"
    human = Human("accept")
    async with connect(emulator, mode, human) as session:
        instance_id = await launch_and_finish(session, emulator, write_job(tmp_path, "refuse"))
        human.typed = instance_id
        copy_args = copy_arguments(instance_id, local)

        # Missing evidence: refused without asking the human anything.
        await assert_refused(session, emulator, instance_id, "missing-evidence", ["no-pull"])
        await session.data("copy", copy_args)
        await assert_refused(
            session, emulator, instance_id, "missing-evidence", ["no-verification"]
        )
        assert human.asked == []
        await session.data("verify", {"local_dir": str(local)})

        # All evidence present: the human says no, cancels, or types another id.
        human.action = "decline"
        await assert_refused(session, emulator, instance_id, "declined")
        human.action = "cancel"
        await assert_refused(session, emulator, instance_id, "cancelled")
        human.action, human.typed = "accept", instance_id + "0"
        mismatch = await assert_refused(session, emulator, instance_id, "mismatch")
        assert repr(instance_id + "0") in mismatch["message"]
        assert len(human.asked) == 3

        # An approval smuggled into the arguments is rejected before anything runs.
        human.typed = instance_id
        for extra in ({"approval": "yes"}, {"confirmation": {"instance_id": instance_id}}):
            smuggled = await session.call("destroy", {"instance_id": instance_id, **extra})
            assert smuggled.is_error
            assert_alive(emulator, instance_id)
        assert len(human.asked) == 3

        # A local file changed after the verification.
        metrics = local / "cell-a" / "metrics.json"
        original = metrics.read_bytes()
        metrics.write_bytes(original.replace(b"steps", b"stepz"))
        await assert_refused(
            session, emulator, instance_id, "missing-evidence", ["local-files-changed"]
        )
        assert len(human.asked) == 3
        metrics.write_bytes(original)

        # A pull of another directory than the job's results root does not count: lay a copy
        # of the results (with its manifest) elsewhere on the box, pull and verify that.
        disk = emulator.instance_disk(instance_id)
        shutil.copytree(disk / REMOTE_ROOT.lstrip("/"), disk / "workspace" / "elsewhere")
        other = {
            **copy_args,
            "remote_root": "/workspace/elsewhere",
            "local_dir": str(tmp_path / "o"),
        }
        await session.data("copy", other)
        await session.data("verify", {"local_dir": other["local_dir"]})
        await assert_refused(
            session, emulator, instance_id, "missing-evidence", ["wrong-results-root"]
        )
        assert len(human.asked) == 3

    # A client that cannot ask the human is told the out-of-band way.
    async with connect(emulator, mode) as plain:
        await plain.data("copy", copy_args)
        await plain.data("verify", {"local_dir": str(local)})
        result = await assert_refused(
            plain, emulator, instance_id, "no-elicitation", ["no-approval"]
        )
        assert f"rgt approve {instance_id}" in result["message"]

    with Ledger.open() as ledger:
        assert ledger.approvals(instance_id) == []
        reasons = [f["reason"] for f in ledger.approval_failures()]
        assert reasons == [
            "elicitation declined",
            "elicitation cancelled",
            "typed id did not match",
        ]

    # Two clients (two server processes) race to destroy: one DELETE at most.
    results: list[dict[str, Any]] = []

    async def destroy_from_own_client() -> None:
        async with connect(emulator, mode, Human("accept", instance_id)) as racer:
            results.append(await racer.data("destroy", {"instance_id": instance_id}))

    async with anyio.create_task_group() as group:
        group.start_soon(destroy_from_own_client)
        group.start_soon(destroy_from_own_client)
    assert sorted(r["destroyed"] for r in results) == [False, True], results
    assert emulator.request_count("DELETE") == 1
    assert int(instance_id) not in emulator.instance_ids()


async def test_a_malformed_id_is_an_invalid_argument_before_any_request(
    emulator: Any, tmp_path: Path
) -> None:
    # Was reported by destroy as a gate refusal (missing evidence) after asking the provider.
    human = Human("accept")
    async with connect(emulator, "auto", human) as session:
        before = emulator.request_count()
        for bad in ("abc", "-1", "0"):
            calls: list[tuple[str, dict[str, Any]]] = [
                ("destroy", {"instance_id": bad}),
                ("poll", {"instance_id": bad}),
                ("stop", {"instance_id": bad}),
                ("copy", copy_arguments(bad, tmp_path / "pulled")),
                ("cost", {"instance_id": bad}),
            ]
            for name, arguments in calls:
                result = await session.call(name, arguments)
                assert result.is_error, (name, bad)
                text = result.content[0].text  # type: ignore[union-attr]
                # One line (destroy's resolver prefixes "Error executing tool destroy: ").
                assert "\n" not in text and text.endswith(
                    f"invalid argument: instance_id {bad!r}: vast.ai ids are positive whole "
                    "numbers, e.g. 4504940"
                ), (name, text)
        assert emulator.request_count() == before
    assert human.asked == []
    assert not (tmp_path / "pulled").exists()
    with Ledger.open() as ledger:
        assert ledger.approval_failures() == []


async def test_copy_into_an_empty_local_dir_is_refused_before_any_request(
    emulator: Any, tmp_path: Path
) -> None:
    # Was: '' became Path('') == '.', a copy into the MCP server's working directory.
    async with connect(emulator, "auto") as session:
        before = emulator.request_count()
        result = await session.call(
            "copy", {"instance_id": "4504940", "remote_root": REMOTE_ROOT, "local_dir": ""}
        )
        assert result.is_error
        text = result.content[0].text  # type: ignore[union-attr]
        assert "\n" not in text and text.endswith(
            "LOCAL_DIR '': empty; give a new or empty directory, or the directory of an earlier "
            "`rgt pull` of this run"
        ), text
        assert emulator.request_count() == before
