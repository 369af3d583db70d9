"""Cost under preemption: what a job pays on an interruptible rental, by checkpoint policy.

A fixed preemption trace (seeded exponential gaps, MTBF 3 h of running time; after each
preemption the instance waits paused until its bid wins again) and one job: 12 h of useful GPU
work, a checkpoint costs 30 s to write, each start costs 2 min (boot, load the checkpoint).
Three policies:

  Young/Daly   checkpoint every W = sqrt(2 * MTBF * C) of work (rgt.cadence.young_daly);
  every epoch  checkpoint once per hour of work (a common default);
  none         no checkpoint: every preemption restarts the job from scratch.

Each policy's timeline (running, preempted/paused, running, ... destroyed) is REPLAYED on the
emulator with its clock frozen and advanced by hand: the dollars are the emulator's meter
(compute while running, storage in every state, bandwidth), not a formula of this script. The
ideal is the compute of the useful work alone (12 h x the rental's $/h). Target: Young/Daly
within 1.10x of ideal.

Part 2, recovery (`rgt run`): the same job when boxes are LOST, not paused: part 1's
preemption process (MTBF 3 h) plus an independent seeded host-loss process (MTBF 12 h), merged on
the run's running time. `rgt run` replaces a preempted box at once (vast.ai's spot_grace is 0)
and an offline one after the profile's host_lost_grace (30 min), renting the offer of the job's
GPU model that costs the job least per hour, its disk included (rgt.runs.hourly_cost: the bid
plus DISK_GB at the offer's storage price, as `rgt run` ranks), on a machine the run may rent
(rgt.runs.machines_to_avoid: never a lost HOST again; a preempted machine once the higher bid
that took it ends, OUTAGE_SECONDS later; not one whose GPUs the run's own live boxes hold).
Three runs:

  recover+move  resume from the newest checkpoint that was DURABLE (copied off the box and
                verified) when the box was lost (Young/Daly checkpoints, each durable
                DURABLE_LAG_SECONDS of running after it was written); and right after a
                checkpoint becomes durable, move when rgt.runs.worth_moving says a rentable
                offer on another machine is worth it (MOVE_MARGIN, on the hourly costs above;
                MARGINS are swept too, by the arithmetic; restart = RESTART_SECONDS;
                at risk = the work since that checkpoint; remaining = the work left): the
                attempt ends `moved`, its box is stopped (its disk bills until discarded), the
                next attempt is seeded from that checkpoint;
  recover       the same without moves;
  scratch       no durable checkpoint: every loss restarts the job from step 0;

each with its superseded boxes discarded at once (a human approves `discard --reason superseded`
as soon as a later attempt runs resumed from its seed) or kept until the run ends (then a
preempted box resumes when its bid wins again and bills compute, as vast.ai restarts it).

The bench simulates each run into a log of actions (rent, preempt, bid won, host offline, stop,
discard) and prices it two ways: its own arithmetic (compute at the bid while running, storage
from rent to discard) and a replay of the log on the frozen-clock emulator through the real
`vastai` SDK, whose meter is the figure reported for the replayed runs (the replay also checks
that every rented offer is the one the emulator lists as rentable that costs the job least).
Replayed: the issue's trace (TRACE_SEED), every run; the first REPLAYED_TRACES of the TRACES
seeded traces, the recovering runs with superseded boxes discarded; the rest by the arithmetic
(the largest arithmetic-vs-meter difference is printed). Two markets: the emulator's default
(60 machines, seed 0) and a deeper one (600 machines, same seed). Target: recovery within 1.15x
of the ideal: the same job uninterrupted (one boot, the work) on the first offer (the one that
costs the job least), by the emulator's meter (compute and storage). Last, recover+move in
MARKET_SEEDS draws of the deep market (emulator seeds 0..N-1; `--market-seeds`), by the
arithmetic: how far the machines after the cheapest sit decides most of what is left above the
checkpointing floor.

    .venv/bin/python bench/bench_cost.py [--traces 100] [--replayed 10] [--margins 0.25,0.1]
        [--market-seeds 8]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import REPO, emit, machine_line, median, percentile, table

sys.path.insert(0, str(REPO))

from rgt.cadence import young_daly
from rgt.pricing import HOURS_PER_MONTH
from rgt.runs import MOVE_MARGIN, hourly_cost, worth_moving

WORK_SECONDS = 12 * 3600.0
MTBF_SECONDS = 3 * 3600.0
CHECKPOINT_SECONDS = 30.0
RESTART_SECONDS = 120.0
OUTAGE_SECONDS = 20 * 60.0  # paused until the bid wins again
EPOCH_SECONDS = 3600.0
TRACE_SEED = 2026
GIVE_UP_SECONDS = 14 * 86400.0  # a policy that has not finished in two weeks is reported as such
TARGET_RATIO = 1.10
DISK_GB = 40.0


def preemption_trace(seed: int, mtbf: float, count: int = 2000) -> list[float]:
    """Running seconds between consecutive preemptions (the same for every policy)."""
    rng = random.Random(seed)
    return [rng.expovariate(1.0 / mtbf) for _ in range(count)]


@dataclass
class Timeline:
    """Segments of (state, seconds) from the first start to the end of the job."""

    segments: list[tuple[str, float]] = field(default_factory=list)
    finished: bool = False
    preemptions: int = 0
    work_lost_seconds: float = 0.0
    checkpoints: int = 0

    def seconds(self, state: str) -> float:
        """Total seconds spent in `state`."""
        return sum(s for name, s in self.segments if name == state)


def simulate(interval: float | None, trace: list[float]) -> Timeline:
    """The timeline of the job with a checkpoint every `interval` seconds of work (None: never).

    Within a run, the box boots (RESTART_SECONDS), then alternates work and checkpoint writes;
    a preemption loses the work since the last completed checkpoint."""
    timeline = Timeline()
    saved = 0.0  # work secured by the newest complete checkpoint
    wall = 0.0
    for gap in trace:
        run = 0.0
        progress = saved
        since_ckpt = 0.0
        budget = gap - RESTART_SECONDS
        run += min(gap, RESTART_SECONDS)
        finished = False
        while budget > 0:
            remaining = WORK_SECONDS - progress
            to_ckpt = math.inf if interval is None else interval - since_ckpt
            chunk = min(remaining, to_ckpt, budget)
            progress += chunk
            since_ckpt += chunk
            budget -= chunk
            run += chunk
            if progress >= WORK_SECONDS:
                finished = True
                break
            if interval is not None and since_ckpt >= interval and budget > 0:
                if budget >= CHECKPOINT_SECONDS:
                    saved = progress
                    timeline.checkpoints += 1
                    since_ckpt = 0.0
                run += min(budget, CHECKPOINT_SECONDS)
                budget -= CHECKPOINT_SECONDS
        timeline.segments.append(("running", run))
        wall += run
        if finished:
            timeline.finished = True
            return timeline
        timeline.preemptions += 1
        timeline.work_lost_seconds += progress - saved
        timeline.segments.append(("paused", OUTAGE_SECONDS))
        wall += OUTAGE_SECONDS
        if wall > GIVE_UP_SECONDS:
            return timeline
    return timeline


def replay_on_emulator(timelines: dict[str, Timeline]) -> tuple[dict[str, dict[str, float]], dict]:
    """Rent one interruptible instance per policy on the emulator (frozen clock), walk each
    timeline with advance/preempt/win_bid, and read the meter. Returns dollars by policy and
    the offer rented."""
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider, run_label
    from rgt.sim import Emulator

    dollars: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rgt-bench-cost-") as state:
        emulator = Emulator(state_dir=Path(state), seed=0, ssh=False, time_scale=0.0)
        with emulator:
            os.environ["VAST_API_KEY"] = emulator.api_key  # the emulator's key, not a real one
            provider = VastProvider(api_url=emulator.url)
            offers = provider.search_offers(OfferQuery(interruptible=True, limit=50))
            offer = offers[0]
            bid = offer.min_bid
            for name, timeline in timelines.items():
                instance = provider.create(
                    offer.id,
                    image="bench/cost",
                    disk_gb=DISK_GB,
                    onstart="sleep 1000000",
                    label=run_label(f"bench-cost-{len(dollars)}"),
                    interruptible=True,
                    bid_per_hour=bid,
                )
                for state_name, seconds in timeline.segments:
                    if state_name == "paused":
                        emulator.preempt(instance.id)
                        emulator.clock.advance(seconds)
                        emulator.win_bid(instance.id)
                    else:
                        emulator.clock.advance(seconds)
                meter = emulator.meter(instance.id)
                dollars[name] = {
                    k: float(meter[k]) for k in ("compute", "storage", "bandwidth", "total")
                }
                # Free the GPU for the next policy's rental (a benchmark, not rgt: no gate here).
                provider.destroy(instance.id)
    return dollars, {"offer_id": offer.id, "gpu": offer.gpu_name, "bid_per_hour": bid,
                     "storage_cost_per_gb_month": offer.storage_cost_per_gb_month}  # fmt: skip


HOST_LOSS_MTBF_SECONDS = 12 * 3600.0
HOST_LOST_GRACE_SECONDS = 30 * 60.0  # profiles/vastai.md host_lost_grace
DURABLE_LAG_SECONDS = 60.0  # written -> verified off the box (bench_durable: ~11 s for small ones)
RECOVERY_TARGET = 1.15
TRACES = 100  # seeded traces of the distribution (besides the issue's own, TRACE_SEED)
TRACE_SEED_BASE = 10_000  # trace i uses seeds BASE + 2i (preemptions) and BASE + 2i + 1 (hosts)
REPLAYED_TRACES = 10  # of those, replayed on the emulator too (the rest: the bench's arithmetic)
# The move margins swept for recover+move (0: never move, i.e. recover): rgt.runs.MOVE_MARGIN
# is set from this table.
MARGINS = (0.25, 0.20, 0.15, 0.10, 0.05, 0.0)
# The emulator's default market and a deeper one (the first 60 machines are the same: a seed's
# machines are drawn in order): real vast.ai lists far more than 5 machines of a popular model.
MARKETS = {"default (60 machines)": 60, "deep (600 machines)": 600}
# Other draws of the deep market (emulator seeds 1..N-1 next to seed 0): where the runner-up
# machines sit against the cheapest is a draw of the market, as a trace is one of the losses.
# Only the deep size: a 60-machine draw often lists 1-2 machines of the model, and a run that
# runs out of machines stops (exit 6) cheaper than one that finishes.
MARKET_SEEDS = 8
# The runs compared, by (checkpoint interval or None, moves to a cheaper offer).
RUNS = ("recover+move", "recover", "scratch")
SUPERSEDED = {"discarded at once": True, "kept until the run ends": False}


@dataclass
class Attempt:
    """One rental of a recovered run: running seconds, how it ended, the work it secured."""

    running: float
    ended: str  # "preempted", "host-lost", "moved" or "succeeded"
    start_work: float = 0.0
    lost_work: float = 0.0


def recovery_events(seed: int, count: int = 2000) -> list[tuple[float, str]]:
    """(running seconds until the next loss, "preempted" | "host-lost"): part 1's preemption
    trace (the same seed and gaps) plus an independent seeded host-loss process, merged on the
    run's running time."""
    times = []
    for kind, gaps in (
        ("preempted", preemption_trace(seed, MTBF_SECONDS, count)),
        ("host-lost", preemption_trace(seed + 1, HOST_LOSS_MTBF_SECONDS, count)),
    ):
        at = 0.0
        for gap in gaps:
            at += gap
            times.append((at, kind))
    times.sort()
    events, previous = [], 0.0
    for at, kind in times:
        events.append((at - previous, kind))
        previous = at
    return events


