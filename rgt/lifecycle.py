"""The rental lifecycle outside the Iron Law: search, launch, poll, stop, cost.

Shared by the CLI (`rgt search/launch/poll/stop/cost`) and the MCP server, so both say the same
thing about the same instance. Platform facts (what a stopped box still bills, which verb stops
the meter, which gotcha explains a state) come from the profile; this module only reads them.

Destroy is not here: `rgt.gate.destroy_with_gate` is the only path to the meter-stop verb.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rgt.errors import ProviderError, Refused, RgtError, UsageError
from rgt.job import JobRequest
from rgt.ledger import InstanceRecord, LaunchRecord, Ledger, LedgerError
from rgt.pricing import HOURS_PER_MONTH
from rgt.profile import Profile
from rgt.providers.base import CreateRefused, Instance, Offer, OfferQuery, Provider

PER_VARIANT = "variant-dependent"  # a family profile's value that each variant sets
SECONDS_PER_HOUR = 3600.0
NOT_RENTED_BY_RGT = (
    "unknown (not rented through rgt): its rental price and state history are not in the "
    "ledger; the platform's own billing page has the figure"
)

# Which words in a profile's section-7 gotcha bullet identify the gotcha that explains a state.
# The ids themselves (VAST13, VAST3, ...) are read from the profile, never written here.
_STATE_GOTCHA_WORDS: dict[str, tuple[str, ...]] = {
    "loading": ("stuck in loading", "stays loading"),
    "stuck-scheduling": ("scheduling",),
    "offline": ("offline", "host disappears"),
    "stopped-but-billing": ("stopped instance keeps billing", "stopped instance"),
    "preempted": ("preemption", "preempt", "outbid"),
}
_GOTCHA_BULLET = re.compile(r"^- \*\*(?P<id>[A-Z][A-Z0-9]*\d+)\s+[—-]+\s+(?P<text>.+)$")


# -- profile facts -----------------------------------------------------------------------------


def danger_clocks(profile: Profile) -> list[str]:
    """The meters a user must hear about before renting, as sentences built from the profile."""
    clocks: list[str] = []
    stop, meter_stop = profile.stop_verb, profile.meter_stop_verb
    if PER_VARIANT in (stop, meter_stop):
        clocks.append(
            f"{profile.title} is a family profile: which verb stops the meter and what a stopped "
            f"machine still bills depend on the variant; pick one ({', '.join(profile.variants)})"
        )
        stop = None if stop == PER_VARIANT else stop
        meter_stop = None if meter_stop == PER_VARIANT else meter_stop
    bills = profile.stop_still_bills
    timers = dict(profile.frontmatter.get("clocks") or {})
    if stop and bills:
        until = (
            "until the platform releases it"
            if timers.get("release_after_stop")
            else ("indefinitely")
        )
        clocks.append(
            f"`{stop}` does not stop the meter: a stopped instance still bills "
            f"{', '.join(bills)}, {until}"
        )
    if meter_stop:
        sentence = f"only `{meter_stop}` ends all billing"
        if profile.meter_stop_irreversible:
            sentence += ", and it is irreversible: the box and its disk are deleted"
        clocks.append(sentence + " (rgt runs it only through the Teardown Iron Law)")
    residual = list(profile.frontmatter.get("residual_billables") or [])
    if residual:
        clocks.append(
            f"these outlive `{meter_stop}` and bill until deleted separately: {', '.join(residual)}"
        )
    for key, what in (
        ("release_after_stop", "a stopped instance is released (its disks deleted)"),
        ("scratch_wipe_after_stop", "the scratch disk of a stopped instance is wiped"),
        ("session_limit", "the platform stops a session or job"),
    ):
        duration = str(timers.get(key) or "")
        if duration:
            at_once = duration.lstrip("~").rstrip("smhd") in ("0", "0.0")
            clocks.append(f"{what} {'at once' if at_once else 'after ' + duration}")
    egress = profile.egress
    notes = egress.get("notes")
    if notes:
        clocks.append(f"bandwidth: {notes}")
    if profile.spot_available:
        grace = str(profile.frontmatter.get("spot_grace", "n/a"))
        clocks.append(
            f"interruptible rentals can be preempted with {grace} notice: checkpoint on a timer"
        )
    return clocks


def profile_summary(profile: Profile) -> dict[str, Any]:
    """The machine facts of a profile, danger clocks first (for `get_profile` and the skill)."""
    return {
        "danger_clocks": danger_clocks(profile),
        "name": profile.name,
        "title": profile.title,
        "kind": profile.kind,
        "meter_stop_verb": profile.meter_stop_verb,
        "meter_stop_irreversible": profile.meter_stop_irreversible,
        "stop_verb": profile.stop_verb,
        "stop_still_bills": profile.stop_still_bills,
        "egress": profile.egress,
        "spot_available": profile.spot_available,
        "spot_grace_seconds": profile.spot_grace_seconds,
        "detach_primitive": profile.detach_primitive,
        "onstart_limit_bytes": profile.onstart_limit_bytes,
        "data_dir": profile.overrides.get("data_dir"),
        "variants": sorted(profile.variants),
        "verified": profile.verified,
        "sources": profile.sources,
        "gotchas": gotchas(profile),
    }


def gotchas(profile: Profile) -> dict[str, str]:
    """Section-7 gotchas of the profile: id -> its one-line title."""
    return {gotcha_id: title for gotcha_id, title, _ in _gotcha_bullets(profile)}


def gotcha_for(profile: Profile, classification: str) -> str | None:
    """The id of the profile's gotcha that explains `classification`, if the profile has one."""
    words = _STATE_GOTCHA_WORDS.get(classification)
    if not words:
        return None
    bullets = _gotcha_bullets(profile)
    for word in words:
        for gotcha_id, _, text in bullets:
            if word in text.casefold():
                return gotcha_id
    return None


def _gotcha_bullets(profile: Profile) -> list[tuple[str, str, str]]:
    """(id, title, symptom and root cause) of each gotcha bullet of the profile, in order."""
    bullets: list[tuple[str, str, str]] = []
    current: list[str] = []
    for line in [*profile.body.splitlines(), ""]:
        stripped = line.strip()
        if current and (not stripped or stripped.startswith(("- ", "#"))):
            match = _GOTCHA_BULLET.match(" ".join(current))
            if match and match["id"].startswith(profile.gotcha_prefix):
                title, _, rest = match["text"].partition("**")
                cause = rest.split("Fix:", 1)[0]
                bullets.append((match["id"], title.strip().rstrip("."), f"{title} {cause}"))
            current = []
        if stripped.startswith("- **"):
            current = [stripped]
        elif current and stripped:
            current.append(stripped)
    return bullets


