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

Hashing (``hash_files``, shared with ``rgt verify``): the listing uses the directory entries'
types (no stat per file); big files are read in 4 MiB ``readv`` calls into a reused buffer, each
on a thread of its own (hashlib and the reads release the GIL); small files are read into a
reused 1 MiB buffer (one open, two reads, one close each) and, when there are thousands, split
over forked processes, because their per-file Python work holds the GIL. A file listed without
a size that turns out big is handed to a task of its own. bench/bench_hashing.py measures it.
Also importable: ``build_manifest``, ``write_manifest``, ``hash_files``, ``list_tree``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import marshal
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from json.encoder import encode_basestring as _encode_string  # what json.dumps uses
from typing import Any, Dict, Tuple  # noqa: UP035 (aliases below run on python 3.8)

SCHEMA = "rgt.pull-manifest/v1"
BUILDER_VERSION = "1"
MANIFEST_NAME = "PULL_MANIFEST.json"
# The largest manifest rgt reads (off the box, or pulled): about 500,000 files at ~120 bytes an
# entry. A bigger one is refused by its size before it is parsed.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
DEFAULT_INSTANCE_ID_ENV = "CONTAINER_ID"
IN_FLIGHT_SUFFIX = ".tmp"
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

# Files at least this big are hashed by one task each with big reads; smaller ones in batches.
BIG_FILE = 8 * 1024 * 1024
# 1 MiB reads for big files: 2-4 % faster than 4 MiB here (4 x 512 MiB from the page cache,
# fresh processes, 4 alternating rounds on 2026-12-02), and 256 KiB was no faster; the buffer
# stays in the core's L2 cache between the copy and the hash.
READ_CHUNK = 1024 * 1024
_BATCH_BYTES = 8 * 1024 * 1024
_BATCH_FILES = 256
SMALL_BUFFER = 1024 * 1024
# This many small files make a process pool worth its fork (their per-file work holds the GIL).
PROCESS_MIN_FILES = 4000
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS |= getattr(os, "O_NONBLOCK", 0)  # a fifo swapped in after listing must not block
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")
# Anything that may make a relative path unsafe: a control character or backslash, an empty,
# "." or ".." component, a leading slash. Paths without a match need no per-component check.
_SUSPECT_PATH = re.compile(r"[\x00-\x1f\x7f\\]|(?:^|/)\.{0,2}(?:/|$)")
DEFER = "defer: big file, hash it on its own"
# More problems than this are summarised, so a broken tree does not flood the terminal.
_MAX_PROBLEM_LINES = 50

# (relative path, absolute path, size seen when listed)
FileItem = Tuple[str, str, int]  # noqa: UP006
# (size, sha256 hex, [size, mtime_ns, ctime_ns, inode, device] or None, problem or None)
FileResult = Tuple[int, str, Any, Any]  # noqa: UP006
# relative path -> FileResult, or an error string
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
    if _UNSAFE_CHARS.search(name) is not None:  # the common case is one regex search
        if "/" in name or "\\" in name:
            return "contains a slash or backslash"
        return "contains a control character"
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid UTF-8"
    return None