@dataclass(frozen=True)
class MarketOffer:
    """One 1-GPU interruptible offer of the job's GPU model, as the emulator lists it."""

    offer_id: str
    machine_id: str
    bid: float  # $/h: the offer's min_bid, what the run bids
    storage_cost: float  # $/GB-month
    gpu_count: int  # GPUs of its machine (the run's kept boxes may hold some)
    hourly: float  # $/h the job pays on it, its disk included: rgt.runs.hourly_cost, as rgt ranks


@dataclass
class Rental:
    """One attempt's box: what it cost is read off its actions (arithmetic) or the meter."""

    number: int
    offer: MarketOffer
    created: float
    stopped: float | None = None  # moved: the box is stopped (its disk still bills)
    destroyed: float | None = None
    offline: bool = False  # its host stopped answering (it never comes back in this run)


@dataclass
class RunLog:
    """A run's actions in time order, (wall seconds, action, rental, detail): the one record
    both the bench's arithmetic and the emulator replay read."""

    actions: list[tuple[float, str, Rental, Any]] = field(default_factory=list)
    rentals: list[Rental] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    finished: bool = False
    waited: float = 0.0  # seconds the run waited for a machine to come free
    end: float = 0.0


class _Market:
    """What the run may rent at a moment: the offers minus machines whose host it lost, those
    held by a (notional) higher bid, and those whose GPUs its own live boxes hold."""

    def __init__(self, offers: list[MarketOffer]) -> None:
        self.offers = sorted(offers, key=lambda o: (o.hourly, o.offer_id))
        self.lost_hosts: set[str] = set()
        self.outbid_until: dict[str, float] = {}

    def excluded(self, now: float, log: RunLog, also: str | None = None) -> set[str]:
        held: dict[str, int] = {}
        for r in log.rentals:
            if r.destroyed is None and r.stopped is None:  # a preempted box keeps its GPU
                held[r.offer.machine_id] = held.get(r.offer.machine_id, 0) + 1
        full = {o.machine_id for o in self.offers if held.get(o.machine_id, 0) >= o.gpu_count}
        outbid = {m for m, until in self.outbid_until.items() if until > now}
        return self.lost_hosts | outbid | full | ({also} if also else set())

    def cheapest(self, now: float, log: RunLog, also: str | None = None) -> MarketOffer | None:
        excluded = self.excluded(now, log, also)
        return next((o for o in self.offers if o.machine_id not in excluded), None)