# -- search ------------------------------------------------------------------------------------


ESTIMATE_BASIS = (
    "rental = the offer's $/h (compute and the disk asked for) x hours; bandwidth = results_gb "
    "x the offer's upload $/GB (pulling results off the box); a job's own downloads not included"
)


@dataclass(frozen=True)
class Estimate:
    """What a rental would cost before renting, from the offer's own prices: `hours` of the
    rental (compute and the disk asked for, which the offer's $/h includes) and pulling
    `results_gb` off the box at its upload price."""

    hours: float
    results_gb: float

    def of(self, price_per_hour: float, upload_per_gb: float) -> dict[str, Any]:
        """The estimate for one offer."""
        rental = price_per_hour * self.hours
        bandwidth = upload_per_gb * self.results_gb
        return {
            "rental": round(rental, 4),
            "bandwidth": round(bandwidth, 4),
            "total": round(rental + bandwidth, 4),
        }


def offer_summary(
    offer: Offer, *, interruptible: bool, estimate: Estimate | None = None
) -> dict[str, Any]:
    """One offer as plain data, with the price the rental would pay (and, with `estimate`,
    what `estimate.hours` and pulling `estimate.results_gb` would cost)."""
    price = offer.min_bid if interruptible and offer.min_bid > 0 else offer.dph_total
    dlperf_per_dollar = (offer.dlperf or 0.0) / price if offer.dlperf and price > 0 else None
    summary = {
        "offer_id": offer.id,
        "gpu_name": offer.gpu_name,
        "num_gpus": offer.num_gpus,
        "price_per_hour": round(price, 6),
        "dph_total": offer.dph_total,
        "min_bid": offer.min_bid,
        "storage_cost_per_gb_month": offer.storage_cost_per_gb_month,
        "inet_up_cost_per_gb": offer.inet_up_cost_per_gb,
        "inet_down_cost_per_gb": offer.inet_down_cost_per_gb,
        "reliability": offer.reliability,
        "verified": offer.verified,
        "direct_port_count": offer.direct_port_count,
        "machine_id": offer.machine_id,
        "gpu_ram_gb": offer.gpu_ram_gb,
        "cuda_max_good": offer.cuda_max_good,
        "region": offer.region,
        "ram_gb": offer.ram_gb,
        "disk_mb_per_s": offer.disk_mb_per_s,
        "inet_down_mbps": offer.inet_down_mbps,
        "inet_up_mbps": offer.inet_up_mbps,
        "dlperf": offer.dlperf,
        "dlperf_per_dollar": None if dlperf_per_dollar is None else round(dlperf_per_dollar, 2),
    }
    if estimate is not None:
        summary["estimate"] = estimate.of(price, offer.inet_up_cost_per_gb)
    return summary


def search(
    provider: Provider, query: OfferQuery, *, estimate: Estimate | None = None
) -> list[dict[str, Any]]:
    """Offers matching `query` (verified, direct-port, reliable by default), cheapest first
    (or by DLPerf per dollar, as `query.order` says), each with `estimate` when given."""
    return [
        offer_summary(offer, interruptible=query.interruptible, estimate=estimate)
        for offer in provider.search_offers(query)
    ]


# -- launch ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchResult:
    """What `launch` rented."""

    instance_id: str
    label: str
    run_id: str
    profile: str
    offer_id: str
    state: str
    price_per_hour: float | None  # None only for an adopted box whose price nobody reports
    interruptible: bool
    onstart_bytes: int
    warnings: list[str] = field(default_factory=list)
    # True when the run's label was already on a box (an earlier launch rented it): that box
    # was adopted into the ledger and nothing new was rented.
    adopted: bool = False
    # What an adopting launch was asked for and did not do (another offer, results root...).
    ignored: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def offer_query_for_job(job: JobRequest, *, interruptible: bool, limit: int) -> OfferQuery:
    """The query for offers that fit `job` (its GPU model and count, its disk), with the safe
    defaults of OfferQuery: verified, direct-port, reliable hosts only."""
    return OfferQuery(
        gpu_name=job.gpu_name,
        num_gpus=job.gpu_count,
        interruptible=interruptible,
        disk_gb=float(job.disk_gb),
        limit=limit,
    )


def find_offer(provider: Provider, offer_id: str, job: JobRequest, interruptible: bool) -> Offer:
    """The offer `offer_id` among those rgt would rent for this job (same safe filters)."""
    query = offer_query_for_job(job, interruptible=interruptible, limit=1000)
    for offer in provider.search_offers(query):
        if offer.id == str(offer_id):
            return offer
    raise UsageError(
        f"offer {offer_id} is not among the rentable verified, direct-port, reliable offers for "
        f"{job.gpu} with {job.disk_gb} GB disk; search again (it may have been taken)"
    )


