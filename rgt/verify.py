"""Verify a pull byte for byte against the manifest built on the box, and that checkpoints load.

`verify_pull(local_dir)` reads LOCAL_DIR/PULL_MANIFEST.json (the bytes `rgt pull` copied from the
box) and checks:

1. the manifest itself: schema, run id (and the expected one, if given), an instance id, a
   roster of plain names, file paths that are safe (no traversal, absolute paths, control
   characters, backslashes), no duplicates; when the ledger recorded a pull into this
   directory, the manifest here is that pull's manifest (same SHA-256, same instance);
2. the exact roster: every manifest file is present as a regular file and nothing else is
   there -- no extra file, no symlink, no special file. Excepted, because they are not results:
   the top-level PULL_MANIFEST.json and PULL_VERIFIED.json (and the temp files of their atomic
   writes) and rsync's ``.rsync-partial`` directories (``--partial-dir``; they hold only
   incomplete copies, never files under their final name);
3. sizes and SHA-256 of every file, hashed in parallel across files (``rgt.manifest.hash_files``:
   threads for big files, forked processes for thousands of small ones), with one ``fstat`` per
   file kept as the snapshot `check_unchanged` compares against;
4. every checkpoint loads safely: ``.safetensors`` headers parsed (8-byte little-endian length,
   JSON header, tensor offsets exactly covering the data area as the safetensors library
   requires); ``.pt``/``.pth``/``.ckpt`` through ``torch.load(weights_only=True)`` when torch is
   importable, else their pickles are scanned opcode by opcode WITHOUT executing them; never
   unpickled with code execution unless ``allow_pickle`` (``--allow-pickle``), which is recorded;
   rgt's own ``.ckpt`` format through ``rgt.checkpoint.load``; ``.json``/``.jsonl`` parse.

It writes LOCAL_DIR/PULL_VERIFIED.json atomically (schemas/verification.schema.json) whether it
passed or not, and records a PASSED verification in the ledger, bound to the manifest SHA-256 and
to the SHA-256 of the record it wrote. `check_unchanged(local_dir)` answers later, cheaply,
whether anything changed since (see its docstring for the method, its cost and its blind spots).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Sequence
from json.scanner import make_scanner
from pathlib import Path
from stat import S_ISREG
from typing import Any, NamedTuple

from rgt import __version__
from rgt import manifest as manifest_module
from rgt.atomic import atomic_write_chunks
from rgt.errors import CheckFailed, LocalDiskFull, UsageError, is_disk_full
from rgt.inputfile import InputFileError, read_input_file
from rgt.ledger import Ledger
from rgt.locks import instance_lock
from rgt.manifest import (
    MANIFEST_NAME,
    SMALL_BUFFER,
    hash_files,
    name_problem,
    path_problem,
)
from rgt.manifest import (
    SCHEMA as MANIFEST_SCHEMA,
)

VERIFIED_NAME = "PULL_VERIFIED.json"
RECORD_SCHEMA = "rgt.pull-verified/v1"
# A record's per-file rows are about twice a manifest entry (sha256, size, lstat snapshot).
MAX_RECORD_BYTES = 4 * manifest_module.MAX_MANIFEST_BYTES
VERIFIER_VERSION = f"rgt {__version__} verify/1"
# rsync --partial-dir (rgt.providers.rsync.PARTIAL_DIR): incomplete copies, not results.
PARTIAL_DIR = ".rsync-partial"
SNAPSHOT_METHOD = "lstat (size, mtime_ns, ctime_ns, inode, device) of every file + tree listing"
# A file whose ctime is this close to (or after) the snapshot may have been rewritten within one
# filesystem timestamp tick of the final stat ("racily clean", as git calls it): re-hash it.
RACY_NS = 100_000_000
# safetensors caps the header at 100 MB; so do we (a bigger one is not a real header).
SAFETENSORS_MAX_HEADER = 100_000_000
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
CHECKPOINT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
JSON_SUFFIXES = (".json", ".jsonl")
# Globals a torch checkpoint pickle may name for the no-torch scan (what weights_only allows).
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._utils", "_rebuild_sparse_tensor"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "device"),
    ("torch", "dtype"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "slice"),
    ("builtins", "complex"),
}

ProgressFn = Callable[[int, int], None]
_HEX64 = re.compile("[0-9a-f]{64}")
_JSON = json.JSONDecoder()


class VerificationFailed(CheckFailed):
    """The pull does not match its manifest; `problems` has one line per problem."""

    def __init__(self, problems: Sequence[str], record: dict[str, Any] | None = None) -> None:
        self.problems = list(problems)
        self.record = record
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(self.problems[0] + more)


def _stat_key(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev]


def _encode(record: dict[str, Any]) -> bytes:
    # Compact: json's indent mode uses its pure-Python encoder, slow for 50k files.
    # Top-level keys sorted; per-file rows keep their build order (sorting 50k rows' keys is
    # measurable, and the record's bytes are what the ledger binds to, whatever their order).
    ordered = {key: record[key] for key in sorted(record)}
    return (json.dumps(ordered, separators=(",", ":")) + "\n").encode()


# -- the manifest ------------------------------------------------------------------------------


def _read_manifest(local_dir: Path) -> bytes:
    path = local_dir / MANIFEST_NAME
    if path.is_symlink():
        raise CheckFailed(f"{path}: is a symlink; the pulled manifest must be a regular file")
    if not path.exists():
        raise CheckFailed(
            f"{path}: missing; pull first (`rgt pull INSTANCE REMOTE_ROOT {local_dir}`)"
        )
    # Bounded like the read off the box: a regular file of at most MAX_MANIFEST_BYTES (a FIFO
    # put here would block a plain read; /dev/zero linked in would never end).
    try:
        return read_input_file(path, max_bytes=manifest_module.MAX_MANIFEST_BYTES)
    except InputFileError as exc:
        raise CheckFailed(f"{path}: {exc.reason}") from None


def _parse_manifest(local_dir: Path, data: bytes) -> dict[str, Any]:
    path = local_dir / MANIFEST_NAME
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CheckFailed(f"{path}: not JSON ({_json_error(exc)})") from None
    if not isinstance(document, dict):
        raise CheckFailed(f"{path}: top level must be an object")
    return document


class _Canonical(NamedTuple):
    """A manifest as rgt's encoder writes it, split around its file list without parsing the
    list: `fields` is the document with "files": [], and data[start:end] the list's entries."""

    fields: dict[str, Any]
    start: int
    end: int


