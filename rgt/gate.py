"""The Teardown Iron Law: no rented instance is destroyed until its results outlive it.

`may_destroy` is the ONE decision function (the CLI and the MCP server both call it);
`destroy_with_gate` is the ONLY code path in rgt that calls the provider's meter-stop verb.

Evidence, all re-checked at decision time, none taken on trust from a file an agent can write:

1. **Manifest on the box.** The manifest is re-read from the box now
   (``provider.read_remote_file``); it must name this instance, and — for an instance rgt
   launched — the run it was rented for (its ``rgt:<run_id>`` label), the job's results root
   and the job's exact roster (recorded in the ledger at launch), so a pull of some other
   directory cannot unlock a destroy.
2. **A pull matching it exactly.** The ledger's latest pull of this instance has the same
   manifest SHA-256 as the box has now, and the manifest saved next to the local files still
   has it too.
3. **A verification that is still true.** The ledger's latest verification of this instance
   binds the same manifest SHA-256 and the same local directory, is newer than the pull, and
   the local files are unchanged since (``rgt.verify.check_unchanged``; see its docstring for
   what is compared and what that costs), and it names the SHA-256 of the pull's row.
4. **A fresh human approval** for exactly this instance id, recorded in the ledger, unexpired
   and unused (``rgt.approval``), naming the SHA-256 of the verification's row. A caller that
   has just obtained one (the MCP server's elicitation, the CLI's terminal prompt) passes its
   ``approval_id`` so that exactly that approval, and no other row in the ledger, is the one
   accepted and consumed.

The rows' links (the evidence chain; canonical bytes in ``rgt.ledger.row_bytes``) are
recomputed here, so a row written into the ledger by hand, or edited, breaks one and is refused
naming it (``verification-chain``, ``approval-chain``).

Any exception while collecting evidence is a deny, with the error as the missing item: destroy
is irreversible, so the gate fails closed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from rgt.errors import ProviderError, Refused
from rgt.ledger import ApprovalRecord, Ledger, PullRecord, VerificationRecord, row_sha256
from rgt.locks import instance_lock
from rgt.nextstep import Step, Steps, render
from rgt.providers.base import Provider
from rgt.pull import (
    MANIFEST_NAME,
    manifest_remote_path,
    reach_remedy,
    remedy_steps,
    still_bills_note,
)

# The instance must read "gone" within this long after the destroy request.
CONFIRM_SECONDS = 120.0
CONFIRM_POLL_SECONDS = 1.0
# The verbs a profile may name as its meter stop; each is a Provider method.
METER_STOP_VERBS = frozenset({"destroy"})
# Refusal codes a human's fresh approval supplies (the CLI asks for one when these are all).
APPROVAL_CODES = frozenset({"no-approval", "approval-chain"})


@dataclass(frozen=True)
class Missing:
    """One piece of evidence the gate did not find: a stable code and a sentence, whose
    `{next}` (if any) is the step that supplies it, rendered for the reader (rgt.nextstep)."""

    code: str
    template: str
    step: Steps | None = None

    @property
    def message(self) -> str:
        """The sentence for a terminal (the step as an `rgt` command)."""
        return render(self.template, self.step)

    def for_tool(self) -> str:
        """The sentence for an agent over MCP (the step as a tool call)."""
        return render(self.template, self.step, tool=True)


@dataclass
class GateDecision:
    """The gate's answer for one instance."""

    instance_id: str
    allowed: bool
    missing: list[Missing] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    action: str = "destroy"  # or "discard" (rgt.discard)

    def explain(self) -> str:
        """A multi-line account: allowed, or every missing item with what to do."""
        if self.allowed:
            return f"instance {self.instance_id}: all evidence present; {self.action} allowed"
        lines = [f"instance {self.instance_id}: {self.action} REFUSED; missing evidence:"]
        lines += [f"  - [{item.code}] {item.message}" for item in self.missing]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form for --json output and MCP structured results."""
        return {
            "instance_id": self.instance_id,
            "action": self.action,
            "allowed": self.allowed,
            "missing": [{"code": m.code, "message": m.message} for m in self.missing],
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class DestroyOutcome:
    """What destroy_with_gate did."""

    instance_id: str
    verb: str
    approval_id: int
    confirmed_state: str
    decision: GateDecision


def may_destroy(
    instance_id: str,
    *,
    provider: Provider,
    ledger: Ledger,
    require_approval: bool = True,
    approval_id: int | None = None,
    profile: Any | None = None,
    now: float | None = None,
) -> GateDecision:
    """Decide whether `instance_id` may be destroyed now; lists every missing piece of evidence.

    `approval_id`: accept only this approval (it must be for this instance, unexpired, unused);
    None accepts the newest usable one. `profile` only enriches messages (what a stopped box
    still bills). Never raises: an error while collecting evidence becomes a `gate-error` item."""
    decision = GateDecision(instance_id=str(instance_id), allowed=False)
    try:
        _collect(
            decision,
            provider,
            ledger,
            require_approval,
            approval_id,
            profile,
            time.time() if now is None else now,
        )
    except Exception as exc:  # fail closed: anything unexpected is a deny, with its reason
        decision.missing.append(Missing("gate-error", f"{type(exc).__name__}: {exc}"))
    decision.allowed = not decision.missing
    return decision


def _collect(
    decision: GateDecision,
    provider: Provider,
    ledger: Ledger,
    require_approval: bool,
    approval_id: int | None,
    profile: Any | None,
    now: float,
) -> None:
    instance_id = decision.instance_id
    missing = decision.missing
    evidence = decision.evidence

    instance = provider.show(instance_id)
    evidence["state"] = instance.state
    reachable = instance.state == "running"
    if instance.state == "gone":
        missing.append(Missing("instance-gone", f"instance {instance_id} is already gone"))
        return
    if not reachable:
        missing.append(
            Missing(
                "box-unreachable",
                f"instance {instance_id} is {instance.state}: the gate must re-read the manifest "
                f"on the box and cannot while it is not running. {reach_remedy(instance.state)}, "
                f"then pull → verify → approve → destroy; {still_bills_note(instance, profile)}",
                remedy_steps(instance_id),
            )
        )

    pull = ledger.latest_pull(instance_id)
    launched = ledger.instance(provider.platform, instance_id)
    if pull is None:
        root = launched.results_root if launched is not None else None
        missing.append(
            Missing(
                "no-pull",
                f"no pull of instance {instance_id} is recorded: run `{{next}}`",
                Step.of("copy", instance_id=instance_id, remote_root=root, local_dir=None),
            )
        )
    else:
        evidence["pull"] = {
            "id": pull.id,
            "local_dir": pull.local_dir,
            "manifest_sha256": pull.manifest_sha256,
            "remote_root": pull.remote_root,
        }
        if launched is not None and launched.results_root:
            expected_root = PurePosixPath(launched.results_root)
            if PurePosixPath(pull.remote_root) != expected_root:
                missing.append(
                    Missing(
                        "wrong-results-root",
                        f"the pull copied {pull.remote_root} but the job of instance "
                        f"{instance_id} writes its results under {expected_root}: run "
                        "`{next}`, then verify",
                        Step.of(
                            "copy",
                            instance_id=instance_id,
                            remote_root=str(expected_root),
                            local_dir=None,
                        ),
                    )
                )

    # (1) the manifest on the box, now.
    box_sha: str | None = None
    if pull is not None and reachable:
        try:
            box_bytes = provider.read_remote_file(
                instance_id, manifest_remote_path(pull.remote_root)
            )
        except Exception as exc:
            missing.append(
                Missing(
                    "no-box-manifest",
                    f"could not read {MANIFEST_NAME} under {pull.remote_root} on the box "
                    f"({type(exc).__name__}: {exc})",
                )
            )
        else:
            box_sha = hashlib.sha256(box_bytes).hexdigest()
            evidence["box_manifest_sha256"] = box_sha
            owner, run_id, roster = _manifest_owner(box_bytes)
            evidence["run_id"] = run_id
            if owner != instance_id:
                missing.append(
                    Missing(
                        "manifest-other-instance",
                        f"{MANIFEST_NAME} on the box names instance {owner!r}, not {instance_id!r}",
                    )
                )
            expected_run = _rented_for_run(instance.label, ledger, provider.platform, instance_id)
            if expected_run is not None and run_id != expected_run:
                missing.append(
                    Missing(
                        "run-id-mismatch",
                        f"{MANIFEST_NAME} on the box is of run {run_id!r}, but instance "
                        f"{instance_id} was rented for run {expected_run!r} (its label): "
                        "rebuild the manifest of the right run on the box, then pull and verify",
                    )
                )
            launched = ledger.instance(provider.platform, instance_id)
            job_roster = None if launched is None else launched.roster
            if job_roster is not None and sorted(job_roster) != sorted(roster or []):
                missing.append(
                    Missing(
                        "roster-mismatch",
                        f"{MANIFEST_NAME} on the box covers {sorted(roster or [])}, but the "
                        f"job's roster is {sorted(job_roster)}: rebuild the manifest with the "
                        "job's roster on the box, then pull and verify",
                    )
                )
            # (1b) the job is not still running: it may write more after this decision.
            _check_job_stopped(
                decision, provider, instance_id, expected_run or run_id, profile, now
            )
            # (1c) the box's files now, against that manifest: a file written, changed or
            # deleted after the manifest was built would be lost by a destroy.
            _check_box_tree(
                decision, provider, instance_id, pull.remote_root, box_bytes, run_id, profile
            )

    # (2) the pull matches it exactly.
    if pull is not None and box_sha is not None:
        if pull.manifest_sha256 != box_sha:
            missing.append(
                Missing(
                    "pull-stale",
                    f"the manifest on the box (sha256 {box_sha[:12]}…) differs from the one "
                    f"pulled (sha256 {pull.manifest_sha256[:12]}…): pull again, then verify",
                )
            )
        local_manifest = Path(pull.local_dir) / MANIFEST_NAME
        local_sha = _file_sha256(local_manifest)
        if local_sha != box_sha:
            missing.append(
                Missing(
                    "local-manifest-changed",
                    f"{local_manifest} is "
                    + ("missing" if local_sha is None else f"changed (sha256 {local_sha[:12]}…)")
                    + f"; the box has sha256 {box_sha[:12]}…: pull again, then verify",
                )
            )

    # (3) a verification still true of the local files.
    verification = ledger.latest_verification(instance_id)
    if verification is None:
        missing.append(
            Missing(
                "no-verification",
                f"no verification of instance {instance_id} is recorded: run `{{next}}`",
                Step.of("verify", local_dir=pull.local_dir if pull else None),
            )
        )
    else:
        evidence["verification"] = {
            "id": verification.id,
            "manifest_sha256": verification.manifest_sha256,
            "local_dir": verification.local_dir,
        }
        if box_sha is not None and verification.manifest_sha256 != box_sha:
            missing.append(
                Missing(
                    "verification-stale",
                    f"the verification checked manifest sha256 "
                    f"{verification.manifest_sha256[:12]}…, the box now has {box_sha[:12]}…: "
                    "pull and verify again",
                )
            )
        if pull is not None and (
            verification.local_dir != pull.local_dir or verification.created < pull.finished
        ):
            missing.append(
                Missing(
                    "verification-stale",
                    f"the verification ({verification.local_dir}) predates or does not cover the "
                    f"latest pull ({pull.local_dir}): run `{{next}}`",
                    Step.of("verify", local_dir=pull.local_dir),
                )
            )
        if pull is not None:
            link = _verification_link(verification, pull)
            if link is not None:
                missing.append(link)
        if box_sha is not None and verification.manifest_sha256 == box_sha:
            problem = _local_change(verification.local_dir, ledger)
            if problem is not None:
                missing.append(
                    Missing(
                        "local-files-changed",
                        f"the local files changed since they were verified ({problem}): "
                        "pull and verify again",
                    )
                )

    # (4) a fresh human approval for exactly this id.
    if require_approval:
        approval = _approval(ledger, instance_id, approval_id, now)
        if approval is None:
            missing.append(
                Missing("no-approval", _approval_gap(ledger, instance_id, approval_id, now))
            )
        else:
            evidence["approval"] = {
                "id": approval.id,
                "channel": approval.channel,
                "expires": approval.expires,
                "verification_sha256": approval.verification_sha256,
            }
            if verification is not None:
                link = _approval_link(approval, verification)
                if link is not None:
                    missing.append(link)


def _verification_link(verification: VerificationRecord, pull: PullRecord) -> Missing | None:
    """The link pull → verification: the verification must name the SHA-256 of the latest
    pull's row (rgt.ledger.row_sha256, recomputed here) and that pull's manifest. A row
    written into the ledger by hand, or either row changed since, breaks it."""
    if verification.pull_sha256 is None:
        return Missing(
            "verification-chain",
            f"verification #{verification.id} of instance {verification.instance_id} names no "
            "pull it rests on (recorded by an rgt from before the evidence chain, of a folder "
            "no recorded pull wrote, or written into the ledger by hand): it cannot count; "
            "re-create it with `{next}`",
            Step.of("verify", local_dir=pull.local_dir),
        )
    expected = row_sha256(pull)
    if verification.pull_sha256 != expected or verification.manifest_sha256 != (
        pull.manifest_sha256
    ):
        return Missing(
            "verification-chain",
            f"verification #{verification.id} rests on a pull row with sha256 "
            f"{verification.pull_sha256[:12]}…, but the latest pull of instance "
            f"{pull.instance_id} (#{pull.id}, {pull.local_dir}) hashes to {expected[:12]}…: "
            "the link pull → verification is broken (a row was changed or written into the "
            "ledger by hand); pull again (`{next}`), then verify",
            Step.of(
                "copy", instance_id=pull.instance_id, remote_root=pull.remote_root, local_dir=None
            ),
        )
    return None


def _approval_link(approval: ApprovalRecord, verification: VerificationRecord) -> Missing | None:
    """The link verification → approval: the approval must name the SHA-256 of the latest
    verification's row, recomputed here: a human approved exactly that evidence."""
    how = (
        f"a human must approve again (`rgt destroy {approval.instance_id}` asks on the "
        "terminal, or the MCP approval prompt)"
    )
    if approval.verification_sha256 is None:
        return Missing(
            "approval-chain",
            f"approval #{approval.id} of instance {approval.instance_id} names no verification "
            "(given before verification #"
            f"{verification.id}, recorded by an rgt from before the evidence chain, or written "
            f"into the ledger by hand): it approves no evidence; {how}",
        )
    expected = row_sha256(verification)
    if approval.verification_sha256 != expected:
        return Missing(
            "approval-chain",
            f"approval #{approval.id} approves a verification row with sha256 "
            f"{approval.verification_sha256[:12]}…, but the latest verification of instance "
            f"{approval.instance_id} (#{verification.id}) hashes to {expected[:12]}…: the link "
            "verification → approval is broken (the evidence changed after the approval, or a "
            f"row was written into the ledger by hand); {how}",
        )
    return None


