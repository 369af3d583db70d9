"""The typed results of the MCP tools that return plain data from the library: one model per
tool, so a client can validate and show them (each tool's published outputSchema). The fields
are the keys the CLI's `--json` prints for the same command (rgt.lifecycle, rgt.sweep); the
models only name and type them. Tools that return a library dataclass (poll, launch) or a model
defined beside them (verify, destroy, discard) need nothing here."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ProfileEntry(BaseModel):
    """One bundled profile, small: get_profile has its facts and danger clocks."""

    name: str
    title: str
    kind: str
    variants: list[str] = Field(default_factory=list)


class ProfileList(BaseModel):
    """list_profiles: every bundled platform profile."""

    profiles: list[ProfileEntry]
    next: str


class ProfileSummary(BaseModel):
    """get_profile: one profile's machine facts, danger clocks first (rgt.lifecycle)."""

    danger_clocks: list[str]
    name: str
    title: str
    kind: str
    meter_stop_verb: str | None
    meter_stop_irreversible: bool | None
    stop_verb: str | None
    stop_still_bills: list[str]
    egress: Any = None
    spot_available: bool | None = None
    spot_grace_seconds: float | None = None
    detach_primitive: str | None = None
    onstart_limit_bytes: int | None = None
    data_dir: str | None = None
    variants: list[str] = Field(default_factory=list)
    verified: str | None = None
    sources: list[str] = Field(default_factory=list)
    gotchas: dict[str, str] = Field(default_factory=dict)


class OfferRow(BaseModel):
    """One rentable offer (rgt.lifecycle.offer_summary)."""

    offer_id: str
    gpu_name: str
    num_gpus: int
    price_per_hour: float
    dph_total: float
    min_bid: float
    storage_cost_per_gb_month: float | None = None
    inet_up_cost_per_gb: float | None = None
    inet_down_cost_per_gb: float | None = None
    reliability: float
    verified: bool
    direct_port_count: int
    machine_id: str | None = None
    gpu_ram_gb: float | None = None
    cuda_max_good: float | None = None
    region: str | None = None
    ram_gb: float | None = None
    disk_mb_per_s: float | None = None
    inet_down_mbps: float | None = None
    inet_up_mbps: float | None = None
    dlperf: float | None = None
    dlperf_per_dollar: float | None = None
    estimate: dict[str, float] | None = None


class OfferList(BaseModel):
    """search_offers: offers in the order asked, the filters applied, and how the estimate
    (when asked) is made."""

    offers: list[OfferRow]
    filters: dict[str, Any]
    estimate_basis: str | None = None
    next: str


class CopyResult(BaseModel):
    """copy: what the pull copied and recorded."""

    instance_id: str
    local_dir: str
    manifest_sha256: str
    run_id: str | None
    files: int
    bytes_total: int
    bytes_transferred: int
    next: str


class LogLines(BaseModel):
    """logs: the container's last log lines (secrets redacted)."""

    instance_id: str
    lines: list[str]
    # The reference a known pattern in the lines points at (rgt.diagnose), e.g. TRAIN-OOM1.
    reference: str | None = None


class StopResult(BaseModel):
    """stop: stopped, and what keeps billing on this platform."""

    instance_id: str
    stopped: bool
    keeps_billing: list[str]
    meter_stop_verb: str | None
    message: str


class StartResult(BaseModel):
    """start: its state now; it bills compute again."""

    instance_id: str
    started: bool
    state: str
    bills_compute_again: bool
    message: str


class CostRow(BaseModel):
    """One instance's spend so far and burn rate (estimates)."""

    instance_id: str
    state: str
    hourly_cost: float | None
    cost_so_far: float | None
    cost_basis: str
    keeps_billing: list[str]


class CostReport(BaseModel):
    """cost: spend so far and hourly burn of rgt's rentals (rgt.lifecycle.cost_report)."""

    platform: str
    instances: list[CostRow]
    total_so_far: float
    total_covers: int
    unknown: list[str]
    total_note: str
    hourly_total: float
    hourly_covers: int
    hourly_unknown: list[str]
    hourly_note: str
    basis: str


class SweepInstance(BaseModel):
    """One instance as the sweep sees it (rgt.sweep.SweepRow)."""

    instance_id: str
    state: str
    label: str | None
    gpu_name: str | None
    hourly_cost: float | None
    hourly_cost_basis: str
    keeps_billing: list[str]
    flags: list[str] = Field(default_factory=list)
    platform: str = ""


class SweepLaunch(BaseModel):
    """A launch that was pending in the ledger and what the sweep made of it."""

    launch_id: int
    label: str
    offer_id: str | None
    outcome: str
    instance_id: str | None
    note: str


class SweepResult(BaseModel):
    """sweep: every instance the key can see, what bills, and what the ledger alone knows; of
    every platform (`platform` "all") unless one was named: `platforms` swept, `skipped` not
    (and why)."""

    platform: str
    hourly_total: float
    hourly_covers: int
    hourly_unknown: list[str]
    hourly_note: str
    instances: list[SweepInstance]
    ledger_only: list[str]
    ledger_only_endings: dict[str, str]
    lost: list[str]
    launches: list[SweepLaunch]
    platforms: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)


class RunStarted(BaseModel):
    """run: a supervisor started in the background for one run (rgt.supervisor)."""

    run_id: str
    pid: int
    log: str
    job_file: str
    next: str


class SyncedCheckpoint(BaseModel):
    """A checkpoint made durable this round and verified against the box's SHA-256 (its full
    row, location included, is in the run's durable index)."""

    name: str
    step: int | None
    sha256: str
    size: int


class DurableNewest(SyncedCheckpoint):
    """The run's newest durable checkpoint: what a relaunch resumes from."""

    location: str
    instance_id: str
    verified_at: str


class SyncRefusal(BaseModel):
    """A checkpoint NOT made durable: what the box said and why rgt refused it."""

    name: str
    sha256: str
    reason: str


# How many of a round's verified checkpoints a sync result lists (the newest): a first round over
# a long run may verify hundreds, and the durable index keeps every one.
SYNC_LISTED = 5


class SyncResult(BaseModel):
    """sync: one round of durable checkpoints (rgt.durable.SyncReport, the keys `rgt sync
    --json` prints; `verified` slimmed to the newest SYNC_LISTED, each to name, step, sha256
    and size; `verified_count` says how many the round verified)."""

    run_id: str
    instance_id: str
    target: str
    location: str
    verified: list[SyncedCheckpoint]
    verified_count: int
    refused: list[SyncRefusal]
    missed: list[str]
    pending: list[str]
    already: int
    bytes_transferred: int
    newest: DurableNewest | None
    via: str = ""
    next: str
