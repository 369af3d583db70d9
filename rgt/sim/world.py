"""The emulated vast.ai account: instances, their state machine, the billing meter, persistence.

One `World` holds everything behind one lock; the HTTP layer (rgt.sim.http) and the test API
(rgt.sim.emulator) call its methods. Time comes from a `SimClock`; everything that is due by
"now" (an image finished pulling, the balance ran out, a grace period ended) happens in time
order in `settle()`, and the meter accrues exactly between those moments, so a frozen clock
plus `advance()` gives exact bills.

Reported states follow vast.ai (actual_status / intended_status / cur_state / status_msg):

    phase       actual    intended  cur_state  GPU
    loading     loading   running   running    held      image pull / container start
    running     running   running   running    held      onstart running, ssh up, compute billed
    stopped     stopped   stopped   stopped    released  disk still billed (VAST1)
    scheduling  stopped   running   stopped    waiting   its own GPU is rented by another (VAST3)
    paused      stopped   running   stopped    waiting   interruptible outbid (VAST4)
    exited      exited    running   running    held      args-mode command ended (code in the log)
    offline     offline   (as was)  (as was)   held      host stopped answering (VAST7)
    destroyed   -- the row is gone ({"instances": null}), disk deleted

Outbidding happens two ways: a new rental on the machine (on-demand, or a higher bid) that
needs the GPUs of lower bids takes them, and the outbid instances resume when their GPU is free
again; or a test calls `preempt()`, and the instance waits until `win_bid()`.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from rgt.atomic import atomic_write_text
from rgt.children import die_with_parent
from rgt.errors import RgtError
from rgt.pricing import HOURS_PER_MONTH
from rgt.sim import filters
from rgt.sim.boxes import Box, box_environment, kill_orphan
from rgt.sim.clock import SimClock
from rgt.sim.market import (
    Ask,
    Machine,
    generate,
    network_fields,
    offer_row,
    volume_ask_id,
)
from rgt.sim.ports import Forwarder, PortError, bind_range, requested_ports

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_VERSION = 1
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600.0
BYTES_PER_GB = 1_000_000_000  # bandwidth is priced per GB (10^9 bytes)
PAGE_LIMIT_MAX = 1000
# A create without `disk` gets 8 GB on vast.ai (issue 14; the CLI and SDK always send one:
# 10 by default, research notes §2.2).
DEFAULT_DISK_GB = 8.0
# runtype values: "args" runs the args as the container's command; every other value (ssh,
# ssh_proxy, "ssh_direc ssh_proxy", jupyter...) runs onstart beside an sshd.
ARGS_RUNTYPE = "args"
# What a cloud copy puts in the instance's status bar (status_msg): `vastai cloud copy` tells the
# user to look for the "finished" text there.
CLOUD_COPY_STARTED = "Cloud Copy Operation Started"
CLOUD_COPY_FINISHED = "Cloud Copy Operation Finished"
CLOUD_COPY_FAILED = "Cloud Copy Operation Failed"
# A public key line vast.ai would put in a container's authorized_keys.
_SSH_KEY = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")


class ApiError(Exception):
    """A refusal the API answers with `status` and `{"success": false, "error", "msg"}`."""

    def __init__(self, status: int, error: str, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.error = error
        self.msg = msg


class SshServerLike(Protocol):
    """What the emulator needs of rgt.sim.ssh.SshServer."""

    def start(self) -> int: ...

    def stop(self) -> None: ...


SshFactory = Callable[[Path], SshServerLike]


@dataclass
class Platform:
    """The platform facts the emulator needs, read from the vast.ai profile (their one source:
    no fallback values here)."""

    id_env: str
    onstart_path: str
    data_dir: str
    onstart_limit_bytes: int | None

    @classmethod
    def from_profile(cls) -> Platform:
        """Facts from `profiles/vastai.md` (instance id variable, boot hook path, data dir,
        limits); a profile without one of them is a clear error, not a silent default."""
        from rgt.errors import UsageError
        from rgt.profile import load_profile

        profile = load_profile("vastai")
        overrides = profile.overrides
        facts = {
            "instance_id_env": profile.instance_id_env,
            "overrides.detach": overrides.get("detach"),
            "overrides.data_dir": overrides.get("data_dir"),
        }
        missing = [name for name, value in facts.items() if not value]
        if missing:
            raise UsageError(
                f"{profile.path}: the vast.ai emulator needs {', '.join(missing)} in the "
                "frontmatter"
            )
        return cls(
            id_env=str(facts["instance_id_env"]),
            onstart_path=str(facts["overrides.detach"]),
            data_dir=str(facts["overrides.data_dir"]),
            onstart_limit_bytes=profile.onstart_limit_bytes,
        )


@dataclass
class Settings:
    """Knobs of the emulated platform (simulated seconds unless said otherwise)."""

    seed: int = 0
    boot_seconds: float = 0.5  # image pull + container start (real vast.ai: minutes)
    restart_seconds: float = 0.3  # start of a stopped / paused / rebooted container
    balance: float = 100.0  # starting credit, dollars
    zero_balance_grace_seconds: float = 3600.0  # stopped at $0, deleted this much later
    machines: int = 60


@dataclass
class SimInstance:
    """One rented instance (persisted as JSON)."""

    id: int
    ask_id: int
    machine_id: int
    num_gpus: int
    gpu_indices: list[int]
    image: str
    disk_gb: float
    onstart: str
    env: dict[str, str]
    label: str | None
    runtype: str
    is_bid: bool
    bid_price: float | None
    dph_base: float
    storage_cost: float
    inet_up_cost: float
    inet_down_cost: float
    created_at: float
    phase: str = "loading"
    intended: str = "running"
    status_msg: str = ""
    ready_at: float | None = None
    delete_at: float | None = None
    waiting_since: float | None = None
    before_offline: str | None = None
    started_at: float | None = None
    starts: int = 0
    pid: int | None = None  # the onstart process group, so a crashed emulator's can be found
    compute: float = 0.0
    storage: float = 0.0
    bandwidth: float = 0.0
    bytes_out: int = 0
    bytes_in: int = 0
    args: list[str] = field(default_factory=list)  # runtype "args": the container's command
    api_key: str = ""  # its CONTAINER_API_KEY: accepted for this instance only
    port_requests: list[list[Any]] = field(default_factory=list)  # [container port, "tcp"]
    exit_code: int | None = None  # how an args-mode command last ended

    @property
    def compute_per_hour(self) -> float:
        """What a running hour of compute costs (the bid for an interruptible rental)."""
        return float(self.bid_price) if self.is_bid and self.bid_price else self.dph_base

    @property
    def storage_per_second(self) -> float:
        """Disk billing, in every state until destroy."""
        return self.disk_gb * self.storage_cost / SECONDS_PER_MONTH

    def meter(self) -> dict[str, float]:
        """Dollars so far, by kind, plus bytes moved."""
        return {
            "compute": self.compute,
            "storage": self.storage,
            "bandwidth": self.bandwidth,
            "total": self.compute + self.storage + self.bandwidth,
            "bytes_out": float(self.bytes_out),
            "bytes_in": float(self.bytes_in),
        }


_INSTANCE_FIELDS = {f.name for f in fields(SimInstance)}


@dataclass
class SimVolume:
    """A local volume: disk space on one machine, billed per GB-month while it exists (VAST12).
    It is bound to its machine: only instances there could mount it."""

    id: int
    ask_id: int
    machine_id: int
    size_gb: float
    name: str | None
    storage_cost: float  # $/GB-month
    created_at: float
    cost: float = 0.0

    @property
    def per_second(self) -> float:
        """Dollars per second while it exists."""
        return self.size_gb * self.storage_cost / SECONDS_PER_MONTH

    def row(self) -> dict[str, Any]:
        """The row `GET /volumes/` answers (the SDK computes `duration` from `start_date`)."""
        return {
            "id": self.id,
            "ask_id": self.ask_id,
            "machine_id": self.machine_id,
            "name": self.name,
            "disk_space": self.size_gb,
            "size": self.size_gb,
            "storage_cost": self.storage_cost,
            "start_date": self.created_at,
            "status": "ready",
            "type": "local_volume",
            "total_cost": round(self.cost, 6),
            "instances": [],
        }


class World:
    """The emulated account and marketplace. Every public method takes the lock."""

    def __init__(
        self,
        root: Path,
        clock: SimClock,
        settings: Settings,
        platform: Platform,
        *,
        ssh_factory: SshFactory | None = None,
        persist: bool = True,
    ) -> None:
        self.root = Path(root)
        self.clock = clock
        self.settings = settings
        self.platform = platform
        self.ssh_factory = ssh_factory
        self.persist = persist
        self.lock = threading.RLock()
        self.machines: dict[int, Machine]
        self.asks: dict[int, Ask]
        self.machines, self.asks = generate(settings.seed, settings.machines)
        self.instances: dict[int, SimInstance] = {}
        self.finished: dict[int, dict[str, float]] = {}
        self.next_id = 4_000_000 + random.Random(settings.seed).randrange(100_000) * 10
        self.balance = float(settings.balance)
        self.exhausted = False
        self.accrued_at = clock.now()
        self.boxes: dict[int, Box] = {}
        self.ssh: dict[int, SshServerLike] = {}
        self.ssh_ports: dict[int, int] = {}
        self.traffic_seen: dict[int, tuple[int, int]] = {}
        self.forwarders: dict[int, list[Forwarder]] = {}
        self.public_ports: dict[int, dict[str, int]] = {}  # "8080/tcp" -> public port
        self.volumes: dict[int, SimVolume] = {}
        self.volume_spent = 0.0  # what deleted volumes cost
        # Cloud connections (`vastai show connections`): id -> (name, cloud type, rclone backend
        # options). Kept in memory only: like vast.ai's, they hold credentials, which the
        # emulator never writes to its state file.
        self.cloud_connections: dict[int, tuple[str, str, dict[str, str]]] = {}
        self._dirty = False
        self._load()

    # -- paths --------------------------------------------------------------------------------
    def instance_dir(self, instance_id: int) -> Path:
        """Everything of one instance: its disk and its container log."""
        return self.root / "instances" / str(instance_id)

    def disk(self, instance_id: int) -> Path:
        """The container disk: box path /x is <disk>/x."""
        return self.instance_dir(instance_id) / "disk"

    def log_path(self, instance_id: int) -> Path:
        """The container's stdout+stderr (what `vastai logs` shows)."""
        return self.instance_dir(instance_id) / "container.log"

    # -- time and money ---------------------------------------------------------------------
    def settle(self) -> None:
        """Bring the world up to the clock: fire due events in order, accrue the meter."""
        with self.lock:
            self._settle(self.clock.now())

    def _settle(self, now: float) -> None:
        self._poll_traffic()
        self._reap_exited()
        while True:
            due = self._next_event(now)
            if due is None:
                self._accrue(now)
                return
            moment, action = due
            self._accrue(max(moment, self.accrued_at))
            action()
            self._dirty = True

    def _next_event(self, now: float) -> tuple[float, Callable[[], None]] | None:
        best: tuple[float, Callable[[], None]] | None = None

        def consider(moment: float, action: Callable[[], None]) -> None:
            nonlocal best
            if moment <= now and (best is None or moment < best[0]):
                best = (moment, action)

        for inst in self.instances.values():
            if inst.phase == "loading" and inst.ready_at is not None:
                consider(inst.ready_at, lambda i=inst: self._container_started(i))  # type: ignore[misc]
            if inst.delete_at is not None:
                consider(inst.delete_at, lambda i=inst: self._destroy(i))  # type: ignore[misc]
        rate = self._burn_per_second()
        if not self.exhausted and rate > 0:
            consider(self.accrued_at + max(self.balance, 0.0) / rate, self._balance_exhausted)
        return best

    def _burn_per_second(self) -> float:
        volumes = sum(v.per_second for v in self.volumes.values())
        return volumes + sum(self._rates(i)[0] + self._rates(i)[1] for i in self.instances.values())

    @staticmethod
    def _rates(inst: SimInstance) -> tuple[float, float]:
        compute = inst.compute_per_hour / 3600.0 if inst.phase == "running" else 0.0
        return compute, inst.storage_per_second

    def _accrue(self, moment: float) -> None:
        elapsed = moment - self.accrued_at
        if elapsed <= 0:
            return
        for inst in self.instances.values():
            compute, storage = self._rates(inst)
            inst.compute += compute * elapsed
            inst.storage += storage * elapsed
            self.balance -= (compute + storage) * elapsed
        for volume in self.volumes.values():
            volume.cost += volume.per_second * elapsed
            self.balance -= volume.per_second * elapsed
        self.accrued_at = moment

    def _balance_exhausted(self) -> None:
        """$0: stop every instance, schedule its deletion after the grace period."""
        self.balance = min(self.balance, 0.0)
        self.exhausted = True
        when = self.accrued_at + self.settings.zero_balance_grace_seconds
        for inst in self.instances.values():
            if inst.phase in ("loading", "running", "scheduling", "paused", "exited"):
                self._halt(inst)
                inst.phase = "stopped"
            inst.intended = "stopped"
            inst.status_msg = (
                "Stopped: account balance reached $0.00; the instance and its data will be "
                "deleted unless credit is added"
            )
            inst.delete_at = when
        log.info("balance exhausted; %d instance(s) stopped", len(self.instances))

    def charge_bandwidth(self, instance_id: int, bytes_out: int, bytes_in: int) -> None:
        """Bill bytes sent from the box (`out`) and to it (`in`) at its host's per-GB prices."""
        with self.lock:
            self._settle(self.clock.now())
            inst = self._get(instance_id)
            self._charge_bandwidth(inst, bytes_out, bytes_in)

    def _charge_bandwidth(self, inst: SimInstance, bytes_out: int, bytes_in: int) -> None:
        cost = (bytes_out * inst.inet_up_cost + bytes_in * inst.inet_down_cost) / BYTES_PER_GB
        inst.bytes_out += bytes_out
        inst.bytes_in += bytes_in
        inst.bandwidth += cost
        self.balance -= cost
        self._dirty = True
        if self.balance <= 0 and not self.exhausted and cost > 0:
            self._balance_exhausted()

    def _poll_traffic(self) -> None:
        for instance_id, server in list(self.ssh.items()):
            reader = getattr(server, "traffic", None)
            inst = self.instances.get(instance_id)
            if reader is None or inst is None:
                continue
            try:
                out_total, in_total = reader()
            except Exception:  # a broken counter must not stop the world
                continue
            seen_out, seen_in = self.traffic_seen.get(instance_id, (0, 0))
            if out_total > seen_out or in_total > seen_in:
                self._charge_bandwidth(
                    inst, max(out_total - seen_out, 0), max(in_total - seen_in, 0)
                )
                self.traffic_seen[instance_id] = (out_total, in_total)

    def set_balance(self, dollars: float) -> None:
        """Set the account balance; credit above $0 cancels pending zero-balance deletions."""
        with self.lock:
            self._settle(self.clock.now())
            self.balance = float(dollars)
            if self.balance > 0 and self.exhausted:
                self.exhausted = False
                for inst in self.instances.values():
                    inst.delete_at = None
                    inst.status_msg = "Stopped: credit added; start the instance to resume"
            self._dirty = True

    def meter(self, instance_id: int) -> dict[str, float]:
        """Dollars billed to one instance so far (also after destroy: its final bill)."""
        with self.lock:
            self._settle(self.clock.now())
            if instance_id in self.instances:
                return self.instances[instance_id].meter()
            if instance_id in self.finished:
                return dict(self.finished[instance_id])
            raise KeyError(f"no instance {instance_id}")

    def account_meter(self) -> dict[str, float]:
        """Dollars billed to the account (every instance, destroyed ones too) and the balance."""
        with self.lock:
            self._settle(self.clock.now())
            meters = [i.meter() for i in self.instances.values()] + list(self.finished.values())
            total = {k: sum(m[k] for m in meters) for k in ("compute", "storage", "bandwidth")}
            total["volumes"] = self.volume_spent + sum(v.cost for v in self.volumes.values())
            total["total"] = sum(total.values())
            total["balance"] = self.balance
            return total

    # -- the state machine ------------------------------------------------------------------
    def _get(self, instance_id: int) -> SimInstance:
        inst = self.instances.get(int(instance_id))
        if inst is None:
            raise ApiError(404, "no_such_instance", f"Instance {instance_id} not found.")
        return inst

    def _holder(self, inst: SimInstance) -> str:
        return f"i{inst.id}"

    def _claim(self, inst: SimInstance) -> bool:
        """Take the instance's own GPUs back if they are free (they are bound to it)."""
        machine = self.machines[inst.machine_id]
        if not machine.online:
            return False
        mine = self._holder(inst)
        if any(machine.holders.get(g, mine) != mine for g in inst.gpu_indices):
            return False
        for gpu in inst.gpu_indices:
            machine.holders[gpu] = mine
        return True

    def _release(self, inst: SimInstance) -> None:
        machine = self.machines[inst.machine_id]
        mine = self._holder(inst)
        for gpu in inst.gpu_indices:
            if machine.holders.get(gpu) == mine:
                del machine.holders[gpu]

    def _begin_loading(self, inst: SimInstance, seconds: float, message: str) -> None:
        inst.phase = "loading"
        inst.intended = "running"
        inst.waiting_since = None
        inst.ready_at = self.accrued_at + seconds
        inst.status_msg = message

    def _container_started(self, inst: SimInstance) -> None:
        inst.phase = "running"
        inst.ready_at = None
        inst.started_at = self.accrued_at
        inst.starts += 1
        inst.exit_code = None
        inst.status_msg = f"success, running {inst.image}"
        self._launch(inst)

    def _launch(self, inst: SimInstance) -> None:
        """The real side of a container start: onstart process and sshd."""
        disk = self.disk(inst.id)
        try:
            disk.mkdir(parents=True, exist_ok=True)  # someone may have deleted it by hand
            with open(self.log_path(inst.id), "ab") as handle:
                note = f"[sim] container start #{inst.starts} of instance {inst.id}\n"
                handle.write(note.encode())
            inner_ports = self._open_ports(inst)
            environment = box_environment(
                disk,
                inst.id,
                inst.env,
                self.platform.id_env,
                container_key=inst.api_key,
                ports=inner_ports,
            )
            if inst.runtype == ARGS_RUNTYPE:
                command = list(inst.args)  # the image's command; onstart is not run
            else:
                command = ["bash", "-c", inst.onstart] if inst.onstart.strip() else []
            if command:
                box = Box.start(
                    command,
                    disk,
                    environment,
                    self.log_path(inst.id),
                    box_dirs=[self.platform.data_dir.strip("/").split("/")[0]],
                )
                self.boxes[inst.id] = box
                inst.pid = box.pid
        except OSError as exc:
            # The container "runs" without its job, as a broken onstart would leave it.
            log.warning("instance %s: onstart not started (%s)", inst.id, exc)
            inst.status_msg = f"success, running {inst.image}; onstart failed to start: {exc}"
        if self.ssh_factory is not None and inst.runtype != ARGS_RUNTYPE:
            try:
                server = self.ssh_factory(disk)
                self.ssh_ports[inst.id] = server.start()
                self.ssh[inst.id] = server
                self.traffic_seen[inst.id] = (0, 0)
            except Exception as exc:
                log.warning("instance %s: no ssh endpoint (%s)", inst.id, exc)

    def _open_ports(self, inst: SimInstance) -> dict[int, int]:
        """Bind the public ports of the create's `-p` requests (one consecutive range) and relay
        the TCP ones to the box; returns container port -> public port."""
        self._close_ports(inst.id)
        if not inst.port_requests:
            return {}
        sockets = bind_range(len(inst.port_requests))
        mapped: dict[int, int] = {}
        self.public_ports[inst.id] = {}
        forwarders: list[Forwarder] = []
        for (inner, proto), sock in zip(inst.port_requests, sockets, strict=True):
            public = int(sock.getsockname()[1])
            mapped[int(inner)] = public
            self.public_ports[inst.id][f"{inner}/{proto}"] = public
            if proto == "tcp":
                forwarders.append(Forwarder(sock, int(inner)))
            else:
                sock.close()  # reported, not relayed (see rgt.sim.ports)
        self.forwarders[inst.id] = forwarders
        return mapped

    def _close_ports(self, instance_id: int) -> None:
        for forwarder in self.forwarders.pop(instance_id, []):
            forwarder.close()
        self.public_ports.pop(instance_id, None)

    def _reap_exited(self) -> None:
        """An args-mode command that ended leaves its container `exited`, its code in the log."""
        for inst in self.instances.values():
            box = self.boxes.get(inst.id)
            if inst.phase != "running" or inst.runtype != ARGS_RUNTYPE or box is None:
                continue
            code = box.process.poll()
            if code is None:
                continue
            if code < 0:  # killed by a signal: Docker reports 128 + the signal number
                code = 128 - code
            self.boxes.pop(inst.id)
            inst.pid = None
            self._close_ports(inst.id)
            inst.phase = "exited"
            inst.exit_code = code
            inst.status_msg = f"Container exited with code {code}"
            with contextlib.suppress(OSError), open(self.log_path(inst.id), "ab") as handle:
                handle.write(f"[sim] container exited with code {code}\n".encode())
            self._dirty = True

    def _halt(self, inst: SimInstance) -> None:
        """Container gone: SIGKILL the onstart process group, stop its sshd, free its GPUs."""
        box = self.boxes.pop(inst.id, None)
        if box is not None:
            box.kill()
        inst.pid = None
        self._close_ports(inst.id)
        self._stop_ssh(inst.id)
        self._release(inst)
        inst.ready_at = None

    def _stop_ssh(self, instance_id: int) -> None:
        self._poll_traffic()
        server = self.ssh.pop(instance_id, None)
        self.ssh_ports.pop(instance_id, None)
        self.traffic_seen.pop(instance_id, None)
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()

    def _outbid_for(self, machine: Machine, needed: int, price: float | None) -> list[int]:
        """The auction: a new rental at `price` (None = on-demand, which outranks every bid)
        takes GPUs from lower interruptible bids on the machine, cheapest bid first, if that
        frees enough. Returns the machine's free GPUs afterwards."""
        free = machine.free_gpus()
        bids = sorted(
            (
                i
                for i in self.instances.values()
                if i.machine_id == machine.id
                and i.phase in ("loading", "running")
                and i.is_bid
                and (price is None or (i.bid_price or 0.0) < price)
            ),
            key=lambda i: (i.bid_price or 0.0, i.id),
        )
        victims: list[SimInstance] = []
        available = len(free)
        for inst in bids:
            if available >= needed:
                break
            victims.append(inst)
            available += len(inst.gpu_indices)
        if available < needed:
            return free
        for inst in victims:
            self._pause_outbid(inst)
            inst.waiting_since = self.accrued_at  # resumes when its GPU is free again
        return machine.free_gpus()

    def _pause_outbid(self, inst: SimInstance) -> None:
        """Outbid: the container dies at once (SIGKILL, no notice); the disk stays."""
        self._halt(inst)
        inst.phase = "paused"
        inst.status_msg = "Outbid: paused until this bid is the highest again (interruptible)"

    def _schedule_waiting(self) -> None:
        """Instances waiting for their own GPU (a start in scheduling, a bid outbid by a
        rental that has ended) get it as soon as it is free again."""
        waiting = [i for i in self.instances.values() if i.phase in ("scheduling", "paused")]
        for inst in sorted(waiting, key=lambda i: (i.waiting_since or 0.0, i.id)):
            if self._claim(inst):
                self._begin_loading(inst, self.settings.restart_seconds, "Starting container")

    def _destroy(self, inst: SimInstance) -> None:
        self._halt(inst)
        self._release_outbid(inst)
        self.instances.pop(inst.id, None)
        self.finished[inst.id] = inst.meter()
        shutil.rmtree(self.instance_dir(inst.id), ignore_errors=True)
        self._schedule_waiting()

    def _release_outbid(self, inst: SimInstance) -> None:
        machine = self.machines[inst.machine_id]
        marker = f"outbid-{inst.id}"
        for gpu in [g for g, h in machine.holders.items() if h == marker]:
            del machine.holders[gpu]

    # -- API operations -----------------------------------------------------------------------
    def search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """POST /bundles/: offers passing the filter object, ordered, limited."""
        with self.lock:
            self._settle(self.clock.now())
            storage = _number(body.get("allocated_storage"), 5.0, "allocated_storage")
            rows = [
                offer_row(ask, self.machines[ask.machine_id], storage) for ask in self.asks.values()
            ]
        bid = str(body.get("type") or "on-demand") in ("bid", "interruptible")
        for row in rows:
            row["is_bid"] = bid
        try:
            rows = [r for r in rows if filters.matches(r, body)]
            rows = filters.sort_rows(rows, filters.parse_order(body.get("order")))
        except filters.FilterError as exc:
            raise ApiError(400, "invalid_args", str(exc)) from exc
        limit = body.get("limit")
        if limit is not None:
            rows = rows[: int(_number(limit, 64, "limit"))]
        return rows

    def create(self, ask_id: int, body: dict[str, Any]) -> int:
        """PUT /asks/{id}/: rent the offer; returns the new instance id."""
        with self.lock:
            now = self.clock.now()
            self._settle(now)
            ask = self.asks.get(ask_id)
            if ask is None:
                raise ApiError(404, "no_such_ask", f"Offer {ask_id} does not exist.")
            machine = self.machines[ask.machine_id]
            if self.balance <= 0:
                raise ApiError(
                    402, "insufficient_credit", "Your balance is $0.00 or less: add credit."
                )
            image = body.get("image")
            if not image or not isinstance(image, str):
                raise ApiError(400, "invalid_args", "image is required (e.g. pytorch/pytorch).")
            onstart = body.get("onstart") or ""
            if not isinstance(onstart, str):
                raise ApiError(400, "invalid_args", "onstart must be a string.")
            limit = self.platform.onstart_limit_bytes
            if limit is not None and len(onstart.encode()) > limit:
                raise ApiError(
                    400,
                    "invalid_args",
                    f"onstart is {len(onstart.encode())} bytes; the limit is {limit} bytes.",
                )
            disk_gb = _number(body.get("disk"), DEFAULT_DISK_GB, "disk")
            if disk_gb <= 0 or disk_gb > machine.disk_space:
                raise ApiError(
                    400,
                    "invalid_args",
                    f"disk {disk_gb:g} GB: this machine offers 0 < disk <= {machine.disk_space:g}",
                )
            env = body.get("env") or {}
            if not isinstance(env, dict):
                raise ApiError(400, "invalid_args", "env must be an object of NAME: value.")
            try:
                ports = requested_ports({str(k): str(v) for k, v in env.items()})
            except PortError as exc:
                raise ApiError(400, "invalid_args", str(exc)) from exc
            if ports and len(ports) > machine.direct_port_count:
                raise ApiError(
                    400,
                    "invalid_args",
                    f"{len(ports)} port(s) requested; machine {machine.id} offers "
                    f"direct_port_count={machine.direct_port_count}",
                )
            runtype = str(body.get("runtype") or "ssh")
            args = body.get("args")
            if runtype == ARGS_RUNTYPE:
                if (
                    not isinstance(args, list)
                    or not args
                    or not all(isinstance(a, str) for a in args)
                ):
                    raise ApiError(
                        400,
                        "invalid_args",
                        'runtype "args" needs args: a non-empty list of strings (the emulator '
                        "has no image entrypoint of its own to run)",
                    )
            elif args not in (None, []):
                raise ApiError(400, "invalid_args", 'args are only read with runtype "args"')
            target_state = body.get("target_state") or "running"
            if target_state not in ("running", "stopped"):
                raise ApiError(
                    400,
                    "invalid_args",
                    f"target_state {target_state!r}: allowed are running, stopped",
                )
            price = body.get("price")
            row = offer_row(ask, machine, disk_gb)
            if price is not None:
                price = _number(price, 0.0, "price")
                if price < row["min_bid"]:
                    raise ApiError(
                        400,
                        "invalid_args",
                        f"bid ${price:g}/h is below this offer's min_bid ${row['min_bid']:g}/h.",
                    )
            free = machine.free_gpus()
            if machine.online and len(free) < ask.num_gpus:
                free = self._outbid_for(machine, ask.num_gpus, price)
            if not machine.online or len(free) < ask.num_gpus:
                raise ApiError(
                    400, "no_such_ask", f"Offer {ask_id} is no longer available (GPUs rented)."
                )
            inst = SimInstance(
                id=self.next_id,
                ask_id=ask_id,
                machine_id=machine.id,
                num_gpus=ask.num_gpus,
                gpu_indices=free[: ask.num_gpus],
                image=image,
                disk_gb=disk_gb,
                onstart=onstart,
                env={str(k): str(v) for k, v in env.items()},
                label=body.get("label") if isinstance(body.get("label"), str) else None,
                runtype=runtype,
                is_bid=price is not None,
                bid_price=price,
                dph_base=row["dph_base"],
                storage_cost=machine.storage_cost,
                inet_up_cost=machine.inet_up_cost,
                inet_down_cost=machine.inet_down_cost,
                created_at=now,
                args=list(args or []),
                api_key="sim-instance-" + secrets.token_hex(16),
                port_requests=[[port, proto] for port, proto in ports],
            )
            self.next_id += 1
            self._prepare_disk(inst)
            self.instances[inst.id] = inst
            if target_state == "stopped":
                # Created, not started: no GPU held, no compute; the disk bills from now.
                inst.phase = "stopped"
                inst.intended = "stopped"
                inst.ready_at = None
                inst.status_msg = "Created stopped (target_state); start it to run"
            else:
                self._claim(inst)
                self._begin_loading(inst, self.settings.boot_seconds, f"Pulling image {image}")
            self._schedule_waiting()  # an outbid bid whose GPU the newcomer did not need
            self._save()
            return inst.id

    def _prepare_disk(self, inst: SimInstance) -> None:
        disk = self.disk(inst.id)
        (disk / self.platform.data_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (disk / "root").mkdir(parents=True, exist_ok=True)
        hook = disk / self.platform.onstart_path.lstrip("/")
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_text(inst.onstart)
        self.log_path(inst.id).touch()

    def show(self, instance_id: int) -> dict[str, Any] | None:
        """GET /instances/{id}/: the row, or None once destroyed / unknown."""
        with self.lock:
            self._settle(self.clock.now())
            inst = self.instances.get(instance_id)
            return self._row(inst) if inst else None

    def rows(self) -> list[dict[str, Any]]:
        """Every instance row."""
        with self.lock:
            self._settle(self.clock.now())
            return [self._row(i) for i in self.instances.values()]

    def list_page(
        self, select_filters: Any, order_by: Any, limit: Any, after_token: Any
    ) -> dict[str, Any]:
        """GET /api/v1/instances/: one page; `next_token` is opaque to clients."""
        rows = self.rows()
        try:
            if select_filters:
                if not isinstance(select_filters, dict):
                    raise filters.FilterError("select_filters must be an object")
                rows = [r for r in rows if filters.matches(r, select_filters)]
            order = filters.parse_order(order_by) or [("id", False)]
            rows = filters.sort_rows(rows, order)
        except filters.FilterError as exc:
            raise ApiError(400, "invalid_args", str(exc)) from exc
        size = max(1, min(int(_number(limit, 25, "limit")), PAGE_LIMIT_MAX))
        start = 0
        if after_token:
            token = str(after_token)
            if not token.startswith("p") or not token[1:].isdigit():
                raise ApiError(400, "invalid_args", f"after_token {token!r} is not a page token")
            start = int(token[1:])
        page = rows[start : start + size]
        more = start + size < len(rows)
        labels: dict[str, int] = {}
        for row in rows:
            key = row.get("label") or ""
            labels[key] = labels.get(key, 0) + 1
        return {
            "success": True,
            "instances": page,
            "next_token": f"p{start + size}" if more else None,
            "total_instances": len(rows),
            "instances_found": len(page),
            "label_counts": labels,
        }

    def set_state(self, instance_id: int, state: str) -> None:
        """PUT /instances/{id}/ {"state": "running"|"stopped"}."""
        with self.lock:
            self._settle(self.clock.now())
            inst = self._get(instance_id)
            if state == "stopped":
                if inst.phase in ("loading", "running", "scheduling", "paused", "exited"):
                    self._halt(inst)
                    inst.phase = "stopped"
                    inst.status_msg = "Stopped by the user; the disk is kept (and billed)."
                inst.intended = "stopped"
                inst.waiting_since = None
                self._schedule_waiting()
            elif state == "running":
                if self.balance <= 0:
                    raise ApiError(
                        402, "insufficient_credit", "Your balance is $0.00 or less: add credit."
                    )
                inst.delete_at = None
                if inst.phase == "stopped":
                    self._start(inst)
                elif inst.phase == "exited":  # its GPU is still held: the container restarts
                    self._begin_loading(inst, self.settings.restart_seconds, "Starting container")
                inst.intended = "running"
            else:
                raise ApiError(
                    400, "invalid_args", f"state {state!r}: allowed are running, stopped"
                )
            self._save()

    def _start(self, inst: SimInstance) -> None:
        if self._claim(inst):
            self._begin_loading(inst, self.settings.restart_seconds, "Starting container")
            return
        inst.phase = "scheduling"
        inst.intended = "running"
        inst.waiting_since = self.accrued_at
        machine = self.machines[inst.machine_id]
        gpus = ", ".join(str(g) for g in inst.gpu_indices)
        inst.status_msg = (
            f"Scheduling: waiting for GPU {gpus} of machine {machine.id}, "
            "which is rented by another instance"
            if machine.online
            else f"Scheduling: machine {machine.id} is offline"
        )

    def set_label(self, instance_id: int, label: str | None) -> None:
        """PUT /instances/{id}/ {"label": ...}."""
        with self.lock:
            inst = self._get(instance_id)
            inst.label = label
            self._save()

    def reboot(self, instance_id: int) -> None:
        """PUT /instances/reboot/{id}/: restart the container (onstart runs again)."""
        with self.lock:
            self._settle(self.clock.now())
            inst = self._get(instance_id)
            if inst.phase not in ("loading", "running", "exited"):
                raise ApiError(
                    400, "invalid_state", f"Instance {inst.id} is not running; start it instead."
                )
            box = self.boxes.pop(inst.id, None)
            if box is not None:
                box.kill()
            self._stop_ssh(inst.id)
            self._begin_loading(inst, self.settings.restart_seconds, "Rebooting")
            self._save()

    def destroy(self, instance_id: int) -> None:
        """DELETE /instances/{id}/: the instance, its process and its disk are gone."""
        with self.lock:
            self._settle(self.clock.now())
            self._destroy(self._get(instance_id))
            self._save()

    def logs(self, instance_id: int, tail: Any, grep: Any) -> str:
        """The container log's last `tail` lines, optionally only lines containing `grep`."""
        with self.lock:
            self._get(instance_id)
            path = self.log_path(instance_id)
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        if grep:
            lines = [line for line in lines if str(grep) in line]
        if tail not in (None, ""):
            count = int(_number(tail, 200, "tail"))
            lines = lines[-count:] if count > 0 else []
        return "\n".join(lines) + ("\n" if lines else "")

    def user(self) -> dict[str, Any]:
        """GET /users/current/ (the client removes api_key itself; none is sent)."""
        with self.lock:
            self._settle(self.clock.now())
            balance = round(self.balance, 6)
        return {
            "id": 1,
            "username": "rgt-sim",
            "fullname": "rgt emulator",
            "email": "sim@rgt.invalid",
            "email_verified": True,
            "balance": balance,
            "credit": balance,
            "can_pay": balance > 0,
            "has_billing": False,
            "billing_creditonly": True,
            "balance_threshold": 0.0,
            "balance_threshold_enabled": False,
            "billed_expected": 0.0,
            "billed_verified": 0.0,
            "paid_expected": 0.0,
            "paid_verified": 0.0,
            "got_signup_credit": True,
            "has_payout": False,
            "host_agreement_accepted": False,
            "last4": None,
            "password_resettable": False,
            "paypal_email": None,
            "ssh_key": None,
            "user": "rgt-sim",
            "billaddress_city": None,
            "billaddress_country": None,
            "billaddress_line1": None,
            "billaddress_line2": None,
            "billaddress_zip": None,
        }

    def gpu_names(self) -> list[str]:
        """Every GPU model in the marketplace."""
        return sorted({m.gpu_name for m in self.machines.values()})

    # -- keys ---------------------------------------------------------------------------------
    def instance_key(self, instance_id: int) -> str:
        """The instance's CONTAINER_API_KEY (create answers it as `instance_api_key`)."""
        with self.lock:
            return self._get(instance_id).api_key

    def instance_for_key(self, key: str) -> int | None:
        """The instance whose CONTAINER_API_KEY `key` is, if any."""
        with self.lock:
            for inst in self.instances.values():
                if inst.api_key and hmac.compare_digest(inst.api_key.encode(), key.encode()):
                    return inst.id
        return None

    def attach_ssh(self, instance_id: int, public_key: Any) -> None:
        """POST /instances/{id}/ssh/: the key joins the box's /root/.ssh/authorized_keys (as
        vast.ai installs attached keys), which the box's sshd reads at every login."""
        if not isinstance(public_key, str) or not _SSH_KEY.match(public_key.strip()):
            raise ApiError(
                400,
                "invalid_args",
                "ssh_key must be one OpenSSH public key line (e.g. 'ssh-ed25519 AAAA... me')",
            )
        line = public_key.strip()
        with self.lock:
            self._get(instance_id)
            path = self.disk(instance_id) / "root" / ".ssh" / "authorized_keys"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                present = path.read_text().splitlines()
            except OSError:
                present = []
            if line not in present:
                atomic_write_text(path, "".join(k + "\n" for k in [*present, line]), mode=0o600)

    # -- volumes, invoices, cloud copy ---------------------------------------------------------
    def volume_rows(self) -> list[dict[str, Any]]:
        """GET /volumes/: the account's volumes."""
        with self.lock:
            self._settle(self.clock.now())
            return [v.row() for v in self.volumes.values()]

    def create_volume(self, body: dict[str, Any]) -> int:
        """PUT /volumes/ {"id": volume offer (avail_vol_ask_id), "size": GB, "name"?}."""
        with self.lock:
            now = self.clock.now()
            self._settle(now)
            ask_id = int(_number(body.get("id"), -1, "id"))
            machine = next((m for m in self.machines.values() if volume_ask_id(m) == ask_id), None)
            if machine is None:
                raise ApiError(
                    404, "no_such_ask", f"Volume offer {ask_id} does not exist (avail_vol_ask_id)."
                )
            size = _number(body.get("size"), 15.0, "size")
            used = sum(v.size_gb for v in self.volumes.values() if v.machine_id == machine.id)
            if size <= 0 or used + size > machine.disk_space:
                raise ApiError(
                    400,
                    "invalid_args",
                    f"size {size:g} GB: machine {machine.id} has "
                    f"{machine.disk_space - used:g} GB of volume space free",
                )
            if self.balance <= 0:
                raise ApiError(
                    402, "insufficient_credit", "Your balance is $0.00 or less: add credit."
                )
            name = body.get("name")
            volume = SimVolume(
                id=self.next_id,
                ask_id=ask_id,
                machine_id=machine.id,
                size_gb=size,
                name=name if isinstance(name, str) else None,
                storage_cost=machine.storage_cost,
                created_at=now,
            )
            self.next_id += 1
            self.volumes[volume.id] = volume
            self._save()
            return volume.id

    def delete_volume(self, volume_id: int) -> None:
        """DELETE /volumes/?id=N: the volume and its billing end."""
        with self.lock:
            self._settle(self.clock.now())
            volume = self.volumes.pop(int(volume_id), None)
            if volume is None:
                raise ApiError(404, "no_such_volume", f"Volume {volume_id} not found.")
            self.volume_spent += volume.cost
            self._save()

    def charges(self) -> list[dict[str, Any]]:
        """GET /api/v1/invoices/ and /api/v0/charges/: one charge per instance (live or
        destroyed) and per live volume, with what it has cost so far (no date filtering)."""
        with self.lock:
            self._settle(self.clock.now())
            rows: list[dict[str, Any]] = []
            meters = {i.id: i.meter() for i in self.instances.values()}
            meters.update(self.finished)
            for instance_id, meter in sorted(meters.items()):
                rows.append(
                    {
                        "type": "instance",
                        "service": "instance",
                        "source": "instance",
                        "instance_id": instance_id,
                        "description": f"Instance {instance_id}",
                        "amount": round(meter["total"], 6),
                        "compute": round(meter["compute"], 6),
                        "storage": round(meter["storage"], 6),
                        "bandwidth": round(meter["bandwidth"], 6),
                        "when": self.accrued_at,
                    }
                )
            for volume in self.volumes.values():
                rows.append(
                    {
                        "type": "volume",
                        "service": "volume",
                        "source": "volume",
                        "volume_id": volume.id,
                        "description": f"Volume {volume.id} ({volume.size_gb:g} GB)",
                        "amount": round(volume.cost, 6),
                        "when": self.accrued_at,
                    }
                )
            return rows

    def add_cloud_connection(
        self, name: str, options: dict[str, str], cloud_type: str = "s3"
    ) -> int:
        """Register a cloud connection (what a vast.ai user adds in the console): `options` are
        rclone backend options (type, provider, endpoint, access_key_id, ...). Its id."""
        with self.lock:
            connection_id = 900 + len(self.cloud_connections) + 1
            self.cloud_connections[connection_id] = (name, cloud_type, dict(options))
            return connection_id

    def list_cloud_connections(self) -> list[dict[str, Any]]:
        """GET /users/cloud_integrations/: id, name, cloud_type (never the credentials)."""
        with self.lock:
            return [
                {"id": cid, "name": name, "cloud_type": kind}
                for cid, (name, kind, _options) in sorted(self.cloud_connections.items())
            ]

    def cloud_copy(self, body: dict[str, Any]) -> str:
        """POST /commands/rclone/: accepted for a running or stopped instance (vast.ai copies
        from a stopped one too); an instance-to-cloud copy bills the bytes of `src` as upload
        bandwidth, as the host would meter them. With a registered connection
        (`add_cloud_connection`) the copy is real: `rclone copy <disk>/src CONNECTION:dst` runs
        in the background, and the instance's status_msg says when it started and finished, as
        vast.ai's status bar does. Any other connection id moves nothing (there is no cloud)."""
        with self.lock:
            self._settle(self.clock.now())
            instance_id = int(_number(body.get("instance_id"), -1, "instance_id"))
            inst = self._get(instance_id)
            if inst.phase in ("loading", "offline", "scheduling", "paused"):
                raise ApiError(
                    400,
                    "invalid_state",
                    f"Instance {inst.id} is {inst.phase}: cloud copy needs it running or stopped",
                )
            transfer = str(body.get("transfer") or "").lower().replace(" ", "")
            if transfer not in ("instancetocloud", "cloudtoinstance"):
                raise ApiError(
                    400,
                    "invalid_args",
                    "transfer must be 'Instance To Cloud' or 'Cloud To Instance'",
                )
            if not body.get("selected"):
                raise ApiError(400, "invalid_args", "selected (a cloud connection id) is required")
            if transfer == "cloudtoinstance":
                return "Cloud copy accepted (the emulator has no cloud: nothing was copied)."
            src = str(body.get("src") or "")
            root = self.disk(inst.id).resolve()
            target = (root / src.lstrip("/")).resolve()
            if not src.startswith("/") or not (target == root or root in target.parents):
                raise ApiError(400, "invalid_args", f"src {src!r} must be an absolute box path")
            if not target.exists():
                raise ApiError(404, "no_such_path", f"src {src} does not exist on the instance")
            files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            self._charge_bandwidth(inst, size, 0)
            connection = self.cloud_connections.get(
                int(_number(body.get("selected"), -1, "selected"))
            )
            if connection is not None:
                inst.status_msg = CLOUD_COPY_STARTED
                threading.Thread(
                    target=self._run_cloud_copy,
                    args=(inst, target, connection[2], str(body.get("dst") or "")),
                    name=f"cloud-copy-{inst.id}",
                    daemon=True,
                ).start()
            self._save()
            if connection is not None:
                return f"Cloud copy started: {size} bytes billed as upload."
            return f"Cloud copy accepted: {size} bytes billed as upload (nothing was copied)."

    def _run_cloud_copy(
        self, inst: SimInstance, source: Path, options: dict[str, str], dst: str
    ) -> None:
        """The host's side of a cloud copy: rclone with the connection's options in its env."""
        import subprocess

        from rgt.durable import rclone_program

        remote = "RGTSIMCLOUD"
        env = {
            **os.environ,
            **{f"RCLONE_CONFIG_{remote}_{k.upper()}": v for k, v in options.items()},
        }
        try:
            done = subprocess.run(
                [
                    rclone_program(),
                    "copy",
                    "--config",
                    "/dev/null",
                    str(source),
                    f"{remote}:{dst.strip('/')}",
                ],
                env=env,
                capture_output=True,
                timeout=3600,
                # Ends with the emulator (this thread waits for it, so lives as long).
                preexec_fn=die_with_parent(),
                stdin=subprocess.DEVNULL,
            )
            outcome = (
                CLOUD_COPY_FINISHED
                if done.returncode == 0
                else (f"{CLOUD_COPY_FAILED}: rclone exit {done.returncode}")
            )
        except (OSError, subprocess.SubprocessError, RgtError) as exc:
            outcome = f"{CLOUD_COPY_FAILED}: {type(exc).__name__}"
        with self.lock:
            if inst.status_msg == CLOUD_COPY_STARTED:
                inst.status_msg = outcome
                self._save()

    # -- fault injection ----------------------------------------------------------------------
    def preempt(self, instance_id: int) -> None:
        """An interruptible instance is outbid: its container is killed at once (SIGKILL)."""
        with self.lock:
            self._settle(self.clock.now())
            inst = self._get(instance_id)
            if not inst.is_bid:
                raise ApiError(
                    400, "invalid_args", f"instance {inst.id} is on-demand; only bids are outbid"
                )
            if inst.phase not in ("loading", "running"):
                raise ApiError(400, "invalid_state", f"instance {inst.id} is {inst.phase}")
            self._pause_outbid(inst)
            machine = self.machines[inst.machine_id]
            for gpu in inst.gpu_indices:  # a (notional) higher bid holds the GPU until win_bid
                machine.holders[gpu] = f"outbid-{inst.id}"
            self._save()

    def win_bid(self, instance_id: int) -> None:
        """The higher bid ended: the GPU is free for the instance again; a paused one resumes."""
        with self.lock:
            self._settle(self.clock.now())
            inst = self._get(instance_id)
            self._release_outbid(inst)
            if inst.phase == "paused":
                if self._claim(inst):
                    self._begin_loading(inst, self.settings.restart_seconds, "Starting container")
                else:
                    self._start(inst)
            self._schedule_waiting()
            self._save()

    def stall_loading(self, instance_id: int, seconds: float | None = None) -> None:
        """A slow image pull (VAST13): the loading instance needs `seconds` more (None: until
        `stall_loading` is called again with a number)."""
        with self.lock:
            self._settle(self.clock.now())
            inst = self._get(instance_id)
            if inst.phase != "loading":
                raise ApiError(400, "invalid_state", f"instance {inst.id} is {inst.phase}")
            if seconds is None:
                inst.ready_at = None
                inst.status_msg = f"Pulling image {inst.image}: download stalled"
            else:
                inst.ready_at = self.accrued_at + max(float(seconds), 0.0)
                inst.status_msg = f"Pulling image {inst.image}"
            self._save()

    def take_host_offline(self, instance_id: int) -> None:
        """The instance's host stops answering: every container on it dies (SIGKILL)."""
        with self.lock:
            self._settle(self.clock.now())
            machine = self.machines[self._get(instance_id).machine_id]
            machine.online = False
            for inst in self.instances.values():
                if inst.machine_id == machine.id and inst.phase != "offline":
                    box = self.boxes.pop(inst.id, None)
                    if box is not None:
                        box.kill()
                    self._close_ports(inst.id)
                    self._stop_ssh(inst.id)
                    inst.before_offline = inst.phase
                    inst.ready_at = None
                    inst.phase = "offline"
                    inst.status_msg = f"Host offline: machine {machine.id} stopped responding"
            self._save()

    def bring_host_online(self, instance_id: int) -> None:
        """The host is back: running instances restart (onstart runs again)."""
        with self.lock:
            self._settle(self.clock.now())
            machine = self.machines[self._get(instance_id).machine_id]
            machine.online = True
            for inst in self.instances.values():
                if inst.machine_id != machine.id or inst.phase != "offline":
                    continue
                before = inst.before_offline or "stopped"
                inst.before_offline = None
                if inst.intended == "stopped" and before != "stopped":
                    # Stopped while its host was away: it comes back stopped, GPU released.
                    self._release(inst)
                    before = "stopped"
                if before in ("loading", "running"):
                    self._begin_loading(inst, self.settings.restart_seconds, "Starting container")
                elif before == "stopped" and inst.intended == "running":
                    inst.phase = "stopped"
                    self._start(inst)  # started while its host was away
                else:
                    inst.phase = before
                    inst.status_msg = f"Host back online; instance is {before}"
            self._schedule_waiting()
            self._save()

    # -- the row --------------------------------------------------------------------------
    def _row(self, inst: SimInstance) -> dict[str, Any]:
        machine = self.machines[inst.machine_id]
        actual = {
            "loading": "loading",
            "running": "running",
            "offline": "offline",
            "exited": "exited",
        }.get(inst.phase, "stopped")
        intended = inst.intended
        cur = "running" if inst.phase in ("loading", "running", "exited") else "stopped"
        if inst.phase == "offline":
            cur = "running" if inst.before_offline in ("loading", "running") else "stopped"
        port = self.ssh_ports.get(inst.id) if inst.phase == "running" else None
        now = self.accrued_at
        uptime = (now - inst.started_at) / 60 if inst.started_at and inst.phase == "running" else 0
        row = offer_row(self.asks[inst.ask_id], machine, inst.disk_gb)
        ports: dict[str, list[dict[str, str]]] = {}
        if port:
            ports["22/tcp"] = [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        for name, public in self.public_ports.get(inst.id, {}).items():
            ports[name] = [{"HostIp": "127.0.0.1", "HostPort": str(public)}]
        public_ports = sorted(int(p[0]["HostPort"]) for p in ports.values())
        compute_hour = inst.compute_per_hour
        disk_hour = inst.storage_per_second * 3600
        # The pricing blocks of an instance row (vast.ai's web console and API: what the
        # instance costs as rented, and what its offer costs in search).
        pricing = {
            "gpuCostPerHour": round(compute_hour, 6),
            "diskHour": round(disk_hour, 6),
            "totalHour": round(compute_hour + disk_hour, 6),
            "discountTotalHour": 0.0,
            "discountedTotalPerHour": round(compute_hour + disk_hour, 6),
        }
        return {
            "id": inst.id,
            "bundle_id": inst.ask_id,  # the offer it was rented from; `id` is the contract
            "machine_id": machine.id,
            "host_id": machine.host_id,
            "actual_status": actual,
            "intended_status": intended,
            "cur_state": cur,
            "next_state": intended,
            "status_msg": inst.status_msg,
            "label": inst.label,
            "image_uuid": inst.image,
            "image_args": list(inst.args),
            "image_runtype": inst.runtype,
            "onstart": inst.onstart,
            "extra_env": [[k, v] for k, v in inst.env.items()],
            "template_id": None,
            "template_hash_id": None,
            "template_name": None,
            "num_gpus": inst.num_gpus,
            "gpu_name": machine.gpu_name,
            "gpu_ram": machine.gpu_ram,
            "gpu_util": 0.0,
            "gpu_temp": 0.0,
            "gpu_arch": "nvidia",
            "cuda_max_good": machine.cuda_max_good,
            "driver_version": row["driver_version"],
            "compute_cap": machine.compute_cap,
            "cpu_name": row["cpu_name"],
            "cpu_arch": row["cpu_arch"],
            "cpu_cores": row["cpu_cores"],
            "cpu_cores_effective": row["cpu_cores_effective"],
            "cpu_ghz": row["cpu_ghz"],
            "cpu_util": 0.0,
            "cpu_ram": row["cpu_ram"],
            "gpu_totalram": row["gpu_totalram"],
            "dlperf": row["dlperf"],
            "dlperf_per_dphtotal": row["dlperf_per_dphtotal"],
            "total_flops": row["total_flops"],
            "hosting_type": row["hosting_type"],
            "disk_space": inst.disk_gb,
            "disk_util": 0,  # an int, as vast.ai sends it
            "disk_usage": 0.0,
            "mem_usage": 0.0,
            "mem_limit": round(row["cpu_ram"] / 1024, 3),  # GB (cpu_ram is MB)
            **network_fields(machine, inst.inet_up_cost, inst.inet_down_cost),
            # Bytes billed so far, in GB (the unit the per-GB prices use).
            "inet_up_billed": round(inst.bytes_out / BYTES_PER_GB, 9),
            "inet_down_billed": round(inst.bytes_in / BYTES_PER_GB, 9),
            "ssh_host": "127.0.0.1" if port else None,
            "ssh_port": port,
            "ssh_idx": "0",  # a string on vast.ai (vastai/data/instance.py)
            "public_ipaddr": "127.0.0.1",
            "local_ipaddrs": "127.0.0.1",
            "direct_port_count": len(ports),
            "direct_port_start": public_ports[0] if public_ports else None,
            "direct_port_end": public_ports[-1] if public_ports else None,
            "ports": ports,
            "instance": pricing,
            "search": {
                **pricing,
                "gpuCostPerHour": row["dph_base"],
                "totalHour": round(row["dph_base"] + disk_hour, 6),
                "discountedTotalPerHour": round(row["dph_base"] + disk_hour, 6),
            },
            "jupyter_token": None,
            "uptime_mins": round(uptime, 3),
            "start_date": inst.created_at,
            "end_date": None,
            "reliability2": machine.reliability,
            "verification": "verified" if machine.verified else "unverified",
            "geolocation": machine.geolocation,
            "dph_base": inst.dph_base,
            "dph_total": round(inst.compute_per_hour + inst.storage_per_second * 3600, 6),
            "storage_cost": inst.storage_cost,
            "storage_total_cost": round(inst.storage_per_second * 3600, 6),
            "is_bid": inst.is_bid,
            "min_bid": row["min_bid"],
            "bid_price": inst.bid_price,
            "volume_info": [],
        }

    # -- persistence ----------------------------------------------------------------------
    def _state_path(self) -> Path:
        return self.root / STATE_FILE

    def _save(self) -> None:
        self._dirty = True
        self.save()

    def save(self, *, only_if_dirty: bool = False) -> None:
        """Write the state file atomically (no-op for an ephemeral world)."""
        with self.lock:
            if not self.persist or (only_if_dirty and not self._dirty):
                return
            state = {
                "version": STATE_VERSION,
                "seed": self.settings.seed,
                "saved_at": self.accrued_at,
                "next_id": self.next_id,
                "balance": self.balance,
                "exhausted": self.exhausted,
                "instances": [asdict(i) for i in self.instances.values()],
                "volumes": [asdict(v) for v in self.volumes.values()],
                "volume_spent": self.volume_spent,
                "finished": {str(k): v for k, v in self.finished.items()},
                "holders": {
                    str(m.id): {str(g): h for g, h in m.holders.items()}
                    for m in self.machines.values()
                    if m.holders
                },
                "offline": sorted(m.id for m in self.machines.values() if not m.online),
            }
            # 0600: it holds each instance's CONTAINER_API_KEY.
            atomic_write_text(
                self._state_path(), json.dumps(state, indent=1, sort_keys=True), mode=0o600
            )
            self._dirty = False

    def _load(self) -> None:
        path = self._state_path()
        if not self.persist or not path.exists():
            return
        try:
            state = json.loads(path.read_text())
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"version {state.get('version')!r}, expected {STATE_VERSION}")
            if state["seed"] != self.settings.seed:
                # The marketplace comes from the seed: the stored one wins.
                self.settings.seed = int(state["seed"])
                self.machines, self.asks = generate(self.settings.seed, self.settings.machines)
            shift = self.clock.now() - float(state["saved_at"])  # no billing while we were down
            self.next_id = int(state["next_id"])
            self.balance = float(state["balance"])
            self.exhausted = bool(state["exhausted"])
            self.finished = {int(k): v for k, v in state["finished"].items()}
            self.volumes = {int(v["id"]): SimVolume(**v) for v in state.get("volumes", [])}
            self.volume_spent = float(state.get("volume_spent", 0.0))
            for machine_id, held in state["holders"].items():
                self.machines[int(machine_id)].holders = {int(g): h for g, h in held.items()}
            for machine_id in state["offline"]:
                self.machines[int(machine_id)].online = False
            for data in state["instances"]:
                inst = SimInstance(**{k: v for k, v in data.items() if k in _INSTANCE_FIELDS})
                for name in ("ready_at", "delete_at", "waiting_since", "started_at"):
                    value = getattr(inst, name)
                    if value is not None:
                        setattr(inst, name, value + shift)
                if inst.pid is not None:
                    kill_orphan(inst.pid, self.disk(inst.id))
                    inst.pid = None
                if inst.phase == "running":  # the container restarts with the emulator
                    self._begin_loading(
                        inst, self.settings.restart_seconds, "Starting container (emulator restart)"
                    )
                self.instances[inst.id] = inst
        except (OSError, ValueError, KeyError, TypeError) as exc:
            from rgt.errors import UsageError

            raise UsageError(f"{path}: cannot read the emulator state ({exc})") from exc

    def shutdown(self) -> None:
        """Kill every container process and sshd this world started; save the state."""
        with self.lock:
            self._settle(self.clock.now())
            for inst_id in list(self.boxes):
                self.boxes.pop(inst_id).kill()
            for inst_id in list(self.ssh):
                self._stop_ssh(inst_id)
            self.save()


def _number(value: Any, default: float, name: str) -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "invalid_args", f"{name} {value!r} is not a number") from exc
