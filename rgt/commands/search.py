"""`rgt search [--gpu RTX_4090] [--max-price P] ...`: rentable offers, safest filters first."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 50  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "search offers: verified, direct-port, reliable hosts only, cheapest first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Offer filters, --json, --platform."""
    parser.add_argument("--gpu", help="GPU model, e.g. RTX_4090")
    parser.add_argument("--count", type=int, default=1, help="GPUs per machine (default 1)")
    parser.add_argument("--max-price", type=float, help="highest $/hour to list")
    parser.add_argument(
        "--interruptible", action="store_true", help="list bid (interruptible) prices"
    )
    parser.add_argument("--disk", type=float, help="disk GB the job needs")
    parser.add_argument(
        "--min-reliability", type=float, default=0.98, help="lowest host reliability (0.9-1)"
    )
    parser.add_argument("--limit", type=int, default=10, help="how many offers (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print the offers."""
    import json
    import math

    from rgt.commands._platform import open_platform
    from rgt.errors import UsageError
    from rgt.lifecycle import search
    from rgt.providers.base import OfferQuery

    if args.count < 1:
        raise UsageError(f"--count: {args.count} must be at least 1")
    if not 0.9 <= args.min_reliability <= 1.0:
        raise UsageError(f"--min-reliability: {args.min_reliability} is not in [0.9, 1]")
    # `not x > 0` rejects NaN too (it compares false both ways); inf is no price either.
    if args.max_price is not None and not (math.isfinite(args.max_price) and args.max_price > 0):
        raise UsageError(f"--max-price: {args.max_price} must be a number > 0")
    if args.disk is not None and not (math.isfinite(args.disk) and args.disk > 0):
        raise UsageError(f"--disk: {args.disk} must be a number of GB > 0")
    if args.limit < 1:
        raise UsageError(f"--limit: {args.limit} must be at least 1")
    provider, _profile = open_platform(args.platform)
    offers = search(
        provider,
        OfferQuery(
            gpu_name=args.gpu,
            num_gpus=args.count,
            max_price_per_hour=args.max_price,
            interruptible=args.interruptible,
            min_reliability=args.min_reliability,
            disk_gb=args.disk,
            limit=args.limit,
        ),
    )
    if args.json:
        print(json.dumps(offers, indent=2))
        return 0
    if not offers:
        print("no offers match (verified, direct-port, reliable hosts only)")
        return 0
    print(f"{'OFFER':<10} {'GPU':<14} {'N':>2} {'$/HOUR':>8} {'RELIAB':>7} {'$/GB DOWN':>9}")
    for o in offers:
        print(
            f"{o['offer_id']:<10} {o['gpu_name']:<14} {o['num_gpus']:>2} "
            f"{o['price_per_hour']:>8.4f} {o['reliability']:>7.4f} "
            f"{o['inet_down_cost_per_gb']:>9.4f}"
        )
    return 0