def launch(
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Profile,
    job: JobRequest,
    offer_id: str,
    max_price_per_hour: float,
    interruptible: bool = False,
    bid_per_hour: float | None = None,
    attempt: int = 1,
    render_context: Mapping[str, Any] | None = None,
) -> LaunchResult:
    """Render the boot hook from the profile and job, rent the offer, record it in the ledger.

    Refuses (Refused, exit 4) when the price would exceed `max_price_per_hour`; the offer is
    re-read from the marketplace now, so the cap holds against the price actually paid.
    `attempt` > 1 (`rgt run` relaunching the run elsewhere) labels the box
    `rgt:<run_id>/<attempt>`: only a box of this attempt is adopted. `render_context` is more
    context for the boot hook (the seed of a relaunch)."""
    from rgt.durable import remember_target
    from rgt.providers.base import run_label
    from rgt.render import render_template

    # `not x > 0` (not `x <= 0`): NaN compares false both ways and would slip past the cap.
    if not (math.isfinite(max_price_per_hour) and max_price_per_hour > 0):
        raise UsageError(f"max_price_per_hour {max_price_per_hour} must be a number > 0")
    if interruptible and not profile.spot_available:
        raise UsageError(f"profile {profile.name}: interruptible rentals are not available")
    if interruptible and not (
        bid_per_hour is not None and math.isfinite(bid_per_hour) and bid_per_hour > 0
    ):
        raise UsageError(f"interruptible launch needs a bid per hour > 0 (bid {bid_per_hour})")
    if not interruptible and bid_per_hour is not None:
        raise UsageError("bid is only for interruptible launches")
    rendered = render_template(
        profile, "onstart", job, extra=dict(render_context) if render_context else None
    )
    remember_target(job)  # `rgt sync ID` knows where its checkpoints go
    label = run_label(job.run_id, attempt)
    # Look for the run's label before the offer: after an interrupted launch the box may
    # already be rented (and billing), and its offer is then often no longer rentable.
    existing = labelled_instance(provider, label)
    if existing is not None:
        return _adopt(
            existing,
            provider=provider,
            ledger=ledger,
            profile=profile,
            job=job,
            offer_id=offer_id,
            max_price_per_hour=max_price_per_hour,
            interruptible=interruptible,
            bid_per_hour=bid_per_hour,
            onstart_bytes=len(rendered.text.encode()),
            notes=rendered.notes,
        )
    offer = find_offer(provider, offer_id, job, interruptible)
    if interruptible:
        assert bid_per_hour is not None
        if offer.min_bid > 0 and bid_per_hour < offer.min_bid:
            raise UsageError(
                f"bid {bid_per_hour:.4f} $/h is under offer {offer.id}'s minimum bid "
                f"{offer.min_bid:.4f} $/h"
            )
        price = bid_per_hour
    else:
        price = offer.dph_total
    if price > max_price_per_hour:
        raise Refused(
            f"offer {offer.id} costs {price:.4f} $/h, above the cap max_price_per_hour "
            f"{max_price_per_hour:.4f} $/h; nothing was rented"
        )
    # The intent goes into the ledger BEFORE the create: if the answer is lost, or recording
    # the box fails, the ledger still says a box carrying this label may bill, and `rgt sweep`
    # resolves it by the label. If the intent cannot be written, nothing is rented.
    try:
        launch_id = ledger.record_launch_intent(
            provider.platform,
            label=label,
            run_id=job.run_id,
            profile=profile.name,
            offer_id=offer.id,
            price_per_hour=price,
            max_price_per_hour=max_price_per_hour,
            interruptible=interruptible,
            # The gate binds a later pull to exactly this results root and roster.
            results_root=job.results_root,
            roster=list(job.roster),
        )
    except (sqlite3.Error, OSError) as exc:
        raise LedgerError(
            f"{ledger.path}: cannot record the launch before renting ({exc}); nothing was "
            "rented: free space or fix the ledger, then launch again"
        ) from None
    found_after: str | None = None
    try:
        instance = provider.create(
            offer.id,
            image=job.image,
            disk_gb=float(job.disk_gb),
            onstart=rendered.text,
            label=label,
            env=dict(job.env),
            interruptible=interruptible,
            bid_per_hour=bid_per_hour if interruptible else None,
            secret_env=job.secret_env,
        )
    except (UsageError, CreateRefused) as exc:
        # Refused before or by the platform without renting (a leaking secret, a taken offer).
        _close_launch(ledger, launch_id, "not-rented", exc.message)
        raise
    except Exception as exc:  # every other failure leaves the outcome unknown
        instance = _look_after_failed_create(provider, ledger, launch_id, label, exc)
        found_after = str(exc) if not isinstance(exc, RgtError) else exc.message
    _record_rented(ledger, launch_id, instance, label)
    warnings = [*danger_clocks(profile), *rendered.notes]
    if found_after is not None:
        warnings.insert(
            0,
            f"the create failed ({found_after}), but instance {instance.id} carries label "
            f"{label}: it was rented and is billing; it is recorded",
        )
    if offer.inet_down_cost_per_gb or offer.inet_up_cost_per_gb:
        warnings.append(
            f"this host charges {offer.inet_down_cost_per_gb:g} $/GB down and "
            f"{offer.inet_up_cost_per_gb:g} $/GB up, in every state"
        )
    return LaunchResult(
        instance_id=instance.id,
        label=label,
        run_id=job.run_id,
        profile=profile.name,
        offer_id=offer.id,
        state=instance.state,
        price_per_hour=price,
        interruptible=interruptible,
        onstart_bytes=len(rendered.text.encode()),
        warnings=warnings,
    )


def _look_after_failed_create(
    provider: Provider, ledger: Ledger, launch_id: int, label: str, error: Exception
) -> Instance:
    """After a create whose outcome is unknown: the box carrying `label`, else an error that
    says plainly what is known. The launch stays pending in the ledger unless a box is found:
    `rgt sweep` looks again and resolves it."""
    what = error.message if isinstance(error, RgtError) else f"{type(error).__name__}: {error}"
    try:
        found = labelled_instance(provider, label)
    except RgtError as lookup:
        _close_launch(ledger, launch_id, "pending", f"create: {what}; look-up: {lookup.message}")
        raise ProviderError(
            f"{what}; whether a box carrying label {label} was rented is unknown (looking for "
            f"it failed: {lookup.message}); the launch is pending in the ledger: run `rgt "
            "sweep` when the API answers (it finds the box by its label and records it), or "
            "`rgt launch` again with the same job (it adopts that box; it rents only if none "
            "carries the label)"
        ) from None
    if found is not None:
        return found
    _close_launch(ledger, launch_id, "pending", f"create: {what}; no instance carries the label")
    if not isinstance(error, RgtError):
        raise error  # a bug in rgt (exit 70), and no box came of it
    raise ProviderError(
        f"{what}; no instance carries label {label}: nothing is rented now (the launch stays "
        "pending in the ledger until `rgt sweep` confirms that no box appeared)"
    ) from None


def _record_rented(ledger: Ledger, launch_id: int, instance: Instance, label: str) -> None:
    """Complete the launch with its instance (one transaction); when that fails, say plainly
    that a box bills and is not recorded, and how to record it."""
    try:
        ledger.record_launch_rented(launch_id, instance.id, state=instance.state)
    except (sqlite3.Error, OSError) as exc:
        raise LedgerError(_not_recorded(instance.id, label, f"{ledger.path}: {exc}")) from None


def _not_recorded(instance_id: str, label: str, why: str) -> str:
    """The plain message for a rented box the ledger could not record."""
    return (
        f"instance {instance_id} carrying label {label} was rented and is billing; it is NOT "
        f"recorded ({why}): run `rgt launch` again with the same job to adopt it, or `rgt sweep`"
    )


def _close_launch(ledger: Ledger, launch_id: int, status: str, detail: str) -> None:
    """Record how a launch ended without a box (best effort: when the ledger cannot be written
    the launch stays pending, which `rgt sweep` resolves by its label)."""
    with contextlib.suppress(sqlite3.Error, OSError):
        ledger.record_launch_outcome(launch_id, status, detail=detail)


def labelled_instance(provider: Provider, label: str) -> Instance | None:
    """The live instance carrying `label` (the lowest id if several do), else None."""
    matches = [i for i in provider.list_instances() if i.label == label and i.state != "gone"]
    return min(matches, key=lambda i: int(i.id) if i.id.isdigit() else 0, default=None)