def _check_job_stopped(
    decision: GateDecision,
    provider: Provider,
    instance_id: str,
    run_id: str | None,
    profile: Any | None,
    now: float,
) -> None:
    """Refuse (`job-running`) while the run's job status record on the box says the job runs
    with a live heartbeat. A box without a record (a launcher that writes none) or one whose
    record cannot be read is noted in the evidence only: the tree comparison still guards
    every file, and a record is easy to delete, so its absence proves nothing either way."""
    from rgt import jobstatus

    data_dir = (getattr(profile, "overrides", None) or {}).get("data_dir")
    if not data_dir or not run_id:
        decision.evidence["job_status"] = "not checked (no profile data_dir or run id)"
        return
    try:
        path = jobstatus.status_remote_path(profile, run_id)
        status = jobstatus.parse_status(provider.read_remote_file(instance_id, path))
    except Exception as exc:
        decision.evidence["job_status"] = f"none read ({type(exc).__name__}: {exc})"
        return
    age = status.heartbeat_age(now)
    decision.evidence["job_status"] = {
        "outcome": status.outcome,
        "attempt": status.attempt,
        "heartbeat_age_seconds": round(age),
        "stale": status.is_stale(now),
    }
    if status.is_running(now):
        decision.missing.append(
            Missing(
                "job-running",
                f"the job of run {run_id} is still running on instance {instance_id} (attempt "
                f"{status.attempt}, heartbeat {age:.0f} s ago): it may write more results; "
                "wait until it ends (`{next}`), then pull, verify and destroy",
                Step.of("poll", instance_id=instance_id, wait=True),
            )
        )


