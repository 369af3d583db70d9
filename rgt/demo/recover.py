"""`rgt demo --scenario recover`: a run that loses its host and finishes on another offer.

The same embedded emulator, job and approvals as the default demo (rgt.demo.scenario), but the
run is supervised by `rgt run`'s supervisor (rgt.supervisor) with durable checkpoints
(`durable: local`): at about 40 % of the job the first box's host goes offline (VAST7); once that
has lasted the profile's host_lost_grace (on the emulator's sped-up clock), the supervisor rents
another offer, never that machine, seeds it with the newest checkpoint verified off the box, and
the job resumes there. The report shows the attempts, the steps lost, and the dollars next to a
restart from scratch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rgt.demo.scenario import (
    APPROVAL_TTL_SECONDS,
    DEMO_APPROVAL_CHANNEL,
    DEMO_TTY_CHANNEL,
    RESULT_DIR,
    Demo,
    DemoSettings,
    demo_job,
    require_emulator_instance,
)
from rgt.errors import ProviderError, Refused

LOSE_HOST_AT_FRACTION = 0.4
# Emulator seconds per real second: the profile's 30-minute host_lost_grace passes in 3 s.
RECOVER_CLOCK_SCALE = 600.0
RECOVER_SETTINGS = DemoSettings(steps=400, step_seconds=0.05, clock_scale=RECOVER_CLOCK_SCALE)
# Every 2.5 s: a checkpoint (the job keeps its newest 3) lives long enough to be made durable.
CHECKPOINT_EVERY = 50


class RecoverDemo(Demo):
    """The recover scenario; `run()` (rgt.demo.scenario.Demo) returns its report."""

    def _scenario(self, emulator: Any) -> dict[str, Any]:
        from rgt import runs
        from rgt.ledger import Ledger
        from rgt.profile import load_profile
        from rgt.providers.vastai import VastProvider
        from rgt.supervisor import RunRequest, Supervisor, attempt_summary

        settings = self.settings
        profile = self.profile = load_profile("vastai")
        job = demo_job(settings, CHECKPOINT_EVERY, profile.overrides["data_dir"])
        job = replace(job, durable=_local_target())
        self.results_root: str = job.results_root
        request = RunRequest(job=job, max_price_per_hour=10.0)
        outcome: dict[str, Any] = {}

        def supervise() -> None:
            with Ledger.open() as ledger:
                supervisor = Supervisor(
                    request,
                    provider=VastProvider(api_url=emulator.url),
                    ledger=ledger,
                    profile=profile,
                    approve=lambda ledger, instance_id, _summary: self._approve(
                        emulator, ledger, instance_id
                    ),
                    say=lambda line: self.say(f"demo: rgt run: {line}"),
                    clock=emulator.clock.now,
                    interval=0.3,
                )
                try:
                    outcome["run"] = supervisor.supervise()
                except BaseException as exc:  # reported by the main thread
                    outcome["error"] = exc

        thread = threading.Thread(target=supervise, name="rgt-demo-run", daemon=True)
        thread.start()
        provider = VastProvider(api_url=emulator.url)
        first, lost_at = self._lose_host(emulator, provider, job.run_id, thread)
        thread.join(settings.timeout_seconds)
        if thread.is_alive():
            raise ProviderError("demo: the supervised run did not finish in time")
        if "error" in outcome:
            raise outcome["error"]
        run = outcome["run"]
        with Ledger.open() as ledger:
            history = runs.attempts(ledger, job.run_id)
        last = history[-1]
        local = Path(str(run.results_dir))
        starts = _read_json(local / RESULT_DIR / "starts.json")
        resumed_from = int(starts[0]["resumed_from_step"]) if starts else 0
        meters = {
            str(a.instance_id): emulator.meter(a.instance_id)["total"]
            for a in history
            if a.instance_id is not None
        }
        actual = sum(meters.values())
        finished = meters[str(last.instance_id)]
        done_there = settings.steps - resumed_from
        # A restart from scratch would have run every step on the second box, not only the
        # ones after the seed: its cost scaled to the whole job (first box's cost unchanged).
        from_scratch = actual - finished + finished * settings.steps / max(1, done_there)
        return {
            "scenario": "recover",
            "run_id": job.run_id,
            "status": run.status,
            "message": run.message,
            "attempts": [attempt_summary(a) for a in history],
            "lost_host_at_step": lost_at,
            "resumed_from_step": resumed_from,
            "steps_lost": max(0, lost_at - resumed_from),
            "steps": settings.steps,
            "superseded": run.superseded,
            "dollars": {
                "actual": round(actual, 6),
                "restart_from_scratch": round(from_scratch, 6),
                "second_box_only": round(actual - meters[first], 6),
                "per_instance": {k: round(v, 6) for k, v in meters.items()},
                "basis": (
                    "the emulator's meter of each instance at the end (the lost box kept "
                    "billing its disk while offline); from scratch: the second box's cost "
                    "scaled from the steps it ran to the whole job"
                ),
            },
            "clock_scale": RECOVER_CLOCK_SCALE,
            "demo_dir": str(self.demo_dir),
        }

    def _lose_host(
        self, emulator: Any, provider: Any, run_id: str, thread: threading.Thread
    ) -> tuple[str, int]:
        """Wait for attempt 1's job to pass LOSE_HOST_AT_FRACTION, then take its host offline;
        (its instance id, the step it had reached)."""
        from rgt import runs
        from rgt.ledger import Ledger

        deadline = time.monotonic() + self.settings.timeout_seconds
        target = int(self.settings.steps * LOSE_HOST_AT_FRACTION)
        instance_id: str | None = None
        step = 0
        from rgt.durable import newest_durable

        with Ledger.open() as ledger:
            # At ~40 %, once a checkpoint is durable off the box (on a slow machine the first
            # copy may lag behind the job): the scenario shows a resume, not a restart.
            while step < target or newest_durable(run_id) is None:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise ProviderError("demo: the first attempt never reached its 40 %")
                if instance_id is None:
                    history = runs.attempts(ledger, run_id)
                    instance_id = history[0].instance_id if history else None
                elif provider.show(instance_id).state == "running":
                    step = self._progress(provider, instance_id)
                time.sleep(0.15)
        assert instance_id is not None
        emulator.take_host_offline(instance_id)
        self.say(f"demo: the host of instance {instance_id} goes offline at step {step}")
        return instance_id, step

    def _approve(self, emulator: Any, ledger: Any, instance_id: str) -> int:
        from rgt.providers.vastai import VastProvider

        require_emulator_instance(VastProvider(api_url=emulator.url), emulator, instance_id)
        if self.yes:
            channel = DEMO_APPROVAL_CHANNEL
        else:
            typed = self.confirm(instance_id)
            if typed != str(instance_id):
                raise Refused(
                    f"typed {typed!r}, not {instance_id!r}: nothing approved, instance "
                    f"{instance_id} not destroyed"
                )
            channel = DEMO_TTY_CHANNEL
        return int(ledger.record_approval(instance_id, channel, APPROVAL_TTL_SECONDS))


def _local_target() -> Any:
    from rgt.job import DurableTarget

    return DurableTarget("local")


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def render_recover_text(report: dict[str, Any]) -> str:
    """The recover scenario's report for humans."""
    lines = [f"rgt demo --scenario recover: run {report['run_id']}: {report['status']}"]
    for attempt in report["attempts"]:
        lines.append(
            f"  attempt {attempt['attempt']}: instance {attempt['instance_id']} (machine "
            f"{attempt['machine_id']}) from {attempt['seed'] or 'scratch'}: "
            f"{attempt['ended'] or 'running'}"
        )
    dollars = report["dollars"]
    lines += [
        f"  host lost at step {report['lost_host_at_step']} of {report['steps']}; resumed from "
        f"step {report['resumed_from_step']}: {report['steps_lost']} steps lost",
        f"  dollars: ${dollars['actual']:.4f} with recovery vs "
        f"${dollars['restart_from_scratch']:.4f} restarting from scratch",
        f"  ({dollars['basis']})",
    ]
    if report["superseded"]:
        lines.append(
            f"  superseded, still billing its disk: {', '.join(report['superseded'])} "
            "(`rgt discard ID --reason superseded` ends it, a human approves)"
        )
    lines.append(f"  {report['message']}")
    return "\n".join(lines) + "\n"
