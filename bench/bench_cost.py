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
preemption trace (MTBF 3 h) plus an independent seeded host-loss process (MTBF 12 h), merged on
running time. `rgt run` replaces a preempted box at once (vast.ai's spot_grace is 0) and an
offline one after the profile's host_lost_grace (30 min), renting the cheapest offer of the
job's GPU model on a machine whose HOST the run has not lost (a preempted machine is rented
again once the higher bid that took it ends, OUTAGE_SECONDS later, as in part 1). Two runs:

  recover      resume from the newest checkpoint that was DURABLE (copied off the box and
               verified) when the box was lost: Young/Daly checkpoints, each durable
               DURABLE_LAG_SECONDS of running after it was written;
  scratch      no durable checkpoint: every loss restarts the job from step 0;

each with its superseded boxes discarded at once (a human approves `discard --reason superseded`
as soon as a later attempt runs resumed from the newest durable checkpoint) or kept until the
run ends (then a preempted box resumes when its bid wins again and bills compute, as vast.ai
restarts it). Each attempt is replayed as its own instance on the frozen-clock emulator.
Target: recovery within 1.15x of the ideal: the same job uninterrupted (one boot, the work) at
the first offer's bid, by the emulator's meter (compute and storage).

    .venv/bin/python bench/bench_cost.py
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import REPO, emit, machine_line, table

sys.path.insert(0, str(REPO))

from rgt.cadence import young_daly

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


@dataclass
class Attempt:
    """One rental of a recovered run: running seconds, how it ended, the work it secured."""

    running: float
    ended: str  # "preempted", "host-lost" or "succeeded"
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


def simulate_recovery(interval: float | None, events: list[tuple[float, str]]) -> list[Attempt]:
    """The attempts of a run whose lost boxes are replaced, each starting from the newest durable
    checkpoint (`interval` None: from scratch)."""
    attempts: list[Attempt] = []
    saved = 0.0  # work secured by the newest DURABLE checkpoint
    for gap, kind in events:
        attempt = Attempt(running=0.0, ended=kind, start_work=saved)
        progress, ckpts = saved, []  # (running time written, work) of this attempt's checkpoints
        clock = min(gap, RESTART_SECONDS)
        since = 0.0
        while clock < gap:
            chunk = min(WORK_SECONDS - progress, gap - clock)
            if interval is not None:
                chunk = min(chunk, interval - since)
            progress += chunk
            since += chunk
            clock += chunk
            if progress >= WORK_SECONDS:
                attempt.ended = "succeeded"
                break
            if interval is not None and since >= interval and gap - clock >= CHECKPOINT_SECONDS:
                clock += CHECKPOINT_SECONDS
                ckpts.append((clock, progress))
                since = 0.0
        attempt.running = clock
        attempts.append(attempt)
        if attempt.ended == "succeeded":
            return attempts
        durable = [work for at, work in ckpts if at + DURABLE_LAG_SECONDS <= clock]
        if durable:
            saved = durable[-1]
        attempt.lost_work = progress - saved
    return attempts


class _Timeline:
    """The frozen emulator clock plus the bench's own scheduled events (a higher bid that ends,
    a superseded box discarded), fired in time order as the clock advances."""

    def __init__(self, emulator: object) -> None:
        self.emulator = emulator
        self.now = 0.0
        self.events: list[tuple[float, int, object]] = []

    def at(self, when: float, action: object) -> None:
        self.events.append((when, len(self.events), action))
        self.events.sort(key=lambda e: (e[0], e[1]))

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while self.events and self.events[0][0] <= target:
            when, _, action = self.events.pop(0)
            self.emulator.clock.advance(when - self.now)  # type: ignore[attr-defined]
            self.now = when
            action()  # type: ignore[operator]
        self.emulator.clock.advance(target - self.now)  # type: ignore[attr-defined]
        self.now = target


