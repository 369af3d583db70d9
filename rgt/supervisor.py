"""`rgt run`: supervise one run to its end, across as many rentals as it takes.

search → launch → watch (the instance's state and the job status record) → keep checkpoints
durable (rgt.durable.sync_once each round when the job has `durable: local`) → when the box is
lost (preempted past the profile's spot_grace, stuck waiting for its GPU or offline past its
host_lost_grace, or gone) rent another offer that satisfies the same constraints and cap, never
on a machine whose host the run lost (a preempted machine may be rented again), seed it with
the newest durable checkpoint and resume; until the job succeeds. Then pull → verify → a human
approves → destroy, through the gate (rgt.gate). An interruptible run also moves to a much
cheaper offer when one appears (rgt.runs.worth_moving), right after a durable checkpoint of its
attempt was verified: the attempt ends `moved`, its box is stopped (reversible), and the next
attempt resumes from that checkpoint.

What keeps it honest:

- One supervisor per run (rgt.locks.supervisor_lock, dropped by the kernel when it dies); the ledger
  holds the run and its attempts (rgt.runs), each attempt written before its launch with the
  label its box will carry (`rgt:<run_id>/<n>`), so a supervisor killed with -9 and started
  again adopts the box by that label (rgt.lifecycle.launch) and never rents twice.
- A failed job (exit != 0, not interrupted) is reported with its logs (poll copies them) and
  never relaunched: it would fail the same way again, and bill for it.
- The budget bounds the dollars of all attempts together: no attempt opens once it is spent.
- A superseded box is not destroyed (its results were not verified): it stays in the ledger,
  `rgt sweep` lists it, and its results are pulled or it is discarded with --reason superseded.
  Mid-run the supervisor stops one that runs again (a preempted box whose bid won again bills
  compute) and, once rgt.discard proves it superseded, asks the human once to discard it, or
  names it discardable in the run's report (`_tend_superseded`). A no is kept in the ledger
  (rgt.ledger discard_declines): no supervisor of the run asks about that box again.
- While that question is open on the terminal, status lines wait (`Supervisor.say`), so they
  never land inside the question or its answer.

Time comes from `clock` (epoch seconds): the grace periods and the cost estimate use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from rgt import runs
from rgt.errors import CheckFailed, Declined, ProviderError, Refused, RgtError, RunStopped
from rgt.job import JobRequest
from rgt.ledger import DiscardDeclineRecord, Ledger
from rgt.profile import Profile
from rgt.providers.base import Offer, Provider, run_label
from rgt.runs import AttemptRecord

# Instance states in which the job cannot run, by the reason an attempt ends when one lasts past
# its grace. Which grace: the profile's spot_grace for a preemption, host_lost_grace otherwise.
LOST_REASON_OF_STATE = {
    "paused": "preempted-past-grace",
    "scheduling": "stuck-scheduling",
    "loading": "stuck-scheduling",
    "provisioning": "stuck-scheduling",
    "stopped": "stuck-scheduling",
    "exited": "stuck-scheduling",
    "offline": "host-lost",
}
# States in which a box just rented will not come to run by itself soon: waiting for it to run
# (to upload its seed) stops, and the watch decides (rgt.supervisor._watch_once).
NOT_COMING_UP = frozenset({"offline", "gone", "paused", "stopped", "exited"})
# The attempt's lost_state while a move stops its box (rgt.supervisor.Supervisor._move), and
# the states a stopped box shows.
MOVING = "moving"
STOPPED_STATES = frozenset({"stopped", "exited"})
DEFAULT_INTERVAL_SECONDS = 10.0
DETACH_START_SECONDS = 30.0  # how long `--detach` waits for its supervisor to take the run
DETACHED_LOG = "supervisor.log"  # a detached supervisor's output, in the run's local dir
RUNNING_WAIT_SECONDS = 600.0  # how long a seeded box may take to run before the upload gives up
# A move is considered at most this often (and at most once per interval): each consideration
# searches the marketplace, and the platform rate-limits its API.
MOVE_LOOK_SECONDS = 60.0

# approve(ledger, instance_id, summary) -> the approval id a human just gave (the CLI: the
# terminal prompt), or None where no human can be asked now (detached): the run then waits
# for `rgt destroy`.
Approver = Callable[[Ledger, str, str], "int | None"]


@dataclass(frozen=True)
class RunRequest:
    """What to supervise: the job and the limits every attempt keeps."""

    job: JobRequest
    max_price_per_hour: float
    budget: float | None = None
    interruptible: bool = False
    bid_per_hour: float | None = None  # None with interruptible: each offer's minimum bid
    job_file: str | None = None
    # Move an interruptible run to an offer cheaper by at least this fraction (rgt.runs.
    # worth_moving); 0: never move.
    move_margin: float = runs.MOVE_MARGIN


@dataclass
class RunOutcome:
    """How a supervised run ended (so far)."""

    run_id: str
    status: str  # one of rgt.runs.RUN_STATUSES
    message: str
    instance_id: str | None = None  # the attempt that succeeded (or the last one)
    results_dir: str | None = None
    spent: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)  # boxes left behind, still to resolve

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


class Supervisor:
    """One run's supervisor (see the module docstring); `supervise()` runs it to its end."""

    def __init__(
        self,
        request: RunRequest,
        *,
        provider: Provider,
        ledger: Ledger,
        profile: Profile,
        approve: Approver | None = None,
        approve_discard: Approver | None = None,
        say: Callable[[str], None] = lambda _line: None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        interval: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        self.request = request
        self.job = request.job
        self.run_id = request.job.run_id
        self.provider = provider
        self.ledger = ledger
        self.profile = profile
        self.approve = approve
        self._write_line = say
        # Status lines said while a question is open on the terminal (None: none is open).
        self._held: list[str] | None = None
        self._say_lock = threading.Lock()
        self.clock = clock
        self.sleep = sleep
        self.interval = interval
        self._syncing: _SyncLoop | None = None
        # Boxes whose seed checkpoint is not uploaded yet (the box was not running in time, or
        # the upload failed): seeded by the watch once they run. Their boot hook waits for it
        # (the job's durable seed_wait_seconds), then starts fresh.
        self._unseeded: dict[str, Any] = {}
        # What each attempt this supervisor opened costs the job per hour, disk included (a
        # move compares like with like; an adopted attempt's offer is not known: its bid is).
        self._hourly: dict[int, float] = {}
        # Superseded boxes (rgt.runs.SUPERSEDED_REASONS) mid-run: see `_tend_superseded`.
        self.approve_discard = approve_discard
        self._tended_at: float | None = None
        self._asked: set[str] = set()  # a human was asked to discard it: never again
        self._told: set[str] = set()  # said once: stopped, or discardable now
        self._asking: _DiscardAsk | None = None
        self._born = clock()  # an attempt started before it was opened by another supervisor
        self._move_watch = _MoveWatch()

    # -- status lines -----------------------------------------------------------------------

    def say(self, line: str) -> None:
        """Say one status line (any thread). While a human is asked a question on the terminal
        (`_question`) the line waits for the answer: written meanwhile, it would land inside
        the question, or between the question and what the human types."""
        with self._say_lock:
            if self._held is not None:
                self._held.append(line)
                return
            self._write_line(line)

    @contextmanager
    def _question(self) -> Iterator[None]:
        """Hold status lines while the caller asks the human; then say them, in order."""
        with self._say_lock:
            self._held = []
        try:
            yield
        finally:
            self._write_held()

    def _write_held(self) -> None:
        """Write the held status lines and hold no more: the answer came, or the run ends
        while the human has not answered (the lines say why it ended)."""
        with self._say_lock:
            held, self._held = self._held or [], None
            for line in held:
                self._write_line(line)

    # -- the loop ---------------------------------------------------------------------------

    def supervise(self) -> RunOutcome:
        """Supervise the run until it ends; returns how. Raises RunStopped (exit 6) when the
        budget is spent or no offer fits, CheckFailed (exit 1) when the job failed, Refused
        (exit 4) when another supervisor runs it."""
        from rgt.locks import supervisor_lock

        with supervisor_lock(self.run_id):
            runs.record_run(
                self.ledger,
                self.run_id,
                provider=self.provider.platform,
                profile=self.profile.name,
                job_file=self.request.job_file,
                max_price_per_hour=self.request.max_price_per_hour,
                budget=self.request.budget,
                interruptible=self.request.interruptible,
                bid_per_hour=self.request.bid_per_hour,
                now=self.clock(),
                move_margin=self.request.move_margin,
            )
            try:
                self._check_relaunch_fits()
                return self._loop()
            except RunStopped as exc:
                runs.set_run_status(self.ledger, self.run_id, exc.status, exc.message)
                raise
            except CheckFailed as exc:
                runs.set_run_status(self.ledger, self.run_id, "failed", exc.message)
                raise
            except RgtError as exc:
                runs.set_run_status(self.ledger, self.run_id, "stopped", exc.message)
                raise
            finally:
                self._stop_sync()
                self._write_held()

    def _loop(self) -> RunOutcome:
        unreachable_since: float | None = None  # a succeeded box whose results cannot be pulled
        while True:
            history = runs.attempts(self.ledger, self.run_id)
            current = history[-1] if history else None
            if current is not None and current.end_reason == "succeeded":
                try:
                    return self._finish(current)
                except ProviderError as exc:
                    # The results are on that box alone (paused, offline, the API down): wait
                    # for it, another box cannot have them; but not forever.
                    unreachable_since = unreachable_since or self.clock()
                    self._give_up_unreachable(current, exc, self.clock() - unreachable_since)
                    self.say(f"instance {current.instance_id}: {exc.message}; trying again")
                    self.sleep(self.interval)
                    continue
            if current is not None and current.end_reason == "failed":
                raise CheckFailed(self._failed_message(current))
            self._tend_superseded(history)
            if current is None or current.ended is not None:
                current = self._open_next_attempt(history)
            elif current.instance_id is None:
                # Written before its launch by a supervisor that died: launch it again with
                # the same label; rgt.lifecycle.launch adopts the box if the create happened.
                current = self._launch(current)
            self._watch_once(current)
            latest = runs.attempts(self.ledger, self.run_id)[-1]
            if latest.ended is None:
                self.sleep(self.interval)

    def _give_up_unreachable(
        self, attempt: AttemptRecord, error: ProviderError, lasted: float
    ) -> None:
        """Stop waiting for a succeeded box whose results cannot be pulled once that lasted the
        profile's host_lost_grace (the bound of a lost host; None: wait): ProviderError (exit
        3) naming the box, which is left as it is, and what to do."""
        grace = self.profile.host_lost_grace_seconds
        if grace is None or lasted < grace:
            return
        raise ProviderError(
            f"run {self.run_id}: the job succeeded on instance {attempt.instance_id} but its "
            f"results could not be pulled for {lasted:.0f} s (grace {grace:.0f} s): "
            f"{error.message}. They are on that box only; it was not destroyed. `rgt poll "
            f"{attempt.instance_id}` shows its state; once it answers, `rgt run` with the same "
            "job finishes the run (pull, verify, approve, destroy)"
        )

    # -- attempts ---------------------------------------------------------------------------

    def spent(self, history: list[AttemptRecord] | None = None) -> float:
        """Dollars all attempts cost so far (rgt.runs.AttemptRecord.cost)."""
        now = self.clock()
        return sum(a.cost(now) for a in history or runs.attempts(self.ledger, self.run_id))

    def _open_next_attempt(self, history: list[AttemptRecord]) -> AttemptRecord:
        spent = self.spent(history) if history else 0.0
        budget = self.request.budget
        if budget is not None and spent >= budget:
            left = self._left_behind_note(history)
            raise RunStopped(
                f"run {self.run_id}: the budget ${budget:.4f} is spent (${spent:.4f} over "
                f"{len(history)} attempt(s)); no new attempt was rented"
                + (f". {left}" if left else "")
            )
        offer = self._pick_relaunch_offer(history) if history else self._pick_offer(set())
        checkpoint = self._newest_durable()
        number = len(history) + 1
        self._hourly[number] = self._hourly_cost(offer)
        attempt = runs.open_attempt(
            self.ledger,
            self.run_id,
            number,
            label=run_label(self.run_id, number),
            offer_id=offer.id,
            machine_id=offer.machine_id,
            price_per_hour=self._price(offer),
            seed_name=getattr(checkpoint, "name", None),
            seed_step=getattr(checkpoint, "step", None),
            now=self.clock(),
        )
        seed = f" from durable checkpoint {checkpoint.name}" if checkpoint is not None else ""
        self.say(
            f"attempt {number}: renting offer {offer.id} (machine {offer.machine_id}) at "
            f"{self._price(offer):.4f} $/h{seed or ', from scratch'}"
        )
        return self._launch(attempt, checkpoint)

    def _pick_relaunch_offer(self, history: list[AttemptRecord]) -> Offer:
        """The next attempt's offer. Mid-run, no offer now may only mean the machines are
        rented by others for a while (an outbid rental comes free when the higher bid ends):
        search again every interval, up to the profile's host_lost_grace, before stopping."""
        avoid = runs.machines_to_avoid(history)
        grace = self.profile.host_lost_grace_seconds or 0.0
        deadline = self.clock() + grace
        while True:
            try:
                return self._pick_offer(avoid)
            except RunStopped:
                if self.clock() >= deadline:
                    raise
                self.say(f"run {self.run_id}: no offer fits now; searching again")
                self.sleep(self.interval)

    def _pick_offer(self, lost_machines: set[str | None]) -> Offer:
        """The offer that costs the job least per hour (runs.hourly_cost: the bid or price plus
        its disk, which bills in every state) among those that fit the job with their price
        (what is sent: the bid or the on-demand price) under the cap, on no machine the run
        lost."""
        from rgt.lifecycle import offer_query_for_job

        query = offer_query_for_job(self.job, interruptible=self.request.interruptible, limit=200)
        fitting = [
            offer
            for offer in self.provider.search_offers(query)
            if offer.machine_id not in lost_machines
            and self._price(offer) <= self.request.max_price_per_hour
        ]
        if not fitting:
            lost = ", ".join(sorted(str(machine) for machine in lost_machines))
            raise RunStopped(
                f"run {self.run_id}: no offer for {self.job.gpu} with {self.job.disk_gb} GB disk "
                f"at most {self.request.max_price_per_hour:.4f} $/h"
                + (f" on a machine other than the lost {lost}" if lost_machines else "")
                + "; nothing was rented: raise --max-price or try again later",
                status="no-offer",
            )

        return min(fitting, key=lambda offer: (self._hourly_cost(offer), str(offer.id)))

    def _hourly_cost(self, offer: Offer) -> float:
        """What `offer` costs the job per hour, its disk included (rgt.runs.hourly_cost)."""
        bid = self._price(offer) if self.request.interruptible else None
        return runs.hourly_cost(offer, self.job.disk_gb, bid=bid)

    def _price(self, offer: Offer) -> float:
        """What renting `offer` costs per hour: the bid (or its minimum bid), else its price."""
        if self.request.interruptible:
            if self.request.bid_per_hour is not None:
                return max(self.request.bid_per_hour, offer.min_bid)
            return offer.min_bid if offer.min_bid > 0 else offer.dph_total
        return offer.dph_total

    def _launch(self, attempt: AttemptRecord, checkpoint: Any = None) -> AttemptRecord:
        from rgt.lifecycle import launch

        if checkpoint is None and attempt.seed_name is not None:
            checkpoint = self._durable_by_name(attempt.seed_name)
        context = self._seed_context(checkpoint) if checkpoint is not None else None
        bid = attempt.price_per_hour if self.request.interruptible else None
        result = launch(
            provider=self.provider,
            ledger=self.ledger,
            profile=self.profile,
            job=self.job,
            offer_id=str(attempt.offer_id),
            max_price_per_hour=self.request.max_price_per_hour,
            interruptible=self.request.interruptible,
            bid_per_hour=bid,
            attempt=attempt.number,
            render_context=context,
        )
        runs.update_attempt(
            self.ledger,
            attempt.id,
            instance_id=result.instance_id,
            price_per_hour=result.price_per_hour
            if result.price_per_hour is not None
            else attempt.price_per_hour,
        )
        how = "adopted" if result.adopted else "rented"
        self.say(f"attempt {attempt.number}: instance {result.instance_id} {how}")
        if checkpoint is not None and getattr(checkpoint, "target", None) == "local":
            try:
                self._seed(result.instance_id, checkpoint)
            except ProviderError as exc:
                # Not fatal to the run: the watch seeds the box once it runs, or ends the
                # attempt when the box stays lost past its grace (and rents another).
                self._unseeded[result.instance_id] = checkpoint
                self.say(
                    f"instance {result.instance_id}: seed {checkpoint.name} not uploaded yet: "
                    f"{exc.message}"
                )
        return runs.attempts(self.ledger, self.run_id)[attempt.number - 1]

    # -- durable checkpoints (rgt.durable) --------------------------------------------------

    def _durable_target(self) -> str | None:
        """ "local", "bucket" or None: where the job keeps its checkpoints off the box."""
        target = getattr(self.job, "durable", None)
        return None if target is None else str(target.kind)

    def _check_relaunch_fits(self) -> None:
        """Render a relaunch's boot hook (with a seed to wait for and check) before renting
        anything: a job whose relaunch would not fit the platform's boot hook limit is refused
        now (UsageError, exit 2), not after its first box is lost."""
        target = self._durable_target()
        if target is None:
            return
        from rgt.durable import DurableCheckpoint, files_dir
        from rgt.render import render_template

        name = "step-000000000.ckpt"  # as long as a checkpoint name usually is
        placeholder = DurableCheckpoint(
            name=name,
            step=0,
            sha256="0" * 64,
            size=0,
            target=target,
            location=str(files_dir(self.run_id) / name),
            verified_at="1970-01-01T00:00:00Z",
            run_id=self.run_id,
        )
        try:
            render_template(
                self.profile, "onstart", self.job, extra=self._seed_context(placeholder)
            )
        except RgtError as exc:
            raise type(exc)(
                f"a relaunch of run {self.run_id} from a durable checkpoint would not start: "
                f"{exc.message}; nothing was rented"
            ) from None

    def _newest_durable(self) -> Any:
        if self._durable_target() is None:
            return None
        from rgt.durable import newest_durable

        return newest_durable(self.run_id)

    def _durable_by_name(self, name: str) -> Any:
        from rgt.durable import durable_index

        return next((c for c in durable_index(self.run_id) if c.name == name), None)

    @staticmethod
    def _seed_context(checkpoint: Any) -> dict[str, Any]:
        from rgt.durable import seed_context

        return dict(seed_context(checkpoint))

    def _seed(self, instance_id: str, checkpoint: Any) -> None:
        """Upload the seed checkpoint once the box runs (its boot hook waits for it)."""
        from rgt.durable import seed_instance

        deadline = time.monotonic() + RUNNING_WAIT_SECONDS
        while (state := self.provider.show(instance_id).state) != "running":
            if state in NOT_COMING_UP:
                raise ProviderError(f"instance {instance_id} is {state}")
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"instance {instance_id} did not run within {RUNNING_WAIT_SECONDS:.0f} s; "
                    f"its seed checkpoint {checkpoint.name} was not uploaded"
                )
            time.sleep(min(self.interval, 1.0))
        seed_instance(self.provider, instance_id, self.job, checkpoint)
        self.say(f"instance {instance_id}: seeded with {checkpoint.name}")

    def _seed_if_waiting(self, instance_id: str) -> None:
        """Upload the seed of a running box whose seed could not be uploaded at its launch."""
        from rgt.durable import seed_instance

        checkpoint = self._unseeded.get(instance_id)
        if checkpoint is None:
            return
        try:
            seed_instance(self.provider, instance_id, self.job, checkpoint)
        except ProviderError as exc:
            self.say(f"instance {instance_id}: seed {checkpoint.name}: {exc.message}; again later")
            return
        del self._unseeded[instance_id]
        self.say(f"instance {instance_id}: seeded with {checkpoint.name}")

    def _sync(self, instance_id: str) -> None:
        """Keep the attempt's checkpoints durable (rgt.durable.sync_once) in a background
        thread: a copy that retries against a box that just died must not delay noticing it."""
        if self._durable_target() is None:
            return
        syncing = self._syncing
        if syncing is not None and syncing.instance_id == instance_id and syncing.is_alive():
            return
        self._stop_sync()
        self._syncing = _SyncLoop(self, instance_id)
        self._syncing.start()

    def _stop_sync(self) -> None:
        """Stop the sync rounds of the previous attempt (a round in progress ends on its own:
        its box is lost, or the job is done)."""
        if self._syncing is not None:
            self._syncing.stop.set()
            self._syncing = None

    # -- watching ---------------------------------------------------------------------------

    def _watch_once(self, attempt: AttemptRecord) -> None:
        """One look at the attempt's box: end the attempt when its job ended or its box is
        lost past the grace."""
        from rgt.lifecycle import poll

        assert attempt.instance_id is not None
        try:
            report = poll(
                attempt.instance_id,
                provider=self.provider,
                ledger=self.ledger,
                profile=self.profile,
                read_job=True,
            )
        except ProviderError as exc:  # the API or the box did not answer: look again later
            self.say(f"instance {attempt.instance_id}: {exc.message}; looking again")
            return
        now = self.clock()
        job = report.job
        if report.state == "gone":
            self._end(attempt, "lost", "the instance is gone and rgt did not end it")
            return
        if report.state == "running":
            self._seed_if_waiting(attempt.instance_id)
        if report.state == "running" and job is not None:
            if job.state == "succeeded":
                self._end(attempt, "succeeded", job.summary)
                return
            if job.state == "failed":
                self._end(attempt, "failed", job.summary)
                return
            if job.state == "stale":
                # The box says running but the boot hook is dead (the status record's own stale
                # rule): nothing will finish the job there; bounded like a lost host.
                self._lasting(attempt, "stale", "job-stalled", job.summary, now)
                return
            if attempt.lost_state is not None:
                runs.update_attempt(self.ledger, attempt.id, lost_state=None, lost_since=None)
            self._sync(attempt.instance_id)
            self._consider_move(attempt, now)
            return
        if attempt.lost_state == MOVING and report.state in STOPPED_STATES:
            # A move whose stop went through before the supervisor that decided it died.
            self._end(attempt, "moved", f"the box is {report.state}: its move was decided")
            return
        reason = LOST_REASON_OF_STATE.get(report.state)
        if reason is None:
            return
        self._lasting(
            attempt,
            report.state,
            reason,
            f"{report.state} ({report.status_msg or ''})",
            now,
            gotcha=report.gotcha,
        )

    def _lasting(
        self,
        attempt: AttemptRecord,
        state: str,
        reason: str,
        what: str,
        now: float,
        *,
        gotcha: str | None = None,
    ) -> None:
        """Count how long `state` has lasted (from the first look that saw it; the ledger keeps
        it across supervisors) and end the attempt for `reason` once it lasted its grace."""
        if attempt.lost_state != state:
            runs.update_attempt(self.ledger, attempt.id, lost_state=state, lost_since=now)
            attempt = attempt._replace(lost_state=state, lost_since=now)
            self.say(f"instance {attempt.instance_id}: {what}")
        grace = self._grace(reason)
        assert attempt.lost_since is not None
        lasted = now - attempt.lost_since
        if grace is not None and lasted >= grace:
            self._end(
                attempt,
                reason,
                f"{state} for {lasted:.0f} s (grace {grace:.0f} s)"
                + (f": {what}" if state == "stale" else "")
                + (f"; {gotcha}" if gotcha else ""),
            )
            self._record_lost_verdict(attempt, state, lasted, grace)

    def _record_lost_verdict(
        self, attempt: AttemptRecord, state: str, lasted: float, grace: float
    ) -> None:
        """Note in the box's state history that its host counted as lost past the grace on
        this supervisor's clock (the clock its lost_since is on): the discard gate's host-lost
        then rests on that measured duration, not on a second clock (rgt.discard)."""
        from rgt.discard import LOST_STATES, LOST_VERDICT

        if state in LOST_STATES and attempt.instance_id is not None:
            self.ledger.record_state(
                self.provider.platform,
                attempt.instance_id,
                state,
                detail=f"{LOST_VERDICT} ({state} for {lasted:.0f} s, grace {grace:.0f} s)",
            )

    def _grace(self, reason: str) -> float | None:
        """The profile's bound for `reason` (None: the profile sets none; wait, never guess)."""
        if reason == "preempted-past-grace":
            return self.profile.spot_grace_seconds
        return self.profile.host_lost_grace_seconds

    def _end(self, attempt: AttemptRecord, reason: str, detail: str) -> None:
        self._stop_sync()
        runs.update_attempt(
            self.ledger, attempt.id, ended=self.clock(), end_reason=reason, detail=detail
        )
        self.say(f"attempt {attempt.number} (instance {attempt.instance_id}): {reason}: {detail}")

    # -- superseded boxes, mid-run ----------------------------------------------------------

    def _tend_superseded(self, history: list[AttemptRecord]) -> None:
        """At most once per interval, for every box an earlier attempt left behind: one that
        came back running (a preempted box whose bid won again re-runs the job and bills
        compute) is stopped, reversibly; once rgt.discard proves it superseded mid-run, a human
        is asked once to discard it (`approve_discard`, in the background: the run is watched
        meanwhile), else the ledger notes it discardable now for `rgt poll RUN_ID`."""
        at = time.monotonic()
        if self._tended_at is not None and at - self._tended_at < self.interval:
            return
        self._tended_at = at
        for attempt in history:
            if attempt.end_reason not in runs.SUPERSEDED_REASONS or attempt.instance_id is None:
                continue
            try:
                self._tend_one(attempt, str(attempt.instance_id))
            except RgtError as exc:  # the next round looks again; the run goes on
                self.say(f"superseded instance {attempt.instance_id}: {exc.message}")

    def _tend_one(self, attempt: AttemptRecord, instance_id: str) -> None:
        from rgt.discard import may_discard

        state = self.provider.show(instance_id).state
        if state == "gone":
            return
        if state == "running":
            self._stop_superseded(attempt, instance_id)
            return
        if instance_id in self._told:
            return  # named discardable already (the evidence is not proven again each round)
        declined = _declined(self.ledger, instance_id)
        if instance_id in self._asked and declined is None:
            return  # asked by this supervisor: the answer is awaited, or it was a yes
        decision = may_discard(
            instance_id,
            "superseded",
            provider=self.provider,
            ledger=self.ledger,
            profile=self.profile,
            require_approval=False,
            now=self.clock(),
        )
        if not decision.allowed:
            return
        if self.approve_discard is None or declined is not None:
            # No human to ask, or one already said no (this supervisor or an earlier one of
            # the run: never asked again): the run's report names it discardable.
            if instance_id not in self._told:
                self._told.add(instance_id)
                self.ledger.record_state(
                    self.provider.platform, instance_id, state, detail=DISCARDABLE_NOTE
                )
                self.say(
                    f"superseded instance {instance_id} (attempt {attempt.number}) may be "
                    f"discarded now: {_discard_command(instance_id)} (a human approves)"
                    + (f"; {_declined_text(declined)}, not asked again" if declined else "")
                )
            return
        if self._asking is not None and self._asking.is_alive():
            return  # one question at a time; the next round asks about the next box
        self._asked.add(instance_id)
        self._asking = _DiscardAsk(self, instance_id)
        self._asking.start()

    def _stop_superseded(self, attempt: AttemptRecord, instance_id: str) -> None:
        """Stop a superseded box that runs again: never destroyed here (its disk stays and
        holds whatever its job wrote); the ledger records the stop."""
        from rgt.lifecycle import stop

        stop(instance_id, provider=self.provider, ledger=self.ledger, profile=self.profile)
        self._told.discard(instance_id)  # a discardable note before it ran again is stale
        self.say(
            f"superseded instance {instance_id} (attempt {attempt.number}) runs again (a "
            "preempted box whose bid won again re-runs the job and bills compute): stopped it "
            f"(reversible: its disk stays and bills {', '.join(self.profile.stop_still_bills)})"
        )

    # -- moving to a cheaper offer (rgt.runs.worth_moving) -----------------------------------

    def _consider_move(self, attempt: AttemptRecord, now: float) -> None:
        """While the job runs on an interruptible rental with a durable target: right after a
        new durable checkpoint of this attempt was verified (the work at risk is then only what
        was done since), at most once per max(interval, MOVE_LOOK_SECONDS), look for an offer
        the run could rent instead (as a relaunch would: same query and cap, no lost machine,
        not this machine) and move there when rgt.runs.worth_moving says it pays."""
        margin = self.request.move_margin
        if (
            margin <= 0
            or not self.request.interruptible
            or self._durable_target() is None
            or not self.profile.stop_verb  # the old box could not be left reversibly
        ):
            return
        watch = self._move_watch
        if watch.attempt_id != attempt.id:
            # The first look at this attempt's running job: what its restart took, when this
            # supervisor saw it start; a checkpoint verified before now is not new (its age is
            # unknown).
            restart = now - attempt.started if attempt.started >= self._born else None
            newest = self._newest_durable()
            self._move_watch = _MoveWatch(
                attempt_id=attempt.id,
                restart_seconds=restart,
                checkpoint=_checkpoint_key(newest),
                looked_at=now,
                considered_at=watch.considered_at,
            )
            return
        previous_look, watch.looked_at = watch.looked_at, now
        newest = self._newest_durable()
        if newest is None or newest.instance_id != attempt.instance_id:
            return
        if _checkpoint_key(newest) == watch.checkpoint:
            return
        watch.checkpoint = _checkpoint_key(newest)
        if watch.considered_at is not None and now - watch.considered_at < max(
            self.interval, MOVE_LOOK_SECONDS
        ):
            return
        watch.considered_at = now
        current = attempt.price_per_hour
        budget = self.request.budget
        if current is None or (budget is not None and self.spent() >= budget):
            return  # a move needs a new attempt, and none opens once the budget is spent
        history = runs.attempts(self.ledger, self.run_id)
        try:
            offer = self._pick_offer(runs.machines_to_avoid(history) | {attempt.machine_id})
        except RunStopped:
            return  # nothing else fits now
        except ProviderError as exc:
            self.say(f"run {self.run_id}: no search for a cheaper offer now: {exc.message}")
            return
        price = self._price(offer)
        if attempt.number in self._hourly:  # compare what both cost the job, disks included
            current, price = self._hourly[attempt.number], self._hourly_cost(offer)
        restart = watch.restart_seconds
        # The checkpoint was verified since the previous look; it was written on the box before
        # that, by at most what the box's watcher (a file counts after it kept still over one
        # scan) and one sync round take.
        from rgt.durable import WATCH_SECONDS

        at_risk = (
            now - (previous_look or now) + 2 * WATCH_SECONDS + max(self.interval, WATCH_SECONDS)
        )
        if not runs.worth_moving(
            current,
            price,
            margin=margin,
            restart_seconds=runs.MOVE_RESTART_SECONDS if restart is None else restart,
            at_risk_seconds=at_risk,
        ):
            return
        self._move(attempt, offer, newest, current, price)

    def _move(
        self, attempt: AttemptRecord, offer: Offer, checkpoint: Any, current: float, price: float
    ) -> None:
        """Stop the attempt's box (reversible: its disk stays; superseded, it is never destroyed
        without the gate), then end the attempt as `moved`; the loop then opens the next attempt
        on the cheapest offer, seeded from the newest durable checkpoint (`checkpoint`, or one
        verified by the sync round that was still running). A stop that failed while the box
        still runs moves nothing (two boxes would bill for one job): the job goes on there."""
        from rgt.lifecycle import stop

        instance_id = str(attempt.instance_id)
        self._stop_sync()  # its rounds would only fail against a stopped box (the next look
        # starts them again if the box stays)
        # Written before the stop: a supervisor killed between the stop and the end below
        # finds it and ends the attempt `moved` (not stuck-scheduling, which would keep a good
        # machine out). A box still running clears it at the next look.
        runs.update_attempt(self.ledger, attempt.id, lost_state=MOVING, lost_since=self.clock())
        try:
            stop(instance_id, provider=self.provider, ledger=self.ledger, profile=self.profile)
        except RgtError as exc:
            try:
                state = self.provider.show(instance_id).state
            except RgtError:
                state = "unknown"
            if state in ("running", "unknown"):
                runs.update_attempt(self.ledger, attempt.id, lost_state=None, lost_since=None)
                self.say(
                    f"instance {instance_id}: no move now, its stop failed ({exc.message}); "
                    "the job goes on there"
                )
                return
        self._end(
            attempt,
            "moved",
            f"offer {offer.id} (machine {offer.machine_id}) costs the job {price:.4f} $/h, "
            f"{1.0 - price / current:.0%} less than {current:.4f} $/h here: the run moves "
            f"(newest durable checkpoint: {checkpoint.name})",
        )
        bills = ", ".join(self.profile.stop_still_bills) or "nothing"
        self.say(f"instance {instance_id}: stopped (superseded; a stopped box still bills {bills})")

    # -- the end ----------------------------------------------------------------------------

    def _finish(self, attempt: AttemptRecord) -> RunOutcome:
        """The job succeeded: pull → verify → a human approves → destroy, through the gate."""
        from rgt.gate import destroy_with_gate
        from rgt.lifecycle import job_results_dir
        from rgt.pull import pull_instance
        from rgt.verify import verify_pull

        instance_id = str(attempt.instance_id)
        local = job_results_dir(self.run_id)
        if self.provider.show(instance_id).state == "gone":
            verified = self.ledger.latest_verification(instance_id)
            status = "done" if verified is not None else "stopped"
            message = (
                f"run {self.run_id} is done: instance {instance_id} was destroyed after its "
                f"results were verified in {local}"
                if verified is not None
                else f"run {self.run_id}: instance {instance_id} is gone and no verification "
                "of its results is recorded"
            )
            runs.set_run_status(self.ledger, self.run_id, status, message)
            return self._outcome(status, message, instance_id, str(local))
        self.say(f"instance {instance_id}: the job succeeded; pulling into {local}")
        pull_instance(
            instance_id,
            self.job.results_root,
            str(local),
            provider=self.provider,
            ledger=self.ledger,
            profile=self.profile,
        )
        verify_pull(local, ledger=self.ledger, expected_run_id=self.run_id)
        self.say(f"{local}: verified against the box's manifest")
        approval_id = None
        if self.approve is not None:
            from rgt.approval import ledger_summary

            if self._asking is not None:
                # One question on the terminal at a time: the open discard question first.
                self._asking.join()
            with self._question():
                approval_id = self.approve(
                    self.ledger, instance_id, ledger_summary(self.ledger, instance_id)
                )
        if approval_id is None:
            verb = self.profile.meter_stop_verb or "destroy"
            message = (
                f"run {self.run_id} succeeded on instance {instance_id}; results verified in "
                f"{local}. It still bills: a human approves its {verb}"
            )
            # The ledger keeps no command: run_report's next_action names it in its reader's
            # terms (an `rgt` command, or the MCP destroy tool).
            runs.set_run_status(self.ledger, self.run_id, "awaiting-approval", message)
            message += f" with `rgt destroy {instance_id}`"
            return self._outcome("awaiting-approval", message, instance_id, str(local))
        destroy_with_gate(
            instance_id,
            provider=self.provider,
            ledger=self.ledger,
            profile=self.profile,
            approval_id=approval_id,
        )
        message = (
            f"run {self.run_id} is done: results verified in {local}, instance {instance_id} "
            "destroyed through the gate"
        )
        runs.set_run_status(self.ledger, self.run_id, "done", message)
        return self._outcome("done", message, instance_id, str(local))

    def _outcome(
        self, status: str, message: str, instance_id: str | None, local: str | None
    ) -> RunOutcome:
        history = runs.attempts(self.ledger, self.run_id)
        left = self._left_behind(history)
        if left:
            message += ". " + self._left_behind_note(history)
        return RunOutcome(
            run_id=self.run_id,
            status=status,
            message=message,
            instance_id=instance_id,
            results_dir=local,
            spent=round(self.spent(history), 6),
            attempts=[attempt_summary(a) for a in history],
            superseded=left,
        )

    def _left_behind(self, history: list[AttemptRecord]) -> list[str]:
        """Boxes of superseded attempts that still exist (they may come back and bill)."""
        left = []
        for a in history:
            if a.end_reason not in runs.SUPERSEDED_REASONS or a.instance_id is None:
                continue
            try:
                state = self.provider.show(a.instance_id).state
            except RgtError:
                state = "unknown"
            if state != "gone":
                left.append(a.instance_id)
        return left

    def _left_behind_note(self, history: list[AttemptRecord]) -> str:
        left = self._left_behind(history)
        if not left:
            return ""
        return (
            f"superseded instance(s) {', '.join(left)} still exist and may bill: pull their "
            "results, or once this run's results are verified (or, mid-run, a later attempt "
            "resumed past a durable checkpoint as new as theirs), `rgt discard ID --reason "
            "superseded` (a human approves); `rgt sweep` lists them"
        )

    def _failed_message(self, attempt: AttemptRecord) -> str:
        from rgt.paths import run_dir

        return (
            f"run {self.run_id}: the job FAILED on attempt {attempt.number} (instance "
            f"{attempt.instance_id}): {attempt.detail}; its status record and logs are in "
            f"{run_dir(self.run_id)}. It is not relaunched (it would fail the same way): fix "
            f"the job, then `rgt discard {attempt.instance_id} --reason failed-job` ends the box"
        )


