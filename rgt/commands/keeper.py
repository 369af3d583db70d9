"""`rgt keeper setup|check|remove|set-key`: run rgt as a dedicated user that alone holds the key.

All four are the human's, run with root rights (`sudo rgt keeper ...`); see rgt.keeper for the
design and docs/keeper.md for the walk-through.
"""

from __future__ import annotations

import argparse

ORDER = 105  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = (
    "keeper mode (run with sudo): a dedicated user holds the vast.ai key, the ledger and the "
    "approval hash; the agent reaches rgt only through `rgt mcp` as that user"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """ACTION [--user NAME] [--human NAME] [--rgt PATH] [--vast-url URL] [--purge]."""
    from rgt.keeper import DEFAULT_USER

    parser.add_argument(
        "action",
        choices=("setup", "check", "remove", "set-key"),
        help="setup: create the keeper user, its directories and the sudoers rule; check: "
        "audit them (exit 1 with findings); remove: undo setup; set-key: type the vast.ai API "
        "key into the keeper's key file (read from the terminal, never echoed)",
    )
    parser.add_argument(
        "--user", default=DEFAULT_USER, help=f"the keeper's user name (default {DEFAULT_USER})"
    )
    parser.add_argument(
        "--human",
        help="setup: the user (yours, the agent's) allowed to run `rgt mcp` as the keeper "
        "(default: the user who ran sudo)",
    )
    parser.add_argument(
        "--rgt",
        help="setup: absolute path of the rgt executable the sudoers rule allows (default: this "
        "one); it and its directories must be root's alone",
    )
    parser.add_argument(
        "--vast-url",
        help="setup: a vast.ai API URL other than the real one (an `rgt sim` rehearsal)",
    )
    parser.add_argument(
        "--home", help="setup: the keeper's home (default /var/lib/<user>)", default=None
    )
    parser.add_argument(
        "--purge",
        action="store_true",
        help="remove: also delete the keeper's home (ledger, approval hash, key, results); "
        "without it they are kept",
    )


def run(args: argparse.Namespace) -> int:
    """Dispatch to rgt.keeper_admin."""
    from rgt import keeper_admin

    if args.action == "setup":
        return keeper_admin.setup(
            args.user, human=args.human, rgt=args.rgt, vast_url=args.vast_url, home=args.home
        )
    if args.action == "check":
        return keeper_admin.check(args.user)
    if args.action == "remove":
        return keeper_admin.remove(args.user, purge=args.purge)
    return keeper_admin.set_key(args.user)
