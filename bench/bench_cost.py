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

Part 2, recovery (`rgt run`): the same job when boxes are LOST, not paused: preemptions (MTBF
3 h) and host losses (MTBF 12 h) on one seeded trace. `rgt run` replaces a preempted box at once
(vast.ai's spot_grace is 0) and an offline one after the profile's host_lost_grace (30 min),
renting the cheapest offer on a machine the run has not lost. Two policies:

  recover      resume from the newest checkpoint that was DURABLE (copied off the box and
               verified) when the box was lost: Young/Daly checkpoints, each durable
               DURABLE_LAG_SECONDS of running after it was written;
  scratch      no durable checkpoint: every loss restarts the job from step 0.

Each attempt is replayed as its own instance on the frozen-clock emulator (create, run, preempt
or take its host offline); a superseded box bills its disk until the run ends (rgt discards it
only once a later attempt's results are verified, with a human's approval). Target: recovery
within 1.15x of the ideal (the useful compute at the first offer's price).

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
    """(running seconds until the next loss, "preempted" | "host-lost"): the two independent
    exponential processes merged into one stream."""
    rng = random.Random(seed)
    rate_p, rate_h = 1.0 / MTBF_SECONDS, 1.0 / HOST_LOSS_MTBF_SECONDS
    events = []
    for _ in range(count):
        gap = rng.expovariate(rate_p + rate_h)
        kind = "host-lost" if rng.random() < rate_h / (rate_p + rate_h) else "preempted"
        events.append((gap, kind))
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


def replay_recovery(runs: dict[str, list[Attempt]]) -> tuple[dict[str, dict[str, float]], dict]:
    """Replay each run's attempts as instances on the frozen-clock emulator (the cheapest
    offer on a machine not yet lost, as `rgt run` picks); its dollars by the meter, the lost
    boxes billing until the run ends. Also the first offer's bid (the ideal's price)."""
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider, run_label
    from rgt.sim import Emulator

    dollars: dict[str, dict[str, float]] = {}
    gave_up: dict[str, int] = {}
    first_bid = 0.0
    with tempfile.TemporaryDirectory(prefix="rgt-bench-recover-") as state:
        emulator = Emulator(state_dir=Path(state), seed=0, ssh=False, time_scale=0.0)
        with emulator:
            os.environ["VAST_API_KEY"] = emulator.api_key  # the emulator's key, not a real one
            provider = VastProvider(api_url=emulator.url)
            for name, attempts in runs.items():
                lost_machines: set[str] = set()
                rented: list[str] = []
                for number, attempt in enumerate(attempts, 1):
                    offers = provider.search_offers(OfferQuery(interruptible=True, limit=200))
                    fitting = [o for o in offers if o.machine_id not in lost_machines]
                    if not fitting:  # `rgt run` stops too (exit 6): every machine was lost
                        gave_up[name] = number - 1
                        break
                    offer = min(fitting, key=lambda o: o.min_bid)
                    first_bid = first_bid or offer.min_bid
                    instance = provider.create(
                        offer.id,
                        image="bench/recover",
                        disk_gb=DISK_GB,
                        onstart="sleep 1000000",
                        label=run_label(f"bench-{name}-{len(dollars)}", number),
                        interruptible=True,
                        bid_per_hour=offer.min_bid,
                    )
                    rented.append(instance.id)
                    emulator.clock.advance(attempt.running)
                    if attempt.ended == "preempted":
                        emulator.preempt(instance.id)
                    elif attempt.ended == "host-lost":
                        emulator.take_host_offline(instance.id)
                        emulator.clock.advance(HOST_LOST_GRACE_SECONDS)
                    lost_machines.add(offer.machine_id)
                meters = [emulator.meter(i) for i in rented]
                dollars[name] = {
                    k: sum(float(m[k]) for m in meters)
                    for k in ("compute", "storage", "bandwidth", "total")
                }
                for instance_id in rented:  # the run's end: superseded boxes discarded too
                    emulator.bring_host_online(instance_id)
                    provider.destroy(instance_id)
    return dollars, {"first_bid_per_hour": first_bid, "gave_up_after": gave_up}


def recovery_main() -> dict:
    """Part 2: recovery from durable checkpoints vs restart from scratch vs the ideal."""
    mtbf = 1.0 / (1.0 / MTBF_SECONDS + 1.0 / HOST_LOSS_MTBF_SECONDS)
    cadence = young_daly(mtbf, CHECKPOINT_SECONDS)
    events = recovery_events(TRACE_SEED)
    runs = {
        "recover": simulate_recovery(cadence.interval_seconds, events),
        "scratch": simulate_recovery(None, events),
    }
    dollars, offer = replay_recovery(runs)
    ideal = WORK_SECONDS / 3600.0 * offer["first_bid_per_hour"]
    print()
    print(
        f"# recovery (rgt run): preemption MTBF {MTBF_SECONDS / 3600:.0f} h + host loss MTBF "
        f"{HOST_LOSS_MTBF_SECONDS / 3600:.0f} h (combined {mtbf / 3600:.1f} h); durable lag "
        f"{DURABLE_LAG_SECONDS:.0f} s; host_lost_grace {HOST_LOST_GRACE_SECONDS / 60:.0f} min; "
        f"Young/Daly W = {cadence.interval_seconds:.0f} s; ideal ${ideal:.3f}"
    )
    rows, results = [], {}
    for name, attempts in runs.items():
        cost = dollars[name]
        replayed = offer["gave_up_after"].get(name)
        if replayed is not None:  # out of machines: the figures cover the attempts replayed
            attempts = attempts[:replayed]
        lost = sum(a.lost_work for a in attempts)
        kinds = [a.ended for a in attempts]
        results[name] = {
            "attempts": len(attempts),
            "preempted": kinds.count("preempted"),
            "host_lost": kinds.count("host-lost"),
            "work_lost_hours": lost / 3600,
            "running_hours": sum(a.running for a in attempts) / 3600,
            "dollars": cost,
            "compute_vs_ideal": cost["compute"] / ideal,
            "total_vs_ideal": cost["total"] / ideal,
            "running_vs_work": sum(a.running for a in attempts) / WORK_SECONDS,
        }
        results[name]["finished"] = replayed is None
        rows.append(
            [
                name if replayed is None else f"{name} (NOT finished: every machine lost)",
                len(attempts),
                kinds.count("preempted"),
                kinds.count("host-lost"),
                f"{lost / 3600:.2f} h",
                f"{sum(a.running for a in attempts) / 3600:.2f} h "
                f"({sum(a.running for a in attempts) / WORK_SECONDS:.2f}x)",
                f"${cost['compute']:.3f}",
                f"${cost['storage']:.3f}",
                f"${cost['total']:.3f}",
                f"{cost['compute'] / ideal:.3f}x",
                f"{cost['total'] / ideal:.3f}x",
            ]
        )
    print(table(["run", "attempts", "preempted", "host lost", "work lost", "running",
                 "compute", "storage", "total", "compute / ideal", "total / ideal"],
                rows))  # fmt: skip
    met = results["recover"]["total_vs_ideal"] <= RECOVERY_TARGET
    print(
        f"target: recovery within {RECOVERY_TARGET:.2f}x of the ideal dollars (total): "
        f"{'MET' if met else 'MISSED'}"
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
