"""Human approval: passphrase on a real pseudo-terminal, refusals without one, rate limiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rgt import approval
from rgt.errors import EXIT_REFUSED, Refused
from rgt.ledger import Ledger
from tests.ptyrun import PtyProcess

PASSPHRASE = "correct horse battery staple"
CHEAP_N = 2**14  # scrypt cost for tests that store the hash through the API


def _configure() -> None:
    approval.store_passphrase(PASSPHRASE, n=CHEAP_N)


@pytest.fixture
def box(emulator: object) -> str:
    """A real instance on the emulator, in the ledger as `rgt launch` records it: `rgt approve`
    approves only an instance that the ledger and the provider both know."""
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider, run_label

    provider = VastProvider()
    offer = provider.search_offers(OfferQuery(limit=1))[0]
    instance = provider.create(
        offer.id, image="img", disk_gb=10, onstart="sleep 600", label=run_label("approve")
    )
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", instance.id, label=run_label("approve"), state="created")
    return str(instance.id)


@pytest.mark.timeout(60)
def test_init_then_approve_on_a_real_terminal(isolated_user: Path, box: str) -> None:
    init = PtyProcess("approval", "init")
    init.expect("New approval passphrase")
    init.send(PASSPHRASE)
    init.expect("Repeat it")
    init.send(PASSPHRASE)
    assert init.wait() == 0, init.text
    assert PASSPHRASE not in init.text  # getpass does not echo

    stored = approval.approval_path()
    assert oct(stored.stat().st_mode & 0o777) == "0o600"
    document = json.loads(stored.read_text())
    assert document["kdf"] == "scrypt" and document["n"] == 2**17 and len(document["salt"]) == 32
    assert PASSPHRASE not in stored.read_text()

    approve = PtyProcess("approve", box)
    shown = approve.expect("Type the instance id")
    # The human sees what rgt knows before saying yes: here, nothing was pulled.
    assert "pulled    NOTHING yet" in shown and "verified  NO" in shown
    approve.send(box)
    approve.expect("Approval passphrase")
    approve.send(PASSPHRASE)
    assert approve.wait() == 0, approve.text
    with Ledger.open() as ledger:
        (record,) = ledger.approvals(box)
        assert record.channel == "tty" and record.consumed is None
        assert 14 * 60 < record.expires - record.created <= 15 * 60
    # Neither the passphrase nor its hash ever reaches the ledger.
    for path in (p for p in (isolated_user / "state").rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert PASSPHRASE.encode() not in data and document["hash"].encode() not in data


@pytest.mark.timeout(60)
def test_changing_the_passphrase_needs_the_current_one(isolated_user: Path) -> None:
    _configure()
    before = approval.approval_path().read_bytes()
    change = PtyProcess("approval", "init")
    change.expect("Current approval passphrase")
    change.send("not the passphrase at all")
    assert change.wait() == EXIT_REFUSED, change.text
    assert "wrong current passphrase" in change.text
    assert approval.approval_path().read_bytes() == before


@pytest.mark.timeout(30)
def test_no_terminal_refuses_and_says_how(isolated_user: Path, box: str) -> None:
    _configure()
    # No controlling terminal (new session) and stdin from /dev/null: what an agent's shell has.
    for args in (["approve", box], ["approval", "init"]):
        done = subprocess.run(
            [sys.executable, "-m", "rgt", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
        )
        assert done.returncode == EXIT_REFUSED, done.stderr
        assert "not a terminal" in done.stderr
        assert "Traceback" not in done.stderr
    assert (
        f"rgt approve {box}"
        in subprocess.run(
            [sys.executable, "-m", "rgt", "approve", box],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
        ).stderr
    )
    with Ledger.open() as ledger:
        assert ledger.approvals() == []


@pytest.mark.timeout(30)
def test_no_passphrase_configured_refuses(isolated_user: Path, box: str) -> None:
    child = PtyProcess("approve", box)
    assert child.wait() == EXIT_REFUSED
    assert "rgt approval init" in child.text


@pytest.mark.timeout(30)
def test_wrong_passphrase_and_mistyped_id_are_refused_and_recorded(
    isolated_user: Path, box: str
) -> None:
    _configure()
    wrong = PtyProcess("approve", box)
    wrong.expect("Type the instance id")
    wrong.send(box)
    wrong.expect("Approval passphrase")
    wrong.send("guess guess guess")
    assert wrong.wait() == EXIT_REFUSED
    assert "wrong approval passphrase" in wrong.text

    mistyped = PtyProcess("approve", box)
    mistyped.expect("Type the instance id")
    mistyped.send(box + "9")
    mistyped.expect("Approval passphrase")
    mistyped.send(PASSPHRASE)
    assert mistyped.wait() == EXIT_REFUSED
    assert f"is not '{box}'" in mistyped.text

    with Ledger.open() as ledger:
        assert ledger.approvals() == []
        reasons = [f["reason"] for f in ledger.approval_failures()]
        assert reasons == ["wrong passphrase", "instance id typed back differs"]


@pytest.mark.timeout(30)
def test_rate_limit_survives_a_restart(isolated_user: Path, box: str) -> None:
    _configure()
    with Ledger.open() as ledger:
        for _ in range(approval.FREE_FAILURES):
            with pytest.raises(Refused, match="wrong approval passphrase"):
                approval.approve_with_passphrase(
                    ledger, box, typed_instance_id=box, passphrase="nope nope nope"
                )
        # Locked out now, even with the right passphrase.
        with pytest.raises(Refused, match="try again in"):
            approval.approve_with_passphrase(
                ledger, box, typed_instance_id=box, passphrase=PASSPHRASE
            )
    # A new process (the CLI on a terminal) is still locked out: the backoff lives in the ledger.
    child = PtyProcess("approve", box)
    assert child.wait() == EXIT_REFUSED
    assert "try again in" in child.text and "Approval passphrase" not in child.text
    with Ledger.open() as ledger:
        later = time.time() + approval.backoff_seconds(approval.FREE_FAILURES) + 1
        approval_id = approval.approve_with_passphrase(
            ledger, box, typed_instance_id=box, passphrase=PASSPHRASE, now=later
        )
        assert approval_id > 0
        # A success resets the count.
        assert approval.wait_remaining(ledger, now=later) == 0


def test_backoff_doubles_and_is_capped() -> None:
    assert [approval.backoff_seconds(n) for n in range(6)] == [0, 0, 0, 5, 10, 20]
    assert approval.backoff_seconds(100) == approval.BACKOFF_MAX_SECONDS


def test_short_passphrase_and_broken_file_are_one_line_errors(isolated_user: Path) -> None:
    with pytest.raises(Exception, match="at least 10 are required"):
        approval.store_passphrase("short")
    approval.approval_path().parent.mkdir(parents=True, exist_ok=True)
    approval.approval_path().write_text("{not json")
    with pytest.raises(Refused, match="unreadable approval file"):
        approval.check_passphrase(PASSPHRASE)


def test_env_is_not_a_channel(isolated_user: Path) -> None:
    # The passphrase cannot be smuggled in by environment or argument: the only inputs are the
    # terminal prompts. (Guard against someone adding such a shortcut later.)
    source = Path(approval.__file__).read_text()
    assert "os.environ" not in source and "argv" not in source
    assert os.environ.get("RGT_APPROVAL_PASSPHRASE") is None


def test_a_broken_approval_file_is_not_configured_and_says_how_to_start_over(
    isolated_user: Path,
) -> None:
    # Was: `rgt approval status` said "configured" (exit 0), and the error said "re-run
    # `rgt approval init`", which asks for the current passphrase and fails the same way.
    approval.approval_path().parent.mkdir(parents=True, exist_ok=True)
    approval.approval_path().write_text("{not json")
    status = subprocess.run(
        [sys.executable, "-m", "rgt", "approval", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 4 and status.stdout == ""
    assert status.stderr.count("\n") == 1
    assert f"rm {approval.approval_path()}" in status.stderr


@pytest.mark.timeout(60)
def test_ctrl_d_at_a_passphrase_prompt_refuses_in_one_line(isolated_user: Path, box: str) -> None:
    # Was exit 70 "internal error: EOFError" (QA): getpass raises EOFError on Ctrl-D.
    init = PtyProcess("approval", "init")
    init.expect("New approval passphrase")
    os.write(init.fd, b"\x04")
    assert init.wait() == EXIT_REFUSED, init.text
    assert "no answer on the terminal; the approval passphrase is unchanged" in init.text
    assert "internal error" not in init.text and not approval.is_configured()

    approval.store_passphrase(PASSPHRASE)
    approve = PtyProcess("approve", box)
    approve.expect("Type the instance id")
    approve.send(box)
    approve.expect("Approval passphrase")
    os.write(approve.fd, b"\x04")
    assert approve.wait() == EXIT_REFUSED, approve.text
    assert "no answer on the terminal; nothing approved" in approve.text
    assert "internal error" not in approve.text


@pytest.mark.timeout(60)
def test_an_id_rgt_does_not_know_is_not_approved(isolated_user: Path, box: str) -> None:
    # Was: a 24 h approval for an id that did not exist yet, which later destroyed the instance
    # that got that id with no prompt. Now refused before any prompt, and nothing is recorded.
    _configure()
    unknown = str(int(box) + 1000)
    child = PtyProcess("approve", unknown, "--ttl-minutes", "1440")
    assert child.wait() == 2, child.text
    assert f"instance {unknown}: not in rgt's ledger" in child.text
    assert "Type the instance id" not in child.text

    # In the ledger but destroyed since (the provider no longer has it): refused too.
    gone = str(int(box) + 2000)
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", gone, label="rgt:gone", state="created")
    child = PtyProcess("approve", gone)
    assert child.wait() == 2, child.text
    assert f"instance {gone}: the provider reports it gone" in child.text
    with Ledger.open() as ledger:
        assert ledger.approvals() == []


@pytest.mark.timeout(60)
def test_a_refused_destroy_spends_the_approval_given_for_it(isolated_user: Path, box: str) -> None:
    # Was: approved, the destroy refused (nothing pulled), and the approval stayed usable for
    # 15 minutes for whatever came next. The refused attempt spends it.
    _configure()
    with Ledger.open() as ledger:
        approval_id = ledger.record_approval(box, "tty", 900)
    done = subprocess.run(
        [sys.executable, "-m", "rgt", "destroy", box],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=60,
    )
    assert done.returncode == EXIT_REFUSED and "[no-pull]" in done.stderr, done.stderr
    with Ledger.open() as ledger:
        record = ledger.approval(approval_id)
        assert record is not None and record.consumed is not None
        assert ledger.usable_approval(box) is None
        assert any(
            "spent by a refused destroy (" in f["reason"] for f in ledger.approval_failures()
        )
    # A dry run (--check) is not an attempt: it spends nothing.
    with Ledger.open() as ledger:
        fresh = ledger.record_approval(box, "tty", 900)
    subprocess.run(
        [sys.executable, "-m", "rgt", "destroy", box, "--check"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        start_new_session=True,
        timeout=60,
    )
    with Ledger.open() as ledger:
        assert ledger.usable_approval(box) is not None and ledger.usable_approval(box).id == fresh


@pytest.mark.timeout(60)
def test_a_wrong_current_passphrase_at_init_is_recorded_and_rate_limited(
    isolated_user: Path,
) -> None:
    """`approval init`'s check of the current passphrase is a guess like `rgt approve`'s: every
    wrong answer is in the ledger, and after the free ones init refuses before it asks (the
    same backoff budget as `rgt approve`, so guesses cannot be spread over the two)."""
    _configure()
    before = approval.approval_path().read_bytes()
    for attempt in range(approval.FREE_FAILURES):
        change = PtyProcess("approval", "init")
        change.expect("Current approval passphrase")
        change.send(f"guess number {attempt}")
        assert change.wait() == EXIT_REFUSED, change.text
        assert "wrong current passphrase" in change.text
    locked = PtyProcess("approval", "init")
    assert locked.wait() == EXIT_REFUSED, locked.text
    assert "try again in" in locked.text and "Current approval passphrase" not in locked.text
    assert approval.approval_path().read_bytes() == before
    with Ledger.open() as ledger:
        reasons = [f["reason"] for f in ledger.approval_failures()]
        assert reasons == ["approval init: wrong current passphrase"] * approval.FREE_FAILURES
        # One budget: `rgt approve` is locked out by init's wrong answers too.
        assert approval.wait_remaining(ledger) > 0


@pytest.mark.timeout(60)
def test_init_never_replaces_a_passphrase_stored_while_it_was_asking(
    isolated_user: Path,
) -> None:
    """The first `approval init` does not silently overwrite a passphrase another process
    stored between its check and its write: it refuses and the other hash stays."""
    init = PtyProcess("approval", "init")
    init.expect("New approval passphrase")
    init.send(PASSPHRASE)
    init.expect("Repeat it")
    _configure()  # someone else (e.g. an agent) got there first
    before = approval.approval_path().read_bytes()
    init.send(PASSPHRASE)
    assert init.wait() == EXIT_REFUSED, init.text
    assert "was set while" in init.text
    assert approval.approval_path().read_bytes() == before
