"""Sweep: every instance the API key can see, what it costs per hour, and what keeps billing.
Without a platform named, every platform with boxes in the ledger: vast.ai through its API (when
a key is set) and the boxes attached over ssh of every profile.

The provider's own list is the truth (not the ledger's): an instance rented by hand, by another
tool, or by a crashed rgt is still on the bill. Each row is flagged when it deserves a look:

- ``stopped-but-billing``: not running, but the profile says a stopped instance still bills
  (on vast.ai: its disk);
- ``idle``: running while its results are already pulled and verified, or with a GPU
  utilisation the provider reports under 5 %;
- ``unknown-to-ledger``: rgt has no record of renting it;
- ``recorded-by-sweep``: a launch whose create answer was lost (or whose recording failed)
  rented it; the sweep found it by the launch's label and recorded it just now;
- ``superseded``: `rgt run` replaced it with a later attempt of its run (it was preempted,
  stuck or offline past the profile's grace, or the run moved to a much cheaper offer and
  stopped it) and it still exists: pull its results, or discard it with `--reason superseded`
  once the run's results are verified, or mid-run once a later attempt resumed past a durable
  checkpoint at least as new as the box's (rgt.discard).

Launches in doubt: every launch is written to the ledger before its create request. One still
pending (no instance recorded) is resolved here by its label: a box carrying it is recorded;
with none, the launch stays in doubt while its process may still be creating, and is closed as
not rented once that cannot be so any more.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rgt.ledger import DESTROY_CLAIM_SECONDS, LaunchRecord, Ledger
from rgt.lifecycle import unknown_rate_note
from rgt.pricing import HOURS_PER_MONTH
from rgt.providers.base import Instance, Provider
from rgt.runs import superseded_attempt

NOT_RUNNING_STATES = frozenset({"stopped", "paused", "exited", "offline", "scheduling"})
IDLE_GPU_PERCENT = 5.0
# A create request the platform accepted shows up in its list within seconds; a launch whose
# process ended (or died) this long ago without a box carrying its label rented nothing.
LAUNCH_SETTLE_SECONDS = 60.0
# A launch's process that still lives is creating for at most this long (bounded retries).
LAUNCH_RUNNING_SECONDS = DESTROY_CLAIM_SECONDS


@dataclass(frozen=True)
class SweepRow:
    """One instance as the sweep sees it."""

    instance_id: str
    state: str
    label: str | None
    gpu_name: str | None
    hourly_cost: float | None
    hourly_cost_basis: str
    keeps_billing: list[str]
    flags: list[str] = field(default_factory=list)
    platform: str = ""


@dataclass(frozen=True)
class LaunchRow:
    """A launch that was pending in the ledger (no instance recorded) and what the sweep made
    of it: `recorded` (a box carries its label), `in-doubt`, or `not-rented`."""

    launch_id: int
    label: str
    offer_id: str | None
    outcome: str
    instance_id: str | None
    note: str


@dataclass(frozen=True)
class SweepReport:
    """Every visible instance, plus ledger instances the provider no longer shows, plus the
    launches that were pending."""

    platform: str
    rows: list[SweepRow]
    ledger_only: list[str]
    # How each ledger-only or lost instance ended, in poll's words (rgt.ending).
    endings: dict[str, str] = field(default_factory=dict)
    launches: list[LaunchRow] = field(default_factory=list)
    # Instances that ended outside rgt with no verified pull and no discard (rgt.ending "lost").
    lost: list[str] = field(default_factory=list)
    # A sweep of every platform (`rgt sweep` without --platform): the platforms it covered, and
    # those it could not, with why (vast.ai without an API key).
    platforms: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def launches_in_doubt(self) -> list[LaunchRow]:
        """Pending launches the sweep could not resolve (a box may yet appear)."""
        return [launch for launch in self.launches if launch.outcome == "in-doubt"]

    @property
    def flagged(self) -> bool:
        """True when something deserves a look (the CLI exits 1)."""
        return any(row.flags for row in self.rows) or bool(self.launches_in_doubt)

    @property
    def hourly_total(self) -> float:
        """Sum of the known hourly costs (an unknown one is left out and named in
        `hourly_unknown`, never counted as $0/h)."""
        return sum(row.hourly_cost for row in self.rows if row.hourly_cost is not None)

    @property
    def hourly_unknown(self) -> list[str]:
        """The instances whose hourly cost is unknown, so `hourly_total` leaves them out."""
        return [row.instance_id for row in self.rows if row.hourly_cost is None]

    @property
    def hourly_covers(self) -> int:
        """How many instances `hourly_total` sums (those with a known hourly cost)."""
        return len(self.rows) - len(self.hourly_unknown)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (for --json and MCP)."""
        return {
            "platform": self.platform,
            "hourly_total": round(self.hourly_total, 6),
            "hourly_covers": self.hourly_covers,
            "hourly_unknown": self.hourly_unknown,
            "hourly_note": unknown_rate_note(self.hourly_unknown),
            "instances": [asdict(row) for row in self.rows],
            "ledger_only": self.ledger_only,
            "ledger_only_endings": self.endings,
            "lost": self.lost,
            "launches": [asdict(launch) for launch in self.launches],
            "platforms": self.platforms or [self.platform],
            "skipped": self.skipped,
        }


