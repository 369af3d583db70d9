"""The demo scenario: one interruptible rental on the embedded emulator, from search to destroy.

Everything runs through the same code a real rental uses: the vast.ai provider over the real
`vastai` SDK (HTTP to the in-process emulator), the rendered onstart script, rsync over a real
sshd, rgt.pull, rgt.verify, the gate, the ledger. Only three things are the demo's own:

* the emulator itself (started here, stopped at the end) and its fault injection: one
  preemption mid-run, then the bid wins again;
* an isolated state and config dir (a fresh temp dir): the demo's ledger, approvals and results
  never touch the user's real ones, and the user's API key is never sent anywhere (the emulator
  gets a random key of its own);
* the approval: `--yes` records a "demo --yes" approval, or a terminal prompt asks to type the
  instance id. Both are refused for anything but an instance of the in-process emulator, so
  neither opens a path around the Iron Law for real rentals.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rgt.errors import ProviderError, Refused, UsageError

RUN_ID = "rgt-demo"
RESULT_DIR = "linreg"  # the one roster entry, under the results root (from the profile)
DEMO_APPROVAL_CHANNEL = "demo --yes (in-process emulator)"
DEMO_TTY_CHANNEL = "demo-tty (in-process emulator)"
APPROVAL_TTL_SECONDS = 300.0
# Between polls of the API and the job's progress (each progress read is an ssh session: on a
# 2-core machine, polling harder would slow the job it watches).
POLL_SECONDS = 0.15


@dataclass(frozen=True)
class DemoSettings:
    """The scenario's knobs (defaults keep the whole demo well under a minute)."""

    steps: int = 600
    step_seconds: float = 0.01
    preempt_at_fraction: float = 0.45  # preempt when the job has done this share of its steps
    outage_seconds: float = 1.5  # paused, outbid, before the bid wins again
    mtbf_seconds: float = 4.0  # the demo's preemption rate (a real one: hours), for Young/Daly
    seed: int = 0
    gpu: str = "RTX_4090:1"
    disk_gb: int = 20
    timeout_seconds: float = 90.0
    clock_scale: float = 60.0  # emulator seconds per real second: a minute's demo bills an hour


@dataclass
class Timeline:
    """States as observed through the API (plus the demo's own milestones), in seconds."""

    started: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)
    last_state: str | None = None

    def add(self, state: str, note: str = "") -> None:
        """Record a milestone or a new state."""
        self.events.append(
            {"t": round(time.monotonic() - self.started, 2), "state": state, "note": note}
        )

    def observe(self, state: str, note: str = "") -> bool:
        """Record `state` if it differs from the last observed one; True when it did."""
        if state == self.last_state:
            return False
        self.last_state = state
        self.add(state, note)
        return True


