"""Discard (issue 12 item 4): ending a rental whose results will not be saved, only for a
reason proven from evidence and with a human's explicit word, through the gate's single
meter-stop path. On the vast.ai emulator through the real VastProvider (vastai SDK, the box's
real sshd); every refusal proves the instance and its disk still exist and no DELETE was sent.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rgt import approval
from rgt.discard import loss_summary, may_discard
from rgt.errors import Refused
from rgt.gate import destroy_with_gate, discard_with_gate
from rgt.jobstatus import SCHEMA, TIME_FORMAT, status_remote_path
from rgt.ledger import Ledger
from tests.ironlaw_emulator import Rental, RentalPool, emulator_pool, use_pool
from tests.ironlaw_fixtures import vast_profile
from tests.ptyrun import PtyProcess

pytestmark = pytest.mark.timeout(90)
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RentalPool]:
    with emulator_pool(tmp_path_factory, {"normal": 10}) as rentals:
        yield rentals


@pytest.fixture
def rental(pool: RentalPool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Rental]:
    use_pool(pool, monkeypatch)
    box = pool.take(tmp_path)
    yield box
    box.close()


def _status(rental: Rental, outcome: str, *, checkpoint: str | None = "step-000300.pt") -> bytes:
    """Write the run's job status record on the box, as the boot hook keeps it."""
    now = time.strftime(TIME_FORMAT, time.gmtime())
    record = {
        "schema": SCHEMA,
        "run_id": rental.run_id,
        "attempt": 1,
        "outcome": outcome,
        "started": now,
        "ended": None if outcome == "running" else now,
        "heartbeat": now,
        "heartbeat_seconds": 30,
        "last_checkpoint": checkpoint,
        "exit_code": 2 if outcome == "failed" else None,
        "log_tail": ["Traceback (most recent call last):", "ImportError: no module named x"]
        if outcome == "failed"
        else [],
        "manifest": outcome == "succeeded",
    }
    path = rental.disk / status_remote_path(vast_profile(), rental.run_id).lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(record).encode()
    path.write_bytes(data)
    (path.parent / "job.log").write_text("\n".join(record["log_tail"]) + "\n")
    return data


def _copy_logs(rental: Rental) -> Path:
    """Copy the box's state dir of the run into the run's local dir, as `rgt poll` does for a
    failed job (rgt.lifecycle.job_report)."""
    from rgt.jobstatus import status_remote_dir
    from rgt.paths import run_dir

    target = run_dir(rental.run_id)
    rental.provider.copy_from(
        rental.id, status_remote_dir(vast_profile(), rental.run_id), target.parent
    )
    return target


def _decide(rental: Rental, reason: str, approval_id: int | None = None, **kw: object):
    return may_discard(
        rental.id,
        reason,
        provider=rental.provider,
        ledger=rental.ledger,
        profile=vast_profile(),
        approval_id=approval_id,
        **kw,  # type: ignore[arg-type]
    )


def _refused(rental: Rental, reason: str, code: str, approval_id: int | None = None) -> str:
    """discard_with_gate refuses naming `code`; the box, its disk and results are intact."""
    with pytest.raises(Refused, match=rf"\[{code}\]") as refusal:
        discard_with_gate(
            rental.id,
            reason,
            provider=rental.provider,
            ledger=rental.ledger,
            profile=vast_profile(),
            approval_id=-1 if approval_id is None else approval_id,
        )
    rental.assert_alive()
    assert "discard REFUSED" in str(refusal.value)
    return str(refusal.value)


def _discard_approval(rental: Rental) -> int:
    return rental.ledger.record_approval(rental.id, "tty", 300, purpose="discard")


