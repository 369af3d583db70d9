"""Build PULL_MANIFEST.json on the box: the exact roster, every file's path, size and SHA-256.

STDLIB-ONLY and SELF-CONTAINED (no rgt imports): the onstart hook ships this one file to the
rented box and runs it with the box's python3 (3.8 or newer), so keep it 3.8-compatible:
no ``X | Y`` types at runtime, no ``match``, no 3.9+ library calls.

Usage on the box::

    python3 manifest.py ROOT --run-id ID --roster FILE [--instance-id ID] [--output PATH]

ROSTER FILE: one top-level result directory name per line (blank lines ignored). The manifest
lists exactly those directories; anything else at the top of ROOT is an error, as is a roster
directory that is missing. The instance id comes from ``--instance-id``, else from the
environment variable named by ``--instance-id-env`` (default ``CONTAINER_ID``, which vast.ai
sets inside every container), else it is recorded as null (``rgt pull`` then refuses the
manifest, since it cannot tell which instance it describes).

Refused (exit 1, one line per problem on stderr, nothing written): symlinks; special files;
unsafe names (``..``, absolute, control characters, backslash, not UTF-8); missing or unexpected
roster entries; in-flight files (``*.tmp``, the temp file of an atomic write still being
written) -- those are named instead of being hashed half-written or skipped silently.
Exit 2: usage (bad arguments, unreadable roster file, ROOT not a directory).

Hashing runs on a thread pool (hashlib releases the GIL on large updates and the reads release
it too); big files are read with large ``readinto`` calls into a reused buffer, small files are
hashed in batches with one ``read`` each, so tens of thousands of small files cost little more
than their syscalls. Also importable: ``build_manifest``, ``write_manifest``, ``hash_files``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Dict, Tuple  # noqa: UP035 (aliases below run on python 3.8)

SCHEMA = "rgt.pull-manifest/v1"
BUILDER_VERSION = "1"
MANIFEST_NAME = "PULL_MANIFEST.json"
DEFAULT_INSTANCE_ID_ENV = "CONTAINER_ID"
IN_FLIGHT_SUFFIX = ".tmp"
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

# Files at least this big are hashed by one task each with big reads; smaller ones in batches.
BIG_FILE = 8 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024
_BATCH_BYTES = 8 * 1024 * 1024
_BATCH_FILES = 256
# More problems than this are summarised, so a broken tree does not flood the terminal.
_MAX_PROBLEM_LINES = 50

# (relative path, absolute path, size seen when listed)
FileItem = Tuple[str, str, int]  # noqa: UP006
# relative path -> (bytes hashed, sha256 hex) or an error string
HashResult = Dict[str, Any]  # noqa: UP006


class ManifestRefused(Exception):
    """The tree cannot be described safely; `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems[:3]) + (" …" if len(self.problems) > 3 else ""))


def default_workers() -> int:
    """Threads to hash with: the CPUs this process may run on."""
    try:
        count = len(os.sched_getaffinity(0))  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    return max(1, count)


def name_problem(name: str) -> str | None:
    """Why one path component is unsafe, or None if it is a plain name."""
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    if "/" in name or "\\" in name:
        return "contains a slash or backslash"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "contains a control character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def path_problem(relative: str) -> str | None:
    """Why a manifest-relative POSIX path is unsafe (absolute, traversal, odd names), or None."""
    if not isinstance(relative, str) or not relative:
        return "is empty or not a string"
    if relative.startswith("/"):
        return "is absolute"
    for part in relative.split("/"):
        problem = name_problem(part)
        if problem is not None:
            return f"component {part!r} {problem}"
    return None


def read_roster(path: str) -> list[str]:
    """Roster names from a file: one per line, blank lines ignored (ValueError if unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"roster file {path}: cannot read it ({exc})") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ValueError(f"roster file {path}: no directory names in it (one per line)")
    return names


def _check_roster(roster: Iterable[str]) -> tuple[list[str], list[str]]:
    names: list[str] = []
    problems: list[str] = []
    for name in roster:
        problem = name_problem(name) if isinstance(name, str) else "is not a string"
        if problem is not None:
            problems.append(f"roster entry {name!r} {problem}; allowed: a plain directory name")
        elif name == MANIFEST_NAME:
            problems.append(f"roster entry {name!r} is the manifest itself")
        elif name in names:
            problems.append(f"roster entry {name!r} is listed twice")
        else:
            names.append(name)
    return sorted(names), problems


def _is_own_temp(name: str) -> bool:
    # A temp file of this module's own atomic write of the manifest (a crash can leave one).
    return name.startswith("." + MANIFEST_NAME + ".") and name.endswith(IN_FLIGHT_SUFFIX)


def list_tree(
    root: str, roster: Sequence[str], *, skip: Sequence[str] = ()
) -> tuple[list[FileItem], list[str]]:
    """Every regular file under the roster directories of `root`, plus the problems found.

    `skip`: absolute paths not to list (the manifest being written). Problems: unexpected
    top-level entries, missing roster directories, symlinks, special files, unsafe names,
    in-flight ``*.tmp`` files."""
    items: list[FileItem] = []
    problems: list[str] = []
    skipped = {os.path.abspath(p) for p in skip}
    wanted = set(roster)
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        return [], [f"{root}: cannot list it ({exc.strerror or exc})"]
    present = set()
    for entry in top:
        if entry.name == MANIFEST_NAME or _is_own_temp(entry.name):
            continue
        if os.path.abspath(entry.path) in skipped:
            continue
        if entry.name not in wanted:
            kind = "directory" if entry.is_dir(follow_symlinks=False) else "file"
            problems.append(
                f"{entry.name!r}: unexpected top-level {kind} (not in the roster "
                f"{sorted(wanted)}); add it to the roster or move it out of the results root"
            )
            continue
        present.add(entry.name)
        if entry.is_symlink():
            problems.append(
                f"{entry.name!r}: roster entry is a symlink; results must be real files"
            )
        elif not entry.is_dir(follow_symlinks=False):
            problems.append(f"{entry.name!r}: roster entry is not a directory")
        else:
            _walk(entry.path, entry.name, items, problems, skipped)
    for name in roster:
        if name not in present:
            problems.append(f"{name!r}: roster directory missing under {root}")
    items.sort(key=lambda item: item[0])
    return items, problems


def _walk(
    directory: str,
    relative: str,
    items: list[FileItem],
    problems: list[str],
    skipped: set[str],
) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        problems.append(f"{relative}: cannot list it ({exc.strerror or exc})")
        return
    for entry in entries:
        name = entry.name
        rel = relative + "/" + name
        problem = name_problem(name)
        if problem is not None:
            problems.append(f"{rel!r}: unsafe name: {problem}")
            continue
        if os.path.abspath(entry.path) in skipped:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError as exc:
            problems.append(f"{rel}: cannot stat it ({exc.strerror or exc})")
            continue
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            problems.append(f"{rel}: is a symlink; results must be real files, not links")
        elif stat.S_ISDIR(mode):
            _walk(entry.path, rel, items, problems, skipped)
        elif not stat.S_ISREG(mode):
            problems.append(f"{rel}: is not a regular file (fifo, socket or device)")
        elif name.endswith(IN_FLIGHT_SUFFIX):
            problems.append(
                f"{rel}: in-flight file (*.tmp of an atomic write still being written, or "
                "left by a crash); wait for the writer to finish or remove it"
            )
        else:
            items.append((rel, entry.path, info.st_size))


def _hash_big(path: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as handle:
        if hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            count = handle.readinto(view)
            if not count:
                break
            digest.update(view[:count])
            total += count
    return total, digest.hexdigest()


def _hash_small(path: str, size: int) -> tuple[int, str]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        # One read of size+1: a short read means end of file, so one syscall usually suffices.
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return len(data), hashlib.sha256(data).hexdigest()
        digest = hashlib.sha256(data)
        total = len(data)
        while True:
            more = os.read(fd, READ_CHUNK)
            if not more:
                return total, digest.hexdigest()
            digest.update(more)
            total += len(more)
    finally:
        os.close(fd)


def _hash_batch(batch: Sequence[FileItem]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for relative, path, size in batch:
        try:
            if size >= BIG_FILE:
                out.append((relative, _hash_big(path)))
            else:
                out.append((relative, _hash_small(path, size)))
        except OSError as exc:
            out.append((relative, f"cannot read it ({exc.strerror or exc})"))
    return out


def make_batches(items: Sequence[FileItem]) -> list[list[FileItem]]:
    """Work units: each big file alone (biggest first), small files grouped by count and bytes."""
    # Biggest work first so the pool does not end on one long file.
    big = sorted((i for i in items if i[2] >= BIG_FILE), key=lambda i: -i[2])
    batches: list[list[FileItem]] = [[item] for item in big]
    current: list[FileItem] = []
    current_bytes = 0
    for item in items:
        if item[2] >= BIG_FILE:
            continue
        current.append(item)
        current_bytes += item[2]
        if len(current) >= _BATCH_FILES or current_bytes >= _BATCH_BYTES:
            batches.append(current)
            current, current_bytes = [], 0
    if current:
        batches.append(current)
    return batches


def hash_files(
    items: Sequence[FileItem],
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> HashResult:
    """SHA-256 of every (relative, path, size) item on a thread pool.

    Returns relative -> (bytes_read, hexdigest), or relative -> error string when unreadable.
    `progress(bytes_done, bytes_total)` is called from the calling thread as batches finish."""
    results: HashResult = {}
    batches = make_batches(items)
    total = sum(item[2] for item in items)
    done = 0
    count = min(workers or default_workers(), max(1, len(batches)))
    if count <= 1:
        for batch in batches:
            results.update(_hash_batch(batch))
            done += sum(item[2] for item in batch)
            if progress is not None:
                progress(done, total)
        return results
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="rgt-hash") as pool:
        futures = {pool.submit(_hash_batch, batch): batch for batch in batches}
        for future in as_completed(futures):
            results.update(future.result())
            done += sum(item[2] for item in futures[future])
            if progress is not None:
                progress(done, total)
    return results


def _utc_now() -> str:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


def _check_id(field: str, value: str | None) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, str) or not value or len(value) > 200:
        return [f"{field} {value!r}: must be 1-200 printable characters"]
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return [f"{field} {value!r}: contains a control character"]
    return []


def build_manifest(
    root: Any,
    run_id: str,
    roster: Sequence[str],
    instance_id: str | None = None,
    workers: int | None = None,
    *,
    skip: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The manifest of `root` as a dict; raises ManifestRefused listing every problem."""
    root = os.path.abspath(os.fspath(root))
    problems = _check_id("run id", run_id) + _check_id("instance id", instance_id)
    if not run_id:
        problems.append("run id: must not be empty")
    names, roster_problems = _check_roster(roster)
    problems += roster_problems
    if not names and not roster_problems:
        problems.append("roster: empty; name at least one top-level result directory")
    if problems:
        raise ManifestRefused(problems)
    items, problems = list_tree(root, names, skip=skip)
    if problems:
        raise ManifestRefused(problems)
    hashed = hash_files(items, workers=workers, progress=progress)
    files = []
    for relative, _path, size in items:
        result = hashed.get(relative, "was not hashed")
        if isinstance(result, str):
            problems.append(f"{relative}: {result}")
            continue
        got, digest = result
        if got != size:
            problems.append(
                f"{relative}: changed while hashing ({size} bytes listed, {got} read); "
                "is a writer still running?"
            )
            continue
        files.append({"path": relative, "size": got, "sha256": digest})
    if problems:
        raise ManifestRefused(problems)
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "instance_id": instance_id,
        "created_at": _utc_now(),
        "builder": {
            "name": "rgt.manifest",
            "version": BUILDER_VERSION,
            "python": platform.python_version(),
        },
        "hash": "sha256",
        "roster": names,
        "files": files,
        "totals": {"files": len(files), "bytes": sum(f["size"] for f in files)},
    }


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    """The manifest's bytes as written: UTF-8 JSON, sorted keys, trailing newline."""
    return (json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode(
        "utf-8"
    )


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=IN_FLIGHT_SUFFIX, dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_manifest(
    root: Any,
    run_id: str,
    roster: Sequence[str],
    instance_id: str | None = None,
    *,
    output: str | None = None,
    workers: int | None = None,
) -> str:
    """Build the manifest of `root` and write it atomically (temp, fsync, rename, fsync dir) to
    `output` (default ROOT/PULL_MANIFEST.json); returns the path written."""
    root = os.path.abspath(os.fspath(root))
    target = os.path.abspath(output) if output else os.path.join(root, MANIFEST_NAME)
    manifest = build_manifest(root, run_id, roster, instance_id, workers, skip=[target])
    _atomic_write(target, encode_manifest(manifest))
    return target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manifest.py",
        description="Write ROOT/PULL_MANIFEST.json: roster, and every file's path, size, SHA-256.",
        epilog="exit codes: 0 written, 1 refused (one line per problem on stderr), 2 usage",
    )
    parser.add_argument("root", help="the results root on the box")
    parser.add_argument("--run-id", required=True, help="the run id recorded in the manifest")
    parser.add_argument(
        "--roster", required=True, help="file naming the top-level result directories, one a line"
    )
    parser.add_argument("--instance-id", help="the instance id (default: from --instance-id-env)")
    parser.add_argument(
        "--instance-id-env",
        default=DEFAULT_INSTANCE_ID_ENV,
        help="environment variable holding the instance id (default %(default)s, set by vast.ai)",
    )
    parser.add_argument("--output", help="where to write (default ROOT/PULL_MANIFEST.json)")
    parser.add_argument("--workers", type=int, help="hashing threads (default: CPU count)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    args = _parser().parse_args(argv)
    prog = "manifest.py"
    if not os.path.isdir(args.root):
        print(f"{prog}: error: ROOT {args.root} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    if args.workers is not None and args.workers < 1:
        print(f"{prog}: error: --workers must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        roster = read_roster(args.roster)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    instance_id = args.instance_id or os.environ.get(args.instance_id_env or "", "") or None
    try:
        path = write_manifest(
            args.root, args.run_id, roster, instance_id, output=args.output, workers=args.workers
        )
    except ManifestRefused as exc:
        shown = exc.problems[:_MAX_PROBLEM_LINES]
        for line in shown:
            print(f"{prog}: refused: {line}", file=sys.stderr)
        if len(exc.problems) > len(shown):
            print(
                f"{prog}: refused: … and {len(exc.problems) - len(shown)} more problems",
                file=sys.stderr,
            )
        return EXIT_REFUSED
    except OSError as exc:
        print(f"{prog}: error: cannot write the manifest ({exc})", file=sys.stderr)
        return EXIT_REFUSED
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    print(f"{prog}: wrote {path} (sha256 {digest})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
