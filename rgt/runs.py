"""Runs and their attempts in the ledger: what `rgt run` supervises, and why each attempt ended.

A run is one job request supervised to its end (rgt.supervisor). Each attempt rents one
instance; the attempt row is written BEFORE its launch (with the label the box will carry), so a
supervisor killed at any instant and started again finds it and adopts the box by that label
instead of renting a second one. The tables are the ledger's (schema v7, and v8 for the run's
move margin; rgt.ledger); every write is one ledger transaction.

Why an attempt ended (`end_reason`):

    preempted-past-grace  the interruptible box was outbid and stayed so past the profile's
                          spot_grace
    stuck-scheduling      the box waited for its GPU (or its image) past host_lost_grace (VAST3)
    host-lost             the host was offline past host_lost_grace (VAST7)
    lost                  the box disappeared (gone) without rgt ending it
    moved                 the run moved to a much cheaper offer (an interruptible run, right after
                          a durable checkpoint of this attempt was verified: `worth_moving`); the
                          box was stopped (its disk stays) and the next attempt resumes from that
                          checkpoint
    failed                the job exited non-zero (not interrupted): never relaunched blindly
    succeeded             the job exited 0 and its manifest was written
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

from rgt.ledger import Ledger
from rgt.pricing import HOURS_PER_MONTH
from rgt.providers.base import Offer

END_REASONS = (
    "preempted-past-grace",
    "stuck-scheduling",
    "host-lost",
    "lost",
    "job-stalled",
    "moved",
    "failed",
    "succeeded",
)
# The attempts that leave a box behind that may come back: it is superseded, never forgotten.
SUPERSEDED_REASONS = (
    "preempted-past-grace",
    "stuck-scheduling",
    "host-lost",
    "job-stalled",
    "moved",
)
# The attempts whose MACHINE the run never rents again: its host stopped answering, could not
# give the box its GPU, the box vanished, or the box said running while the job's boot hook was
# dead (its heartbeat stopped) past the grace. A preemption is not among them: an outbid
# interruptible rental says nothing bad about the machine, and the same machine (often the
# cheapest) may be rented again once its GPU is free; nor is a move (the machine was fine, only
# dearer than another).
MACHINE_LOST_REASONS = ("stuck-scheduling", "host-lost", "lost", "job-stalled")
# What a run's status says (runs.status).
RUN_STATUSES = (
    "running",  # a supervisor watches an attempt (or is about to rent one)
    "awaiting-approval",  # the results are pulled and verified; a human approves the destroy
    "done",  # the results are verified and the box was destroyed through the gate
    "failed",  # the job failed: reported, not relaunched
    "budget-exhausted",  # the next attempt would cost more than the budget allows
    "no-offer",  # no offer satisfies the constraints and the cap (lost machines excluded)
    "stopped",  # the supervisor stopped on an error it could not get past
)


class RunRecord(NamedTuple):
    """One supervised run."""

    run_id: str
    provider: str
    profile: str
    job_file: str | None
    max_price_per_hour: float
    budget: float | None
    interruptible: bool
    bid_per_hour: float | None
    status: str
    detail: str | None
    pid: int | None  # the supervising process (a run whose process lives is supervised now)
    created: float
    updated: float
    # `rgt run --move-if-cheaper` (0: never moves); None: a run recorded before schema v8, which
    # had no moving (MOVE_MARGIN is what `rgt run` without the flag uses).
    move_margin: float | None = None


class AttemptRecord(NamedTuple):
    """One attempt of a run: the instance it rented, and why it ended."""

    id: int
    run_id: str
    number: int
    label: str
    offer_id: str | None
    machine_id: str | None
    price_per_hour: float | None
    instance_id: str | None  # None: written before its launch, the box not (yet) known
    seed_name: str | None  # the durable checkpoint it started from (None: from scratch)
    seed_step: int | None
    started: float
    lost_state: str | None  # the state of the current streak that may end it (paused, ...)
    lost_since: float | None  # when the supervisor first saw that streak
    ended: float | None
    end_reason: str | None  # one of END_REASONS
    detail: str | None

    def cost(self, now: float) -> float:
        """Dollars this attempt has cost by the supervisor's estimate: its rental price from
        its start to its end (or `now`), whatever the box's state: an on-demand price includes
        the disk (an upper bound: a paused or stopped box bills less); a bid does not (the disk
        bills on top, in every state)."""
        if self.price_per_hour is None:
            return 0.0
        until = self.ended if self.ended is not None else now
        return max(0.0, until - self.started) / 3600.0 * self.price_per_hour


def record_run(
    ledger: Ledger,
    run_id: str,
    *,
    provider: str,
    profile: str,
    job_file: str | None,
    max_price_per_hour: float,
    budget: float | None,
    interruptible: bool,
    bid_per_hour: float | None,
    now: float,
    move_margin: float | None = None,
) -> RunRecord:
    """Start supervising `run_id` (a new run, or the ledger's run taken over by this process:
    its settings are the new ones, its attempts stay)."""
    with ledger.transaction() as db:
        db.execute(
            """
            INSERT INTO runs (run_id, provider, profile, job_file, max_price_per_hour, budget,
                              interruptible, bid_per_hour, move_margin, status, detail, pid,
                              created, updated)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', NULL, ?, ?, ?)
            ON CONFLICT (run_id) DO UPDATE SET
                job_file = excluded.job_file,
                max_price_per_hour = excluded.max_price_per_hour,
                budget = excluded.budget,
                interruptible = excluded.interruptible,
                bid_per_hour = excluded.bid_per_hour,
                move_margin = excluded.move_margin,
                status = 'running', detail = NULL, pid = excluded.pid,
                updated = excluded.updated
            """,
            (
                run_id,
                provider,
                profile,
                job_file,
                max_price_per_hour,
                budget,
                int(interruptible),
                bid_per_hour,
                move_margin,
                os.getpid(),
                now,
                now,
            ),
        )
    found = run(ledger, run_id)
    assert found is not None
    return found


def set_run_status(ledger: Ledger, run_id: str, status: str, detail: str | None = None) -> None:
    """Record where the run stands (one of RUN_STATUSES) and why, in one line."""
    if status not in RUN_STATUSES:
        raise ValueError(f"run status {status!r}: allowed are {', '.join(RUN_STATUSES)}")
    with ledger.transaction() as db:
        db.execute(
            "UPDATE runs SET status = ?, detail = ?, updated = ? WHERE run_id = ?",
            (status, detail, time.time(), run_id),
        )


def run(ledger: Ledger, run_id: str) -> RunRecord | None:
    """The run `run_id`, or None when rgt never supervised it."""
    rows = _select(ledger, "SELECT * FROM runs WHERE run_id = ?", (run_id,))
    return _run_record(rows[0]) if rows else None


def runs(ledger: Ledger) -> list[RunRecord]:
    """Every supervised run, oldest first."""
    return [_run_record(row) for row in _select(ledger, "SELECT * FROM runs ORDER BY created")]


def open_attempt(
    ledger: Ledger,
    run_id: str,
    number: int,
    *,
    label: str,
    offer_id: str | None,
    machine_id: str | None,
    price_per_hour: float | None,
    seed_name: str | None,
    seed_step: int | None,
    now: float,
) -> AttemptRecord:
    """Write attempt `number` of the run BEFORE its launch; returns it."""
    with ledger.transaction() as db:
        db.execute(
            """
            INSERT INTO attempts (run_id, number, label, offer_id, machine_id, price_per_hour,
                                  seed_name, seed_step, started)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                run_id,
                number,
                label,
                offer_id,
                machine_id,
                price_per_hour,
                seed_name,
                seed_step,
                now,
            ),
        )
    return attempts(ledger, run_id)[number - 1]