def _adopt(
    instance: Instance,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Profile,
    job: JobRequest,
    offer_id: str,
    max_price_per_hour: float,
    interruptible: bool,
    bid_per_hour: float | None,
    onstart_bytes: int,
    notes: Sequence[str],
) -> LaunchResult:
    """Record an instance that already carries the run's label (an earlier, interrupted launch
    rented it) instead of renting another; the ledger's facts win over the platform's, and the
    earlier launch's own (its offer, price, results root and roster) when it is pending."""
    record = ledger.instance(provider.platform, instance.id)
    pending = [
        launch
        for launch in ledger.launches(provider.platform, status="pending")
        if launch.label == instance.label
    ]
    earlier = pending[-1] if pending else None
    known_offer = record.offer_id if record is not None else None
    if known_offer is None and earlier is not None:
        known_offer = earlier.offer_id
    price = record.price_per_hour if record is not None else None
    if price is None and earlier is not None:
        price = earlier.price_per_hour
    if price is None:
        price = instance.dph_total
    if price is None and interruptible:
        price = bid_per_hour
    was_interruptible = (
        instance.interruptible if instance.interruptible is not None else interruptible
    )
    try:
        if earlier is not None:
            ledger.record_launch_rented(
                earlier.id,
                instance.id,
                state=instance.state,
                price_per_hour=price,
                interruptible=was_interruptible,
                detail="adopted by a later rgt launch",
            )
        else:
            ledger.record_instance(
                provider.platform,
                instance.id,
                label=instance.label,
                profile=profile.name,
                # Only an offer rgt recorded at the rental is known to be this box's offer.
                offer_id=known_offer,
                price_per_hour=price,
                interruptible=was_interruptible,
                state=instance.state,
                results_root=job.results_root,
                roster=list(job.roster),
            )
    except (sqlite3.Error, OSError) as exc:
        raise LedgerError(
            _not_recorded(instance.id, str(instance.label), f"{ledger.path}: {exc}")
        ) from None
    ignored = _ignored_by_adoption(
        record, earlier, offer_id=known_offer, job=job, asked_offer=offer_id
    )
    if interruptible != was_interruptible:
        ignored.append(
            f"interruptible={interruptible}: the box is "
            f"{'interruptible' if was_interruptible else 'on demand'}"
        )
    warnings = [
        f"instance {instance.id} already carries label {instance.label} (an earlier launch "
        f"rented it): adopted it, rented nothing new"
        + (f"; ignored: {'; '.join(ignored)}" if ignored else ""),
        *danger_clocks(profile),
        *notes,
    ]
    if price is not None and price > max_price_per_hour:
        warnings.append(
            f"the adopted instance costs {price:.4f} $/h, above the cap max_price_per_hour "
            f"{max_price_per_hour:.4f} $/h; it is already rented and bills"
        )
    return LaunchResult(
        instance_id=instance.id,
        label=str(instance.label),
        run_id=job.run_id,
        profile=profile.name,
        offer_id=known_offer or str(offer_id),
        state=instance.state,
        price_per_hour=price,
        interruptible=was_interruptible,
        onstart_bytes=onstart_bytes,
        warnings=warnings,
        adopted=True,
        ignored=ignored,
    )


def _ignored_by_adoption(
    record: InstanceRecord | None,
    earlier: LaunchRecord | None,
    *,
    offer_id: str | None,
    job: JobRequest,
    asked_offer: str,
) -> list[str]:
    """What a launch that adopted the run's box was asked for and the box does not have: the
    offer it was rented from, the job's results root and roster as recorded at that rental."""
    ignored: list[str] = []
    if offer_id is not None and str(asked_offer) != str(offer_id):
        ignored.append(f"offer_id {asked_offer}: the box was rented from offer {offer_id}")
    known = record if record is not None and record.results_root else earlier
    root = known.results_root if known is not None else None
    roster = known.roster if known is not None else None
    if root is not None and root != job.results_root:
        ignored.append(
            f"results_root {job.results_root}: the box's job writes its results under {root}"
        )
    if roster is not None and sorted(roster) != sorted(job.roster):
        ignored.append(f"roster {sorted(job.roster)}: the box's job has roster {sorted(roster)}")
    return ignored


# -- poll --------------------------------------------------------------------------------------

# What a poll says about the job (JobReport.state): the status record's outcome, or why there is
# no outcome to report.
JobState = Literal[
    "running",  # the record says running and its heartbeat is fresh
    "succeeded",  # the job exited 0 and its manifest was written
    "failed",  # the job (or the hook's set-up, or the manifest builder) exited non-zero
    "interrupted",  # the boot hook got SIGTERM/SIGINT
    "stale",  # the record says running but its heartbeat stopped: the hook was killed
    "no-record",  # the boot hook has written no status record (yet)
    "unreadable",  # a record is there but is not one rgt's boot hook writes
    "unreachable",  # the box did not answer over ssh: only the API state is known
    "not-read",  # the instance is not running: ssh cannot reach its disk
]
# The outcomes that end a `poll --until done` wait (besides the instance being gone).
JOB_DONE = ("succeeded", "failed")
LOG_LINES_SHOWN = 10  # of a failed job's log tail, in the human form of `rgt poll`


@dataclass(frozen=True)
class JobReport:
    """The job on the box, from the status record its boot hook keeps (rgt.jobstatus)."""

    state: JobState
    summary: str  # the `job:` line of `rgt poll`
    attempt: int | None = None
    exit_code: int | None = None
    last_checkpoint: str | None = None
    # The number in the newest checkpoint's name (step-000035.ckpt -> 35) when it has one.
    checkpoint_step: int | None = None
    heartbeat_age_seconds: float | None = None
    log_tail: list[str] = field(default_factory=list)
    # Where the box's state directory of the run (status record, onstart.log, job.log) was
    # copied to (a failed job), or why it could not be.
    logs_dir: str | None = None
    logs_error: str | None = None
    # The reference entry the log tail or exit code points at (rgt.diagnose), e.g.
    # "TRAIN-OOM3 (references/train-oom.md): exit code 137 (...)"; None when nothing matched.
    reference: str | None = None
    # Why a failed attempt failed when the hook said (`health: ...`: the box failed its health
    # check before the job started); None otherwise.
    reason: str | None = None


