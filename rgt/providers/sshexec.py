"""Run one command on a box over ssh and collect its output, bounded in bytes and time.

The gate lists the result tree and hashes a few files on the box with it (rgt.boxtree). The
output is read as it arrives and the command is killed the moment it exceeds `max_bytes`, so a
huge or endless answer costs at most that much memory, and a box that stops answering costs at
most `timeout` seconds.
"""

from __future__ import annotations

import os
import selectors
import shlex
import subprocess
import time
from collections.abc import Sequence

from rgt.errors import ProviderError
from rgt.providers.rsync import SshEndpoint, SshSettings, ssh_command

SSH_FAILED = 255  # ssh's own status when it could not connect or authenticate


class OutputTooLarge(ProviderError):
    """The command printed more than the caller allowed (it was killed)."""


def run_remote_command(
    endpoint: SshEndpoint,
    argv: Sequence[str],
    settings: SshSettings,
    *,
    max_bytes: int,
    timeout: float = 120.0,
    attempts: int = 3,
) -> bytes:
    """The standard output of `argv` run on the box. Retries only when ssh itself failed
    (status 255: the link, not the command); raises ProviderError naming the command's last
    error line, and OutputTooLarge past `max_bytes`."""
    remote = " ".join(shlex.quote(word) for word in argv)
    ssh = [*ssh_command(endpoint, settings), endpoint.host, remote]
    where = f"{endpoint.host}:{endpoint.port}"
    last_error = ""
    for attempt in range(1, attempts + 1):
        status, out, err = _run_bounded(ssh, max_bytes=max_bytes, timeout=timeout)
        if status is None:
            last_error = f"no answer within {timeout:.0f}s"
        elif status == 0:
            return out
        else:
            last_error = _last_line(err) or f"exit status {status}"
            if status != SSH_FAILED:  # the command ran and failed: retrying cannot help
                break
        if attempt < attempts:
            time.sleep(min(2.0 * attempt, 10.0))
    raise ProviderError(f"`{argv[0]}` on {where} failed: {last_error}")


def _run_bounded(
    argv: list[str], *, max_bytes: int, timeout: float
) -> tuple[int | None, bytes, bytes]:
    """(status or None on timeout, stdout, last 64 KiB of stderr)."""
    try:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise ProviderError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    assert child.stdout is not None and child.stderr is not None
    out = bytearray()
    err = bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ, out)
        selector.register(child.stderr, selectors.EVENT_READ, err)
        try:
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, bytes(out), bytes(err)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    key.data.extend(chunk)
                    if key.data is err and len(err) > 1 << 16:
                        del err[: len(err) - (1 << 16)]
                    if len(out) > max_bytes:
                        raise OutputTooLarge(
                            f"`{argv[-1].split(' ', 1)[0]}` printed more than {max_bytes} bytes; "
                            "refusing to read further"
                        )
            return child.wait(timeout=max(deadline - time.monotonic(), 1.0)), bytes(out), bytes(err)
        except subprocess.TimeoutExpired:
            return None, bytes(out), bytes(err)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