def _check_box_tree(
    decision: GateDecision,
    provider: Provider,
    instance_id: str,
    remote_root: str,
    manifest_bytes: bytes,
    run_id: str | None,
    profile: Any | None,
) -> None:
    """List the result root on the box now (one `find`, no hashing) and compare it with the
    manifest; hash on the box only the files of the right size written after the manifest.
    Any difference, or a listing that cannot be had, is a `box-changed` refusal."""
    from rgt import boxtree

    try:
        document = json.loads(manifest_bytes)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        decision.missing.append(
            Missing("box-changed", f"{MANIFEST_NAME} on the box is not a JSON object")
        )
        return
    try:
        listing = provider.run_remote_command(
            instance_id,
            boxtree.find_command(remote_root),
            max_bytes=boxtree.LISTING_MAX_BYTES,
        )
        comparison = boxtree.compare(boxtree.parse_listing(listing), document)
        changes = list(comparison.changes)
        suspects = comparison.suspects
        if len(suspects) > boxtree.MAX_SUSPECTS:
            changes.append(
                f"{len(suspects)} files were written at or after the manifest (more than "
                f"{boxtree.MAX_SUSPECTS} to hash one by one)"
            )
        elif suspects:
            digests = boxtree.parse_digests(
                provider.run_remote_command(
                    instance_id,
                    boxtree.hash_command(remote_root, suspects),
                    max_bytes=200 * (len(suspects) + 1) + 4096 * len(suspects),
                ),
                len(suspects),
            )
            changes += boxtree.changed_digests(document, suspects, digests)
    except Exception as exc:
        decision.missing.append(
            Missing(
                "box-changed",
                f"could not list {remote_root} on the box to compare it with {MANIFEST_NAME} "
                f"({type(exc).__name__}: {exc}); the gate cannot tell what a destroy would lose",
            )
        )
        return
    files = document.get("files")
    decision.evidence["box_tree"] = {
        "files": len(files) if isinstance(files, list) else 0,
        "hashed_on_box": len(suspects),
        "unchanged": not changes,
    }
    if changes:
        decision.missing.append(
            Missing(
                "box-changed",
                f"the results on the box differ from {MANIFEST_NAME} "
                f"({len(changes)} difference(s): {boxtree.summarise(changes)}); a destroy would "
                f"lose them. {_rebuild_hint(remote_root, run_id, instance_id, profile)}",
            )
        )