def _split_canonical(data: bytes) -> _Canonical | None:
    """The manifest's fields and where its entries lie, if `data` is exactly what
    rgt.manifest.encode_manifest writes (compact, keys sorted, "files" followed by "hash");
    else None. Parsing the fields alone skips building 50,000 dictionaries: the fast path
    proves the entries by comparing their bytes with the ones it builds from the files.

    Sound because: `data` = `small` with the entries' bytes inserted at the one place
    `"files":[]` occurs in `small`, `small` parses to `fields` and re-encodes to itself, and
    `fields["files"]` is that empty list; so data parses to `fields` with "files" = the
    entries."""
    start = data.find(b'"files":[')
    end = data.find(b'],"hash":', start)
    if start < 0 or end < 0:
        return None
    small = data[:start] + b'"files":[]' + data[end + 1 :]
    try:
        fields = json.loads(small)
    except (ValueError, RecursionError):
        return None
    if (
        type(fields) is not dict
        or fields.get("files") != []
        or small.count(b'"files":[]') != 1
        or manifest_module.encode_manifest(fields) != small
    ):
        return None
    return _Canonical(fields, start + len(b'"files":['), end)


def _manifest_problems(
    document: dict[str, Any],
    expected_run_id: str | None,
    expected_instance_id: str | None,
    *,
    entries: bool = True,
) -> list[str]:
    """What is wrong with the manifest document; without `entries`, only its fields, not each
    file entry (the fast path proves the entries by matching them with the files)."""
    where = MANIFEST_NAME
    problems: list[str] = []
    if document.get("schema") != MANIFEST_SCHEMA:
        problems.append(
            f"{where}: field schema is {document.get('schema')!r}; allowed: {MANIFEST_SCHEMA!r}"
        )
    run_id = document.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        problems.append(f"{where}: field run_id {run_id!r} must be a non-empty string")
    elif expected_run_id is not None and run_id != expected_run_id:
        problems.append(f"{where}: run id {run_id!r}, expected run {expected_run_id!r}")
    instance_id = document.get("instance_id")
    if instance_id is None or str(instance_id) == "":
        problems.append(
            f"{where}: field instance_id is missing; the manifest must be built on the box with "
            "--instance-id (or $CONTAINER_ID)"
        )
    elif expected_instance_id is not None and str(instance_id) != str(expected_instance_id):
        problems.append(
            f"{where}: manifest of instance {instance_id!r}, expected instance "
            f"{expected_instance_id!r}"
        )
    roster = document.get("roster")
    if not isinstance(roster, list) or not roster:
        problems.append(f"{where}: field roster must be a non-empty list of directory names")
        roster = []
    for name in roster:
        reason = name_problem(name) if isinstance(name, str) else "is not a string"
        if reason is not None:
            problems.append(f"{where}: roster entry {name!r} {reason}")
    if len(set(map(str, roster))) != len(roster):
        problems.append(f"{where}: roster lists a directory twice")
    files = document.get("files")
    if not isinstance(files, list):
        return [*problems, f"{where}: field files must be a list"]
    if not entries:
        return problems
    seen: set[str] = set()
    tops = {f"{name}/" for name in roster if isinstance(name, str)}
    for index, entry in enumerate(files):
        # Fast path first (one regex per path, C-level checks); the slow path names the fault.
        if type(entry) is dict:
            relative, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
            if (
                type(relative) is str
                and type(size) is int
                and size >= 0
                and type(digest) is str
                and _HEX64.fullmatch(digest) is not None
                and path_problem(relative) is None
                and relative[: relative.find("/") + 1] in tops
                and relative not in seen
            ):
                seen.add(relative)
                continue
        problems += _entry_problems(f"{where}: files[{index}]", entry, tops, seen)
    return problems


def _entry_problems(label: str, entry: Any, tops: set[str], seen: set[str]) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{label} is not an object"]
    relative = entry.get("path")
    if not isinstance(relative, str):
        return [f"{label}: path {relative!r} is not a string"]
    reason = path_problem(relative)
    if reason is not None:
        return [f"{label}: path {relative!r} {reason}"]
    problems = []
    if relative[: relative.find("/") + 1] not in tops:
        problems.append(f"{label}: path {relative!r} is not inside a roster directory")
    if relative in seen:
        problems.append(f"{label}: path {relative!r} is listed twice")
    seen.add(relative)
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append(f"{label}: size {size!r} must be a whole number >= 0")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or _HEX64.fullmatch(digest) is None:
        problems.append(f"{label}: sha256 {digest!r} must be 64 lowercase hex digits")
    return problems


def _pull_problems(
    ledger: Ledger, local_dir: Path, manifest_sha256: str, document: dict[str, Any]
) -> list[str]:
    """If the ledger recorded a pull into this directory, the manifest here must be its one."""
    pulls = [p for p in ledger.pulls() if p.local_dir == str(local_dir)]
    if not pulls:
        return []
    pull = pulls[-1]
    problems = []
    if str(document.get("instance_id")) != pull.instance_id:
        problems.append(
            f"{MANIFEST_NAME}: manifest of instance {document.get('instance_id')!r}, but this "
            f"directory was pulled from instance {pull.instance_id!r} (ledger pull #{pull.id})"
        )
    if pull.manifest_sha256 != manifest_sha256:
        problems.append(
            f"{MANIFEST_NAME}: sha256 {manifest_sha256[:12]}… is not the manifest pulled into "
            f"this directory (ledger pull #{pull.id}: {pull.manifest_sha256[:12]}…); pull again"
        )
    return problems


# -- the local tree ----------------------------------------------------------------------------


def _is_own_top_level(name: str) -> bool:
    if name in (MANIFEST_NAME, VERIFIED_NAME):
        return True
    return name.endswith(".tmp") and (
        name.startswith(f".{MANIFEST_NAME}.") or name.startswith(f".{VERIFIED_NAME}.")
    )