class _RunReplay:
    """One run's rentals on the emulator: which machines it may rent, its boxes still alive,
    the superseded ones waiting to be discarded."""

    def __init__(self, emulator: Any, provider: Any, query: Any) -> None:
        self.emulator, self.provider, self.query = emulator, provider, query
        self.timeline = _Timeline(emulator)
        self.lost_hosts: set[str] = set()
        self.outbid_until: dict[str, float] = {}  # machine -> when its higher bid ends
        self.rented: list[str] = []
        self.alive: set[str] = set()
        self.to_discard: list[str] = []
        self.waited = 0.0  # seconds the run waited for a machine to come free

    def rentable(self) -> list[Any]:
        now = self.timeline.now
        return [
            o
            for o in self.provider.search_offers(self.query)
            if o.machine_id not in self.lost_hosts and self.outbid_until.get(o.machine_id, 0) <= now
        ]

    def next_offer(self) -> Any:
        """The cheapest rentable offer; `rgt run` searches again for up to host_lost_grace
        before it stops (an outbid machine comes free when the higher bid ends). None: none."""
        fitting = self.rentable()
        deadline = self.timeline.now + HOST_LOST_GRACE_SECONDS
        while not fitting:
            later = sorted(t for t in self.outbid_until.values() if t > self.timeline.now)
            if not later or later[0] > deadline:
                return None
            self.waited += later[0] - self.timeline.now
            self.timeline.advance(later[0] - self.timeline.now)
            fitting = self.rentable()
        return min(fitting, key=lambda o: o.min_bid)

    def run(
        self, instance_id: str, machine_id: str, attempt: Attempt, discard_at_once: bool
    ) -> None:
        """Replay one attempt on its box, then lose the box as the attempt ended."""
        if discard_at_once and attempt.running >= RESTART_SECONDS:
            # Running resumed from the seed: the earlier boxes hold nothing the run needs.
            for old in self.to_discard:
                self.timeline.at(self.timeline.now + RESTART_SECONDS, lambda i=old: self.discard(i))
            self.to_discard = []
        self.timeline.advance(attempt.running)
        if attempt.ended == "preempted":
            self.emulator.preempt(instance_id)
            self.outbid_until[machine_id] = self.timeline.now + OUTAGE_SECONDS
            self.timeline.at(self.outbid_until[machine_id], lambda: self.win_bid(instance_id))
        elif attempt.ended == "host-lost":
            self.emulator.take_host_offline(instance_id)
            self.lost_hosts.add(machine_id)
            self.timeline.advance(HOST_LOST_GRACE_SECONDS)
        if attempt.ended != "succeeded":
            self.to_discard.append(instance_id)

    def win_bid(self, instance_id: str) -> None:
        """The higher bid ended: a box still alive resumes (vast.ai restarts it)."""
        if instance_id in self.alive:
            self.emulator.win_bid(instance_id)

    def discard(self, instance_id: str) -> None:
        if instance_id in self.alive:
            self.emulator.bring_host_online(instance_id)  # the API can end it then
            self.provider.destroy(instance_id)
            self.alive.discard(instance_id)

    def end(self) -> None:
        """The run's end: every box still alive is ended (a benchmark, not rgt: no gate)."""
        self.timeline.events.clear()
        for instance_id in list(self.alive):
            self.discard(instance_id)


