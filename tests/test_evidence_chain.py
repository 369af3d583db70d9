"""The evidence chain against the emulator (issue 15): pull → verification → approval rows name
the SHA-256 of what each rests on, and the gate recomputes every link.

An agent with a shell as the ledger's user can write rows with the real sqlite3 module; each
test below does exactly that for one link and is refused with the code naming it, the instance
and its disk still there and no DELETE sent. The honest path still destroys, and rows of a
ledger from before the chain (schema v5, migrated) cannot count until re-created.
Real parts: VastProvider over the vastai SDK, the emulator's API and sshd, rsync, rgt.verify,
SQLite.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rgt import ledger as ledger_module
from rgt.gate import destroy_with_gate, may_destroy
from rgt.ledger import Ledger, row_sha256
from tests.ironlaw_emulator import Rental, RentalPool, emulator_pool, rgt, use_pool
from tests.ironlaw_fixtures import vast_profile
from tests.ptyrun import PtyProcess

pytestmark = pytest.mark.timeout(90)

CASES = 10  # one box per test case below, rented up front (their boots overlap)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RentalPool]:
    with emulator_pool(tmp_path_factory, {"normal": CASES}) as rentals:
        yield rentals


@pytest.fixture
def rental(pool: RentalPool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Rental]:
    use_pool(pool, monkeypatch)
    box = pool.take(tmp_path)
    yield box
    box.close()


def _agent_sql(rental: Rental, statement: str, values: tuple[object, ...]) -> None:
    """What an agent with a shell does: its own sqlite3 connection to the ledger file."""
    with sqlite3.connect(rental.ledger.path) as db:
        db.execute(statement, values)


def test_the_honest_chain_links_each_row_and_destroys(rental: Rental) -> None:
    rental.pull()
    rental.verify()
    rental.approve()
    pull = rental.ledger.latest_pull(rental.id)
    verification = rental.ledger.latest_verification(rental.id)
    (approval,) = rental.ledger.approvals(rental.id)
    assert pull is not None and verification is not None
    box_manifest = (rental.results / "PULL_MANIFEST.json").read_bytes()
    assert pull.manifest_sha256 == hashlib.sha256(box_manifest).hexdigest()
    assert verification.pull_sha256 == row_sha256(pull)
    assert approval.verification_sha256 == row_sha256(verification)
    outcome = destroy_with_gate(
        rental.id, provider=rental.provider, ledger=rental.ledger, profile=vast_profile()
    )
    assert outcome.confirmed_state == "gone"
    assert rental.provider.show(rental.id).state == "gone" and rental.destroy_requests() == 1


@pytest.mark.parametrize("link", [None, "0" * 64])
def test_an_approval_row_inserted_by_hand(rental: Rental, link: str | None) -> None:
    rental.pull()
    rental.verify()
    now = time.time()
    _agent_sql(
        rental,
        "INSERT INTO approvals (instance_id, channel, created, expires, purpose, "
        "verification_sha256) VALUES (?, 'tty', ?, ?, 'destroy', ?)",
        (rental.id, now, now + 900, link),
    )
    message = rental.refused("approval-chain")
    assert "approves no evidence" in message if link is None else "is broken" in message
    # Nothing else was missing: the forged row is the only reason.
    assert message.count("  - [") == 1, message


@pytest.mark.parametrize("link", ["none", "wrong", "computed"])
def test_a_verification_row_inserted_by_hand(rental: Rental, link: str) -> None:
    # Pulled, never verified: the agent writes the verification row itself. Even with the link
    # computed right (it can read rgt's source), no PULL_VERIFIED.json the row names exists.
    rental.pull()
    pull = rental.ledger.latest_pull(rental.id)
    assert pull is not None
    pull_sha256 = {"none": None, "wrong": "0" * 64, "computed": row_sha256(pull)}[link]
    _agent_sql(
        rental,
        "INSERT INTO verifications (instance_id, local_dir, manifest_sha256, run_id, "
        "record_sha256, allow_pickle, detail, created, pull_sha256) "
        "VALUES (?, ?, ?, ?, ?, 0, '{}', ?, ?)",
        (rental.id, pull.local_dir, pull.manifest_sha256, rental.run_id, "1" * 64, time.time(),
         pull_sha256),
    )  # fmt: skip
    rental.approve()  # a real approval, given for what the ledger shows
    if link == "computed":
        message = rental.refused("local-files-changed")
        assert "[verification-chain]" not in message
    else:
        message = rental.refused("verification-chain")
        assert f"rgt verify {pull.local_dir}" in message if link == "none" else "broken" in message


@pytest.mark.parametrize("how", ["inserted", "edited"])
def test_a_pull_row_inserted_or_edited_by_hand(rental: Rental, how: str) -> None:
    rental.pull()
    rental.verify()
    rental.approve()
    pull = rental.ledger.latest_pull(rental.id)
    assert pull is not None
    if how == "inserted":  # a newer pull, of the box's real manifest, into a folder of its own
        _agent_sql(
            rental,
            "INSERT INTO pulls (instance_id, remote_root, local_dir, manifest_sha256, run_id, "
            "files, bytes_total, bytes_transferred, attempts, transport, started, finished) "
            "VALUES (?, ?, '/tmp/agent-made', ?, ?, 3, 1, 1, 1, 'rsync+ssh', ?, ?)",
            (rental.id, pull.remote_root, pull.manifest_sha256, pull.run_id, time.time(),
             time.time()),
        )  # fmt: skip
    else:  # the pull the verification rests on, changed in place
        _agent_sql(rental, "UPDATE pulls SET bytes_total = 1 WHERE id = ?", (pull.id,))
    message = rental.refused("verification-chain")
    assert "the link pull → verification is broken" in message
    if how == "edited":
        assert message.count("  - [") == 1, message


def _as_v5_ledger(current: Ledger, target: Path) -> None:
    """A ledger file as rgt wrote it before the chain (schema v5), holding `current`'s rows
    (without the v6 link columns): what an existing user's ledger looks like."""
    with sqlite3.connect(target) as db:
        for step in ledger_module._MIGRATIONS[:5]:
            for statement in ledger_module._split_sql(step):
                db.execute(statement)
        db.execute("PRAGMA user_version = 5")
        db.execute("ATTACH DATABASE ? AS current", (str(current.path),))
        for table in ("instances", "instance_events", "pulls", "verifications", "approvals"):
            columns = ", ".join(r[1] for r in db.execute(f"PRAGMA main.table_info({table})"))
            db.execute(
                f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM current.{table}"
            )