@dataclass(frozen=True)
class PollReport:
    """An instance now: its state, what that means, what to do next, and what it has cost."""

    instance_id: str
    state: str
    classification: str
    next_action: str
    gotcha: str | None
    keeps_billing: list[str]
    hourly_cost: float | None
    cost_so_far: float | None
    # How cost_so_far is estimated; None: as the previous poll of this MCP session said.
    cost_basis: str | None
    status_msg: str | None = None
    state_since: float | None = None
    run_id: str | None = None
    job: JobReport | None = None  # None: not asked for, or not a box rgt labelled for a run
    waited_seconds: float | None = None  # `poll --until done`: how long it waited
    # MCP poll of a run id (`rgt run`): where the run stands (rgt.supervisor.run_report), and
    # this report is of its current attempt's instance.
    run: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def classify(instance: Instance, profile: Profile, *, for_tool: bool = False) -> tuple[str, str]:
    """(classification, next action) for an instance state, in the profile's terms; the steps
    as MCP tool calls with `for_tool`, else as rgt commands."""
    from rgt.nextstep import Step

    def say(tool: str, **args: Any) -> str:
        step = Step.of(tool, instance_id=instance.id, **args)
        return step.call() if for_tool else step.cli()

    stop, meter_stop = profile.stop_verb or "stop", profile.meter_stop_verb or "destroy"
    bills = profile.stop_still_bills
    state = instance.state
    if state == "gone":
        return "gone", "nothing to do: the instance no longer exists and bills nothing"
    if state == "running":
        return (
            "running",
            "keep polling; when the job has written PULL_MANIFEST.json in its results root, "
            f"copy → verify → {meter_stop} (through the gate)",
        )
    if state in ("loading", "provisioning"):
        return (
            "loading",
            "the image is being pulled and the container started: poll again in a minute; if it "
            "stays loading for many minutes read the instance logs and consider a faster offer",
        )
    if state == "scheduling":
        return (
            "stuck-scheduling",
            "the instance waits for its GPU, which someone else may hold (it bills its disk "
            "meanwhile): poll a few times; if it stays scheduling past the profile's "
            f"host_lost_grace, `{say('discard', reason='host-lost')}` ends it (a human "
            "approves, told what is lost), then launch again elsewhere",
        )
    if state == "paused":
        return (
            "preempted",
            "the interruptible instance was outbid or preempted: wait for it to resume (the boot "
            "hook resumes from the newest checkpoint), or relaunch with a higher bid elsewhere",
        )
    if state == "offline":
        return (
            "offline",
            "the host stopped answering: poll a few more times (its disk may still bill); if it "
            "stays offline past the profile's host_lost_grace, "
            f"`{say('discard', reason='host-lost')}` ends it (a human approves, told what is "
            "lost), then launch again on a verified reliable offer",
        )
    if state in ("stopped", "exited"):
        if bills:
            return (
                "stopped-but-billing",
                f"this {state} instance still bills {', '.join(bills)}: start it "
                f"(`{say('start')}`; compute bills again) and copy → verify → {meter_stop} through "
                f"the gate, never park it {stop}ped",
            )
        return (
            state,
            f"nothing bills while {state}; start it (`{say('start')}`) to continue",
        )
    return "unknown", "poll again; if this persists read the instance logs"


def keeps_billing(instance: Instance, profile: Profile) -> list[str]:
    """What this instance bills right now, by the profile."""
    if instance.state == "gone":
        return []
    if instance.state == "running":
        return ["compute", *[item for item in profile.stop_still_bills if item != "compute"]]
    if instance.state in ("loading", "provisioning"):
        return ["compute?", *profile.stop_still_bills]
    return list(profile.stop_still_bills)


def _storage_rate(instance: Instance) -> float | None:
    per_gb_month = instance.raw.get("storage_cost") if instance.raw else None
    if instance.disk_gb is None or not isinstance(per_gb_month, (int, float)):
        return None
    return float(instance.disk_gb) * float(per_gb_month) / HOURS_PER_MONTH


def estimate_cost(
    instance: Instance,
    record: InstanceRecord | None,
    history: Sequence[tuple[float, str, str | None]],
    profile: Profile,
    *,
    now: float,
) -> tuple[float | None, float | None, str]:
    """(hourly cost now, cost so far, basis): an estimate from rgt's own observations.

    Compute is charged at the rental price while running; storage (when the profile says a
    stopped box still bills its disk) whenever the instance exists; bandwidth is not counted."""
    compute_rate = (record.price_per_hour if record and record.price_per_hour else None) or (
        instance.dph_total
    )
    storage_rate = _storage_rate(instance) if "disk" in profile.stop_still_bills else 0.0
    started = record.created if record is not None else None
    start_date = instance.raw.get("start_date") if instance.raw else None
    if isinstance(start_date, (int, float)) and (started is None or start_date < started):
        started = float(start_date)
    if instance.state == "running":
        hourly = compute_rate
    elif instance.state == "gone":
        hourly = 0.0
    else:
        hourly = storage_rate
    if record is None:
        # Not in the ledger: rgt never saw its rental price nor its states, so any sum here
        # would be a guess (and was reported as $0 while the box billed).
        return hourly, None, NOT_RENTED_BY_RGT
    if started is None or compute_rate is None:
        return hourly, None, "unknown: rgt has no record of when this instance started"
    # Piecewise: each observed state lasts until the next observation.
    events = [(at, state) for at, state, _ in history if at >= started]
    timeline = [(started, events[0][1] if events else instance.state), *events]
    timeline.append((now, instance.state))
    total = 0.0
    for (at, state), (until, _) in itertools.pairwise(timeline):
        hours = max(0.0, until - at) / SECONDS_PER_HOUR
        if state == "running":
            total += hours * compute_rate
        elif state != "gone":
            total += hours * (storage_rate or 0.0)
    basis = (
        "estimate from rgt's state observations: compute at the rental price while running"
        + (", disk storage while stopped" if storage_rate else "")
        + "; bandwidth not included"
    )
    return hourly, round(total, 6), basis


