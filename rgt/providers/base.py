"""The small interface every platform provider implements, and the records it returns.

Providers translate one platform's API into these records; everything above them (gate, pull,
MCP tools, demo) speaks only this interface. Platform facts (which verb stops the meter, what a
stopped instance still bills) come from the profile, not from the provider.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from rgt.errors import ProviderError

# Every instance rgt rents carries the label `rgt:<run_id>`: how rgt finds its rentals again on
# any platform (after a lost answer, a crash, a relaunch) and which run each one is for.
LABEL_PREFIX = "rgt:"


def run_label(run_id: str, attempt: int = 1) -> str:
    """The label that marks an instance as rgt's and names its run: `rgt:<run_id>`; a later
    attempt of the run (`rgt run` relaunching elsewhere) is `rgt:<run_id>/<attempt>`, so that
    adopting a box by its label never takes an earlier attempt's box for this one."""
    return LABEL_PREFIX + run_id + (f"{ATTEMPT_SEPARATOR}{attempt}" if attempt > 1 else "")


# A run id never holds "/" (schemas/job.schema.json), so the attempt suffix cannot be misread.
ATTEMPT_SEPARATOR = "/"


def run_from_label(*labels: str | None) -> str | None:
    """The run named by the first rgt label among `labels` (the live one first, then what the
    ledger recorded), or None for an instance rgt did not label. Every attempt of a run names
    the same run."""
    for label in labels:
        if label and label.startswith(LABEL_PREFIX) and len(label) > len(LABEL_PREFIX):
            run, _, attempt = label[len(LABEL_PREFIX) :].partition(ATTEMPT_SEPARATOR)
            if run and (not attempt or attempt.isdigit()):
                return run
    return None


def attempt_from_label(label: str | None) -> int | None:
    """Which attempt of its run an rgt label names (1 for a plain `rgt:<run_id>`), else None."""
    if run_from_label(label) is None:
        return None
    assert label is not None
    _, _, attempt = label.partition(ATTEMPT_SEPARATOR)
    return int(attempt) if attempt else 1


# A provider-neutral reading of an instance's state. "gone" means destroyed / not found.
InstanceState = Literal[
    "provisioning",  # accepted, no container yet
    "loading",  # pulling the image / starting the container
    "running",
    "scheduling",  # asked to start, waiting for its GPU (vast.ai VAST3)
    "paused",  # interruptible instance outbid / preempted
    "stopped",  # stopped by request; on vast.ai its disk still bills
    "offline",  # the host stopped answering (vast.ai VAST7)
    "exited",  # container exited on its own
    "gone",  # destroyed; disk deleted
    "unknown",
]


class CreateRefused(ProviderError):
    """The platform refused a create outright (a 4xx other than 429, or an answer that says it
    was not done): nothing was rented. Any other failure of a create leaves its outcome
    unknown, and the caller must look for the label before saying what happened."""


@dataclass(frozen=True)
class OfferQuery:
    """What to rent. Safe defaults: verified, direct-port, reliable hosts only."""

    gpu_name: str | None = None
    num_gpus: int = 1
    max_price_per_hour: float | None = None
    interruptible: bool = False
    min_reliability: float = 0.98
    verified_only: bool = True
    min_direct_ports: int = 1
    disk_gb: float | None = None
    limit: int = 20
    # What a user picks a machine by, beyond the GPU model (None: no limit).
    min_gpu_ram_gb: float | None = None  # per GPU
    min_cuda: float | None = None  # the highest CUDA the host's driver supports (cuda_max_good)
    regions: tuple[str, ...] = ()  # country codes, e.g. ("US", "CA"); empty: anywhere
    min_ram_gb: float | None = None  # the rental's CPU RAM
    min_disk_mb_per_s: float | None = None  # disk bandwidth
    min_inet_down_mbps: float | None = None
    min_inet_up_mbps: float | None = None
    # "price": cheapest first; "dlperf_per_dollar": most DLPerf per $/h first.
    order: str = "price"