def storage_hourly(instance: Instance) -> float | None:
    """Estimated $/hour its disk bills while stopped: disk GB x the host's storage price
    ($/GB/month) / hours per month; None when the provider did not report both."""
    per_gb_month = instance.raw.get("storage_cost") if instance.raw else None
    if instance.disk_gb is None or not isinstance(per_gb_month, (int, float)):
        return None
    return float(instance.disk_gb) * float(per_gb_month) / HOURS_PER_MONTH


def sweep(
    *, provider: Provider, ledger: Ledger, profile: Any | None, now: float | None = None
) -> SweepReport:
    """List every instance the provider's key can see, with cost and flags; resolve the
    ledger's pending launches by their labels (recording the boxes found)."""
    still_bills = list(getattr(profile, "stop_still_bills", None) or [])
    listed = [instance for instance in provider.list_instances() if instance.state != "gone"]
    launches = resolve_launches(
        ledger, provider.platform, listed, now=time.time() if now is None else now
    )
    swept_in = {launch.instance_id for launch in launches if launch.outcome == "recorded"}
    known = {record.instance_id for record in ledger.instances(provider.platform)}
    known |= {record.instance_id for record in ledger.instances()}
    rows: list[SweepRow] = []
    visible: set[str] = set()
    for instance in listed:
        visible.add(instance.id)
        flags: list[str] = []
        cost: float | None
        if instance.state in NOT_RUNNING_STATES:
            keeps = still_bills
            if not still_bills:
                cost, basis = 0.0, "nothing (the profile says a stopped instance bills nothing)"
            else:
                cost = storage_hourly(instance)
                basis = (
                    "storage only (estimated from disk size)"
                    if cost is not None
                    else "unknown (disk size or storage price not reported)"
                )
                flags.append("stopped-but-billing")
        else:
            keeps = ["compute", *still_bills] if instance.state == "running" else ["compute?"]
            cost = instance.dph_total
            basis = (
                "dph_total (compute + storage)"
                if cost is not None
                else "unknown (the provider reported no dph_total)"
            )
            if instance.state == "running" and _is_idle(instance, ledger):
                flags.append("idle")
        if instance.id not in known:
            flags.append("unknown-to-ledger")
        if instance.id in swept_in:
            flags.append("recorded-by-sweep")
        if superseded_attempt(ledger, instance.id) is not None:
            flags.append("superseded")
        rows.append(
            SweepRow(
                platform=provider.platform,
                instance_id=instance.id,
                state=instance.state,
                label=instance.label,
                gpu_name=instance.gpu_name,
                hourly_cost=cost,
                hourly_cost_basis=basis,
                keeps_billing=keeps,
                flags=flags,
            )
        )
    from rgt.ending import gone_ending

    destroyed = {d.instance_id for d in ledger.destroys() if d.status == "confirmed"}
    ledger_only: list[str] = []
    lost: list[str] = []
    endings: dict[str, str] = {}
    for record in ledger.instances(provider.platform):
        if record.instance_id in visible or record.instance_id in destroyed:
            continue
        ending = gone_ending(ledger, provider.platform, record.instance_id)
        if record.last_state != "gone":
            ledger_only.append(record.instance_id)
        elif ending.word == "lost":
            # Ended outside rgt with its results unsaved: it bills nothing, but say so every
            # time, so nobody believes the results are safe somewhere.
            lost.append(record.instance_id)
        else:
            continue
        endings[record.instance_id] = ending.message
    return SweepReport(
        platform=provider.platform,
        rows=rows,
        ledger_only=sorted(ledger_only),
        endings=endings,
        launches=launches,
        lost=sorted(lost),
    )


