"""`rgt demo [--yes] [--json] [--dir DIR]`: the whole lifecycle on the embedded emulator."""

from __future__ import annotations

import argparse

ORDER = 5  # first in `rgt --help`: the README's first command
HELP = (
    "rehearse a whole rental on the embedded vast.ai emulator: launch, preemption, resume, "
    "pull, verify, approve, destroy, cost report (no account, no network)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--yes, --json, --dir."""
    parser.add_argument(
        "--yes",
        action="store_true",
        help="approve the destroy of the demo's emulated instance without a prompt (recorded in "
        "the demo's own ledger as a 'demo --yes' approval; valid only for the in-process "
        "emulator)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--scenario",
        choices=["preempt", "recover"],
        default="preempt",
        help="preempt (default): one box, preempted and resumed; recover: `rgt run` loses its "
        "first box's host at ~40 %% and finishes on another offer from durable checkpoints",
    )
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help="keep the demo's files here (ledger, emulator state, pulled results); must be empty "
        "or new. Default: a fresh temporary directory, removed afterwards",
    )


def run(args: argparse.Namespace) -> int:
    """Run the scenario and print the report."""
    import json
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    from rgt.demo.report import render_text
    from rgt.demo.scenario import Demo, DemoSettings

    keep = args.dir is not None
    demo_dir = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="rgt-demo-"))
    if args.scenario == "recover":
        from rgt.demo.recover import RECOVER_SETTINGS, RecoverDemo, render_recover_text

        render_text = render_recover_text
        demo: Demo = RecoverDemo(RECOVER_SETTINGS, yes=args.yes, demo_dir=demo_dir)
    else:
        demo = Demo(DemoSettings(), yes=args.yes, demo_dir=demo_dir)
    try:
        report = demo.run()
        if not keep:
            report["demo_dir"] = f"{demo_dir} (removed; keep it with --dir DIR)"
    finally:
        if not keep:
            shutil.rmtree(demo_dir, ignore_errors=True)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report))
    return 0