def path_problem(relative: str) -> str | None:
    """Why a manifest-relative POSIX path is unsafe (absolute, traversal, odd names), or None."""
    if not isinstance(relative, str) or not relative:
        return "is empty or not a string"
    if relative.isascii() and _SUSPECT_PATH.search(relative) is None:
        return None  # the common case: one regex over the whole path
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

    Items are (relative path, path, -1): the size is learnt while hashing (the listing uses the
    directory entries' types, no stat per file). `skip`: absolute paths not to list (the
    manifest being written). Problems: unexpected top-level entries, missing roster
    directories, symlinks, special files, unsafe names, in-flight ``*.tmp`` files."""
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
    items.sort()
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
    prefix = relative + "/"
    skipped_names = {os.path.basename(path) for path in skipped}
    for entry in entries:
        name = entry.name
        rel = prefix + name
        problem = name_problem(name)
        if problem is not None:
            problems.append(f"{rel!r}: unsafe name: {problem}")
            continue
        # By name first: abspath for every entry would cost more than the listing itself.
        if name in skipped_names and os.path.abspath(entry.path) in skipped:
            continue
        # The entry's type comes from the directory listing itself (no stat call); on file
        # systems that do not report it, Python stats the entry instead.
        try:
            if entry.is_file(follow_symlinks=False):
                if name.endswith(IN_FLIGHT_SUFFIX):
                    problems.append(
                        f"{rel}: in-flight file (*.tmp of an atomic write still being written, "
                        "or left by a crash); wait for the writer to finish or remove it"
                    )
                else:
                    items.append((rel, entry.path, -1))
            elif entry.is_symlink():
                problems.append(f"{rel}: is a symlink; results must be real files, not links")
            elif entry.is_dir(follow_symlinks=False):
                _walk(entry.path, rel, items, problems, skipped)
            else:
                problems.append(f"{rel}: is not a regular file (fifo, socket or device)")
        except OSError as exc:
            problems.append(f"{rel}: cannot stat it ({exc.strerror or exc})")


def _stat5(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


def _hash_big(path: str, want_stat: bool) -> FileResult:
    digest = hashlib.sha256()
    view = memoryview(bytearray(READ_CHUNK))
    total = 0
    fd = os.open(path, _OPEN_FLAGS)
    try:
        before = _stat5(os.fstat(fd))  # a big file is compared before/after: a writer shows
        if hasattr(os, "posix_fadvise"):  # read-ahead hint; absent on macOS
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            count = os.readv(fd, [view])
            if not count:
                break
            digest.update(view[:count])
            total += count
        after = _stat5(os.fstat(fd))
    finally:
        os.close(fd)
    note = "changed while it was read" if after != before else None
    return (total, digest.hexdigest(), after if want_stat else None, note)


def hash_batch(
    batch: Sequence[FileItem],
    want_stat: bool = False,
    inspect: Callable[[str, memoryview], str | None] | None = None,
) -> list[tuple[str, Any]]:
    """Hash one work unit. Per item: (size, sha256, stat or None, note or None), an error
    string, or DEFER for a file to hash on its own (it turned out big).

    Small files cost one open, two reads into a reused buffer (the second confirms the end of
    the file; with `want_stat` the fstat does that instead) and a close: no per-file buffer.
    `inspect(relative, data)` may return a problem for a small file's content (JSON parses);
    `data` is a view of a reused buffer, valid during the call only (no copy per file)."""
    out: list[tuple[str, Any]] = []
    buffer = bytearray(SMALL_BUFFER)
    view = memoryview(buffer)
    size_of = len(buffer)
    sha256 = hashlib.sha256
    readv = os.readv
    for relative, path, size in batch:
        if size >= BIG_FILE:
            try:
                out.append((relative, _hash_big(path, want_stat)))
            except OSError as exc:
                out.append((relative, f"cannot read it ({exc.strerror or exc})"))
            continue
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            out.append((relative, f"cannot read it ({exc.strerror or exc})"))
            continue
        try:
            count = readv(fd, [view])
            info = None
            extra = 0  # bytes read past `count` while confirming the end of the file
            at_end = False
            if count < size_of:
                if want_stat:  # the fstat wanted anyway confirms the end
                    info = _stat5(os.fstat(fd))
                    at_end = info[0] == count
                else:
                    # A short read of a regular file is its end (POSIX: only end-of-file or
                    # a signal makes it short, and Python retries on EINTR). A second read
                    # would only narrow, not close, the window for a concurrent appender.
                    at_end = True
                if not at_end:
                    extra = readv(fd, [view[count:]])
                    at_end = extra == 0
            if at_end:
                data = view[:count]
                digest = sha256(data).hexdigest()
                note = inspect(relative, data) if inspect is not None else None
                out.append((relative, (count, digest, info, note)))
                continue
            if os.fstat(fd).st_size >= BIG_FILE:
                out.append((relative, DEFER))
                continue
            hasher = sha256(view[: count + extra])
            total = count + extra
            while True:
                got = readv(fd, [view])
                if not got:
                    break
                hasher.update(view[:got])
                total += got
            info = _stat5(os.fstat(fd)) if want_stat else None
            out.append((relative, (total, hasher.hexdigest(), info, None)))
        except OSError as exc:
            out.append((relative, f"cannot read it ({exc.strerror or exc})"))
        finally:
            os.close(fd)
    return out


def make_batches(items: Sequence[FileItem], workers: int = 1) -> list[list[FileItem]]:
    """Work units: each known-big file alone (biggest first), the rest in runs of consecutive
    items, small enough that every worker gets several."""
    big = [item for item in items if item[2] >= BIG_FILE]
    rest = [item for item in items if item[2] < BIG_FILE] if big else list(items)
    big.sort(key=lambda item: -item[2])
    per_batch = max(1, min(_BATCH_FILES, -(-len(rest) // (workers * 4))))
    batches: list[list[FileItem]] = [[item] for item in big]
    start = 0
    while start < len(rest):
        end = min(start + per_batch, len(rest))
        # Cut early where known sizes add up, so one unit does not hold too many bytes.
        if rest[end - 1][2] > 0:
            total = 0
            for index in range(start, end):
                total += max(rest[index][2], 0)
                if total >= _BATCH_BYTES:
                    end = index + 1
                    break
        batches.append(rest[start:end])
        start = end
    return batches


def split_items(items: Sequence[Any], count: int) -> list[Sequence[Any]]:
    """`count` contiguous shares of `items` (order kept: concatenated results stay sorted)."""
    return [items[i * len(items) // count : (i + 1) * len(items) // count] for i in range(count)]


def fork_map(
    shares: Sequence[Any],
    work: Callable[[Any], Any],
    each: Callable[[Any], None] | None = None,
) -> list[Any] | None:
    """[work(share) for share in shares], the first share in this process and each other in a
    forked child that writes its (marshal-able) result to a file (_result_file). None if fork is
    unavailable or no result file can be had. A share whose child dies (the OOM killer, say)
    or cannot be forked is done here.
    `each(result)` runs in this process as each share's result arrives, in share order.

    Processes, not threads, because the per-file Python work of small files holds the GIL;
    a plain fork, not multiprocessing, because it costs little, needs nothing picklable, and
    works when this module runs from stdin on the box (`python3 - ...`). Fork only from a
    single-threaded process (see hash_files)."""
    if not hasattr(os, "fork"):
        return None
    try:
        files = [_result_file() for _ in shares[1:]]
    except OSError:  # no memory file or temp file to be had: the caller's other path
        return None
    children: list[int | None] = []  # the pid of each share's child; None: no child forked
    try:
        for share, result_fd in zip(shares[1:], files):  # noqa: B905 (python 3.8 on the box)
            try:
                pid = os.fork()
            except OSError:  # no process to be had (EAGAIN, ENOMEM): done here below
                children.append(None)
                continue
            if pid == 0:  # the child: work, write, exit without running any parent cleanup
                status = 0
                try:
                    view = memoryview(marshal.dumps(work(share)))
                    while view:
                        view = view[os.write(result_fd, view) :]
                except BaseException:
                    status = 1
                finally:
                    os._exit(status)
            children.append(pid)
        results = [work(shares[0])]
        if each is not None:
            each(results[0])
        for index, child in enumerate(children):
            result: Any = None
            ok = False
            if child is not None:
                _, status = os.waitpid(child, 0)
                children[index] = None  # reaped
                ok = status == 0
            if ok:
                try:
                    result = marshal.loads(_read_all(files[index]))
                except (ValueError, EOFError, TypeError, OSError):
                    ok = False
            if not ok:
                result = work(shares[index + 1])
            results.append(result)
            if each is not None:
                each(result)
        return results
    finally:
        for result_fd in files:
            with contextlib.suppress(OSError):
                os.close(result_fd)
        for child in children:
            if child is not None:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(child, os.WNOHANG)


def _result_file() -> int:
    """An anonymous file for a forked worker's result: a memory file where Linux has one, else
    an unlinked temp file. Not a pipe: the worker writes its whole result and exits while this
    process is still busy with its own share, where through a pipe it would block every 64 KiB
    until this process got round to reading, and the transfer (megabytes for 50,000 files)
    would run after all the work instead of during it."""
    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("rgt-worker-result", os.MFD_CLOEXEC)
        except OSError:  # a seccomp filter may refuse it: the temp file below
            pass
    import tempfile

    fd, path = tempfile.mkstemp(prefix="rgt-worker-result-")
    os.unlink(path)
    return fd


def _read_all(fd: int) -> bytes:
    """The whole content of a result file written by a worker that has exited."""
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def may_fork(items: Sequence[FileItem], count: int) -> bool:
    """Whether hashing `items` with `count` workers is worth forking processes for."""
    if count < 2 or not hasattr(os, "fork"):
        return False
    small = sum(1 for item in items if item[2] < BIG_FILE)
    return small >= PROCESS_MIN_FILES and only_thread()


def only_thread() -> bool:
    """Whether this process runs no other Python thread. rgt forks only then: forking with other
    threads running (an MCP server, say) can deadlock the child on a lock some thread held."""
    return threading.active_count() == 1


def hash_files(
    items: Sequence[FileItem],
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    want_stat: bool = False,
    inspect: Callable[[str, memoryview], str | None] | None = None,
    processes: bool | None = None,
) -> HashResult:
    """SHA-256 of every (relative, path, size or -1) item, in parallel.

    Returns relative -> (size, sha256 hex, stat or None, note or None), or relative -> error
    string when unreadable. Threads when the bytes dominate (hashlib and reads release the
    GIL); forked processes when many small files dominate (`processes=None` decides: their
    per-file Python work holds the GIL). `progress(bytes_done, bytes_total)` runs in the
    calling thread as work finishes; bytes_total grows as sizes become known."""
    count = max(1, workers or default_workers())
    results: HashResult = {}
    state = {"known": sum(max(item[2], 0) for item in items), "done": 0}
    paths: dict[str, str] = {}

    def collect(batch_results: list[tuple[str, Any]], again: list[list[FileItem]]) -> None:
        for relative, result in batch_results:
            if result == DEFER:
                if not paths:
                    paths.update((item[0], item[1]) for item in items)
                again.append([(relative, paths[relative], BIG_FILE)])
                continue
            results[relative] = result
            if isinstance(result, tuple):
                state["done"] += result[0]
        if progress is not None:
            progress(state["done"], max(state["known"], state["done"]))

    if count > 1 and len(items) > 1:
        if processes is None:
            processes = may_fork(items, count)
        if processes:
            # Workers leave big files (DEFER) to the threads below: split by count, one share
            # could otherwise hold every checkpoint and hash them alone.
            left: list[list[FileItem]] = []
            parts = fork_map(
                split_items(items, count),
                lambda share: hash_batch(share, want_stat, inspect),
                lambda part: collect(part, left),
            )
            if parts is not None:
                if not left:
                    return results
                items = [batch[0] for batch in left]
    batches = make_batches(items, count)
    if count == 1 or len(batches) <= 1:
        while batches:
            collect(hash_batch(batches.pop(), want_stat, inspect), batches)
        return results
    # Imported here: the forked and serial paths (and the box's start-up) do without them.
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="rgt-hash") as pool:
        futures = {pool.submit(hash_batch, batch, want_stat, inspect) for batch in batches}
        while futures:
            finished, futures = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                again: list[list[FileItem]] = []
                collect(future.result(), again)
                futures |= {pool.submit(hash_batch, b, want_stat, inspect) for b in again}
    return results


def utc_text(seconds: float | None = None) -> str:
    """A time (default: now) as the manifest and the verification record write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def check_id(field: str, value: str | None) -> list[str]:
    """Why a run or instance id is unusable (one line), or [] (None is fine: not given)."""
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
    with gc_paused():
        data, _summary = build_manifest_bytes(
            root, run_id, roster, instance_id, workers, skip=skip, progress=progress
        )
    document: dict[str, Any] = json.loads(data)
    return document


