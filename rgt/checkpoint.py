"""Crash-safe training checkpoints: atomic save, load-latest-on-start, keep-last-N.

STDLIB-ONLY and self-contained: a job ships this one file to the rented box (the demo does, as
one of its job `files`) and imports it with the box's python3.

    from checkpoint import save, load_latest          # or: from rgt.checkpoint import ...
    ckpt = load_latest("/workspace/checkpoints")       # None on a fresh start
    step, state = (ckpt.step, ckpt.state) if ckpt else (0, initial_state())
    ...
    save("/workspace/checkpoints", step, state, keep=3)

A state is a tree of JSON values (dict with str keys, list, str, int, float, bool, None) whose
leaves may also be `bytes` (weights, optimizer moments, tensors: see torch_state_to_tree).
Nothing is pickled, so loading a checkpoint never runs code.

File format (one file per checkpoint, named PREFIX + 9-digit step + SUFFIX):

    b"RGTCKPT1\\n" | header length (8 bytes, big-endian) | header JSON | blobs
    | SHA-256 of everything before it (32 bytes)

A save writes a hidden temp file, fsyncs it, renames it into place and fsyncs the directory, so a
kill at any moment leaves the previous checkpoints intact and never a partial file under a final
name. load_latest trusts no file on its name: it takes the highest step whose digest checks.
One run per directory; a checkpoint is read whole into memory (for states of many GB, keep the
big tensors in their own files and the small state here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"RGTCKPT1\n"
FORMAT_VERSION = 1
DEFAULT_PREFIX = "step-"
DEFAULT_SUFFIX = ".ckpt"
_BLOB_KEY = "$rgt.bytes"  # a bytes leaf becomes {"$rgt.bytes": [offset, length]}
_DIGEST_SIZE = 32


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read (the message names the file and the reason)."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint."""

    step: int
    state: Any
    path: Path


