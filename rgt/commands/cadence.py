"""`rgt cadence --mtbf 3h --ckpt-cost 30s [--step-time 2s] [--json]`: Young/Daly interval."""

from __future__ import annotations

import argparse

ORDER = 30  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "how often to checkpoint: Young/Daly W = sqrt(2 * MTBF * checkpoint cost)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--mtbf, --ckpt-cost, --step-time, --json."""
    parser.add_argument(
        "--mtbf", required=True, metavar="DURATION", help="mean time between preemptions, e.g. 3h"
    )
    parser.add_argument(
        "--ckpt-cost",
        required=True,
        metavar="DURATION",
        help="time to write a checkpoint, e.g. 30s",
    )
    parser.add_argument(
        "--step-time", metavar="DURATION", help="time per training step: round to whole steps"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Print the interval (and steps)."""
    import json

    from rgt.cadence import DurationError, format_seconds, parse_duration, young_daly
    from rgt.errors import UsageError

    values = {}
    for flag, text in (
        ("--mtbf", args.mtbf),
        ("--ckpt-cost", args.ckpt_cost),
        ("--step-time", args.step_time),
    ):
        if text is None:
            continue
        try:
            values[flag] = parse_duration(text)
        except DurationError as exc:
            raise UsageError(f"{flag}: {exc}") from None
    mtbf, cost = values["--mtbf"], values["--ckpt-cost"]
    if cost >= mtbf:
        raise UsageError(
            f"--ckpt-cost ({args.ckpt_cost}) must be well below --mtbf ({args.mtbf}); "
            "Young/Daly assumes checkpoints are cheap next to the time between failures"
        )
    cadence = young_daly(mtbf, cost, values.get("--step-time"))
    if args.json:
        print(json.dumps(cadence.as_dict(), indent=2))
        return 0
    line = f"checkpoint every {format_seconds(cadence.interval_seconds)}"
    if cadence.interval_steps is not None:
        line += f" = every {cadence.interval_steps} steps"
    print(line)
    print(
        f"  (Young/Daly W = sqrt(2 x {format_seconds(mtbf)} x {format_seconds(cost)}); "
        f"expected overhead ~{cadence.overhead_fraction:.1%})"
    )
    return 0