@contextlib.contextmanager
def isolated_environment(
    demo_dir: Path, api_key: str, url: str, ssh_environment: dict[str, str]
) -> Iterator[None]:
    """Point rgt's state/config dirs, the API URL and key, and the ssh settings (the emulator's
    client key; a local pipe where sshd cannot run) at the demo's own, restoring the caller's
    environment afterwards."""
    wanted: dict[str, str | None] = {
        "RGT_STATE_DIR": str(demo_dir / "state"),
        "RGT_CONFIG_DIR": str(demo_dir / "config"),
        "VAST_URL": url,
        "VAST_API_KEY": api_key,
        "RGT_SSH_KEY": ssh_environment.get("RGT_SSH_KEY"),
        "RGT_SSH_COMMAND": ssh_environment.get("RGT_SSH_COMMAND"),
    }
    saved = {name: os.environ.get(name) for name in wanted}
    try:
        _set_environment(wanted)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: Mapping[str, str | None]) -> None:
    """Set each variable to its value; a None value unsets it."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def results_root(data_dir: str) -> str:
    """Where a rehearsal's job writes its results: `results` under the profile's data_dir (the
    container disk on vast.ai). The demo and the pull-resume bench both use it."""
    return f"{data_dir.rstrip('/')}/results"


def demo_job(settings: DemoSettings, ckpt_every: int, data_dir: str) -> Any:
    """The job request: the demo trainer, run by the rendered onstart on every container start.

    On a real box the image carries the job's code; the emulated box's "image" is this machine,
    so the command runs rgt's own Python, where rgt.demo.job and rgt.checkpoint are importable.
    """
    from rgt.job import JobRequest

    root = results_root(data_dir)
    command = (
        f"{sys.executable} -m rgt.demo.job --steps {settings.steps} "
        f"--ckpt-every {ckpt_every} --step-seconds {settings.step_seconds}"
    )
    return JobRequest.from_dict(
        {
            "run_id": RUN_ID,
            "image": "python:3.11-slim",
            "gpu": settings.gpu,
            "disk_gb": settings.disk_gb,
            "command": command,
            "results_root": root,
            "roster": [RESULT_DIR],
            "checkpoint_dir": f"{root}/{RESULT_DIR}/checkpoints",
            "checkpoint_glob": "step-*.ckpt",
            "env": {"PYTHONUNBUFFERED": "1"},
            # The demo's job trains on the CPU: the emulator's boxes have no GPU.
            "health": {"gpu_required": False},
        },
        source="<rgt demo job>",
    )


def measure_checkpoint_cost(scratch: Path) -> float:
    """Seconds to save one checkpoint of the demo job's size here (median of 5)."""
    from rgt.checkpoint import save
    from rgt.demo.job import FEATURES, pack

    state = {
        "w": pack([0.5] * FEATURES),
        "rng": [3, list(range(625)), None],
        "loss_curve": [[i, 0.1] for i in range(60)],
        "checkpoints": 1,
        "checkpoint_seconds": 0.0,
    }
    seconds = []
    for step in range(5):
        began = time.perf_counter()
        save(scratch, step, state, keep=1)
        seconds.append(time.perf_counter() - began)
    shutil.rmtree(scratch, ignore_errors=True)
    return statistics.median(seconds)


def require_emulator_instance(provider: Any, emulator: Any, instance_id: str) -> None:
    """The demo's approvals are for the in-process emulator only: refuse anything else."""
    ours = urlparse(emulator.url)
    theirs = urlparse(str(getattr(provider, "api_url", "")))
    if ours.hostname not in ("127.0.0.1", "localhost") or (ours.hostname, ours.port) != (
        theirs.hostname,
        theirs.port,
    ):
        raise Refused(
            f"demo approvals are only for the in-process emulator at {emulator.url}; "
            f"the provider points at {getattr(provider, 'api_url', '?')}"
        )
    if int(instance_id) not in emulator.instance_ids():
        raise Refused(f"instance {instance_id} is not an instance of the in-process emulator")


def require_terminal() -> None:
    """Refused (exit 4) unless a human can answer on a terminal: checked before renting, so a
    demo that could never be approved does not start."""
    from rgt.approval import open_tty

    try:
        open_tty().close()
    except Refused as exc:
        raise Refused(
            f"{exc}: nobody can approve the destroy; run `rgt demo` in a terminal, or "
            "`rgt demo --yes` to approve the demo's own emulated instance up front"
        ) from None


def tty_answer(instance_id: str) -> str:
    """Ask on the terminal to type the instance id back (the demo's stand-in for the passphrase
    prompt, which needs `rgt approval init`); returns what was typed."""
    return tty_confirm(
        f"Approve DESTROYING emulated instance {instance_id} (results pulled and verified)."
    )


def tty_confirm(question: str) -> str:
    """Write `question` on the terminal, ask to type the instance id back, return what was
    typed (the demo's approvals)."""
    from rgt.approval import open_tty

    with open_tty() as tty:
        tty.write(f"{question}\nType the instance id to confirm: ")
        tty.flush()
        return tty.readline().strip()


