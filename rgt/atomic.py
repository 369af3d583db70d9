"""Write files so that a crash leaves either the old content or the new, never half of either."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry (a rename is durable only once its directory is synced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write `data` to `path` via temp file → fsync → rename → fsync of the directory."""
    atomic_write_chunks(path, [data], mode=mode)


def atomic_write_chunks(path: Path, chunks: Sequence[bytes], *, mode: int = 0o644) -> None:
    """`atomic_write_bytes` of the chunks' concatenation, without making it (a record of
    50,000 files is several chunks of megabytes: joining them first would copy them all)."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    # A fresh, exclusive name next to the target: what tempfile.mkstemp does, without importing
    # tempfile (random, weakref, shutil...), which `rgt verify`/`rgt manifest` start-up notices.
    tmp_name = os.path.join(directory, f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp_name, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.writelines(chunks)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(directory)


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Text form of `atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
