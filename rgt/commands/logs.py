"""`rgt logs INSTANCE [--tail N]`: the box's recent log lines (the run's boot-hook log)."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 75  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "print an instance's recent log lines (the boot hook's and the job's output)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE [--tail N]."""
    parser.add_argument("instance", help="the instance id")
    parser.add_argument("--tail", type=int, default=200, help="how many lines (default 200)")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print the provider's log lines."""
    from rgt.commands._platform import check_instance_id, open_platform
    from rgt.errors import UsageError

    if not 1 <= args.tail <= 100_000:
        raise UsageError(f"--tail {args.tail}: must be in [1, 100000]")
    check_instance_id(args.platform, args.instance)
    provider, _ = open_platform(args.platform, args.instance)
    text = provider.logs(args.instance, tail=args.tail)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0