def poll(
    instance_id: str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Profile,
    now: float | None = None,
    read_job: bool = False,
    for_tool: bool = False,
) -> PollReport:
    """One look at the instance (a single API call): classification, next action, cost so far.

    Records the observed state in the ledger when it changed, so costs and "since" add up.
    With `read_job`, a running box's job status record is read too (one ssh read; see
    `job_report`), and the next action follows the job's outcome, naming its steps as MCP tool
    calls with `for_tool`, else as rgt commands."""
    at = time.time() if now is None else now
    instance = provider.show(str(instance_id))
    record = next(
        (r for r in ledger.instances(provider.platform) if r.instance_id == instance.id), None
    )
    history = ledger.state_history(instance.id)
    if record is not None and (not history or history[-1][1] != instance.state):
        ledger.record_state(provider.platform, instance.id, instance.state, now=at)
        history = ledger.state_history(instance.id)
    classification, next_action = classify(instance, profile, for_tool=for_tool)
    if instance.state == "gone":
        # Never a bare "gone, nothing to do": the ledger tells an id never known, a verified
        # destroy, a discard and a box lost with its results apart (rgt.ending).
        from rgt.ending import gone_ending

        classification, next_action = gone_ending(ledger, provider.platform, instance.id)
    since = None
    for when, state, _ in reversed(history):
        if state != instance.state:
            break
        since = when
    hourly, so_far, basis = estimate_cost(instance, record, history, profile, now=at)
    run_id = run_of(instance, record)
    job = None
    if read_job and run_id is not None and instance.state != "gone":
        job = job_report(instance, run_id, provider=provider, profile=profile, now=at)
        action = job_next_action(
            job,
            instance_id=instance.id,
            run_id=run_id,
            results_root=record.results_root if record is not None else None,
            bills=keeps_billing(instance, profile),
            profile=profile,
            for_tool=for_tool,
        )
        if job.state in ("stale", "interrupted") and not getattr(
            provider, "restarts_boot_hook", True
        ):
            # A box reached over ssh: nothing re-runs the hook; launching it again resumes it.
            action = (
                "nothing restarts the boot hook on this box: run `rgt launch --on "
                f"{instance.id} --job JOB.yaml` again with the same job; it resumes from the "
                "newest checkpoint"
            )
        next_action = action or next_action
    return PollReport(
        instance_id=instance.id,
        state=instance.state,
        classification=classification,
        next_action=next_action,
        gotcha=gotcha_for(profile, classification),
        keeps_billing=keeps_billing(instance, profile),
        hourly_cost=hourly,
        cost_so_far=so_far,
        cost_basis=basis,
        status_msg=instance.status_msg,
        state_since=since,
        run_id=run_id,
        job=job,
    )


def run_of(instance: Instance, record: InstanceRecord | None) -> str | None:
    """The run an instance was rented for, from its rgt label (`rgt:<run_id>`: live from the
    provider, else as the ledger recorded it at launch); None for a box rgt did not label."""
    from rgt.providers.base import run_from_label

    return run_from_label(instance.label, record.label if record is not None else None)


def job_report(
    instance: Instance, run_id: str, *, provider: Provider, profile: Profile, now: float
) -> JobReport:
    """The job's outcome from the status record on the box (one ssh read while it runs).

    Never raises for the box: an unreachable box or a missing or malformed record is a report
    that says so. A failed job's state directory (status record and logs) is copied to the
    run's local dir (`rgt.paths.run_dir`) before anything is suggested, once per failure."""
    from rgt.errors import CheckFailed, ProviderError, RgtError
    from rgt.jobstatus import parse_status, status_remote_path

    if instance.state != "running":
        return JobReport(
            "not-read",
            f"not read: the instance is {instance.state}, and its status record is on its disk, "
            "which ssh reaches only while it runs",
        )
    try:
        remote = status_remote_path(profile, run_id)
        data = provider.read_remote_file(instance.id, remote)
    except (ProviderError, FileNotFoundError) as exc:
        text = exc.message if isinstance(exc, RgtError) else str(exc)
        if isinstance(exc, FileNotFoundError) or "No such file" in text:
            return JobReport(
                "no-record",
                "not started: the boot hook has written no status record yet",
            )
        return JobReport(
            "unreachable",
            f"unknown: the box did not answer over ssh ({text}); this report rests on the API "
            "state alone",
        )
    except RgtError as exc:
        return JobReport("unreadable", f"unknown: cannot read the status record ({exc.message})")
    try:
        status = parse_status(data)
    except CheckFailed as exc:
        return JobReport("unreadable", f"unknown: {exc.message}")
    if status.run_id != run_id:
        return JobReport(
            "unreadable",
            f"unknown: the status record is of run {status.run_id!r}, not of this box's run "
            f"{run_id!r}",
        )
    from rgt.diagnose import diagnose
    from rgt.providers.redact import Redactor

    redactor = Redactor()  # credential-shaped text a job printed stays out of reports
    step = _checkpoint_step(status.last_checkpoint)
    tail = [redactor.text(line) for line in status.log_tail]
    reason = redactor.text(status.reason) if status.reason else None
    # A failed health check names its reference itself; else the log tail and exit code do.
    diagnosis = diagnose(
        [reason] if status.failed_health_check() and reason else tail, status.exit_code
    )
    common: dict[str, Any] = {
        "attempt": status.attempt,
        "exit_code": status.exit_code,
        "last_checkpoint": status.last_checkpoint,
        "checkpoint_step": step,
        "heartbeat_age_seconds": round(max(0.0, status.heartbeat_age(now)), 1),
        "log_tail": tail,
        "reference": diagnosis.text() if diagnosis is not None else None,
        "reason": reason,
    }
    where = f"attempt {status.attempt}"
    if status.last_checkpoint:
        where += f", last checkpoint {status.last_checkpoint}"
    if status.is_stale(now):
        age = status.heartbeat_age(now)
        return JobReport(
            "stale",
            f"stale: the record says running ({where}) but its last heartbeat was {age:.0f} s "
            f"ago (it beats every {status.heartbeat_seconds} s): the boot hook was killed",
            **common,
        )
    if status.outcome == "running":
        at_step = f"step {step} " if step is not None else ""
        return JobReport("running", f"running {at_step}({where})", **common)
    if status.outcome == "succeeded":
        return JobReport(
            "succeeded", f"succeeded (attempt {status.attempt}; manifest written)", **common
        )
    if status.outcome == "interrupted":
        return JobReport("interrupted", f"interrupted by SIGTERM/SIGINT ({where})", **common)
    logs_dir, logs_error = _pull_job_logs(instance.id, run_id, data, provider, profile)
    summary = f"failed (exit {status.exit_code}) on attempt {status.attempt}"
    if status.failed_health_check():
        summary = f"failed the box health check on attempt {status.attempt}: {reason}"
    return JobReport(
        "failed",
        summary,
        **common,
        logs_dir=logs_dir,
        logs_error=logs_error,
    )


def _checkpoint_step(name: str | None) -> int | None:
    """The one number in a checkpoint's file name (step-000035.ckpt -> 35), else None."""
    numbers = re.findall(r"\d+", name.rsplit(".", 1)[0]) if name else []
    return int(numbers[0]) if len(numbers) == 1 else None