def test_rows_of_a_ledger_from_before_the_chain_cannot_count(
    rental: Rental, tmp_path: Path
) -> None:
    rental.pull()
    rental.verify()
    rental.approve()
    old = tmp_path / "v5.sqlite3"
    _as_v5_ledger(rental.ledger, old)
    with Ledger.open(old) as migrated:
        assert migrated.schema_version() == ledger_module.SCHEMA_VERSION
        verification = migrated.latest_verification(rental.id)
        assert verification is not None and verification.pull_sha256 is None
        decision = may_destroy(
            rental.id, provider=rental.provider, ledger=migrated, profile=vast_profile()
        )
        codes = [item.code for item in decision.missing]
        assert codes == ["verification-chain", "approval-chain"], decision.explain()
        text = decision.explain()
        assert "from before the evidence chain" in text
        assert f"rgt verify {rental.local.resolve()}" in text and "approve again" in text
        rental.assert_alive()
        # The commands the refusal names re-create the evidence, chained.
        from rgt.verify import verify_pull

        verify_pull(rental.local, ledger=migrated)
        migrated.record_approval(rental.id, "tty", 900)
        again = may_destroy(
            rental.id, provider=rental.provider, ledger=migrated, profile=vast_profile()
        )
        assert again.allowed, again.explain()
    rental.assert_alive()


def test_an_approval_of_earlier_evidence_is_asked_again_on_the_terminal(rental: Rental) -> None:
    # Approved, then verified again: the approval approved the earlier verification row. The
    # gate refuses it; `rgt destroy` on a terminal asks the human afresh and destroys with that.
    from rgt import approval

    passphrase = "correct horse battery staple"
    approval.store_passphrase(passphrase, n=2**14)
    rental.pull()
    rental.verify()
    rental.approve()
    rental.verify()
    check = rgt("destroy", rental.id, "--check", "--json")
    assert check.returncode == 4, check.stderr
    assert [m["code"] for m in json.loads(check.stdout)["missing"]] == ["approval-chain"]
    rental.assert_alive()
    human = PtyProcess("destroy", rental.id)
    shown = human.expect("Type the instance id")
    verification = rental.ledger.latest_verification(rental.id)
    assert verification is not None
    assert f"approving binds verification #{verification.id}" in shown
    human.send(rental.id)
    human.expect("Approval passphrase")
    human.send(passphrase)
    assert human.wait(timeout=60) == 0, human.text
    assert rental.provider.show(rental.id).state == "gone" and rental.destroy_requests() == 1
    (record,) = rental.ledger.destroys(rental.id)
    used = rental.ledger.approval(record.approval_id or 0)
    assert used is not None and used.verification_sha256 == row_sha256(verification)