def manifest_row(relative: str, digest: str, size: int) -> str:
    """One file's entry as encode_manifest writes it: exactly json.dumps of {"path", "sha256",
    "size"} (keys in order, compact, non-ASCII kept). `rgt verify` builds the same text for the
    files it finds and compares it with the manifest's bytes."""
    return f'{{"path":{_encode_string(relative)},"sha256":"{digest}","size":{size}}}'


def _list_and_hash_forked(
    root: str, names: Sequence[str], skip: Sequence[str], count: int
) -> list[tuple[str, list[str], int, int]] | None:
    """The manifest rows when the roster has directories enough for every worker to list its
    own as well as hash them (the listing of 50,000 files is a fifth of the whole build when
    this process does it alone); None when that does not apply or anything needs reporting
    (the serial listing then names every problem, in its order).

    Big files are not hashed in the workers, which get whole directories (one may hold every
    checkpoint): each worker leaves them to this process, which hashes them with threads."""
    if count < 2 or len(names) < 2 * count or not hasattr(os, "fork"):
        return None
    if not only_thread():
        return None
    skipped = {os.path.abspath(p) for p in skip}
    try:
        top = {entry.name: entry for entry in os.scandir(root)}
    except OSError:
        return None
    for name, entry in top.items():
        if name == MANIFEST_NAME or _is_own_temp(name) or os.path.abspath(entry.path) in skipped:
            continue
        if name not in names or entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
            return None
    if any(name not in top for name in names):
        return None
    # Shares of whole directories in the order of their files' paths ("a.b/" < "a/"), so the
    # workers' rows, joined, are in the manifest's order.
    tops = sorted(names, key=lambda name: name + "/")

    def work(share: Sequence[str]) -> Any:
        items: list[FileItem] = []
        problems: list[str] = []
        for name in share:
            _walk(os.path.join(root, name), name, items, problems, skipped)
        if problems:
            return None
        items.sort()
        return _rows_leaving_big(items)

    return _with_big_rows(fork_map(split_items(tops, count), work), count)


