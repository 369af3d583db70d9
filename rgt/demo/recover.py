"""`rgt demo --scenario recover`: a run that loses its host and finishes on another offer.

The same embedded emulator, job and approvals as the default demo (rgt.demo.scenario), but the
run is supervised by `rgt run`'s supervisor (rgt.supervisor) with durable checkpoints in a
bucket: a real S3 server on loopback (`rclone serve s3`, rgt.demo.bucket) with keys generated for
this demo, which reach the boxes only as env vars named in the job's secret_env (without an
rclone that can serve S3, the demo falls back to `durable: local` and says so). At about 40 % of
the job the first box's host goes offline (VAST7); once that has lasted the profile's
host_lost_grace (on the emulator's sped-up clock), the supervisor rents another offer, never that
machine, seeds it with the newest checkpoint verified off the box, and the job resumes there.
When the run's results are verified and its box destroyed, the dead first box is discarded
through rgt's discard gate (the reason its evidence proves) with the demo's approval. The report
shows the attempts, the steps lost, what was discarded, and the dollars by the emulator's meter
next to a restart from scratch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rgt.demo.bucket import BUCKET, REMOTE, start_bucket
from rgt.demo.scenario import (
    APPROVAL_TTL_SECONDS,
    DEMO_APPROVAL_CHANNEL,
    DEMO_TTY_CHANNEL,
    RESULT_DIR,
    Demo,
    DemoSettings,
    _set_environment,
    demo_job,
    require_emulator_instance,
    tty_answer,
    tty_confirm,
)
from rgt.errors import ProviderError, Refused
from rgt.job import DurableTarget

LOSE_HOST_AT_FRACTION = 0.4
# Emulator seconds per real second: the profile's 30-minute host_lost_grace passes in 3 s.
RECOVER_CLOCK_SCALE = 600.0
RECOVER_SETTINGS = DemoSettings(steps=400, step_seconds=0.05, clock_scale=RECOVER_CLOCK_SCALE)
# Every 2.5 s: a checkpoint (the job keeps its newest 3) lives long enough to be made durable.
CHECKPOINT_EVERY = 50
# A discard reason the demo tries for the dead box, in this order; the first its evidence proves
# is used (rgt.discard): host-lost needs the Offline state to have lasted host_lost_grace as rgt
# saw it (the supervisor's verdict, on the emulator's clock it runs on), superseded a later
# attempt resumed past a durable seed or its results verified and intact.
DISCARD_REASONS = ("host-lost", "superseded")
# Real seconds the meters are watched after the last meter-stop: none may move.
METER_WATCH_SECONDS = 1.0


class RecoverDemo(Demo):
    """The recover scenario; `run()` (rgt.demo.scenario.Demo) returns its report."""

    def _scenario(self, emulator: Any) -> dict[str, Any]:
        from rgt.profile import load_profile

        settings = self.settings
        profile = self.profile = load_profile("vastai")
        job = demo_job(settings, CHECKPOINT_EVERY, profile.overrides["data_dir"])
        self.bucket, why_not = start_bucket(self.demo_dir / "bucket", self.demo_dir / "s3.log")
        try:
            if self.bucket is None:
                self.say(f"demo: no S3 server ({why_not}); checkpoints go to `durable: local`")
                durable = {"target": "local", "fallback": why_not}
                job = replace(job, durable=DurableTarget("local"))
                with_keys: dict[str, str] = {}
            else:
                bucket = self.bucket
                durable = {
                    "target": "bucket",
                    "location": bucket.location(job.run_id),
                    "server": f"rclone serve s3 at {bucket.endpoint}",
                    "keys": "generated for this demo; on the boxes only as env vars named in "
                    "the job's secret_env",
                }
                self.say(f"demo: checkpoints go to {durable['location']} at {bucket.endpoint}")
                job = replace(
                    job,
                    durable=DurableTarget("bucket", REMOTE, f"{BUCKET}/{job.run_id}"),
                    env={**job.env, **bucket.plain_env()},
                    secret_env=tuple(bucket.secret_env()),
                )
                # rgt's own read-back here needs the whole remote, as the boxes get it.
                with_keys = {**bucket.plain_env(), **bucket.secret_env()}
            saved = {name: os.environ.get(name) for name in with_keys}
            try:
                _set_environment(with_keys)
                report = self._supervised(emulator, profile, job)
            finally:
                _set_environment(saved)
        finally:
            if self.bucket is not None:
                self.bucket.stop()
        report["durable"] = durable
        return report

    def _supervised(self, emulator: Any, profile: Any, job: Any) -> dict[str, Any]:
        """Run the job under the supervisor, lose the first host, discard the dead box; the
        report."""
        from rgt import runs
        from rgt.ledger import Ledger
        from rgt.providers.vastai import VastProvider
        from rgt.supervisor import RunRequest, Supervisor, attempt_summary

        settings = self.settings
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
        discarded = [
            self._discard(emulator, provider, instance_id) for instance_id in run.superseded
        ]
        billing = self._billing(emulator, history)
        meters = {k: v["meter_after"] for k, v in billing["per_instance"].items()}
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
            "discarded": discarded,
            "billing": billing,
            "dollars": {
                "actual": round(actual, 6),
                "restart_from_scratch": round(from_scratch, 6),
                "second_box_only": round(actual - meters[first], 6),
                "per_instance": {k: round(v, 6) for k, v in meters.items()},
                "basis": (
                    "the emulator's meter of each instance at the end, once every meter had "
                    "stopped (the lost box billed its disk while offline, until discarded); "
                    "from scratch: the second box's cost scaled from the steps it ran to the "
                    "whole job"
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

        held: set[int] = set()
        try:
            with Ledger.open() as ledger:
                # At ~40 %, once a checkpoint is durable off the box: the scenario shows a
                # resume, not a restart. On a busy machine the first copy may lag behind the
                # job, which would finish first: the demo holds the job there until it is.
                while step < target or newest_durable(run_id) is None:
                    if time.monotonic() > deadline or not thread.is_alive():
                        raise ProviderError("demo: the first attempt never reached its 40 %")
                    if instance_id is None:
                        history = runs.attempts(ledger, run_id)
                        instance_id = history[0].instance_id if history else None
                    elif provider.show(instance_id).state == "running":
                        step = self._progress(provider, instance_id)
                        if step >= target and not held:
                            held = hold_job(emulator.instance_disk(instance_id))
                            if held:
                                self.say(
                                    f"demo: holding the job at step {step} until a checkpoint "
                                    "is durable (this machine is busy)"
                                )
                    time.sleep(0.15)
            assert instance_id is not None
            emulator.take_host_offline(instance_id)  # SIGKILL: a held job dies as it is
            held = set()
        finally:
            signal_each(held, signal.SIGCONT)
        self.say(f"demo: the host of instance {instance_id} goes offline at step {step}")
        return instance_id, step

    def _discard(self, emulator: Any, provider: Any, instance_id: str) -> dict[str, Any]:
        """End a superseded box through the discard gate, for the first reason in
        DISCARD_REASONS its evidence proves, with the demo's approval; what happened."""
        from rgt.discard import loss_summary, may_discard
        from rgt.gate import discard_with_gate
        from rgt.ledger import Ledger

        with Ledger.open() as ledger:
            not_proven: dict[str, list[str]] = {}
            for reason in DISCARD_REASONS:
                decision = may_discard(
                    instance_id,
                    reason,
                    provider=provider,
                    ledger=ledger,
                    profile=self.profile,
                    require_approval=False,
                )
                if decision.allowed:
                    break
                not_proven[reason] = [f"{m.code}: {m.message}" for m in decision.missing]
            else:
                self.say(f"demo: instance {instance_id} cannot be discarded: {not_proven}")
                return {"instance_id": instance_id, "reason": None, "not_proven": not_proven}
            approval_id = self._approve(
                emulator, ledger, instance_id, purpose="discard", summary=loss_summary(decision)
            )
            at_discard = emulator.meter(instance_id)["total"]
            outcome = discard_with_gate(
                instance_id,
                reason,
                provider=provider,
                ledger=ledger,
                profile=self.profile,
                approval_id=approval_id,
            )
        self.say(f"demo: instance {instance_id} discarded through the gate ({reason})")
        return {
            "instance_id": instance_id,
            "reason": reason,
            "not_proven": not_proven,
            "approval_id": approval_id,
            "state": outcome.confirmed_state,
            "meter_at_discard": round(at_discard, 6),
        }

    def _billing(self, emulator: Any, history: list[Any]) -> dict[str, Any]:
        """Whether anything of the demo still bills: instances not destroyed, and every
        instance's meter before and after METER_WATCH_SECONDS (it must not move)."""
        ids = [str(a.instance_id) for a in history if a.instance_id is not None]
        before = {i: emulator.meter(i)["total"] for i in ids}
        time.sleep(METER_WATCH_SECONDS)
        after = {i: emulator.meter(i)["total"] for i in ids}
        alive = [str(i) for i in emulator.instance_ids()]
        return {
            "instances_not_destroyed": alive,
            "per_instance": {
                i: {"meter_before": round(before[i], 6), "meter_after": round(after[i], 6)}
                for i in ids
            },
            "seconds_watched": METER_WATCH_SECONDS,
            "stopped": not alive and before == after,
        }

    def _approve(
        self,
        emulator: Any,
        ledger: Any,
        instance_id: str,
        *,
        purpose: str = "destroy",
        summary: str = "",
    ) -> int:
        from rgt.providers.vastai import VastProvider

        require_emulator_instance(VastProvider(api_url=emulator.url), emulator, instance_id)
        if self.yes:
            channel = DEMO_APPROVAL_CHANNEL
        else:
            if purpose == "discard" and self.confirm is tty_answer:
                typed = tty_discard_answer(instance_id, summary)
            else:
                typed = self.confirm(instance_id)
            if typed != str(instance_id):
                raise Refused(
                    f"typed {typed!r}, not {instance_id!r}: nothing approved, instance "
                    f"{instance_id} not {purpose}ed"
                )
            channel = DEMO_TTY_CHANNEL
        return int(
            ledger.record_approval(instance_id, channel, APPROVAL_TTL_SECONDS, purpose=purpose)
        )


