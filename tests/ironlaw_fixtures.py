"""Helpers for the Iron Law tests: lay out a run's results on a box and build its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REMOTE_ROOT = "/workspace/results"
RUN_ID = "run-7"
# A user's own files as issue #18 names them: dotfiles named like an rsync temp file
# (".NAME.XXXXXX"), which a pull used to move under .rsync-partial/.
USER_FILES = {
    ".env.sample": b"API_URL=http://localhost:8080\n",
    "src/.eslintrc.config": b'{"root": true}\n',
    ".profile.backup": b"export PATH=$HOME/bin:$PATH\n",
}


def write_results(results_dir: Path, files: dict[str, bytes]) -> None:
    """Write result files (relative path -> content) under `results_dir`."""
    for relative, content in files.items():
        target = results_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def tree_of(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder` (relative path -> a file's bytes, None for a directory)."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def build_manifest_on_box(
    results_dir: Path, *, run_id: str, roster: list[str], instance_id: str
) -> bytes:
    """Build PULL_MANIFEST.json in `results_dir` with the real box-side builder (rgt.manifest,
    as the box runs it); returns its bytes."""
    from rgt import manifest as manifest_module

    manifest_module.write_manifest(results_dir, run_id, roster, instance_id)
    return (results_dir / manifest_module.MANIFEST_NAME).read_bytes()


def vast_profile() -> Any:
    """The bundled vast.ai profile."""
    from rgt.profile import load_profile

    return load_profile("vastai")


def verify_and_record(ledger: Any, local_dir: Path) -> None:
    """Run the real verifier on `local_dir` (raises CheckFailed on a mismatch) and make sure the
    passed verification is in the ledger, as `rgt verify` does."""
    from rgt.verify import verify_pull

    verify_pull(local_dir, ledger=ledger)


def forge_verified_record(
    local_dir: Path, *, run_id: str, instance_id: str, paths: list[str]
) -> None:
    """Write a PULL_VERIFIED.json of the right shape with made-up hashes that no verification
    recorded: what an agent could write to fake one. The gate must not take it as evidence."""
    import json

    from rgt.verify import RECORD_SCHEMA, VERIFIED_NAME

    document = {
        "schema": RECORD_SCHEMA,
        "ok": True,
        "run_id": run_id,
        "instance_id": instance_id,
        "manifest_sha256": "0" * 64,
        "files": [{"path": path, "sha256": "0" * 64, "ok": True} for path in paths],
    }
    (local_dir / VERIFIED_NAME).write_text(json.dumps(document))


def tamper_verified_record(local_dir: Path) -> None:
    """Edit a real PULL_VERIFIED.json by hand: it now names another manifest sha256."""
    import json

    from rgt.verify import VERIFIED_NAME

    record = local_dir / VERIFIED_NAME
    document = json.loads(record.read_text())
    document["manifest_sha256"] = "0" * 64
    record.write_text(json.dumps(document))


def safetensors_bytes(payload: bytes) -> bytes:
    """A valid safetensors file holding `payload` as one U8 tensor (what the verifier loads)."""
    import json
    import struct

    header = json.dumps(
        {"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}
    ).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(header)) + header + payload
