"""Every MCP tool through the real MCP client (stdio, `rgt mcp` against the emulator): each
result validates against the tool's published output schema, names its next step as a tool
call with the arguments rgt knows (never an `rgt` command line), and stays within a byte budget
(an agent pays for every byte of context)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
import yaml
from mcp import Client

from rgt.locks import run_supervised
from rgt.mcp_server import build_server
from rgt.mcp_server.results import SYNC_LISTED
from tests.mcp_client import (
    REMOTE_ROOT,
    REPO,
    Human,
    Session,
    assert_alive,
    connect,
    copy_arguments,
    launch_and_finish,
    write_job,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

# Bytes of each tool's structured result (compact JSON), measured on the emulator and rounded
# up; a result that outgrows its budget costs every agent that context on every call.
BUDGET = {
    "list_profiles": 900,
    "get_profile": 2200,
    "search_offers": 1800,  # 3 offers (about 550 bytes each)
    "launch": 1100,
    "run": 500,
    "poll": 1500,  # of a run, too (its run object, one attempt)
    "copy": 500,
    "sync": 1400,  # 8 checkpoints verified in one round, the newest 5 listed (~130 bytes each)
    "verify": 800,
    "destroy": 1200,
    "discard": 900,
    "logs": 1000,
    "stop": 600,
    "start": 500,
    "cost": 1300,  # 3 instances
    "sweep": 1000,
}


class Checked:
    """Calls tools, validating each structured result against the tool's output schema and
    recording its size."""

    def __init__(self, session: Session, schemas: dict[str, dict[str, Any]]) -> None:
        self.session = session
        self.schemas = schemas
        self.sizes: dict[str, int] = {}
        # (instance id, bytes, cost basis) of each poll result
        self.polls: list[tuple[str, int, str | None]] = []

    async def __call__(
        self, name: str, arguments: dict[str, Any], **options: Any
    ) -> dict[str, Any]:
        data = await self.session.data(name, arguments, **options)
        jsonschema.validate(data, self.schemas[name])
        size = len(json.dumps(data, separators=(",", ":")))
        self.sizes[name] = max(size, self.sizes.get(name, 0))
        if name == "poll":
            self.polls.append((str(arguments["instance_id"]), size, data["cost_basis"]))
        text = json.dumps(data)
        assert "`rgt " not in text and "rgt pull" not in text, (name, text)
        return data


async def wait_for_job(call: Checked, instance_id: str) -> dict[str, Any]:
    """Poll until the box runs and its job status record says the job runs."""
    deadline = time.monotonic() + 60
    while True:
        report = await call("poll", {"instance_id": instance_id})
        job = report.get("job") or {}
        if job.get("state") == "running":
            return report
        assert time.monotonic() < deadline, report
        await anyio.sleep(0.3)


def durable_job(directory: Path, run_id: str) -> Path:
    """The example job with `durable: local`: its 8 checkpoints can be synced off the box."""
    path = write_job(directory, run_id)
    path.write_text(path.read_text() + "durable: local\n")
    return path


async def wait_for_run(session: Session, run_id: str) -> None:
    """Poll the supervised run until its supervisor stopped watching (verified and waiting
    for the destroy tool's approval, or ended)."""
    deadline = time.monotonic() + 150
    while True:
        polled = await session.call("poll", {"instance_id": run_id})
        report = polled.structured_content
        if not polled.is_error and report and report["run"]["status"] != "running":
            return
        assert time.monotonic() < deadline, polled.content
        await anyio.sleep(1)


def slow_job(directory: Path, run_id: str) -> Path:
    """The example job, slowed down so that it is still running while the test looks."""
    path = write_job(directory, run_id)
    path.write_text(path.read_text().replace('STEP_SECONDS: "0.05"', 'STEP_SECONDS: "30"'))
    return path


async def test_every_tool_is_typed_speaks_in_tools_and_is_small(
    emulator: Any, tmp_path: Path
) -> None:
    human = Human("accept")
    local = tmp_path / "pulled"
    async with connect(emulator, "auto", human) as session:
        tools = (await session.client.list_tools()).tools
        schemas = {tool.name: tool.output_schema for tool in tools}
        assert schemas.keys() == BUDGET.keys(), "a tool without a byte budget, or a stale one"
        for name, schema in schemas.items():
            # A real schema, not the SDK's catch-all object for an untyped dict.
            assert schema is not None and schema.get("properties"), name
        call = Checked(session, schemas)

        listed = await call("list_profiles", {})
        assert listed["next"] == 'get_profile(name="vastai")'
        profile = await call("get_profile", {"name": "vastai"})
        assert profile["danger_clocks"]
        assert (await call("search_offers", {"gpu": "RTX_4090", "limit": 3}))["offers"]
        # A supervised run, started now: it rents, runs, pulls and verifies in the background
        # while the rest of the test goes on; poll(RUN_ID) follows it at the end.
        supervised = yaml.safe_load(durable_job(tmp_path, "supervised").read_text())
        started = await call(
            "run", {"job": supervised, "max_price_per_hour": 5.0, "interval_seconds": 1}
        )
        assert started["next"].startswith('poll(instance_id="supervised", wait_seconds=600)')

        # A job still running: copy says so at once, in tool terms; the gate names the copy.
        offer = (await session.data("search_offers", {"gpu": "RTX_4090", "disk_gb": 40}))["offers"][
            0
        ]
        first = await call(
            "launch",
            {
                "profile": "vastai",
                "offer_id": offer["offer_id"],
                # The job inline, as an object: no file on the server's side.
                "job": yaml.safe_load(slow_job(tmp_path, "slow").read_text()),
                "max_price_per_hour": offer["price_per_hour"] + 0.01,
            },
        )
        slow = first["instance_id"]
        assert set(profile["danger_clocks"]) <= set(first["warnings"]), "first launch: clocks"
        running = await wait_for_job(call, slow)
        # The cost basis is told once per instance (and again only when it changes): a
        # polling loop is not sent the same sentence again.
        again = await call("poll", {"instance_id": slow})
        assert again["cost_basis"] is None and again["cost_so_far"] is not None
        told = [basis for instance, _, basis in call.polls if instance == slow and basis]
        assert len(told) == 1 and call.polls[0][2] == told[0], call.polls
        size = call.polls[-1][1]
        with_basis = size + len(json.dumps(told[0])) - len("null")
        print(f"repeated poll: {size} bytes, {with_basis} when it repeated the cost basis")
        began = time.monotonic()
        early = await session.call("copy", copy_arguments(slow, tmp_path / "early"))
        # A figure for the record, not a threshold: was 6.6 s and a raw `cat:` error.
        print(f"copy before the manifest answered in {time.monotonic() - began:.2f} s")
        assert early.is_error
        text = early.content[0].text  # type: ignore[union-attr]
        assert "the job has not finished (job status: " in text, text
        assert f'poll(instance_id="{slow}", wait_seconds=600)' in text and "rgt " not in text
        refused = await call("destroy", {"instance_id": slow})
        no_pull = next(m for m in refused["missing"] if m["code"] == "no-pull")
        assert f'copy(instance_id="{slow}", remote_root="{REMOTE_ROOT}")' in no_pull["message"]
        assert f'poll(instance_id="{slow}", wait_seconds=600)' in running["next_action"]
        assert (await call("logs", {"instance_id": slow, "tail": 20}))["instance_id"] == slow

        # A job that finished: poll names the copy, copy the verify, verify the destroy.
        done = await launch_and_finish(session, emulator, durable_job(tmp_path, "done"))
        report = await call("poll", {"instance_id": done})
        assert (
            f'copy(instance_id="{done}", remote_root="{REMOTE_ROOT}", local_dir='
            in (report["next_action"])
        )
        copied = await call("copy", copy_arguments(done, local))
        assert copied["next"] == f'verify(local_dir="{local.resolve()}")'
        metrics = local / "cell-a" / "metrics.json"
        original = metrics.read_bytes()
        metrics.write_bytes(original.replace(b"steps", b"stepz"))
        bad = await call("verify", {"local_dir": str(local)})
        assert bad["ok"] is False and bad["problems"], bad
        assert bad["next"].startswith(
            f'do NOT destroy: copy(instance_id="{done}", remote_root="{REMOTE_ROOT}", '
            f'local_dir="{local.resolve()}")'
        ), bad["next"]
        metrics.write_bytes(original)
        # With a progress callback (the client's progress token), verify reports the bytes it
        # hashed; the verify above, without one, sent none and still worked.
        notes: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            notes.append((progress, total, message))

        good = await call(
            "verify",
            {"local_dir": str(local), "instance_id": done},
            progress_callback=on_progress,
        )
        assert good["ok"] is True and good["next"] == f'destroy(instance_id="{done}")'
        hashed = float(good["totals"]["bytes"])
        assert notes and notes[-1][:2] == (hashed, hashed), notes
        assert all(str(message).startswith(f"verify {local}: ") for _, _, message in notes)
        assert [done for done, _, _ in notes] == sorted(done for done, _, _ in notes)

        synced = await call("sync", {"instance_id": done})
        assert synced["verified_count"] == 8 and not synced["refused"], synced
        # Listed: the newest SYNC_LISTED, in step order (the durable index holds all 8).
        steps = [entry["step"] for entry in synced["verified"]]
        assert len(steps) == SYNC_LISTED and steps == sorted(steps), steps
        assert synced["verified"][-1]["name"] == synced["newest"]["name"]
        assert synced["next"].startswith(f'poll(instance_id="{done}")')

        await wait_for_run(session, "supervised")
        followed = await call("poll", {"instance_id": "supervised"})
        assert followed["run"]["status"] == "awaiting-approval", followed["run"]
        assert "destroy(" in followed["run"]["next_action"], followed["run"]
        assert not run_supervised("supervised")
        # The run's step leads: the supervisor copied and verified already.
        assert followed["next_action"] == followed["run"]["next_action"]

        await call("cost", {})
        await call("sweep", {})
        stopped = await call("stop", {"instance_id": slow})
        assert stopped["stopped"] is True
        assert (await call("start", {"instance_id": slow}))["bills_compute_again"] is True
        # Refused whatever the box's state: its job has not failed. (nothing-to-keep was
        # timing-dependent: once the restarted box ran, its empty disk let the discard through
        # to the human's prompt.)
        discarded = await call("discard", {"instance_id": slow, "reason": "failed-job"})
        assert discarded["discarded"] is False
        assert_alive_box(emulator, slow)

        human.typed = done
        assert (await call("destroy", {"instance_id": done}))["destroyed"] is True
    print("result bytes per tool:", json.dumps(call.sizes, sort_keys=True))
    # Every tool the server lists was driven and measured (a new one cannot be left out).
    assert set(call.sizes) == set(schemas), set(schemas) - set(call.sizes)
    over = {name: size for name, size in call.sizes.items() if size > BUDGET[name]}
    assert not over, f"over budget: {over} (budgets {BUDGET})"


def assert_alive_box(emulator: Any, instance_id: str) -> None:
    """The instance still exists (a refused discard left it)."""
    assert int(instance_id) in emulator.instance_ids()


async def test_a_second_launch_does_not_repeat_the_danger_clocks(
    emulator: Any, tmp_path: Path
) -> None:
    async with connect(emulator, "auto") as session:
        clocks = (await session.data("get_profile", {"name": "vastai"}))["danger_clocks"]
        offers = (await session.data("search_offers", {"gpu": "RTX_4090", "disk_gb": 40}))["offers"]
        warnings = []
        for number, offer in enumerate(offers[:2]):
            launched = await session.data(
                "launch",
                {
                    "profile": "vastai",
                    "offer_id": offer["offer_id"],
                    "job": str(write_job(tmp_path, f"twice-{number}")),
                    "max_price_per_hour": offer["price_per_hour"] + 0.01,
                },
            )
            warnings.append(launched["warnings"])
    assert set(clocks) <= set(warnings[0])
    assert not set(clocks) & set(warnings[1]), warnings[1]


async def test_a_launch_that_adopts_the_runs_box_says_what_it_ignored(
    emulator: Any, tmp_path: Path
) -> None:
    # Was: "adopted it, rented nothing new" alone, though another offer and roster were asked.
    job = write_job(tmp_path, "again")
    async with connect(emulator, "auto") as session:
        offers = (await session.data("search_offers", {"gpu": "RTX_4090", "disk_gb": 40}))["offers"]
        first, other = offers[0], offers[1]
        arguments = {"profile": "vastai", "job": str(job), "max_price_per_hour": 5.0}
        rented = await session.data("launch", {**arguments, "offer_id": first["offer_id"]})
        assert rented["adopted"] is False and rented["ignored"] == []
        job.write_text(job.read_text().replace("roster: [cell-a]", "roster: [cell-a, cell-b]"))
        again = await session.data("launch", {**arguments, "offer_id": other["offer_id"]})
    assert again["adopted"] is True and again["instance_id"] == rented["instance_id"]
    assert again["ignored"] == [
        f"offer_id {other['offer_id']}: the box was rented from offer {first['offer_id']}",
        "roster ['cell-a', 'cell-b']: the box's job has roster ['cell-a']",
    ]
    assert "ignored: offer_id" in again["warnings"][0]
    assert len(emulator.instance_ids()) == 1


async def test_an_instance_id_has_exactly_one_form(emulator: Any, tmp_path: Path) -> None:
    # Was: " 42", "42\n" and "042" passed the check and named instance 42 in odd ways.
    async with connect(emulator, "auto") as session:
        done = await launch_and_finish(session, emulator, write_job(tmp_path, "form"))
        before = emulator.request_count()
        for bad in (f" {done}", f"{done}\n", f"0{done}"):
            for name in ("poll", "destroy", "stop", "cost"):
                result = await session.call(name, {"instance_id": bad})
                assert result.is_error, (name, bad)
                text = result.content[0].text  # type: ignore[union-attr]
                assert text.endswith(
                    f"invalid argument: instance_id {bad!r}: vast.ai ids are positive whole "
                    "numbers, e.g. 4504940"
                ), (name, text)
        assert emulator.request_count() == before
        assert_alive(emulator, done)


async def test_resources_and_prompts_let_an_agent_work_without_a_shell() -> None:
    schema = json.loads((REPO / "schemas" / "job.schema.json").read_text())
    async with Client(build_server()) as client:
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert {"rgt://schemas/job.schema.json", "rgt://examples/job.yaml"} <= uris
        assert "rgt://profiles/vastai" in uris
        read = await client.read_resource("rgt://schemas/job.schema.json")
        assert json.loads(read.contents[0].text) == schema  # type: ignore[union-attr]
        example = await client.read_resource("rgt://examples/job.yaml")
        job = yaml.safe_load(example.contents[0].text)  # type: ignore[union-attr]
        jsonschema.validate(job, schema)
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert prompts == {"run_a_job", "end_a_rental"}
        ended = await client.get_prompt("end_a_rental", {"instance_id": "42"})
        assert "instance 42" in ended.messages[0].content.text  # type: ignore[union-attr]
        # An inline job is validated by the same schema: one line naming what is wrong.
        bad = await client.call_tool(
            "launch",
            {
                "profile": "vastai",
                "offer_id": "1",
                "job": {**job, "disk_gb": "lots"},
                "max_price_per_hour": 1.0,
            },
        )
    assert bad.is_error
    text = bad.content[0].text  # type: ignore[union-attr]
    assert "disk_gb" in text and "\n" not in text.strip(), text
