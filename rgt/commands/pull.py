"""`rgt pull INSTANCE REMOTE_ROOT LOCAL_DIR`: the on-box manifest, then the files, resumably."""

from __future__ import annotations

import argparse

from rgt.commands._platform import add_platform_argument

ORDER = 80  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "copy a run's results off the box: manifest first, then files over rsync (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """INSTANCE REMOTE_ROOT LOCAL_DIR [--start] [--json]."""
    parser.add_argument("instance", help="the instance id")
    parser.add_argument(
        "remote_root", help="absolute result root on the box (holds PULL_MANIFEST.json)"
    )
    parser.add_argument(
        "local_dir",
        help="local directory to copy into: new (created), empty, or an earlier pull of this run",
    )
    parser.add_argument(
        "--start",
        action="store_true",
        help="if the instance is stopped, start it and wait for it first (it bills compute again)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Pull, record the pull in the ledger, and say what comes next."""
    import json
    from dataclasses import asdict

    from rgt.commands._platform import open_platform
    from rgt.ledger import Ledger
    from rgt.progress import ProgressBar
    from rgt.pull import pull_instance

    provider, profile = open_platform(args.platform, args.instance)
    bar = ProgressBar(f"pull {args.instance}")

    def progress(done: int, total: int | None, current: str | None) -> None:
        bar.update(done, total=total, note=current)

    with Ledger.open() as ledger:
        result = pull_instance(
            args.instance,
            args.remote_root,
            args.local_dir,  # as typed: an empty one is refused, not taken for "."
            provider=provider,
            ledger=ledger,
            profile=profile,
            progress=progress,
            start_if_stopped=args.start,
        )
    bar.finish()
    if args.json:
        data = asdict(result)
        data["local_dir"] = str(result.local_dir)
        print(json.dumps(data, indent=2))
    else:
        print(
            f"pulled {result.files} files ({result.bytes_total} bytes, {result.bytes_transferred} "
            f"sent this time) of run {result.run_id} from instance {result.instance_id} into "
            f"{result.local_dir}; manifest sha256 {result.manifest_sha256}\n"
            f"next: rgt verify {result.local_dir}"
        )
    return 0