def _rows_leaving_big(items: Sequence[FileItem]) -> Any:
    """A forked worker's part of the manifest: the entries of `items`, hashed here, except the
    big files, left to the parent's threads (placeholders) -- work is split by file count,
    and one share may hold every checkpoint. None at the first problem (the caller then takes
    the path that names it). -> (entries: text, or a list with placeholders; [(index,
    relative, path)] left; bytes; files)."""
    rows: list[str] = []
    left = []
    total = 0
    # (no strict=: this module runs on the box's python3, 3.8 included)
    for (relative, result), item in zip(hash_batch(items), items):  # noqa: B905
        if result == DEFER:
            left.append((len(rows), relative, item[1]))
            rows.append("")
            continue
        if type(result) is str or result[3] is not None:
            return None
        rows.append(manifest_row(relative, result[1], result[0]))
        total += result[0]
    return (rows if left else ",".join(rows)), left, total, len(rows)


def _with_big_rows(
    parts: list[Any] | None, count: int
) -> list[tuple[str, list[str], int, int]] | None:
    """The workers' parts (_rows_leaving_big) completed: the big files they left hashed here
    with `count` threads and their entries put in place. None if a part is missing or any
    file needs reporting."""
    if parts is None or any(part is None for part in parts):
        return None
    big = [(relative, path, BIG_FILE) for part in parts for _, relative, path in part[1]]
    hashed = hash_files(big, workers=count, processes=False) if big else {}
    done: list[tuple[str, list[str], int, int]] = []
    for text, left, total, files in parts:
        for index, relative, _path in left:
            result = hashed.get(relative)
            if type(result) is not tuple or result[3] is not None:
                return None
            text[index] = manifest_row(relative, result[1], result[0])
            total += result[0]
        done.append((text if type(text) is str else ",".join(text), [], total, files))
    return done