def _rebuild_hint(
    remote_root: str, run_id: str | None, instance_id: str, profile: Any | None
) -> str:
    """What brings the manifest up to date: rebuild it on the box once the job is done, with
    the builder and roster the boot hook left in the run's state dir; then pull and verify."""
    data_dir = (getattr(profile, "overrides", None) or {}).get("data_dir")
    python = (getattr(profile, "overrides", None) or {}).get("python") or "python3"
    if data_dir and run_id:
        state = PurePosixPath(data_dir) / ".rgt" / run_id
        command = (
            f"`{python} {state / 'manifest.py'} {remote_root} --run-id {run_id} "
            f"--roster {state / 'roster.txt'} --instance-id {instance_id}`"
        )
    else:
        command = "rgt's manifest builder (`rgt manifest --help`)"
    return (
        "When the job has finished writing, rebuild the manifest on the box with "
        f"{command}, then pull and verify again"
    )


def _manifest_owner(data: bytes) -> tuple[str | None, str | None, list[str] | None]:
    """(instance_id, run_id, roster) named by a manifest; None for what is absent or unreadable."""
    try:
        document = json.loads(data)
    except ValueError:
        return None, None, None
    if not isinstance(document, dict):
        return None, None, None
    owner, run_id, roster = (document.get(k) for k in ("instance_id", "run_id", "roster"))
    return (
        None if owner is None else str(owner),
        None if run_id is None else str(run_id),
        [str(name) for name in roster] if isinstance(roster, list) else None,
    )