def test_failed_job_needs_the_failure_recorded_and_its_logs_pulled(rental: Rental) -> None:
    approval_id = _discard_approval(rental)
    # No status record at all: nothing proves a failure.
    _refused(rental, "failed-job", "logs-not-pulled", _discard_approval(rental))
    _status(rental, "failed")
    message = _refused(rental, "failed-job", "logs-not-pulled", approval_id)
    assert f"rgt poll {rental.id}" in message
    _copy_logs(rental)
    decision = _decide(rental, "failed-job", _discard_approval(rental))
    assert decision.allowed, decision.explain()
    assert decision.evidence["failure"] == {"exit_code": 2, "attempt": 1, "logs": ["job.log"]}
    # The human is told what is lost: the files on the box and the last checkpoint.
    summary = loss_summary(decision)
    assert "3 file(s)" in summary and "step-000300.pt" in summary

    outcome = discard_with_gate(
        rental.id,
        "failed-job",
        provider=rental.provider,
        ledger=rental.ledger,
        profile=vast_profile(),
        approval_id=_discard_approval(rental),
    )
    assert outcome.confirmed_state == "gone" and rental.destroy_requests() == 1
    (record,) = [d for d in rental.ledger.destroys(rental.id) if d.status == "confirmed"]
    assert (record.purpose, record.reason) == ("discard", "failed-job")
    lost = json.loads(record.lost or "{}")
    assert lost["files_on_box"] == 3 and lost["last_checkpoint"] == "step-000300.pt"
    assert rental.ledger.state_history(rental.id)[-1][1:] == (
        "gone",
        "discarded by rgt (failed-job)",
    )


def test_a_job_that_did_not_fail_is_not_discarded_as_failed(rental: Rental) -> None:
    _status(rental, "succeeded")
    _copy_logs(rental)
    message = _refused(rental, "failed-job", "job-not-failed", _discard_approval(rental))
    assert "SUCCEEDED: pull, verify and destroy it instead" in message
    _status(rental, "running")
    assert "still running" in _refused(
        rental, "failed-job", "job-not-failed", _discard_approval(rental)
    )


def test_no_approval_or_the_wrong_kind_is_refused(rental: Rental) -> None:
    _status(rental, "failed")
    _copy_logs(rental)
    # Proven reason, but no discard approval: neither none, nor a destroy approval, nor one for
    # another instance, nor an expired one.
    _refused(rental, "failed-job", "no-discard-approval")
    destroy_kind = rental.ledger.record_approval(rental.id, "tty", 300)
    _refused(rental, "failed-job", "no-discard-approval", destroy_kind)
    other = rental.ledger.record_approval("77777", "tty", 300, purpose="discard")
    _refused(rental, "failed-job", "no-discard-approval", other)
    old = rental.ledger.record_approval(
        rental.id, "tty", 300, purpose="discard", now=time.time() - 3600
    )
    _refused(rental, "failed-job", "no-discard-approval", old)


def test_a_discard_approval_never_unlocks_a_destroy(rental: Rental) -> None:
    # Fully pulled and verified, only the approval missing: a discard approval does not count.
    rental.pull()
    rental.verify()
    given = _discard_approval(rental)
    for approval_id in (None, given):
        with pytest.raises(Refused, match=r"\[no-approval\]"):
            destroy_with_gate(
                rental.id,
                provider=rental.provider,
                ledger=rental.ledger,
                profile=vast_profile(),
                approval_id=approval_id,
            )
        rental.assert_alive()


def test_host_lost_only_after_the_profiles_grace(rental: Rental) -> None:
    profile = vast_profile()
    grace = profile.host_lost_grace_seconds
    assert grace == 30 * 60  # profiles/vastai.md
    message = _refused(rental, "host-lost", "host-not-lost", _discard_approval(rental))
    assert "is running" in message
    rental.emulator.take_host_offline(rental.id)
    try:
        _host_lost_after_grace(rental)
    finally:
        # The pool's other boxes may share this host.
        rental.emulator.bring_host_online(rental.id)


def _host_lost_after_grace(rental: Rental) -> None:
    deadline = time.monotonic() + 30
    while rental.provider.show(rental.id).state != "offline" and time.monotonic() < deadline:
        time.sleep(0.1)
    # First seen offline now: the clock starts, and the refusal says when to come back.
    message = _refused(rental, "host-lost", "host-lost-too-soon", _discard_approval(rental))
    assert "for 0 min" in message and "host_lost_grace is 30 min" in message
    assert rental.ledger.state_history(rental.id)[-1][1:] == ("offline", "seen by discard")
    # As if rgt's polls had seen it running 40 and offline 31 minutes ago (the ledger is the
    # evidence; the test cannot wait half an hour).
    with rental.ledger.transaction() as db:
        db.execute("DELETE FROM instance_events WHERE instance_id = ?", (rental.id,))
    rental.ledger.record_state("vastai", rental.id, "running", now=time.time() - 40 * 60)
    rental.ledger.record_state("vastai", rental.id, "offline", now=time.time() - 31 * 60)
    decision = _decide(rental, "host-lost", _discard_approval(rental))
    assert decision.allowed, decision.explain()
    assert "rgt cannot list it now" in loss_summary(decision)