def _manifest_rows(results: Iterable[tuple[str, Any]]) -> tuple[str, list[str], int, int]:
    """(the JSON text of the file entries, problems, bytes, files) of hashed results, in order.

    Built as text where the results are (in the hashing processes), so the parent only joins:
    exactly what json.dumps writes for {"path", "sha256", "size"} in encode_manifest."""
    rows: list[str] = []
    problems: list[str] = []
    total = 0
    for relative, result in results:
        if type(result) is str:
            problems.append(f"{relative}: {result}")
            continue
        size, digest, _stat, note = result
        if note is not None:
            problems.append(f"{relative}: {note}; is a writer still running?")
            continue
        rows.append(manifest_row(relative, digest, size))
        total += size
    return ",".join(rows), problems, total, len(rows)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a block (restored after). Tens of thousands of
    small objects made while hashing (result tuples, dicts of a parsed manifest) would
    otherwise trigger full collections that walk all of them again and again; nothing made
    here is cyclic garbage, and reference counting still frees everything else."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_manifest_bytes(
    root: Any,
    run_id: str,
    roster: Sequence[str],
    instance_id: str | None = None,
    workers: int | None = None,
    *,
    skip: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The manifest's bytes as encode_manifest writes them, and the manifest without its file
    list; raises ManifestRefused listing every problem. The hashing processes encode their
    own files' entries (fork_map), so the serial part is the listing and one join.
    `progress(bytes_done, bytes_total)` is called by the threaded path only."""
    root = os.path.abspath(os.fspath(root))
    problems = check_id("run id", run_id or "") + check_id("instance id", instance_id)
    names, roster_problems = _check_roster(roster)
    problems += roster_problems
    if not names and not roster_problems:
        problems.append("roster: empty; name at least one top-level result directory")
    if problems:
        raise ManifestRefused(problems)
    count = max(1, workers or default_workers())
    parts = _list_and_hash_forked(root, names, skip, count)
    if parts is None:
        items, problems = list_tree(root, names, skip=skip)
        if problems:
            raise ManifestRefused(problems)
        if may_fork(items, count):  # (progress is reported by the threaded path only)
            parts = _with_big_rows(fork_map(split_items(items, count), _rows_leaving_big), count)
    if parts is None:  # threads, or one process
        hashed = hash_files(items, workers=count, progress=progress, processes=False)
        parts = [_manifest_rows((item[0], hashed.get(item[0], "was not hashed")) for item in items)]
    problems = [line for part in parts for line in part[1]]
    if problems:
        raise ManifestRefused(problems)
    summary = {
        "schema": SCHEMA,
        "run_id": run_id,
        "instance_id": instance_id,
        "created_at": utc_text(),
        "builder": {
            "name": "rgt.manifest",
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "version": BUILDER_VERSION,
        },
        "hash": "sha256",
        "roster": names,
        "totals": {"bytes": sum(part[2] for part in parts), "files": sum(p[3] for p in parts)},
    }
    text = encode_manifest({**summary, "files": []}).decode("utf-8")
    # The only '"files":[]' outside a string value (quotes inside values are escaped).
    head, _, tail = text.partition('"files":[]')
    body = ",".join(part[0] for part in parts if part[0])
    return (head + '"files":[' + body + "]" + tail).encode("utf-8"), summary


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    """The manifest's bytes as written: UTF-8 JSON, sorted keys, trailing newline."""
    # Compact: with indent, json falls back to its pure-Python encoder (slow for 50k files).
    # Keys in sorted order, but without sort_keys: the file entries are built with their keys
    # already in order ("path" < "sha256" < "size"), which saves a sort per entry.
    ordered = {key: manifest[key] for key in sorted(manifest)}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)
    return (text + "\n").encode("utf-8")


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    # A fresh, exclusive temp name next to the target (what tempfile.mkstemp does, without
    # importing tempfile: start-up counts on the box and for `rgt manifest`).
    tmp = os.path.join(
        directory,
        f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(6).hex()}{IN_FLIGHT_SUFFIX}",
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
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
    return write_manifest_and_describe(
        root, run_id, roster, instance_id, output=output, workers=workers
    )[0]