def list_local(
    local_dir: Path, *, with_stat: bool = False
) -> tuple[dict[str, os.stat_result | None], list[str]]:
    """Every regular file under `local_dir` (relative POSIX path -> lstat, or None without
    `with_stat`: the entry types then come from the directory listing, no stat per file), and
    the entries that are not plain files or directories (symlinks, specials, unsafe names) as
    problems. Skips the top-level manifest/record (and their temp files) and rsync partial
    dirs."""
    found: dict[str, os.stat_result | None] = {}
    problems: list[str] = []
    stack: list[tuple[str, str]] = [(str(local_dir), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            problems.append(f"{prefix or '.'}: cannot list it ({exc.strerror or exc})")
            continue
        for entry in entries:
            name = entry.name
            relative = prefix + name
            if not prefix and _is_own_top_level(name):
                continue
            reason = name_problem(name)
            if reason is not None:
                problems.append(f"{relative!r}: unsafe name, {reason}")
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    found[relative] = entry.stat(follow_symlinks=False) if with_stat else None
                elif entry.is_symlink():
                    problems.append(
                        f"{relative}: is a symlink; a pulled result must be a real file"
                    )
                elif entry.is_dir(follow_symlinks=False):
                    if name != PARTIAL_DIR:
                        stack.append((entry.path, relative + "/"))
                else:
                    problems.append(f"{relative}: is not a regular file (fifo, socket or device)")
            except OSError as exc:
                problems.append(f"{relative}: cannot stat it ({exc.strerror or exc})")
    return found, problems


# -- hashing -----------------------------------------------------------------------------------


def json_problem(relative: str, data: bytes | memoryview) -> str | None:
    """Why a .json/.jsonl file's bytes do not parse (None if they do or it is not JSON)."""
    if not relative.endswith(JSON_SUFFIXES):
        return None
    try:
        if relative.endswith(".jsonl"):
            for number, line in enumerate(bytes(data).splitlines(), 1):
                if line.strip():
                    try:
                        json.loads(line.decode("utf-8"))
                    except (ValueError, RecursionError) as exc:
                        return f"not valid JSON (line {number}: {_json_error(exc)})"
        else:
            # UTF-8 only (RFC 8259); decoding first skips json's encoding detection.
            _JSON.decode(str(data, "utf-8"))
    except (ValueError, RecursionError) as exc:
        return f"not valid JSON ({_json_error(exc)})"
    return None


def _json_error(exc: Exception) -> str:
    # json's C scanner recurses once per nesting level: a hostile file of 100,000 '[' raises
    # RecursionError, which is a verdict on the file, not a crash of rgt.
    return "nested too deeply to parse" if isinstance(exc, RecursionError) else str(exc)


_WHITESPACE = " \t\n\r"  # JSON's insignificant whitespace (RFC 8259)
# The C scanner json.loads runs underneath (typeshed types its argument as the scanner itself).
_SCAN_VALUE: Callable[[str, int], tuple[Any, int]] = make_scanner(_JSON)  # type: ignore[arg-type]


def _json_unparsable(relative: str, data: bytes | memoryview) -> str | None:
    """json_problem's verdict without its message, for the fast path (which only needs to know
    whether to hand over to the general path): a non-None answer means "not valid JSON".
    Calls the C scanner directly on the buffer decoded in place -- json.loads' Python layers
    cost more than the parse itself for a 100-byte file."""
    if not relative.endswith(JSON_SUFFIXES):
        return None
    if relative.endswith(".jsonl"):
        return json_problem(relative, data)
    try:
        text = str(data, "utf-8")
        start = len(text) - len(text.lstrip(_WHITESPACE))
        _value, end = _SCAN_VALUE(text, start)
    except (ValueError, StopIteration, RecursionError):
        return "not valid JSON"
    if end != len(text) and text[end:].strip(_WHITESPACE):
        return "not valid JSON"
    return None


# -- checkpoints -------------------------------------------------------------------------------


class _LoadProblem(Exception):
    """A checkpoint did not load safely."""


def check_safetensors(path: Path, size: int) -> str:
    """Parse a .safetensors header the way the safetensors library validates it, without
    loading tensors; returns a short description or raises _LoadProblem."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _LoadProblem("shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > SAFETENSORS_MAX_HEADER or 8 + length > size:
            raise _LoadProblem(f"header length {length} does not fit the file ({size} bytes)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise _LoadProblem(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _LoadProblem("header is not a JSON object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise _LoadProblem("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict):
            raise _LoadProblem(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPE_BYTES:
            raise _LoadProblem(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _LoadProblem(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _LoadProblem(f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
        elements = 1
        for dim in shape:
            elements *= dim
        if elements * _DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise _LoadProblem(
                f"tensor {name!r}: {dtype}{shape} needs {elements * _DTYPE_BYTES[dtype]} bytes, "
                f"data_offsets span {offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise _LoadProblem(f"tensor {name!r}: data_offsets start at {begin}, not {position}")
        position = end
    data_bytes = size - 8 - length
    if position != data_bytes:
        raise _LoadProblem(
            f"tensors cover {position} bytes of data, the file has {data_bytes} after the header"
        )
    return f"safetensors header parsed: {len(spans)} tensors, offsets cover the data exactly"


def _torch_module() -> Any | None:
    import warnings  # (the checkpoint modules are imported where used: `rgt verify` of a
    # pull without checkpoints starts faster without zipfile, pickle and pickletools)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch
    except ImportError:
        return None
    return torch


def check_torch(path: Path, allow_pickle: bool) -> str:
    """Load a torch checkpoint safely (weights_only) or, without torch, scan its pickles
    without executing them; with `allow_pickle`, fall back to a full unpickle (runs code)."""
    import pickle
    import warnings

    torch = _torch_module()
    if torch is None:
        if allow_pickle:
            raise _LoadProblem(
                "torch is not installed here, so it cannot be loaded even with --allow-pickle"
            )
        return scan_torch_pickles(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _torch_load(torch, path, weights_only=True)
            return "torch.load(weights_only=True)"
        except Exception as exc:
            restricted = isinstance(exc, pickle.UnpicklingError)
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc)
            if not restricted:
                raise _LoadProblem(f"torch.load(weights_only=True) failed: {first}") from None
            if not allow_pickle:
                raise _LoadProblem(
                    "refused to unpickle: it holds objects outside torch's weights-only "
                    f"allow-list ({first}); if you trust the box, rerun with --allow-pickle "
                    "(that runs code from the file)"
                ) from None
        try:
            _torch_load(torch, path, weights_only=False)
        except Exception as exc:
            raise _LoadProblem(f"torch.load(weights_only=False) failed: {exc}") from None
    return "torch.load(weights_only=False) --allow-pickle"


def _torch_load(torch: Any, path: Path, *, weights_only: bool) -> None:
    try:
        torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        torch.load(path, map_location="cpu", weights_only=weights_only)  # legacy format


def scan_torch_pickles(path: Path) -> str:
    """Without torch: every pickle in a zip-format torch file is walked opcode by opcode
    (pickletools, nothing executed) and may name only the globals a weights-only load allows."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise _LoadProblem(
            "not a zip-format torch file and torch is not installed: cannot check it without "
            "unpickling; install torch to verify it"
        )
    with zipfile.ZipFile(path) as archive:
        members = [n for n in archive.namelist() if n.endswith(".pkl")]
        if not members:
            raise _LoadProblem("zip holds no .pkl member: not a torch checkpoint")
        for member in members:
            for module, name in _pickle_globals(archive.read(member)):
                if (module, name) not in _SAFE_GLOBALS and not (
                    module == "torch" and name.endswith("Storage")
                ):
                    raise _LoadProblem(
                        f"{member} names {module}.{name}, outside the weights-only allow-list; "
                        "refused (nothing was unpickled)"
                    )
    return "pickle opcodes scanned, not executed (torch not installed)"


def _pickle_globals(data: bytes) -> list[tuple[str, str]]:
    import io
    import pickletools

    names: list[tuple[str, str]] = []
    strings: list[str] = []  # recent string pushes (STACK_GLOBAL takes the last two)
    memo: dict[int, str] = {}
    memoized = 0  # MEMOIZE numbers every memoized object, strings or not
    last: Any = None
    try:
        for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
            op = opcode.name
            if op in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                names.append((module, name))
            elif op == "STACK_GLOBAL":
                if len(strings) < 2:
                    raise _LoadProblem("pickle uses a global whose name cannot be resolved")
                names.append((strings[-2], strings[-1]))
            elif op in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(str(arg))
                last = str(arg)
                continue
            elif op in ("BINPUT", "LONG_BINPUT", "PUT") and isinstance(last, str):
                memo[int(str(arg))] = last
            elif op == "MEMOIZE":
                if isinstance(last, str):
                    memo[memoized] = last
                memoized += 1
            elif op in ("BINGET", "LONG_BINGET", "GET"):
                value = memo.get(int(str(arg)))
                if value is not None:
                    strings.append(value)
                    last = value
                    continue
            if op not in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                last = None
    except ValueError as exc:
        raise _LoadProblem(f"malformed pickle ({exc})") from None
    return names


def check_rgt_checkpoint(path: Path) -> str:
    """rgt's own checkpoint format (stdlib, no pickle): decoded and its trailer checked."""
    from rgt.checkpoint import CheckpointError, load

    try:
        checkpoint = load(path)
    except CheckpointError as exc:
        raise _LoadProblem(str(exc)) from None
    return f"rgt.checkpoint.load (step {getattr(checkpoint, 'step', '?')})"


def _load_check(path: Path, relative: str, size: int, allow_pickle: bool) -> str | None:
    """How the file was checked as a checkpoint (None: not a checkpoint); raises _LoadProblem."""
    if relative.endswith(".safetensors"):
        return check_safetensors(path, size)
    if relative.endswith(".ckpt"):
        with open(path, "rb") as handle:
            if handle.read(9) == b"RGTCKPT1\n":
                return check_rgt_checkpoint(path)
    if relative.endswith(TORCH_SUFFIXES):
        return check_torch(path, allow_pickle)
    return None


# -- the verification --------------------------------------------------------------------------


def verify_pull(
    local_dir: Path,
    *,
    allow_pickle: bool = False,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    expected_run_id: str | None = None,
    expected_instance_id: str | None = None,
    ledger: Ledger | None = None,
    keep_rows: bool = True,
) -> dict[str, Any]:
    """Verify LOCAL_DIR against its PULL_MANIFEST.json; write PULL_VERIFIED.json; on success
    record the verification in the ledger. Returns the record; without `keep_rows`, without its
    per-file "files" rows (they are in PULL_VERIFIED.json; parsing them back for 50,000 files
    costs more than a third of the whole verification, so `rgt verify` does without).

    Raises VerificationFailed (a CheckFailed, exit 1) listing every problem; the record written
    then says ok: false and nothing is recorded in the ledger."""
    with manifest_module.gc_paused():
        return _verify_pull(
            local_dir,
            allow_pickle=allow_pickle,
            workers=workers,
            progress=progress,
            expected_run_id=expected_run_id,
            expected_instance_id=expected_instance_id,
            ledger=ledger,
            keep_rows=keep_rows,
        )


def _verify_pull(
    local_dir: Path,
    *,
    allow_pickle: bool,
    workers: int | None,
    progress: ProgressFn | None,
    expected_run_id: str | None,
    expected_instance_id: str | None,
    ledger: Ledger | None,
    keep_rows: bool,
) -> dict[str, Any]:
    started = time.time()
    clock = time.monotonic()
    local_dir = Path(local_dir).resolve()
    if not local_dir.is_dir():
        raise CheckFailed(f"LOCAL_DIR {local_dir}: not a directory")
    manifest_bytes = _read_manifest(local_dir)
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    canonical = _split_canonical(manifest_bytes)
    # The whole parse (every file entry a dictionary) only where the fast path cannot vouch.
    document = _parse_manifest(local_dir, manifest_bytes) if canonical is None else None
    own_ledger = ledger is None
    book = Ledger.open() if ledger is None else ledger
    try:
        # Fields first; the fast path proves the file entries by matching them with the files,
        # and when it does not apply (or finds anything amiss) every entry is checked here.
        fields = canonical.fields if canonical is not None else document
        assert fields is not None
        problems = _manifest_problems(fields, expected_run_id, expected_instance_id, entries=False)
        fast = None
        if (
            canonical is not None
            and not problems
            and not _pull_problems(book, local_dir, manifest_sha256, fields)
        ):
            fast = _verify_fast(
                local_dir,
                canonical,
                manifest_bytes,
                manifest_sha256,
                allow_pickle,
                workers,
                progress,
                keep_rows,
            )
        if fast is None:
            if document is None:
                document = _parse_manifest(local_dir, manifest_bytes)
            fields = document
            problems = _manifest_problems(document, expected_run_id, expected_instance_id)
        if problems:
            # Replace any earlier passing record: a stale "ok" must not outlive this failure.
            failed = {
                "schema": RECORD_SCHEMA,
                "ok": False,
                "problems": problems,
                "manifest_sha256": manifest_sha256,
                "local_dir": str(local_dir),
                "verifier": {"name": "rgt.verify", "version": VERIFIER_VERSION},
                "verified_at": manifest_module.utc_text(time.time()),
            }
            _write_record(
                local_dir / VERIFIED_NAME, [(json.dumps(failed, indent=1) + "\n").encode()]
            )
            raise VerificationFailed(problems, failed)
        if fast is not None:
            record, rows = fast
            record["started_at"] = manifest_module.utc_text(started)
            record["seconds"] = round(time.monotonic() - clock, 3)
            chunks = _encode_with_rows(record, rows)
        else:  # the general path; it also names every problem
            assert document is not None
            problems += _pull_problems(book, local_dir, manifest_sha256, document)
            record = _verify_tree(
                local_dir, document, manifest_sha256, problems, allow_pickle, workers, progress
            )
            record["started_at"] = manifest_module.utc_text(started)
            record["seconds"] = round(time.monotonic() - clock, 3)
            chunks = [_encode(record)]
            if not keep_rows:
                del record["files"]
        _write_record(local_dir / VERIFIED_NAME, chunks)
        if problems:
            raise VerificationFailed(problems, record)
        record_hash = hashlib.sha256()
        for chunk in chunks:
            record_hash.update(chunk)
        # Under the instance's lock: never recorded while a pull of it is rewriting the files or
        # a destroy of it is under way (rgt.locks).
        with instance_lock(str(fields["instance_id"]), "verification"):
            book.record_verification(
                str(fields["instance_id"]),
                local_dir=local_dir,
                manifest_sha256=manifest_sha256,
                run_id=str(fields["run_id"]),
                record_sha256=record_hash.hexdigest(),
                allow_pickle=allow_pickle,
                detail={
                    "files": record["totals"]["files"],
                    "bytes": record["totals"]["bytes"],
                    "checkpoints": [c["path"] for c in record["checkpoints"]],
                    "verifier": VERIFIER_VERSION,
                },
            )
    finally:
        if own_ledger:
            book.close()
    return record


def _write_record(path: Path, chunks: Sequence[bytes]) -> None:
    """Write PULL_VERIFIED.json atomically; a disk that cannot take it is the user's to fix
    (exit 2 naming the path), not a bug: nothing is recorded, the old record stays whole."""
    try:
        atomic_write_chunks(path, chunks)
    except OSError as exc:
        if is_disk_full(exc):
            raise LocalDiskFull(
                f"{path}: no space left on device writing the verification record; make room "
                "there and run `rgt verify` again (nothing was recorded)"
            ) from None
        raise UsageError(f"{path}: cannot write the verification record: {exc.strerror}") from None


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What `rgt verify --json` prints and the MCP `verify` tool returns: the record without
    its per-file rows and snapshot (50,000 rows do not belong in a terminal or an agent's
    context), plus where the whole record is."""
    short = {key: value for key, value in record.items() if key not in ("files", "snapshot")}
    short["record"] = str(Path(record["local_dir"]) / VERIFIED_NAME)
    return short


def _record(
    local_dir: Path,
    document: dict[str, Any],
    manifest_sha256: str,
    problems: list[str],
    allow_pickle: bool,
    roster: list[str],
    files: list[dict[str, Any]],
    checkpoints: list[dict[str, Any]],
    totals: dict[str, int],
) -> dict[str, Any]:
    return {
        "schema": RECORD_SCHEMA,
        "ok": not problems,
        "problems": problems,
        "run_id": document.get("run_id"),
        "instance_id": None
        if document.get("instance_id") is None
        else str(document["instance_id"]),
        "manifest_sha256": manifest_sha256,
        "local_dir": str(local_dir),
        "allow_pickle": allow_pickle,
        "verifier": {"name": "rgt.verify", "version": VERIFIER_VERSION},
        "verified_at": manifest_module.utc_text(time.time()),
        "roster": roster,
        "totals": totals,
        "files": files,
        "checkpoints": checkpoints,
        "snapshot": {"method": SNAPSHOT_METHOD, "taken_ns": time.time_ns()},
    }


def _encode_with_rows(record: dict[str, Any], rows: Sequence[bytes]) -> list[bytes]:
    """_encode(record) as chunks, its "files" list being the rows' parts (JSON text built by
    the workers, each a run of comma-separated rows), without joining megabytes."""
    text = _encode({**record, "files": []})
    # The only '"files":[]' outside a string value (quotes inside values are escaped).
    head, _, tail = text.partition(b'"files":[]')
    chunks = [head + b'"files":[']
    for part in rows:
        if part:
            if len(chunks) > 1:
                chunks.append(b",")
            chunks.append(part)
    chunks.append(b"]" + tail)
    return chunks


def _clean_tree(local_dir: Path, roster: list[str]) -> list[str] | None:
    """The roster directories in their files' path order ("name/"), if the top of `local_dir`
    holds exactly them as real directories besides rgt's own files; else None."""
    try:
        top = list(os.scandir(local_dir))
    except OSError:
        return None
    names = []
    wanted = set(roster)
    for entry in top:
        name = entry.name
        if _is_own_top_level(name):
            continue
        if name not in wanted and name != PARTIAL_DIR:
            return None
        if not entry.is_dir(follow_symlinks=False):
            return None
        if name != PARTIAL_DIR:
            names.append(name)
    if len(names) != len(wanted):
        return None
    return sorted(names, key=lambda name: name + "/")