def hold_job(disk: Path) -> set[int]:
    """Stop (SIGSTOP) the demo job's processes on the emulated box whose disk is `disk`; its
    watcher, sshd and boot hook keep running, so its checkpoints can still be made durable.
    The ids of the processes stopped (none once the job has ended)."""
    marker = f"RGT_BOX_ROOT={disk}".encode()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"rgt.demo.job" in command and marker in Path(f"/proc/{entry}/environ").read_bytes():
                found.add(int(entry))
        except OSError:
            continue  # gone meanwhile, or not this user's
    signal_each(found, signal.SIGSTOP)
    return found


def signal_each(pids: set[int], signum: int) -> None:
    """Send `signum` to each of `pids` that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def tty_discard_answer(instance_id: str, summary: str) -> str:
    """Show what a discard loses and ask on the terminal to type the instance id back."""
    return tty_confirm(
        f"{summary}\nApprove DISCARDING emulated instance {instance_id} (its results are not "
        "pulled)."
    )


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def render_recover_text(report: dict[str, Any]) -> str:
    """The recover scenario's report for humans."""
    lines = [f"rgt demo --scenario recover: run {report['run_id']}: {report['status']}"]
    durable = report["durable"]
    if durable["target"] == "bucket":
        lines.append(
            f"  checkpoints off the box: bucket {durable['location']} ({durable['server']}; "
            f"keys {durable['keys']})"
        )
    else:
        lines.append(
            f"  checkpoints off the box: `durable: local` (fallback: no S3 server: "
            f"{durable['fallback']})"
        )
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
    lines.append(f"  rgt run, when it ended: {report['message']}")
    for item in report["discarded"]:
        if item["reason"] is None:
            lines.append(
                f"  instance {item['instance_id']}: NOT discarded, no reason proven: "
                + "; ".join(f"{r}: {', '.join(why)}" for r, why in item["not_proven"].items())
            )
            continue
        lines.append(
            f"  then instance {item['instance_id']} (dead box) discarded through the gate: "
            f"--reason {item['reason']}, approval #{item['approval_id']}"
            + "".join(  # the codes only: the JSON report has the gate's sentences
                f"; not {r} ({', '.join(w.split(':')[0] for w in why)})"
                for r, why in item["not_proven"].items()
            )
        )
    billing = report["billing"]
    lines.append(
        "  at the end nothing bills: every instance destroyed or discarded, no meter moved in "
        f"{billing['seconds_watched']:g} s"
        if billing["stopped"]
        else f"  STILL BILLING: instances {', '.join(billing['instances_not_destroyed']) or '-'}"
        " not destroyed, or a meter still moving"
    )
    return "\n".join(lines) + "\n"
