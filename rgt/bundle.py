"""Locate the bundle folders (profiles, schemas, scripts, references, skills).

In a wheel they are packaged under `rgt/_bundle/`; in a source checkout (editable install, or
running from the tree) they are the repository's top-level folders. One function finds both.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

BUNDLE_FOLDERS = ("profiles", "schemas", "scripts", "references", "skills")


@cache
def bundle_root() -> Path:
    """The directory that contains `profiles/`, `schemas/`, `scripts/`, … for this install."""
    package_dir = Path(__file__).resolve().parent
    packaged = package_dir / "_bundle"
    if (packaged / "profiles").is_dir():
        return packaged
    return package_dir.parent


def bundle_path(folder: str, *parts: str) -> Path:
    """A path inside one of the bundle folders, e.g. `bundle_path("schemas", "job.schema.json")`."""
    if folder not in BUNDLE_FOLDERS:
        raise ValueError(f"unknown bundle folder {folder!r}; allowed: {', '.join(BUNDLE_FOLDERS)}")
    return bundle_root().joinpath(folder, *parts)
