"""Sweep: every instance the API key can see, what it costs per hour, and what keeps billing.

The provider's own list is the truth (not the ledger's): an instance rented by hand, by another
tool, or by a crashed rgt is still on the bill. Each row is flagged when it deserves a look:

- ``stopped-but-billing``: not running, but the profile says a stopped instance still bills
  (on vast.ai: its disk);
- ``idle``: running while its results are already pulled and verified, or with a GPU
  utilisation the provider reports under 5 %;
- ``unknown-to-ledger``: rgt has no record of renting it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rgt.ledger import Ledger
from rgt.lifecycle import unknown_rate_note
from rgt.providers.base import Instance, Provider

NOT_RUNNING_STATES = frozenset({"stopped", "paused", "exited", "offline", "scheduling"})
IDLE_GPU_PERCENT = 5.0
HOURS_PER_MONTH = 730.0  # 365.25 * 24 / 12: converts $/GB/month storage prices to $/hour


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


@dataclass(frozen=True)
class SweepReport:
    """Every visible instance, plus ledger instances the provider no longer shows."""

    platform: str
    rows: list[SweepRow]
    ledger_only: list[str]
    # How each ledger-only instance ended, in poll's words (rgt.ending): lost, gone, ...
    endings: dict[str, str] = field(default_factory=dict)

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
        }


def storage_hourly(instance: Instance) -> float | None:
    """Estimated $/hour its disk bills while stopped: disk GB x the host's storage price
    ($/GB/month) / hours per month; None when the provider did not report both."""
    per_gb_month = instance.raw.get("storage_cost") if instance.raw else None
    if instance.disk_gb is None or not isinstance(per_gb_month, (int, float)):
        return None
    return float(instance.disk_gb) * float(per_gb_month) / HOURS_PER_MONTH


def sweep(*, provider: Provider, ledger: Ledger, profile: Any | None) -> SweepReport:
    """List every instance the provider's key can see, with cost and flags."""
    still_bills = list(getattr(profile, "stop_still_bills", None) or [])
    known = {record.instance_id for record in ledger.instances(provider.platform)}
    known |= {record.instance_id for record in ledger.instances()}
    rows: list[SweepRow] = []
    visible: set[str] = set()
    for instance in provider.list_instances():
        if instance.state == "gone":
            continue
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
        rows.append(
            SweepRow(
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
    destroyed = {d.instance_id for d in ledger.destroys() if d.status == "confirmed"}
    ledger_only = sorted(
        record.instance_id
        for record in ledger.instances(provider.platform)
        if record.instance_id not in visible
        and record.instance_id not in destroyed
        and record.last_state != "gone"
    )
    from rgt.ending import gone_ending

    endings = {
        instance_id: gone_ending(ledger, provider.platform, instance_id).message
        for instance_id in ledger_only
    }
    return SweepReport(
        platform=provider.platform, rows=rows, ledger_only=ledger_only, endings=endings
    )


def _is_idle(instance: Instance, ledger: Ledger) -> bool:
    util = instance.raw.get("gpu_util") if instance.raw else None
    if isinstance(util, (int, float)) and util < IDLE_GPU_PERCENT:
        return True
    # Results already pulled and verified: the GPU is paid for nothing now.
    return ledger.latest_verification(instance.id) is not None


def format_report(report: SweepReport) -> str:
    """A table for humans."""
    if not report.rows and not report.ledger_only:
        return f"{report.platform}: no instances visible to this API key"
    lines = [f"{'INSTANCE':<12} {'STATE':<12} {'$/HOUR':>8}  KEEPS BILLING / FLAGS"]
    for row in report.rows:
        cost = "?" if row.hourly_cost is None else f"{row.hourly_cost:.3f}"
        flags = f"  [{', '.join(row.flags)}]" if row.flags else ""
        lines.append(
            f"{row.instance_id:<12} {row.state:<12} {cost:>8}  "
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
    return "\n".join(lines)