def _list_clean(local_dir: Path, names: Sequence[str]) -> list[tuple[str, str, int]] | None:
    """Every file under the named directories, sorted; None at the first entry list_local
    would report (unsafe name, symlink, special file, unreadable directory)."""
    items: list[tuple[str, str, int]] = []
    stack = [(os.path.join(local_dir, name), name + "/") for name in names]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return None
        for entry in entries:
            name = entry.name
            if name_problem(name) is not None:
                return None
            try:
                if entry.is_file(follow_symlinks=False):
                    items.append((prefix + name, entry.path, -1))
                elif entry.is_dir(follow_symlinks=False):
                    if name != PARTIAL_DIR:
                        stack.append((entry.path, prefix + name + "/"))
                else:
                    return None
            except OSError:
                return None
    items.sort()
    return items


def _verify_fast(
    local_dir: Path,
    canonical: _Canonical,
    manifest_bytes: bytes,
    manifest_sha256: str,
    allow_pickle: bool,
    workers: int | None,
    progress: ProgressFn | None,
    keep_rows: bool = True,
) -> tuple[dict[str, Any], list[bytes]] | None:
    """The verification of a clean pull of many small files, per-file work in forked workers:
    each lists (when there are enough roster directories), hashes, parses JSON, takes the
    snapshot stat, and writes its files' manifest entries and record rows as JSON text.

    The files match the manifest when the manifest's entries are, byte for byte, the entries
    rgt's encoder writes for those files (see _split_canonical): one comparison of bytes
    instead of parsing 50,000 entries and looking each one up.

    Returns (record without its rows, the rows' JSON text in parts), or None at the first
    thing that is not a match -- or when forking does not pay or is unsafe (threads): the
    general path (_verify_tree) then runs and names every problem. A match here implies the
    general path finds none: every file listed has a safe name inside a roster directory, and
    the manifest's entries are exactly those files with their sizes and SHA-256, in order,
    nothing left over."""
    document = canonical.fields
    # How many entries (each begins so, and the text cannot occur inside a JSON string): only
    # to decide whether forking pays; what proves the entries is the comparison below.
    entry_count = manifest_bytes.count(b'{"path":', canonical.start, canonical.end)
    count = max(1, workers or manifest_module.default_workers())
    if count < 2 or entry_count < manifest_module.PROCESS_MIN_FILES:
        return None
    if threading.active_count() != 1 or not hasattr(os, "fork"):
        return None
    roster = [str(name) for name in document["roster"]]
    tops = _clean_tree(local_dir, roster)
    if tops is None:
        return None
    encode = json.encoder.encode_basestring_ascii  # what json.dumps uses (ensure_ascii)
    manifest_row = manifest_module.manifest_row

    def check(items: Sequence[tuple[str, str, int]] | None) -> Any:
        # -> (manifest entries, record rows, [rows the parent completes], bytes, files) or
        # None. Entries and rows are joined text, or lists with placeholders where the parent
        # completes a row: a checkpoint to load (its hash result attached) or a big file left
        # to the parent's threads (None attached): shares are split by file count, and one
        # share may hold every checkpoint.
        if items is None:
            return None
        results = manifest_module.hash_batch(items, True, _json_unparsable)
        entries: list[str] = []
        rows: list[str] = []
        pending: list[Any] = []
        total = 0
        for (relative, result), (_, path, _) in zip(results, items, strict=True):
            if result == manifest_module.DEFER:
                pending.append((len(rows), relative, path, None))
                entries.append("")
                rows.append("")
                continue
            if type(result) is not tuple:
                return None
            size, digest, stat, note = result
            if note is not None:
                return None
            entries.append(manifest_row(relative, digest, size))
            total += size
            if relative.endswith(JSON_SUFFIXES):
                if size >= SMALL_BUFFER and _big_json_problem(relative, path):
                    return None
                load = ',"load":"json parsed"'
            elif relative.endswith(CHECKPOINT_SUFFIXES):
                pending.append((len(rows), relative, path, (size, digest, stat)))
                rows.append("")
                continue
            else:
                load = ""
            rows.append(
                f'{{"path":{encode(relative)},"size":{size},"sha256":"{digest}","ok":true,'
                f'"stat":[{stat[0]},{stat[1]},{stat[2]},{stat[3]},{stat[4]}]{load}}}'
            )
        if pending:
            return entries, rows, pending, total, len(items)
        # Joined and encoded here, in parallel, when the parent has nothing to fill in.
        return ",".join(entries).encode("utf-8"), ",".join(rows).encode(), [], total, len(items)

    done = [0]
    totals = document.get("totals")
    grand = totals.get("bytes") if isinstance(totals, dict) else None
    grand = grand if type(grand) is int else 0  # (only for the progress bar)

    def each(part: Any) -> None:
        if part is not None and progress is not None:
            done[0] += part[3]
            progress(done[0], max(grand, done[0]))

    if len(tops) >= 2 * count:  # each worker lists its own directories too
        parts = manifest_module.fork_map(
            manifest_module.split_items(tops, count),
            lambda names: check(_list_clean(local_dir, names)),
            each,
        )
    else:
        items = _list_clean(local_dir, tops)
        if items is None or len(items) != entry_count:
            return None
        parts = manifest_module.fork_map(manifest_module.split_items(items, count), check, each)
    if parts is None or any(part is None for part in parts):
        return None
    completed = _complete_rows(parts, count, allow_pickle)
    if completed is None:
        return None
    entry_texts, texts, checkpoints, total = completed
    if not _entries_match(manifest_bytes, canonical, entry_texts):
        return None
    files = sum(part[4] for part in parts)
    record = _record(
        local_dir,
        document,
        manifest_sha256,
        [],
        allow_pickle,
        roster,
        json.loads(b"[" + b",".join(text for text in texts if text) + b"]") if keep_rows else [],
        checkpoints,
        {"files": files, "bytes": total},
    )
    if not keep_rows:
        del record["files"]
    return record, texts


