"""`rgt sweep [--json] [--platform P]`: every instance the API key can see, its cost, and what
keeps billing; without --platform, every platform with boxes in the ledger (vast.ai through its
API when a key is set, and the boxes attached over ssh of every profile)."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 130  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = (
    "list every instance the API key can see and every attached box, its hourly cost and what "
    "keeps billing"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """[--json] [--platform]."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print the sweep; exit 1 when something is flagged or a launch is in doubt (so scripts
    can alert)."""
    import json

    from rgt.commands._platform import open_platform
    from rgt.ledger import Ledger
    from rgt.sweep import format_report, sweep, sweep_every_platform

    with Ledger.open() as ledger:
        if args.platform is None:
            report = sweep_every_platform(ledger)
        else:
            provider, profile = open_platform(args.platform)
            report = sweep(provider=provider, ledger=ledger, profile=profile)
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 1 if report.flagged else 0
