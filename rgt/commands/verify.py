"""`rgt verify LOCAL_DIR`: the pull matches the box's manifest byte for byte; checkpoints load."""

from __future__ import annotations

import argparse

ORDER = 90  # position in `rgt --help` (see rgt.cli.command_modules)
# How --progress-lines starts a progress line on stderr (rgt.mcp_server reads them).
PROGRESS_PREFIX = "rgt-progress: "
PROGRESS_LINE_SECONDS = 0.25
HELP = "check a pull against its manifest (roster, sizes, SHA-256) and that checkpoints load safely"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """LOCAL_DIR [--allow-pickle] [--run-id ID] [--instance-id ID] [--workers N] [--json]."""
    parser.add_argument("local_dir", help="the directory `rgt pull` copied into")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load .pt/.pth that weights_only refuses with a full unpickle (RUNS CODE from the "
        "file; only for a box you trust); recorded in PULL_VERIFIED.json and the ledger",
    )
    parser.add_argument("--run-id", help="refuse unless the manifest is of this run")
    parser.add_argument("--instance-id", help="refuse unless the manifest is of this instance")
    parser.add_argument(
        "--workers", type=int, help="hashing workers, threads or processes (default: CPU count)"
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.add_argument(
        "--progress-lines",
        action="store_true",
        help=f"report progress as '{PROGRESS_PREFIX}DONE TOTAL' (bytes) lines on stderr, a few "
        "a second and once at the end: for a program driving rgt (the MCP server's verify)",
    )


def run(args: argparse.Namespace) -> int:
    """Verify; exit 0 when everything matches, 1 with one line per problem otherwise."""
    import json
    import sys
    from pathlib import Path

    from rgt.errors import EXIT_CHECK_FAILED, EXIT_OK, UsageError
    from rgt.progress import ProgressBar, human_bytes
    from rgt.verify import VerificationFailed, summary, verify_pull

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be 1 or more")
    if not Path(args.local_dir).is_dir():  # a wrong argument (exit 2), not a failed check
        raise UsageError(
            f"LOCAL_DIR {args.local_dir}: not a directory; give the folder `rgt pull` copied into"
        )
    import time

    bar = ProgressBar("verify")
    last_line = [0.0]

    def progress(done: int, total: int) -> None:
        bar.update(done, total=total)
        if args.progress_lines and (
            done >= total or time.monotonic() - last_line[0] >= PROGRESS_LINE_SECONDS
        ):
            last_line[0] = time.monotonic()
            print(f"{PROGRESS_PREFIX}{done} {total}", file=sys.stderr, flush=True)

    try:
        record = verify_pull(
            Path(args.local_dir),
            allow_pickle=args.allow_pickle,
            workers=args.workers,
            progress=progress,
            expected_run_id=args.run_id,
            expected_instance_id=args.instance_id,
            keep_rows=False,  # the per-file rows are in PULL_VERIFIED.json; not printed here
        )
    except VerificationFailed as exc:
        bar.finish()
        if args.json:
            print(json.dumps({"ok": False, "problems": exc.problems}, indent=2))
        for line in exc.problems:
            print(f"rgt verify: FAILED: {line}", file=sys.stderr)
        print(
            f"rgt verify: {len(exc.problems)} problem(s); do NOT destroy the box; pull again",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    bar.finish()
    totals = record["totals"]
    if args.progress_lines:  # the end, also when hashing reported nothing (an empty pull)
        print(f"{PROGRESS_PREFIX}{totals['bytes']} {totals['bytes']}", file=sys.stderr, flush=True)
    seconds = max(float(record.get("seconds", 0.0)), 1e-9)
    if args.json:
        print(json.dumps(summary(record), indent=2))
        return EXIT_OK
    loads = ", ".join(f"{c['path']} ({c['method']})" for c in record["checkpoints"]) or "none"
    print(
        f"verified {totals['files']} files ({human_bytes(totals['bytes'])}) of run "
        f"{record['run_id']} from instance {record['instance_id']} in {seconds:.2f} s "
        f"({human_bytes(totals['bytes'] / seconds)}/s, {totals['files'] / seconds:,.0f} files/s); "
        "manifest sha256 "
        f"{record['manifest_sha256']}\ncheckpoints: {loads}\n"
        f"recorded in the ledger; next: {_next_step(record['instance_id'])}"
    )
    return EXIT_OK


def _next_step(instance_id: str) -> str:
    """`rgt approve ID` for an instance rgt rented (it is in the ledger); otherwise the meter-stop
    is the person's own action on the platform (rgt has no provider that could do it)."""
    from rgt.ledger import Ledger

    with Ledger.open() as ledger:
        known = any(each.instance_id == str(instance_id) for each in ledger.instances())
    if known:
        return f"rgt approve {instance_id}"
    return (
        f"{instance_id} is not an instance rgt rented (not in the ledger): stop its meter "
        "yourself with the platform's meter-stop verb (its profile, section 5) once this copy is "
        "safe"
    )
