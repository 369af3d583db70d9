"""`rgt run` end to end on the emulator (real vastai SDK, real sshd and rsync on loopback, the
real rendered boot hook running the example job's resumable trainer): a box lost to a preemption
past the profile's spot_grace, stuck loading (VAST13) or scheduling (VAST3), offline (VAST7) past
its host_lost_grace, destroyed outside rgt, or whose boot hook died on a running box is replaced
by another offer (never on a machine whose host was lost; a preempted one may be rented again)
that resumes from the newest durable checkpoint; a succeeded box whose results stay unreachable
ends the run with exit 3 past the grace; a supervisor killed with -9 and started again rents
nothing twice; the budget stops relaunching; a failed job is reported, not relaunched.

One emulator for the module, sped up (TIME_SCALE) so the profile's 30-minute host_lost_grace
passes in seconds of real time: the supervisor in these tests reads the emulator's clock (the
same graces, measured on the platform's time); the job itself runs in real time."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rgt import runs
from rgt.errors import CheckFailed, ProviderError, RunStopped
from rgt.job import load_job
from rgt.ledger import Ledger
from rgt.profile import load_profile
from rgt.supervisor import RunOutcome, RunRequest, Supervisor
from tests.conftest import CANARY_API_KEY, assert_no_canary

REPO = Path(__file__).resolve().parents[1]
# 30 simulated minutes (vast.ai's host_lost_grace) in 6 real seconds.
TIME_SCALE = 300.0
STEPS, STEP_SECONDS, CKPT_EVERY = 40, 0.1, 5
HOLD_AT = 20  # a fresh start told to hold stops there until its box is lost
MAX_PRICE = 5.0
# A resumable trainer in the job's command (no `files`): a relaunch's boot hook (the seed's wait
# and check on top of the durable watcher) must stay under vast.ai's 16 KiB onstart limit, which
# the example job's Python trainer passes by a few hundred bytes only without a seed. With
# HOLD_AT set, a fresh start (not a resumed one) holds at that step: the test decides when its
# box is lost, whatever the load of the machine. With HOLD_FILE set, a resumed start holds
# after its first checkpoint past its seed while that file (on this machine) exists.
TRAINER = (
    'c="$RGT_CHECKPOINT_DIR"; s=0; [ -z "$RGT_RESUME_FROM" ] || s=$(cat "$RGT_RESUME_FROM"); b=$s; '
    'echo $s >>"$c/starts.log"; while [ $s -lt {steps} ]; do sleep "$STEP_SECONDS"; s=$((s+1)); '
    'if [ $((s % {every})) = 0 ]; then echo $s >"$c/.tmp"; '
    'mv "$c/.tmp" "$c/step-$(printf %06d $s).ckpt"; fi; '
    'while [ "$b" = 0 ] && [ "${{HOLD_AT:-0}}" -gt 0 ] && [ $s -ge "${{HOLD_AT:-0}}" ]; '
    "do sleep 1; done; "
    'while [ "$b" != 0 ] && [ -e "${{HOLD_FILE:-/nonexistent}}" ] && [ $s -gt "$b" ] '
    "&& [ $((s % {every})) = 0 ]; do sleep 1; done; done; "
    'r="$RGT_RESULTS_ROOT/cell-a"; mkdir -p "$r"; '
    'echo "{{\\"steps\\": $s, \\"start\\": $b}}" >"$r/metrics.json"'
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from rgt.sim import Emulator

    emulator = Emulator(
        state_dir=tmp_path_factory.mktemp("sim"),
        api_key=CANARY_API_KEY,
        time_scale=TIME_SCALE,
        balance=1e9,  # sped-up time bills fast; the account must not run dry mid-test
    ).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def emulator(sim: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """This test's view of the module's emulator (its own HOME, state and ledger)."""
    monkeypatch.setenv("VAST_URL", sim.url)
    for name, value in sim.client_environment().items():
        monkeypatch.setenv(name, value)
    return sim


def _write_job(
    directory: Path,
    run_id: str,
    *,
    hold: bool = False,
    hold_file: Path | None = None,
    **changes: Any,
) -> Path:
    data = yaml.safe_load((REPO / "schemas" / "job.example.yaml").read_text())
    data.update(run_id=run_id, durable="local", files={}, setup="")
    data["command"] = TRAINER.format(steps=STEPS, every=CKPT_EVERY)
    data["env"] = {"STEP_SECONDS": str(STEP_SECONDS)}
    if hold:
        data["env"]["HOLD_AT"] = str(HOLD_AT)
    if hold_file is not None:
        data["env"]["HOLD_FILE"] = str(hold_file)
    data.update(changes)
    path = directory / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Run:
    """A supervisor of one run in a thread of this test, on the emulator's clock (or `clock`)."""

    def __init__(
        self,
        emulator: Any,
        job_file: Path,
        *,
        on_line: Any = None,
        approve_discard: Any = None,
        clock: Any = None,
        **request: Any,
    ) -> None:
        from rgt.providers.vastai import VastProvider

        self.emulator = emulator
        self.job = load_job(job_file)
        self.lines: list[str] = []
        self.on_line = on_line  # called with each line the supervisor says, in its thread
        self.clock = clock or emulator.clock.now  # the supervisor's; default the platform's
        self.looks = 0  # the supervisor's looks at a running attempt (it sleeps after each)
        self.outcome: RunOutcome | None = None
        self.error: BaseException | None = None
        request = {"max_price_per_hour": MAX_PRICE, **request}
        self.request = RunRequest(job=self.job, job_file=str(job_file), **request)
        self.provider = VastProvider()
        self.approve_discard = approve_discard
        self.thread = threading.Thread(target=self._supervise, daemon=True)

    def _supervise(self) -> None:
        with Ledger.open() as ledger:
            supervisor = Supervisor(
                self.request,
                provider=self.provider,
                ledger=ledger,
                profile=load_profile("vastai"),
                approve=_approve_like_the_e2e_tests,
                approve_discard=self.approve_discard,
                say=self._say,
                clock=self.clock,
                sleep=self._sleep,
                interval=0.3,
            )
            try:
                self.outcome = supervisor.supervise()
            except BaseException as exc:
                self.error = exc

    def _sleep(self, seconds: float) -> None:
        self.looks += 1
        time.sleep(seconds)

    def _say(self, line: str) -> None:
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def start(self) -> Run:
        self.thread.start()
        return self

    def join(self, seconds: float = 150) -> None:
        self.thread.join(seconds)
        assert not self.thread.is_alive(), f"the supervisor still runs: {self.lines[-5:]}"

    def attempts(self) -> list[runs.AttemptRecord]:
        with Ledger.open() as ledger:
            return runs.attempts(ledger, self.job.run_id)

    def instance(self, number: int) -> str:
        """The instance of attempt `number`, once it is rented."""
        found = _wait_for(
            lambda: len(a := self.attempts()) >= number and a[number - 1].instance_id,
            f"attempt {number} to rent",
        )
        return str(found)

    def box(self, instance_id: str) -> Path:
        return Path(self.emulator.instance_disk(instance_id))

    def checkpoint_starts(self, instance_id: str) -> list[int]:
        """The step the trainer started from, at each start on this box (its starts.log)."""
        path = self.box(instance_id) / "workspace/checkpoints/starts.log"
        return [int(line) for line in path.read_text().split()] if path.is_file() else []


def _approve_like_the_e2e_tests(ledger: Ledger, instance_id: str, _summary: str) -> int:
    """The approval path the other e2e tests use: a recorded terminal approval (the prompt
    itself needs a TTY and a passphrase, tested in test_approval.py)."""
    return ledger.record_approval(instance_id, "tty", 900)


def _wait_for(check: Any, what: str, seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)
    return value


