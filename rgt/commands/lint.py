"""`rgt lint [PATH...] [--format text|json] [--max-age-months N]`: check platform profiles."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 10  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = (
    "check platform profiles (schema, sections, gotcha ids, links, secrets, staleness) and the "
    "references (form, ids)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """PATH... (files or folders; default: the bundled profiles), --format, --max-age-months."""
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="profile files, folders or bundled names (default: every bundled profile)",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )
    parser.add_argument(
        "--json", dest="format", action="store_const", const="json", help="same as --format json"
    )
    parser.add_argument(
        "--max-age-months",
        type=_months,
        default=6,
        metavar="N",
        help="warn about `verified YYYY-MM` stamps older than N months (default 6)",
    )


def _bundled(name: str) -> Path | None:
    """The bundled profile file for a name like 'vastai' or 'generic-ssh:slurm', else None.

    A named variant must exist (UsageError naming profile, variant and the variants there are):
    linting the whole file under a misspelt variant would report "clean" for nothing.
    """
    from rgt.profile import parse_profile, profiles_dir

    stem, _, variant = name.partition(":")
    path = profiles_dir() / f"{stem}.md"
    if not (stem and not stem.endswith(".md") and path.is_file()):
        return None
    if variant:
        profile, _findings = parse_profile(path)
        if profile is not None:  # a broken file: lint reports why
            profile.with_variant(variant)
    return path


def _months(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of months >= 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Print one `file:line: rule: message` per finding; exit 1 when any is an error."""
    import json

    from rgt.errors import EXIT_CHECK_FAILED, EXIT_OK, UsageError
    from rgt.lint import LintOptions, expand_paths, lint_paths, reference_findings
    from rgt.profile import profiles_dir

    paths: list[Path] = []
    missing: list[str] = []
    for text in args.paths:
        if Path(text).exists():
            paths.append(Path(text))
        elif "/" not in text and (bundled := _bundled(text)) is not None:
            paths.append(bundled)
        else:
            missing.append(text)
    if missing:
        raise UsageError(
            f"no such file or folder: {', '.join(missing)} "
            "(give profile files, folders, or bundled profile names such as vastai)"
        )
    paths = paths or [profiles_dir()]
    files = expand_paths(paths)
    if not files:
        raise UsageError(f"no profiles (*.md) in {', '.join(str(p) for p in paths)}")
    findings = lint_paths(files, LintOptions(max_age_months=args.max_age_months))
    if not args.paths:  # the whole bundle: its references and every id that names one too
        findings += reference_findings()
    errors = sum(f.severity == "error" for f in findings)
    if args.format == "json":
        report = {
            "files": [str(f) for f in files],
            "errors": errors,
            "warnings": len(findings) - errors,
            "findings": [f.as_dict() for f in findings],
        }
        print(json.dumps(report, indent=2))
    else:
        for finding in findings:
            print(finding.format())
        if not errors:
            warnings = len(findings)
            note = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
            print(f"rgt lint: {len(files)} profile(s) clean{note}")
    return EXIT_CHECK_FAILED if errors else EXIT_OK
