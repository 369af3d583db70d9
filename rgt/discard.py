"""Discard: ending a rental whose results will not be saved, only for a reason proven from
evidence and with a human's explicit word.

A destroy needs the results pulled and verified. Some rentals have nothing that can pass that
test and would bill forever: the job failed, the host vanished, a later attempt already
delivered the run, or the box never held anything. `may_discard` allows ending them only in
the situation the caller names, each checked from evidence rgt gathers itself:

    failed-job       the job's status record (on the box now, when it can be read) says
                     failed, and the record and logs were copied off the box first
                     (`rgt poll` does that when it sees the failure)
    host-lost        the provider's own state is Offline, or stuck in Scheduling, and has been
                     for at least the profile's `host_lost_grace` as rgt observed it (or `rgt
                     run` ended its attempt for that, measured on the supervisor's clock, and no
                     other state was seen since)
    superseded       a later instance of the same run was pulled and verified, and those local
                     files are still what was verified; or, mid-run, the box is an attempt of a
                     supervised run that ended superseded (rgt.runs.SUPERSEDED_REASONS), a later
                     attempt was seeded from a durable checkpoint still in the run's index and
                     still intact off the box (a local copy is re-hashed; a bucket's recorded
                     read-back counts) whose step is at least the newest step this box is known
                     to have written, and that later attempt has resumed past its seed (a newer
                     verified checkpoint of its own in the index, or its status record says so)
    nothing-to-keep  the box is reachable, its results root holds no file, and its job status
                     record names no checkpoint

and, on top, a discard approval for exactly this instance that the caller just obtained from a
human (the terminal or the MCP prompt), who was shown what is lost (`loss_summary`). The
meter-stop itself is `rgt.gate.discard_with_gate`: the same lock, claim and verb as a destroy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rgt.gate import GateDecision, Missing, _rented_for_run
from rgt.ledger import Ledger
from rgt.nextstep import Step
from rgt.providers.base import Instance, Provider

REASONS: dict[str, str] = {
    "failed-job": "the job failed; its recorded failure and its logs were copied off the box",
    "host-lost": "the host is Offline (or the box stuck waiting for its GPU) past the profile's "
    "host_lost_grace",
    "superseded": "a later instance of the same run finished and its results were verified, "
    "or a later attempt resumed past a durable checkpoint at least as new as this box's",
    "nothing-to-keep": "the box holds no results and its job wrote no checkpoint",
}
# The provider states in which a box's host counts as lost once they have lasted the grace.
LOST_STATES = frozenset({"offline", "scheduling"})
# How an instance event's detail starts when `rgt run` ended an attempt because its box stayed
# in one of LOST_STATES past host_lost_grace, measured on the supervisor's own clock (the one
# its attempts' lost_since is on; an emulator's in the demo and tests).
LOST_VERDICT = "host lost past host_lost_grace: rgt run ended its attempt"


def may_discard(
    instance_id: str,
    reason: str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Any,
    approval_id: int | None = None,
    require_approval: bool = True,
    now: float | None = None,
) -> GateDecision:
    """Decide whether `instance_id` may be discarded now for `reason`. Never raises: an error
    while collecting evidence is a `gate-error` item (fail closed). `evidence["lost"]` says
    what a discard loses, for the human's prompt and the ledger."""
    decision = GateDecision(instance_id=str(instance_id), allowed=False, action="discard")
    try:
        _collect(
            decision,
            reason,
            provider,
            ledger,
            profile,
            approval_id,
            require_approval,
            time.time() if now is None else now,
        )
    except Exception as exc:  # fail closed
        decision.missing.append(Missing("gate-error", f"{type(exc).__name__}: {exc}"))
    decision.allowed = not decision.missing
    return decision


def _collect(
    decision: GateDecision,
    reason: str,
    provider: Provider,
    ledger: Ledger,
    profile: Any,
    approval_id: int | None,
    require_approval: bool,
    now: float,
) -> None:
    instance_id = decision.instance_id
    missing = decision.missing
    if reason not in REASONS:
        missing.append(
            Missing("bad-reason", f"reason {reason!r}: allowed are {', '.join(REASONS)}")
        )
        return
    instance = provider.show(instance_id)
    decision.evidence["state"] = instance.state
    if instance.state == "gone":
        missing.append(Missing("instance-gone", f"instance {instance_id} is already gone"))
        return
    record = ledger.instance(provider.platform, instance_id)
    run_id = _rented_for_run(instance.label, ledger, provider.platform, instance_id)
    results_root = record.results_root if record is not None else None
    status, status_bytes = _box_status(provider, instance, profile, run_id)
    local = _local_status(run_id)
    lost = _what_is_lost(provider, instance, ledger, results_root, run_id, status or local[0])
    decision.evidence["reason"] = reason
    decision.evidence["run_id"] = run_id
    decision.evidence["lost"] = lost

    if reason == "failed-job":
        _failed_job(decision, instance, run_id, status, status_bytes, local, now)
    elif reason == "host-lost":
        _host_lost(decision, instance, ledger, provider.platform, profile, now)
    elif reason == "superseded":
        _superseded(decision, ledger, provider, profile, instance, run_id, status)
    else:
        _nothing_to_keep(decision, instance, results_root, status, lost)

    if require_approval:
        _discard_approval(decision, ledger, instance_id, approval_id, reason, now)