def _newest_durable_step(run_id: str) -> int:
    from rgt.durable import newest_durable

    newest = newest_durable(run_id)
    return -1 if newest is None or newest.step is None else int(newest.step)


def _creates(emulator: Any) -> int:
    return int(emulator.request_count("PUT", "/api/v0/asks/*"))


def _machine(emulator: Any, instance_id: str) -> str:
    return str(emulator.world.show(int(instance_id))["machine_id"])


def _other_renters_take(provider: Any, offers_now: Any, label: str) -> list[str]:
    """Other renters take each offer `offers_now()` lists until it lists none (the emulator
    lists an offer while its machine has GPUs free); their instance ids."""
    from rgt.providers.base import run_label

    taken: list[str] = []
    while offers := offers_now():
        taken.append(
            provider.create(
                offers[0].id,
                image="other/renter",
                disk_gb=10,
                onstart="true",
                label=run_label(f"{label}-{len(taken)}"),
            ).id
        )
    return taken


def _assert_relaunched_from_durable(
    run: Run, reason: str, *, machine_lost: bool = True
) -> tuple[str, str]:
    """The run ended done on attempt 2, after attempt 1 ended for `reason`; attempt 2 started
    from its seed checkpoint's step (not 0), on another machine when the first one's host was
    lost (`machine_lost`). (first, second) instance."""
    run.join()
    assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
    assert run.outcome is not None and run.outcome.status == "done", run.outcome
    first, second = run.attempts()
    assert (first.end_reason, second.end_reason) == (reason, "succeeded")
    if machine_lost:
        assert first.machine_id != second.machine_id  # never the lost machine again
    assert second.seed_step is not None and second.seed_step > 0, second
    # The trainer on the second box started from the seed's step, not from step 0 (it says so
    # in its results, pulled and verified before its box was destroyed).
    assert run.outcome.results_dir is not None
    metrics = json.loads(Path(run.outcome.results_dir, "cell-a/metrics.json").read_text())
    assert metrics == {"steps": STEPS, "start": second.seed_step}
    return str(first.instance_id), str(second.instance_id)


@pytest.mark.timeout(240)
def test_a_preemption_past_grace_relaunches_elsewhere_from_the_newest_durable_step(
    emulator: Any, tmp_path: Path
) -> None:
    before = _creates(emulator)
    run = Run(emulator, _write_job(tmp_path, "spot-run", hold=True), interruptible=True).start()
    first = run.instance(1)
    # Preempt once a checkpoint past the first is durable off the box (copied and verified).
    _wait_for(lambda: _newest_durable_step("spot-run") >= 2 * CKPT_EVERY, "a durable checkpoint")
    lost_machine = _machine(emulator, first)
    emulator.preempt(first)
    first_id, second_id = _assert_relaunched_from_durable(
        run, "preempted-past-grace", machine_lost=False
    )
    assert first_id == first
    one, two = run.attempts()
    # Outbid is not a bad host: the cheapest offer is still on that machine (another of its
    # GPUs), and the relaunch rents it again (it was excluded before issue 13's second round).
    assert one.machine_id == lost_machine == two.machine_id
    assert _creates(emulator) - before == 2  # one box per attempt, nothing rented twice
    # The superseded box is not destroyed (its results were never verified): it still exists,
    # and the outcome says how to resolve it; the finished box was destroyed through the gate.
    assert int(first) in emulator.instance_ids()
    assert int(second_id) not in emulator.instance_ids()
    assert run.outcome is not None and run.outcome.superseded == [first]
    assert "--reason superseded" in run.outcome.message
    # Until it is resolved, sweep flags it; a discard for --reason superseded is proven now
    # that a later attempt's results are verified (the human's approval aside).
    from rgt.discard import may_discard
    from rgt.sweep import sweep

    profile = load_profile("vastai")
    with Ledger.open() as ledger:
        report = sweep(provider=run.provider, ledger=ledger, profile=profile)
        (row,) = [r for r in report.rows if r.instance_id == first]
        assert "superseded" in row.flags
        decision = may_discard(
            first,
            "superseded",
            provider=run.provider,
            ledger=ledger,
            profile=profile,
            require_approval=False,
        )
    assert decision.allowed, decision.explain()


def _state(run: Run, instance_id: str) -> str:
    """The instance's state as rgt's provider reports it (paused, stopped, gone, ...)."""
    return run.provider.show(instance_id).state


@pytest.mark.timeout(240)
def test_a_superseded_box_that_runs_again_is_stopped_and_reported_discardable_mid_run(
    emulator: Any, tmp_path: Path
) -> None:
    """Issue 13: a preempted box whose bid wins again re-runs the job and bills compute: the
    supervisor stops it (the disk stays); once the next attempt resumed past its durable seed,
    a run without a human to ask (detached, MCP) names the box discardable now."""
    from rgt.supervisor import run_report

    hold = tmp_path / "hold"
    hold.touch()
    job = _write_job(tmp_path, "comeback-run", hold=True, hold_file=hold)
    run = Run(emulator, job, interruptible=True).start()
    try:
        first = run.instance(1)
        _wait_for(lambda: _newest_durable_step("comeback-run") >= HOLD_AT, "step 20 durable")
        emulator.preempt(first)
        second = run.instance(2)
        emulator.win_bid(first)  # the higher bid ended: the old box resumes its job
        said = f"superseded instance {first} (attempt 1) runs again"
        _wait_for(lambda: any(said in line for line in run.lines), "the old box to be stopped")
        assert _state(run, first) == "stopped"
        assert run.box(first).is_dir()  # stopped, never destroyed: its disk stays
        with Ledger.open() as ledger:
            assert ("stopped", "stopped by rgt") in [
                (state, detail) for _, state, detail in ledger.state_history(first)
            ]
        # Attempt 2 writes its first checkpoint past the seed and holds: made durable, the old
        # box may go now; with no human to ask, the run's report says so, with the command.
        seed = run.attempts()[1].seed_step
        assert seed is not None and seed >= HOLD_AT
        _wait_for(lambda: _newest_durable_step("comeback-run") > seed, "a step past the seed")

        def reported() -> Any:
            with Ledger.open() as ledger:
                report = run_report(ledger, "comeback-run")
            return report if report and report["discardable"] else None

        report = _wait_for(reported, "the run's report to name the old box discardable")
        assert report["discardable"] == [first]
        assert f"`rgt discard {first} --reason superseded`" in report["next_action"]
        assert int(second) in emulator.instance_ids()
    finally:
        hold.unlink()
    run.join()
    assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
    assert int(first) in emulator.instance_ids()  # nobody approved: it is not discarded
    assert run.outcome is not None and run.outcome.superseded == [first]


@pytest.mark.timeout(240)
def test_the_human_is_asked_once_per_superseded_box_and_its_yes_discards_it_mid_run(
    emulator: Any, tmp_path: Path
) -> None:
    """An attached supervisor asks once per box (shown what is lost): a "no" is never asked
    again; a yes discards the box through the gate while the run goes on."""
    asked: list[tuple[str, str]] = []

    def human(ledger: Ledger, instance_id: str, summary: str) -> int | None:
        asked.append((instance_id, summary))
        if len(asked) == 1:
            return None  # "no"
        return ledger.record_approval(instance_id, "tty", 300, purpose="discard")

    hold = tmp_path / "hold"
    hold.touch()
    job = _write_job(tmp_path, "ask-run", hold=True, hold_file=hold)
    run = Run(emulator, job, interruptible=True, approve_discard=human).start()
    try:
        first = run.instance(1)
        _wait_for(lambda: _newest_durable_step("ask-run") >= HOLD_AT, "step 20 durable")
        emulator.preempt(first)
        second = run.instance(2)
        _wait_for(lambda: asked, "the human to be asked about the first box")
        assert asked[0][0] == first and "What is LOST" in asked[0][1]
        assert "this box's work after step" in asked[0][1]
        # Attempt 2 holds after its first durable step past the seed; then it is lost too.
        seed = run.attempts()[1].seed_step
        assert seed is not None
        _wait_for(lambda: _newest_durable_step("ask-run") > seed, "a step past the seed")
        emulator.preempt(second)
        run.instance(3)
        _wait_for(lambda: _state(run, second) == "gone", "the yes to discard it")
    finally:
        hold.unlink()
    run.join()
    assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
    assert [instance for instance, _ in asked] == [first, second]  # the first: once only
    assert int(first) in emulator.instance_ids()
    with Ledger.open() as ledger:
        (record,) = [d for d in ledger.destroys(second) if d.status == "confirmed"]
    assert (record.purpose, record.reason) == ("discard", "superseded")
    assert run.outcome is not None and run.outcome.superseded == [first]