@dataclass(frozen=True)
class Offer:
    """One rentable machine slot on a marketplace."""

    id: str
    gpu_name: str
    num_gpus: int
    dph_total: float  # on-demand $/hour (vast.ai: with the searched disk's storage included)
    min_bid: float  # lowest interruptible bid $/hour
    storage_cost_per_gb_month: float
    inet_up_cost_per_gb: float
    inet_down_cost_per_gb: float
    reliability: float
    verified: bool
    direct_port_count: int
    machine_id: str
    host_id: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # What a user compares offers by (None: the platform did not say).
    gpu_ram_gb: float | None = None  # per GPU
    cuda_max_good: float | None = None
    region: str | None = None  # the platform's location text, e.g. "Texas, US"
    ram_gb: float | None = None
    disk_mb_per_s: float | None = None
    inet_down_mbps: float | None = None
    inet_up_mbps: float | None = None
    dlperf: float | None = None


@dataclass(frozen=True)
class Instance:
    """A rented instance as the provider reports it right now."""

    id: str
    state: InstanceState
    label: str | None = None
    status_msg: str | None = None
    actual_status: str | None = None
    intended_status: str | None = None
    cur_state: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    dph_total: float | None = None  # $/hour while running
    disk_gb: float | None = None
    interruptible: bool | None = None
    gpu_name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class CopyProgress:
    """A progress tick from a copy (bytes done of total, when the total is known)."""

    bytes_done: int
    bytes_total: int | None
    current_file: str | None = None


@dataclass(frozen=True)
class CopyResult:
    """What a copy moved."""

    bytes_transferred: int
    files: int
    attempts: int
    transport: str  # e.g. "rsync+ssh" or "rsync-local (no sshd here)"


ProgressCallback = Callable[[CopyProgress], None]


class Provider(Protocol):
    """One platform's API. Every method retries transient failures (429/5xx) with a bound."""

    platform: str  # the profile name, e.g. "vastai"

    def search_offers(self, query: OfferQuery) -> list[Offer]:
        """Offers matching `query`, cheapest first."""
        ...

    def create(
        self,
        offer_id: str,
        *,
        image: str,
        disk_gb: float,
        onstart: str,
        label: str,
        env: dict[str, str] | None = None,
        interruptible: bool = False,
        bid_per_hour: float | None = None,
        secret_env: Sequence[str] = (),
    ) -> Instance:
        """Rent `offer_id`. Idempotent by `label`: a retried create never rents a second one.

        `secret_env` holds NAMES of local environment variables; the provider reads their
        values at create time, so secret values never travel through arguments or scripts."""
        ...

    def show(self, instance_id: str) -> Instance:
        """The instance now; `state == "gone"` once destroyed, and only when confirmed: poll
        and the gate record what this says, so one transient "not found" must not say gone."""
        ...

    def list_instances(self) -> list[Instance]:
        """Every instance the API key can see (not only rgt's)."""
        ...

    def stop(self, instance_id: str) -> None:
        """Stop the container (on vast.ai the disk keeps billing)."""
        ...

    def start(self, instance_id: str) -> None:
        """Start a stopped instance (it may wait in scheduling for its GPU)."""
        ...

    def destroy(self, instance_id: str) -> None:
        """Irreversible. Only `rgt.gate` may call this."""
        ...

    def logs(self, instance_id: str, *, tail: int = 200) -> str:
        """The container's recent log lines."""
        ...

    def read_remote_file(self, instance_id: str, remote_path: str) -> bytes:
        """Read one small file off the box (the gate re-reads the manifest with it)."""
        ...

    def run_remote_command(
        self, instance_id: str, argv: Sequence[str], *, max_bytes: int, timeout: float = 120.0
    ) -> bytes:
        """Run `argv` on the box (no shell) and return its standard output, at most
        `max_bytes` (more is a ProviderError): the gate lists and hashes results with it."""
        ...

    def copy_from(
        self,
        instance_id: str,
        remote_path: str,
        local_dir: Path,
        *,
        progress: ProgressCallback | None = None,
        files: Sequence[str] | None = None,
        low_priority: bool = False,
    ) -> CopyResult:
        """Copy `remote_path` into `local_dir`, resumably (rsync --partial), bounded retries.

        With `files` (plain names in the directory `remote_path`): only those, straight into
        `local_dir`, in one transfer. With `low_priority`, the box's side of the copy runs at
        the lowest CPU priority (a copy made while the job runs)."""
        ...