def _pull_job_logs(
    instance_id: str, run_id: str, record: bytes, provider: Provider, profile: Profile
) -> tuple[str | None, str | None]:
    """Copy the box's state directory of the run into the run's local dir (rsync: only what
    changed), unless the status record there is already this one. (local dir, error)."""
    from rgt.errors import RgtError
    from rgt.jobstatus import STATUS_NAME, status_remote_dir
    from rgt.paths import run_dir

    target = run_dir(run_id)
    try:
        if (target / STATUS_NAME).read_bytes() == record:
            return str(target), None
    except OSError:
        pass
    try:
        provider.copy_from(instance_id, status_remote_dir(profile, run_id), target.parent)
    except (RgtError, OSError) as exc:
        text = exc.message if isinstance(exc, RgtError) else str(exc)
        return None, f"could not copy the job's logs off the box: {text}"
    return str(target), None


def job_results_dir(run_id: str) -> Path:
    """Where rgt suggests pulling a run's results: `<run dir>/results` (rgt.paths.run_dir)."""
    from rgt.paths import run_dir

    return run_dir(run_id) / "results"


def job_next_action(
    job: JobReport,
    *,
    instance_id: str,
    run_id: str,
    results_root: str | None,
    bills: Sequence[str],
    profile: Profile,
    for_tool: bool = False,
) -> str | None:
    """What to do next given the job's outcome; None where the instance's state says it
    better (the box is not running, so its record was not read). `for_tool`: the steps as MCP
    tool calls (rgt.nextstep), else as rgt commands. When the job's log tail or exit code
    matches a known pattern, the action ends by naming its reference."""
    action = _job_next_action(
        job,
        instance_id=instance_id,
        run_id=run_id,
        results_root=results_root,
        bills=bills,
        profile=profile,
        for_tool=for_tool,
    )
    if action is not None and job.reference is not None:
        action += f". The job's log points at {job.reference}: read that reference first"
    return action


def _job_next_action(
    job: JobReport,
    *,
    instance_id: str,
    run_id: str,
    results_root: str | None,
    bills: Sequence[str],
    profile: Profile,
    for_tool: bool,
) -> str | None:
    from rgt.jobstatus import HEALTH_PREFIX
    from rgt.nextstep import Step

    def say(step: Step) -> str:
        return step.call() if for_tool else step.cli()

    meter_stop = profile.meter_stop_verb or "destroy"
    billing = f"the box bills {', '.join(bills) or 'nothing'} meanwhile"
    if job.state == "running":
        return (
            f"the job runs; poll again later, or wait in one call: "
            f"`{say(Step.of('poll', instance_id=instance_id, wait=True))}`; {billing}"
        )
    if job.state == "succeeded":
        local = str(job_results_dir(run_id))
        copy = Step.of("copy", instance_id=instance_id, remote_root=results_root, local_dir=local)
        return (
            f"the job succeeded and its manifest is on the box: {say(copy)} → "
            f"{say(Step.of('verify', local_dir=local))} → "
            f"{say(Step.of(meter_stop, instance_id=instance_id))} (through the gate); {billing}"
        )
    if job.state == "failed" and (job.reason or "").startswith(HEALTH_PREFIX):
        return (
            f"the BOX failed its health check before the job started ({job.reason}): the host "
            "is bad, not your job, and retrying on it will not help. Leave it now: "
            f"`{say(Step.of('discard', instance_id=instance_id, reason='failed-job'))}` ends it "
            "(a human approves; nothing was computed, so nothing is lost), then launch the same "
            "job on another offer. The box still bills "
            f"{', '.join(bills) or 'nothing'} until then"
        )
    if job.state == "failed":
        if job.logs_dir:
            pulled = f"its status record and logs (job.log, onstart.log) are in {job.logs_dir}"
        else:
            pulled = f"its logs could not be copied ({job.logs_error}); MCP logs shows the box's"
        return (
            f"the job FAILED with exit code {job.exit_code}: {pulled}. Read them and fix the "
            f"job; no manifest was built, so the gate refuses {meter_stop}. The box still bills "
            f"{', '.join(bills) or 'nothing'}: once nothing on it is worth keeping, "
            f"`{say(Step.of('discard', instance_id=instance_id, reason='failed-job'))}` ends it "
            "(a human approves, told what is lost); then launch the fixed job"
        )
    if job.state == "interrupted":
        return (
            "the boot hook was stopped by a signal (a preemption's grace, a scheduler's stop); "
            "its next start resumes the job from the newest checkpoint: poll again, or start "
            f"the instance again if nothing restarts it; {billing}"
        )
    if job.state == "stale":
        return (
            "the boot hook stopped beating without recording an outcome (killed -9, or the "
            "container restarted without it): the job is probably not running. Read the box's "
            "log (MCP logs); stopping and starting the instance re-runs the boot hook, which "
            f"resumes from the newest checkpoint; {billing}"
        )
    if job.state == "no-record":
        return (
            "poll again in a minute: the boot hook writes its status record as it starts; if "
            "none appears, read the box's log (MCP logs): the hook may have failed before it, "
            f"or the instance was launched by an rgt without status records; {billing}"
        )
    if job.state in ("unreachable", "unreadable"):
        return (
            "poll again: the job's outcome is unknown (see job), and the state above is the "
            f"API's alone; {billing}"
        )
    return None


def is_done(report: PollReport) -> bool:
    """True when waiting longer cannot change the answer: the job succeeded or failed, or the
    instance is gone."""
    return report.state == "gone" or (report.job is not None and report.job.state in JOB_DONE)


