"""`rgt run JOB.yaml --max-price P [--budget DOLLARS] [--detach]`: supervise one run to its end
(rent, watch, relaunch elsewhere from the newest durable checkpoint when the box is lost or a
much cheaper offer appears for a spot run, then pull → verify → approve → destroy); see
rgt.supervisor."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from rgt.commands._platform import add_platform_argument

ORDER = 55  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = (
    "supervise a run to its end: rent, watch, relaunch on another offer from the newest durable "
    "checkpoint when the box is lost (or, for a spot run, when a much cheaper offer appears), "
    "then pull, verify and destroy with a human's approval"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """JOB --max-price P [--budget D] [--interruptible [--bid B] [--move-if-cheaper F]]
    [--detach] [--json]."""
    from rgt.runs import MOVE_MARGIN

    parser.add_argument("job", help="job request YAML file")
    parser.add_argument(
        "--max-price", type=float, required=True, help="no attempt rents above this $/hour"
    )
    parser.add_argument(
        "--budget",
        type=float,
        metavar="DOLLARS",
        help="dollars all attempts together may cost; once spent, no attempt is opened (exit 6)",
    )
    parser.add_argument("--interruptible", action="store_true", help="rent bids (spot)")
    parser.add_argument(
        "--bid", type=float, help="$/hour bid with --interruptible (default: each offer's minimum)"
    )
    parser.add_argument(
        "--move-if-cheaper",
        type=float,
        metavar="FRACTION",
        help="with --interruptible and a durable target: move the run to an offer cheaper by at "
        "least this fraction of its price, right after a durable checkpoint, when the saving "
        f"pays for the restart (default {MOVE_MARGIN:g}; 0: never move)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="seconds between looks at the box (default 10)",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="supervise in a background process; follow it with `rgt poll RUN_ID`",
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    add_platform_argument(parser)


def _positive(value: float | None, flag: str) -> None:
    from rgt.errors import UsageError

    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} {value:g}: must be a number > 0")


def _fraction(value: float | None, flag: str) -> None:
    from rgt.errors import UsageError

    if value is not None and not (math.isfinite(value) and 0 <= value < 1):
        raise UsageError(f"{flag} {value:g}: must be a fraction >= 0 and < 1 (0: never move)")


def run(args: argparse.Namespace) -> int:
    """Supervise the run (or start a detached supervisor) and print how it ended."""
    import json
    import sys

    from rgt.commands._platform import open_platform
    from rgt.errors import UsageError
    from rgt.job import load_job
    from rgt.ledger import Ledger
    from rgt.runs import MOVE_MARGIN
    from rgt.supervisor import DEFAULT_INTERVAL_SECONDS, RunRequest, Supervisor

    _positive(args.max_price, "--max-price")
    _positive(args.budget, "--budget")
    _positive(args.bid, "--bid")
    _positive(args.interval, "--interval")
    if args.bid is not None and not args.interruptible:
        raise UsageError("--bid goes with --interruptible")
    _fraction(args.move_if_cheaper, "--move-if-cheaper")
    if args.move_if_cheaper is not None and not args.interruptible:
        raise UsageError("--move-if-cheaper goes with --interruptible (only a spot run moves)")
    job = load_job(args.job)
    if args.detach:
        return _detach(args, job.run_id)
    provider, profile = open_platform(args.platform)
    if args.interruptible and not profile.spot_available:
        raise UsageError(f"profile {profile.name}: interruptible rentals are not available")
    request = RunRequest(
        job=job,
        max_price_per_hour=args.max_price,
        budget=args.budget,
        interruptible=args.interruptible,
        bid_per_hour=args.bid,
        job_file=str(args.job),
        move_margin=MOVE_MARGIN if args.move_if_cheaper is None else args.move_if_cheaper,
    )
    with Ledger.open() as ledger:
        supervisor = Supervisor(
            request,
            provider=provider,
            ledger=ledger,
            profile=profile,
            approve=_terminal_approver() if sys.stdin.isatty() else None,
            approve_discard=_terminal_discard_approver() if sys.stdin.isatty() else None,
            say=status_writer(),
            interval=args.interval or DEFAULT_INTERVAL_SECONDS,
        )
        outcome = supervisor.supervise()
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        print(outcome.message)
        for attempt in outcome.attempts:
            print(
                f"  attempt {attempt['attempt']}: instance {attempt['instance_id']} "
                f"(machine {attempt['machine_id']}) from {attempt['seed'] or 'scratch'}: "
                f"{attempt['ended'] or 'running'}; ≈ ${attempt['cost']:.4f}"
            )
        print(f"  spent ≈ ${outcome.spent:.4f} (rental price x time, all attempts)")
    return 0


def status_writer() -> Callable[[str], None]:
    """Write `rgt run: LINE` to this process's stderr as it is now. Bound once, so the
    supervisor's lines go to the terminal it started on whatever replaces sys.stderr later
    (rgt.providers.redact.captured_output routes only the capturing thread's own prints)."""
    import sys

    stream = sys.stderr

    def say(line: str) -> None:
        print(f"rgt run: {line}", file=stream, flush=True)

    return say


def _terminal_approver() -> Any:
    """Ask the human at this terminal (the destroy command's prompt)."""
    from rgt import approval

    def approve(ledger: Any, instance_id: str, summary: str) -> int:
        return approval.prompt_approval(ledger, instance_id, summary=summary)

    return approve


def _terminal_discard_approver() -> Any:
    """Ask the human at this terminal to discard a superseded box (`rgt discard`'s prompt)."""
    from rgt import approval

    def approve(ledger: Any, instance_id: str, summary: str) -> int:
        return approval.prompt_discard_approval(ledger, instance_id, summary=summary)

    return approve


def _detach(args: argparse.Namespace, run_id: str) -> int:
    """Start the supervisor in the background; print its pid, log and how to follow it."""
    import json

    from rgt.supervisor import start_detached

    started = start_detached(
        str(args.job),
        run_id,
        max_price_per_hour=args.max_price,
        budget=args.budget,
        interruptible=args.interruptible,
        bid_per_hour=args.bid,
        interval=args.interval,
        platform=args.platform,
        move_margin=args.move_if_cheaper,
    )
    if args.json:
        print(json.dumps(started, indent=2))
    else:
        print(
            f"run {run_id}: supervisor started in the background (pid {started['pid']}); its "
            f"log is {started['log']}\nnext: rgt poll {run_id}"
        )
    return 0