def checkpoint_name(step: int, prefix: str = DEFAULT_PREFIX, suffix: str = DEFAULT_SUFFIX) -> str:
    """'step-000000120.ckpt' for step 120: names sort in step order."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"step must be a non-negative integer, got {step!r}")
    return f"{prefix}{step:09d}{suffix}"


def _pack_tree(value: Any, blobs: list[bytes], offset: list[int], where: str) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        ref = {_BLOB_KEY: [offset[0], len(data)]}
        blobs.append(data)
        offset[0] += len(data)
        return ref
    if isinstance(value, dict):
        packed = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"state{where}: key {key!r} is not a string")
            if key == _BLOB_KEY:
                raise CheckpointError(f"state{where}: key {_BLOB_KEY!r} is reserved")
            packed[key] = _pack_tree(item, blobs, offset, f"{where}[{key!r}]")
        return packed
    if isinstance(value, list | tuple):
        return [_pack_tree(item, blobs, offset, f"{where}[{i}]") for i, item in enumerate(value)]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise CheckpointError(
        f"state{where}: {type(value).__name__} is not storable; use JSON values or bytes "
        "(tensors: torch_state_to_tree)"
    )


def _unpack_tree(value: Any, blobs: memoryview) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _BLOB_KEY in value:
            start, length = value[_BLOB_KEY]
            return bytes(blobs[start : start + length])
        return {key: _unpack_tree(item, blobs) for key, item in value.items()}
    if isinstance(value, list):
        return [_unpack_tree(item, blobs) for item in value]
    return value


def encode(step: int, state: Any) -> bytes:
    """The bytes of one checkpoint file."""
    blobs: list[bytes] = []
    tree = _pack_tree(state, blobs, [0], "")
    header = json.dumps(
        {"format": FORMAT_VERSION, "step": step, "state": tree},
        separators=(",", ":"),
    ).encode()
    body = b"".join([MAGIC, len(header).to_bytes(8, "big"), header, *blobs])
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, *, source: str = "<checkpoint>") -> Checkpoint:
    """Parse and check one checkpoint file's bytes; CheckpointError if torn or corrupt."""
    fixed = len(MAGIC) + 8
    if len(data) < fixed + _DIGEST_SIZE or not data.startswith(MAGIC):
        raise CheckpointError(f"{source}: not an rgt checkpoint (bad magic or too short)")
    body, digest = data[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{source}: SHA-256 mismatch (torn or corrupted file)")
    header_len = int.from_bytes(body[len(MAGIC) : fixed], "big")
    try:
        header = json.loads(body[fixed : fixed + header_len])
        step = header["step"]
        version = header["format"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: unreadable header: {exc}") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{source}: format {version!r}, this reader knows {FORMAT_VERSION}")
    blobs = memoryview(body)[fixed + header_len :]
    return Checkpoint(step, _unpack_tree(header["state"], blobs), Path(source))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(
    directory: str | os.PathLike[str],
    prefix: str = DEFAULT_PREFIX,
    suffix: str = DEFAULT_SUFFIX,
) -> list[tuple[int, Path]]:
    """(step, path) of every file named like a checkpoint, oldest step first (unchecked)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(prefix) + r"([0-9]+)" + re.escape(suffix) + r"\Z")
    found = []
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_file():
            found.append((int(match[1]), entry))
    return sorted(found)


def save(
    directory: str | os.PathLike[str],
    step: int,
    state: Any,
    *,
    keep: int | None = 3,
    prefix: str = DEFAULT_PREFIX,
    suffix: str = DEFAULT_SUFFIX,
) -> Path:
    """Write checkpoint `step` atomically, then keep the newest `keep` of steps <= `step` (None:
    keep all; files of later steps are left alone).

    Order: temp file -> fsync -> rename -> fsync directory. Older checkpoints are deleted only
    after the new one is durable, and stale temp files of a killed writer are swept.
    """
    if keep is not None and keep < 1:
        raise CheckpointError(f"keep must be at least 1 (or None for all), got {keep!r}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step, prefix, suffix)
    data = encode(step, state)
    # Hidden and *.tmp: neither this module nor a `find -name PATTERN ! -name '.*'` takes it.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(folder)
    _sweep(folder, prefix, suffix, keep, step, current=tmp_name)
    return final


def _sweep(
    folder: Path, prefix: str, suffix: str, keep: int | None, step: int, current: str
) -> None:
    for entry in folder.glob(f".{prefix}*{suffix}.*.tmp"):
        if str(entry) != current:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    if keep is None:
        return
    # Only checkpoints up to this step count towards `keep`: a file of a later step (a corrupt
    # one load_latest skipped) must not push out the good ones this run resumed from.
    mine = [path for found, path in list_checkpoints(folder, prefix, suffix) if found <= step]
    for path in mine[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and check one checkpoint file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode(data, source=str(path))


def load_latest(
    directory: str | os.PathLike[str],
    prefix: str = DEFAULT_PREFIX,
    suffix: str = DEFAULT_SUFFIX,
    *,
    skipped: list[str] | None = None,
) -> Checkpoint | None:
    """The newest checkpoint that checks out, or None when there is none (a fresh start).

    A corrupt newest file is skipped (its reason appended to `skipped`), never trusted.
    """
    for _step, path in reversed(list_checkpoints(directory, prefix, suffix)):
        try:
            return load(path)
        except CheckpointError as exc:
            if skipped is not None:
                skipped.append(str(exc))
    return None


def random_state() -> list[Any]:
    """The `random` module's generator state as JSON values (restore with set_random_state)."""
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_random_state(saved: list[Any]) -> None:
    """Restore what random_state() returned."""
    version, internal, gauss = saved
    random.setstate((version, tuple(internal), gauss))


def torch_state_to_tree(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A torch state_dict (tensors, numbers, nested dicts) as a checkpoint tree: raw bytes +
    dtype + shape per tensor, never pickle. Needs torch (imported here only)."""
    import torch

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            # A clone owns exactly its bytes (a view's storage may be larger); no numpy needed.
            flat = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).clone()
            return {
                "dtype": str(value.dtype).removeprefix("torch."),
                "shape": list(value.shape),
                "data": bytes(flat.untyped_storage()),
            }
        if isinstance(value, dict):
            return {str(key): convert(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [convert(item) for item in value]
        return value

    converted: dict[str, Any] = convert(state_dict)
    return converted


def tree_to_torch_state(tree: dict[str, Any]) -> dict[str, Any]:
    """Inverse of torch_state_to_tree (tensors come back on the CPU)."""
    import torch

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"dtype", "shape", "data"} and isinstance(value["data"], bytes):
                dtype = getattr(torch, value["dtype"])
                if not value["data"]:
                    return torch.empty(value["shape"], dtype=dtype)
                raw = torch.frombuffer(bytearray(value["data"]), dtype=torch.uint8)
                return raw.view(dtype).reshape(value["shape"]).clone()
            return {key: restore(item) for key, item in value.items()}
        if isinstance(value, list):
            return [restore(item) for item in value]
        return value

    restored: dict[str, Any] = restore(tree)
    return restored
