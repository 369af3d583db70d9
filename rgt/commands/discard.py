"""`rgt discard INSTANCE --reason R`: end a rental whose results will not be saved, for a reason
rgt proves from evidence, with a human's explicit word at a terminal."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 122  # position in `rgt --help` (see rgt.cli.command_modules): right after destroy
HELP = "end a rental with nothing to save (failed job, lost host, ...): proven, human-approved"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE --reason R [--check] [--json]."""
    from rgt.discard import REASONS

    parser.add_argument("instance", help="the instance id")
    parser.add_argument(
        "--reason",
        required=True,
        choices=list(REASONS),
        help="why nothing will be saved; rgt checks it from evidence: "
        + "; ".join(f"{name}: {text}" for name, text in REASONS.items()),
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check the evidence and say what would be lost (exit 0 if it holds, 4 if not)",
    )
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Evidence → what is lost → the human types `discard ID` and the passphrase → meter stop."""
    import json
    import sys

    from rgt import approval
    from rgt.commands._platform import check_instance_id, open_platform
    from rgt.discard import loss_summary, may_discard
    from rgt.errors import EXIT_REFUSED
    from rgt.gate import discard_with_gate
    from rgt.ledger import Ledger

    # A typo is a usage error (exit 2), before any request.
    check_instance_id(args.platform, args.instance)
    provider, profile = open_platform(
        args.platform, args.instance, confirm_meter_stop=approval.confirm_meter_stop_on_tty
    )
    with Ledger.open() as ledger:
        decision = may_discard(
            args.instance,
            args.reason,
            provider=provider,
            ledger=ledger,
            profile=profile,
            require_approval=False,
        )
        if args.check or not decision.allowed:
            if args.json:
                print(json.dumps(decision.to_json(), indent=2))
            elif decision.allowed:
                print(loss_summary(decision))
                print(f"the evidence holds; `rgt discard {args.instance} --reason {args.reason}`")
            else:
                print(decision.explain(), file=sys.stderr)
            return 0 if decision.allowed else EXIT_REFUSED
        approval_id = approval.prompt_discard_approval(
            ledger, args.instance, summary=loss_summary(decision)
        )
        outcome = discard_with_gate(
            args.instance,
            args.reason,
            provider=provider,
            ledger=ledger,
            profile=profile,
            approval_id=approval_id,
        )
    if args.json:
        result = {"discarded": True, "verb": outcome.verb, "approval_id": outcome.approval_id}
        print(json.dumps({**outcome.decision.to_json(), **result}, indent=2))
    else:
        print(
            f"instance {outcome.instance_id}: discarded ({args.reason}); {outcome.verb} "
            f"confirmed ({outcome.confirmed_state}); the meter has stopped, its results were not "
            "saved, and the ledger records it as a discard"
        )
    return 0
