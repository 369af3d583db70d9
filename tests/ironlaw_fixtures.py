"""Helpers for the Iron Law tests: lay out a run's results on a box and build its manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REMOTE_ROOT = "/workspace/results"
RUN_ID = "run-7"


def write_results(results_dir: Path, files: dict[str, bytes]) -> None:
    """Write result files (relative path -> content) under `results_dir`."""
    for relative, content in files.items():
        target = results_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def build_manifest_on_box(
    results_dir: Path, *, run_id: str, roster: list[str], instance_id: str
) -> bytes:
    """Build PULL_MANIFEST.json in `results_dir` the way the box does; returns its bytes.

    Uses the verify helper's rgt.manifest when present (the real on-box builder)."""
    try:
        from rgt import manifest as manifest_module
    except ImportError:
        manifest_module = None  # type: ignore[assignment]
    if manifest_module is not None:
        manifest_module.write_manifest(results_dir, run_id, roster, instance_id)  # type: ignore[call-arg]
        return (results_dir / "PULL_MANIFEST.json").read_bytes()
    entries: list[dict[str, Any]] = []
    for name in roster:
        for path in sorted((results_dir / name).rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                entries.append(
                    {
                        "path": path.relative_to(results_dir).as_posix(),
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
    document = {"run_id": run_id, "instance_id": instance_id, "roster": roster, "files": entries}
    data = json.dumps(document, indent=2, sort_keys=True).encode()
    (results_dir / "PULL_MANIFEST.json").write_bytes(data)
    return data


def vast_profile() -> Any:
    """The vast.ai profile (rgt.profile once it exists; until then the same fields, labelled)."""
    try:
        from rgt.profile import load_profile  # type: ignore[import-not-found]

        return load_profile("vastai")
    except ImportError:
        return SimpleNamespace(
            name="vastai (stand-in fields)",
            meter_stop_verb="destroy",
            meter_stop_irreversible=True,
            stop_still_bills=["disk storage"],
        )


def verify_and_record(ledger: Any, local_dir: Path) -> None:
    """Run the real verifier on `local_dir` (raises CheckFailed on a mismatch) and make sure the
    passed verification is in the ledger, as `rgt verify` does."""
    from rgt.verify import verify_pull  # type: ignore[import-not-found]

    verify_pull(local_dir)
