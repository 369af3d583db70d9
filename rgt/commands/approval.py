"""`rgt approval init|status`: set the human's approval passphrase, or show whether one is set."""

from __future__ import annotations

import argparse

ORDER = 100  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "set (init) or inspect (status) the approval passphrase a human types to allow a destroy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `init` and `status`."""
    parser.add_argument(
        "action",
        choices=("init", "status"),
        help="init: set or change the passphrase (prompted twice on a terminal); "
        "status: say whether one is configured",
    )


def run(args: argparse.Namespace) -> int:
    """Set or report the approval passphrase."""
    from rgt import approval

    if args.action == "status":
        if approval.is_configured():
            approval.load_passphrase_hash()  # a corrupt file is not "configured" (exit 4)
            print(f"approval passphrase: configured ({approval.approval_path()})")
            return 0
        print("approval passphrase: NOT configured; run `rgt approval init` in a terminal")
        return 1
    from rgt.ledger import Ledger

    with Ledger.open() as ledger:
        passphrase, seen = approval.prompt_new_passphrase(ledger)
    path = approval.store_passphrase(passphrase, replacing=seen)
    print(f"approval passphrase stored as a salted scrypt hash in {path} (mode 0600)")
    return 0