def simulate_run(
    events: list[tuple[float, str]],
    offers: list[MarketOffer],
    *,
    interval: float | None,
    move: bool,
    discard_at_once: bool,
    margin: float = MOVE_MARGIN,
) -> RunLog:
    """The run `rgt run` supervises on this trace and market: each attempt rents the rentable
    offer cheapest for the job (rgt.runs.hourly_cost: bid + disk), works from the newest
    durable checkpoint (`interval` None: from scratch), and ends when the trace loses its box,
    when the job is done, or (`move`) right after a checkpoint became durable, when
    rgt.runs.worth_moving (at `margin`, on the same hourly costs) says the cheapest rentable
    offer on another machine is worth the restart. Superseded boxes are discarded once a later
    attempt has resumed past its seed (`discard_at_once`) or live until the run ends."""
    log, market = RunLog(), _Market(offers)
    scheduled: list[tuple[float, int, str, Rental]] = []  # win_bid / discard, fired in order
    now = 0.0

    def act(when: float, what: str, rental: Rental, detail: Any = None) -> None:
        flush(when)
        log.actions.append((when, what, rental, detail))
        if what == "stop":
            rental.stopped = when
        elif what == "destroy":
            rental.destroyed = when
        elif what in ("offline", "host-down"):
            rental.offline = True

    def flush(until: float) -> None:
        while scheduled and scheduled[0][0] <= until:
            when, _, what, rental = scheduled.pop(0)
            # A box whose host is gone does not resume when its higher bid ends.
            if rental.destroyed is None and not (what == "win_bid" and rental.offline):
                act(when, what, rental)

    def schedule(when: float, what: str, rental: Rental) -> None:
        scheduled.append((when, len(log.actions) * 1000 + len(scheduled), what, rental))
        scheduled.sort(key=lambda s: (s[0], s[1]))

    def rent(offer: MarketOffer, at: float, also: str | None = None) -> Rental:
        rental = Rental(len(log.rentals) + 1, offer, at)
        flush(at)
        act(at, "create", rental, sorted(market.excluded(at, log, also)))
        log.rentals.append(rental)
        return rental

    saved = 0.0  # work secured by the newest DURABLE checkpoint
    superseded: list[Rental] = []
    trace = iter(events)
    gap, kind = next(trace)  # running seconds until the trace's next loss, and its kind
    moving_to: MarketOffer | None = None
    while True:
        if moving_to is not None:
            rental = rent(moving_to, now, also=log.rentals[-1].offer.machine_id)
        else:
            deadline = now + HOST_LOST_GRACE_SECONDS  # `rgt run` searches again until then
            while (offer := market.cheapest(now, log)) is None:
                later = sorted(t for t in market.outbid_until.values() if t > now)
                if not later or later[0] > deadline or now > GIVE_UP_SECONDS:
                    break
                log.waited += later[0] - now
                now = later[0]
                flush(now)
            if offer is None:  # `rgt run` stops too (exit 6): no machine is left
                break
            rental = rent(offer, now)
        moving_to = None
        start = now
        attempt = Attempt(running=0.0, ended=kind, start_work=saved)
        if discard_at_once and gap >= RESTART_SECONDS:
            # Running resumed from the seed: the earlier boxes hold nothing the run needs.
            for old in superseded:
                schedule(start + RESTART_SECONDS, "destroy", old)
            superseded = []
        progress, since = saved, 0.0
        clock = min(gap, RESTART_SECONDS)
        pending: list[tuple[float, float]] = []  # (running time it becomes durable, its work)
        while clock < gap:
            to_durable = pending[0][0] - clock if pending else math.inf
            to_ckpt = math.inf if interval is None else interval - since
            step = min(WORK_SECONDS - progress, to_ckpt, to_durable, gap - clock)
            progress, since, clock = progress + step, since + step, clock + step
            if progress >= WORK_SECONDS:
                attempt.ended = "succeeded"
                break
            if clock >= gap:
                break
            if interval is not None and since >= interval:
                if gap - clock < CHECKPOINT_SECONDS:  # lost while writing it
                    clock = gap
                    break
                clock += CHECKPOINT_SECONDS
                pending.append((clock + DURABLE_LAG_SECONDS, progress))
                since = 0.0
            durable = False
            while pending and pending[0][0] <= clock:
                saved, durable = pending.pop(0)[1], True
            if durable and move:
                flush(start + clock)
                current = rental.offer
                offer = market.cheapest(start + clock, log, also=current.machine_id)
                if offer is not None and worth_moving(
                    current.hourly,
                    offer.hourly,
                    margin=margin,
                    restart_seconds=RESTART_SECONDS,
                    at_risk_seconds=progress - saved,
                    remaining_seconds=WORK_SECONDS - progress,
                ):
                    attempt.ended, moving_to = "moved", offer
                    break
        while pending and pending[0][0] <= clock:
            saved = pending.pop(0)[1]
        attempt.running = clock
        attempt.lost_work = 0.0 if attempt.ended == "succeeded" else progress - saved
        log.attempts.append(attempt)
        now = start + clock
        gap -= clock
        if attempt.ended == "succeeded":
            log.finished = True
            break
        superseded.append(rental)
        machine = rental.offer.machine_id
        if attempt.ended == "moved":
            act(now, "stop", rental)
            continue
        if attempt.ended == "preempted":
            act(now, "preempt", rental)
            market.outbid_until[machine] = now + OUTAGE_SECONDS
            # The higher bid ends: a box still alive resumes (vast.ai restarts it) and bills.
            schedule(now + OUTAGE_SECONDS, "win_bid", rental)
        else:
            act(now, "offline", rental)
            for other in log.rentals:  # the run's other boxes on that host die with it
                if (
                    other.offer.machine_id == machine
                    and other is not rental
                    and other.destroyed is None
                    and not other.offline
                ):
                    act(now, "host-down", other)
            market.lost_hosts.add(machine)
            now += HOST_LOST_GRACE_SECONDS
            flush(now)
        gap, kind = next(trace)
        if now > GIVE_UP_SECONDS:
            break
    flush(now)
    log.end = now
    for rental in log.rentals:  # the run's end: every box still alive is ended (no gate here)
        if rental.destroyed is None:
            act(now, "destroy", rental)
    return log