def wait_until_done(
    instance_id: str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Profile,
    timeout: float,
    interval: float,
    on_poll: Callable[[PollReport, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> PollReport:
    """Poll (reading the job's status record) until `is_done` or `timeout` seconds passed; the
    last report, with `waited_seconds`. `on_poll(report, elapsed)` sees every poll.

    A provider error (API down, box unreachable) is retried at the next poll; only when the
    timeout passes with the last poll failing is it raised (ProviderError, exit 3)."""
    from dataclasses import replace

    from rgt.errors import ProviderError

    began = clock()
    while True:
        try:
            report: PollReport | None = poll(
                instance_id, provider=provider, ledger=ledger, profile=profile, read_job=True
            )
            failure = None
        except ProviderError as exc:
            report, failure = None, exc
        elapsed = clock() - began
        if report is not None and on_poll is not None:
            on_poll(report, elapsed)
        if report is not None and (is_done(report) or elapsed >= timeout):
            return replace(report, waited_seconds=round(elapsed, 1))
        if failure is not None and elapsed >= timeout:
            raise failure
        sleep(max(0.0, min(interval, timeout - elapsed)))


# -- stop and cost -----------------------------------------------------------------------------


def stop(
    instance_id: str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Profile,
    for_tool: bool = False,
) -> dict[str, Any]:
    """Stop the instance (reversible) and say, from the profile, what keeps billing
    (`for_tool`: the way back named as MCP tool calls, else as rgt commands)."""
    from rgt.nextstep import Step

    if not profile.stop_verb:
        raise UsageError(f"profile {profile.name} has no stop verb")
    provider.stop(str(instance_id))
    ledger.record_state(provider.platform, str(instance_id), "stopped", detail="stopped by rgt")
    bills = profile.stop_still_bills
    meter_stop = profile.meter_stop_verb
    message = (
        f"instance {instance_id} stopped. On {profile.title} a stopped instance still bills: "
        f"{', '.join(bills) or 'nothing'}."
    )
    if bills and meter_stop:
        message += (
            f" Only `{meter_stop}` ends that, through the gate, and the gate reads the box, "
            "which needs it running: start it again ("
            + (
                f"`{Step.of('start', instance_id=str(instance_id)).call()}`"
                if for_tool
                else f"`rgt start {instance_id}`, or `rgt pull ... --start`"
            )
            + f"; it bills compute again) → copy → verify → approve → {meter_stop}."
        )
    return {
        "instance_id": str(instance_id),
        "stopped": True,
        "keeps_billing": bills,
        "meter_stop_verb": meter_stop,
        "message": message,
    }


def start(
    instance_id: str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Profile,
    wait_seconds: float = 0.0,
    poll_seconds: float = 2.0,
    for_tool: bool = False,
) -> dict[str, Any]:
    """Start a stopped (or exited) instance: compute bills again from now. With `wait_seconds`,
    wait (bounded) until it runs. A box that is offline, paused or waiting for its GPU is not
    started (starting cannot help it): a UsageError says what can. `for_tool`: next steps as
    MCP tool calls, else as rgt commands."""
    from rgt.nextstep import Step
    from rgt.pull import reach_remedy, remedy_steps

    def say(step: Step) -> str:
        return step.call() if for_tool else step.cli()

    instance_id = str(instance_id)
    instance = provider.show(instance_id)
    if instance.state == "gone":
        raise UsageError(f"instance {instance_id} is gone (destroyed): there is nothing to start")
    if instance.state in ("offline", "paused", "scheduling"):
        raise UsageError(
            f"instance {instance_id} is {instance.state}: {reach_remedy(instance.state)}",
            step=remedy_steps(instance_id),
        )
    already = instance.state in ("running", "loading", "provisioning")
    if not already:
        provider.start(instance_id)
        ledger.record_state(provider.platform, instance_id, "starting", detail="started by rgt")
    deadline = time.monotonic() + max(0.0, wait_seconds)
    state = provider.show(instance_id).state
    while wait_seconds > 0 and state not in ("running", "gone") and time.monotonic() < deadline:
        time.sleep(poll_seconds)
        state = provider.show(instance_id).state
    rate = f" at about ${instance.dph_total:.4f}/h" if instance.dph_total else ""
    meter_stop = profile.meter_stop_verb or "destroy"
    if state == "running":
        message = (
            f"instance {instance_id} is running{' (it already was)' if already else ''}; "
            f"it bills compute again{rate}. Next: copy → verify → {meter_stop} through the gate "
            f"(`{say(Step.of('copy', instance_id=instance_id, remote_root=None, local_dir=None))}`"
            "), or let the job finish first"
        )
    else:
        message = (
            f"instance {instance_id} was asked to start and is {state}; from now it bills "
            f"compute again{rate}. It may wait for its GPU (scheduling); poll until it runs "
            f"(`{say(Step.of('poll', instance_id=instance_id))}`), then copy → verify → "
            f"{meter_stop} through the gate"
        )
    return {
        "instance_id": instance_id,
        "started": not already,
        "state": state,
        "bills_compute_again": True,
        "message": message,
    }


def cost_report(
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Profile,
    instance_id: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Spend so far and burn rate of every instance rgt rented (or one), plus live hourly total."""
    at = time.time() if now is None else now
    records = [
        r
        for r in ledger.instances(provider.platform)
        if instance_id is None or r.instance_id == str(instance_id)
    ]
    # One instance rgt did not rent is still reported (the provider knows it).
    ids = [r.instance_id for r in records] or ([str(instance_id)] if instance_id else [])
    rows: list[dict[str, Any]] = []
    for ident in ids:
        report = poll(ident, provider=provider, ledger=ledger, profile=profile, now=at)
        rows.append(
            {
                "instance_id": ident,
                "state": report.state,
                "hourly_cost": report.hourly_cost,
                "cost_so_far": report.cost_so_far,
                "cost_basis": report.cost_basis,
                "keeps_billing": report.keeps_billing,
            }
        )
    # An unknown cost is left out of the total and named, never summed as $0 (an undercount).
    known = [r for r in rows if r["cost_so_far"] is not None]
    unknown = [r for r in rows if r["cost_so_far"] is None]
    # The same for the burn rate: an unknown hourly rate is not $0/h.
    rated = [r for r in rows if r["hourly_cost"] is not None]
    unrated = [r["instance_id"] for r in rows if r["hourly_cost"] is None]
    return {
        "platform": provider.platform,
        "instances": rows,
        "total_so_far": round(sum(r["cost_so_far"] for r in known), 6),
        "total_covers": len(known),
        "unknown": [r["instance_id"] for r in unknown],
        "total_note": unknown_cost_note(unknown),
        "hourly_total": round(sum(r["hourly_cost"] for r in rated), 6),
        "hourly_covers": len(rated),
        "hourly_unknown": unrated,
        "hourly_note": unknown_rate_note(unrated),
        "basis": "estimates from rgt's own observations (see rgt poll); bandwidth not included",
    }


def unknown_rate_note(instance_ids: Sequence[str]) -> str:
    """What an hourly total leaves out: the instances whose hourly rate is unknown ("" when
    every rate is known)."""
    if not instance_ids:
        return ""
    return (
        f"plus {len(instance_ids)} instance(s) whose hourly rate is unknown "
        f"({', '.join(instance_ids)})"
    )


def unknown_cost_note(rows: Sequence[dict[str, Any]]) -> str:
    """What the total leaves out: the instances whose cost so far is unknown, by reason
    ("" when every cost is known)."""
    foreign = [r["instance_id"] for r in rows if r["cost_basis"] == NOT_RENTED_BY_RGT]
    other = [r["instance_id"] for r in rows if r["cost_basis"] != NOT_RENTED_BY_RGT]
    parts = []
    if foreign:
        parts.append(
            f"plus {len(foreign)} instance(s) not rented through rgt whose cost so far is "
            f"unknown ({', '.join(foreign)})"
        )
    if other:
        parts.append(
            f"plus {len(other)} instance(s) whose cost so far is unknown: rgt has no record "
            f"of when they started ({', '.join(other)})"
        )
    return "; ".join(parts)