def replay_recovery(
    runs: dict[str, list[Attempt]], *, discard_at_once: bool
) -> tuple[dict[str, dict[str, float]], dict]:
    """Replay each run's attempts as instances on the frozen-clock emulator, picking offers as
    `rgt run` does: the cheapest bid, never on a machine whose host the run lost; a preempted
    machine is held by the (notional) higher bid for OUTAGE_SECONDS (as in part 1), then free
    again. A superseded box is discarded (`discard_at_once`: a human approves as soon as a later
    attempt runs resumed from the newest checkpoint verified off the box, so nothing on it is
    needed) or bills until the run ends; left alone, a preempted box resumes when its bid wins
    again (vast.ai restarts it: compute bills). Dollars by the meter; also the first offer."""
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider, run_label
    from rgt.sim import Emulator

    dollars: dict[str, dict[str, float]] = {}
    gave_up: dict[str, int] = {}
    waited: dict[str, float] = {}  # seconds a run waited for a machine to come free
    ladder: dict[str, list[tuple[str, float]]] = {}  # (machine, bid) of each attempt
    first: dict = {}
    with tempfile.TemporaryDirectory(prefix="rgt-bench-recover-") as state:
        # A balance no run here spends: an account run dry stops its boxes, which is not
        # what this bench measures.
        emulator = Emulator(state_dir=Path(state), seed=0, ssh=False, time_scale=0.0, balance=1e6)
        with emulator:
            os.environ["VAST_API_KEY"] = emulator.api_key  # the emulator's key, not a real one
            provider = VastProvider(api_url=emulator.url)
            # The job asks for one GPU of the cheapest offer's model (the job request's `gpu`
            # constraint, as `rgt run` searches with it): a lost machine is replaced by the same
            # GPU model, not by whatever GPU is cheaper than the cap.
            cheapest = min(provider.search_offers(OfferQuery(interruptible=True, limit=200)),
                           key=lambda o: o.min_bid)  # fmt: skip
            query = OfferQuery(gpu_name=cheapest.gpu_name, num_gpus=1, interruptible=True,
                               disk_gb=DISK_GB, limit=200)  # fmt: skip
            for name, attempts in runs.items():
                replay = _RunReplay(emulator, provider, query)
                for number, attempt in enumerate(attempts, 1):
                    offer = replay.next_offer()
                    if offer is None:  # `rgt run` stops too (exit 6): no machine is left
                        gave_up[name] = number - 1
                        break
                    first = first or {"offer_id": offer.id, "bid": offer.min_bid}
                    instance = provider.create(
                        offer.id,
                        image="bench/recover",
                        disk_gb=DISK_GB,
                        onstart="sleep 1000000",
                        label=run_label(f"bench-{name}-{len(dollars)}", number),
                        interruptible=True,
                        bid_per_hour=offer.min_bid,
                    )
                    replay.rented.append(instance.id)
                    replay.alive.add(instance.id)
                    ladder.setdefault(name, []).append((offer.machine_id, offer.min_bid))
                    replay.run(instance.id, offer.machine_id, attempt, discard_at_once)
                meters = [emulator.meter(i) for i in replay.rented]
                dollars[name] = {
                    k: sum(float(m[k]) for m in meters)
                    for k in ("compute", "storage", "bandwidth", "total")
                }
                waited[name] = replay.waited
                replay.end()
            # The ideal: the same job uninterrupted (one boot, the work) at the first offer.
            instance = provider.create(
                first["offer_id"], image="bench/ideal", disk_gb=DISK_GB,
                onstart="sleep 1000000", label=run_label("bench-ideal"),
                interruptible=True, bid_per_hour=first["bid"],
            )  # fmt: skip
            emulator.clock.advance(RESTART_SECONDS + WORK_SECONDS)
            ideal = {k: float(v) for k, v in emulator.meter(instance.id).items()}
            provider.destroy(instance.id)
    return dollars, {"first_bid_per_hour": first["bid"], "gave_up_after": gave_up,
                     "ideal": ideal, "waited": waited, "ladder": ladder}  # fmt: skip


