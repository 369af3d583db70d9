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


def test_a_version_1_ledger_is_migrated_forward_keeping_its_rows(tmp_path: Path) -> None:
    from rgt.ledger import _MIGRATIONS, _split_sql

    path = tmp_path / "l.db"
    raw = sqlite3.connect(path)
    for statement in _split_sql(_MIGRATIONS[0]):
        raw.execute(statement)
    raw.execute(
        "INSERT INTO instances (provider, instance_id, label, created) VALUES ('vastai', '7', "
        "'rgt:old', 1.0)"
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    with Ledger.open(path) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION == len(_MIGRATIONS)
        assert ledger.launches() == []  # v3: the launches table
        old = ledger.instance("vastai", "7")
        assert old is not None and old.label == "rgt:old" and old.results_root is None
        ledger.record_instance("vastai", "7", results_root="/workspace/r", roster=["a", "b"])
        again = ledger.instance("vastai", "7")
        assert again is not None and again.roster == ["a", "b"] and again.label == "rgt:old"
        assert again.results_root == "/workspace/r"


def test_rows_are_chained_by_the_sha256_of_their_canonical_bytes(tmp_path: Path) -> None:
    from rgt.ledger import PullRecord, row_bytes, row_sha256

    # The canonical bytes are fixed: every link in every user's ledger was computed from them.
    pull = PullRecord(7, "42", "/r", "/tmp/x", "a" * 64, "run", 3, 10, 10, 1, "rsync+ssh", 1.5, 2.0)
    assert row_bytes(pull) == (
        b'{"format":"rgt.ledger-row/v1","row":{"attempts":1,"bytes_total":10,'
        b'"bytes_transferred":10,"files":3,"finished":2.0,"id":7,"instance_id":"42",'
        b'"local_dir":"/tmp/x","manifest_sha256":"' + b"a" * 64 + b'","remote_root":"/r",'
        b'"run_id":"run","started":1.5,"transport":"rsync+ssh"},"table":"pulls"}'
    )
    with Ledger.open(tmp_path / "l.db") as ledger:
        ledger.record_approval("42", "tty", 60)  # before any verification: names none
        pull_id = ledger.record_pull(
            "42", remote_root="/r", local_dir=tmp_path / "x", manifest_sha256="a" * 64,
            run_id="run", files=3, bytes_total=10, bytes_transferred=10, attempts=1,
            transport=None, started=1.0,
        )  # fmt: skip
        ledger.record_verification(
            "42", local_dir=tmp_path / "x", manifest_sha256="a" * 64, run_id="run"
        )
        ledger.record_verification(  # of a manifest no pull into that folder copied
            "42", local_dir=tmp_path / "x", manifest_sha256="b" * 64, run_id="run"
        )
        ledger.record_approval("42", "tty", 60)
        ledger.record_approval("42", "tty", 60, purpose="discard")
        (pull,) = ledger.pulls("42")
        assert pull.id == pull_id
        first, second = ledger._db.execute("SELECT pull_sha256 FROM verifications ORDER BY id")
        assert first[0] == row_sha256(pull) and second[0] is None
        latest = ledger.latest_verification("42")
        assert latest is not None and latest.pull_sha256 is None
        links = [a.verification_sha256 for a in ledger.approvals("42")]
        assert links == [None, row_sha256(latest), None]


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


def test_a_corrupt_ledger_is_one_line_from_the_cli(isolated_user: Path) -> None:
    default_path().parent.mkdir(parents=True, exist_ok=True)
    default_path().write_bytes(b"this is not sqlite" * 100)
    done = subprocess.run(
        [sys.executable, "-m", "rgt", "ledger"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("rgt ledger: error: ") and str(default_path()) in line
    assert "not a usable rgt ledger" in line


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
import time
from rgt.ledger import Ledger
ledger = Ledger.open(sys.argv[1])
prefix = sys.argv[2]
i = 0
while True:
    i += 1
    key = f"{prefix}{i}"
    # Every kind of record, each its own transaction (the public API) ...
    launch = ledger.record_launch_intent(
        "vastai", label=f"rgt:{key}", run_id=key, profile="vastai", offer_id="1",
        price_per_hour=0.5, max_price_per_hour=1.0, interruptible=False,
        results_root="/r", roster=["a"])
    ledger.record_launch_rented(launch, key, state="running")
    ledger.record_instance("vastai", key, label=f"L{i}", state="running")
    ledger.record_pull(key, remote_root="/r", local_dir="/tmp/x", manifest_sha256="a" * 64,
                       run_id="r", files=3, bytes_total=10, bytes_transferred=10, attempts=1,
                       transport="rsync", started=0.0)
    ledger.record_verification(key, local_dir="/tmp/x", manifest_sha256="a" * 64, run_id="r",
                               detail={"files": list(range(50))})
    approval = ledger.record_approval(key, "tty", 60)
    token = ledger.claim_destroy("vastai", key)
    ledger.consume_approval(approval)
    ledger.update_destroy(token, "confirmed", verb="destroy", approval_id=approval)
    # ... and one long transaction of BULK rows, announced before and after, so that many kills
    # land inside an open transaction.
    print("B", key, flush=True)
    with ledger.transaction() as db:
        at = time.time()
        for n in range(BULK):
            db.execute(
                "INSERT INTO instance_events (provider, instance_id, state, detail, at) "
                "VALUES ('vastai', ?, 'bulk', ?, ?)", (key, str(n), at))
    print("C", key, flush=True)
""".replace("BULK", "3000")
_BULK = 3000


def _check_complete(ledger: Ledger) -> None:
    """Every record the writer makes is whole: no instance without its first state, no half
    destroy, no partial bulk transaction."""
    assert ledger.integrity_check() == "ok"
    # A launch is rented together with its instance's row, or is still pending without one.
    rented = {launch.instance_id: launch for launch in ledger.launches(status="rented")}
    for launch in ledger.launches(status="pending"):
        assert ledger.instance("vastai", launch.run_id) is None, launch
    for record in ledger.instances():
        if not record.instance_id.startswith("after"):
            assert record.instance_id in rented
            assert record.offer_id == "1" and record.roster == ["a"], record
    pulls = {p.instance_id for p in ledger.pulls()}
    destroys = {d.instance_id: d for d in ledger.destroys()}
    for record in ledger.instances():
        history = [s for _, s, _ in ledger.state_history(record.instance_id)]
        assert history[0] == "running", (record, history)
        assert history.count("bulk") in (0, _BULK), (record.instance_id, history.count("bulk"))
        destroy = destroys.get(record.instance_id)
        if destroy is not None and destroy.status == "confirmed":
            # The "gone" event commits with the confirmation; the consumed approval before it.
            assert "gone" in history and destroy.approval_id is not None
            assert ledger.approval(destroy.approval_id).consumed is not None  # type: ignore[union-attr]
        else:
            assert "gone" not in history
        if history.count("bulk"):
            assert record.instance_id in pulls and destroy is not None
    for pull in ledger.pulls():
        assert pull.files == 3 and pull.manifest_sha256 == "a" * 64
    for instance_id in pulls:
        verification = ledger.latest_verification(instance_id)
        if verification is not None:
            assert verification.detail == {"files": list(range(50))}


@pytest.mark.timeout(90)
def test_kill_9_at_random_points_leaves_a_consistent_ledger(tmp_path: Path) -> None:
    import random

    path = tmp_path / "l.db"
    Ledger.open(path).close()
    rng = random.Random(4)
    # Kill at random points until enough kills landed inside an open transaction (what the test
    # is about; how many rounds that takes depends on the machine's load).
    rounds, inside, want, cap = 0, 0, 8, 40
    while inside < want and rounds < cap:
        round_ = rounds
        rounds += 1
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"r{round_}-"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().startswith("B ")  # it is writing
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(writer.pid, signal.SIGKILL)
        tail = writer.communicate()[0].split("\n")
        writer.wait()
        last = [line for line in tail if line][-1:] or ["B"]
        inside += last[0].startswith("B ")  # killed between BEGIN and the commit's return
        with Ledger.open(path) as ledger:
            _check_complete(ledger)
            # A fresh writer continues after the crash without conflicts.
            ledger.record_instance("vastai", f"after{round_}", state="running")
    assert inside >= want, f"only {inside} of {rounds} kills landed mid-transaction"
    print(f"kill -9 rounds: {rounds}, inside a transaction: {inside}")


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


def test_a_dead_processes_unfinished_claim_can_be_taken_over_by_the_lock_holder(
    tmp_path: Path,
) -> None:
    with Ledger.open(tmp_path / "l.db") as ledger:
        dead = ledger.claim_destroy("vastai", "42", now=1000.0)
        ledger.update_destroy(dead, "sent", verb="destroy")  # type: ignore[arg-type]
        # Without the lock: blocked until the claim expires.
        assert ledger.claim_destroy("vastai", "42", now=1010.0) is None
        # Holding the per-instance lock (the gate does): the dead claim is abandoned at once.
        token = ledger.claim_destroy("vastai", "42", abandon_unfinished=True, now=1010.0)
        assert token is not None
        first, second = ledger.destroys("42")
        assert first.status == "failed" and "abandoned" in (first.detail or "")
        assert second.status == "claimed"
        # A confirmed destroy is never taken over.
        ledger.update_destroy(token, "confirmed")
        assert ledger.claim_destroy("vastai", "42", abandon_unfinished=True, now=1020.0) is None


def test_rgt_ledger_says_when_an_instance_has_no_entries_and_does_not_repeat_a_status(
    isolated_user: Path,
) -> None:
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", "42", label="rgt-x", state="running")
        token = ledger.claim_destroy("vastai", "42")
        assert token is not None
        ledger.update_destroy(token, "confirmed", detail="destroy confirmed: gone")
    # A typo'd id printed nothing at all (QA).
    unknown = subprocess.run(
        [sys.executable, "-m", "rgt", "ledger", "43"], capture_output=True, text=True, check=True
    )
    assert unknown.stdout.startswith("no ledger entries for instance 43 (")
    shown = subprocess.run(
        [sys.executable, "-m", "rgt", "ledger", "42"], capture_output=True, text=True, check=True
    )
    assert "destroy confirmed: gone" in shown.stdout
    assert "destroy confirmed: destroy confirmed" not in shown.stdout


def test_a_launch_is_pending_before_its_create_and_rented_with_its_instance(
    isolated_user: Path,
) -> None:
    def intent(ledger: Ledger, offer: str) -> int:
        return ledger.record_launch_intent(
            "vastai",
            label="rgt:r1",
            run_id="r1",
            profile="vastai",
            offer_id=offer,
            price_per_hour=0.25,
            max_price_per_hour=0.5,
            interruptible=False,
            results_root="/workspace/results",
            roster=["cell-a"],
            now=100.0,
        )

    with Ledger.open() as ledger:
        killed = intent(ledger, "7")  # an earlier launch of the same run, killed mid-create
        launch = intent(ledger, "8")
        assert [x.id for x in ledger.launches(status="pending")] == [killed, launch]
        assert ledger.launch(launch).pid == os.getpid()  # type: ignore[union-attr]
        ledger.record_launch_rented(launch, "4242", state="loading", now=101.0)
        # Both launches of the label now name the box; its row carries the launch's facts.
        assert {(x.id, x.status, x.instance_id) for x in ledger.launches()} == {
            (killed, "rented", "4242"),
            (launch, "rented", "4242"),
        }
        record = ledger.instance("vastai", "4242")
        assert record is not None and record.label == "rgt:r1" and record.offer_id == "8"
        assert record.price_per_hour == 0.25 and record.roster == ["cell-a"]
        assert record.results_root == "/workspace/results" and record.last_state == "loading"
        with pytest.raises(ValueError, match="record_launch_rented"):
            ledger.record_launch_outcome(launch, "rented", detail="x")
        refused = intent(ledger, "9")
        ledger.record_launch_outcome(refused, "not-rented", detail="offer taken")
        closed = ledger.launch(refused)
        assert closed is not None and closed.status == "not-rented" and closed.pid is None
        # A closed launch is not re-opened.
        ledger.record_launch_outcome(refused, "pending", detail="late")
        assert ledger.launch(refused).status == "not-rented"  # type: ignore[union-attr]
    shown = subprocess.run(
        [sys.executable, "-m", "rgt", "ledger"], capture_output=True, text=True, check=True
    )
    assert f"launch #{launch} rented: rgt:r1 on offer 8" in shown.stdout
    assert f"launch #{refused} not-rented: rgt:r1 on offer 9 (offer taken)" in shown.stdout


def test_threads_opening_a_new_ledger_together_all_get_it(tmp_path: Path) -> None:
    # Was: SQLite answers "database is locked" at once (no busy wait) to a connection switching a
    # new database to WAL while another creates it; `rgt run`'s supervisor thread and its caller
    # opening a fresh ledger together failed 10 of 100 such trials with 4 threads.
    import threading

    failures: list[str] = []
    for trial in range(30):
        path = tmp_path / f"ledger-{trial}.sqlite3"

        def open_it(path: Path = path) -> None:
            try:
                with Ledger.open(path) as ledger:
                    assert ledger.schema_version() == SCHEMA_VERSION
            except LedgerError as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