@dataclass
class _MoveWatch:
    """What the supervisor keeps between its looks to decide a move (Supervisor._consider_move)."""

    attempt_id: int | None = None  # the attempt the next three fields are about
    restart_seconds: float | None = None  # its start to its first running job status, if seen
    checkpoint: tuple[str, str, str] | None = None  # the newest durable checkpoint looked at
    looked_at: float | None = None  # the previous look at its running job
    considered_at: float | None = None  # when a move was last considered (any attempt)


def _checkpoint_key(checkpoint: Any) -> tuple[str, str, str] | None:
    """Which verified checkpoint this is: a name verified again (by a later attempt) is new."""
    if checkpoint is None:
        return None
    return (checkpoint.name, checkpoint.instance_id, checkpoint.verified_at)


class _SyncLoop(threading.Thread):
    """Durable sync rounds of one instance, one every `interval`, until `stop` is set; with
    its own ledger connection and provider (neither is shared across threads)."""

    def __init__(self, supervisor: Supervisor, instance_id: str) -> None:
        super().__init__(name=f"rgt-sync-{instance_id}", daemon=True)
        self.supervisor = supervisor
        self.instance_id = instance_id
        self.ledger_path = supervisor.ledger.path
        self.stop = threading.Event()

    def run(self) -> None:
        from rgt.durable import WATCH_SECONDS, lower_priority, sync_once
        from rgt.providers import get_provider

        sup = self.supervisor
        lower_priority()  # the copies and hashing yield to a job that shares this machine
        try:
            provider = get_provider(sup.provider.platform, sup.profile)
            with Ledger.open(self.ledger_path) as ledger:
                while not self.stop.is_set():
                    try:
                        sync_once(
                            ledger,
                            self.instance_id,
                            provider=provider,
                            profile=sup.profile,
                            job=sup.job,
                        )
                    except Refused:
                        pass  # the previous attempt's last round still runs: the next one syncs
                    except RgtError as exc:  # the next round tries again; the job keeps running
                        if not self.stop.is_set():
                            sup.say(f"instance {self.instance_id}: durable sync: {exc.message}")
                    self.stop.wait(max(sup.interval, WATCH_SECONDS))
        except Exception as exc:  # a thread's failure must be seen, not vanish
            sup.say(f"instance {self.instance_id}: durable sync stopped: {exc!r}")