def _rented_for_run(
    live_label: str | None, ledger: Ledger, platform: str, instance_id: str
) -> str | None:
    """The run an instance was rented for, from its rgt label (`rgt:<run_id>`, live from the
    provider, else as the ledger recorded it at launch); None for an instance rgt did not label."""
    from rgt.providers.base import run_from_label

    recorded = [r.label for r in ledger.instances(platform) if r.instance_id == instance_id]
    return run_from_label(live_label, *recorded)


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _local_change(local_dir: str, ledger: Ledger) -> str | None:
    """None if the verified local files are unchanged; else what changed (rgt.verify decides:
    an lstat snapshot of every file, no re-hash in the normal case; see its docstring)."""
    from rgt.verify import check_unchanged

    return check_unchanged(Path(local_dir), ledger=ledger)


def _approval(
    ledger: Ledger, instance_id: str, approval_id: int | None, now: float
) -> ApprovalRecord | None:
    if approval_id is None:
        return ledger.usable_approval(instance_id, now=now)
    record = ledger.approval(approval_id)
    if (
        record is None
        or record.instance_id != instance_id
        or record.purpose != "destroy"
        or not record.usable(now)
    ):
        return None
    return record


def _approval_gap(ledger: Ledger, instance_id: str, approval_id: int | None, now: float) -> str:
    how = (
        f"a human must run `rgt approve {instance_id}` (terminal + passphrase) or answer the "
        "MCP approval prompt"
    )
    if approval_id is not None:
        given = ledger.approval(approval_id)
        if given is None:
            return f"approval {approval_id} does not exist; {how}"
        if given.instance_id != instance_id:
            return (
                f"approval {approval_id} is for instance {given.instance_id}, not "
                f"{instance_id}; {how}"
            )
        if given.purpose != "destroy":
            return f"approval {approval_id} is a {given.purpose} approval, not a destroy's; {how}"
        previous = [given]
    else:
        previous = [a for a in ledger.approvals(instance_id) if a.purpose == "destroy"]
    if previous:
        last = previous[-1]
        if last.consumed is not None:
            return (
                f"the approval for instance {instance_id} was already used (an approval is good "
                f"for one destroy attempt, whether it destroys or is refused); {how}"
            )
        if last.expires <= now:
            ago = (now - last.expires) / 60
            return f"the approval for instance {instance_id} expired {ago:.0f} min ago; {how}"
    return f"no approval for instance {instance_id} is recorded; {how}"