# The approval passphrase of the terminal tests, stored at a cheap scrypt cost.
PASSPHRASE = "correct horse battery staple"


def _read_while(human: Any, check: Any, what: str, seconds: float = 120) -> Any:
    """_wait_for that keeps reading the terminal meanwhile (a full pty would block rgt)."""
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"never happened: {what}; terminal:\n{human.text}"
        human._read(0.1)
    return value


def _instance_of(run_id: str, number: int) -> str | None:
    with Ledger.open() as ledger:
        history = runs.attempts(ledger, run_id)
    return history[number - 1].instance_id if len(history) >= number else None


def _asked_on_a_terminal(emulator: Any, tmp_path: Path, run_id: str) -> tuple[Any, str, str, Path]:
    """`rgt run --interruptible` on a real pseudo-terminal: its first box is preempted past a
    durable step; the second resumes past its seed and holds while `hold` exists; the
    supervisor asks the human at the terminal to discard the first box. Returns (the terminal,
    first, second, hold) with the question on the screen."""
    from rgt import approval
    from tests.ptyrun import PtyProcess

    approval.store_passphrase(PASSPHRASE, n=2**14)
    hold = tmp_path / "hold"
    hold.touch()
    job = _write_job(tmp_path, run_id, hold=True, hold_file=hold)
    human = PtyProcess(
        "run", str(job), "--max-price", str(MAX_PRICE), "--interruptible", "--interval", "0.3"
    )
    first = _read_while(human, lambda: _instance_of(run_id, 1), "attempt 1 to rent")
    _read_while(human, lambda: _newest_durable_step(run_id) >= HOLD_AT, "step 20 durable")
    emulator.preempt(first)
    second = _read_while(human, lambda: _instance_of(run_id, 2), "attempt 2 to rent")
    human.expect(f"Type 'discard {first}' to confirm: ", timeout=120)
    return human, str(first), str(second), hold


def _give_back_boxes(emulator: Any, run_id: str) -> None:
    """Destroy the run's boxes in the emulator itself (test clean-up, not rgt): the module's
    later tests rent from the same marketplace, and an outbid box keeps its GPU taken."""
    with Ledger.open() as ledger:
        boxes = [a.instance_id for a in runs.attempts(ledger, run_id) if a.instance_id]
    for box in boxes:
        if int(box) in emulator.instance_ids():
            emulator.world.destroy(int(box))