def test_superseded_needs_a_later_verified_attempt_of_the_same_run(
    pool: RentalPool, rental: Rental, tmp_path: Path
) -> None:
    message = _refused(rental, "superseded", "no-later-attempt", _discard_approval(rental))
    assert f"run {rental.run_id}" in message
    # A later instance whose job delivered the same run (its manifest names the run), pulled
    # and verified.
    later = Rental(
        pool.emulator,
        tmp_path / "later",
        run_id=f"{rental.run_id}-a2",
        manifest_run_id=rental.run_id,
    )
    try:
        later.pull()
        later.verify()
        decision = _decide(rental, "superseded", _discard_approval(rental))
        assert decision.allowed, decision.explain()
        assert decision.evidence["superseded_by"]["instance_id"] == later.id
        # The later attempt's local files changed since: no longer proof.
        shutil.rmtree(later.local / "metrics")
        _refused(rental, "superseded", "no-later-attempt", _discard_approval(rental))
    finally:
        later.close()


CHECKPOINTS = "/workspace/checkpoints"


def _checkpoint(rental: Rental, step: int) -> str:
    """Write checkpoint `step` and its sidecar on the box, as the job and the durable watcher
    (scripts/_durable.sh.j2) leave them; its name."""
    import hashlib

    from rgt.durable import SIDECAR_SUFFIX, box_durable_dir

    name = f"step-{step:06d}.ckpt"
    data = f"step {step} of {rental.id}\n".encode()
    folder = rental.disk / CHECKPOINTS.lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    sums = rental.disk / box_durable_dir(vast_profile(), rental.run_id).lstrip("/") / "sums"
    sums.mkdir(parents=True, exist_ok=True)
    sidecar = f"{hashlib.sha256(data).hexdigest()} {len(data)} {name}\n"
    (sums / (name + SIDECAR_SUFFIX)).write_text(sidecar)
    return name


def _sync(rental: Rental, job: object) -> None:
    """One real durable sync round of the box (copy, hash, index)."""
    from rgt.durable import sync_once

    sync_once(rental.ledger, rental.id, provider=rental.provider, profile=vast_profile(), job=job)  # type: ignore[arg-type]


def _superseded_run(rental: Rental, later: Rental) -> int:
    """The run of `rental` as `rgt run` records it: attempt 1 on `rental` ended preempted past
    grace after its steps 5 and 10 were made durable; attempt 2 on `later`, seeded from step
    10. Returns the seed step."""
    from rgt import runs
    from rgt.providers.base import run_label

    run_id = rental.run_id
    runs.record_run(rental.ledger, run_id, provider="vastai", profile="vastai", job_file=None,
                    max_price_per_hour=1.0, budget=None, interruptible=True,
                    bid_per_hour=None, now=time.time())  # fmt: skip
    first = runs.open_attempt(rental.ledger, run_id, 1, label=run_label(run_id), offer_id="1",
                              machine_id="m1", price_per_hour=0.1, seed_name=None,
                              seed_step=None, now=time.time())  # fmt: skip
    runs.update_attempt(rental.ledger, first.id, instance_id=rental.id, ended=time.time(),
                        end_reason="preempted-past-grace", detail="paused")  # fmt: skip
    second = runs.open_attempt(rental.ledger, run_id, 2, label=run_label(run_id, 2),
                               offer_id="2", machine_id="m2", price_per_hour=0.1,
                               seed_name="step-000010.ckpt", seed_step=10,
                               now=time.time())  # fmt: skip
    runs.update_attempt(rental.ledger, second.id, instance_id=later.id)
    return 10