def _complete_rows(
    parts: Sequence[Any], count: int, allow_pickle: bool
) -> tuple[list[bytes], list[bytes], list[dict[str, Any]], int] | None:
    """The workers' parts (see _verify_fast.check) completed here: the big files they left
    hashed with `count` threads, the checkpoints loaded; -> (entries, record rows, checkpoint
    rows, bytes), or None at the first thing the general path must name."""
    left = [
        (p[1], p[2], manifest_module.BIG_FILE) for part in parts for p in part[2] if p[3] is None
    ]
    hashed = (
        manifest_module.hash_files(left, workers=count, want_stat=True, processes=False)
        if left
        else {}
    )
    entry_texts: list[bytes] = []
    texts: list[bytes] = []
    checkpoints: list[dict[str, Any]] = []
    total = 0
    for entries, rows, pending, part_bytes, _files in parts:
        total += part_bytes
        if not pending:
            entry_texts.append(entries)
            texts.append(rows)
            continue
        for index, relative, path, got in pending:
            if got is None:  # a big file, hashed just now
                result = hashed.get(relative)
                if type(result) is not tuple or result[3] is not None:
                    return None
                got = result[:3]
                entries[index] = manifest_module.manifest_row(relative, got[1], got[0])
                total += got[0]
            size, digest, stat = got
            row: dict[str, Any] = {"path": relative, "size": size, "sha256": digest, "ok": True}
            row["stat"] = list(stat)
            if relative.endswith(JSON_SUFFIXES):
                if size >= SMALL_BUFFER and _big_json_problem(relative, path):
                    return None
                row["load"] = "json parsed"
            elif relative.endswith(CHECKPOINT_SUFFIXES):
                try:
                    method = _load_check(Path(path), relative, size, allow_pickle)
                except (_LoadProblem, OSError):
                    return None
                if method is not None:
                    row["load"] = method
                    checkpoints.append({"path": relative, "ok": True, "method": method})
            rows[index] = json.dumps(row, separators=(",", ":"))
        entry_texts.append(",".join(entries).encode("utf-8"))
        texts.append(",".join(rows).encode())
    return entry_texts, texts, checkpoints, total


