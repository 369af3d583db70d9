"""A human's no to a discard that `rgt run` asked for, kept in the ledger (schema v9): the upgrade
of a v8 ledger keeps its runs, and the run's report names the box discardable with when the no
was given (real SQLite; the supervisor end to end is in test_run_supervisor.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rgt import runs
from rgt.ledger import _MIGRATIONS, SCHEMA_VERSION, Ledger, _split_sql


def _v8_ledger(path: Path) -> None:
    """A ledger file as rgt with schema v8 left it: a run, its first attempt and its box."""
    raw = sqlite3.connect(path)
    for script in _MIGRATIONS[:8]:
        for statement in _split_sql(script):
            raw.execute(statement)
    raw.execute(
        "INSERT INTO runs (run_id, provider, profile, max_price_per_hour, interruptible, status, "
        "created, updated, move_margin) VALUES ('r8', 'vastai', 'vastai', 1.0, 1, 'running', "
        "1.0, 1.0, 0.15)"
    )
    raw.execute(
        "INSERT INTO attempts (run_id, number, label, instance_id, started, ended, end_reason) "
        "VALUES ('r8', 1, 'rgt:r8', '11', 1.0, 2.0, 'preempted-past-grace')"
    )
    raw.execute("PRAGMA user_version = 8")
    raw.commit()
    raw.close()


def test_a_v8_ledger_is_upgraded_to_v9_keeping_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    _v8_ledger(path)
    with Ledger.open(path) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION == 9
        record = runs.run(ledger, "r8")
        assert record is not None and record.move_margin == 0.15
        (attempt,) = runs.attempts(ledger, "r8")
        assert (attempt.instance_id, attempt.end_reason) == ("11", "preempted-past-grace")
        assert ledger.discard_declines() == []
        ledger.record_discard_declined(
            "vastai", "11", run_id="r8", reason="superseded", answer="declined", now=5.0
        )
    with Ledger.open(path) as ledger:  # kept across processes: it is in the file
        (no,) = ledger.discard_declines("11")
        assert (no.run_id, no.reason, no.answer, no.at) == ("r8", "superseded", "declined", 5.0)
        assert [e["kind"] for e in ledger.history("11")] == ["discard_declines"]


def test_only_known_answers_are_recorded(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db") as ledger:
        with pytest.raises(ValueError, match="allowed are declined, not-approved"):
            ledger.record_discard_declined(
                "vastai", "11", run_id="r", reason="superseded", answer="maybe"
            )
        assert ledger.discard_declines() == []


def test_the_runs_report_says_when_the_discard_was_declined(tmp_path: Path) -> None:
    """`rgt poll RUN_ID` (and the MCP poll's `run`) name the declined box discardable, with the
    command (or tool call) that still ends it and the UTC time of the no."""
    from rgt.supervisor import DISCARDABLE_NOTE, run_report

    with Ledger.open(tmp_path / "l.db") as ledger:
        runs.record_run(ledger, "r9", provider="vastai", profile="vastai", job_file="j.yaml",
                        max_price_per_hour=1.0, budget=None, interruptible=True,
                        bid_per_hour=None, now=1.0)  # fmt: skip
        for number, instance in ((1, "21"), (2, "22")):
            attempt = runs.open_attempt(ledger, "r9", number, label=f"rgt:r9/{number}",
                                        offer_id="1", machine_id="m", price_per_hour=0.1,
                                        seed_name=None, seed_step=None, now=1.0)  # fmt: skip
            runs.update_attempt(ledger, attempt.id, instance_id=instance)
        first = runs.attempts(ledger, "r9")[0]
        runs.update_attempt(ledger, first.id, ended=2.0, end_reason="preempted-past-grace")
        ledger.record_state("vastai", "21", "stopped", detail=DISCARDABLE_NOTE)
        ledger.record_discard_declined(
            "vastai", "21", run_id="r9", reason="superseded", answer="declined", now=86400.0
        )
        report = run_report(ledger, "r9")
        for_tool = run_report(ledger, "r9", for_tool=True)
    assert report is not None and for_tool is not None
    assert report["discardable"] == ["21"]
    (declined,) = report["discard_declined"]
    assert (declined["instance_id"], declined["answer"]) == ("21", "declined")
    assert declined["at"] == "1970-01-02T00:00:00Z"
    said = "(instance 21: declined when rgt run asked at 1970-01-02T00:00:00Z; not asked again)"
    assert f"`rgt discard 21 --reason superseded` {said}" in report["next_action"]
    assert "discard(" in for_tool["next_action"] and said in for_tool["next_action"]