def bill(log: RunLog) -> dict[str, float]:
    """The bench's own arithmetic of what the run's actions cost: compute at the bid while a
    box runs, storage from its creation to its destruction (the emulator bills alike; it also
    holds a new or resumed box in `loading` for a fraction of a second, unbilled)."""
    compute = storage = running_seconds = 0.0
    for rental in log.rentals:
        mine = [(when, what) for when, what, r, _ in log.actions if r is rental]
        since: float | None = None
        for when, what in mine:
            if what in ("create", "win_bid"):
                since = when
            elif since is not None:  # preempt, offline, host-down, stop, destroy
                running_seconds += when - since
                compute += rental.offer.bid * (when - since) / 3600.0
                since = None
        assert rental.destroyed is not None
        per_second = DISK_GB * rental.offer.storage_cost / (HOURS_PER_MONTH * 3600.0)
        storage += per_second * (rental.destroyed - rental.created)
    return {
        "compute": compute,
        "storage": storage,
        "total": compute + storage,
        "running_seconds": running_seconds,
    }


class _EmulatorMarket:
    """One emulated marketplace (frozen clock) that replays runs' actions through the real
    `vastai` SDK and reads the meter; it also lists the offers the simulation rents from."""

    def __init__(self, machines: int, seed: int = 0) -> None:
        from rgt.providers.base import OfferQuery
        from rgt.providers.vastai import VastProvider
        from rgt.sim import Emulator

        # A balance no run here spends: an account run dry stops its boxes, which is not
        # what this bench measures.
        # No state dir: nothing is written per call (a run here is never resumed).
        self.emulator = Emulator(
            seed=seed, ssh=False, time_scale=0.0, balance=1e6, machines=machines
        )
        self.emulator.start()
        os.environ["VAST_API_KEY"] = self.emulator.api_key  # the emulator's key, not a real one
        self.provider = VastProvider(api_url=self.emulator.url)
        # The job asks for one GPU of the cheapest offer's model (the job request's `gpu`
        # constraint, as `rgt run` searches with it): a lost machine is replaced by the same
        # GPU model, not by whatever GPU is cheaper than the cap.
        cheapest = min(
            self.provider.search_offers(OfferQuery(interruptible=True, limit=500)),
            key=lambda o: o.min_bid,
        )
        self.query = OfferQuery(
            gpu_name=cheapest.gpu_name, num_gpus=1, interruptible=True, disk_gb=DISK_GB, limit=500
        )
        world = self.emulator.world
        assert world is not None
        self.offers = [
            MarketOffer(
                o.id,
                o.machine_id,
                o.min_bid,
                o.storage_cost_per_gb_month,
                world.machines[int(o.machine_id)].gpu_count,
                hourly_cost(o, DISK_GB, bid=o.min_bid),
            )
            for o in self.provider.search_offers(self.query)
        ]
        self.gpu = cheapest.gpu_name
        self.labels = 0

    def close(self) -> None:
        self.emulator.stop()

    def replay(self, log: RunLog) -> tuple[dict[str, float], list[str]]:
        """Walk the run's actions on the emulator; the meter's dollars, and every create
        whose offer is not the one the emulator lists as rentable that costs the job least
        (rgt.runs.hourly_cost at the offer's min_bid, as `rgt run` ranks; should be none)."""
        from rgt.providers.vastai import run_label

        now, ids, disagreements = 0.0, {}, []
        for when, what, rental, detail in log.actions:
            self.emulator.clock.advance(when - now)
            now = when
            if what == "create":
                listed = sorted(
                    (
                        o
                        for o in self.provider.search_offers(self.query)
                        if o.machine_id not in detail
                    ),
                    key=lambda o: (hourly_cost(o, DISK_GB, bid=o.min_bid), o.id),
                )
                if not listed or listed[0].id != rental.offer.offer_id:
                    disagreements.append(
                        f"attempt {rental.number} at {when:.0f} s: rented "
                        f"{rental.offer.offer_id}, the emulator lists "
                        f"{listed[0].id if listed else 'none'}"
                    )
                self.labels += 1
                ids[rental.number] = self.provider.create(
                    rental.offer.offer_id,
                    image="bench/recover",
                    disk_gb=DISK_GB,
                    onstart="sleep 1000000",
                    label=run_label(f"bench-{self.labels}"),
                    interruptible=True,
                    bid_per_hour=rental.offer.bid,
                ).id
            elif what == "preempt":
                self.emulator.preempt(ids[rental.number])
            elif what == "win_bid":
                self.emulator.win_bid(ids[rental.number])
            elif what == "offline":
                self.emulator.take_host_offline(ids[rental.number])
            elif what == "stop":
                self.provider.stop(ids[rental.number])
            elif what == "destroy":
                self.emulator.bring_host_online(ids[rental.number])  # the API can end it then
                self.provider.destroy(ids[rental.number])
        meters = [self.emulator.meter(i) for i in ids.values()]
        dollars = {k: sum(float(m[k]) for m in meters) for k in ("compute", "storage", "total")}
        return dollars, disagreements


