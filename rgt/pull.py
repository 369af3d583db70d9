"""Pull a run's results off a rented box: the on-box manifest first, then the files, resumably.

The manifest (``PULL_MANIFEST.json``, built on the box by ``rgt.manifest``) is read first with
``provider.read_remote_file`` and saved byte-for-byte next to the results; its SHA-256 is what
the verification and the gate later bind to. The files then come over the provider's
``copy_from`` (rsync ``--partial`` with bounded retries and timeouts), one roster directory at a
time, so an interrupted pull resumes without re-sending the files that completed.

LOCAL_DIR must be new, empty, or the directory of an earlier pull of the same run: rgt never
copies into, or moves files around in, a folder of the user's. Before the first rsync a small
journal (``.rsync-partial/rgt-pull.json``) records the run, the files rsync may write and the
files already there that look like rsync temp files; a later pull adopts only temp files that
journal proves rgt's own. One pull at a time per instance and per folder (``rgt.locks``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rgt.atomic import atomic_write_bytes, atomic_write_text
from rgt.errors import (
    CheckFailed,
    LocalDiskFull,
    ProviderError,
    Refused,
    UsageError,
    is_disk_full,
)
from rgt.ledger import Ledger
from rgt.locks import folder_lock, instance_lock
from rgt.providers.base import CopyProgress, Instance, Provider

MANIFEST_NAME = "PULL_MANIFEST.json"
# The pull's journal, in rgt's partial dir at the top of LOCAL_DIR (rsync never writes there:
# every copied file lies under a roster directory; the verifier skips partial dirs).
JOURNAL_NAME = "rgt-pull.json"
JOURNAL_SCHEMA = "rgt.pull-journal/1"
# What a refused LOCAL_DIR is told it may be instead.
LOCAL_DIR_ALLOWED = (
    "give a new or empty directory, or the directory of an earlier `rgt pull` of this run"
)
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
    estimated storage $/hour when the provider reported disk size and storage price. May name
    `{sweep}`: render it with remedy_steps (rgt.nextstep)."""
    bills = list(getattr(profile, "stop_still_bills", None) or [])
    if not bills:
        return "check what it still bills with `{sweep}`"
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
    """Why a box in a non-running state cannot be copied from, and what to do (with the cost);
    names steps: render it with remedy_steps(instance.id)."""
    return (
        f"instance {instance.id} is {instance.state}: its disk cannot be copied while it is not "
        f"running. {reach_remedy(instance.state)}, then copy → verify → destroy; "
        f"{still_bills_note(instance, profile)}"
    )


def reach_remedy(state: str) -> str:
    """What makes a box in `state` reachable again. Starting helps only a stopped box; the
    others wait for the platform, not for the user. Names `{poll}` or `{start}`: render it with
    remedy_steps (the CLI shows commands, MCP tool calls)."""
    return {
        "offline": "Its host stopped answering: wait for it to come back (`{poll}`); "
        "starting does not help",
        "paused": "It was outbid (interruptible): it runs again when its bid wins; wait (`{poll}`)",
        "scheduling": "It waits for its GPU to be free: wait (`{poll}`)",
    }.get(state, "Start it (`{start}`; it bills compute again)")


def remedy_steps(instance_id: str) -> dict[str, Any]:
    """The steps reach_remedy and still_bills_note name, for `instance_id` (rgt.nextstep)."""
    from rgt.nextstep import Step

    return {
        "poll": Step.of("poll", instance_id=instance_id),
        "start": Step.of("start", instance_id=instance_id),
        "sweep": Step.of("sweep"),
    }