class _DiscardAsk(threading.Thread):
    """Ask the human once (`approve_discard`, shown what is lost) to discard one superseded
    box, and discard it through the gate when they approve; in its own thread, ledger
    connection and provider, so a human slow to answer never stops the run being watched."""

    def __init__(self, supervisor: Supervisor, instance_id: str) -> None:
        super().__init__(name=f"rgt-discard-{instance_id}", daemon=True)
        self.supervisor = supervisor
        self.instance_id = instance_id

    def run(self) -> None:
        from rgt.discard import loss_summary, may_discard
        from rgt.gate import discard_with_gate
        from rgt.providers import get_provider

        sup, instance_id = self.supervisor, self.instance_id
        assert sup.approve_discard is not None
        try:
            provider = get_provider(sup.provider.platform, sup.profile)
            with Ledger.open(sup.ledger.path) as ledger:
                decision = may_discard(
                    instance_id,
                    "superseded",
                    provider=provider,
                    ledger=ledger,
                    profile=sup.profile,
                    require_approval=False,
                )
                if not decision.allowed:
                    return
                answer, detail = "declined", "the human declined"
                try:
                    with sup._question():
                        approval_id = sup.approve_discard(
                            ledger, instance_id, loss_summary(decision)
                        )
                except Refused as exc:
                    approval_id = None
                    detail = exc.message
                    if not isinstance(exc, Declined):  # the answer approved nothing: say why
                        answer = "not-approved"
                        sup.say(f"superseded instance {instance_id}: {exc.message}")
                if approval_id is None:
                    self._record_no(ledger, provider, answer, detail, decision.evidence)
                    sup.say(
                        f"superseded instance {instance_id}: not discarded ("
                        f"{'declined' if answer == 'declined' else 'not approved'}; no "
                        f"supervisor of run {sup.run_id} asks again); "
                        f"{_discard_command(instance_id)} ends it later, `rgt poll "
                        f"{sup.run_id}` lists it"
                    )
                    return
                outcome = discard_with_gate(
                    instance_id,
                    "superseded",
                    provider=provider,
                    ledger=ledger,
                    profile=sup.profile,
                    approval_id=approval_id,
                )
            sup.say(
                f"superseded instance {instance_id}: discarded through the gate "
                f"({outcome.verb} confirmed: {outcome.confirmed_state})"
            )
        except RgtError as exc:
            sup.say(f"superseded instance {instance_id}: not discarded: {exc.message}")
        except Exception as exc:  # a thread's failure must be seen, not vanish
            sup.say(f"superseded instance {instance_id}: discard stopped: {exc!r}")

    def _record_no(
        self,
        ledger: Ledger,
        provider: Provider,
        answer: str,
        detail: str,
        evidence: dict[str, Any],
    ) -> None:
        """Keep the human's no in the ledger (no later supervisor of the run asks again), and
        note the box discardable now for the run's report, as a supervisor without a human
        does."""
        sup, instance_id = self.supervisor, self.instance_id
        ledger.record_discard_declined(
            provider.platform,
            instance_id,
            run_id=sup.run_id,
            reason="superseded",
            answer=answer,
            detail=detail,
        )
        ledger.record_state(
            provider.platform,
            instance_id,
            str(evidence.get("state", "unknown")),
            detail=DISCARDABLE_NOTE,
        )
        sup._told.add(instance_id)


