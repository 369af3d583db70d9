"""`rgt launch OFFER --job JOB.yaml --max-price P`: rent an offer for a job (costs money);
`rgt launch --on ID --job JOB.yaml`: start the job on a box attached with `rgt attach`."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 60  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = (
    "rent an offer for a job: render the boot hook, create, record in the ledger; or start it "
    "over ssh on a box from `rgt attach` (--on ID)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """OFFER --job FILE --max-price P [--interruptible --bid B] [--json], or --on ID --job FILE."""
    parser.add_argument("offer", nargs="?", help="offer id (from `rgt search`)")
    parser.add_argument("--job", required=True, help="job request YAML file")
    parser.add_argument(
        "--max-price", type=float, help="refuse if the rental costs more $/hour (with OFFER)"
    )
    parser.add_argument(
        "--on",
        metavar="ID",
        help="start the job over ssh on a box attached with `rgt attach` (no OFFER: nothing "
        "is rented)",
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
    from rgt.errors import UsageError
    from rgt.job import load_job
    from rgt.ledger import Ledger
    from rgt.lifecycle import launch
    from rgt.providers.base import run_label

    if args.on is not None:
        return _launch_on(args)
    if args.offer is None or args.max_price is None:
        raise UsageError("give OFFER and --max-price to rent, or --on ID for an attached box")
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


def _launch_on(args: argparse.Namespace) -> int:
    """Ship and start the job on an attached box; print how it runs and what comes next."""
    import json
    import sys

    from rgt.attached import launch_on_box
    from rgt.commands._platform import open_platform
    from rgt.errors import UsageError
    from rgt.job import load_job
    from rgt.ledger import Ledger
    from rgt.providers.ssh import SshProvider, is_attached_id

    extra = [
        flag
        for flag, value in (
            ("OFFER", args.offer),
            ("--max-price", args.max_price),
            ("--interruptible", args.interruptible or None),
            ("--bid", args.bid),
        )
        if value
    ]
    if extra:
        raise UsageError(f"--on starts a job on an attached box; {', '.join(extra)} rent one")
    if not is_attached_id(args.on):
        raise UsageError(
            f"--on {args.on}: not an attached box's id (ssh-1, ssh-2, ...; see `rgt attach`)"
        )
    job = load_job(args.job)
    provider, profile = open_platform(args.platform, args.on)
    assert isinstance(provider, SshProvider)
    with Ledger.open() as ledger:
        result = launch_on_box(args.on, provider=provider, ledger=ledger, profile=profile, job=job)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(
        f"run {result.run_id} started on instance {result.instance_id} ({result.how}); boot "
        f"hook {result.hook_path}\nnext: rgt poll {result.instance_id}"
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