def _raise_if_job_unfinished(
    instance: Instance, *, ledger: Ledger, provider: Provider, profile: Any | None
) -> None:
    """No manifest to read: when the run's job status record says why (the job has not
    finished, or failed), say that, with the status, instead of a raw `cat:` error. A box
    whose record rgt cannot read (no run label, no profile data_dir) keeps the read's error."""
    from rgt.lifecycle import job_report, run_of
    from rgt.nextstep import Step

    record = ledger.instance(provider.platform, instance.id)
    run_id = run_of(instance, record)
    data_dir = (getattr(profile, "overrides", None) or {}).get("data_dir")
    if profile is None or run_id is None or not data_dir:
        return
    job = job_report(instance, run_id, provider=provider, profile=profile, now=time.time())
    if job.state in ("running", "no-record", "interrupted", "stale"):
        raise CheckFailed(
            f"instance {instance.id}: the job has not finished (job status: {job.summary}); "
            "its manifest is built when it succeeds, nothing was copied: wait for it (`{next}`)",
            step=Step.of("poll", instance_id=instance.id, wait=True),
        )
    if job.state == "failed":
        raise CheckFailed(
            f"instance {instance.id}: the job FAILED (job status: {job.summary}) and built no "
            "manifest, nothing was copied: `{next}` copies its logs and says what to do",
            step=Step.of("poll", instance_id=instance.id),
        )


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
    ledger: Ledger | None = None,
) -> Instance:
    """The instance, running. A stopped box is an error naming the remedy and the cost, unless
    `start_if_stopped`, which starts it (`rgt.lifecycle.start`, as `rgt start` does: recorded
    in the ledger) and waits (bounded) until it runs. Starting cannot help an offline, preempted
    or scheduling box: that stays an error, at once."""
    instance = provider.show(instance_id)
    if instance.state == "gone":
        raise ProviderError(f"instance {instance_id} is gone (destroyed); nothing to pull")
    if instance.state == "running":
        return instance
    if instance.state in ("stopped", "exited") and start_if_stopped:
        if ledger is not None and profile is not None:
            from rgt.lifecycle import start

            start(instance_id, provider=provider, ledger=ledger, profile=profile)
        else:
            provider.start(instance_id)
    elif instance.state in UNREACHABLE_STATES:
        raise ProviderError(unreachable_message(instance, profile), step=remedy_steps(instance.id))
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
        + unreachable_message(instance, profile),
        step=remedy_steps(instance.id),
    )


def pull_instance(
    instance_id: str,
    remote_root: str,
    local_dir: Path | str,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Any | None = None,
    progress: Callable[[int, int | None, str | None], None] | None = None,
    start_if_stopped: bool = False,
) -> PullResult:
    """Copy the results under `remote_root` on the box into `local_dir` and record the pull.

    `local_dir` must be new, empty, or the directory of an earlier pull of the same run; pass
    the user's text as it was given (a str), so that an empty one is refused rather than read
    as the current directory. Holds the instance's and the folder's lock (rgt.locks) from the
    first look at the folder to the ledger record.

    `progress(bytes_done, bytes_total, current_file)` is called as bytes arrive. Raises
    UsageError (LOCAL_DIR unusable or not a pull of this run), ProviderError (box unreachable,
    copy failed after retries), Refused (manifest of another instance, or another pull or
    destroy of this instance or into this folder in progress), CheckFailed (malformed manifest,
    files missing after the copy)."""
    instance_id = str(instance_id)
    if not PurePosixPath(remote_root).is_absolute():
        raise UsageError(
            f"REMOTE_ROOT {remote_root!r}: not absolute; give the result root on the box as an "
            "absolute path, e.g. /workspace/results"
        )
    if isinstance(local_dir, str) and not local_dir.strip():
        raise UsageError(f"LOCAL_DIR {local_dir!r}: empty; {LOCAL_DIR_ALLOWED}")
    local_dir = Path(local_dir).resolve()
    from rgt.keeper import confine_to_results

    confine_to_results(local_dir)
    with folder_lock(local_dir, "pull"), instance_lock(instance_id, "pull"):
        return _pull_locked(
            instance_id,
            remote_root,
            local_dir,
            provider=provider,
            ledger=ledger,
            profile=profile,
            progress=progress,
            start_if_stopped=start_if_stopped,
        )


def _pull_locked(
    instance_id: str,
    remote_root: str,
    local_dir: Path,
    *,
    provider: Provider,
    ledger: Ledger,
    profile: Any | None,
    progress: Callable[[int, int | None, str | None], None] | None,
    start_if_stopped: bool,
) -> PullResult:
    _check_local_dir(local_dir)
    earlier = earlier_pull(local_dir)
    started = time.time()
    instance = ensure_reachable(
        instance_id,
        provider=provider,
        profile=profile,
        start_if_stopped=start_if_stopped,
        ledger=ledger,
    )

    try:
        manifest_bytes = provider.read_remote_file(instance_id, manifest_remote_path(remote_root))
    except ProviderError:
        _raise_if_job_unfinished(instance, ledger=ledger, provider=provider, profile=profile)
        raise
    manifest = parse_manifest(manifest_bytes, instance_id=instance_id)
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    if earlier is not None:
        _check_same_run(local_dir, earlier, manifest, instance_id)
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
    adopted = adopt_interrupted_partials(local_dir, earlier)
    # Before any rsync runs: what it may leave, and what was here before it (never ours).
    journal = write_journal(local_dir, manifest, instance_id, manifest_sha256)
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
    remove_stale_partials(local_dir, manifest, journal)
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
    remove_journal(local_dir)
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