# The ledger note (an instance event's detail) that the supervisor proved a superseded box
# discardable mid-run; `run_report` names such boxes while it is their latest event.
DISCARDABLE_NOTE = "discardable now: superseded (rgt run checked the evidence)"


def _declined(ledger: Ledger, instance_id: str) -> DiscardDeclineRecord | None:
    """The latest no a human gave when a supervisor asked to discard this superseded box."""
    found = [d for d in ledger.discard_declines(instance_id) if d.reason == "superseded"]
    return found[-1] if found else None


def _declined_text(declined: DiscardDeclineRecord) -> str:
    """When and how a human said no, in the words `rgt run` and `rgt poll` use."""
    from rgt.manifest import utc_text

    how = "declined" if declined.answer == "declined" else f"not approved ({declined.detail})"
    return f"{how} when rgt run asked at {utc_text(declined.at)}"


def _discard_command(instance_id: str) -> str:
    return f"`rgt discard {instance_id} --reason superseded`"


def discardable(ledger: Ledger, history: list[AttemptRecord]) -> list[str]:
    """The superseded boxes of a run that its supervisor last saw discardable now."""
    found = []
    for attempt in history:
        if attempt.end_reason not in runs.SUPERSEDED_REASONS or attempt.instance_id is None:
            continue
        events = ledger.state_history(str(attempt.instance_id))
        if events and events[-1][2] == DISCARDABLE_NOTE:
            found.append(str(attempt.instance_id))
    return found