def ideal_log(offers: list[MarketOffer]) -> RunLog:
    """The same job uninterrupted (one boot, the work) on the offer cheapest for the job (bid +
    disk, rgt.runs.hourly_cost: the offer `rgt run` rents first)."""
    log = RunLog(finished=True, end=RESTART_SECONDS + WORK_SECONDS)
    rental = Rental(1, min(offers, key=lambda o: (o.hourly, o.offer_id)), 0.0, destroyed=log.end)
    log.rentals.append(rental)
    log.actions += [(0.0, "create", rental, []), (log.end, "destroy", rental, None)]
    log.attempts.append(Attempt(running=log.end, ended="succeeded"))
    return log


def _runs(
    events: list[tuple[float, str]],
    offers: list[MarketOffer],
    interval: float,
    discard_at_once: bool,
) -> dict[str, RunLog]:
    settings = {
        "recover+move": (interval, True),
        "recover": (interval, False),
        "scratch": (None, False),
    }
    return {
        name: simulate_run(
            events, offers, interval=every, move=move, discard_at_once=discard_at_once
        )
        for name, (every, move) in settings.items()
    }


def _decompose(
    log: RunLog, cost: dict[str, float], ideal: dict[str, float], first_bid: float
) -> dict[str, float]:
    """total / ideal = (compute + storage) / ideal, with compute = the ideal's compute x
    `time` (billed running hours / the ideal's) x `price` (mean $/h paid / the first bid)."""
    hours = cost["running_seconds"] / 3600.0
    return {
        "time": cost["running_seconds"] / ideal["running_seconds"],
        "price": cost["compute"] / (first_bid * hours) if hours else 0.0,
        "storage": cost["storage"] / ideal["storage"],
    }