def spend_approvals(
    ledger: Ledger, instance_id: str, decision: GateDecision, approval_id: int | None = None
) -> list[int]:
    """A destroy attempt the gate refused spends the approval it was given for (`approval_id`),
    or, made without one, every usable approval of the instance (any of them would have been
    used): an approval is good for one attempt, so one given for a box that then failed the
    gate cannot be used later, when the evidence has changed, without the human seeing it
    again. Records why."""
    spent = ledger.spend_approvals(instance_id, only=approval_id)
    if spent:
        codes = ", ".join(sorted({item.code for item in decision.missing})) or "refused"
        ledger.record_approval_failure(
            instance_id,
            "gate",
            f"approval(s) {', '.join(map(str, spent))} spent by a refused destroy ({codes})",
        )
    return spent


def destroy_with_gate(
    instance_id: str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Any,
    approval_id: int | None = None,
    confirm_seconds: float = CONFIRM_SECONDS,
) -> DestroyOutcome:
    """Destroy `instance_id` if and only if the gate allows it now. The only caller of the
    provider's meter-stop verb in rgt.

    `approval_id`: the approval the caller just obtained from a human (MCP elicitation:
    ``rgt.approval.approve_with_passphrase(..., channel="mcp-elicitation")`` or
    ``ledger.record_approval(id, "mcp-elicitation", ttl)``; CLI: the terminal prompt). Only that
    approval is accepted and consumed. None: the newest usable approval for this instance.

    1. take the instance's lock (``rgt.locks.instance_lock``: non-blocking, shared with pull and
       the verification's record, so no destroy runs while a pull of it is copying) and claim
       the destroy in the ledger (one transaction). Of concurrent callers in any processes one
       wins and the others are refused, so at most one destroy request is sent; the lock also
       covers a destroy slower than the ledger claim's expiry;
    2. re-run the gate with approval required;
    3. consume the approval (single use);
    4. call the meter-stop verb named by the profile;
    5. confirm with `show` that the instance is gone, and record it.

    Raises Refused (exit 4) when evidence is missing or another destroy or pull holds the lock, and
    ProviderError (exit 3) when the request fails or the instance does not disappear."""
    instance_id = str(instance_id)
    verb = _meter_stop_verb(provider, profile)
    with instance_lock(instance_id, "destroy"):
        return _meter_stop_claimed(
            instance_id,
            provider,
            ledger,
            verb,
            approval_id,
            confirm_seconds,
            decide=lambda: may_destroy(
                instance_id,
                provider=provider,
                ledger=ledger,
                approval_id=approval_id,
                profile=profile,
            ),
        )