def attempt_summary(attempt: AttemptRecord, now: float | None = None) -> dict[str, Any]:
    """One attempt as plain data (for `rgt run --json`, `rgt poll RUN_ID`, MCP)."""
    at = time.time() if now is None else now
    return {
        "attempt": attempt.number,
        "instance_id": attempt.instance_id,
        "offer_id": attempt.offer_id,
        "machine_id": attempt.machine_id,
        "price_per_hour": attempt.price_per_hour,
        "seed": attempt.seed_name,
        "seed_step": attempt.seed_step,
        "ended": attempt.end_reason,
        "detail": attempt.detail,
        "cost": round(attempt.cost(at), 6),
    }


def run_report(
    ledger: Ledger, run_id: str, *, now: float | None = None, for_tool: bool = False
) -> dict[str, Any] | None:
    """Where run `run_id` stands, from the ledger (None: rgt never supervised it): its status,
    whether a supervisor runs it now, its attempts and what they cost; the next action as an
    `rgt` command, or as an MCP tool call with `for_tool`."""
    from rgt.locks import run_supervised

    record = runs.run(ledger, run_id)
    if record is None:
        return None
    at = time.time() if now is None else now
    history = runs.attempts(ledger, run_id)
    supervised = run_supervised(run_id)
    current = history[-1] if history else None
    status = record.status
    if status == "running" and not supervised:
        status = "unsupervised"
    return {
        "run_id": run_id,
        "status": status,
        "detail": record.detail,
        "supervised": supervised,
        "instance_id": current.instance_id if current is not None else None,
        "attempts": [attempt_summary(a, at) for a in history],
        "spent": round(sum(a.cost(at) for a in history), 6),
        "budget": record.budget,
        "max_price_per_hour": record.max_price_per_hour,
        "discardable": (ready := discardable(ledger, history)),
        # The superseded boxes whose discard a human did not approve when a supervisor asked:
        # no supervisor of the run asks again; an explicit discard still ends them.
        "discard_declined": (declined := _declines(ledger, history)),
        "next_action": _run_next_action(record, status, current, for_tool)
        + _discardable_note(ready, declined, for_tool),
    }


