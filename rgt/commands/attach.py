"""`rgt attach PROFILE user@host[:port]`: record a box rgt did not rent, reached over ssh."""

from __future__ import annotations

import argparse

ORDER = 55  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "record a box rgt did not rent (a pod, a lab server, a login node) to run jobs on over ssh"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """PROFILE TARGET [--label NAME] [--identity FILE] [--json]."""
    parser.add_argument(
        "profile", help="the platform profile of the box (e.g. runpod, generic-ssh, china:matpool)"
    )
    parser.add_argument("target", help="user@host or user@host:port (default port 22)")
    parser.add_argument("--label", help="a name for the box, shown in the ledger")
    parser.add_argument(
        "--identity", help="the ssh private key for this box (default: $RGT_SSH_KEY, else ssh's)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Check the box answers over ssh (pinning its host key), record it, print its local id."""
    import json

    from rgt.attached import attach
    from rgt.ledger import Ledger

    with Ledger.open() as ledger:
        result = attach(
            ledger, args.profile, args.target, name=args.label, identity_file=args.identity
        )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    how = "attached" if result.created else "already attached"
    print(
        f"instance {result.instance_id}: {result.endpoint} {how} with profile {result.profile}; "
        "its host key is pinned\n"
        f"next: rgt launch --on {result.instance_id} --job JOB.yaml"
    )
    return 0