def destroy_after_human_meter_stop(
    instance_id: str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Any,
    approval_id: int,
    confirm_seconds: float = CONFIRM_SECONDS,
) -> DestroyOutcome:
    """`destroy_with_gate` for a box reached over ssh whose meter stop the human did themselves
    and confirmed in the same MCP approval that carries their passphrase (an MCP client cannot
    be asked a second question after the gate ran, as a terminal can).

    The gate read the box itself (its manifest and result tree now) just before the human was
    asked (the MCP precheck): the same order as on a terminal, where the human is told to stop
    the meter after that read. When they have done so, the box no longer answers, so here the
    one missing item accepted is `box-unreachable` (`_silence_accepted`); every other piece (the
    pull, the verification, the local files still as verified, exactly this approval) is checked
    again under the lock and claim, and the provider's `destroy` still takes the human's
    confirmation and waits for the box's silence."""
    instance_id = str(instance_id)
    _require_human_meter_stop(provider, instance_id, "destroy")
    verb = _meter_stop_verb(provider, profile)

    def decide() -> GateDecision:
        return _silence_accepted(
            may_destroy(
                instance_id,
                provider=provider,
                ledger=ledger,
                approval_id=approval_id,
                profile=profile,
            )
        )

    with instance_lock(instance_id, "destroy"):
        return _meter_stop_claimed(
            instance_id, provider, ledger, verb, approval_id, confirm_seconds, decide=decide
        )


def discard_with_gate(
    instance_id: str,
    reason: str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Any,
    approval_id: int,
    confirm_seconds: float = CONFIRM_SECONDS,
) -> DestroyOutcome:
    """End a rental whose results will not be saved, for `reason` (rgt.discard.REASONS), through
    the same single meter-stop path as a destroy: the same lock and ledger claim, the decision
    re-run under them (rgt.discard.may_discard: the reason proven from evidence, and exactly
    the discard approval `approval_id` a human just gave), the verb, the confirmation. The
    ledger records it as a discard, with the reason and what the human was told is lost.

    There is no default approval: only the call that obtained it from a human can pass one."""
    return _discard(
        instance_id, reason, provider, ledger, profile, approval_id, confirm_seconds, human=False
    )


def discard_after_human_meter_stop(
    instance_id: str,
    reason: str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Any,
    approval_id: int,
    confirm_seconds: float = CONFIRM_SECONDS,
) -> DestroyOutcome:
    """`discard_with_gate` for a box reached over ssh whose meter stop the human did themselves
    and confirmed in the MCP discard approval, next to their passphrase: as
    `destroy_after_human_meter_stop`, the box's silence (`box-unreachable`, e.g. of a
    nothing-to-keep discard, whose empty results root the precheck read just before the human
    was asked) is the one missing item accepted; the reason's other evidence and exactly this
    discard approval are checked again under the lock and claim."""
    _require_human_meter_stop(provider, str(instance_id), "discard")
    return _discard(
        instance_id, reason, provider, ledger, profile, approval_id, confirm_seconds, human=True
    )


def _discard(
    instance_id: str,
    reason: str,
    provider: Provider,
    ledger: Ledger,
    profile: Any,
    approval_id: int,
    confirm_seconds: float,
    *,
    human: bool,
) -> DestroyOutcome:
    from rgt.discard import may_discard

    instance_id = str(instance_id)
    verb = _meter_stop_verb(provider, profile)

    def decide() -> GateDecision:
        decision = may_discard(
            instance_id,
            reason,
            provider=provider,
            ledger=ledger,
            profile=profile,
            approval_id=approval_id,
        )
        return _silence_accepted(decision) if human else decision

    with instance_lock(instance_id, "discard"):
        return _meter_stop_claimed(
            instance_id,
            provider,
            ledger,
            verb,
            approval_id,
            confirm_seconds,
            decide=decide,
            purpose="discard",
            reason=reason,
        )


def _require_human_meter_stop(provider: Provider, instance_id: str, action: str) -> None:
    """Refused unless the provider's meter stop is a human's action (an attached box)."""
    if not getattr(provider, "meter_stop_is_human", False):
        raise Refused(
            f"instance {instance_id}: rgt sends this platform's meter stop itself; use {action}"
        )


def _silence_accepted(decision: GateDecision) -> GateDecision:
    """The decision with a box that no longer answers accepted: the human stopped its meter
    after the gate read the box (they were asked to), so `box-unreachable` alone is not held
    against it; any other missing item still refuses."""
    if decision.missing and all(m.code == "box-unreachable" for m in decision.missing):
        decision.missing.clear()
        decision.allowed = True
        decision.evidence["box_read"] = "by the gate just before the human was asked"
    return decision