def _declines(ledger: Ledger, history: list[AttemptRecord]) -> list[dict[str, Any]]:
    """The latest no of each superseded box of the run, as plain data."""
    from rgt.manifest import utc_text

    found = []
    for attempt in history:
        if attempt.end_reason not in runs.SUPERSEDED_REASONS or attempt.instance_id is None:
            continue
        no = _declined(ledger, str(attempt.instance_id))
        if no is not None:
            found.append(
                {
                    "instance_id": no.instance_id,
                    "answer": no.answer,
                    "detail": no.detail,
                    "at": utc_text(no.at),
                    "text": _declined_text(no),
                }
            )
    return found


def _discardable_note(ready: list[str], declined: list[dict[str, Any]], for_tool: bool) -> str:
    """The superseded boxes that may be discarded now, with the step for each (and, for a box
    whose discard a human did not approve when asked, when)."""
    from rgt.nextstep import Step, render

    if not ready:
        return ""
    said_no = {d["instance_id"]: d["text"] for d in declined}
    steps = [
        render("{next}", Step.of("discard", instance_id=i, reason="superseded"), tool=for_tool)
        + (f"` (instance {i}: {said_no[i]}; not asked again)" if i in said_no else "`")
        for i in ready
    ]
    return (
        f"; superseded instance(s) {', '.join(ready)} may be discarded now (a human approves): "
        + ", ".join(f"`{step}" for step in steps)
    )