def _box_status(
    provider: Provider, instance: Instance, profile: Any, run_id: str | None
) -> tuple[Any, bytes | None]:
    """The job status record on the box (parsed, raw) when the box runs and has one."""
    from rgt.jobstatus import parse_status, status_remote_path

    if instance.state != "running" or run_id is None:
        return None, None
    try:
        data = provider.read_remote_file(instance.id, status_remote_path(profile, run_id))
        return parse_status(data), data
    except Exception:
        return None, None


def _local_status(run_id: str | None) -> tuple[Any, bytes | None, list[str]]:
    """The status record copied off the box into the run's local dir, its bytes, and which
    logs sit beside it."""
    from rgt.jobstatus import STATUS_NAME, parse_status
    from rgt.paths import run_dir

    if run_id is None:
        return None, None, []
    folder = run_dir(run_id)
    try:
        data = (folder / STATUS_NAME).read_bytes()
        status = parse_status(data)
    except Exception:
        return None, None, []
    logs = sorted(p.name for p in folder.glob("*.log") if p.is_file())
    return status, data, logs


def _what_is_lost(
    provider: Provider,
    instance: Instance,
    ledger: Ledger,
    results_root: str | None,
    run_id: str | None,
    status: Any,
) -> dict[str, Any]:
    """What the box may hold that a discard deletes, as far as rgt can tell now."""
    lost: dict[str, Any] = {
        "run_id": run_id,
        "results_root": results_root,
        "files_on_box": None,
        "bytes_on_box": None,
        "last_checkpoint": getattr(status, "last_checkpoint", None),
        "attempt": getattr(status, "attempt", None),
        "verified_pull": ledger.latest_verification(instance.id) is not None,
        "disk_gb": instance.disk_gb,
    }
    if instance.state == "running" and results_root:
        files = _listed_files(provider, instance.id, results_root)
        if files is not None:
            lost["files_on_box"] = len(files)
            lost["bytes_on_box"] = sum(size for _, size in files)
    return lost


def _listed_files(provider: Provider, instance_id: str, root: str) -> list[tuple[str, int]] | None:
    """(path, size) of every regular file under `root` on the box; [] when `root` does not
    exist; None when the box cannot be listed."""
    from rgt import boxtree

    try:
        data = provider.run_remote_command(
            instance_id, boxtree.find_command(root), max_bytes=boxtree.LISTING_MAX_BYTES
        )
        entries = boxtree.parse_listing(data)
    except Exception as exc:
        # The job never created its results root: nothing there.
        return [] if "No such file or directory" in str(exc) else None
    # The manifest describes results; it is not one.
    return [(e.path, e.size) for e in entries if e.kind == "f" and e.path != boxtree.MANIFEST_NAME]


def _failed_job(
    decision: GateDecision,
    instance: Instance,
    run_id: str | None,
    status: Any,
    status_bytes: bytes | None,
    local: tuple[Any, bytes | None, list[str]],
    now: float,
) -> None:
    missing = decision.missing
    if run_id is None:
        missing.append(
            Missing(
                "no-job-record",
                f"instance {instance.id} carries no rgt run label, so rgt has no job status "
                "record of it to prove a failure",
            )
        )
        return
    if status is not None and status.outcome != "failed":
        if status.is_running(now):
            text = "is still running: wait for it (`{next}`)"
        elif status.outcome == "succeeded":
            text = "SUCCEEDED: pull, verify and destroy it instead; nothing needs discarding"
        else:
            text = f"is {'stale' if status.is_stale(now) else status.outcome}, not failed"
        missing.append(
            Missing(
                "job-not-failed",
                f"the job status record on the box says the job of run {run_id} {text}",
                Step.of("poll", instance_id=instance.id, wait=True),
            )
        )
        return
    local_status, local_bytes, logs = local
    decision.evidence["job_status"] = "failed" if local_status is not None else None
    if local_status is None or local_status.outcome != "failed":
        missing.append(
            Missing(
                "logs-not-pulled",
                f"no failed job status record of run {run_id} was copied off the box: run "
                "`{next}` (it copies a failed job's record and logs) first",
                Step.of("poll", instance_id=instance.id),
            )
        )
        return
    if status_bytes is not None and status_bytes != local_bytes:
        missing.append(
            Missing(
                "logs-stale",
                "the status record on the box changed since it was copied (a new attempt?): "
                "run `{next}` again",
                Step.of("poll", instance_id=instance.id),
            )
        )
    if not logs:
        missing.append(
            Missing(
                "logs-not-pulled",
                "the job's logs were not copied off the box: run `{next}`",
                Step.of("poll", instance_id=instance.id),
            )
        )
    decision.evidence["failure"] = {
        "exit_code": local_status.exit_code,
        "attempt": local_status.attempt,
        "logs": logs,
    }