def update_attempt(ledger: Ledger, attempt_id: int, **fields: Any) -> None:
    """Set some of an attempt's fields (instance_id, price_per_hour, lost_state, lost_since,
    ended, end_reason, detail, machine_id)."""
    allowed = {
        "instance_id",
        "price_per_hour",
        "lost_state",
        "lost_since",
        "ended",
        "end_reason",
        "detail",
        "machine_id",
        "offer_id",
    }
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"attempt fields {sorted(unknown)}: allowed are {sorted(allowed)}")
    if fields.get("end_reason") not in (None, *END_REASONS):
        raise ValueError(f"end_reason {fields['end_reason']!r}: allowed are {END_REASONS}")
    names = sorted(fields)
    with ledger.transaction() as db:
        db.execute(
            f"UPDATE attempts SET {', '.join(f'{name} = ?' for name in names)} WHERE id = ?",
            (*[fields[name] for name in names], attempt_id),
        )


def attempts(ledger: Ledger, run_id: str) -> list[AttemptRecord]:
    """The run's attempts, first first."""
    return [
        AttemptRecord(**dict(row))
        for row in _select(
            ledger, "SELECT * FROM attempts WHERE run_id = ? ORDER BY number", (run_id,)
        )
    ]


def superseded_attempt(ledger: Ledger, instance_id: str) -> AttemptRecord | None:
    """The attempt that rented `instance_id` if it ended superseded (its box may come back and
    bill: pull its results or discard it with --reason superseded), else None."""
    rows = _select(
        ledger,
        "SELECT * FROM attempts WHERE instance_id = ? ORDER BY number DESC LIMIT 1",
        (str(instance_id),),
    )
    record = AttemptRecord(**dict(rows[0])) if rows else None
    if record is not None and record.end_reason in SUPERSEDED_REASONS:
        return record
    return None


