"""`rgt sync INSTANCE`: one round of durable checkpoints (docs/durable.md)."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 78  # position in `rgt --help` (see rgt.cli.command_modules): before pull
HELP = (
    "make a running job's new checkpoints durable (its job's `durable:` target: local or a "
    "bucket) and verify each against the SHA-256 the box computed; one round"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE [--job FILE] [--json]."""
    parser.add_argument("instance", help="the instance id")
    parser.add_argument(
        "--job",
        metavar="FILE",
        help="the run's job request (default: the durable target rgt remembered at launch)",
    )
    parser.add_argument("--json", action="store_true", help="print the round's report as JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """One round; exit 1 when a checkpoint was refused (its hash did not match the box's)."""
    import json

    from rgt.commands._platform import check_instance_id, open_platform
    from rgt.durable import lower_priority, sync_once
    from rgt.job import load_job
    from rgt.ledger import Ledger
    from rgt.progress import ProgressBar

    check_instance_id(args.platform, args.instance)
    job = load_job(args.job) if args.job else None
    provider, profile = open_platform(args.platform, args.instance)
    bar = ProgressBar(f"sync {args.instance}")

    def progress(done: int, total: int | None, current: str | None) -> None:
        bar.update(done, total=total, note=current)

    lower_priority()  # a round yields to a job on this machine (a loop of `rgt sync` too)
    with Ledger.open() as ledger:
        report = sync_once(
            ledger, args.instance, progress=progress, provider=provider, profile=profile, job=job
        )
    bar.finish()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        newest = report.newest
        print(
            f"run {report.run_id} ({report.target}, {report.location}): "
            f"{len(report.verified)} checkpoint(s) verified now, {report.already} before"
            + (f", {len(report.pending)} pending" if report.pending else "")
            + (
                f", {len(report.missed)} gone from the box before rgt copied them"
                if report.missed
                else ""
            )
            + "; newest durable: "
            + (f"{newest.name} (sha256 {newest.sha256})" if newest else "none yet")
        )
        for refusal in report.refused:
            print(f"REFUSED {refusal.name}: {refusal.reason}")
    return 1 if report.refused else 0