def _host_lost(
    decision: GateDecision,
    instance: Instance,
    ledger: Ledger,
    platform: str,
    profile: Any,
    now: float,
) -> None:
    missing = decision.missing
    grace = getattr(profile, "host_lost_grace_seconds", None)
    if instance.state not in LOST_STATES:
        missing.append(
            Missing(
                "host-not-lost",
                f"instance {instance.id} is {instance.state}, not "
                f"{' or '.join(sorted(LOST_STATES))} (the provider's own state): its host is not "
                "lost",
            )
        )
        return
    # When rgt first saw the current streak of lost states; this call's look starts a streak.
    # A supervisor's verdict within the streak says it lasted the grace on the supervisor's
    # clock, by which the run moved on: the same measure, not a second clock's.
    history = ledger.state_history(instance.id)
    since = None
    verdict = None
    for at, state, detail in reversed(history):
        if state not in LOST_STATES:
            break
        since = at
        if verdict is None and (detail or "").startswith(LOST_VERDICT):
            verdict = detail
    if verdict is not None and grace is not None:
        decision.evidence["lost_since"] = since
        decision.evidence["lost_verdict"] = verdict
        return
    if since is None:
        ledger.record_state(platform, instance.id, instance.state, detail="seen by discard")
        since = now
    lasted = now - since
    decision.evidence["lost_since"] = since
    if grace is None:
        missing.append(
            Missing(
                "no-host-lost-grace",
                f"profile {getattr(profile, 'name', '?')!r} sets no host_lost_grace, so rgt "
                "cannot tell a lost host from a slow one",
            )
        )
    elif lasted < grace:
        until = time.strftime("%H:%M", time.localtime(since + grace))
        missing.append(
            Missing(
                "host-lost-too-soon",
                f"instance {instance.id} has been {instance.state} for {lasted / 60:.0f} min as "
                f"rgt saw it (first seen {time.strftime('%H:%M', time.localtime(since))}); the "
                f"profile's host_lost_grace is {grace / 60:.0f} min: try again after {until} "
                "(`rgt poll` meanwhile keeps the record)",
            )
        )


def _superseded(
    decision: GateDecision,
    ledger: Ledger,
    provider: Provider,
    profile: Any,
    instance: Instance,
    run_id: str | None,
    status: Any,
) -> None:
    """A later instance's results verified (the end of the run), or mid-run a later attempt
    that resumed past a durable checkpoint at least as new as anything this box wrote."""
    from rgt.verify import check_unchanged

    instance_id = instance.id
    mine = ledger.instance(provider.platform, instance_id)
    if run_id is None or mine is None:
        decision.missing.append(
            Missing(
                "no-later-attempt",
                f"instance {instance_id} is not an rgt rental of a known run, so no later "
                "attempt of its run can be found",
            )
        )
        return
    for other in ledger.instances(provider.platform):
        if other.instance_id == instance_id or other.created < mine.created:
            continue
        verification = ledger.latest_verification(other.instance_id)
        if verification is None or verification.run_id != run_id:
            continue
        if check_unchanged(Path(verification.local_dir), ledger=ledger) is None:
            decision.evidence["superseded_by"] = {
                "instance_id": other.instance_id,
                "verified": verification.local_dir,
            }
            return
    mid_run = _resumed_past(decision, ledger, provider, profile, instance, status)
    if mid_run is None:
        return
    code, text = mid_run
    verified_too = "; or pull and verify a later attempt's results" if code else ""
    decision.missing.append(
        Missing(
            code or "no-later-attempt",
            text + verified_too
            if code
            else f"no later instance of run {run_id} has verified results that are still intact "
            "locally: pull and verify the later attempt first",
        )
    )


