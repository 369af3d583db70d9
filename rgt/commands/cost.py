"""`rgt cost [INSTANCE]`: what rgt's rentals have cost so far and burn per hour (estimates)."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 135  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "spend so far and hourly burn of the instances rgt rented (estimates)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """[INSTANCE] [--json]."""
    parser.add_argument("instance", nargs="?", help="only this instance")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print the cost table."""
    import json

    from rgt.commands._platform import open_platform
    from rgt.ledger import Ledger
    from rgt.lifecycle import cost_report

    provider, profile = open_platform(args.platform)
    with Ledger.open() as ledger:
        report = cost_report(
            provider=provider, ledger=ledger, profile=profile, instance_id=args.instance
        )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not report["instances"]:
        print("no instances in the ledger")
        return 0
    print(f"{'INSTANCE':<12} {'STATE':<10} {'$/HOUR':>8} {'SO FAR':>10}  BILLING NOW")
    for row in report["instances"]:
        hourly = "?" if row["hourly_cost"] is None else f"{row['hourly_cost']:.4f}"
        so_far = "?" if row["cost_so_far"] is None else f"{row['cost_so_far']:.4f}"
        print(
            f"{row['instance_id']:<12} {row['state']:<10} {hourly:>8} {so_far:>10}  "
            f"{', '.join(row['keeps_billing']) or '-'}"
        )
    total = f"total so far ≈ ${report['total_so_far']:.4f}"
    if report["unknown"]:
        # Never a silent undercount: say which instances the total leaves out.
        total += (
            f" over the {report['total_covers']} instance(s) with a known cost, "
            f"{report['total_note']}"
        )
    burning = f"burning ≈ ${report['hourly_total']:.4f}/h"
    if report["hourly_unknown"]:
        # Nor a silent undercount of the burn rate: an unknown rate is not $0/h.
        burning += (
            f" over the {report['hourly_covers']} instance(s) with a known rate, "
            f"{report['hourly_note']}"
        )
    print(f"{total}; {burning} ({report['basis']})")
    return 0
