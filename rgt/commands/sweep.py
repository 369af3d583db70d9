"""`rgt sweep [--json] [--platform P]`: every instance the API key can see, its cost, and what
keeps billing; without --platform, every platform with boxes in the ledger (vast.ai through its
API when a key is set, and the boxes attached over ssh of every profile)."""

from __future__ import annotations

import argparse
from typing import Any

from rgt.commands._platform import add_platform_argument

ORDER = 130  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = (
    "list every instance the API key can see and every attached box, its hourly cost and what "
    "keeps billing"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """[--json] [--platform]."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_platform_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print the sweep; exit 1 when something is flagged or a launch is in doubt (so scripts
    can alert)."""
    import json

    from rgt.commands._platform import open_platform
    from rgt.ledger import Ledger
    from rgt.sweep import format_report, sweep

    with Ledger.open() as ledger:
        if args.platform is None:
            report = _sweep_every_platform(ledger)
        else:
            provider, profile = open_platform(args.platform)
            report = sweep(provider=provider, ledger=ledger, profile=profile)
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 1 if report.flagged else 0


def _sweep_every_platform(ledger: Any) -> Any:
    """vast.ai through its API when a key is set, then every platform with boxes attached
    over ssh; with neither, the missing key is the usage error it always was."""
    from rgt.commands._platform import open_platform
    from rgt.errors import UsageError
    from rgt.profile import load_profile
    from rgt.providers.ssh import SshProvider
    from rgt.providers.vastai import api_key_from_environment
    from rgt.sweep import merge_reports, platforms_in_ledger, sweep

    attached = platforms_in_ledger(ledger)
    reports = []
    skipped: dict[str, str] = {}
    try:
        api_key_from_environment()
    except UsageError as exc:
        if not attached:
            raise
        skipped["vastai"] = exc.message
    else:
        provider, profile = open_platform(None)
        reports.append(sweep(provider=provider, ledger=ledger, profile=profile))
    for platform, reference in sorted(attached.items()):
        try:
            profile = load_profile(reference)
        except UsageError as exc:
            skipped[platform] = f"its profile {reference} does not load: {exc.message}"
            continue
        reports.append(sweep(provider=SshProvider(profile), ledger=ledger, profile=profile))
    return merge_reports(reports, skipped)