def _resumed_past(
    decision: GateDecision,
    ledger: Ledger,
    provider: Provider,
    profile: Any,
    instance: Instance,
    status: Any,
) -> tuple[str, str] | None:
    """The mid-run evidence for `superseded` (see the module docstring), checked from rgt's own
    records: None when it holds (evidence["superseded_by"] says how), else (code, what is
    missing); code "" when the box is no superseded attempt of a supervised run at all."""
    from rgt import durable, runs

    mine = runs.superseded_attempt(ledger, instance.id)
    if mine is None:
        return "", ""
    later = [
        a
        for a in runs.attempts(ledger, mine.run_id)
        if a.number > mine.number and a.instance_id is not None
    ]
    if not later:
        return (
            "no-later-attempt",
            f"attempt {mine.number} of run {mine.run_id} ended ({mine.end_reason}) but no later "
            "attempt has rented a box yet",
        )
    index = durable.durable_index(mine.run_id)
    own = [e.step for e in index if e.instance_id == instance.id and e.step is not None]
    durable_step = max(own) if own else None
    # The box's own status record, read from it now (only while it runs: rgt keeps no copy of a
    # running job's record); it may name a checkpoint never made durable.
    live = getattr(status, "last_checkpoint", None)
    live_step = durable.step_of(Path(live).name) if live else None
    known = max((s for s in (durable_step, live_step) if s is not None), default=None)
    first_missing: tuple[str, str] | None = None
    for attempt in reversed(later):  # the newest later attempt first: the run depends on it
        found = _resumed_attempt(attempt, index, known, live, provider, profile)
        if isinstance(found, dict):
            decision.evidence["superseded_by"] = {
                "attempt": attempt.number,
                "instance_id": attempt.instance_id,
                **found,
                "box_newest_durable_step": durable_step,
                "box_status_checkpoint": live,
                "box_read": instance.state == "running" and status is not None,
            }
            return None
        first_missing = first_missing or found
    return first_missing


def _resumed_attempt(
    attempt: Any,
    index: list[Any],
    known: int | None,
    live: str | None,
    provider: Provider,
    profile: Any,
) -> dict[str, Any] | tuple[str, str]:
    """How `attempt` resumed past a seed at least as new as step `known` (a dict for the
    evidence), or (code, what is missing)."""
    number = attempt.number
    if attempt.seed_name is None:
        return "no-durable-seed", f"attempt {number} started from scratch, not from a durable seed"
    seed = next((e for e in index if e.name == attempt.seed_name), None)
    if seed is None:
        return (
            "no-durable-seed",
            f"attempt {number}'s seed {attempt.seed_name} is no longer in the run's durable index",
        )
    seed_step = attempt.seed_step if attempt.seed_step is not None else seed.step
    if seed_step is None:
        return (
            "no-durable-seed",
            f"attempt {number}'s seed {seed.name} carries no step, so rgt cannot compare it",
        )
    if known is not None and known > seed_step:
        where = f" (its status record names {live})" if live else ""
        return (
            "seed-behind-box",
            f"this box wrote step {known}{where}, newer than attempt {number}'s seed step "
            f"{seed_step}: its work past the seed is not in the run",
        )
    newer = [
        e
        for e in index
        if e.instance_id == attempt.instance_id and e.step is not None and e.step > seed_step
    ]
    if newer:
        resumed_step, via = max(e.step for e in newer), "durable index"
    else:
        resumed_step, via = _status_step(provider, profile, attempt), "status record on the box"
    if resumed_step is None or resumed_step <= seed_step:
        return (
            "not-resumed",
            f"attempt {number} has not yet written a checkpoint past its seed step {seed_step}",
        )
    if seed.target == "local":
        # The run now depends on this file: it must still be what was verified. Hashed last:
        # the supervisor asks every interval, and a checkpoint may be gigabytes.
        from rgt.durable import _hash_file

        try:
            actual, size = _hash_file(Path(seed.location))
        except OSError as exc:
            return (
                "seed-changed",
                f"attempt {number}'s seed {seed.location} cannot be read ({exc.strerror})",
            )
        if (actual, size) != (seed.sha256, seed.size):
            return (
                "seed-changed",
                f"attempt {number}'s seed {seed.location} changed since it was verified "
                f"(sha256 {actual}, the index says {seed.sha256})",
            )
    return {
        "seed": seed.name,
        "seed_step": seed_step,
        "seed_target": seed.target,
        "resumed_step": resumed_step,
        "resumed_via": via,
    }


