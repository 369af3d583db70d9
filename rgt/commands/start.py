"""`rgt start INSTANCE`: start a stopped instance again (compute bills again from now)."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 126  # position in `rgt --help` (see rgt.cli.command_modules): after stop
HELP = "start a stopped instance again (it bills compute again); --wait until it runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE [--wait SECONDS] [--json]."""
    parser.add_argument("instance", help="the instance id")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long until it runs (default: do not wait)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Start, optionally wait, and say what it bills and what comes next."""
    import json
    import math

    from rgt.commands._platform import check_instance_id, open_platform
    from rgt.errors import UsageError
    from rgt.ledger import Ledger
    from rgt.lifecycle import start

    if not (math.isfinite(args.wait) and 0 <= args.wait <= 3600):
        raise UsageError(f"--wait: {args.wait} is not in [0, 3600] seconds")
    check_instance_id(args.platform, args.instance)
    provider, profile = open_platform(args.platform, args.instance)
    with Ledger.open() as ledger:
        result = start(
            args.instance,
            provider=provider,
            ledger=ledger,
            profile=profile,
            wait_seconds=args.wait,
        )
    print(json.dumps(result, indent=2) if args.json else result["message"])
    return 0
