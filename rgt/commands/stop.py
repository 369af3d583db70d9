"""`rgt stop INSTANCE`: stop the container (reversible) and say what keeps billing."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 125  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "stop an instance (reversible); says what still bills on this platform"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE [--json]."""
    parser.add_argument("instance", help="the instance id")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Stop, then print the profile's billing facts for a stopped instance."""
    import json

    from rgt.commands._platform import open_platform
    from rgt.ledger import Ledger
    from rgt.lifecycle import stop

    provider, profile = open_platform(args.platform, args.instance)
    with Ledger.open() as ledger:
        result = stop(args.instance, provider=provider, ledger=ledger, profile=profile)
    print(json.dumps(result, indent=2) if args.json else result["message"])
    return 0
