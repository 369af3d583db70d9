"""`rgt manifest ROOT --run-id ID --roster FILE`: build PULL_MANIFEST.json (what the box runs)."""

from __future__ import annotations

import argparse

ORDER = 85  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "write ROOT/PULL_MANIFEST.json: roster, each file's path, size and SHA-256 (runs on the box)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """ROOT --run-id ID --roster FILE [--instance-id ID] [--output PATH] [--workers N] [--json]."""
    parser.add_argument("root", help="the results root (one directory per roster entry)")
    parser.add_argument("--run-id", required=True, help="the run id recorded in the manifest")
    parser.add_argument(
        "--roster", required=True, help="file naming the top-level result directories, one a line"
    )
    parser.add_argument(
        "--instance-id", help="the instance id (default: $CONTAINER_ID, set by vast.ai, if any)"
    )
    parser.add_argument("--output", help="where to write (default ROOT/PULL_MANIFEST.json)")
    parser.add_argument(
        "--workers", type=int, help="hashing workers, threads or processes (default: CPU count)"
    )
    parser.add_argument("--json", action="store_true", help="print path, sha256, totals as JSON")


def run(args: argparse.Namespace) -> int:
    """Build and write the manifest; exit 1 with one line per problem when refused."""
    import json
    import os
    import sys
    from pathlib import Path

    from rgt import manifest
    from rgt.errors import EXIT_CHECK_FAILED, EXIT_OK, LocalDiskFull, UsageError, is_disk_full

    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"ROOT {root}: not a directory")
    if args.output is not None:
        output = Path(args.output)
        if output.is_dir():
            raise UsageError(f"--output {output}: is a directory; give the manifest's file path")
        if not output.parent.is_dir():
            raise UsageError(f"--output {output}: folder {output.parent} does not exist")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be 1 or more")
    bad = manifest.check_id("--run-id", args.run_id)
    bad += manifest.check_id("--instance-id", args.instance_id)
    if bad:  # a bad argument is usage (exit 2), not a refusal of the tree (exit 1)
        raise UsageError(bad[0])
    try:
        roster = manifest.read_roster(args.roster)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    instance_id = args.instance_id or os.environ.get(manifest.DEFAULT_INSTANCE_ID_ENV) or None
    try:
        path, digest, document = manifest.write_manifest_and_describe(
            root, args.run_id, roster, instance_id, output=args.output, workers=args.workers
        )
    except manifest.ManifestRefused as exc:
        for line in exc.problems:
            print(f"rgt manifest: refused: {line}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        target = args.output or root / manifest.MANIFEST_NAME
        raise LocalDiskFull(
            f"{target}: no space left on device writing the manifest; make room there, then "
            "run the same command again"
        ) from None
    summary = {
        "path": path,
        "sha256": digest,
        "run_id": document["run_id"],
        "instance_id": document["instance_id"],
        "files": document["totals"]["files"],
        "bytes": document["totals"]["bytes"],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote {path}: {summary['files']} files, {summary['bytes']} bytes, run "
            f"{summary['run_id']}, instance {summary['instance_id']}; sha256 {summary['sha256']}"
        )
    return EXIT_OK