def _run_next_action(
    record: runs.RunRecord, status: str, current: AttemptRecord | None, for_tool: bool = False
) -> str:
    from rgt.nextstep import Step, render

    job = record.job_file or "JOB.yaml"
    # The takeover repeats a margin other than the default (0: the run never moves).
    margin = record.move_margin if record.move_margin != runs.MOVE_MARGIN else None
    if status == "running":
        poll = Step.of("poll", instance_id=record.run_id)
        return render("the supervisor watches it: poll again later (`{next}`)", poll, tool=for_tool)
    if status == "unsupervised" and for_tool:
        again = Step.of(
            "run",
            job=job,
            max_price_per_hour=record.max_price_per_hour,
            budget=record.budget,
            interruptible=True if record.interruptible else None,
            bid=record.bid_per_hour,
            move_if_cheaper=margin,
        )
        return (
            f"no supervisor runs it now (it was stopped or killed): `{again.call()}` takes it "
            "over from the ledger without renting twice"
        )
    if status == "unsupervised":
        flags = f"--max-price {record.max_price_per_hour:g}"
        flags += f" --budget {record.budget:g}" if record.budget is not None else ""
        flags += " --interruptible" if record.interruptible else ""
        flags += f" --bid {record.bid_per_hour:g}" if record.bid_per_hour is not None else ""
        flags += f" --move-if-cheaper {margin:g}" if margin is not None else ""
        return (
            f"no supervisor runs it now (it was stopped or killed): `rgt run {job} {flags}` "
            "takes it over from the ledger without renting twice"
        )
    if status == "awaiting-approval" and current is not None:
        destroy = Step.of("destroy", instance_id=current.instance_id)
        return render("a human approves the destroy: `{next}`", destroy, tool=for_tool)
    return record.detail or status