def recovery_main(
    traces: int = TRACES,
    replayed: int = REPLAYED_TRACES,
    margins: tuple[float, ...] = MARGINS,
    market_seeds: int = MARKET_SEEDS,
) -> dict:
    """Part 2: recovery (with and without moves) vs restart from scratch vs the ideal, on the
    issue's trace and `traces` seeded ones, in each market; and recover+move over the same
    traces at each move margin of `margins` (the bench's arithmetic)."""
    mtbf = 1.0 / (1.0 / MTBF_SECONDS + 1.0 / HOST_LOSS_MTBF_SECONDS)
    interval = young_daly(mtbf, CHECKPOINT_SECONDS).interval_seconds
    print()
    print(
        f"# recovery (rgt run): preemption MTBF {MTBF_SECONDS / 3600:.0f} h (part 1's trace) + "
        f"host loss MTBF {HOST_LOSS_MTBF_SECONDS / 3600:.0f} h (combined {mtbf / 3600:.1f} h); "
        f"durable lag {DURABLE_LAG_SECONDS:.0f} s; host_lost_grace "
        f"{HOST_LOST_GRACE_SECONDS / 60:.0f} min; outbid for {OUTAGE_SECONDS / 60:.0f} min; "
        f"Young/Daly W = {interval:.0f} s; move: rgt.runs.worth_moving (margin {MOVE_MARGIN:.2f},"
        f" restart {RESTART_SECONDS:.0f} s) after each checkpoint becomes durable; "
        f"{traces} seeded traces + the issue's (seed {TRACE_SEED}), the issue's and "
        f"{replayed} others replayed on the emulator"
    )
    expected = 1 + young_daly(mtbf, CHECKPOINT_SECONDS).overhead_fraction + RESTART_SECONDS / mtbf
    print(
        "first-order running time / the ideal's, before any price or storage: "
        f"1 + C/W + W/2mu + restart/mu = {expected:.3f}x"
    )
    traced = [recovery_events(TRACE_SEED)] + [
        recovery_events(TRACE_SEED_BASE + 2 * i) for i in range(traces)
    ]
    report: dict[str, Any] = {}
    worst = (0.0, "")
    disagreements: list[str] = []
    for market_name, machines in MARKETS.items():
        market = _EmulatorMarket(machines)
        try:
            offers = market.offers
            bids = sorted(o.bid for o in offers)
            hourly = sorted(o.hourly for o in offers)
            ideal_run = ideal_log(offers)
            ideal = bill(ideal_run)
            ideal_meter, _ = market.replay(ideal_run)
            first = ideal_run.rentals[0].offer  # the offer `rgt run` rents first
            first_bid = first.bid
            print(
                f"\n## market {market_name}: {len(offers)} reliable {market.gpu} offers "
                f"(1 GPU, verified, reliability >= 0.98), bids ${bids[0]:.4f}-"
                f"${bids[-1]:.4f}/h ({bids[-1] / bids[0]:.2f}x), cheapest five "
                + ", ".join(f"{b / bids[0]:.2f}x" for b in bids[:5])
                + f"; per hour with {DISK_GB:.0f} GB of disk (rgt.runs.hourly_cost) "
                f"${hourly[0]:.4f}-${hourly[-1]:.4f}/h, cheapest five "
                + ", ".join(f"{h / hourly[0]:.2f}x" for h in hourly[:5])
                + f"; first offer {first.offer_id} (machine {first.machine_id}, bid "
                f"${first.bid:.4f}/h, storage ${first.storage_cost:.3f}/GB-month; cheapest "
                f"bid: machine {min(offers, key=lambda o: (o.bid, o.offer_id)).machine_id})"
                f"; ideal ${ideal['total']:.3f} (compute ${ideal['compute']:.3f}, "
                f"storage ${ideal['storage']:.3f}; meter ${ideal_meter['total']:.3f})"
            )
            per_policy: dict[str, Any] = {}
            rows = []
            for policy, at_once in SUPERSEDED.items():
                ratios: dict[str, list[float]] = {name: [] for name in RUNS}
                parts: dict[str, list[dict[str, float]]] = {name: [] for name in RUNS}
                unfinished = dict.fromkeys(RUNS, 0)
                moves = dict.fromkeys(RUNS, 0)
                issue: dict[str, Any] = {}
                for number, events in enumerate(traced):
                    for name, log in _runs(events, offers, interval, at_once).items():
                        cost = bill(log)
                        ratio = cost["total"] / ideal["total"]
                        # The issue's trace, every run; the sample, the recovering runs with
                        # superseded boxes discarded (a scratch run is hundreds of rentals).
                        sample = at_once and name != "scratch" and number <= replayed
                        if number == 0 or sample:
                            meter, disagree = market.replay(log)
                            disagreements += [
                                f"{market_name} trace {number} {name}: {d}" for d in disagree
                            ]
                            diff = abs(meter["total"] - cost["total"]) / meter["total"]
                            if diff > worst[0]:
                                worst = (
                                    diff,
                                    f"{market_name}, trace {number}, {name}, "
                                    f"{policy}: arithmetic ${cost['total']:.4f}, "
                                    f"meter ${meter['total']:.4f}",
                                )
                        if number == 0:
                            issue[name] = _issue_row(log, cost, meter, ideal, first_bid)
                            continue
                        ratios[name].append(ratio)
                        parts[name].append(_decompose(log, cost, ideal, first_bid))
                        unfinished[name] += not log.finished
                        moves[name] += sum(a.ended == "moved" for a in log.attempts)
                per_policy[policy] = {"issue": issue, "distribution": {}}
                for name in RUNS:
                    values = ratios[name]
                    within = sum(v <= RECOVERY_TARGET for v in values) / len(values)
                    mid = {k: median([p[k] for p in parts[name]]) for k in parts[name][0]}
                    per_policy[policy]["distribution"][name] = {
                        "median": median(values),
                        "p90": percentile(values, 0.9),
                        "within_target": within,
                        "unfinished": unfinished[name],
                        "moves_per_run": moves[name] / len(values),
                        "median_parts": mid,
                    }
                    rows.append(
                        [
                            f"{name}, superseded {policy}",
                            f"{issue[name]['total_vs_ideal']:.3f}x"
                            + ("" if issue[name]["finished"] else " (NOT finished)"),
                            f"{median(values):.3f}x",
                            f"{percentile(values, 0.9):.3f}x",
                            f"{within:.0%}",
                            unfinished[name],
                            f"{moves[name] / len(values):.2f}",
                            f"{mid['time']:.3f}x",
                            f"{mid['price']:.3f}x",
                            f"{mid['storage']:.2f}x",
                        ]
                    )
                _print_issue(policy, issue, ideal)
            print(f"\n{market_name}: {traces} seeded traces (the issue's trace apart)")
            print(
                table(
                    [
                        "run",
                        "issue's trace",
                        "median",
                        "p90",
                        f"within {RECOVERY_TARGET:.2f}x",
                        "not finished",
                        "moves / run",
                        "median time",
                        "median price",
                        "median storage",
                    ],
                    rows,
                )
            )
            sweep = _margin_sweep(traced, offers, interval, ideal, first_bid, margins)
            print(
                f"\n{market_name}: recover+move (superseded discarded at once) by move margin, "
                f"{traces} seeded traces and the issue's, by the bench's arithmetic; "
                "margin 0 = recover (no moves)"
            )
            print(
                table(
                    ["margin", "issue's trace", "median", "p90",
                     f"within {RECOVERY_TARGET:.2f}x", "moves / run", "median time",
                     "median price", "median storage"],
                    [
                        [f"{m:.2f}" + (" (MOVE_MARGIN)" if m == MOVE_MARGIN else ""),
                         f"{r['issue']:.3f}x", f"{r['median']:.3f}x", f"{r['p90']:.3f}x",
                         f"{r['within_target']:.0%}", f"{r['moves_per_run']:.2f}",
                         f"{r['median_parts']['time']:.3f}x",
                         f"{r['median_parts']['price']:.3f}x",
                         f"{r['median_parts']['storage']:.2f}x"]
                        for m, r in sweep.items()
                    ],
                )
            )  # fmt: skip
            report[market_name] = {
                "machines": machines,
                "offers": len(offers),
                "bids": bids,
                "hourly_costs": hourly,
                "first_offer": asdict(first),
                "ideal": ideal,
                "ideal_meter": ideal_meter,
                "policies": per_policy,
                "margins": {f"{m:.2f}": r for m, r in sweep.items()},
            }
        finally:
            market.close()
    draws = _market_draws(traced, interval, market_seeds) if market_seeds else []
    print(
        f"\narithmetic vs meter, largest difference over the replayed runs: "
        f"{worst[0]:.4%} ({worst[1]})"
    )
    for line in disagreements:
        print(f"DISAGREEMENT: {line}")
    verdicts = []
    for market_name, result in report.items():
        best = result["policies"]["discarded at once"]
        for name in RUNS:
            row = best["distribution"][name]
            verdicts.append(
                f"{market_name}, {name}: median {row['median']:.3f}x "
                f"{'MET' if row['median'] <= RECOVERY_TARGET else 'MISSED'}, "
                f"issue's trace {best['issue'][name]['total_vs_ideal']:.3f}x "
                + ("MET" if best["issue"][name]["total_vs_ideal"] <= RECOVERY_TARGET else "MISSED")
            )
    print(
        f"target: recovery within {RECOVERY_TARGET:.2f}x of the ideal dollars (superseded "
        "boxes discarded at once):"
    )
    for line in verdicts:
        print(f"  {line}")
    return {
        "markets": report,
        "young_daly_interval_s": interval,
        "traces": traces,
        "replayed": replayed,
        "largest_meter_difference": worst[0],
        "disagreements": disagreements,
        "verdicts": verdicts,
        "market_draws": draws,
    }


