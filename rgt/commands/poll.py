"""`rgt poll INSTANCE`: state, what it means, what to do next, and the cost so far."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 70  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "one look at an instance: state, classification, next action, cost so far"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE [--json]."""
    parser.add_argument("instance", help="the instance id")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print the poll report."""
    import json

    from rgt.commands._platform import open_platform
    from rgt.ledger import Ledger
    from rgt.lifecycle import NOT_RENTED_BY_RGT, poll

    provider, profile = open_platform(args.platform)
    with Ledger.open() as ledger:
        report = poll(args.instance, provider=provider, ledger=ledger, profile=profile)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    if report.cost_so_far is not None:
        cost = f"${report.cost_so_far:.4f}"
    elif report.cost_basis == NOT_RENTED_BY_RGT:
        cost = "unknown (not rented through rgt)"
    else:
        cost = "unknown"
    hourly = "?" if report.hourly_cost is None else f"${report.hourly_cost:.4f}/hour"
    gotcha = f" ({report.gotcha})" if report.gotcha else ""
    print(
        f"instance {report.instance_id}: {report.state} → {report.classification}{gotcha}\n"
        f"  next: {report.next_action}\n"
        f"  billing now: {', '.join(report.keeps_billing) or 'nothing'} at {hourly}; "
        f"so far ≈ {cost}"
    )
    return 0
