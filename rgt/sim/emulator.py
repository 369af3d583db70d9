"""`Emulator`: the vast.ai emulator in-process (tests) or behind `rgt sim serve`.

with Emulator(state_dir=tmp, api_key=key) as sim:
    os.environ["VAST_URL"] = sim.url        # the real vastai CLI/SDK now talk to it
    ...
    sim.preempt(instance_id); sim.clock.advance(3600); sim.meter(instance_id)
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from rgt.atomic import atomic_write_text
from rgt.sim import container
from rgt.sim.clock import SimClock
from rgt.sim.faults import Faults
from rgt.sim.http import SimHttpServer
from rgt.sim.world import Platform, Settings, SshFactory, World

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05  # how often due events are settled in real time
SAVE_SECONDS = 1.0  # how often accrued billing is written to the state file
KEY_FILE = "api_key"  # a generated key, reused when the emulator restarts on the same state


class Emulator:
    """A local vast.ai: real HTTP on 127.0.0.1, real instance processes, optional real sshd."""

    def __init__(
        self,
        state_dir: Path | str | None = None,
        seed: int = 0,
        api_key: str | None = None,
        ssh: bool = True,
        *,
        port: int = 0,
        time_scale: float = 1.0,
        boot_seconds: float = 0.5,
        restart_seconds: float = 0.3,
        balance: float = 100.0,
        zero_balance_grace_seconds: float = 3600.0,
        machines: int = 60,
    ) -> None:
        self._ephemeral = state_dir is None
        self.state_dir = (
            Path(tempfile.mkdtemp(prefix="rgt-sim-")) if state_dir is None else Path(state_dir)
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.api_key = api_key or self._stored_or_new_key()
        self.clock = SimClock(time_scale)
        self.faults = Faults()
        self.port = port
        self.ssh_enabled = ssh
        self.client_key_path: Path | None = None
        self._ssh_env: dict[str, str] = {}
        self.ssh_note = "ssh disabled"
        self.settings = Settings(
            seed=seed,
            boot_seconds=boot_seconds,
            restart_seconds=restart_seconds,
            balance=balance,
            zero_balance_grace_seconds=zero_balance_grace_seconds,
            machines=machines,
        )
        self.world: World | None = None
        self._server: SimHttpServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def _stored_or_new_key(self) -> str:
        """A generated key, kept in a persistent state dir so a restart accepts the same one."""
        key_file = self.state_dir / KEY_FILE
        if not self._ephemeral:
            try:
                stored = key_file.read_text().strip()
            except OSError:
                stored = ""
            if stored:
                return stored
        key = "sim-" + secrets.token_hex(16)
        if not self._ephemeral:
            atomic_write_text(key_file, key + "\n", mode=0o600)
        return key

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> Emulator:
        """Load the state, start serving; returns self."""
        factory = self._ssh_factory() if self.ssh_enabled else None
        no_view = container.unavailable_reason()
        if no_view is not None:
            log.warning(
                "rgt sim: no mount namespace for boxes (%s): a box's /workspace/... is this "
                "machine's /workspace",
                no_view,
            )
        self.world = World(
            self.state_dir,
            self.clock,
            self.settings,
            Platform.from_profile(),
            ssh_factory=factory,
            persist=not self._ephemeral,
        )
        self.clock.on_advance(self.world.settle)
        self._server = SimHttpServer(
            ("127.0.0.1", self.port), self.world, self.api_key, self.faults
        )
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="rgt-sim-http", daemon=True),
            threading.Thread(target=self._tick, name="rgt-sim-tick", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.world.settle()
        return self

    def _ssh_factory(self) -> SshFactory | None:
        try:
            from rgt.sim import ssh as sim_ssh
        except ImportError:
            self.ssh_note = "no rgt.sim.ssh: instances have no ssh endpoint"
            return None
        key_dir = self.state_dir / "ssh"
        key_dir.mkdir(parents=True, exist_ok=True)
        reap = getattr(sim_ssh, "reap_stale_servers", None)
        # sshds a SIGKILLed emulator on this state dir left listening (where they outlive it:
        # not on Linux, rgt.children)
        if reap is not None:
            stale = reap(key_dir)
            if stale:
                log.info("stopped %d sshd(s) left by an earlier emulator", stale)
        try:
            self.client_key_path = Path(sim_ssh.client_key_path(key_dir))
        except Exception as exc:
            self.ssh_note = f"ssh unavailable ({exc}): instances have no ssh endpoint"
            log.warning("%s", self.ssh_note)
            return None
        self._ssh_env = dict(sim_ssh.ssh_client_environment(key_dir))
        fallback = sim_ssh.sshd_unavailable_reason()
        self.ssh_note = (
            "ssh: a real sshd per running instance on 127.0.0.1"
            if fallback is None
            else f"ssh: no sshd here ({fallback}); copies fall back to local rsync"
        )

        def factory(disk: Path) -> Any:
            return sim_ssh.SshServer(disk, key_dir)

        return factory

    def _tick(self) -> None:
        saved = 0.0
        while not self._stopping.wait(TICK_SECONDS):
            world = self.world
            if world is None:
                continue
            try:
                world.settle()
                saved += TICK_SECONDS
                if saved >= SAVE_SECONDS:
                    saved = 0.0
                    # With instances the meter moves every tick; without, only events count.
                    world.save(only_if_dirty=not world.instances)
                else:
                    # An event (a container started, a deletion) is written at once: a crash
                    # must not forget which process group runs on which disk.
                    world.save(only_if_dirty=True)
            except Exception:  # keep ticking; the failure is in the log
                log.exception("emulator tick failed")

    def stop(self) -> None:
        """Stop serving, kill every instance process and sshd, save the state."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        if self.world is not None:
            self.world.shutdown()
        self._server = None
        if self._ephemeral:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- where it is ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (the value for VAST_URL)."""
        if self._server is None:
            raise RuntimeError("the emulator is not running: call start() first")
        return self._server.base_url

    def _world(self) -> World:
        if self.world is None:
            raise RuntimeError("the emulator is not running: call start() first")
        return self.world

    def client_environment(self) -> dict[str, str]:
        """Variables a client needs to copy off instances: RGT_SSH_KEY (the emulator's client
        key), plus RGT_SSH_COMMAND when sshd cannot run here (the local-rsync fallback)."""
        return dict(self._ssh_env)

    def add_cloud_connection(
        self, name: str, options: dict[str, str], cloud_type: str = "s3"
    ) -> int:
        """Add a cloud connection to the account, as a user does in vast.ai's console: `options`
        are its rclone backend options (type, provider, endpoint, keys). `vastai cloud copy`
        with its id then really copies (rclone). Its id."""
        return self._world().add_cloud_connection(name, options, cloud_type)

    def instance_disk(self, instance_id: int | str) -> Path:
        """The instance's container disk (box path /x is this directory + /x)."""
        return self._world().disk(int(instance_id))

    def process_id(self, instance_id: int | str) -> int | None:
        """The pid (= process group) of the instance's onstart process, if one runs."""
        box = self._world().boxes.get(int(instance_id))
        return box.pid if box is not None and box.alive() else None

    def instance_ids(self) -> list[int]:
        """Ids of every instance not destroyed."""
        world = self._world()
        with world.lock:
            return sorted(world.instances)

    # -- faults -----------------------------------------------------------------------------
    def preempt(self, instance_id: int | str) -> None:
        """Outbid an interruptible instance: paused at once, its processes SIGKILLed."""
        self._world().preempt(int(instance_id))

    def win_bid(self, instance_id: int | str) -> None:
        """The instance's bid is the highest again: it resumes (onstart runs again)."""
        self._world().win_bid(int(instance_id))

    def stall_loading(self, instance_id: int | str, seconds: float | None = None) -> None:
        """Slow image pull (VAST13): a loading instance stays loading `seconds` more
        (simulated), or until called again with a number when `seconds` is None."""
        self._world().stall_loading(int(instance_id), seconds)

    def take_host_offline(self, instance_id: int | str) -> None:
        """The instance's host goes offline (VAST7): every container on it is SIGKILLed."""
        self._world().take_host_offline(int(instance_id))

    def bring_host_online(self, instance_id: int | str) -> None:
        """The host answers again; its running instances restart."""
        self._world().bring_host_online(int(instance_id))

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: float | None = None,
        after_commit: bool = False,
        skip: int = 0,
        *,
        cut: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """The next `n` API calls (after `skip`) answer `status` (429, 404 or 5xx); with
        `after_commit` the request is carried out first and only the answer is lost. `cut`
        ("connection" or "body") carries the request out and cuts its real answer short.
        `method`/`path` (a trailing `*` = prefix) limit the fault to matching calls (see
        rgt.sim.faults)."""
        self.faults.fail_next(
            n, status, retry_after, after_commit, skip, cut=cut, method=method, path=path
        )

    def add_latency(self, seconds: float) -> None:
        """Delay every API answer by `seconds` (real time)."""
        self.faults.latency = max(float(seconds), 0.0)

    def request_count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests arrived with this method and path (`*` suffix = prefix)."""
        return self.faults.request_count(method, path)

    # -- money -------------------------------------------------------------------------------
    def meter(self, instance_id: int | str) -> dict[str, float]:
        """Dollars billed to the instance so far: compute, storage, bandwidth, total."""
        return self._world().meter(int(instance_id))

    def account_meter(self) -> dict[str, float]:
        """Dollars billed to the account (all instances) and the balance."""
        return self._world().account_meter()

    def set_balance(self, dollars: float) -> None:
        """Set the account balance (at $0 instances stop, then are deleted after a grace)."""
        self._world().set_balance(dollars)

    def charge_bandwidth(self, instance_id: int | str, bytes_out: int, bytes_in: int = 0) -> None:
        """Bill bytes moved off (`out`) and onto (`in`) the instance."""
        self._world().charge_bandwidth(int(instance_id), bytes_out, bytes_in)