def _margin_sweep(
    traced: list[list[tuple[float, str]]],
    offers: list[MarketOffer],
    interval: float,
    ideal: dict[str, float],
    first_bid: float,
    margins: tuple[float, ...],
) -> dict[float, dict[str, Any]]:
    """recover+move, superseded boxes discarded at once, at each move margin: the issue's
    trace (traced[0]) and the distribution over the others, priced by the bench's arithmetic."""
    result: dict[float, dict[str, Any]] = {}
    for margin in margins:
        ratios, parts, moves = [], [], 0
        issue = 0.0
        for number, events in enumerate(traced):
            log = simulate_run(
                events, offers, interval=interval, move=True, discard_at_once=True, margin=margin
            )
            cost = bill(log)
            if number == 0:
                issue = cost["total"] / ideal["total"]
                continue
            ratios.append(cost["total"] / ideal["total"])
            parts.append(_decompose(log, cost, ideal, first_bid))
            moves += sum(a.ended == "moved" for a in log.attempts)
        result[margin] = {
            "issue": issue,
            "median": median(ratios),
            "p90": percentile(ratios, 0.9),
            "within_target": sum(r <= RECOVERY_TARGET for r in ratios) / len(ratios),
            "moves_per_run": moves / len(ratios),
            "median_parts": {k: median([p[k] for p in parts]) for k in parts[0]},
        }
    return result


def _market_draws(
    traced: list[list[tuple[float, str]]], interval: float, seeds: int
) -> list[dict[str, Any]]:
    """recover+move (MOVE_MARGIN, superseded discarded at once) on the same traces in `seeds`
    draws of the deep market (emulator seeds 0..seeds-1), by the bench's arithmetic: how the
    ratio to the ideal follows the price of the machines after the cheapest."""
    draws = []
    for seed in range(seeds):
        market = _EmulatorMarket(MARKETS["deep (600 machines)"], seed=seed)
        try:
            offers, gpu = market.offers, market.gpu
        finally:
            market.close()
        ideal = bill(ideal_log(offers))
        ratios, unfinished = [], 0
        for events in traced[1:]:
            log = simulate_run(events, offers, interval=interval, move=True, discard_at_once=True)
            ratios.append(bill(log)["total"] / ideal["total"])
            unfinished += not log.finished
        hourly = sorted(o.hourly for o in offers)
        draws.append(
            {
                "seed": seed,
                "gpu": gpu,
                "offers": len(offers),
                "ladder": [h / hourly[0] for h in hourly[:5]],
                "median": median(ratios),
                "p90": percentile(ratios, 0.9),
                "within_target": sum(r <= RECOVERY_TARGET for r in ratios) / len(ratios),
                "unfinished": unfinished,
            }
        )
    print(
        f"\nrecover+move (margin {MOVE_MARGIN:.2f}, superseded discarded at once) in {seeds} draws"
        f" of the deep market (emulator seeds 0-{seeds - 1}, {len(traced) - 1} seeded traces, "
        "the bench's arithmetic); 'ladder' = the five cheapest offers per hour for the job "
        "(disk included) against the cheapest"
    )
    print(
        table(
            ["seed", "GPU", "offers", "ladder", "median", "p90",
             f"within {RECOVERY_TARGET:.2f}x", "not finished"],
            [
                [d["seed"], d["gpu"], d["offers"],
                 ", ".join(f"{x:.2f}" for x in d["ladder"]), f"{d['median']:.3f}x",
                 f"{d['p90']:.3f}x", f"{d['within_target']:.0%}", d["unfinished"]]
                for d in draws
            ],
        )
    )  # fmt: skip
    met = sum(d["median"] <= RECOVERY_TARGET for d in draws)
    print(
        f"median within {RECOVERY_TARGET:.2f}x in {met} of {seeds} market draws; median of the "
        f"draws' medians {median([d['median'] for d in draws]):.3f}x"
    )
    return draws


def _issue_row(
    log: RunLog,
    cost: dict[str, float],
    meter: dict[str, float],
    ideal: dict[str, float],
    first_bid: float,
) -> dict[str, Any]:
    kinds = [a.ended for a in log.attempts]
    running = sum(a.running for a in log.attempts)
    return {
        "attempts": len(log.attempts),
        "preempted": kinds.count("preempted"),
        "host_lost": kinds.count("host-lost"),
        "moved": kinds.count("moved"),
        "work_lost_hours": sum(a.lost_work for a in log.attempts) / 3600,
        "running_hours": running / 3600,
        "finished": log.finished,
        "waited_hours": log.waited / 3600,
        "arithmetic": cost,
        "meter": meter,
        "total_vs_ideal": meter["total"] / ideal["total"],
        "parts": _decompose(log, cost, ideal, first_bid),
        "machines": [
            (r.offer.machine_id, r.offer.bid, a.ended)
            for r, a in zip(log.rentals, log.attempts, strict=True)
        ],
    }


def _print_issue(policy: str, issue: dict[str, Any], ideal: dict[str, float]) -> None:
    rows = []
    for name, r in issue.items():
        meter = r["meter"]
        rows.append(
            [
                f"{name}, superseded {policy}" + ("" if r["finished"] else " (NOT finished)"),
                r["attempts"],
                r["preempted"],
                r["host_lost"],
                r["moved"],
                f"{r['work_lost_hours']:.2f} h",
                f"{r['running_hours']:.2f} h ({r['running_hours'] * 3600 / WORK_SECONDS:.2f}x)",
                f"${meter['compute']:.3f}",
                f"${meter['storage']:.3f}",
                f"${meter['total']:.3f}",
                f"{r['total_vs_ideal']:.3f}x",
                f"{r['parts']['time']:.3f}x / {r['parts']['price']:.3f}x / "
                f"{r['parts']['storage']:.2f}x",
            ]
        )
    print(f"\nthe issue's trace (seed {TRACE_SEED}), superseded {policy}; dollars by the meter")
    print(
        table(
            [
                "run",
                "attempts",
                "preempted",
                "host lost",
                "moved",
                "work lost",
                "running",
                "compute",
                "storage",
                "total",
                "total / ideal",
                "time / price / storage vs ideal",
            ],
            rows,
        )
    )
    shown = 12  # rentals listed per run (a scratch run has hundreds)
    for name, r in issue.items():
        more = len(r["machines"]) - shown
        print(
            f"{name}: waited {r['waited_hours']:.2f} h for a machine; "
            + ", ".join(f"{m}@{b:.4f} {e}" for m, b, e in r["machines"][:shown])
            + (f", ... ({more} more)" if more > 0 else "")
        )


