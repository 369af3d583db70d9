"""The ledger: schema, transactions, claims, and survival of kill -9 mid-write (real SQLite)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rgt.ledger import SCHEMA_VERSION, Ledger, LedgerError, default_path


def test_default_path_follows_rgt_state_dir(isolated_user: Path) -> None:
    assert default_path() == isolated_user / "state" / "ledger.sqlite3"
    with Ledger.open() as ledger:
        assert ledger.path == default_path()
    assert default_path().exists()
    assert oct(default_path().stat().st_mode & 0o777) == "0o600"


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db") as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
        assert ledger.integrity_check() == "ok"
    raw = sqlite3.connect(tmp_path / "l.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "l.db")
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(LedgerError, match="newer than this rgt"):
        Ledger.open(tmp_path / "l.db")


def test_not_a_database_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "l.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a usable rgt ledger"):
        Ledger.open(tmp_path / "l.db")


def test_instances_and_state_history(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db") as ledger:
        ledger.record_instance(
            "vastai",
            "42",
            label="rgt-run1",
            profile="vastai",
            offer_id="7",
            price_per_hour=0.4,
            interruptible=True,
            state="provisioning",
            now=100.0,
        )
        ledger.record_state("vastai", "42", "running", now=110.0)
        ledger.record_state("vastai", "42", "stopped", detail="by user", now=120.0)
        # A second record_instance keeps what it does not mention.
        ledger.record_instance("vastai", "42", label=None, now=130.0)
        (record,) = ledger.instances()
        assert record.label == "rgt-run1" and record.interruptible is True
        assert record.price_per_hour == 0.4 and record.created == 100.0
        assert record.last_state == "stopped"
        assert [s for _, s, _ in ledger.state_history("42")] == [
            "provisioning",
            "running",
            "stopped",
        ]


def test_approval_is_single_use_and_expires(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db") as ledger:
        approval_id = ledger.record_approval("42", "tty", 60, now=1000.0)
        assert ledger.usable_approval("42", now=1059.0) is not None
        assert ledger.usable_approval("42", now=1060.0) is None  # expired
        assert ledger.usable_approval("43", now=1001.0) is None  # another instance
        assert ledger.consume_approval(approval_id, now=1010.0)
        assert not ledger.consume_approval(approval_id, now=1011.0)
        assert ledger.usable_approval("42", now=1012.0) is None
        with pytest.raises(ValueError):
            ledger.record_approval("42", "tty", 0)


def test_destroy_claim_is_exclusive_and_stale_claims_expire(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.db") as first, Ledger.open(tmp_path / "l.db") as second:
        token = first.claim_destroy("vastai", "42", now=1000.0)
        assert token is not None
        assert second.claim_destroy("vastai", "42", now=1001.0) is None
        assert second.claim_destroy("vastai", "43", now=1001.0) is not None
        # A claim whose process died is re-taken after the claim window.
        assert second.claim_destroy("vastai", "42", now=1000.0 + 601) is not None
        first.update_destroy(token, "confirmed", verb="destroy", now=1002.0)
        # Once confirmed, nobody claims it again.
        assert second.claim_destroy("vastai", "42", now=5000.0) is None
        assert "gone" in [s for _, s, _ in first.state_history("42")]


_WRITER = r"""
import sys
from rgt.ledger import Ledger
ledger = Ledger.open(sys.argv[1])
prefix = sys.argv[2]
i = 0
while True:
    i += 1
    # Two-row transactions: an instance with its first state, a confirmed destroy with its event.
    ledger.record_instance("vastai", f"{prefix}{i}", label=f"L{i}", state="running")
    token = ledger.claim_destroy("vastai", f"{prefix}{i}")
    ledger.update_destroy(token, "confirmed", verb="destroy")
    if i == 20:
        print("ready", flush=True)
"""


@pytest.mark.timeout(60)
def test_kill_9_mid_write_leaves_a_consistent_ledger(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    Ledger.open(path).close()
    for round_ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"r{round_}-"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.05 * (round_ + 1))  # land the kill at different points of the stream
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        with Ledger.open(path) as ledger:
            assert ledger.integrity_check() == "ok"
            instances = ledger.instances()
            assert len(instances) >= 20 * (round_ + 1)
            destroys = {d.instance_id: d for d in ledger.destroys()}
            for record in instances:
                history = [s for _, s, _ in ledger.state_history(record.instance_id)]
                # Never an instance without its first state row ...
                assert history[0] == "running", (record, history)
                # ... and a confirmed destroy always has its "gone" event (same transaction).
                destroy = destroys.get(record.instance_id)
                if destroy is not None and destroy.status == "confirmed":
                    assert history == ["running", "gone"], history
                else:
                    assert history == ["running"], history
        # A fresh writer continues after the crash without conflicts.
        with Ledger.open(path) as ledger:
            ledger.record_instance("vastai", f"after{round_}", state="running")


def test_rgt_ledger_command_prints_the_history(isolated_user: Path) -> None:
    empty = subprocess.run(
        [sys.executable, "-m", "rgt", "ledger"], capture_output=True, text=True, check=True
    )
    assert "no ledger yet" in empty.stdout
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", "42", label="rgt-x", state="running")
        ledger.record_approval("42", "tty", 60)
        ledger.record_approval_failure("42", "tty", "wrong passphrase")
    shown = subprocess.run(
        [sys.executable, "-m", "rgt", "ledger", "42"], capture_output=True, text=True, check=True
    )
    assert "state running" in shown.stdout and "approved via tty" in shown.stdout
    assert "approval FAILED via tty: wrong passphrase" in shown.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "rgt", "ledger", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    kinds = [json.loads(line)["kind"] for line in as_json.stdout.splitlines()]
    assert kinds.count("approvals") == 1 and "instance_events" in kinds