def _status_step(provider: Provider, profile: Any, attempt: Any) -> int | None:
    """The checkpoint step the attempt's status record names, read from its box now."""
    from rgt.durable import step_of
    from rgt.jobstatus import parse_status, status_remote_path

    try:
        if provider.show(str(attempt.instance_id)).state != "running":
            return None
        data = provider.read_remote_file(
            str(attempt.instance_id), status_remote_path(profile, attempt.run_id)
        )
        checkpoint = parse_status(data).last_checkpoint
    except Exception:
        return None
    return step_of(Path(checkpoint).name) if checkpoint else None


def _nothing_to_keep(
    decision: GateDecision,
    instance: Instance,
    results_root: str | None,
    status: Any,
    lost: dict[str, Any],
) -> None:
    missing = decision.missing
    if instance.state != "running":
        missing.append(
            Missing(
                "box-unreachable",
                f"instance {instance.id} is {instance.state}: rgt can only see that a box holds "
                "nothing while it runs (for a lost host use --reason host-lost)",
            )
        )
        return
    if results_root is None or lost["files_on_box"] is None:
        missing.append(
            Missing(
                "box-not-empty",
                "rgt cannot list the job's results root on the box (not an rgt launch, or the "
                "listing failed), so it cannot show the box holds nothing",
            )
        )
    elif lost["files_on_box"]:
        missing.append(
            Missing(
                "box-not-empty",
                f"{results_root} on the box holds {lost['files_on_box']} file(s): pull them "
                "(with a manifest) and destroy, or discard for another proven reason",
            )
        )
    if status is None:
        missing.append(
            Missing(
                "box-not-empty",
                "the box has no readable job status record, so rgt cannot tell whether the job "
                "wrote a checkpoint",
            )
        )
    elif status.last_checkpoint:
        missing.append(
            Missing(
                "box-not-empty",
                f"the job wrote checkpoint {status.last_checkpoint}: there is something to keep",
            )
        )


def _discard_approval(
    decision: GateDecision,
    ledger: Ledger,
    instance_id: str,
    approval_id: int | None,
    reason: str,
    now: float,
) -> None:
    how = (
        f"a human approves it at a terminal (`rgt discard {instance_id} --reason {reason}`: "
        "shown what is lost, types `discard ID` and the passphrase) or in the MCP discard prompt"
    )
    record = None if approval_id is None else ledger.approval(approval_id)
    if (
        record is None
        or record.instance_id != instance_id
        or record.purpose != "discard"
        or not record.usable(now)
    ):
        decision.missing.append(Missing("no-discard-approval", f"no discard approval: {how}"))
        return
    decision.evidence["approval"] = {
        "id": record.id,
        "channel": record.channel,
        "expires": record.expires,
    }


def loss_summary(decision: GateDecision) -> str:
    """What a discard loses, in the words shown to the human before they approve it."""
    lost = decision.evidence.get("lost") or {}
    reason = str(decision.evidence.get("reason", "?"))
    lines = [
        f"Discard instance {decision.instance_id} ({reason}: {REASONS.get(reason, '?')}).",
        "What is LOST (nothing of it is pulled or verified):",
    ]
    if lost.get("files_on_box") is not None:
        from rgt.progress import human_bytes

        lines.append(
            f"  {lost['files_on_box']} file(s), {human_bytes(int(lost['bytes_on_box'] or 0))}, "
            f"under {lost.get('results_root')} on the box"
        )
    else:
        disk = f" (its disk: {lost['disk_gb']:g} GB)" if lost.get("disk_gb") else ""
        lines.append(f"  whatever the box holds: rgt cannot list it now{disk}")
    checkpoint = lost.get("last_checkpoint")
    lines.append(
        f"  last checkpoint known: {checkpoint} (attempt {lost.get('attempt')})"
        if checkpoint
        else "  last checkpoint known: none"
    )
    if lost.get("verified_pull"):
        lines.append("  (an earlier verified pull of this instance exists locally)")
    later = decision.evidence.get("superseded_by") or {}
    if "seed_step" in later:
        durable_step = later.get("box_newest_durable_step")
        lines.append(
            f"  this box's work after step {durable_step}, its newest checkpoint verified off the "
            "box"
            if durable_step is not None
            else "  all of this box's work: none of its checkpoints was verified off the box"
        )
        lines.append(
            f"  (the run goes on: attempt {later['attempt']} (instance {later['instance_id']}) "
            f"resumed from {later['seed']} (step {later['seed_step']}) and has reached step "
            f"{later['resumed_step']})"
        )
        if not later.get("box_read"):
            lines.append(
                "  what this box did after its last durable checkpoint is UNKNOWN: rgt cannot "
                "read it now"
            )
    return "\n".join(lines)