def test_superseded_mid_run_once_a_later_attempt_resumed_past_its_durable_seed(
    pool: RentalPool, rental: Rental, tmp_path: Path
) -> None:
    """Issue 13: no need to wait for the run's end. The superseded box may go once a later
    attempt resumed past a seed that is durable, intact and at least as new as the box's work."""
    import yaml

    from rgt.durable import files_dir
    from rgt.job import load_job
    from rgt.providers.base import OfferQuery, run_label
    from tests.ironlaw_emulator import onstart

    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({
        "run_id": rental.run_id, "image": "pytorch/pytorch:latest", "gpu": "RTX_4090:1",
        "disk_gb": 10, "command": "true", "results_root": "/workspace/results",
        "roster": ["ckpt", "metrics"], "checkpoint_dir": CHECKPOINTS,
        "checkpoint_glob": "*.ckpt", "durable": "local", "health": {"gpu_required": False},
    }))  # fmt: skip
    job = load_job(job_file)
    for step in (5, 10):
        _checkpoint(rental, step)
    _sync(rental, job)
    # Attempt 2's box: the same run, labelled as `rgt run` labels a later attempt.
    offer = rental.provider.search_offers(OfferQuery(limit=5))[0]
    box = rental.provider.create(
        offer.id,
        image="pytorch/pytorch:latest",
        disk_gb=10,
        onstart=onstart(run_id=rental.run_id),
        label=run_label(rental.run_id, 2),
    )
    later = Rental(pool.emulator, tmp_path / "later", instance_id=box.id, run_id=rental.run_id)
    try:
        seed_step = _superseded_run(rental, later)
        # The later attempt runs from its seed but wrote nothing past it yet: refused.
        message = _refused(rental, "superseded", "not-resumed", _discard_approval(rental))
        assert f"attempt 2 has not yet written a checkpoint past its seed step {seed_step}" in (
            message
        )
        # It wrote step 15, made durable: the box's work up to its step 10 is in the run.
        _checkpoint(later, 15)
        _sync(later, job)
        decision = _decide(rental, "superseded", _discard_approval(rental))
        assert decision.allowed, decision.explain()
        evidence = decision.evidence["superseded_by"]
        assert (evidence["attempt"], evidence["instance_id"]) == (2, later.id)
        assert (evidence["seed_step"], evidence["resumed_step"]) == (10, 15)
        assert evidence["resumed_via"] == "durable index"
        summary = loss_summary(decision)
        assert "this box's work after step 10" in summary and "reached step 15" in summary

        # The seed the run now depends on was altered here: refused.
        seed = files_dir(rental.run_id) / "step-000010.ckpt"
        original = seed.read_bytes()
        seed.write_bytes(original + b"x")
        message = _refused(rental, "superseded", "seed-changed", _discard_approval(rental))
        assert "step-000010.ckpt changed since it was verified" in message
        seed.write_bytes(original)

        # The superseded box (its bid won again) says it wrote step 20, past the seed: refused.
        _status(rental, "running", checkpoint=f"{CHECKPOINTS}/step-000020.ckpt")
        message = _refused(rental, "superseded", "seed-behind-box", _discard_approval(rental))
        assert "this box wrote step 20" in message and "seed step 10" in message

        # Back to its step 10: discarded through the gate, mid-run, the later box untouched.
        _status(rental, "running", checkpoint=f"{CHECKPOINTS}/step-000010.ckpt")
        outcome = discard_with_gate(
            rental.id,
            "superseded",
            provider=rental.provider,
            ledger=rental.ledger,
            profile=vast_profile(),
            approval_id=_discard_approval(rental),
        )
        assert outcome.confirmed_state == "gone"
        later.assert_alive()
    finally:
        later.close()


def test_nothing_to_keep_only_when_the_box_holds_nothing(rental: Rental) -> None:
    _status(rental, "running", checkpoint=None)
    message = _refused(rental, "nothing-to-keep", "box-not-empty", _discard_approval(rental))
    assert "holds 3 file(s)" in message
    shutil.rmtree(rental.results / "ckpt")
    shutil.rmtree(rental.results / "metrics")
    decision = _decide(rental, "nothing-to-keep", _discard_approval(rental))
    assert decision.allowed, decision.explain()
    _status(rental, "running", checkpoint="step-000010.pt")
    assert "checkpoint step-000010.pt" in "\n".join(
        m.message for m in _decide(rental, "nothing-to-keep").missing
    )


