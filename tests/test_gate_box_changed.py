"""The gate compares the box as it is at decision time with its manifest (issue 18, item 1).

A job that goes on writing after the manifest was built (an evaluation, a late log), a file
deleted or rewritten on the box, a new directory beside the roster: before this check the gate
re-read only the manifest, said only `no-approval` was missing, and a destroy lost the file.
Every case runs on the vast.ai emulator through the real VastProvider (vastai SDK, the box's real
sshd running `find` and `sha256sum`), after a real pull and verification and a valid approval,
so the only thing standing between the box and a destroy is this check; each refusal proves the
instance and its disk still exist and no DELETE reached the emulator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rgt.gate import destroy_with_gate, may_destroy
from tests.ironlaw_emulator import Rental, RentalPool, emulator_pool, rgt, use_pool
from tests.ironlaw_fixtures import vast_profile

pytestmark = pytest.mark.timeout(90)

CASES = 13


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RentalPool]:
    with emulator_pool(tmp_path_factory, {"normal": CASES}) as rentals:
        yield rentals


@pytest.fixture
def rental(pool: RentalPool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Rental]:
    use_pool(pool, monkeypatch)
    box = pool.take(tmp_path)
    box.pull()
    box.verify()
    box.approve()
    yield box
    box.close()


def _later(path: Path) -> None:
    """Give `path` an mtime clearly after the manifest's (filesystems with coarse clocks)."""
    later = time.time() + 5
    os.utime(path, (later, later))


def test_a_file_written_after_the_manifest_is_not_destroyed(rental: Rental) -> None:
    evaluation = rental.results / "metrics" / "eval.json"
    evaluation.write_text('{"accuracy": 0.91}')
    message = rental.refused("box-changed")
    assert "new file metrics/eval.json (18 bytes)" in message
    # The refusal says how to bring the manifest up to date, with the run's own paths.
    assert f"--run-id {rental.run_id}" in message and "pull and verify again" in message
    assert evaluation.read_text() == '{"accuracy": 0.91}'


def test_a_file_deleted_on_the_box(rental: Rental) -> None:
    (rental.results / "metrics" / "metrics.json").unlink()
    assert "metrics/metrics.json is gone from the box" in rental.refused("box-changed")


def test_a_file_of_another_size(rental: Rental) -> None:
    blob = rental.results / "ckpt" / "blob.bin"
    with blob.open("ab") as handle:
        handle.write(b"late bytes")
    assert "ckpt/blob.bin is 200010 bytes, the manifest says 200000" in rental.refused(
        "box-changed"
    )


def test_a_file_rewritten_with_the_same_size(rental: Rental) -> None:
    metrics = rental.results / "metrics" / "metrics.json"
    metrics.write_text(metrics.read_text().replace("0.25", "0.26"))
    _later(metrics)
    message = rental.refused("box-changed")
    assert "metrics/metrics.json was rewritten after the manifest" in message


def test_a_new_directory_beside_the_roster(rental: Rental) -> None:
    (rental.results / "eval").mkdir()
    (rental.results / "eval" / "scores.csv").write_text("step,score\n600,0.9\n")
    message = rental.refused("box-changed")
    assert "new directory eval/ beside the roster" in message
    assert "new file eval/scores.csv" in message


def test_a_symlink_added_among_the_results(rental: Rental) -> None:
    os.symlink("/etc/hostname", rental.results / "ckpt" / "hostname")
    assert "new entry of type 'l' ckpt/hostname" in rental.refused("box-changed")


def test_a_file_touched_but_unchanged_is_hashed_and_allowed(rental: Rental) -> None:
    # Newer mtime, same bytes: only this file is hashed on the box, and nothing is lost.
    _later(rental.results / "ckpt" / "blob.bin")
    decision = may_destroy(rental.id, provider=rental.provider, ledger=rental.ledger)
    assert decision.allowed, decision.explain()
    assert decision.evidence["box_tree"] == {"files": 3, "hashed_on_box": 1, "unchanged": True}
    outcome = destroy_with_gate(
        rental.id, provider=rental.provider, ledger=rental.ledger, profile=vast_profile()
    )
    assert outcome.confirmed_state == "gone"