ALL_PLATFORMS = "all"


def platforms_in_ledger(ledger: Ledger) -> dict[str, str]:
    """The platforms `rgt sweep` without --platform covers besides vast.ai: each platform with
    attached boxes in the ledger -> the profile its first box was attached with (the sweep
    reads what a stopped box keeps billing from it)."""
    found: dict[str, str] = {}
    for box in ledger.attached_boxes():
        found.setdefault(box.provider, box.profile)
    return found


def merge_reports(reports: list[SweepReport], skipped: dict[str, str]) -> SweepReport:
    """One report of several platforms' sweeps (each row names its platform)."""
    endings: dict[str, str] = {}
    for report in reports:
        endings.update(report.endings)
    return SweepReport(
        platform=ALL_PLATFORMS,
        rows=[row for report in reports for row in report.rows],
        ledger_only=sorted(i for report in reports for i in report.ledger_only),
        endings=endings,
        launches=[launch for report in reports for launch in report.launches],
        lost=sorted(i for report in reports for i in report.lost),
        platforms=[report.platform for report in reports],
        skipped=dict(skipped),
    )


def sweep_every_platform(ledger: Ledger) -> SweepReport:
    """The sweep of `rgt sweep` without --platform (and MCP sweep without a profile): vast.ai
    through its API when a key is set, then every platform with boxes attached over ssh; with
    neither, the missing key is the usage error it always was."""
    from rgt.commands._platform import open_platform
    from rgt.errors import UsageError
    from rgt.profile import load_profile
    from rgt.providers.ssh import SshProvider
    from rgt.providers.vastai import api_key_from_environment

    attached = platforms_in_ledger(ledger)
    reports = []
    skipped: dict[str, str] = {}
    try:
        api_key_from_environment()
    except UsageError as exc:
        if not attached:
            raise
        skipped["vastai"] = exc.message
    else:
        provider, profile = open_platform(None)
        reports.append(sweep(provider=provider, ledger=ledger, profile=profile))
    for platform, reference in sorted(attached.items()):
        try:
            profile = load_profile(reference)
        except UsageError as exc:
            skipped[platform] = f"its profile {reference} does not load: {exc.message}"
            continue
        reports.append(sweep(provider=SshProvider(profile), ledger=ledger, profile=profile))
    return merge_reports(reports, skipped)


def resolve_launches(
    ledger: Ledger, platform: str, listed: list[Instance], *, now: float
) -> list[LaunchRow]:
    """Each pending launch of `platform`, resolved by its label against `listed` (the
    provider's instances now): a box carrying it is recorded in the ledger (with the launch's
    offer, price, results root and roster); with none, the launch stays in doubt while its
    process may still be creating, else it is closed as not rented."""
    rows: list[LaunchRow] = []
    resolved: dict[str, str] = {}  # label -> instance recorded for it in this sweep
    for launch in ledger.launches(platform, status="pending"):
        if launch.label in resolved:  # recorded with an earlier launch of the same label
            rows.append(_launch_row(launch, "recorded", resolved[launch.label], "same box"))
            continue
        carrying = [i for i in listed if i.label == launch.label]
        if carrying:
            box = min(carrying, key=lambda i: int(i.id) if i.id.isdigit() else 0)
            ledger.record_launch_rented(
                launch.id, box.id, state=box.state, detail="found by its label by rgt sweep"
            )
            resolved[launch.label] = box.id
            rows.append(
                _launch_row(
                    launch,
                    "recorded",
                    box.id,
                    f"instance {box.id} carries the label: it was rented and bills; "
                    "recorded in the ledger now",
                )
            )
        elif _launch_running(launch, now):
            rows.append(
                _launch_row(
                    launch,
                    "in-doubt",
                    None,
                    f"its process {launch.pid} is still launching; no box carries the label yet",
                )
            )
        elif now - launch.updated < LAUNCH_SETTLE_SECONDS:
            rows.append(
                _launch_row(
                    launch,
                    "in-doubt",
                    None,
                    "no box carries the label yet, but the create ended under "
                    f"{LAUNCH_SETTLE_SECONDS:.0f} s ago and may still land: sweep again",
                )
            )
        else:
            ledger.record_launch_outcome(
                launch.id,
                "not-rented",
                detail=f"rgt sweep: no instance carries the label {launch.label}",
            )
            rows.append(_launch_row(launch, "not-rented", None, "no instance carries the label"))
    return rows