def recovery_main() -> dict:
    """Part 2: recovery from durable checkpoints vs restart from scratch vs the ideal."""
    mtbf = 1.0 / (1.0 / MTBF_SECONDS + 1.0 / HOST_LOSS_MTBF_SECONDS)
    cadence = young_daly(mtbf, CHECKPOINT_SECONDS)
    events = recovery_events(TRACE_SEED)
    runs = {
        "recover": simulate_recovery(cadence.interval_seconds, events),
        "scratch": simulate_recovery(None, events),
    }
    replays = {
        "discarded at once": replay_recovery(runs, discard_at_once=True),
        "kept until the run ends": replay_recovery(runs, discard_at_once=False),
    }
    offer = replays["discarded at once"][1]
    ideal_meter = offer["ideal"]
    ideal = ideal_meter["total"]
    print()
    print(
        f"# recovery (rgt run): preemption MTBF {MTBF_SECONDS / 3600:.0f} h (part 1's trace) + "
        f"host loss MTBF {HOST_LOSS_MTBF_SECONDS / 3600:.0f} h (combined {mtbf / 3600:.1f} h); "
        f"durable lag {DURABLE_LAG_SECONDS:.0f} s; host_lost_grace "
        f"{HOST_LOST_GRACE_SECONDS / 60:.0f} min; outbid for {OUTAGE_SECONDS / 60:.0f} min; "
        f"Young/Daly W = {cadence.interval_seconds:.0f} s; ideal (uninterrupted at the first "
        f"offer's bid ${offer['first_bid_per_hour']:.4f}/h): ${ideal:.3f} "
        f"(compute ${ideal_meter['compute']:.3f}, storage ${ideal_meter['storage']:.3f})"
    )
    rows, results = [], {}
    for policy, (dollars, info) in replays.items():
        for name, attempts in runs.items():
            key = f"{name}, superseded {policy}"
            cost = dollars[name]
            replayed = info["gave_up_after"].get(name)
            if replayed is not None:  # out of machines: the figures cover the attempts replayed
                attempts = attempts[:replayed]
            lost = sum(a.lost_work for a in attempts)
            kinds = [a.ended for a in attempts]
            running = sum(a.running for a in attempts)
            results[key] = {
                "attempts": len(attempts),
                "preempted": kinds.count("preempted"),
                "host_lost": kinds.count("host-lost"),
                "work_lost_hours": lost / 3600,
                "running_hours": running / 3600,
                "dollars": cost,
                "total_vs_ideal": cost["total"] / ideal,
                "running_vs_work": running / WORK_SECONDS,
                "finished": replayed is None,
                "waited_hours": info["waited"].get(name, 0.0) / 3600,
                "machines": info["ladder"].get(name, []),
            }
            rows.append(
                [
                    key if replayed is None else f"{key} (NOT finished: no machine left)",
                    len(attempts),
                    kinds.count("preempted"),
                    kinds.count("host-lost"),
                    f"{lost / 3600:.2f} h",
                    f"{running / 3600:.2f} h ({running / WORK_SECONDS:.2f}x)",
                    f"${cost['compute']:.3f}",
                    f"${cost['storage']:.3f}",
                    f"${cost['total']:.3f}",
                    f"{cost['total'] / ideal:.3f}x",
                ]
            )
    rows.append(["ideal (uninterrupted, first offer)", 1, 0, 0, "0",
                 f"{(WORK_SECONDS + RESTART_SECONDS) / 3600:.2f} h",
                 f"${ideal_meter['compute']:.3f}", f"${ideal_meter['storage']:.3f}",
                 f"${ideal:.3f}", "1.000x"])  # fmt: skip
    print(table(["run", "attempts", "preempted", "host lost", "work lost", "running",
                 "compute", "storage", "total", "total / ideal"], rows))  # fmt: skip
    for key, result in results.items():
        bids = [bid for _, bid in result["machines"]]
        print(f"{key}: waited {result['waited_hours']:.2f} h for a machine; bids "
              + ", ".join(f"{machine}@{bid:.4f}" for machine, bid in result["machines"])
              + (f" (mean {sum(bids) / len(bids) / offer['first_bid_per_hour']:.2f}x the first)"
                 if bids else ""))  # fmt: skip
    best = results["recover, superseded discarded at once"]["total_vs_ideal"]
    met = best <= RECOVERY_TARGET
    print(
        f"target: recovery within {RECOVERY_TARGET:.2f}x of the ideal dollars (total, "
        f"superseded boxes discarded at once): {best:.3f}x {'MET' if met else 'MISSED'}"
    )
    return {"results": results, "ideal_dollars": ideal, "met": met,
            "young_daly_interval_s": cadence.interval_seconds}  # fmt: skip


def main() -> int:
    """Simulate the three policies, replay them on the emulator, print the table."""
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
    recovery = recovery_main()
    emit("cost", {"results": results, "ideal_compute_dollars": ideal, "offer": offer,
                  "met": met, "young_daly_interval_s": cadence.interval_seconds,
                  "first_order_expectation": 1 + overhead, "recovery": recovery})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
