"""`rgt destroy INSTANCE`: the Teardown Iron Law, then the meter-stop verb — or a refusal."""

from __future__ import annotations

import argparse
from typing import Any

from rgt.commands._platform import add_platform_argument

ORDER = 120  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "destroy an instance only once its results are pulled, verified and a human approved"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE [--check] [--json]."""
    parser.add_argument("instance", help="the instance id")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only run the gate and say what is missing (exit 0 if allowed, 4 if not)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the gate decision (and outcome) as JSON"
    )
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Gate → (approval on the terminal) → destroy → confirm gone."""
    import json
    import sys

    from rgt import approval
    from rgt.commands._platform import check_instance_id, open_platform
    from rgt.errors import EXIT_REFUSED
    from rgt.gate import APPROVAL_CODES, destroy_with_gate, may_destroy
    from rgt.ledger import Ledger

    # A typo is a usage error (exit 2) before any request, not a gate refusal (exit 4).
    check_instance_id(args.platform, args.instance)
    # An attached box's meter stop is the human's: after the gate, the provider asks them on
    # this terminal to do it and confirm (rgt.providers.ssh).
    provider, profile = open_platform(
        args.platform, args.instance, confirm_meter_stop=approval.confirm_meter_stop_on_tty
    )
    if getattr(provider, "meter_stop_is_human", False) and not profile.meter_stop_verb:
        from rgt.errors import Refused

        # A machine nothing rents (the `local` profile): no approval is worth asking for.
        raise Refused(
            f"instance {args.instance}: {profile.title} ({profile.name}) has no meter to stop "
            "(its profile's meter_stop_verb is null): there is nothing to destroy; the box and "
            "its files stay as they are"
        )
    with Ledger.open() as ledger:
        decision = may_destroy(args.instance, provider=provider, ledger=ledger, profile=profile)
        evidence_missing = [m for m in decision.missing if m.code not in APPROVAL_CODES]
        if args.check or evidence_missing:
            if evidence_missing and not args.check:
                # A refused attempt spends any approval given for it (see gate.spend_approvals).
                from rgt.gate import spend_approvals

                spend_approvals(ledger, args.instance, decision)
            if args.json:
                print(json.dumps(decision.to_json(), indent=2))
            else:
                print(decision.explain(), file=sys.stdout if decision.allowed else sys.stderr)
            return 0 if decision.allowed else EXIT_REFUSED
        approval_id: int | None = None
        if not decision.allowed:
            # Only the approval is missing (none, or one that approved other evidence): ask
            # the human at this terminal, and destroy with exactly the approval they just gave.
            approval_id = approval.prompt_approval(
                ledger,
                args.instance,
                summary=_summary(ledger, args.instance, decision.evidence, profile),
            )
        outcome = destroy_with_gate(
            args.instance,
            provider=provider,
            ledger=ledger,
            profile=profile,
            approval_id=approval_id,
        )
    if args.json:
        result = {"destroyed": True, "verb": outcome.verb, "approval_id": outcome.approval_id}
        print(json.dumps({**outcome.decision.to_json(), **result}, indent=2))
    elif getattr(provider, "sends_meter_stop", False):
        print(
            f"instance {outcome.instance_id}: rgt sent {outcome.verb} over ssh and its job has "
            "ended (the allocation is free; its files stay); recorded as ended"
        )
    elif getattr(provider, "meter_stop_is_human", False):
        print(
            f"instance {outcome.instance_id}: you confirmed {outcome.verb} and the box no longer "
            "answers over ssh; recorded as ended"
        )
    else:
        print(
            f"instance {outcome.instance_id}: {outcome.verb} confirmed "
            f"({outcome.confirmed_state}); the meter has stopped and its disk is deleted"
        )
    return 0


def _summary(ledger: Any, instance_id: str, evidence: dict[str, Any], profile: object) -> str:
    """What the human sees before typing the passphrase: the evidence the gate just checked."""
    from rgt import approval

    lines = [
        approval.ledger_summary(ledger, instance_id),
        f"  the box's manifest now: sha256 {evidence.get('box_manifest_sha256', '?')} "
        "(matches the pull and the verification)",
    ]
    tree = evidence.get("box_tree") or {}
    if tree.get("unchanged"):
        lines.append(
            f"  the box's result tree now: the manifest's {tree.get('files')} file(s), nothing "
            "added, removed or changed since it was built"
        )
    if getattr(profile, "meter_stop_irreversible", True):
        lines.append("  destroy is IRREVERSIBLE: the box and its disk are deleted.")
    return "\n".join(lines)
