"""`rgt approve INSTANCE`: a human approves destroying one instance (TTY + passphrase)."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 110  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "approve destroying one instance: type its id and your approval passphrase on a terminal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE and the approval's lifetime."""
    parser.add_argument("instance", help="the instance id to approve destroying")
    add_platform_argument(parser)
    parser.add_argument(
        "--ttl-minutes",
        type=float,
        default=15.0,
        help="how long the approval stays valid (default 15; it is single-use)",
    )


def run(args: argparse.Namespace) -> int:
    """Prompt on the TTY and record a single-use, expiring approval in the ledger."""
    from rgt import approval
    from rgt.commands._platform import check_instance_id, open_platform
    from rgt.errors import UsageError
    from rgt.ledger import Ledger

    if not 0 < args.ttl_minutes <= 24 * 60:
        raise UsageError(f"--ttl-minutes: {args.ttl_minutes} is not in (0, 1440]")
    # Refuse an id the platform could never have (a vast.ai number, or an attached box's
    # `ssh-N` the ledger knows), before the prompt, so no approval is recorded for a typo.
    check_instance_id(args.platform, args.instance)
    provider, _ = open_platform(args.platform, args.instance)
    with Ledger.open() as ledger:
        approval.check_approvable(ledger, provider, args.instance)
        approval_id = approval.prompt_approval(
            ledger,
            args.instance,
            ttl_seconds=args.ttl_minutes * 60,
            summary=approval.ledger_summary(ledger, args.instance),
        )
    print(f"approval {approval_id} recorded for instance {args.instance}")
    return 0
