"""`rgt launch OFFER --job JOB.yaml --max-price P`: rent an offer for a job (costs money)."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 60  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "rent an offer for a job: render the boot hook, create, record in the ledger"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """OFFER --job FILE --max-price P [--interruptible --bid B] [--json]."""
    parser.add_argument("offer", help="offer id (from `rgt search`)")
    parser.add_argument("--job", required=True, help="job request YAML file")
    parser.add_argument(
        "--max-price", type=float, required=True, help="refuse if the rental costs more $/hour"
    )
    parser.add_argument("--interruptible", action="store_true", help="rent as a bid (spot)")
    parser.add_argument("--bid", type=float, help="$/hour bid for --interruptible")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Launch and print the instance id, price and warnings."""
    import json
    import sys

    from rgt.commands._platform import open_platform
    from rgt.job import load_job
    from rgt.ledger import Ledger
    from rgt.lifecycle import launch
    from rgt.providers.base import run_label

    job = load_job(args.job)
    provider, profile = open_platform(args.platform)
    with Ledger.open() as ledger:
        try:
            result = launch(
                provider=provider,
                ledger=ledger,
                profile=profile,
                job=job,
                offer_id=args.offer,
                max_price_per_hour=args.max_price,
                interruptible=args.interruptible,
                bid_per_hour=args.bid,
            )
        except KeyboardInterrupt:
            # The create may have reached the platform: a box that bills, recorded only as a
            # pending launch. Say so instead of a bare "interrupted".
            print(
                f"rgt launch: interrupted: a box labelled {run_label(job.run_id)} may have been "
                "rented and bill; the launch is pending in the ledger: `rgt sweep` finds such a "
                "box by its label and records it, and the same `rgt launch` again adopts it "
                "instead of renting another",
                file=sys.stderr,
            )
            return 130
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    price = "?" if result.price_per_hour is None else f"{result.price_per_hour:.4f}"
    how = (
        "adopted (an earlier launch rented it; nothing new was rented)"
        if result.adopted
        else f"rented from offer {result.offer_id}"
    )
    print(
        f"instance {result.instance_id} ({result.label}) {how} at {price} $/hour; "
        f"state {result.state}\n"
        f"next: rgt poll {result.instance_id}"
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