@dataclass(frozen=True)
class EarlierPull:
    """What an earlier pull left in LOCAL_DIR: whose results, and its journal if it was cut off."""

    run_id: str | None
    instance_id: str | None
    source: str  # the file that says so (for messages)
    journal: dict[str, Any] | None = None


def journal_path(local_dir: Path) -> Path:
    """Where a pull keeps its journal in LOCAL_DIR."""
    from rgt.providers.rsync import PARTIAL_DIR

    return local_dir / PARTIAL_DIR / JOURNAL_NAME


def earlier_pull(local_dir: Path) -> EarlierPull | None:
    """The earlier pull LOCAL_DIR holds; None for a new or empty directory.

    Raises UsageError for a directory with anything else in it: rgt copies only into a folder
    it can prove is its own, so it never moves or overwrites the user's files."""
    try:
        entries = [] if not local_dir.exists() else list(local_dir.iterdir())
    except OSError as exc:
        raise UsageError(f"LOCAL_DIR {local_dir}: cannot list it ({exc.strerror})") from None
    # A manifest write cut off by a kill leaves only its temp file: still an empty folder.
    if all(_is_manifest_temp(entry.name) for entry in entries):
        return None
    journal_file = journal_path(local_dir)
    if journal_file.is_file():
        journal = _read_json(journal_file, "the journal of an interrupted `rgt pull`")
        if journal.get("schema") != JOURNAL_SCHEMA:
            raise UsageError(
                f"LOCAL_DIR {local_dir}: {journal_file} is not a journal rgt wrote "
                f"(schema {journal.get('schema')!r}); {LOCAL_DIR_ALLOWED}"
            )
        return EarlierPull(
            _text_or_none(journal.get("run_id")),
            _text_or_none(journal.get("instance_id")),
            str(journal_file),
            journal,
        )
    manifest_file = local_dir / MANIFEST_NAME
    if manifest_file.is_file() and not manifest_file.is_symlink():
        document = _read_json(manifest_file, f"the {MANIFEST_NAME} of an earlier pull")
        return EarlierPull(
            _text_or_none(document.get("run_id")),
            _text_or_none(document.get("instance_id")),
            str(manifest_file),
        )
    raise UsageError(
        f"LOCAL_DIR {local_dir}: not empty and not the directory of an earlier pull (no "
        f"{MANIFEST_NAME}); {LOCAL_DIR_ALLOWED}"
    )


def _check_same_run(
    local_dir: Path, earlier: EarlierPull, manifest: dict[str, Any], instance_id: str
) -> None:
    """An earlier pull's folder takes only the same run again (any attempt's instance); a
    manifest without a run id, only the same instance."""
    run_id = _text_or_none(manifest.get("run_id"))
    same = earlier.run_id == run_id and (run_id is not None or earlier.instance_id == instance_id)
    if not same:
        raise UsageError(
            f"LOCAL_DIR {local_dir}: holds a pull of run {earlier.run_id!r} (instance "
            f"{earlier.instance_id}, {Path(earlier.source).name}), not of run {run_id!r}; "
            f"{LOCAL_DIR_ALLOWED}"
        )


def _is_manifest_temp(name: str) -> bool:
    # rgt.atomic's temp name for PULL_MANIFEST.json: ".PULL_MANIFEST.json.<pid>.<hex>.tmp".
    return name.startswith(f".{MANIFEST_NAME}.") and name.endswith(".tmp")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"LOCAL_DIR {path.parent}: {path.name}, {what}, is unreadable ({exc}); "
            f"{LOCAL_DIR_ALLOWED}"
        ) from None
    if not isinstance(document, dict):
        raise UsageError(
            f"LOCAL_DIR {path.parent}: {path.name}, {what}, is not a JSON object; "
            f"{LOCAL_DIR_ALLOWED}"
        )
    return document


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _expected_sizes(manifest: dict[str, Any]) -> dict[str, int]:
    """Every file the manifest lists (relative path -> size): all that rsync may write."""
    return {
        entry["path"]: entry["size"]
        for entry in manifest.get("files", [])
        if isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and isinstance(entry.get("size"), int)
    }


