"""The reference catalog (`references/*.md`): entry ids, their form, and who names them.

A symptom reference is a Markdown file of entries, each

    ### TRAIN-OOM1 — one-line symptom
    - **Symptom:** ...
    - **Causes:** ... (most likely first)
    - **Check:** ... (a command or a measurement that tells the causes apart)
    - **Fix:** ...

Ids are global across files (`UNIV7`, `TRAIN-NAN1`, `SSH3`, ...) so SKILL.md, `rgt poll`'s
next action, profiles, templates and the code can point at one entry. A reference that explains
a principle rather than listing symptoms (the Iron Law, spot resilience) carries the line
`<!-- rgt: principles -->` and has no entries.

Stdlib only: `rgt lint` imports this and must start fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from rgt.bundle import bundle_root
from rgt.yamlsource import Finding

FORM = ("Symptom", "Causes", "Check", "Fix")
PRINCIPLES_MARK = "<!-- rgt: principles -->"

_ENTRY = re.compile(r"^###\s+(?P<id>[A-Z][A-Z0-9]*(?:-[A-Z]+)?[0-9]+)\s+—\s+\S")
_FIELD = re.compile(r"^-\s+\*\*(?P<name>[A-Za-z ]+):\*\*")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Entry:
    """One reference entry: its id, one-line symptom, and where it is defined."""

    id: str
    title: str
    file: str  # bundle-relative, e.g. references/train-oom.md
    line: int

    def pointer(self) -> str:
        """How next actions and SKILL.md name it: `TRAIN-OOM1 (references/train-oom.md)`."""
        return f"{self.id} ({self.file})"


def references_dir(root: Path | None = None) -> Path:
    """The folder of reference files in this install (or under `root`)."""
    return (root or bundle_root()) / "references"


def load_catalog(root: Path | None = None) -> tuple[dict[str, Entry], list[Finding]]:
    """Every entry of every reference file, and the findings on their form (errors)."""
    entries: dict[str, Entry] = {}
    findings: list[Finding] = []
    folder = references_dir(root)
    for path in sorted(folder.glob("*.md")):
        shown = f"references/{path.name}"
        text = path.read_text(encoding="utf-8", errors="replace")
        found, problems = _parse(text, shown)
        findings += problems
        if not found and PRINCIPLES_MARK not in text:
            findings.append(
                Finding(
                    shown,
                    1,
                    "reference-form",
                    "no entries ('### ID — symptom' with Symptom/Causes/Check/Fix); a file that "
                    f"explains principles instead says so with the line {PRINCIPLES_MARK}",
                )
            )
        for entry in found:
            if entry.id in entries:
                first = entries[entry.id]
                findings.append(
                    Finding(
                        shown,
                        entry.line,
                        "reference-id",
                        f"{entry.id} is defined twice (first in {first.file}:{first.line})",
                    )
                )
            else:
                entries[entry.id] = entry
    return entries, findings


@cache
def bundle_catalog() -> dict[str, Entry]:
    """The installed bundle's entries, read once per process (lint asks once per profile)."""
    return load_catalog()[0]


def _parse(text: str, shown: str) -> tuple[list[Entry], list[Finding]]:
    """Entries of one file and form findings: each has the four fields, once, in order."""
    entries: list[Entry] = []
    findings: list[Finding] = []
    fields: list[str] = []
    current: Entry | None = None
    fenced = False

    def close() -> None:
        if current is not None and fields != list(FORM):
            findings.append(
                Finding(
                    shown,
                    current.line,
                    "reference-form",
                    f"{current.id} has fields {', '.join(fields) or 'none'}; expected "
                    f"{', '.join(FORM)} in that order (symptom → causes → check → fix)",
                )
            )

    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
        if fenced:
            continue
        if line.startswith("#"):
            close()
            current, fields = None, []
            match = _ENTRY.match(line)
            if match:
                title = line.split("—", 1)[1].strip()
                current = Entry(match["id"], title, shown, number)
                entries.append(current)
            continue
        field_match = _FIELD.match(line)
        if current is not None and field_match:
            fields.append(field_match["name"].strip())
    close()
    return entries, findings


def families(entries: Iterable[Entry]) -> list[str]:
    """The id families the catalog defines: UNIV, TRAIN, SSH, ... (a profile's own gotcha ids,
    VAST7 or RP3, belong to none, so they are never mistaken for references)."""
    return sorted({entry.id.split("-")[0].rstrip("0123456789") for entry in entries})


# An id of a family: UNIV7, TRAIN-OOM1, and misspelt ones too.
_ID_AT = re.compile(r"[A-Z]+(?:-[A-Z]+)?[0-9]+(?![\w-])")


def mention_findings(
    text: str, shown: str, entries: dict[str, Entry], names: Sequence[str] | None = None
) -> list[Finding]:
    """A finding for every reference id named in `text` that the catalog does not define.

    Lint runs this over all of rgt's code: `str.find` for each family's name, then one anchored
    match there, is several times faster than a regex search through the whole text."""
    findings = []
    reported: set[tuple[int, str]] = set()
    for family in families(entries.values()) if names is None else names:
        at = text.find(family)
        while at != -1:
            match = _ID_AT.match(text, at)
            if match and _starts_word(text, at) and match.group() not in entries:
                name = match.group()
                number = text.count("\n", 0, at) + 1
                if (number, name) not in reported:
                    reported.add((number, name))
                    findings.append(
                        Finding(
                            shown,
                            number,
                            "reference-id",
                            f"{name} is not defined in references/*.md",
                        )
                    )
            at = text.find(family, at + len(family))
    return sorted(findings, key=lambda f: (f.line, f.message))


def _starts_word(text: str, start: int) -> bool:
    return start == 0 or not (text[start - 1].isalnum() or text[start - 1] in "_-")


def bundle_reference_findings(root: Path | None = None) -> list[Finding]:
    """Form of every reference, and every id that the references, profiles, SKILL.md, the
    templates or rgt's code name exists."""
    base = root or bundle_root()
    entries, findings = load_catalog(base)
    names = families(entries.values())
    package = Path(__file__).resolve().parent
    sources: list[tuple[str, str]] = []  # (path, shown); plain strings: pathlib is slow here
    for folder, glob in (
        ("references", "*.md"),
        ("profiles", "*.md"),
        ("skills", "**/*.md"),
        ("scripts", "*.j2"),
    ):
        prefix = len(str(base)) + 1
        sources += [(str(p), str(p)[prefix:]) for p in (base / folder).glob(glob)]
    sources += [(str(p), "rgt/" + str(p)[len(str(package)) + 1 :]) for p in package.rglob("*.py")]
    for path, shown in sorted(sources, key=lambda item: item[1]):
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        findings += mention_findings(text, shown, entries, names)
    return findings


def pointer(reference_id: str, root: Path | None = None) -> str:
    """`ID (references/file.md)` for a defined id; the bare id when the catalog lacks it
    (lint reports that separately)."""
    entries = load_catalog(root)[0] if root is not None else bundle_catalog()
    entry = entries.get(reference_id)
    return entry.pointer() if entry is not None else reference_id