def test_the_cli_refuses_after_a_late_write_and_the_box_lives(rental: Rental) -> None:
    # As the issue reproduced it: everything recorded and approved, one late file on the box.
    (rental.results / "metrics" / "late.log").write_text("epoch 3 done\n")
    done = rgt("destroy", rental.id)
    assert done.returncode == 4, done.stderr
    assert "[box-changed]" in done.stderr and "metrics/late.log" in done.stderr
    assert "[no-approval]" not in done.stderr
    rental.assert_alive()


def test_a_box_that_cannot_be_listed_is_refused(
    rental: Rental, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fail closed: when the listing cannot be had, the gate cannot tell what would be lost.
    monkeypatch.setattr("rgt.boxtree.LISTING_MAX_BYTES", 16)
    message = rental.refused("box-changed")
    assert "could not list /workspace/results" in message and "more than 16 bytes" in message


def _status(rental: Rental, *, outcome: str, heartbeat_age: float) -> None:
    """Write the run's job status record on the box, as the boot hook keeps it."""
    import json

    from rgt import jobstatus

    beat = time.strftime(jobstatus.TIME_FORMAT, time.gmtime(time.time() - heartbeat_age))
    path = rental.disk / jobstatus.status_remote_path(vast_profile(), rental.run_id).lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "schema": jobstatus.SCHEMA,
        "run_id": rental.run_id,
        "attempt": 2,
        "outcome": outcome,
        "started": beat,
        "ended": None,
        "heartbeat": beat,
        "heartbeat_seconds": 30,
        "last_checkpoint": None,
        "exit_code": None,
        "log_tail": [],
        "manifest": False,
    }
    path.write_text(json.dumps(record))


def test_a_job_still_running_is_not_destroyed(rental: Rental) -> None:
    # The results so far match the manifest, but the job's record says it runs (live heartbeat):
    # it may write more after the decision.
    _status(rental, outcome="running", heartbeat_age=5)
    message = rental.refused("job-running")
    assert "attempt 2" in message and f"rgt poll {rental.id} --until done" in message


def test_a_stale_running_record_does_not_block_a_finished_tree(rental: Rental) -> None:
    # A record left saying "running" by a hook killed without warning (heartbeat long dead):
    # nothing runs; the tree check alone decides, and the tree matches.
    _status(rental, outcome="running", heartbeat_age=3600)
    decision = may_destroy(
        rental.id, provider=rental.provider, ledger=rental.ledger, profile=vast_profile()
    )
    assert decision.allowed, decision.explain()
    assert decision.evidence["job_status"]["stale"] is True


@pytest.mark.parametrize("rows", ["none", "partial"])
def test_a_verification_of_an_empty_or_partial_list_never_counts(rental: Rental, rows: str) -> None:
    # As an agent with write access to the ledger did it (issue 15): the files were never
    # verified, a PULL_VERIFIED.json with no (or some) rows is written, and a verification row
    # with its exact SHA-256 is inserted. The gate checks the rows against the manifest.
    import hashlib
    import json

    from rgt.pull import MANIFEST_NAME
    from rgt.verify import VERIFIED_NAME

    record_path = rental.local / VERIFIED_NAME
    record = json.loads(record_path.read_text())
    record["files"] = [] if rows == "none" else record["files"][:1]
    for path in ("ckpt/blob.bin", "ckpt/model.safetensors", "metrics/metrics.json"):
        if rows == "none" or path != record["files"][0]["path"]:
            (rental.local / path).unlink()  # nothing to compare the snapshot with
    forged = json.dumps(record).encode()
    record_path.write_bytes(forged)
    manifest_sha = hashlib.sha256((rental.local / MANIFEST_NAME).read_bytes()).hexdigest()
    rental.ledger.record_verification(
        rental.id,
        local_dir=rental.local.resolve(),
        manifest_sha256=manifest_sha,
        run_id=rental.run_id,
        record_sha256=hashlib.sha256(forged).hexdigest(),
    )
    message = rental.refused("local-files-changed")
    expected = "covers 0 of the manifest's 3 file(s)" if rows == "none" else "covers 1 of"
    assert expected in message