def start_detached(
    job_file: str,
    run_id: str,
    *,
    max_price_per_hour: float,
    budget: float | None = None,
    interruptible: bool = False,
    bid_per_hour: float | None = None,
    interval: float | None = None,
    platform: str | None = None,
    move_margin: float | None = None,
) -> dict[str, Any]:
    """Start `rgt run JOB_FILE ...` (not detached) in its own session, its output appended to
    the run's `supervisor.log`; returns {run_id, pid, log}. Refused (exit 4) while a supervisor
    of the run already runs. Follow it with `rgt poll RUN_ID` (MCP: poll)."""
    import os
    import subprocess
    import sys

    from rgt.errors import Refused
    from rgt.locks import run_supervised
    from rgt.paths import run_dir

    if run_supervised(run_id):
        raise Refused(
            f"run {run_id}: a supervisor of it runs right now; follow it with `rgt poll {run_id}`"
        )
    command = [sys.executable, "-m", "rgt", "run", job_file, "--max-price", str(max_price_per_hour)]
    for flag, value in (
        ("--budget", budget),
        ("--bid", bid_per_hour),
        ("--interval", interval),
        ("--platform", platform),
        ("--move-if-cheaper", move_margin),
    ):
        if value is not None:
            command += [flag, str(value)]
    if interruptible:
        command.append("--interruptible")
    folder = run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / DETACHED_LOG
    with open(log, "ab") as output, open(os.devnull, "rb") as nothing:
        child = subprocess.Popen(
            command,
            stdin=nothing,  # no terminal: the run ends verified, waiting for `rgt destroy`
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a closed terminal or Ctrl-C there does not stop it
            close_fds=True,
        )
    # Answer only once the child supervises (holds the run's lock), so a second start right
    # after this one is refused here, and a child that stops at once is reported, not "started".
    deadline = time.monotonic() + DETACH_START_SECONDS
    while not run_supervised(run_id):
        code = child.poll()
        if code == 0:
            break  # it already finished (a run that was done): its log says how
        if code is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise RgtError(
                f"run {run_id}: the background supervisor stopped at once (exit {code}): {tail[0]}",
                exit_code=code if code in (2, 3, 4, 6) else None,
            )
        if time.monotonic() > deadline:
            break  # slow to start: it may still take the lock; `rgt poll` tells
        time.sleep(0.05)
    return {"run_id": run_id, "pid": child.pid, "log": str(log)}