def _meter_stop_verb(provider: Provider, profile: Any) -> str:
    """The profile's meter-stop verb, if rgt can gate it on this provider; else Refused."""
    platform = getattr(profile, "platform", None)
    if platform is not None and platform != provider.platform:
        raise Refused(
            f"profile {getattr(profile, 'name', platform)!r} is for platform {platform!r}, but "
            f"the provider is {provider.platform!r}: its meter-stop verb does not apply here"
        )
    verb = str(getattr(profile, "meter_stop_verb", "") or "")
    if verb and getattr(provider, "meter_stop_is_human", False):
        # A box reached over ssh (rgt.providers.ssh): the profile's verb is a human's action,
        # which the provider's `destroy` asks them to do and confirm; the gate is the same.
        return verb
    if verb not in METER_STOP_VERBS or not callable(getattr(provider, verb, None)):
        raise Refused(
            f"profile {getattr(profile, 'name', '?')!r}: meter_stop_verb {verb!r} is not an "
            f"operation rgt can gate (known: {', '.join(sorted(METER_STOP_VERBS))})"
        )
    return verb


def _meter_stop_claimed(
    instance_id: str,
    provider: Provider,
    ledger: Ledger,
    verb: str,
    approval_id: int | None,
    confirm_seconds: float,
    *,
    decide: Callable[[], GateDecision],
    purpose: str = "destroy",
    reason: str | None = None,
) -> DestroyOutcome:
    # Called under the per-instance lock: an unfinished claim is a dead process's.
    token = ledger.claim_destroy(
        provider.platform, instance_id, abandon_unfinished=True, purpose=purpose, reason=reason
    )
    if token is None:
        raise Refused(
            f"instance {instance_id}: another destroy is in progress or it was already destroyed "
            "(see `rgt ledger`)"
        )
    try:
        decision = decide()
        if not decision.allowed:
            ledger.update_destroy(token, "failed", detail=decision.explain())
            spend_approvals(ledger, instance_id, decision, approval_id)
            if any(item.code == "instance-gone" for item in decision.missing):
                # e.g. an earlier destroy's request landed but its process died before the
                # confirmation: remember it, so the sweep stops expecting the instance.
                ledger.record_state(provider.platform, instance_id, "gone", detail="found gone")
            raise Refused(decision.explain())
        used_approval = int(decision.evidence["approval"]["id"])
        if not ledger.consume_approval(used_approval):
            ledger.update_destroy(token, "failed", detail="approval used or expired meanwhile")
            raise Refused(f"instance {instance_id}: the approval was used or expired meanwhile")
        ledger.update_destroy(
            token, "sent", verb=verb, approval_id=used_approval, lost=decision.evidence.get("lost")
        )
        # A box reached over ssh: its provider's `destroy` asks the human to do `verb` and
        # confirm it (rgt.providers.ssh); every other provider implements `verb` itself.
        method = "destroy" if getattr(provider, "meter_stop_is_human", False) else verb
        try:
            getattr(provider, method)(instance_id)
        except Refused as exc:  # the human did not confirm the meter stop
            ledger.update_destroy(token, "failed", detail=exc.message)
            raise
        except Exception as exc:
            ledger.update_destroy(token, "failed", detail=f"{type(exc).__name__}: {exc}")
            raise ProviderError(f"{verb} of instance {instance_id} failed: {exc}") from exc
        try:
            state = _wait_gone(provider, instance_id, confirm_seconds)
        except Exception as exc:
            ledger.update_destroy(token, "failed", detail=f"confirm: {type(exc).__name__}: {exc}")
            raise ProviderError(
                f"{verb} of instance {instance_id} was sent but confirming it failed ({exc}); "
                "check `rgt sweep` (it may still bill)"
            ) from exc
        if state != "gone":
            ledger.update_destroy(token, "failed", detail=f"still {state} after {verb}")
            raise ProviderError(
                f"{verb} of instance {instance_id} was sent but it still shows {state} after "
                f"{confirm_seconds:.0f} s; check `rgt sweep` (it may still bill)"
            )
        ledger.update_destroy(token, "confirmed", detail=f"{verb} confirmed: gone")
        return DestroyOutcome(instance_id, verb, used_approval, state, decision)
    except BaseException as exc:
        if not isinstance(exc, (Refused, ProviderError)):
            ledger.update_destroy(token, "failed", detail=f"{type(exc).__name__}: {exc}")
        raise


def _wait_gone(provider: Provider, instance_id: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    state = provider.show(instance_id).state
    while state != "gone" and time.monotonic() < deadline:
        time.sleep(CONFIRM_POLL_SECONDS)
        state = provider.show(instance_id).state
    return state
