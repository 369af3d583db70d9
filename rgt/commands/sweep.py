"""`rgt sweep [--json]`: every instance the API key can see, its cost, and what keeps billing."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 130  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "list every instance the API key can see, its hourly cost and what keeps billing"


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
    from rgt.sweep import format_report, sweep

    provider, profile = open_platform(args.platform)
    with Ledger.open() as ledger:
        report = sweep(provider=provider, ledger=ledger, profile=profile)
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 1 if report.flagged else 0