def main() -> int:
    """Part 1 (three checkpoint policies) and part 2 (recovery), each replayed on the
    emulator; print the tables, write bench/out/cost.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--traces", type=int, default=TRACES, help="seeded traces of part 2")
    parser.add_argument(
        "--replayed", type=int, default=REPLAYED_TRACES, help="of those, replayed on the emulator"
    )
    parser.add_argument(
        "--margins",
        default=",".join(f"{m:g}" for m in MARGINS),
        help="move margins swept for recover+move, comma-separated fractions in [0, 1)",
    )
    parser.add_argument(
        "--market-seeds",
        type=int,
        default=MARKET_SEEDS,
        help="draws of the deep market (emulator seeds 0..N-1) for recover+move; 0: none",
    )
    args = parser.parse_args()
    if args.market_seeds < 0:
        parser.error(f"--market-seeds {args.market_seeds}: need 0 or more")
    if args.traces < 1 or not 0 <= args.replayed <= args.traces:
        parser.error(
            f"--traces {args.traces} --replayed {args.replayed}: "
            "need traces >= 1 and 0 <= replayed <= traces"
        )
    try:
        margins = tuple(float(m) for m in args.margins.split(","))
    except ValueError:
        margins = ()
    if not margins or not all(0.0 <= m < 1.0 for m in margins):
        parser.error(
            f"--margins {args.margins!r}: need comma-separated fractions in [0, 1), e.g. 0.25,0.1"
        )
    cadence = young_daly(MTBF_SECONDS, CHECKPOINT_SECONDS)
    policies = {
        "Young/Daly": cadence.interval_seconds,
        "every epoch": EPOCH_SECONDS,
        "none": None,
    }
    trace = preemption_trace(TRACE_SEED, MTBF_SECONDS)
    timelines = {name: simulate(interval, trace) for name, interval in policies.items()}
    # The same job on a box that is never preempted (one boot, no checkpoints): the meter's
    # price of the job when nothing goes wrong, storage included.
    timelines["uninterrupted"] = simulate(None, [math.inf])
    dollars, offer = replay_on_emulator(timelines)
    ideal = WORK_SECONDS / 3600.0 * offer["bid_per_hour"]
    calm = dollars["uninterrupted"]["total"]
    print(f"# cost under preemption ({machine_line()})")
    print(
        f"job {WORK_SECONDS / 3600:.0f} h of work; MTBF {MTBF_SECONDS / 3600:.0f} h; checkpoint "
        f"{CHECKPOINT_SECONDS:.0f} s; restart {RESTART_SECONDS:.0f} s; outage "
        f"{OUTAGE_SECONDS / 60:.0f} min; offer {offer['offer_id']} {offer['gpu']} at bid "
        f"${offer['bid_per_hour']:.4f}/h, storage ${offer['storage_cost_per_gb_month']:.3f}"
        f"/GB-month x {DISK_GB:.0f} GB; Young/Daly W = {cadence.interval_seconds:.0f} s"
    )
    rows = []
    results = {}
    for name, timeline in timelines.items():
        cost = dollars[name]
        results[name] = {
            "interval_seconds": policies.get(name),
            "finished": timeline.finished,
            "preemptions": timeline.preemptions,
            "checkpoints": timeline.checkpoints,
            "work_lost_hours": timeline.work_lost_seconds / 3600,
            "running_hours": timeline.seconds("running") / 3600,
            "paused_hours": timeline.seconds("paused") / 3600,
            "dollars": cost,
            "compute_vs_ideal": cost["compute"] / ideal,
            "total_vs_uninterrupted": cost["total"] / calm,
        }
        rows.append(
            [
                name,
                "yes" if timeline.finished else "NO (gave up at 14 days)",
                timeline.preemptions,
                timeline.checkpoints,
                f"{timeline.work_lost_seconds / 3600:.2f} h",
                f"{timeline.seconds('running') / 3600:.2f} h",
                f"${cost['compute']:.3f}",
                f"${cost['storage']:.3f}",
                f"${cost['total']:.3f}",
                f"{cost['compute'] / ideal:.3f}x",
                f"{cost['total'] / calm:.3f}x",
            ]
        )
    hours = f"{WORK_SECONDS / 3600:.2f} h"
    rows.append(["ideal (useful compute)", "-", "-", "-", "-", hours, f"${ideal:.3f}", "-",
                 "-", "1.000x", "-"])  # fmt: skip
    print(table(["policy", "finished", "preemptions", "checkpoints", "work lost", "running",
                 "compute", "storage", "total", "compute / ideal",
                 "total / uninterrupted"], rows))  # fmt: skip
    overhead = cadence.overhead_fraction + RESTART_SECONDS / MTBF_SECONDS
    print(f"first-order expectation for Young/Daly compute: {1 + overhead:.3f}x of ideal")
    met = results["Young/Daly"]["compute_vs_ideal"] <= TARGET_RATIO
    print(
        f"target: Young/Daly compute within {TARGET_RATIO:.2f}x of the ideal: "
        f"{'MET' if met else 'MISSED'}"
    )
    recovery = recovery_main(args.traces, args.replayed, margins, args.market_seeds)
    emit("cost", {"results": results, "ideal_compute_dollars": ideal, "offer": offer,
                  "met": met, "young_daly_interval_s": cadence.interval_seconds,
                  "first_order_expectation": 1 + overhead, "recovery": recovery})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