@pytest.mark.timeout(120)
def test_the_cli_asks_a_human_at_a_terminal_and_shows_what_is_lost(rental: Rental) -> None:
    approval.store_passphrase(PASSPHRASE, n=2**14)
    _status(rental, "failed")
    _copy_logs(rental)
    # Headless (an agent's shell): refused, nothing recorded, the box lives.
    import subprocess
    import sys

    headless = subprocess.run(
        [sys.executable, "-m", "rgt", "discard", rental.id, "--reason", "failed-job"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=60,
    )
    assert headless.returncode == 4 and "not a terminal" in headless.stderr, headless.stderr
    rental.assert_alive()
    # The destroy answer (the id alone) is not enough for a discard.
    typed_id = PtyProcess("discard", rental.id, "--reason", "failed-job")
    typed_id.expect(f"Type 'discard {rental.id}' to confirm")
    typed_id.send(rental.id)
    typed_id.expect("Approval passphrase")
    typed_id.send(PASSPHRASE)
    assert typed_id.wait() == 4 and f"is not 'discard {rental.id}'" in typed_id.text
    rental.assert_alive()
    # Enter alone keeps the box: a no, so no passphrase is asked and no failure is counted.
    with Ledger.open() as ledger:
        failures = len(ledger.approval_failures())
    keeps = PtyProcess("discard", rental.id, "--reason", "failed-job")
    assert "Press Enter alone to keep it." in keeps.expect(f"Type 'discard {rental.id}'")
    keeps.send("")
    assert keeps.wait() == 4 and "the discard was declined" in keeps.text, keeps.text
    assert "Approval passphrase" not in keeps.text
    with Ledger.open() as ledger:
        assert len(ledger.approval_failures()) == failures
    rental.assert_alive()
    # A human at the terminal sees what is lost, types the phrase and the passphrase.
    human = PtyProcess("discard", rental.id, "--reason", "failed-job")
    shown = human.expect(f"Type 'discard {rental.id}' to confirm")
    assert "What is LOST" in shown and "step-000300.pt" in shown and "3 file(s)" in shown
    human.send(f"discard {rental.id}")
    human.expect("Approval passphrase")
    human.send(PASSPHRASE)
    assert human.wait(timeout=60) == 0, human.text
    assert "discarded (failed-job)" in human.text
    assert rental.provider.show(rental.id).state == "gone"
    with Ledger.open() as ledger:
        assert [d.purpose for d in ledger.destroys(rental.id) if d.status == "confirmed"] == [
            "discard"
        ]


class _DiscardHuman:
    """Answers the MCP discard prompt as a person in the client UI would (scripted)."""

    def __init__(self, confirm: str, passphrase: str) -> None:
        self.confirm = confirm
        self.passphrase = passphrase
        self.asked: list[object] = []

    async def __call__(self, context: object, params: object) -> object:
        from mcp.types import ElicitResult

        self.asked.append(params)
        return ElicitResult(
            action="accept", content={"confirm": self.confirm, "passphrase": self.passphrase}
        )


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_mcp_discard_asks_the_human_with_the_passphrase(rental: Rental) -> None:
    from tests.mcp_client import connect

    _status(rental, "failed")
    human = _DiscardHuman(f"discard {rental.id}", "not the passphrase")
    async with connect(rental.emulator, "auto", human, passphrase_set=False) as session:  # type: ignore[arg-type]
        arguments = {"instance_id": rental.id, "reason": "failed-job"}
        # Logs not copied yet: refused before the human is asked.
        early = await session.data("discard", arguments)
        assert early["outcome"] == "missing-evidence" and not human.asked
        assert [m["code"] for m in early["missing"]] == ["logs-not-pulled"]
        _copy_logs(rental)
        # No passphrase configured: a discard is never approved by typing alone.
        unset = await session.data("discard", arguments)
        assert unset["outcome"] == "no-passphrase" and not human.asked
        approval.store_passphrase(PASSPHRASE, n=2**10)
        wrong = await session.data("discard", arguments)
        assert wrong["outcome"] == "refused" and "wrong approval passphrase" in wrong["message"]
        rental.assert_alive()
        shown = str(getattr(human.asked[0], "message", ""))
        assert "What is LOST" in shown and "step-000300.pt" in shown
        human.passphrase = PASSPHRASE
        done = await session.data("discard", arguments)
        assert done["discarded"] is True and done["lost"]["files_on_box"] == 3, done
    assert rental.provider.show(rental.id).state == "gone"
    with Ledger.open() as ledger:
        assert [a.purpose for a in ledger.approvals(rental.id)] == ["discard"]
        (record,) = [d for d in ledger.destroys(rental.id) if d.status == "confirmed"]
        assert (record.purpose, record.reason) == ("discard", "failed-job")