def write_manifest_and_describe(
    root: Any,
    run_id: str,
    roster: Sequence[str],
    instance_id: str | None = None,
    *,
    output: str | None = None,
    workers: int | None = None,
) -> tuple[str, str, dict[str, Any]]:
    """`write_manifest`, returning (path written, SHA-256 of the bytes written, the manifest
    without its file list) so a caller can report it without reading the file back."""
    root = os.path.abspath(os.fspath(root))
    target = os.path.abspath(output) if output else os.path.join(root, MANIFEST_NAME)
    with gc_paused():
        data, summary = build_manifest_bytes(
            root, run_id, roster, instance_id, workers, skip=[target]
        )
    _atomic_write(target, data)
    return target, hashlib.sha256(data).hexdigest(), summary


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
    parser.add_argument(
        "--workers", type=int, help="hashing workers, threads or processes (default: CPU count)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    args = _parser().parse_args(argv)
    prog = "manifest.py"
    if not os.path.isdir(args.root):
        print(f"{prog}: error: ROOT {args.root} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    bad = check_id("--run-id", args.run_id) + check_id("--instance-id", args.instance_id)
    if args.workers is not None and args.workers < 1:
        bad.append("--workers must be >= 1")
    if bad:  # a bad argument is usage (exit 2), not a refusal of the tree
        print(f"{prog}: error: {bad[0]}", file=sys.stderr)
        return EXIT_USAGE
    try:
        roster = read_roster(args.roster)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    instance_id = args.instance_id or os.environ.get(args.instance_id_env or "", "") or None
    try:
        path, digest, _summary = write_manifest_and_describe(
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
    print(f"{prog}: wrote {path} (sha256 {digest})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