def _launch_row(
    launch: LaunchRecord, outcome: str, instance_id: str | None, note: str
) -> LaunchRow:
    return LaunchRow(
        launch_id=launch.id,
        label=launch.label,
        offer_id=launch.offer_id,
        outcome=outcome,
        instance_id=instance_id,
        note=note,
    )


def _launch_running(launch: LaunchRecord, now: float) -> bool:
    """True while the launch's own process may still be creating: it lives (this one, too)
    and the launch is younger than any create with its bounded retries takes."""
    if launch.pid is None or now - launch.created >= LAUNCH_RUNNING_SECONDS:
        return False
    if launch.pid == os.getpid():
        return True
    try:
        os.kill(launch.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _is_idle(instance: Instance, ledger: Ledger) -> bool:
    util = instance.raw.get("gpu_util") if instance.raw else None
    if isinstance(util, (int, float)) and util < IDLE_GPU_PERCENT:
        return True
    # Results already pulled and verified: the GPU is paid for nothing now.
    return ledger.latest_verification(instance.id) is not None


def format_report(report: SweepReport) -> str:
    """A table for humans."""
    launches = [
        f"launch #{launch.launch_id} ({launch.label}, offer {launch.offer_id}): "
        + {
            "recorded": "resolved",
            "in-doubt": "LAUNCH IN DOUBT",
            "not-rented": "nothing was rented",
        }[launch.outcome]
        + f": {launch.note}"
        for launch in report.launches
    ]
    swept = [
        f"swept: {', '.join(report.platforms) or 'nothing'}"
        + "".join(f"; NOT swept: {name} ({why})" for name, why in report.skipped.items())
    ]
    if report.platform != ALL_PLATFORMS:
        swept = []
    if not report.rows and not report.ledger_only and not report.lost:
        where = report.platform if report.platform != ALL_PLATFORMS else "/".join(report.platforms)
        return "\n".join([*swept, f"{where}: no instances visible to this API key", *launches])
    many = report.platform == ALL_PLATFORMS
    lines = [
        *swept,
        ("PLATFORM     " if many else "")
        + f"{'INSTANCE':<12} {'STATE':<12} {'$/HOUR':>8}  KEEPS BILLING / FLAGS",
    ]
    for row in report.rows:
        cost = "?" if row.hourly_cost is None else f"{row.hourly_cost:.3f}"
        flags = f"  [{', '.join(row.flags)}]" if row.flags else ""
        lines.append(
            (f"{row.platform:<12} " if many else "")
            + f"{row.instance_id:<12} {row.state:<12} {cost:>8}  "
            f"{', '.join(row.keeps_billing) or '-'}{flags}"
        )
    total = f"total ≈ ${report.hourly_total:.3f}/hour"
    if report.hourly_unknown:
        # Never a silent undercount: an unknown rate is not $0/h.
        total += (
            f" over the {report.hourly_covers} instance(s) with a known rate, "
            f"{unknown_rate_note(report.hourly_unknown)}"
        )
    lines.append(total)
    lines += [
        f"{row.instance_id}: superseded by a later attempt of its run (rgt run): pull its "
        f"results, or `rgt discard {row.instance_id} --reason superseded` once the run's "
        "results are verified or a later attempt resumed past a durable checkpoint as new as "
        "its own (`--check` says which)"
        for row in report.rows
        if "superseded" in row.flags
    ]
    if report.ledger_only:
        lines.append(
            "in the ledger but not visible to this key (another account, or destroyed outside "
            f"rgt): {', '.join(report.ledger_only)}"
        )
        lines += [
            f"  {instance_id}: {report.endings[instance_id]}"
            for instance_id in report.ledger_only
            if instance_id in report.endings
        ]
    lines += [f"{instance_id}: {report.endings[instance_id]}" for instance_id in report.lost]
    lines.extend(launches)
    return "\n".join(lines)
