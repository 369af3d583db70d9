"""`rgt lint`: check profiles beyond what the schema can say.

The frontmatter is validated by `schemas/profile.schema.json` (in `rgt.profile.parse_profile`);
this module adds the checks that need the prose or other files:

    sections        the 8 numbered sections, present and in order
    gotcha-id       section-7 gotcha ids unique and carrying the profile's prefix (VAST1, ...)
    gotcha-ref      every gotcha id the prose mentions (VAST7) is defined in section 7 (warning)
    link            references/... and scripts/... mentioned in the profile exist
    secret          nothing that looks like an API key, token or private key
    reference-id    every reference id the profile names (UNIV7, TRAIN-OOM1) is defined in
                    references/*.md; with the bundle (`rgt lint` without paths) also the ids
                    SKILL.md, the templates, the references and rgt's code name
    reference-form  (bundle) each reference entry reads Symptom → Causes → Check → Fix
    detach          overrides.detach names detach_primitive (base and every variant)
    stale-verified  `verified YYYY-MM` stamps older than N months (warning)
    billing-prose, spot-prose, clock-prose, variant-doc
                    the danger facts (meter-stop verb, what stop still bills, spot grace, clocks)
                    agree with sections 4/5, per variant (rgt/consistency.py)
    provider-command  no rgt command the platform cannot run is promised (rgt/consistency.py)

A broken file (unreadable, binary, empty, no frontmatter, bad YAML) is a finding, never a crash.
A frontmatter that fails its schema (or its YAML) does not hide the prose: sections, gotchas and
links are still checked, so one pass reports every problem. Forms found in profiles written by
others are accepted: a UTF-8 byte-order mark, `~~~` fences, a section title followed by a note in
parentheses, gotchas as bold paragraphs, `$NAME` env-var references next to a key name.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgt.bundle import bundle_root
from rgt.consistency import consistency_findings, outside_fences
from rgt.inputfile import InputFileError, read_input_file
from rgt.profile import Profile, parse_profile
from rgt.yamlsource import MAX_DOCUMENT_BYTES, Finding

SECTION_TITLES = (
    "LAUNCH",
    "STORAGE MODEL",
    "NETWORK",
    "SPOT / INTERRUPTION + RESUME",
    "TEARDOWN / BILLING",
    "DAEMON TOOL",
    "TOP GOTCHAS",
    "SCRIPT OVERRIDES",
)
GOTCHA_SECTION = 7
# A gotcha id mentioned in the prose but not defined in section 7 is an error, like the other
# gotcha rules (the tests read this constant).
GOTCHA_REF_SEVERITY = "error"
DEFAULT_MAX_AGE_MONTHS = 6

# What overrides.detach must mention for each detach_primitive ('none' requires it empty).
DETACH_WORDS: dict[str, tuple[str, ...]] = {
    "onstart": ("onstart",),
    "tmux": ("tmux",),
    "nohup": ("nohup",),
    "systemd": ("systemd", "systemctl"),
    "sbatch": ("sbatch",),
    "k8s-job": ("k8s-job", "kubectl"),
    "notebook-commit": ("commit",),
}

_HEADING = re.compile(r"^##\s+(?:(?P<number>\d+)\.\s+)?(?P<title>.+?)\s*#*\s*$")
# A gotcha starts a bullet or a paragraph in bold with its id: `- **VAST3 — ...**` or
# `**VAST3 — ...**` (the id alone may be bold, or the id and its title).
_GOTCHA = re.compile(r"^\s*(?:[-*]\s+)?\*\*(?P<id>[A-Z][A-Z0-9-]*?\d+)\b")
_LINK = re.compile(r"(?<![\w/.-])(?P<target>(?:\.\./)?(?:references|scripts)/[A-Za-z0-9._/-]*\w)")
_STAMP = re.compile(r"\bverified:?\s+\"?(?P<year>20\d\d)-(?P<month>0[1-9]|1[0-2])\b", re.I)

# Shapes of real credentials; a profile needs env-var NAMES only.
_SECRET_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("AWS access key id", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b")),
    ("Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("OpenAI-style key", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b")),
    ("Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")),
    ("64-hex API key (vast.ai's shape)", re.compile(r"\b[0-9a-f]{64}\b")),
    (
        "secret assigned inline",
        re.compile(
            # Not after `$` or `${`: `curl -u $LAMBDA_API_KEY:` refers to the variable.
            r"(?<![\w${])[A-Z0-9_]*(?:API_KEY|TOKEN|SECRET|PASSWORD|PASSWD)\b['\"]?\s*[:=]\s*['\"]?"
            r"(?![$<{])[A-Za-z0-9/+_.-]{12,}"
        ),
    ),
)


@dataclass(frozen=True)
class LintOptions:
    """Knobs of `rgt lint`."""

    max_age_months: int = DEFAULT_MAX_AGE_MONTHS
    today: _dt.date | None = None


def lint_paths(paths: Sequence[Path], options: LintOptions | None = None) -> list[Finding]:
    """Lint profile files (directories expand to their *.md); findings sorted by file and line."""
    options = options or LintOptions()
    findings: list[Finding] = []
    for path in expand_paths(paths):
        findings += lint_file(path, options)
    return findings


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files to lint: files as given, directories as their *.md (not starting with '_')."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.glob("*.md") if not p.name.startswith("_"))
        else:
            files.append(path)
    return files


def lint_file(path: Path, options: LintOptions) -> list[Finding]:
    """Every finding for one profile file."""
    shown = str(path)
    profile, findings = parse_profile(path, shown=shown)
    text = _safe_text(path)
    if text is not None:
        findings += _secret_findings(text, shown)
        findings += _stale_findings(text, shown, options)
        findings += _reference_id_findings(text, shown)
    if profile is not None:
        findings += _section_findings(profile, shown)
        findings += _link_findings(profile, shown)
        findings += _detach_findings(profile, shown)
        findings += consistency_findings(profile, shown)
    elif text is not None and not any(f.rule in ("read", "frontmatter") for f in findings):
        # The frontmatter failed (schema, YAML): the prose is still checked, so one pass
        # reports every problem. The rules that read the danger facts need a valid profile.
        partial = _prose_only(path, text, shown)
        if partial is not None:
            findings += _section_findings(partial, shown)
            findings += _link_findings(partial, shown)
    return sorted(set(findings), key=lambda f: (f.path, f.line, f.rule, f.message))


def _prose_only(path: Path, text: str, shown: str) -> Profile | None:
    """The profile's body (and whatever its frontmatter parsed to) when the frontmatter failed
    validation; None when there is no body to check (no frontmatter, never closed)."""
    from rgt.yamlsource import SourceError, parse_yaml, split_frontmatter

    try:
        front, body, body_first_line = split_frontmatter(text, path=shown)
    except SourceError:
        return None
    try:
        doc = parse_yaml(front, path=shown, first_line=2)
        data = doc.data if isinstance(doc.data, dict) else {}
    except SourceError:
        doc, data = parse_yaml("{}", path=shown), {}
    return Profile(path, dict(data), body, body_first_line, doc)


def reference_findings() -> list[Finding]:
    """The bundle's references: each entry's form, and every id named anywhere in the bundle
    (references, profiles, SKILL.md, templates, rgt's code) defined (rgt.references)."""
    from rgt.references import bundle_reference_findings

    return bundle_reference_findings()


def _reference_id_findings(text: str, shown: str) -> list[Finding]:
    """Reference ids a profile names exist in the bundle's references/*.md."""
    from rgt.references import bundle_catalog, mention_findings

    return mention_findings(text, shown, bundle_catalog())


def _safe_text(path: Path) -> str | None:
    # Bounded like the frontmatter's read (rgt.yamlsource.read_text reports why it refused).
    try:
        raw = read_input_file(path, max_bytes=MAX_DOCUMENT_BYTES)
    except InputFileError:
        return None
    if b"\x00" in raw:
        return None
    return raw.decode("utf-8", errors="replace")


def _sections(profile: Profile) -> list[tuple[int, int | None, str]]:
    """(file line, number or None, title) of every `## ` heading outside code fences."""
    headings = []
    for offset, line, outside in outside_fences(profile.body.splitlines()):
        match = _HEADING.match(line) if outside else None
        if match:
            number = int(match["number"]) if match["number"] else None
            headings.append((profile.body_first_line + offset, number, match["title"]))
    return headings


def _normal(title: str) -> str:
    """The title as compared: emphasis marks and a trailing note dropped, spaces collapsed,
    upper case. A note is text in parentheses after the title, emphasised or not
    (`STORAGE MODEL *(survival matrix)*`, `TOP GOTCHAS (platform-pinned)`)."""
    plain = re.sub(r"[*_]", "", title)
    plain = re.sub(r"\s+\(.*\)\s*$", "", plain)
    return re.sub(r"\s+", " ", plain.strip()).upper()


def _section_findings(profile: Profile, shown: str) -> list[Finding]:
    findings = []
    expected = {index + 1: title for index, title in enumerate(SECTION_TITLES)}
    seen: list[int] = []
    for line, number, title in _sections(profile):
        if number is None:
            continue
        if number not in expected:
            findings.append(
                Finding(shown, line, "sections", f"section number {number} is not one of 1-8")
            )
            continue
        if _normal(title) != expected[number]:
            findings.append(
                Finding(
                    shown,
                    line,
                    "sections",
                    f"section {number} is titled {title!r}, expected {expected[number]!r} "
                    f"(a note in parentheses may follow: '{expected[number]} (...)')",
                )
            )
        if seen and number <= seen[-1]:
            findings.append(
                Finding(
                    shown,
                    line,
                    "sections",
                    f"section {number} comes after section {seen[-1]}; keep the order 1-8",
                )
            )
        seen.append(number)
    numbered = [(line, number) for line, number, _ in _sections(profile) if number is not None]
    end_line = profile.body_first_line + len(profile.body.splitlines())
    for number, title in expected.items():
        if number not in seen:
            # Where it belongs: at the first later section, else at the end of the file.
            later = [line for line, other in numbered if other > number]
            findings.append(
                Finding(
                    shown,
                    later[0] if later else end_line,
                    "sections",
                    f"missing section '## {number}. {title}'",
                )
            )
    findings += _gotcha_findings(profile, shown)
    return findings


def _section_lines(profile: Profile, number: int) -> Iterable[tuple[int, str]]:
    """(file line, text) of the lines inside one numbered section."""
    headings = _sections(profile)
    lines = profile.body.splitlines()
    for index, (line, heading_number, _) in enumerate(headings):
        if heading_number != number:
            continue
        end = (
            headings[index + 1][0]
            if index + 1 < len(headings)
            else profile.body_first_line + len(lines)
        )
        for file_line in range(line + 1, end):
            yield file_line, lines[file_line - profile.body_first_line]
        return


def _gotcha_findings(profile: Profile, shown: str) -> list[Finding]:
    findings = []
    prefix = profile.frontmatter.get("gotcha_prefix")
    if not isinstance(prefix, str) or not prefix:
        return []  # the schema finding names the missing prefix; ids cannot be checked without
    first_seen: dict[str, int] = {}
    id_pattern = re.compile(rf"^{re.escape(prefix)}[1-9][0-9]*$")
    for line, text in _section_lines(profile, GOTCHA_SECTION):
        match = _GOTCHA.match(text)
        if not match:
            continue
        gotcha = match["id"]
        if not id_pattern.match(gotcha):
            findings.append(
                Finding(
                    shown,
                    line,
                    "gotcha-id",
                    f"gotcha id {gotcha!r} must be {prefix}<n> (gotcha_prefix is {prefix!r})",
                )
            )
        elif gotcha in first_seen:
            findings.append(
                Finding(
                    shown,
                    line,
                    "gotcha-id",
                    f"gotcha id {gotcha} is used twice (first on line {first_seen[gotcha]})",
                )
            )
        else:
            first_seen[gotcha] = line
    heading = [line for line, n, _ in _sections(profile) if n == GOTCHA_SECTION]
    if not first_seen and not findings and heading:
        findings.append(
            Finding(
                shown,
                heading[0],
                "gotcha-id",
                f"section 7 lists no gotchas (expected bullets or paragraphs starting with "
                f"'**{prefix}1 — ...**')",
            )
        )
    if first_seen:
        findings += _gotcha_reference_findings(profile, shown, set(first_seen))
    return findings


def _gotcha_reference_findings(profile: Profile, shown: str, defined: set[str]) -> list[Finding]:
    """Every `VAST7`-style mention in the prose names a gotcha that section 7 defines."""
    mention = re.compile(rf"(?<![\w-]){re.escape(profile.gotcha_prefix)}[0-9]+(?![\w-])")
    known = sorted(defined, key=lambda g: int(g[len(profile.gotcha_prefix) :]))
    findings = []
    for offset, text in enumerate(profile.body.splitlines()):
        for gotcha in sorted({m.group() for m in mention.finditer(text)} - defined):
            findings.append(
                Finding(
                    shown,
                    profile.body_first_line + offset,
                    "gotcha-ref",
                    f"{gotcha} is mentioned but section 7 defines only {', '.join(known)}",
                    severity=GOTCHA_REF_SEVERITY,
                )
            )
    return findings


def _link_findings(profile: Profile, shown: str) -> list[Finding]:
    """references/... and scripts/... must exist next to the profile's folder or in the bundle."""
    roots = [profile.path.resolve().parent.parent, bundle_root()]
    findings = []
    for offset, text in enumerate(profile.body.splitlines()):
        reported: set[str] = set()  # '[scripts/x](../scripts/x)' names one file twice
        for match in _LINK.finditer(text):
            target = match["target"].split("#", 1)[0]
            relative = target[3:] if target.startswith("../") else target
            if relative in reported:
                continue
            reported.add(relative)
            problem = _link_problem(relative, roots)
            if problem:
                shown_target = target if len(target) <= 80 else target[:77] + "..."
                findings.append(
                    Finding(
                        shown,
                        profile.body_first_line + offset,
                        "link",
                        f"{shown_target} {problem}",
                    )
                )
    return findings


def _link_problem(relative: str, roots: Sequence[Path]) -> str | None:
    """None when the link's target exists under one of `roots`; else what is wrong with it.
    A name the filesystem cannot even look up (too long) is a finding, not a crash."""
    errors: list[str] = []
    for root in roots:
        try:
            if (root / relative).exists():
                return None
        except OSError as exc:
            errors.append(exc.strerror or type(exc).__name__)
    if errors:
        return f"is not a usable path ({errors[0]}, {len(relative)} characters)"
    return "does not exist"


def _detach_findings(profile: Profile, shown: str) -> list[Finding]:
    findings = []
    for each in profile.all_variants():
        primitive = each.detach_primitive
        detach = str(each.overrides["detach"])
        if primitive == "none":
            ok = detach == ""
            wanted = "be empty"
        else:
            words = DETACH_WORDS.get(primitive, (primitive,))
            ok = any(word in detach for word in words)
            wanted = "mention " + " or ".join(repr(w) for w in words)
        if ok:
            continue
        where: list[Any] = ["overrides", "detach"]
        line = profile.doc.line_of(where)
        scope = "overrides.detach"
        if each.variant:
            entry = profile.variants[each.variant]
            scope = f"variants.{each.variant}.overrides.detach"
            if "detach" in entry.get("overrides", {}):
                line = profile.doc.line_of(["variants", each.variant, *where])
            elif "detach_primitive" in entry:
                line = profile.doc.line_of(["variants", each.variant, "detach_primitive"])
        findings.append(
            Finding(
                shown,
                line,
                "detach",
                f"{scope} is {detach!r} but detach_primitive is {primitive!r}: it must {wanted}",
            )
        )
    return findings


def _secret_findings(text: str, shown: str) -> list[Finding]:
    """One finding per line that looks like it holds a credential (never echoing it)."""
    findings = []
    for number, line in enumerate(text.split("\n"), 1):
        for label, pattern in _SECRET_SHAPES:
            if pattern.search(line):
                findings.append(
                    Finding(
                        shown,
                        number,
                        "secret",
                        f"looks like a {label}; a profile names env vars, never their values",
                    )
                )
                break
    return findings


def _stale_findings(text: str, shown: str, options: LintOptions) -> list[Finding]:
    """`verified YYYY-MM` stamps older than the limit (warnings) or in the future (errors)."""
    today = options.today or _dt.date.today()
    findings = []
    for match in _STAMP.finditer(text):
        number = text.count("\n", 0, match.start()) + 1
        year, month = int(match["year"]), int(match["month"])
        age = (today.year - year) * 12 + (today.month - month)
        if age > options.max_age_months:
            findings.append(
                Finding(
                    shown,
                    number,
                    "stale-verified",
                    f"verified {year}-{month:02d} is {age} months old "
                    f"(limit {options.max_age_months}); re-check the fact and its source",
                    severity="warning",
                )
            )
        elif age < 0:
            findings.append(
                Finding(
                    shown, number, "stale-verified", f"verified {year}-{month:02d} is in the future"
                )
            )
    return findings