def _kill_group(human: Any) -> None:
    """kill -9 the terminal's rgt and its children (rsync, ssh); reap it (once)."""
    if human.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(human.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(human.pid, 0)
    os.close(human.fd)
    human.returncode = -signal.SIGKILL


@pytest.mark.timeout(300)
def test_status_lines_wait_while_the_discard_question_is_open_on_the_terminal(
    emulator: Any, tmp_path: Path
) -> None:
    """The question runs in a background thread while the run is watched: a status line due
    meanwhile (here: attempt 2 lost, attempt 3 rented) is written after the answer, not into
    the question (old code: `rgt run: attempt 2 ...` landed between the summary and the
    `Type 'discard ID'` line, or after it, where the human types)."""
    human, first, second, hold = _asked_on_a_terminal(emulator, tmp_path, "question-run")
    try:
        emulator.preempt(second)
        # Attempt 3 rented: its supervisor has said attempt 2's end and attempt 3's offer.
        third = _read_while(human, lambda: _instance_of("question-run", 3), "attempt 3")
        while human._read(0.2):
            pass  # what rgt wrote so far is on the terminal
        question = human.text[human.text.index(f"Discard instance {first} (superseded") :]
        assert "rgt run:" not in question, question  # whole: no status line inside it
        assert question.rstrip().endswith(f"Type 'discard {first}' to confirm:"), question
        human.send("")  # Enter alone: keep it
        human.expect(f"rgt run: attempt 3: instance {third} rented")
        answered = human.text.index(f"Type 'discard {first}' to confirm: ")
        held = human.text.index(f"attempt 2 (instance {second}): preempted-past-grace")
        assert answered < held
        assert "Approval passphrase" not in human.text[answered:]  # a no asks no passphrase
    finally:
        hold.unlink()
        _kill_group(human)
        _give_back_boxes(emulator, "question-run")
    with Ledger.open() as ledger:
        assert ledger.approval_failures() == []  # a no is not a wrong answer


@pytest.mark.timeout(300)
def test_a_declined_discard_is_never_asked_again_by_the_supervisor_that_takes_over(
    emulator: Any, tmp_path: Path
) -> None:
    """The human's no is kept in the ledger (v9), not in the supervisor's memory: killed with
    -9 and taken over, the run's next supervisor never asks about that box again (old code:
    it asked again); `rgt poll RUN_ID` lists the box discardable and says when the no was
    given; an explicit `rgt discard` still may end it."""
    from rgt.discard import may_discard
    from rgt.supervisor import run_report

    human, first, second, hold = _asked_on_a_terminal(emulator, tmp_path, "declined-run")
    run: Run | None = None
    try:
        human.send("")  # Enter alone: keep it
        human.expect(f"superseded instance {first}: not discarded")
        _kill_group(human)
        with Ledger.open() as ledger:
            (no,) = ledger.discard_declines(first)
        assert (no.run_id, no.reason, no.answer) == ("declined-run", "superseded", "declined")
        asked: list[str] = []

        def human_again(ledger: Ledger, instance_id: str, summary: str) -> int | None:
            asked.append(instance_id)
            return None

        job = tmp_path / "declined-run.yaml"
        run = Run(emulator, job, clock=time.time, interruptible=True, approve_discard=human_again)
        run.start()
        said = f"superseded instance {first} (attempt 1) may be discarded now"
        _wait_for(lambda: asked or any(said in line for line in run.lines), "the takeover's look")
        assert asked == []  # the takeover never asks again
        assert run.attempts()[1].instance_id == second  # adopted, not rented again
        assert any("declined when rgt run asked at" in line for line in run.lines if said in line)
        polled = subprocess.run(
            [sys.executable, "-m", "rgt", "poll", "declined-run"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert polled.returncode == 0, polled.stderr
        assert f"`rgt discard {first} --reason superseded`" in polled.stdout
        assert "declined when rgt run asked at 20" in polled.stdout  # the UTC time of the no
        with Ledger.open() as ledger:
            report = run_report(ledger, "declined-run", for_tool=True)
            assert report is not None and report["discardable"] == [first]
            assert [d["instance_id"] for d in report["discard_declined"]] == [first]
            assert "declined when rgt run asked at" in report["next_action"]
            # The human may change their mind: an explicit discard is not blocked by the no.
            approval_id = ledger.record_approval(first, "tty", 300, purpose="discard")
            decision = may_discard(
                first,
                "superseded",
                provider=run.provider,
                ledger=ledger,
                profile=load_profile("vastai"),
                approval_id=approval_id,
            )
        assert decision.allowed, decision.explain()
        hold.unlink()
        run.join()
        assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
        assert asked == []
        assert int(first) in emulator.instance_ids()  # kept: nobody approved its discard
    finally:
        hold.unlink(missing_ok=True)
        _kill_group(human)
        if run is not None:
            run.thread.join(150)
        _give_back_boxes(emulator, "declined-run")


def test_a_status_line_said_while_a_vastai_call_captures_stderr_reaches_the_terminal() -> None:
    """A vastai SDK call captures sys.stdout/sys.stderr, process-wide, for a moment
    (rgt.providers.redact.captured_output); a line `rgt run` says from another thread meanwhile
    (the discard question's answer, a sync error) went into that capture and never reached
    the terminal (seen in test_a_declined_discard_is_never_asked_again_..., ~1 run in 5)."""
    import io
    import logging

    from rgt.commands.run import status_writer
    from rgt.providers.redact import Redactor, captured_output

    terminal = io.StringIO()
    with contextlib.redirect_stderr(terminal):  # the terminal `rgt run` started on
        say = status_writer()
        with captured_output(Redactor(), logging.getLogger("rgt.test")):  # a vastai call
            say("superseded instance 7: not discarded")
    assert terminal.getvalue() == "rgt run: superseded instance 7: not discarded\n"


def test_status_lines_held_by_an_open_question_are_written_when_the_run_stops(
    emulator: Any, tmp_path: Path
) -> None:
    """A run that stops while a question is open on the terminal (the human is away) still
    writes the status lines held for the answer: they say why it stopped."""
    from rgt.providers.vastai import VastProvider

    written: list[str] = []
    with Ledger.open() as ledger:
        supervisor = Supervisor(
            RunRequest(job=load_job(_write_job(tmp_path, "away-run")), max_price_per_hour=1e-4),
            provider=VastProvider(),
            ledger=ledger,
            profile=load_profile("vastai"),
            say=written.append,
        )
        question = supervisor._question()
        question.__enter__()  # as the discard thread does while it waits for the human
        supervisor.say("attempt 1 (instance 7): preempted-past-grace")
        assert written == []
        with pytest.raises(RunStopped, match="no offer"):
            supervisor.supervise()  # no offer under the cap: the run stops at once
    assert written == ["attempt 1 (instance 7): preempted-past-grace"]


@pytest.mark.timeout(240)
def test_a_box_stuck_loading_past_host_lost_grace_is_replaced(
    emulator: Any, tmp_path: Path
) -> None:
    settings = emulator.world.settings
    normal = settings.boot_seconds
    settings.boot_seconds = 10**9  # the first box's image pull never ends...
    try:
        run = Run(emulator, _write_job(tmp_path, "stuck-run")).start()
        first = run.instance(1)
        emulator.stall_loading(first)  # ...as a stalled pull (VAST13/VAST3)
    finally:
        settings.boot_seconds = normal
    run.join()
    assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
    one, two = run.attempts()
    assert (one.end_reason, two.end_reason) == ("stuck-scheduling", "succeeded")
    assert one.machine_id != two.machine_id
    assert "loading for" in (one.detail or "") and "(grace 1800 s)" in (one.detail or "")
    assert int(first) in emulator.instance_ids()  # superseded, not destroyed


@pytest.mark.timeout(240)
def test_a_host_offline_past_grace_is_replaced_and_never_rented_again(
    emulator: Any, tmp_path: Path
) -> None:
    run = Run(emulator, _write_job(tmp_path, "offline-run", hold=True)).start()
    first = run.instance(1)
    _wait_for(lambda: _newest_durable_step("offline-run") >= CKPT_EVERY, "a durable checkpoint")
    emulator.take_host_offline(first)
    try:
        _assert_relaunched_from_durable(run, "host-lost")
        assert int(first) in emulator.instance_ids()
        # The discard gate's host-lost agrees with the supervisor's clock (the emulator's):
        # the grace that ended the attempt proves the lost host (the human's approval aside).
        from rgt.discard import may_discard

        with Ledger.open() as ledger:
            decision = may_discard(
                first,
                "host-lost",
                provider=run.provider,
                ledger=ledger,
                profile=load_profile("vastai"),
                require_approval=False,
            )
        assert decision.allowed, decision.explain()
        assert "grace 1800 s" in decision.evidence["lost_verdict"]
    finally:
        emulator.bring_host_online(first)


@pytest.mark.timeout(240)
def test_a_relaunch_whose_host_is_lost_before_its_seed_is_uploaded_is_replaced_in_turn(
    emulator: Any, tmp_path: Path
) -> None:
    """The seed upload waits for the new box to run; a box lost meanwhile must not stop the
    run (it did: exit 3): the attempt ends past host_lost_grace and the next one is seeded."""
    from rgt.providers.vastai import VastProvider

    offline: list[str] = []

    def lose_the_second_box(line: str) -> None:  # in the supervisor's thread, before its seed
        found = re.match(r"attempt 2: instance (\d+) rented", line)
        if found and not offline:
            offline.append(found.group(1))
            emulator.take_host_offline(found.group(1))

    job = _write_job(tmp_path, "seed-lost-run", hold=True)
    run = Run(emulator, job, interruptible=True, on_line=lose_the_second_box).start()
    first = run.instance(1)
    _wait_for(lambda: _newest_durable_step("seed-lost-run") >= CKPT_EVERY, "a durable checkpoint")
    emulator.preempt(first)
    try:
        run.join()
        assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
        assert run.outcome is not None and run.outcome.status == "done", run.outcome
        reasons = [a.end_reason for a in run.attempts()]
        assert reasons == ["preempted-past-grace", "host-lost", "succeeded"], run.lines[-12:]
        assert any("not uploaded yet" in line for line in run.lines), run.lines
        third = run.attempts()[2]
        assert third.seed_step is not None and third.seed_step > 0
        assert run.outcome.results_dir is not None
        metrics = json.loads(Path(run.outcome.results_dir, "cell-a/metrics.json").read_text())
        assert metrics == {"steps": STEPS, "start": third.seed_step}
    finally:
        for instance_id in offline:
            emulator.bring_host_online(instance_id)
        # The superseded boxes would hold two of the module market's few GPUs for the tests
        # after this one (the outbid one's GPU stays taken until it ends): gone, as a human
        # would end them in the console once the run is done.
        for instance_id in [first, *offline]:
            with contextlib.suppress(Exception):
                VastProvider().destroy(instance_id)


@pytest.mark.timeout(240)
def test_a_box_destroyed_outside_rgt_is_lost_and_replaced_on_another_machine(
    emulator: Any, tmp_path: Path
) -> None:
    from rgt.providers.vastai import VastProvider

    run = Run(emulator, _write_job(tmp_path, "lost-run", hold=True)).start()
    first = run.instance(1)
    _wait_for(lambda: _newest_durable_step("lost-run") >= CKPT_EVERY, "a durable checkpoint")
    VastProvider().destroy(first)  # a human in the platform's console, not rgt
    _assert_relaunched_from_durable(run, "lost")
    one, _ = run.attempts()
    assert "gone and rgt did not end it" in (one.detail or "")
    assert int(first) not in emulator.instance_ids()


@pytest.mark.timeout(240)
def test_a_dead_boot_hook_on_a_running_box_ends_past_host_lost_grace_and_is_replaced(
    emulator: Any, tmp_path: Path
) -> None:
    """The box says running, but its boot hook was killed (the job's heartbeat stopped): the
    attempt ends after host_lost_grace (it was waited on forever) and the run goes on elsewhere."""
    from rgt.jobstatus import STATUS_NAME

    run = Run(emulator, _write_job(tmp_path, "stalled-run", hold=True)).start()
    first = run.instance(1)
    _wait_for(lambda: _newest_durable_step("stalled-run") >= CKPT_EVERY, "a durable checkpoint")
    pid = emulator.process_id(first)
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # the hook and its job die; the container stays up
    (record,) = run.box(first).glob(f"**/.rgt/stalled-run/{STATUS_NAME}")
    # Its last heartbeat, long ago (the record's stale rule is 3 beats + 60 s of real time).
    status = json.loads(record.read_text())
    status["heartbeat"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    record.write_text(json.dumps(status))
    assert emulator.world.show(int(first))["actual_status"] == "running"
    _assert_relaunched_from_durable(run, "job-stalled")
    one, _ = run.attempts()
    assert "stale for" in (one.detail or "") and "(grace 1800 s)" in (one.detail or "")
    assert "the boot hook was killed" in (one.detail or "")
    assert int(first) in emulator.instance_ids()  # superseded, not destroyed


@pytest.mark.timeout(240)
def test_a_stopped_box_whose_gpu_another_renter_took_stays_scheduling_and_is_replaced(
    emulator: Any, tmp_path: Path
) -> None:
    """VAST3: the box is stopped, another renter takes its GPU, a start leaves it scheduling;
    past host_lost_grace the attempt ends stuck-scheduling and the run resumes elsewhere."""
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider

    provider = VastProvider()
    run = Run(emulator, _write_job(tmp_path, "vast3-run", hold=True)).start()
    first = run.instance(1)
    _wait_for(lambda: _newest_durable_step("vast3-run") >= CKPT_EVERY, "a durable checkpoint")
    machine = _machine(emulator, first)
    provider.stop(first)
    others = []  # another renter takes every free GPU of that machine
    try:
        others += _other_renters_take(
            provider,
            lambda: [
                o
                for o in provider.search_offers(OfferQuery(limit=500, min_reliability=0.0))
                if o.machine_id == machine
            ],
            "other-renter",
        )
        provider.start(first)
        _wait_for(
            lambda: (
                emulator.world.show(int(first))["actual_status"] == "stopped"
                and "Scheduling" in str(emulator.world.show(int(first)).get("status_msg"))
            ),
            "the start to stay scheduling",
        )
        _assert_relaunched_from_durable(run, "stuck-scheduling")
        one, _ = run.attempts()
        # Counted from the stop on: a loaded machine may take the sped-up grace to rent the GPU
        # away, so the streak that ends it may be the stop's, not the start's.
        assert "scheduling for" in (one.detail or "") or "stopped for" in (one.detail or "")
    finally:
        for other in others:
            provider.destroy(other)


@pytest.mark.timeout(240)
def test_a_succeeded_box_whose_results_stay_unreachable_stops_the_run_past_the_grace(
    emulator: Any, tmp_path: Path
) -> None:
    def host_goes_away(line: str) -> None:  # right after the job succeeded, before the pull
        if ": succeeded:" in line:
            emulator.take_host_offline(run.attempts()[0].instance_id)

    run = Run(emulator, _write_job(tmp_path, "unreach-run"), on_line=host_goes_away)
    run.start().join()
    (only,) = run.attempts()
    try:
        assert only.end_reason == "succeeded"
        assert isinstance(run.error, ProviderError) and run.error.exit_code == 3, run.error
        message = run.error.message
        assert f"succeeded on instance {only.instance_id}" in message
        assert "(grace 1800 s)" in message and "it was not destroyed" in message
        assert int(str(only.instance_id)) in emulator.instance_ids()
        with Ledger.open() as ledger:
            record = runs.run(ledger, "unreach-run")
        assert record is not None and record.status == "stopped"
    finally:
        emulator.bring_host_online(str(only.instance_id))


@pytest.mark.timeout(240)
def test_the_run_rents_the_offer_cheapest_with_its_disk_not_the_cheapest_bid(
    emulator: Any, tmp_path: Path
) -> None:
    """A rental bills its disk in every state: on the emulator's market (seed 0) the cheapest
    RTX 4090 bid sits on a disk priced ~2x its neighbours', so for a 150 GB job another offer
    costs less per hour in total (bid + 150 GB at its storage price), and the run rents that."""
    from rgt.pricing import HOURS_PER_MONTH
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider

    disk_gb = 150
    query = OfferQuery(gpu_name="RTX 4090", num_gpus=1, interruptible=True, disk_gb=disk_gb)
    offers = VastProvider().search_offers(query)
    cheapest_bid = min(offers, key=lambda o: (o.min_bid, o.id))
    in_total = min(
        offers,
        key=lambda o: (o.min_bid + disk_gb * o.storage_cost_per_gb_month / HOURS_PER_MONTH, o.id),
    )
    assert in_total.id != cheapest_bid.id, [(o.id, o.min_bid, o.storage_cost_per_gb_month)
                                            for o in offers]  # fmt: skip
    # The job fails at once (the rental is what this test is about): the run ends after one
    # attempt, its box left for the human, which the test then ends itself.
    job = _write_job(tmp_path, "disk-run", disk_gb=disk_gb, command="exit 3")
    run = Run(emulator, job, interruptible=True).start()
    run.join()
    assert isinstance(run.error, CheckFailed), f"{run.error!r}: {run.lines[-8:]}"
    (only,) = run.attempts()
    box = emulator.world.show(int(str(only.instance_id)))
    VastProvider().destroy(str(only.instance_id))
    assert (only.offer_id, only.machine_id) == (in_total.id, in_total.machine_id)
    # What was sent is the offer's own minimum bid: the disk is never added to a bid.
    assert box["bid_price"] == pytest.approx(in_total.min_bid) == only.price_per_hour


@pytest.mark.timeout(240)
def test_the_budget_stops_relaunching(emulator: Any, tmp_path: Path) -> None:
    before = _creates(emulator)
    run = Run(emulator, _write_job(tmp_path, "budget-run"), interruptible=True, budget=1e-6).start()
    first = run.instance(1)
    _wait_for(lambda: run.checkpoint_starts(first), "the job to start")
    emulator.preempt(first)
    run.join()
    assert isinstance(run.error, RunStopped) and run.error.exit_code == 6, run.error
    assert "budget" in run.error.message and "no new attempt was rented" in run.error.message
    assert _creates(emulator) - before == 1
    (only,) = run.attempts()
    assert only.end_reason == "preempted-past-grace"
    with Ledger.open() as ledger:
        record = runs.run(ledger, "budget-run")
    assert record is not None and record.status == "budget-exhausted"
    assert int(first) in emulator.instance_ids()


@pytest.mark.timeout(240)
def test_mid_run_with_no_offer_free_the_supervisor_searches_again_up_to_host_lost_grace(
    emulator: Any, tmp_path: Path
) -> None:
    """Every offer under the cap is rented by others when a box is lost: the supervisor searches
    again; one that comes free within host_lost_grace is rented and the run goes on; when none
    does, it stops with exit 6 (no-offer), leaving the lost boxes as they are."""
    from rgt.lifecycle import offer_query_for_job
    from rgt.providers.vastai import VastProvider

    hold = tmp_path / "hold"
    hold.touch()
    job_file = _write_job(tmp_path, "nooffer-run", hold=True, hold_file=hold)
    query = offer_query_for_job(load_job(job_file), interruptible=False, limit=200)
    provider = VastProvider()
    prices = sorted({(o.dph_total, o.machine_id) for o in provider.search_offers(query)})
    cap = sorted({price for price, _ in prices})[1]  # two machines' offers fit, at least
    others: list[str] = []
    freed: list[str] = []
    freed_machine: list[str] = []

    def free_one(line: str) -> None:  # in the supervisor's thread, before it searches again
        if "no offer fits now; searching again" in line and not freed:
            freed.append(others[0])
            freed_machine.append(_machine(emulator, others[0]))
            provider.destroy(others[0])

    run = Run(emulator, job_file, on_line=free_one, max_price_per_hour=cap).start()
    first = run.instance(1)
    lost_machine = _machine(emulator, first)
    try:
        _wait_for(lambda: _newest_durable_step("nooffer-run") >= CKPT_EVERY, "a durable step")
        # Other renters take every GPU the run could rent elsewhere under its cap.
        others += _other_renters_take(
            provider,
            lambda: [
                o
                for o in provider.search_offers(query)
                if o.dph_total <= cap and o.machine_id != lost_machine
            ],
            "nooffer-renter",
        )
        assert others
        emulator.take_host_offline(first)
        second = run.instance(2)  # once the freed GPU was found by a later search
        assert freed and [_machine(emulator, second)] == freed_machine
        assert "run nooffer-run: no offer fits now; searching again" in run.lines
        # Once its job runs, the second box vanishes too; nothing comes free: exit 6 after
        # the grace.
        _wait_for(lambda: run.checkpoint_starts(second), "the second box's job to start")
        provider.destroy(second)
        run.join()
        assert isinstance(run.error, RunStopped) and run.error.exit_code == 6, run.error
        assert "no offer for RTX_4090:1" in run.error.message
        assert "nothing was rented" in run.error.message
        assert [a.end_reason for a in run.attempts()] == ["host-lost", "lost"]
        with Ledger.open() as ledger:
            record = runs.run(ledger, "nooffer-run")
        assert record is not None and record.status == "no-offer"
        assert int(first) in emulator.instance_ids()  # the lost box is left as it is
        assert provider.show(first).state == "offline"
    finally:
        hold.unlink()
        emulator.bring_host_online(first)
        for other in others:
            if other not in freed:
                provider.destroy(other)


@pytest.mark.timeout(240)
def test_a_failed_job_is_reported_and_not_relaunched(emulator: Any, tmp_path: Path) -> None:
    before = _creates(emulator)
    job = _write_job(tmp_path, "fails-run", command="echo boom >&2; exit 3")
    run = Run(emulator, job).start()
    run.join()
    assert isinstance(run.error, CheckFailed) and run.error.exit_code == 1, run.error
    assert "FAILED on attempt 1" in run.error.message and "not relaunched" in run.error.message
    assert _creates(emulator) - before == 1
    (only,) = run.attempts()
    assert only.end_reason == "failed"
    assert int(str(only.instance_id)) in emulator.instance_ids()  # its logs, its box: the human's


# A GPU no other test here rents: their boxes (superseded ones stay) never change the offers the
# move tests see. In the emulator's marketplace (seed 0) its cheapest interruptible offer bids
# $0.0636/h, the next $0.1073/h: 41 % cheaper, past the default margin (rgt.runs.MOVE_MARGIN).
MOVE_GPU = "RTX_3090:1"


def _bid(offer: Any) -> float:
    """What the supervisor pays for an interruptible offer without --bid: its minimum bid."""
    return float(offer.min_bid if offer.min_bid > 0 else offer.dph_total)


def _cheapest_machine_taken(emulator: Any, job_file: Path) -> tuple[Any, Any]:
    """Another renter takes every free GPU of the machine with the job's cheapest
    interruptible offer (on-demand outranks every bid), so the run rents a dearer offer.
    Returns that offer and a hook for Run's on_line that gives the GPUs back as soon as the
    supervisor says it rented attempt 1: before its first look at the box, whatever the load."""
    from rgt.lifecycle import offer_query_for_job
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider

    provider = VastProvider()
    query = offer_query_for_job(load_job(job_file), interruptible=True, limit=200)
    fitting = [o for o in provider.search_offers(query) if _bid(o) <= MAX_PRICE]
    cheapest = min(fitting, key=lambda o: (_bid(o), str(o.id)))
    others = _other_renters_take(
        provider,
        lambda: [
            o
            for o in provider.search_offers(OfferQuery(limit=500, min_reliability=0.0))
            if o.machine_id == cheapest.machine_id
        ],
        "move-renter",
    )
    dearer = min(
        (o for o in provider.search_offers(query) if _bid(o) <= MAX_PRICE),
        key=lambda o: (_bid(o), str(o.id)),
    )
    assert _bid(cheapest) <= (1 - runs.MOVE_MARGIN) * _bid(dearer), (cheapest, dearer)

    def give_back(line: str | None = None) -> None:
        if (line is None or line.startswith("attempt 1: instance ")) and others:
            while others:
                provider.destroy(others.pop())

    return cheapest, give_back


@pytest.mark.timeout(240)
def test_a_spot_run_moves_to_a_much_cheaper_offer_right_after_a_durable_checkpoint(
    emulator: Any, tmp_path: Path
) -> None:
    """The cheapest machine was taken when the run started; once it is free again and a new
    durable checkpoint of the attempt is verified, the supervisor moves: the attempt ends
    `moved`, its box is stopped with its disk (superseded, not destroyed), and the next attempt
    on the cheaper machine resumes from that checkpoint and finishes the run."""
    job = _write_job(tmp_path, "move-run", hold=True, gpu=MOVE_GPU)
    cheapest, give_back = _cheapest_machine_taken(emulator, job)
    before = _creates(emulator)
    # The supervisor on real time: its measured restart then stays far below what the move
    # saves over the horizon however loaded this machine is (on the 300x platform clock a
    # 3-second launch would count as 15 minutes).
    run = Run(emulator, job, on_line=give_back, clock=time.time, interruptible=True)
    try:
        run.start().join()
    finally:
        give_back()
    assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
    assert run.outcome is not None and run.outcome.status == "done", run.outcome
    one, two = run.attempts()
    assert (one.end_reason, two.end_reason) == ("moved", "succeeded"), run.lines
    assert one.machine_id != cheapest.machine_id == two.machine_id
    assert one.price_per_hour is not None and two.price_per_hour is not None
    assert two.price_per_hour <= (1 - runs.MOVE_MARGIN) * one.price_per_hour
    # The old box was stopped, not destroyed: its disk (and the checkpoints on it) stays.
    first = str(one.instance_id)
    assert emulator.world.show(int(first))["actual_status"] == "stopped"
    assert list((run.box(first) / "workspace/checkpoints").glob("step-*.ckpt"))
    assert run.checkpoint_starts(first) == [0]  # it ran once, from scratch, until the move
    assert run.outcome.superseded == [first] and "--reason superseded" in run.outcome.message
    # Moved right after a durable checkpoint of attempt 1; attempt 2 resumed from it (or from
    # one verified by the sync round still running then), not from step 0.
    decided = re.search(r"newest durable checkpoint: (\S+)\)", one.detail or "")
    assert decided is not None, one.detail
    from rgt.durable import durable_index, step_of

    seed = next(c for c in durable_index("move-run") if c.name == two.seed_name)
    assert seed.instance_id == first
    assert two.seed_step == seed.step and seed.step >= (step_of(decided.group(1)) or 0) > 0
    assert run.outcome.results_dir is not None
    metrics = json.loads(Path(run.outcome.results_dir, "cell-a/metrics.json").read_text())
    assert metrics == {"steps": STEPS, "start": two.seed_step}
    assert _creates(emulator) - before == 2  # one box per attempt


@pytest.mark.timeout(240)
@pytest.mark.parametrize("why", ["move-if-cheaper 0", "the stop fails"])
def test_a_spot_run_stays_on_its_offer_when_moving_is_off_or_its_stop_fails(
    emulator: Any, tmp_path: Path, why: str
) -> None:
    """The same market as the move above. With moving turned off, new durable checkpoints are
    verified while the cheaper machine is free and the run stays; when the old box's stop fails
    (the platform answers 404) while it still runs, nothing moves either (two boxes would bill
    for one job). Either way the run goes on there until its box is lost."""
    run_id = "stay-off-run" if why == "move-if-cheaper 0" else "stay-stop-run"
    job = _write_job(tmp_path, run_id, hold=True, gpu=MOVE_GPU)
    cheapest, give_back = _cheapest_machine_taken(emulator, job)

    def stops_fail(line: str) -> None:  # armed before the supervisor's first look at the box
        rented = re.match(r"attempt 1: instance (\S+) rented", line)
        if rented and why == "the stop fails":
            path = f"/api/v0/instances/{rented.group(1)}/"
            emulator.fail_next(1000, 404, method="PUT", path=path)
        give_back(line)

    margin = 0.0 if why == "move-if-cheaper 0" else runs.MOVE_MARGIN
    run = Run(
        emulator, job, on_line=stops_fail, clock=time.time, interruptible=True, move_margin=margin
    )
    try:
        first = run.start().instance(1)
        if why == "the stop fails":
            _wait_for(lambda: any("its stop failed" in x for x in run.lines), "a failed stop")
        else:
            # The job holds at HOLD_AT: its checkpoint there is attempt 1's last; two looks
            # after it was verified the supervisor has seen every checkpoint a move could follow.
            _wait_for(lambda: _newest_durable_step(run_id) >= HOLD_AT, "the held checkpoint")
            looked = run.looks
            _wait_for(lambda: run.looks >= looked + 2, "two more looks at the running job")
        (only,) = run.attempts()
        assert only.ended is None and only.machine_id != cheapest.machine_id, only
        assert emulator.world.show(int(first))["actual_status"] == "running"
        emulator.preempt(first)  # ends the held job: the run goes on from the durable checkpoint
    finally:
        give_back()
        emulator.fail_next(0)
    run.join()
    assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
    assert [a.end_reason for a in run.attempts()] == ["preempted-past-grace", "succeeded"]
    assert run.checkpoint_starts(first) == [0]  # the job on attempt 1 never restarted there


def test_the_move_margin_is_kept_for_the_takeover_of_an_unsupervised_run(tmp_path: Path) -> None:
    """A run recorded with moving off: the command (and the MCP call) that takes it over after
    its supervisor died keeps it off; the default margin is not repeated (the real ledger)."""
    from rgt.supervisor import run_report

    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        for run_id, margin in (("off-run", 0.0), ("default-run", runs.MOVE_MARGIN)):
            runs.record_run(ledger, run_id, provider="vastai", profile="vastai",
                            job_file="job.yaml", max_price_per_hour=1.0, budget=None,
                            interruptible=True, bid_per_hour=None, now=0.0,
                            move_margin=margin)  # fmt: skip
        record = runs.run(ledger, "off-run")
        assert record is not None and record.move_margin == 0.0
        # No supervisor holds these runs' locks: both are unsupervised.
        off = run_report(ledger, "off-run")
        off_tool = run_report(ledger, "off-run", for_tool=True)
        default = run_report(ledger, "default-run")
    assert off is not None and off_tool is not None and default is not None
    assert "--interruptible --move-if-cheaper 0`" in off["next_action"]
    assert "move_if_cheaper=0.0" in off_tool["next_action"]
    assert "move-if-cheaper" not in default["next_action"]


def _rgt_run(job: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rgt", "run", str(job), "--max-price", str(MAX_PRICE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


@pytest.mark.timeout(240)
def test_a_supervisor_killed_with_9_is_taken_over_without_renting_twice(
    emulator: Any, tmp_path: Path
) -> None:
    before = _creates(emulator)
    # Long enough that its first box is preempted before it finishes, on a loaded machine too.
    job = _write_job(tmp_path, "killed-run", env={"STEP_SECONDS": "0.5"})
    first = _rgt_run(job, "--interval", "0.5", "--interruptible")
    try:
        with Ledger.open() as ledger:
            instance = _wait_for(
                lambda: (a := runs.attempts(ledger, "killed-run")) and a[0].instance_id,
                "attempt 1 to rent",
            )
        # Killed without warning while its attempt runs; meanwhile the box is preempted.
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        emulator.preempt(instance)
        polled = subprocess.run(
            [sys.executable, "-m", "rgt", "poll", "killed-run", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert polled.returncode == 0, polled.stderr
        report = json.loads(polled.stdout)
        assert (report["status"], report["supervised"]) == ("unsupervised", False)
        assert "takes it over" in report["next_action"]
        second = _rgt_run(job, "--interval", "0.5", "--interruptible", "--json")
        out, err = second.communicate(timeout=180)
    finally:
        for process in (first,):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert_no_canary(out, err)
    # No TTY: the run ends verified, waiting for a human's destroy.
    assert second.returncode == 0, err
    outcome = json.loads(out)
    assert outcome["status"] == "awaiting-approval", outcome
    assert [a["ended"] for a in outcome["attempts"]] == ["preempted-past-grace", "succeeded"]
    assert _creates(emulator) - before == 2  # attempt 1 once, attempt 2 once: nothing twice
    assert f"rgt destroy {outcome['instance_id']}" in outcome["message"]


@pytest.mark.timeout(240)
def test_a_move_whose_supervisor_died_after_the_stop_is_ended_moved_by_the_next(
    emulator: Any, tmp_path: Path
) -> None:
    """`_move` writes its intent before it stops the box; killed before it recorded the end,
    the next supervisor ends the attempt `moved` at once, not stuck-scheduling after the
    grace (which would also keep that good machine out of later attempts)."""
    from rgt.providers.vastai import VastProvider
    from rgt.supervisor import MOVING

    job = _write_job(tmp_path, "moving-run", hold=True)
    first = _rgt_run(job, "--interval", "0.5", "--interruptible", "--move-if-cheaper", "0")
    try:
        with Ledger.open() as ledger:
            instance = _wait_for(
                lambda: (a := runs.attempts(ledger, "moving-run")) and a[0].instance_id,
                "attempt 1 to rent",
            )
        _wait_for(lambda: _newest_durable_step("moving-run") >= CKPT_EVERY, "a durable step")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    # What the dead supervisor's move had done: its intent recorded, the box stopped.
    with Ledger.open() as ledger:
        (attempt,) = runs.attempts(ledger, "moving-run")
        runs.update_attempt(ledger, attempt.id, lost_state=MOVING, lost_since=time.time())
    VastProvider().stop(instance)
    run = Run(emulator, job, interruptible=True, move_margin=0.0).start()
    run.join()
    assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
    one, two = run.attempts()
    assert (one.end_reason, two.end_reason) == ("moved", "succeeded"), run.lines[-8:]
    assert two.seed_step is not None and two.seed_step >= CKPT_EVERY
    assert one.machine_id not in runs.machines_to_avoid(run.attempts())


@pytest.mark.timeout(240)
def test_a_supervisor_killed_between_the_create_and_its_record_adopts_the_box(
    emulator: Any, tmp_path: Path
) -> None:
    """As a supervisor killed at that instant leaves it: attempt 1 written (before its launch),
    the box created with the attempt's label, the attempt never told its instance. The next
    supervisor finds the box by the label and rents nothing."""
    from rgt.lifecycle import launch, offer_query_for_job
    from rgt.providers.base import run_label
    from rgt.providers.vastai import VastProvider

    job_file = _write_job(tmp_path, "adopt-run")
    job = load_job(job_file)
    provider = VastProvider()
    profile = load_profile("vastai")
    query = offer_query_for_job(job, interruptible=False, limit=5)
    offer = provider.search_offers(query)[0]
    with Ledger.open() as ledger:
        runs.record_run(
            ledger,
            "adopt-run",
            provider="vastai",
            profile="vastai",
            job_file=str(job_file),
            max_price_per_hour=MAX_PRICE,
            budget=None,
            interruptible=False,
            bid_per_hour=None,
            now=emulator.clock.now(),
        )
        runs.open_attempt(
            ledger,
            "adopt-run",
            1,
            label=run_label("adopt-run", 1),
            offer_id=offer.id,
            machine_id=offer.machine_id,
            price_per_hour=offer.dph_total,
            seed_name=None,
            seed_step=None,
            now=emulator.clock.now(),
        )
        rented = launch(
            provider=provider,
            ledger=ledger,
            profile=profile,
            job=job,
            offer_id=offer.id,
            max_price_per_hour=MAX_PRICE,
        ).instance_id
    before = _creates(emulator)
    run = Run(emulator, job_file).start()
    run.join()
    assert run.error is None, f"{run.error!r}: {run.lines[-8:]}"
    assert _creates(emulator) == before  # adopted, nothing rented
    (only,) = run.attempts()
    assert (only.instance_id, only.end_reason) == (rented, "succeeded")
    assert f"attempt 1: instance {rented} adopted" in run.lines
    assert run.outcome is not None and run.outcome.status == "done"


def test_attempt_labels_name_the_run_and_the_attempt() -> None:
    from rgt.providers.base import attempt_from_label, run_from_label, run_label

    assert run_label("r.1") == "rgt:r.1" and run_label("r.1", 3) == "rgt:r.1/3"
    assert run_from_label("rgt:r.1/3") == run_from_label("rgt:r.1") == "r.1"
    assert (attempt_from_label("rgt:r.1/3"), attempt_from_label("rgt:r.1")) == (3, 1)
    for foreign in ("rgt:r.1/x", "rgt:/2", "other:r", None):
        assert run_from_label(foreign) is None and attempt_from_label(foreign) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-price", "0"], "--max-price 0: must be a number > 0"),
        (["--max-price", "1", "--budget", "nan"], "--budget nan: must be a number > 0"),
        (["--max-price", "1", "--bid", "0.2"], "--bid goes with --interruptible"),
        (
            ["--max-price", "1", "--interruptible", "--move-if-cheaper", "1"],
            "--move-if-cheaper 1: must be a fraction >= 0 and < 1 (0: never move)",
        ),
        (
            ["--max-price", "1", "--interruptible", "--move-if-cheaper", "-0.1"],
            "--move-if-cheaper -0.1: must be a fraction >= 0 and < 1",
        ),
        (["--max-price", "1", "--move-if-cheaper", "0.3"], "--move-if-cheaper goes with"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    job = _write_job(tmp_path, "flags-run")
    result = subprocess.run(
        [sys.executable, "-m", "rgt", "run", str(job), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr


@pytest.mark.timeout(240)
@pytest.mark.anyio
async def test_the_mcp_run_tool_starts_a_detached_supervisor_that_poll_follows(
    emulator: Any, tmp_path: Path
) -> None:
    import anyio

    from tests.mcp_client import connect

    job = yaml.safe_load(_write_job(tmp_path, "mcp-run").read_text())
    async with connect(emulator, "auto") as session:
        # Moving is for spot runs, by a fraction below 1: refused before anything starts.
        for extra, refusal in (
            ({"move_if_cheaper": 0.3}, "move_if_cheaper goes with interruptible"),
            ({"move_if_cheaper": 1, "interruptible": True}, "less than 1"),
        ):
            wrong = await session.call("run", {"job": job, "max_price_per_hour": 1, **extra})
            assert wrong.is_error and refusal in str(wrong.content), wrong.content
        started = await session.data(
            "run", {"job": job, "max_price_per_hour": MAX_PRICE, "interval_seconds": 1}
        )
        assert started["run_id"] == "mcp-run" and started["pid"] > 0
        assert started["next"].startswith('poll(instance_id="mcp-run"')
        again = await session.call("run", {"job": job, "max_price_per_hour": MAX_PRICE})
        assert again.is_error and "a supervisor of it runs right now" in str(again.content)
        deadline = time.monotonic() + 150
        while True:
            assert time.monotonic() < deadline, "the detached run never finished"
            polled = await session.call("poll", {"instance_id": "mcp-run"})
            report = polled.structured_content
            if not polled.is_error and report and report["run"]["status"] != "running":
                break
            await anyio.sleep(1)
    run = report["run"]
    # No human at a terminal: verified, and waiting for the destroy tool's approval.
    assert run["status"] == "awaiting-approval", run
    assert [a["ended"] for a in run["attempts"]] == ["succeeded"]
    assert report["instance_id"] == run["instance_id"] and report["state"] == "running"
    assert "destroy" in run["next_action"]
    log = Path(started["log"]).read_text()
    assert "attempt 1: instance" in log and "verified against the box's manifest" in log


def test_a_job_whose_relaunch_would_not_fit_the_boot_hook_is_refused_before_renting(
    emulator: Any, tmp_path: Path
) -> None:
    import base64

    # Incompressible bytes: the seeded boot hook cannot fit vast.ai's 16 KiB onstart.
    blob = base64.b64encode(os.urandom(12_000)).decode() + "\n"
    job = _write_job(tmp_path, "big-run", files={"/workspace/job/blob.txt": blob})
    before = _creates(emulator)
    result = subprocess.run(
        [sys.executable, "-m", "rgt", "run", str(job), "--max-price", str(MAX_PRICE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "a relaunch of run big-run from a durable checkpoint would not start" in result.stderr
    assert "16384" in result.stderr and "nothing was rented" in result.stderr
    assert _creates(emulator) == before


def test_no_offer_under_the_cap_stops_with_exit_6_renting_nothing(
    emulator: Any, tmp_path: Path
) -> None:
    job = _write_job(tmp_path, "cheap-run")
    before = _creates(emulator)
    result = subprocess.run(
        [sys.executable, "-m", "rgt", "run", str(job), "--max-price", "0.0001"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 6, result.stderr
    assert result.stderr.count("\n") == 1
    assert "no offer for RTX_4090:1" in result.stderr and "nothing was rented" in result.stderr
    assert _creates(emulator) == before
    with Ledger.open() as ledger:
        record = runs.run(ledger, "cheap-run")
    assert record is not None and record.status == "no-offer"


def test_only_a_lost_host_keeps_its_machine_out_of_later_attempts(tmp_path: Path) -> None:
    """A preemption (outbid) says nothing bad about the machine: the run may rent it again;
    a host lost, stuck scheduling or a box gone keeps its machine out (the real ledger)."""
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        runs.record_run(ledger, "avoid-run", provider="vastai", profile="vastai",
                        job_file=None, max_price_per_hour=1.0, budget=None,
                        interruptible=True, bid_per_hour=None, now=0.0)  # fmt: skip
        reasons = ["preempted-past-grace", "host-lost", "stuck-scheduling", "lost", None]
        for number, reason in enumerate(reasons, 1):
            attempt = runs.open_attempt(ledger, "avoid-run", number,
                                        label=f"rgt:avoid-run/{number}", offer_id=str(number),
                                        machine_id=f"m{number}", price_per_hour=0.1,
                                        seed_name=None, seed_step=None, now=0.0)  # fmt: skip
            if reason is not None:
                runs.update_attempt(ledger, attempt.id, ended=1.0, end_reason=reason)
        history = runs.attempts(ledger, "avoid-run")
    assert runs.machines_to_avoid(history) == {"m2", "m3", "m4"}