def _lookalikes(local_dir: Path, expected: Iterable[str]) -> dict[Path, str]:
    """Files under LOCAL_DIR named like rsync's temp file of an expected file (temp path ->
    the expected file's relative path)."""
    from rgt.providers.rsync import final_name, temp_files

    wanted = {local_dir / relative: relative for relative in expected}
    found: dict[Path, str] = {}
    for top in sorted({relative.split("/", 1)[0] for relative in wanted.values()}):
        for temp in temp_files(local_dir / top):
            final = final_name(temp)
            if final in wanted:
                found[temp] = wanted[final]
    return found


def write_journal(
    local_dir: Path, manifest: dict[str, Any], instance_id: str, manifest_sha256: str
) -> dict[str, Any]:
    """Record, before any rsync runs, whose pull this is, the files rsync may write (with their
    sizes), and the files already here named like rsync temp files of them (the user's, never
    to be moved). Returns the journal."""
    sizes = _expected_sizes(manifest)
    journal = {
        "schema": JOURNAL_SCHEMA,
        "run_id": manifest.get("run_id"),
        "instance_id": instance_id,
        "manifest_sha256": manifest_sha256,
        "files": sizes,
        "there_before": sorted(
            str(path.relative_to(local_dir)) for path in _lookalikes(local_dir, sizes)
        ),
    }
    atomic_write_text(journal_path(local_dir), json.dumps(journal, indent=1) + "\n")
    return journal


def remove_journal(local_dir: Path) -> None:
    """A recorded pull needs no journal: remove it, and rgt's partial dir if that is empty."""
    path = journal_path(local_dir)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def _own_leftovers(local_dir: Path, journal: dict[str, Any] | None) -> set[Path]:
    """Temp files that the pull which wrote `journal` proves its rsync left: named like the
    temp file of a file it was copying, not there when it wrote the journal, and no bigger
    than that file. A journal not as rgt writes it proves nothing."""
    from rgt.manifest import path_problem

    files = journal.get("files") if journal is not None else None
    listed = journal.get("there_before") if journal is not None else None
    if not isinstance(files, dict) or not isinstance(listed, list):
        return set()
    # The journal is a file in the user's folder: follow only safe relative paths from it.
    sizes = {
        relative: size
        for relative, size in files.items()
        if isinstance(size, int) and path_problem(relative) is None
    }
    there_before = {local_dir / relative for relative in listed if isinstance(relative, str)}
    own = set()
    for temp, relative in _lookalikes(local_dir, sizes).items():
        with contextlib.suppress(OSError):
            if temp not in there_before and temp.stat().st_size <= sizes[relative]:
                own.add(temp)
    return own


def adopt_interrupted_partials(local_dir: Path, earlier: EarlierPull | None) -> int:
    """Move the temp files (``.NAME.XXXXXX``) that a killed earlier pull's rsync left into
    rsync's partial dir, so this copy re-sends only what is missing and a cut file never sits
    under its final name. Only what that pull's journal proves its own is touched.

    Safe: rsync checks every file's whole-file checksum after transfer, and the verifier
    re-hashes everything against the manifest. Returns how many were adopted."""
    from rgt.providers.rsync import adopt_temp_files

    journal = earlier.journal if earlier is not None else None
    return adopt_temp_files(_own_leftovers(local_dir, journal))


def remove_stale_partials(
    local_dir: Path, manifest: dict[str, Any], journal: dict[str, Any]
) -> None:
    """Delete what this pull's rsync left of files it has now completed: partial-dir copies,
    and temp files the journal proves its own (never a file that was there before)."""
    from rgt.providers.rsync import PARTIAL_DIR

    for entry in manifest["files"]:
        if not isinstance(entry, dict):
            continue
        target = local_dir / str(entry.get("path", ""))
        leftover = target.parent / PARTIAL_DIR / target.name
        if leftover.is_file() and not leftover.is_symlink():
            with contextlib.suppress(OSError):
                leftover.unlink()
    for temp in _own_leftovers(local_dir, journal):
        with contextlib.suppress(OSError):
            temp.unlink()


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
