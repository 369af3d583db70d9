"""Pull a run's results off a rented box: the on-box manifest first, then the files, resumably.

The manifest (``PULL_MANIFEST.json``, built on the box by ``rgt.manifest``) is read first with
``provider.read_remote_file`` and saved byte-for-byte next to the results; its SHA-256 is what
the verification and the gate later bind to. The files then come over the provider's
``copy_from`` (rsync ``--partial`` with bounded retries and timeouts), one roster directory at a
time, so an interrupted pull resumes without re-sending the files that completed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rgt.atomic import atomic_write_bytes
from rgt.errors import (
    CheckFailed,
    LocalDiskFull,
    ProviderError,
    Refused,
    UsageError,
    is_disk_full,
)
from rgt.ledger import Ledger
from rgt.providers.base import CopyProgress, Instance, Provider

MANIFEST_NAME = "PULL_MANIFEST.json"
# States in which the box's disk cannot be reached over ssh/rsync.
UNREACHABLE_STATES = frozenset({"stopped", "paused", "offline", "exited", "scheduling"})
START_WAIT_SECONDS = 600.0


@dataclass(frozen=True)
class PullResult:
    """What a pull copied, and the manifest it was checked against."""

    instance_id: str
    local_dir: Path
    manifest_sha256: str
    run_id: str | None
    files: int
    bytes_total: int
    bytes_transferred: int
    attempts: int
    transport: str
    pull_id: int
    partials_adopted: int = 0  # files resumed from a killed earlier pull's rsync temp file


def manifest_remote_path(remote_root: str) -> str:
    """Where the manifest sits on the box."""
    return str(PurePosixPath(remote_root) / MANIFEST_NAME)


def still_bills_note(instance: Instance, profile: Any | None) -> str:
    """What a not-running instance keeps billing, from the profile (never hard-coded), with the
    estimated storage $/hour when the provider reported disk size and storage price."""
    bills = list(getattr(profile, "stop_still_bills", None) or [])
    if not bills:
        return "check what it still bills with `rgt sweep`"
    from rgt.sweep import storage_hourly

    hourly = storage_hourly(instance)
    cost = (
        f" (about ${hourly:.4f}/hour for its {instance.disk_gb:g} GB disk, until destroyed)"
        if hourly is not None and instance.disk_gb is not None
        else ""
    )
    stop = getattr(profile, "stop_verb", None) or "stop"
    return (
        f"`{stop}` is not a meter stop: while {instance.state} it still bills "
        f"{', '.join(bills)}{cost}"
    )


def unreachable_message(instance: Instance, profile: Any | None) -> str:
    """Why a box in a non-running state cannot be copied from, and what to do (with the cost)."""
    return (
        f"instance {instance.id} is {instance.state}: its disk cannot be copied while it is not "
        f"running. {reach_remedy(instance.state)}, then copy → verify → destroy; "
        f"{still_bills_note(instance, profile)}"
    )


def reach_remedy(state: str) -> str:
    """What makes a box in `state` reachable again. Starting helps only a stopped box; the
    others wait for the platform, not for the user."""
    return {
        "offline": "Its host stopped answering: wait for it to come back (`rgt poll`); "
        "starting does not help",
        "paused": "It was outbid (interruptible): it runs again when its bid wins; wait "
        "(`rgt poll`)",
        "scheduling": "It waits for its GPU to be free: wait (`rgt poll`)",
    }.get(state, "Start it (`rgt pull ... --start`, or start it with your provider)")


def parse_manifest(data: bytes, *, instance_id: str) -> dict[str, Any]:
    """Parse the on-box manifest and check what the pull relies on: it names this instance,
    its roster entries are plain top-level names (no traversal), and every file has a path
    inside the roster and a size in whole bytes. Anything else is a CheckFailed naming the
    field, never a crash: the box's content is not rgt's to trust."""
    from rgt.inputfile import size_text
    from rgt.manifest import MAX_MANIFEST_BYTES, name_problem, path_problem

    if len(data) > MAX_MANIFEST_BYTES:  # a provider that does not stream-cap its reads
        raise CheckFailed(
            f"{MANIFEST_NAME} on the box is {len(data):,} bytes, larger than rgt reads "
            f"({size_text(MAX_MANIFEST_BYTES)} at most)"
        )
    try:
        manifest = json.loads(data)
    except RecursionError:  # json's C scanner recurses once per level: 100,000 '[' end here
        raise CheckFailed(
            f"{MANIFEST_NAME} on the box is not JSON (nested too deeply to parse)"
        ) from None
    except ValueError as exc:
        raise CheckFailed(f"{MANIFEST_NAME} on the box is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise CheckFailed(f"{MANIFEST_NAME} on the box: top level is not an object")
    owner = manifest.get("instance_id")
    if owner is None:
        raise Refused(
            f"{MANIFEST_NAME} on the box has no instance_id; rebuild it on the box with "
            f"--instance-id {instance_id}"
        )
    if str(owner) != str(instance_id):
        raise Refused(
            f"{MANIFEST_NAME} on the box belongs to instance {owner!r}, not {instance_id!r}"
        )
    run_id = manifest.get("run_id")
    if run_id is not None and not isinstance(run_id, str):
        raise CheckFailed(f"{MANIFEST_NAME} on the box: field run_id {run_id!r} must be a string")
    roster = manifest.get("roster")
    if not isinstance(roster, list) or not roster:
        raise CheckFailed(f"{MANIFEST_NAME} on the box: field roster must be a non-empty list")
    # The box-side builder's own rules (one module, so the box and the pull agree).
    for name in roster:
        problem = name_problem(name) if isinstance(name, str) else "is not a string"
        if problem is not None:
            raise CheckFailed(
                f"{MANIFEST_NAME} on the box: roster entry {name!r} {problem}; "
                "allowed: a plain top-level directory name"
            )
    files = manifest.get("files")
    if not isinstance(files, list):
        raise CheckFailed(f"{MANIFEST_NAME} on the box: field files must be a list")
    for index, entry in enumerate(files):
        relative = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(relative, str):
            problem = "is missing"
        else:
            problem = path_problem(relative)
            if problem is None and relative.split("/", 1)[0] not in roster:
                problem = "is outside every roster directory"
        if problem is not None:
            raise CheckFailed(
                f"{MANIFEST_NAME} on the box: files[{index}].path {relative!r} {problem}; "
                "allowed: a relative path inside a roster directory"
            )
        size = entry.get("size")
        # json reads NaN and Infinity (and 1e400 as inf): a float, never a byte count.
        if type(size) is not int or size < 0:
            raise CheckFailed(
                f"{MANIFEST_NAME} on the box: files[{index}].size {size!r} of {relative!r} is "
                "not a byte count; allowed: a whole number >= 0"
            )
    return manifest


def _manifest_bytes_total(manifest: dict[str, Any]) -> int:
    total = 0
    for entry in manifest.get("files", []):
        size = entry.get("size") if isinstance(entry, dict) else None
        if isinstance(size, int) and size >= 0:
            total += size
    return total


def ensure_reachable(
    instance_id: str,
    *,
    provider: Provider,
    profile: Any | None,
    start_if_stopped: bool = False,
    wait_seconds: float = START_WAIT_SECONDS,
    poll_seconds: float = 2.0,
) -> Instance:
    """The instance, running. A stopped box is an error naming the remedy and the cost, unless
    `start_if_stopped`, which starts it and waits (bounded) until it runs."""
    instance = provider.show(instance_id)
    if instance.state == "gone":
        raise ProviderError(f"instance {instance_id} is gone (destroyed); nothing to pull")
    if instance.state == "running":
        return instance
    if instance.state in UNREACHABLE_STATES and not start_if_stopped:
        raise ProviderError(unreachable_message(instance, profile))
    if instance.state in ("stopped", "exited") and start_if_stopped:
        provider.start(instance_id)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        instance = provider.show(instance_id)
        if instance.state == "running":
            return instance
        if instance.state == "gone":
            raise ProviderError(f"instance {instance_id} disappeared while waiting for it")
        time.sleep(poll_seconds)
    raise ProviderError(
        f"instance {instance_id} is still {instance.state} after {wait_seconds:.0f} s; "
        + unreachable_message(instance, profile)
    )


def pull_instance(
    instance_id: str,
    remote_root: str,
    local_dir: Path,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Any | None = None,
    progress: Callable[[int, int | None, str | None], None] | None = None,
    start_if_stopped: bool = False,
) -> PullResult:
    """Copy the results under `remote_root` on the box into `local_dir` and record the pull.

    `progress(bytes_done, bytes_total, current_file)` is called as bytes arrive. Raises
    ProviderError (box unreachable, copy failed after retries), Refused (manifest of another
    instance), CheckFailed (malformed manifest, files missing after the copy)."""
    instance_id = str(instance_id)
    if not PurePosixPath(remote_root).is_absolute():
        raise UsageError(
            f"REMOTE_ROOT {remote_root!r}: not absolute; give the result root on the box as an "
            "absolute path, e.g. /workspace/results"
        )
    local_dir = Path(local_dir).resolve()
    _check_local_dir(local_dir)
    started = time.time()
    ensure_reachable(
        instance_id, provider=provider, profile=profile, start_if_stopped=start_if_stopped
    )

    manifest_bytes = provider.read_remote_file(instance_id, manifest_remote_path(remote_root))
    manifest = parse_manifest(manifest_bytes, instance_id=instance_id)
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    try:
        local_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"LOCAL_DIR {local_dir}: cannot create it: {exc.strerror}") from None
    # Exactly the bytes read from the box: their SHA-256 is the pull's identity.
    try:
        atomic_write_bytes(local_dir / MANIFEST_NAME, manifest_bytes)
    except OSError as exc:
        target = local_dir / MANIFEST_NAME
        if is_disk_full(exc):
            raise LocalDiskFull(
                f"LOCAL_DIR {local_dir}: no space left on device writing {target} "
                f"({len(manifest_bytes):,} bytes); make room there or pull into another "
                "LOCAL_DIR, then run the same `rgt pull` again"
            ) from None
        raise UsageError(f"LOCAL_DIR {local_dir}: cannot write {target}: {exc.strerror}") from None

    bytes_total = _manifest_bytes_total(manifest)
    adopted = adopt_interrupted_partials(local_dir)
    done_before = 0
    transferred = 0
    attempts = 0
    transport = ""
    for name in manifest["roster"]:
        remote_path = str(PurePosixPath(remote_root) / name)

        def tick(event: CopyProgress, base: int = done_before) -> None:
            if progress is not None:
                progress(base + event.bytes_done, bytes_total, event.current_file)

        result = provider.copy_from(instance_id, remote_path, local_dir, progress=tick)
        transferred += result.bytes_transferred
        attempts += result.attempts
        transport = result.transport
        done_before += sum(
            int(entry.get("size", 0))
            for entry in manifest["files"]
            if isinstance(entry, dict) and str(entry.get("path", "")).split("/", 1)[0] == name
        )
        if progress is not None:
            progress(done_before, bytes_total, None)

    # The job may still be writing: a manifest rebuilt on the box while we copied means the
    # files here may be a mix of two states. Say so now rather than at verification.
    after = provider.read_remote_file(instance_id, manifest_remote_path(remote_root))
    if hashlib.sha256(after).hexdigest() != manifest_sha256:
        raise CheckFailed(
            f"{MANIFEST_NAME} on instance {instance_id} changed during the pull (is the job still "
            "writing results?); nothing recorded: wait for it to finish, then run the same "
            "`rgt pull` again (it resumes)"
        )
    remove_stale_partials(local_dir, manifest)
    missing = _missing_or_short(local_dir, manifest)
    if missing:
        raise CheckFailed(
            f"pull of instance {instance_id} incomplete: {len(missing)} file(s) missing or of the "
            f"wrong size, first {missing[0]}; run the same `rgt pull` again to resume"
        )
    pull_id = ledger.record_pull(
        instance_id,
        remote_root=remote_root,
        local_dir=local_dir,
        manifest_sha256=manifest_sha256,
        run_id=manifest.get("run_id"),
        files=len(manifest["files"]),
        bytes_total=bytes_total,
        bytes_transferred=transferred,
        attempts=attempts,
        transport=transport,
        started=started,
    )
    return PullResult(
        instance_id=instance_id,
        local_dir=local_dir,
        manifest_sha256=manifest_sha256,
        run_id=manifest.get("run_id"),
        files=len(manifest["files"]),
        bytes_total=bytes_total,
        bytes_transferred=transferred,
        attempts=attempts,
        transport=transport,
        pull_id=pull_id,
        partials_adopted=adopted,
    )


def _check_local_dir(local_dir: Path) -> None:
    """A LOCAL_DIR that cannot hold the copy is a usage error, found before the box is asked."""
    if local_dir.exists() and not local_dir.is_dir():
        raise UsageError(
            f"LOCAL_DIR {local_dir}: exists and is not a directory; give a directory to copy into"
        )
    ancestor = next(p for p in (local_dir, *local_dir.parents) if p.exists())
    if not ancestor.is_dir():
        raise UsageError(f"LOCAL_DIR {local_dir}: {ancestor} is not a directory")


def adopt_interrupted_partials(local_dir: Path) -> int:
    """Move the temp files a killed rsync left (``.NAME.XXXXXX``) into rsync's partial dir, so
    the next copy re-sends only what is missing, and a cut file never sits under its final name.

    Safe: rsync checks every file's whole-file checksum after transfer, and the verifier
    re-hashes everything against the manifest. Returns how many were adopted."""
    from rgt.providers.rsync import adopt_temp_files

    return adopt_temp_files(local_dir)


def remove_stale_partials(local_dir: Path, manifest: dict[str, Any]) -> None:
    """Delete rsync temp files of manifest files left by an interrupted earlier pull.

    Each directory (and its partial dir) is listed once: a glob per file listed the directory
    once per file, quadratic (20,000 files in one directory took over 10 minutes)."""
    from rgt.providers.rsync import PARTIAL_DIR

    names_by_dir: dict[str, set[str]] = {}
    for entry in manifest["files"]:
        if isinstance(entry, dict):  # paths are checked (parse_manifest): plain relative ones
            folder, _, name = str(entry.get("path", "")).rpartition("/")
            names_by_dir.setdefault(folder, set()).add(name)
    for folder, names in names_by_dir.items():
        directory = local_dir / folder
        leftovers: list[Path] = []
        with contextlib.suppress(OSError):
            partial = directory / PARTIAL_DIR
            leftovers += [partial / name for name in os.listdir(partial) if name in names]
        with contextlib.suppress(OSError):
            # rsync's in-flight temp file of NAME: ".NAME.XXXXXX" (six characters).
            leftovers += [
                directory / name
                for name in os.listdir(directory)
                if name.startswith(".") and name[-7:-6] == "." and name[1:-7] in names
            ]
        for leftover in leftovers:
            if leftover.is_file() and not leftover.is_symlink():
                with contextlib.suppress(OSError):
                    leftover.unlink()


def _missing_or_short(local_dir: Path, manifest: dict[str, Any]) -> list[str]:
    # A cheap completeness check (sizes only); content is the verifier's job.
    problems = []
    for entry in manifest["files"]:
        if not isinstance(entry, dict):
            continue
        relative = str(entry.get("path", ""))
        target = local_dir / relative
        try:
            size = target.stat().st_size
        except OSError:
            problems.append(f"{relative} (missing)")
            continue
        if size != entry.get("size"):
            problems.append(f"{relative} ({size} bytes, manifest says {entry.get('size')})")
    return problems
