"""The box's result tree as it is now, compared with the manifest built on it.

The manifest on the box says what the job's results were when it was built. A job can go on
writing after that (an evaluation, a late log line, a file deleted by a clean-up step), and a
pull that matched the manifest then would miss it. So before anything irreversible the gate
lists the result root on the box once more — path, type, size and modification time of every
entry, in one ``find`` over ssh, no hashing — and compares that listing with the manifest:

- an entry the manifest does not name (a new file, a new directory beside the roster, a
  symlink, a special file) → changed;
- a file the manifest names that is missing, or of another size → changed;
- a file of the right size modified after the manifest file was written → a *suspect*: only
  its content can tell, so the caller hashes just those files on the box (``sha256sum``) and
  hands the digests back to `changes`; a different digest → changed.

Listing is bounded in bytes (``LISTING_MAX_BYTES``) by the provider; a listing larger than that
is itself a reason to refuse, never a reason to skip the check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, NamedTuple

MANIFEST_NAME = "PULL_MANIFEST.json"
# GNU find: type, size, mtime (seconds with fraction), path relative to the root; NUL ends a
# record, since a file name may hold a tab or a newline but never a NUL.
FIND_FORMAT = "%y\\t%s\\t%T@\\t%P\\0"
# 64 MiB covers a listing of ~500,000 files; a bigger result root is refused by size first.
LISTING_MAX_BYTES = 64 * 1024 * 1024
# At most this many suspects are hashed on the box; more is a refusal (re-run the manifest).
MAX_SUSPECTS = 256
# How many differences a refusal names before it summarises the rest.
SHOWN = 5


class TreeEntry(NamedTuple):
    """One entry under the result root: find's type letter (f, d, l, ...), size, mtime."""

    path: str
    kind: str
    size: int
    mtime: float


class TreeComparison(NamedTuple):
    """What differs between the box's tree and the manifest, and which files need a hash."""

    changes: list[str]
    suspects: list[str]  # same size, modified after the manifest: hash them on the box

    @property
    def unchanged(self) -> bool:
        """True when nothing differs and no file needs hashing."""
        return not self.changes and not self.suspects


def find_command(root: str) -> list[str]:
    """The argv that lists `root` on the box (GNU findutils, present in every CUDA image)."""
    return ["find", str(PurePosixPath(root)), "-mindepth", "1", "-printf", FIND_FORMAT]


def hash_command(root: str, relative_paths: Sequence[str]) -> list[str]:
    """The argv that prints the SHA-256 of each file, in the order given (GNU coreutils)."""
    base = PurePosixPath(root)
    return ["sha256sum", "--", *(str(base / path) for path in relative_paths)]


def parse_listing(data: bytes) -> list[TreeEntry]:
    """Parse find's NUL-terminated records; raises ValueError naming the first bad record."""
    entries = []
    for index, record in enumerate(data.split(b"\0")[:-1] if data else []):
        fields = record.split(b"\t", 3)
        if len(fields) != 4:
            raise ValueError(f"listing record {index} is not type/size/mtime/path: {record[:80]!r}")
        kind, size, mtime, path = fields
        try:
            entries.append(
                TreeEntry(path.decode(), kind.decode(), int(size), float(mtime.decode()))
            )
        except ValueError as exc:
            raise ValueError(f"listing record {index} ({record[:80]!r}): {exc}") from None
    if data and not data.endswith(b"\0"):
        raise ValueError("the listing was cut off (its last record has no terminator)")
    return entries


def parse_digests(data: bytes, count: int) -> list[str]:
    """The first field of each of sha256sum's `count` lines, in order."""
    lines = data.decode(errors="replace").splitlines()
    digests = [line.split(" ", 1)[0].lstrip("\\").lower() for line in lines if line.strip()]
    if len(digests) != count:
        raise ValueError(f"sha256sum printed {len(digests)} digest(s) for {count} file(s)")
    return digests


def compare(entries: Sequence[TreeEntry], manifest: Mapping[str, Any]) -> TreeComparison:
    """Compare the box's listing with the manifest document (already parsed and checked)."""
    roster = {str(name) for name in manifest.get("roster") or []}
    expected = {
        str(entry["path"]): entry
        for entry in manifest.get("files") or []
        if isinstance(entry, dict) and "path" in entry
    }
    # Directories that hold a manifest file are expected; so is any directory inside a roster
    # directory (an empty one holds no data). Beside the roster, nothing but the manifest.
    by_path = {entry.path: entry for entry in entries}
    own = by_path.get(MANIFEST_NAME)
    built = own.mtime if own is not None else None
    changes: list[str] = []
    suspects: list[str] = []
    if own is None or own.kind != "f":
        changes.append(f"{MANIFEST_NAME} itself is missing or not a regular file")
    for entry in entries:
        if entry.path == MANIFEST_NAME:
            continue
        top = entry.path.split("/", 1)[0]
        if entry.kind == "d":
            if top not in roster:
                changes.append(f"new directory {entry.path}/ beside the roster")
            continue
        wanted = expected.get(entry.path)
        if wanted is None:
            what = "file" if entry.kind == "f" else f"entry of type {entry.kind!r}"
            changes.append(f"new {what} {entry.path} ({entry.size} bytes)")
        elif entry.kind != "f":
            changes.append(f"{entry.path} is now of type {entry.kind!r}, not a regular file")
        elif entry.size != wanted.get("size"):
            changes.append(
                f"{entry.path} is {entry.size} bytes, the manifest says {wanted['size']}"
            )
        elif built is None or entry.mtime >= built:
            # Written at or after the manifest (a coarse clock may give both one instant):
            # only the content can tell, so the caller hashes it on the box.
            suspects.append(entry.path)
    for path in sorted(set(expected) - set(by_path)):
        changes.append(f"{path} is gone from the box")
    return TreeComparison(changes, sorted(suspects))


def changed_digests(
    manifest: Mapping[str, Any], suspects: Sequence[str], digests: Sequence[str]
) -> list[str]:
    """The suspects whose digest on the box differs from the manifest's."""
    expected = {
        str(entry["path"]): str(entry.get("sha256", ""))
        for entry in manifest.get("files") or []
        if isinstance(entry, dict) and "path" in entry
    }
    return [
        f"{path} was rewritten after the manifest (sha256 {digest[:12]}…, the manifest says "
        f"{expected.get(path, '?')[:12]}…)"
        for path, digest in zip(suspects, digests, strict=True)
        if digest != expected.get(path)
    ]


def summarise(changes: Sequence[str]) -> str:
    """The first few differences, and how many more."""
    shown = "; ".join(changes[:SHOWN])
    more = len(changes) - SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")