def _entries_match(data: bytes, canonical: _Canonical, entries: Sequence[bytes]) -> bool:
    """Whether data[canonical.start:canonical.end] is the entries joined with commas (compared
    in place, part by part: no copy of megabytes)."""
    position = canonical.start
    first = True
    for part in entries:
        if not part:
            continue
        if not first:
            if data[position : position + 1] != b",":
                return False
            position += 1
        if not data.startswith(part, position):
            return False
        position += len(part)
        first = False
    return position == canonical.end


def _big_json_problem(relative: str, path: str) -> str | None:
    try:
        return json_problem(relative, Path(path).read_bytes())
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"


def _verify_tree(
    local_dir: Path,
    document: dict[str, Any],
    manifest_sha256: str,
    problems: list[str],
    allow_pickle: bool,
    workers: int | None,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    expected = {entry["path"]: entry for entry in document["files"]}
    roster = [str(name) for name in document["roster"]]
    found, tree_problems = list_local(local_dir)
    problems += tree_problems
    for name in roster:
        if not (local_dir / name).is_dir() or (local_dir / name).is_symlink():
            problems.append(f"{name}/: roster directory missing (or not a directory)")
    for relative in sorted(set(found) - set(expected)):
        top = relative.split("/", 1)[0]
        where = "outside the roster" if "/" not in relative or top not in roster else "extra"
        problems.append(f"{relative}: {where} file, not in the manifest")
    items: list[tuple[str, str, int]] = []
    base = f"{local_dir}{os.sep}"
    for relative, entry in sorted(expected.items()):
        if relative in found:
            items.append((relative, base + relative, int(entry["size"])))
        else:
            problems.append(f"{relative}: missing (the manifest lists {entry['size']} bytes)")
    hashed = hash_files(
        items, workers=workers, progress=progress, want_stat=True, inspect=json_problem
    )
    files: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    for relative, path, expected_size in items:
        result = hashed[relative]
        entry = expected[relative]
        row: dict[str, Any] = {"path": relative, "size": expected_size, "sha256": entry["sha256"]}
        files.append(row)
        row["ok"] = False
        if isinstance(result, str):
            problems.append(f"{relative}: {result}")
            continue
        size, digest, row["stat"], note = result
        if size != expected_size:
            problems.append(
                f"{relative}: {size} bytes, the manifest says {expected_size} (truncated or "
                "incomplete copy)"
            )
        elif note is not None:
            problems.append(f"{relative}: {note}")
        elif digest != entry["sha256"]:
            problems.append(
                f"{relative}: sha256 {digest[:12]}… differs from the manifest's "
                f"{entry['sha256'][:12]}… (corrupted copy)"
            )
        elif (
            size >= SMALL_BUFFER  # too big to have been parsed while it was hashed
            and relative.endswith(JSON_SUFFIXES)
            and (big_json := json_problem(relative, Path(path).read_bytes())) is not None
        ):
            problems.append(f"{relative}: {big_json}")
        else:
            row["ok"] = True
        if not row["ok"]:
            continue
        if relative.endswith(JSON_SUFFIXES):
            row["load"] = "json parsed"
        if not relative.endswith(CHECKPOINT_SUFFIXES):
            continue
        try:
            method = _load_check(Path(path), relative, size, allow_pickle)
        except (_LoadProblem, OSError) as exc:
            problems.append(f"{relative}: checkpoint does not load safely: {exc}")
            row["ok"] = False
            checkpoints.append({"path": relative, "ok": False, "method": None, "detail": str(exc)})
            continue
        if method is not None:
            row["load"] = method
            checkpoints.append({"path": relative, "ok": True, "method": method})
    totals = {"files": len(files), "bytes": sum(f["size"] for f in files)}
    return _record(
        local_dir,
        document,
        manifest_sha256,
        problems,
        allow_pickle,
        roster,
        files,
        checkpoints,
        totals,
    )


# -- after the verification --------------------------------------------------------------------


def check_unchanged(local_dir: Path, *, ledger: Ledger | None = None) -> str | None:
    """None if LOCAL_DIR is exactly as it was verified; else a one-line reason.

    Method: the ledger's latest verification for the instance named in PULL_VERIFIED.json must
    cover this directory and carry the SHA-256 of PULL_VERIFIED.json as it is now (a forged or
    edited record fails here; a record never entered in the ledger is no evidence at all). The
    record holds, per verified file, the lstat (size, mtime_ns, ctime_ns, inode, device) taken
    after its bytes were hashed; the tree is listed again and every file lstat'ed: a file
    added, removed, replaced (inode), rewritten (size, mtime or ctime) or turned into a symlink
    is reported. ctime cannot be set back by a user (unlike mtime), so a same-size rewrite that
    restores the mtime is still seen. Files whose ctime is within RACY_NS of the snapshot
    could have been rewritten inside one timestamp tick of the final stat; those are re-hashed.

    Cost: one directory scan and one lstat per file (O(files), about 1-3 µs each when cached),
    plus re-hashing the rare racily-clean files: no re-hash of the data in the normal case.
    Blind spots: writes that bypass the filesystem (raw block device), a filesystem that does
    not maintain ctime, or root moving the system clock back AND restoring the same inode,
    size, mtime and ctime; bit rot on the disk after verification (that needs a re-hash:
    `rgt verify` again)."""
    with manifest_module.gc_paused():  # a record of 50,000 rows: no collections while parsed
        return _check_unchanged(Path(local_dir), ledger)


def _check_unchanged(local_dir: Path, ledger: Ledger | None) -> str | None:
    local_dir = Path(local_dir).resolve()
    record_path = local_dir / VERIFIED_NAME
    if not record_path.exists():
        return f"{record_path} is missing"
    try:
        data = read_input_file(record_path, max_bytes=MAX_RECORD_BYTES)
        record = json.loads(data)
        if not isinstance(record, dict):
            raise ValueError("top level is not an object")
    except InputFileError as exc:
        return f"{record_path} is unreadable ({exc.reason})"
    except (ValueError, RecursionError) as exc:
        return f"{record_path} is unreadable ({_json_error(exc)})"
    instance_id = record.get("instance_id")
    if not isinstance(instance_id, str):
        return f"{record_path}: no instance id"
    own = ledger is None
    book = Ledger.open() if ledger is None else ledger
    try:
        verification = book.latest_verification(instance_id)
    finally:
        if own:
            book.close()
    if verification is None:
        return f"no verification of instance {instance_id} is recorded in the ledger"
    if verification.local_dir != str(local_dir):
        return f"the latest verification of instance {instance_id} is of {verification.local_dir}"
    record_sha = hashlib.sha256(data).hexdigest()
    if verification.record_sha256 != record_sha:
        return (
            f"{VERIFIED_NAME} (sha256 {record_sha[:12]}…) is not the record the verification "
            "wrote: it was edited or forged"
        )
    if (
        record.get("ok") is not True
        or record.get("manifest_sha256") != verification.manifest_sha256
    ):
        return f"{VERIFIED_NAME} does not record a passed verification of the recorded manifest"
    try:
        manifest_bytes = (local_dir / MANIFEST_NAME).read_bytes()
    except OSError:
        return f"{MANIFEST_NAME} is missing or unreadable"
    if hashlib.sha256(manifest_bytes).hexdigest() != verification.manifest_sha256:
        return f"{MANIFEST_NAME} changed since it was verified"
    problem = _rows_cover_manifest(record, manifest_bytes)
    if problem is not None:
        return problem
    return _tree_change(local_dir, record)


def _rows_cover_manifest(record: dict[str, Any], manifest_bytes: bytes) -> str | None:
    """None when the record's verified rows are exactly the manifest's entries (path, size,
    SHA-256), one for one; else what differs. A record of an empty or partial list, or one
    whose digests are not the manifest's, is no verification of this pull, however it got
    into the ledger."""
    try:
        manifest = json.loads(manifest_bytes)
        entries = {(str(e["path"]), int(e["size"]), str(e["sha256"])) for e in manifest["files"]}
    except (ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST_NAME} is unreadable ({type(exc).__name__})"
    rows = record.get("files")
    if not isinstance(rows, list):
        return f"{VERIFIED_NAME} has no file rows"
    try:
        verified = {(str(r["path"]), int(r["size"]), str(r["sha256"])) for r in rows}
    except (KeyError, TypeError, ValueError):
        return f"{VERIFIED_NAME}: a file row lacks its path, size or sha256"
    if len(verified) != len(rows) or verified != entries:
        missing = len(entries - verified)
        extra = len(verified - entries)
        return (
            f"{VERIFIED_NAME} covers {len(entries & verified)} of the manifest's {len(entries)} "
            f"file(s) exactly ({missing} missing or different, {extra} not in the manifest): a "
            "verification of another or partial list is no verification of this pull"
        )
    return None


def _sha256_file(path: Path) -> str | None:
    """SHA-256 of a regular file, read in chunks (a racily-clean checkpoint can be GBs); None
    for anything else: missing, unreadable, or a FIFO put in its place (opened non-blocking,
    so it cannot hang the gate)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, manifest_module.READ_CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def _tree_change(local_dir: Path, record: dict[str, Any]) -> str | None:
    found, problems = list_local(local_dir, with_stat=True)
    if problems:
        return problems[0]
    verified = {row["path"]: row for row in record.get("files", [])}
    added = sorted(set(found) - set(verified))
    if added:
        return f"{added[0]} was added" + (f" (and {len(added) - 1} more)" if len(added) > 1 else "")
    removed = sorted(set(verified) - set(found))
    if removed:
        return f"{removed[0]} was removed" + (
            f" (and {len(removed) - 1} more)" if len(removed) > 1 else ""
        )
    taken_ns = int(record.get("snapshot", {}).get("taken_ns", 0))
    racy: list[tuple[str, dict[str, Any]]] = []
    for relative, row in verified.items():
        info = found[relative]
        now = _stat_key(info) if info is not None else None
        if now is None or now != row.get("stat"):
            return f"{relative} changed (size, mtime, ctime or inode differ)"
        if now[2] >= taken_ns - RACY_NS:
            racy.append((relative, row))
    for relative, row in racy:
        if _sha256_file(local_dir / relative) != row["sha256"]:
            return f"{relative} changed (its content no longer matches the manifest)"
    return None