class Demo:
    """One run of the scenario. `run()` returns the report dict."""

    def __init__(
        self,
        settings: DemoSettings,
        *,
        yes: bool,
        demo_dir: Path | None = None,
        say: Callable[[str], None] | None = None,
        confirm: Callable[[str], str] = tty_answer,
    ) -> None:
        self.settings = settings
        self.yes = yes
        self.demo_dir = Path(demo_dir) if demo_dir else Path(tempfile.mkdtemp(prefix="rgt-demo-"))
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.confirm = confirm
        self.timeline = Timeline()
        self.profile: Any = None

    def run(self) -> dict[str, Any]:
        """Start the emulator, run the scenario, stop the emulator (also on failure)."""
        from rgt.sim import Emulator

        try:
            self.demo_dir.mkdir(parents=True, exist_ok=True)
            used = any(True for _ in self.demo_dir.iterdir())
        except OSError as exc:
            raise UsageError(
                f"--dir {self.demo_dir}: cannot use it as the demo's directory "
                f"({exc.strerror or exc}); give a new or empty directory"
            ) from None
        if used:
            raise UsageError(
                f"--dir {self.demo_dir}: must be empty or new (the demo's ledger lives there)"
            )
        if not self.yes and self.confirm is tty_answer:
            require_terminal()
        began = time.monotonic()
        emulator = Emulator(
            state_dir=self.demo_dir / "emulator",
            seed=self.settings.seed,
            api_key="rgt-demo-" + secrets.token_hex(16),
            time_scale=self.settings.clock_scale,
        )
        with (
            emulator,
            isolated_environment(
                self.demo_dir, emulator.api_key, emulator.url, emulator.client_environment()
            ),
        ):
            report = self._scenario(emulator)
        report["seconds"] = round(time.monotonic() - began, 2)
        return report

    # -- the scenario ----------------------------------------------------------------------

    def _scenario(self, emulator: Any) -> dict[str, Any]:
        from rgt import lifecycle
        from rgt.cadence import young_daly
        from rgt.ledger import Ledger
        from rgt.profile import load_profile
        from rgt.providers.vastai import VastProvider

        settings = self.settings
        profile = self.profile = load_profile("vastai")
        provider = VastProvider(api_url=emulator.url)
        ckpt_cost = measure_checkpoint_cost(self.demo_dir / "ckpt-cost")
        cadence = young_daly(settings.mtbf_seconds, ckpt_cost, settings.step_seconds)
        # On a very slow disk Young/Daly could ask for fewer checkpoints than the demo has
        # before its preemption; cap it so there is always one to resume from (shown if used).
        ckpt_every = min(cadence.interval_steps or 1, max(1, settings.steps // 10))
        job = demo_job(settings, ckpt_every, profile.overrides["data_dir"])
        self.results_root: str = job.results_root
        self.say(
            f"demo: emulator at {emulator.url}; checkpoint every {ckpt_every} steps "
            f"(Young/Daly: MTBF {settings.mtbf_seconds:g} s, one save {ckpt_cost * 1000:.2f} ms)"
        )

        offers = provider.search_offers(
            lifecycle.offer_query_for_job(job, interruptible=True, limit=5)
        )
        if not offers:
            raise ProviderError(f"the emulator lists no verified interruptible {job.gpu} offer")
        offer = offers[0]
        bid = offer.min_bid
        with Ledger.open() as ledger:
            rented_clock = emulator.clock.now()
            launched = lifecycle.launch(
                provider=provider,
                ledger=ledger,
                profile=profile,
                job=job,
                offer_id=offer.id,
                max_price_per_hour=bid,
                interruptible=True,
                bid_per_hour=bid,
            )
            instance_id = launched.instance_id
            self.timeline.add("rented", f"offer {offer.id}, bid ${bid:.4f}/h")
            self.say(f"demo: rented instance {instance_id} ({offer.gpu_name}, ${bid:.4f}/h bid)")
            record = lambda state, note="": ledger.record_state(  # noqa: E731
                provider.platform, instance_id, state, detail=note or None
            )
            progress = self._run_job(emulator, provider, instance_id, record)
            report = self._finish(emulator, provider, ledger, profile, instance_id, record)
        local = Path(report["pull"]["local_dir"])
        job_report = job_summary(local, settings, ckpt_every)
        scale = float(getattr(emulator.clock, "time_scale", 1.0))
        billed = report["destroy"]["clock"] - rented_clock  # simulated seconds of the rental
        report.update(
            run_id=RUN_ID,
            emulator=emulator.url,
            instance_id=instance_id,
            offer={
                "offer_id": offer.id,
                "gpu_name": offer.gpu_name,
                "num_gpus": offer.num_gpus,
                "bid_per_hour": bid,
                "dph_total": offer.dph_total,
                "storage_cost_per_gb_month": offer.storage_cost_per_gb_month,
                "inet_up_cost_per_gb": offer.inet_up_cost_per_gb,
                "inet_down_cost_per_gb": offer.inet_down_cost_per_gb,
                "verified": offer.verified,
            },
            cadence={
                **cadence.as_dict(),
                "checkpoint_cost_seconds": ckpt_cost,
                "young_daly_steps": cadence.interval_steps,
                "interval_steps": ckpt_every,
            },
            onstart_bytes=launched.onstart_bytes,
            demo_dir=str(self.demo_dir),
            timeline=self.timeline.events,
            clock_scale=getattr(emulator.clock, "time_scale", 1.0),
            preemption=progress,
            job=job_report,
            cost=counterfactual_cost(
                report["meter"], bid, billed, progress, job_report, clock_scale=scale
            ),
        )
        return report

    def _poll(self, provider: Any, instance_id: str, record: Callable[..., None]) -> str:
        """One `show`; a new state goes into the timeline with what `rgt poll` makes of it."""
        from rgt import lifecycle

        instance = provider.show(instance_id)
        state = instance.state
        if state != self.timeline.last_state:
            classification, _ = lifecycle.classify(instance, self.profile)
            gotcha = lifecycle.gotcha_for(self.profile, classification)
            note = f"rgt poll: {classification}" + (f" (gotcha {gotcha})" if gotcha else "")
            self.timeline.observe(state, note)
            record(state, note)
        return state

    def _progress(self, provider: Any, instance_id: str) -> int:
        """The job's step, read off the box over ssh (0 while unreadable)."""
        path = f"{self.results_root}/{RESULT_DIR}/progress.json"
        try:
            return int(json.loads(provider.read_remote_file(instance_id, path))["step"])
        except Exception:  # not written yet, box restarting: the next poll tells
            return 0

    def _run_job(
        self, emulator: Any, provider: Any, instance_id: str, record: Callable[..., None]
    ) -> dict[str, Any]:
        """Wait for the job to reach the preemption point, preempt, let the bid win, wait for
        the job to finish and its manifest to appear."""
        from rgt.demo.report import StepBar

        settings = self.settings
        deadline = time.monotonic() + settings.timeout_seconds
        bar = StepBar("train", settings.steps)
        preempt_step = int(settings.steps * settings.preempt_at_fraction)
        step = 0
        while step < preempt_step:
            self._check_deadline(deadline, "the job to reach the preemption point")
            if self._poll(provider, instance_id, record) == "running":
                step = self._progress(provider, instance_id)
                bar.update(step, "running")
            time.sleep(POLL_SECONDS)
        emulator.preempt(instance_id)
        preempted_at = time.time()
        self.timeline.add("outbid", "the emulator preempts the box: SIGKILL, no warning")
        bar.update(step, "PREEMPTED")
        paused_until = time.monotonic() + settings.outage_seconds
        while time.monotonic() < paused_until:
            self._poll(provider, instance_id, record)
            time.sleep(0.1)
        # The container restarts at once (the emulator's restart takes milliseconds of real
        # time), so compute bills again from here; polling would notice it later than it is.
        running_again = time.time()
        emulator.win_bid(instance_id)
        self.timeline.add("bid wins", "the higher bid ended; the container starts again")
        manifest = f"{self.results_root}/PULL_MANIFEST.json"
        while True:
            self._check_deadline(deadline, "the job to finish and write its manifest")
            if self._poll(provider, instance_id, record) == "running":
                step = self._progress(provider, instance_id)
                bar.update(step, "resumed")
                if step >= settings.steps:
                    with contextlib.suppress(Exception):
                        provider.read_remote_file(instance_id, manifest)
                        break
            time.sleep(POLL_SECONDS)
        bar.finish("done")
        self.timeline.add("job done", "manifest written on the box")
        return {
            "preempted_at": preempted_at,
            "running_again_at": running_again,
        }

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise ProviderError(
                f"demo: timed out after {self.settings.timeout_seconds:.0f} s waiting for {what}"
            )

    def _finish(
        self,
        emulator: Any,
        provider: Any,
        ledger: Any,
        profile: Any,
        instance_id: str,
        record: Callable[..., None],
    ) -> dict[str, Any]:
        """Pull, verify (gate refuses before, allows after), approve, destroy, read the meter."""
        from rgt.gate import destroy_with_gate, may_destroy
        from rgt.progress import ProgressBar
        from rgt.pull import pull_instance
        from rgt.verify import verify_pull

        local = self.demo_dir / "results"
        bar = ProgressBar("pull", None)
        pulled = pull_instance(
            instance_id,
            self.results_root,
            local,
            provider=provider,
            ledger=ledger,
            profile=profile,
            progress=lambda done, total, name: bar.update(done, total=total, note=name),
        )
        bar.finish()
        self.timeline.add("pulled", f"{pulled.files} files, {pulled.bytes_total} bytes")
        before = may_destroy(instance_id, provider=provider, ledger=ledger, profile=profile)
        self.timeline.add(
            "gate", "REFUSED before verification: " + ", ".join(m.code for m in before.missing)
        )
        check_bar = ProgressBar("verify", None)
        verified = verify_pull(
            local,
            expected_run_id=RUN_ID,
            expected_instance_id=instance_id,
            ledger=ledger,
            progress=lambda done, total: check_bar.update(done, total=total),
        )
        check_bar.finish()
        self.timeline.add("verified", "byte-for-byte against the box's manifest")

        require_emulator_instance(provider, emulator, instance_id)
        if self.yes:
            channel = DEMO_APPROVAL_CHANNEL
        else:
            typed = self.confirm(instance_id)
            if typed != str(instance_id):
                self.timeline.add("refused", f"approval answer {typed!r} is not {instance_id!r}")
                raise Refused(
                    f"typed {typed!r}, not {instance_id!r}: nothing approved, instance "
                    f"{instance_id} not destroyed"
                )
            channel = DEMO_TTY_CHANNEL
        approval_id = ledger.record_approval(instance_id, channel, APPROVAL_TTL_SECONDS)
        after = may_destroy(
            instance_id,
            provider=provider,
            ledger=ledger,
            profile=profile,
            approval_id=approval_id,
        )
        self.timeline.add("approved", f"approval #{approval_id} ({channel})")
        meter_before = emulator.meter(instance_id)
        outcome = destroy_with_gate(
            instance_id,
            provider=provider,
            ledger=ledger,
            profile=profile,
            approval_id=approval_id,
        )
        meter_at_destroy = emulator.meter(instance_id)
        destroyed_clock = emulator.clock.now()
        self.timeline.observe(outcome.confirmed_state, "destroyed through the gate")
        time.sleep(1.0)  # the meter must not move any more
        meter_after = emulator.meter(instance_id)
        return {
            "pull": {
                "files": pulled.files,
                "bytes_total": pulled.bytes_total,
                "bytes_transferred": pulled.bytes_transferred,
                "transport": pulled.transport,
                "manifest_sha256": pulled.manifest_sha256,
                "local_dir": str(local),
            },
            "verify": verification_summary(verified, pulled.manifest_sha256),
            "gate": {"before_verify": summarize(before), "after_approval": summarize(after)},
            "approval": {"id": approval_id, "channel": channel},
            "destroy": {
                "state": outcome.confirmed_state,
                "verb": outcome.verb,
                "meter_before": meter_before["total"],
                "meter_at_destroy": meter_at_destroy["total"],
                "meter_after": meter_after["total"],
                "seconds_after": 1.0,
                "clock": destroyed_clock,
                "billing_stopped": meter_after["total"] == meter_at_destroy["total"],
            },
            "meter": {k: meter_at_destroy[k] for k in ("compute", "storage", "bandwidth", "total")},
        }


def summarize(decision: Any) -> dict[str, Any]:
    """A gate decision in the report: allowed and the missing codes."""
    return {"allowed": decision.allowed, "missing": [m.code for m in decision.missing]}


def verification_summary(record: dict[str, Any], manifest_sha256: str) -> dict[str, Any]:
    """Files and bytes the verification covered (read from its record)."""
    totals = record.get("totals") or {}
    files = record.get("files")
    checkpoints = record.get("checkpoints")
    return {
        "files": int(totals.get("files", len(files) if isinstance(files, list) else 0)),
        "bytes": int(totals.get("bytes", 0)),
        "checkpoints_loaded": len(checkpoints) if isinstance(checkpoints, list) else 0,
        "manifest_sha256": record.get("manifest_sha256", manifest_sha256),
        "ok": True,
    }


def job_summary(local: Path, settings: DemoSettings, ckpt_every: int) -> dict[str, Any]:
    """The job's own account (pulled and verified): steps, starts, what the preemption cost,
    and whether the final weights equal those of an uninterrupted run of the same job."""
    from rgt.demo import job as demo_job_module

    folder = local / RESULT_DIR
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    starts = json.loads((folder / "starts.json").read_text(encoding="utf-8"))
    resumed = next((s for s in starts if s["resumed_from_step"] > 0), None)
    args = demo_job_module.parse_args(
        [f"--steps={settings.steps}", f"--ckpt-every={ckpt_every}", "--step-seconds=0"]
    )
    with tempfile.TemporaryDirectory(prefix="rgt-demo-twin-") as twin:
        twin_metrics = demo_job_module.train(
            args, Path(twin) / RESULT_DIR, Path(twin) / "ckpt", verbose=False
        )
    return {
        "steps": settings.steps,
        "final_step": metrics["steps"],
        "starts": len(starts),
        "start_log": starts,
        "preempted_at_step": resumed["previous_start_reached_step"] if resumed else None,
        "resumed_from_step": resumed["resumed_from_step"] if resumed else 0,
        "resume_checkpoint": resumed["checkpoint"] if resumed else None,
        "steps_lost": metrics["steps_redone"],
        # When the resumed job had redone the lost steps (or, none lost, when it started).
        "caught_up_at": (resumed.get("caught_up_at") or resumed["at"]) if resumed else None,
        "checkpoints_written": metrics["checkpoints_written"],
        "checkpoint_seconds": metrics["checkpoint_seconds"],
        "checkpoints_on_disk": sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt")),
        "final_loss": metrics["final_loss"],
        "max_weight_error": metrics["max_weight_error"],
        "weights_match_uninterrupted": metrics["weights"] == twin_metrics["weights"],
    }


def counterfactual_cost(
    meter: dict[str, float],
    bid_per_hour: float,
    billed_seconds: float,
    progress: dict[str, Any],
    job: dict[str, Any],
    *,
    clock_scale: float = 1.0,
) -> dict[str, Any]:
    """This run's meter next to the same run without the preemption.

    Without it, the box would not have waited paused nor redone the lost steps: the time from
    the preemption until the resumed job caught up again (measured on the box) is removed from
    storage time, and the running part of it (from the container's restart) from compute time.
    Rates are the meter's own (compute at the bid, storage per second of the rental's life);
    the bandwidth (the pull) is the same either way."""
    caught_up = job.get("caught_up_at") or progress["running_again_at"]
    extra_wall = max(0.0, caught_up - progress["preempted_at"]) * clock_scale
    extra_running = max(0.0, caught_up - progress["running_again_at"]) * clock_scale
    storage_rate = meter["storage"] / billed_seconds if billed_seconds > 0 else 0.0
    compute = max(0.0, meter["compute"] - bid_per_hour / 3600.0 * extra_running)
    storage = max(0.0, meter["storage"] - storage_rate * extra_wall)
    ideal = {"compute": compute, "storage": storage, "bandwidth": meter["bandwidth"]}
    ideal["total"] = sum(ideal.values())
    return {
        "actual": dict(meter),
        "without_preemption": ideal,
        "extra_wall_seconds": extra_wall,
        "extra_running_seconds": extra_running,
        "basis": (
            "This run: the emulator's meter at destroy. No preemption: the same rates without "
            f"the {extra_wall:.0f} billed seconds from the preemption until the job had redone "
            f"its lost steps ({extra_running:.0f} s of them running)."
        ),
    }
