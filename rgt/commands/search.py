"""`rgt search [--gpu RTX_4090] [--max-price P] ...`: rentable offers, safest filters first."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 50  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = (
    "search offers: verified, direct-port, reliable hosts only, cheapest first or by DLPerf per "
    "dollar, with a cost estimate (--hours)"
)


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
    parser.add_argument("--min-gpu-ram", type=float, help="GB of GPU RAM per GPU")
    parser.add_argument(
        "--min-cuda", type=float, help="highest CUDA the host driver must support (the image's)"
    )
    parser.add_argument(
        "--region", action="append", default=[], help="country code, e.g. US (repeatable)"
    )
    parser.add_argument("--min-ram", type=float, help="GB of CPU RAM")
    parser.add_argument("--min-disk-bw", type=float, help="disk bandwidth, MB/s")
    parser.add_argument("--min-inet-down", type=float, help="download speed, Mb/s")
    parser.add_argument("--min-inet-up", type=float, help="upload speed, Mb/s")
    parser.add_argument(
        "--order",
        choices=("price", "dlperf_per_dollar"),
        default="price",
        help="cheapest first (default) or most DLPerf per $/h first",
    )
    parser.add_argument("--hours", type=float, help="estimate each offer's cost for this long")
    parser.add_argument(
        "--results-gb", type=float, default=0.0, help="with --hours: GB of results to pull"
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
    from rgt.lifecycle import ESTIMATE_BASIS, Estimate, search
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
    minimums = ("min_gpu_ram", "min_cuda", "min_ram", "min_disk_bw", "min_inet_down")
    for name in (*minimums, "min_inet_up", "hours"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')}: {value} must be a number > 0")
    if not (math.isfinite(args.results_gb) and args.results_gb >= 0):
        raise UsageError(f"--results-gb: {args.results_gb} must be a number of GB >= 0")
    estimate = Estimate(args.hours, args.results_gb) if args.hours is not None else None
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
            min_gpu_ram_gb=args.min_gpu_ram,
            min_cuda=args.min_cuda,
            regions=tuple(args.region),
            min_ram_gb=args.min_ram,
            min_disk_mb_per_s=args.min_disk_bw,
            min_inet_down_mbps=args.min_inet_down,
            min_inet_up_mbps=args.min_inet_up,
            order=args.order,
        ),
        estimate=estimate,
    )
    if args.json:
        print(json.dumps(offers, indent=2))
        return 0
    if not offers:
        print("no offers match (verified, direct-port, reliable hosts only)")
        return 0
    head = f"{'OFFER':<10} {'GPU':<14} {'N':>2} {'$/HOUR':>8} {'RELIAB':>7} {'$/GB DOWN':>9}"
    head += f" {'DLPERF/$':>8} {'CUDA':>5} {'REGION':<12}"
    print(head + (f" {'EST $':>9}" if estimate else ""))
    for o in offers:
        ratio = "-" if o["dlperf_per_dollar"] is None else f"{o['dlperf_per_dollar']:.1f}"
        cuda = "-" if o["cuda_max_good"] is None else f"{o['cuda_max_good']:g}"
        line = (
            f"{o['offer_id']:<10} {o['gpu_name']:<14} {o['num_gpus']:>2} "
            f"{o['price_per_hour']:>8.4f} {o['reliability']:>7.4f} "
            f"{o['inet_down_cost_per_gb']:>9.4f} {ratio:>8} {cuda:>5} {o['region'] or '-':<12}"
        )
        print(line + (f" {o['estimate']['total']:>9.2f}" if estimate else ""))
    if estimate:
        print(f"EST $ for {estimate.hours:g} h and {estimate.results_gb:g} GB: {ESTIMATE_BASIS}")
    return 0
