"""`rgt poll INSTANCE [--until done]`: state, the job's outcome, next action, cost so far."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from rgt.commands._platform import add_platform_argument

ORDER = 70  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "one look at an instance and its job: state, outcome, next action, cost so far"
DEFAULT_TIMEOUT_SECONDS = 3600.0
DEFAULT_INTERVAL_SECONDS = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE [--until done [--timeout S] [--interval S]] [--json]."""
    parser.add_argument(
        "instance", help="the instance id, or the run id of a run `rgt run` supervises"
    )
    parser.add_argument(
        "--until",
        choices=["done"],
        help=(
            "poll until the job succeeded or failed (or the instance is gone); exit 0 "
            "succeeded, 1 failed, 3 instance gone or box unreachable, 5 timed out"
        ),
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"with --until: give up after this long (default {DEFAULT_TIMEOUT_SECONDS:.0f})",
    )
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help=f"with --until: seconds between polls (default {DEFAULT_INTERVAL_SECONDS:.0f})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_platform_argument(parser)


def _seconds(value: float | None, flag: str, default: float) -> float:
    from rgt.errors import UsageError

    if value is None:
        return default
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} {value:g}: must be a number of seconds > 0")
    return value


def run(args: argparse.Namespace) -> int:
    """Print the poll report; with --until done, wait for the job first."""
    import json

    from rgt.commands._platform import open_platform
    from rgt.errors import UsageError
    from rgt.ledger import Ledger
    from rgt.lifecycle import poll, wait_until_done

    if args.until is None and (args.timeout is not None or args.interval is not None):
        raise UsageError("--timeout and --interval go with --until done")
    timeout = _seconds(args.timeout, "--timeout", DEFAULT_TIMEOUT_SECONDS)
    interval = _seconds(args.interval, "--interval", DEFAULT_INTERVAL_SECONDS)
    if args.until is None and _print_run(args.instance, as_json=args.json):
        return 0
    provider, profile = open_platform(args.platform, args.instance)
    with Ledger.open() as ledger:
        if args.until is None:
            report = poll(
                args.instance, provider=provider, ledger=ledger, profile=profile, read_job=True
            )
        else:
            report = wait_until_done(
                args.instance,
                provider=provider,
                ledger=ledger,
                profile=profile,
                timeout=timeout,
                interval=interval,
                on_poll=_progress_printer(),
            )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(human(report))
    return 0 if args.until is None else wait_exit_code(report)


def _print_run(name: str, *, as_json: bool) -> bool:
    """Print where run `name` stands when `rgt run` supervised a run of that id and no
    instance rgt knows has that id; False otherwise (an instance is polled)."""
    import json

    from rgt.ledger import Ledger
    from rgt.supervisor import run_report

    with Ledger.open() as ledger:
        if any(r.instance_id == name for r in ledger.instances()):
            return False
        report = run_report(ledger, name)
    if report is None:
        return False
    if as_json:
        print(json.dumps(report, indent=2))
        return True
    lines = [
        f"run {name}: {report['status']}" + (f" ({report['detail']})" if report["detail"] else "")
    ]
    for attempt in report["attempts"]:
        lines.append(
            f"  attempt {attempt['attempt']}: instance {attempt['instance_id']} "
            f"(machine {attempt['machine_id']}) from {attempt['seed'] or 'scratch'}: "
            f"{attempt['ended'] or 'running'}; ≈ ${attempt['cost']:.4f}"
        )
    budget = "" if report["budget"] is None else f" of the budget ${report['budget']:.4f}"
    lines += [f"  spent ≈ ${report['spent']:.4f}{budget}", f"  next: {report['next_action']}"]
    print("\n".join(lines))
    return True


def wait_exit_code(report: Any) -> int:
    """The exit code of `--until done`: 0 succeeded, 1 failed, 3 the instance is gone or the
    box did not answer, 5 the timeout passed first (see the README's exit codes)."""
    from rgt.errors import EXIT_CHECK_FAILED, EXIT_NOT_DONE, EXIT_OK, EXIT_PROVIDER

    job = report.job.state if report.job is not None else None
    if job == "succeeded":
        return EXIT_OK
    if job == "failed":
        return EXIT_CHECK_FAILED
    if report.state == "gone" or job == "unreachable":
        return EXIT_PROVIDER
    return EXIT_NOT_DONE


def _progress_printer() -> Any:
    """A line on stderr whenever the job's summary changes while waiting."""
    last: list[str] = []

    def show(report: Any, elapsed: float) -> None:
        line = report.job.summary if report.job is not None else report.classification
        if not last or last[-1] != line:
            last.append(line)
            print(f"rgt poll: {elapsed:.0f} s: job {line}", file=sys.stderr, flush=True)

    return show


def human(report: Any) -> str:
    """The report as `rgt poll` prints it."""
    from rgt.lifecycle import LOG_LINES_SHOWN, NOT_RENTED_BY_RGT

    if report.cost_so_far is not None:
        cost = f"${report.cost_so_far:.4f}"
    elif report.cost_basis == NOT_RENTED_BY_RGT:
        cost = "unknown (not rented through rgt)"
    else:
        cost = "unknown"
    hourly = "?" if report.hourly_cost is None else f"${report.hourly_cost:.4f}/hour"
    gotcha = f" ({report.gotcha})" if report.gotcha else ""
    lines = [f"instance {report.instance_id}: {report.state} → {report.classification}{gotcha}"]
    job = report.job
    if job is not None:
        lines.append(f"  job: {job.summary}")
        if job.state == "failed":
            lines += [f"    | {line}" for line in job.log_tail[-LOG_LINES_SHOWN:]]
    if report.waited_seconds is not None:
        lines.append(f"  waited: {report.waited_seconds:.0f} s")
    lines += [
        f"  next: {report.next_action}",
        f"  billing now: {', '.join(report.keeps_billing) or 'nothing'} at {hourly}; "
        f"so far ≈ {cost}",
    ]
    return "\n".join(lines)