def _select(ledger: Ledger, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    # A read in the ledger's own transaction: consistent, and it waits for a writer like any
    # other ledger access (busy_timeout) instead of failing.
    with ledger.transaction() as db:
        return list(db.execute(sql, args).fetchall())


def _run_record(row: Any) -> RunRecord:
    data = dict(row)
    data["interruptible"] = bool(data["interruptible"])
    return RunRecord(**data)


def machines_to_avoid(history: list[AttemptRecord]) -> set[str | None]:
    """The machines a run's next attempt must not rent: those of its attempts that ended for
    one of MACHINE_LOST_REASONS (a preempted machine stays rentable)."""
    return {a.machine_id for a in history if a.end_reason in MACHINE_LOST_REASONS}


# -- what an offer costs the job -----------------------------------------------------------------


def hourly_cost(offer: Offer, disk_gb: float, *, bid: float | None) -> float:
    """What renting `offer` costs the job per running hour, its disk included: with a `bid`
    (an interruptible rental) the bid, which pays for compute only, plus the offer's storage
    price for `disk_gb` (a rental bills its disk in every state, and hosts price disks 2-3x
    apart); without one (on demand) the offer's dph_total, which the platform already quotes
    with the disk the search asked for (rgt searches with the job's disk), so the disk is not
    counted twice. A ranking measure only: what is sent to the platform stays the bid or the
    price."""
    if bid is None:
        return offer.dph_total
    return bid + disk_gb * offer.storage_cost_per_gb_month / HOURS_PER_MONTH


# -- moving a run to a cheaper offer ------------------------------------------------------------

# A move is considered only when the offer is at least this much cheaper per hour for the job
# (hourly_cost, a fraction of the current one): smaller gaps are within the noise of a
# marketplace's prices and not worth a restart. Set by evidence (bench/bench_cost.py part 2,
# 100 and 300 seeded traces, two market depths): 0.15 gave the lowest median cost in the deeper
# market (1.223x of the ideal against 1.234x at 0.25, where moves never fired) and no worse a p90
# in either market. `rgt run --move-if-cheaper` overrides it; 0 turns moving off.
MOVE_MARGIN = 0.15
# What a move is judged over when the work that remains is unknown (the status record says how
# far the job is, not how far it has to go): one more hour of it.
MOVE_HORIZON_SECONDS = 3600.0
# What a restart on another offer takes (rent, boot, pull the image, seed, load) when the
# supervisor did not see the current attempt start (it took the run over mid-attempt):
# conservatively long, so an unknown restart does not make a move look cheap.
MOVE_RESTART_SECONDS = 900.0


def worth_moving(
    current_price: float,
    offer_price: float,
    *,
    margin: float = MOVE_MARGIN,
    restart_seconds: float,
    at_risk_seconds: float,
    remaining_seconds: float | None = None,
) -> bool:
    """Whether a running attempt should move to an offer that costs `offer_price` $/h instead
    of its `current_price` (both what the job pays per hour, its disk included: hourly_cost,
    the measure MOVE_MARGIN was set on): only when the offer is cheaper by at least `margin`
    (a fraction of the current price; 0 or less: never move) and what it saves over the work
    that remains (`remaining_seconds`, or MOVE_HORIZON_SECONDS when unknown) pays for what the
    move costs at the new price: a restart (`restart_seconds`: boot, seed, load) and redoing
    the work done since the newest durable checkpoint (`at_risk_seconds`)."""
    if margin <= 0 or current_price <= 0 or offer_price > current_price * (1.0 - margin):
        return False
    remaining = MOVE_HORIZON_SECONDS if remaining_seconds is None else remaining_seconds
    saved = (current_price - offer_price) * remaining
    spent = offer_price * (restart_seconds + at_risk_seconds)
    return saved > spent
