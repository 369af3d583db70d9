"""Copy files off a rented box over ssh with rsync: resumable, bounded, with progress.

Shared by every provider whose boxes are reachable over ssh. The choices that matter:

* Resume: `--partial-dir=.rsync-partial`. A file whose transfer was cut off is kept (in the
  partial dir, never under its final name, so a half-copied file never looks like a result)
  and the next attempt uses it as the basis of rsync's delta transfer: only the missing tail
  is sent as literal data. Files that completed are skipped by rsync's size+mtime check, so
  their bytes are never sent again. rsync checks every transferred file against a whole-file
  checksum, so a resumed file is correct, not merely the right size. (`--append-verify` would
  also resume, but it trusts that the local prefix matches and re-sends the whole file when
  it does not; the partial dir is as cheap and keeps incomplete files out of the result tree.)
* Bounds: ssh ConnectTimeout and keep-alives, rsync's `--timeout` on stalled I/O, and a
  bounded number of attempts with backoff. A copy that keeps moving bytes is never cut off
  by a wall-clock limit (a 100 GB pull is slow, not stuck).
* Host keys: `StrictHostKeyChecking=accept-new` into a known_hosts file rgt owns (one per
  box, chosen by the caller), so the first contact pins the box's key and a changed key
  later is refused, without touching the user's ~/.ssh/known_hosts.
* Children die with rgt: rsync runs with a parent-death signal (Linux), so a killed rgt, even
  by kill -9, does not leave rsync copying on. rsync then saves its partial file and takes its
  ssh and receiver processes down itself.
* Only rgt's own leftovers are moved: between attempts, a temp file a killed rsync left is
  adopted into the partial dir only if it appeared during this copy (see `temp_files`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from rgt.children import die_with_parent
from rgt.errors import CheckFailed, LocalDiskFull, ProviderError, UsageError
from rgt.manifest import MAX_MANIFEST_BYTES
from rgt.providers.base import CopyProgress, CopyResult, ProgressCallback

log = logging.getLogger(__name__)

SSH_KEY_ENV = "RGT_SSH_KEY"
# The ssh program (and leading arguments) to run instead of `ssh`, like git's GIT_SSH_COMMAND:
# a wrapper, a jump-host setup, or the emulator's local pipe where no sshd can run.
SSH_COMMAND_ENV = "RGT_SSH_COMMAND"
PARTIAL_DIR = ".rsync-partial"

# rsync exit codes worth another attempt: the link or the far side failed, not the request.
# 5 start-up failure, 10 socket I/O, 11 file I/O, 12 protocol stream (connection dropped),
# 14 IPC, 20 killed by a signal, 24 source files vanished, 30/35 timeouts, 255 ssh failed.
_RETRYABLE_RSYNC = frozenset({5, 10, 11, 12, 14, 20, 24, 30, 35, 255})
_PARTIAL_TRANSFER = 23
# How rsync's receiver reports ENOSPC / EDQUOT ("write failed on ...: No space left on device").
_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded")

_PROGRESS_LINE = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s")
_STAT_LINE = re.compile(
    r"^(Literal data|Total file size|Number of regular files transferred|"
    r"Total bytes received): ([\d,]+)"
)


@dataclass(frozen=True)
class SshEndpoint:
    """Where a box's sshd listens."""

    host: str
    port: int
    user: str = "root"

    def rsync_spec(self, remote_path: str) -> str:
        """`user@host:path` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{remote_path}"


@dataclass(frozen=True)
class SshSettings:
    """How to authenticate and what to trust."""

    known_hosts: Path
    identity_file: Path | None = None
    connect_timeout: int = 15

    @classmethod
    def from_environment(cls, known_hosts: Path) -> SshSettings:
        """The private key from $RGT_SSH_KEY when set, else ssh's own default identities."""
        return cls(known_hosts=known_hosts, identity_file=identity_from_environment())


@dataclass(frozen=True)
class CopySettings:
    """Bounds for one copy."""

    attempts: int = 5
    io_timeout: int = 60  # rsync --timeout: seconds without any I/O before giving up
    first_backoff: float = 2.0
    max_backoff: float = 30.0
    bwlimit_kbps: int | None = None  # rsync --bwlimit, KiB/s (None: unlimited)
    # The box-side rsync's niceness (None: the box's default). A copy made while the job runs
    # (durable checkpoints) passes LOW_PRIORITY_NICE, so the box's reading and checksumming
    # yields to the job, as its watcher does.
    remote_nice: int | None = None


LOW_PRIORITY_NICE = 19


def low_priority_copy(copy: CopySettings | None) -> CopySettings:
    """`copy` (or the defaults) with the box-side rsync at LOW_PRIORITY_NICE."""
    return replace(copy or CopySettings(), remote_nice=LOW_PRIORITY_NICE)


@dataclass
class AttemptStats:
    """What one rsync run did, from its --stats block (None when it was cut off first)."""

    returncode: int
    seconds: float
    progress_bytes: int = 0
    literal_bytes: int | None = None
    bytes_received: int | None = None
    total_file_size: int | None = None
    files_transferred: int | None = None

    @property
    def payload_bytes(self) -> int:
        """File content sent in this attempt: exact from --stats, else the last progress tick."""
        return self.literal_bytes if self.literal_bytes is not None else self.progress_bytes


@dataclass
class RsyncReport:
    """Every attempt of one copy."""

    attempts: list[AttemptStats] = field(default_factory=list)

    @property
    def bytes_transferred(self) -> int:
        """File content that crossed the wire, over all attempts."""
        return sum(a.payload_bytes for a in self.attempts)

    @property
    def files_transferred(self) -> int:
        """Files rsync (re)wrote, over all attempts."""
        return sum(a.files_transferred or 0 for a in self.attempts)

    def copy_result(self) -> CopyResult:
        """What a provider's copy_from reports for this copy."""
        return CopyResult(
            bytes_transferred=self.bytes_transferred,
            files=self.files_transferred,
            attempts=len(self.attempts),
            transport=transport_name(),
        )


def identity_from_environment() -> Path | None:
    """The ssh private key named by $RGT_SSH_KEY, or None to let ssh use the user's default."""
    value = os.environ.get(SSH_KEY_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(
            f"{SSH_KEY_ENV}={value}: {'a directory' if path.is_dir() else 'no such file'}; "
            "set it to the private key file your boxes accept"
        )
    return path


def ssh_program() -> list[str]:
    """`ssh`, or the command $RGT_SSH_COMMAND names (split like a shell would)."""
    value = os.environ.get(SSH_COMMAND_ENV, "").strip()
    if not value:
        return ["ssh"]
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise UsageError(f"{SSH_COMMAND_ENV}={value!r}: {exc}") from None
    if words and shutil.which(words[0]) is None:
        # Found now rather than as a FileNotFoundError from inside a copy (a crash, exit 70).
        raise UsageError(
            f"{SSH_COMMAND_ENV}={value!r}: no program {words[0]!r} (not found on PATH or not "
            "executable); set it to an ssh-compatible command, or unset it to use ssh"
        )
    return words or ["ssh"]


def transport_name() -> str:
    """How copies travel, for reports: rsync over ssh, or over $RGT_SSH_COMMAND."""
    return (
        f"rsync over {SSH_COMMAND_ENV}"
        if os.environ.get(SSH_COMMAND_ENV, "").strip()
        else ("rsync+ssh")
    )


def ssh_command(endpoint: SshEndpoint, settings: SshSettings) -> list[str]:
    """The ssh argv (without the remote command) for `endpoint`."""
    settings.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        *ssh_program(),
        "-p",
        str(endpoint.port),
        "-l",
        endpoint.user,
        "-o",
        "BatchMode=yes",  # never prompt: an agent or a pipe cannot answer
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={settings.known_hosts}",
        "-o",
        f"ConnectTimeout={settings.connect_timeout}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        "LogLevel=ERROR",
    ]
    if settings.identity_file is not None:
        argv += ["-i", str(settings.identity_file), "-o", "IdentitiesOnly=yes"]
    return argv


# ssh's complaints are one line; a box printing megabytes of them is cut to the tail.
_STDERR_KEEP = 64 * 1024


def read_remote_file(
    endpoint: SshEndpoint,
    remote_path: str,
    settings: SshSettings,
    *,
    attempts: int = 3,
    timeout: float = 60.0,
    max_bytes: int = MAX_MANIFEST_BYTES,  # the manifest is the file rgt reads this way
) -> bytes:
    """The bytes of one small file on the box (`cat` over ssh), with bounded retries.

    Streamed: ssh is killed as soon as more than `max_bytes` arrived, so a huge or endless file
    costs at most `max_bytes` of memory. Raises CheckFailed when the file is too large,
    ProviderError when it is missing or the box unreachable."""
    if not PurePosixPath(remote_path).is_absolute():
        raise UsageError(f"remote path {remote_path!r} must be absolute")
    argv = [*ssh_command(endpoint, settings), endpoint.host, "cat -- " + shlex.quote(remote_path)]
    where = f"{remote_path} on {endpoint.host}:{endpoint.port}"
    last_error = ""
    for attempt in range(1, attempts + 1):
        done = _capture_bounded(argv, timeout=timeout, max_bytes=max_bytes)
        if done.outcome == "too large":
            from rgt.inputfile import size_text

            raise CheckFailed(  # the box's content, not the link: retrying cannot help
                f"{where} is larger than rgt reads over ssh ({size_text(max_bytes)} at most, a "
                "manifest of roughly 500,000 files); nothing was copied"
            )
        if done.outcome == "exited" and done.returncode == 0:
            return done.stdout
        if done.outcome == "timed out":
            last_error = f"timed out after {timeout:.0f}s"
        else:
            last_error = _last_line(done.stderr) or f"exit status {done.returncode}"
            if done.returncode != 255:  # the command ran and failed: retrying cannot help
                break
        if attempt < attempts:
            time.sleep(min(2.0 * attempt, 10.0))
    raise ProviderError(f"cannot read {where}: {last_error}")


@dataclass(frozen=True)
class _Captured:
    """How a bounded capture ended: "exited" (with its status), "too large" or "timed out"
    (killed then)."""

    outcome: str
    returncode: int
    stdout: bytes
    stderr: bytes


def _capture_bounded(argv: list[str], *, timeout: float, max_bytes: int) -> _Captured:
    """Run `argv`, reading its stdout (at most `max_bytes` + 1 bytes) and the tail of its
    stderr; the child is killed once stdout passes `max_bytes` or after `timeout` seconds, and
    nothing more is read then."""
    import selectors

    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    out: list[bytes] = []
    received = 0
    err = b""
    deadline = time.monotonic() + timeout
    outcome = "exited"
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        try:
            while selector.get_map() and outcome == "exited":
                left = deadline - time.monotonic()
                if left <= 0:
                    outcome = "timed out"
                    break
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 1024 * 1024)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is proc.stdout:
                        out.append(chunk)
                        received += len(chunk)
                        if received > max_bytes:
                            outcome = "too large"
                            break
                    else:
                        err = (err + chunk)[-_STDERR_KEEP:]
        finally:
            if selector.get_map():  # stopped early (or interrupted): the child goes too
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()
            try:  # both pipes closed: it exits now (ssh does), or is made to
                returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                returncode = proc.wait()
                outcome = "timed out"
    return _Captured(outcome, returncode, b"".join(out) if outcome == "exited" else b"", err)


def rsync_pull(
    endpoint: SshEndpoint,
    remote_path: str,
    local_dir: Path,
    settings: SshSettings,
    *,
    copy: CopySettings | None = None,
    progress: ProgressCallback | None = None,
    sleep: Callable[[float], None] = time.sleep,
    files: Sequence[str] | None = None,
) -> RsyncReport:
    """Copy `remote_path` (a file or a directory) into `local_dir`, resuming cut-off transfers.

    `local_dir/<basename of remote_path>` is the result, as with `rsync SRC DIR/`. With `files`
    (plain names in the directory `remote_path`), only those are copied, straight into
    `local_dir`, in one rsync run (one ssh connection for all). Retries retryable rsync/ssh
    failures up to `copy.attempts` times; raises ProviderError otherwise."""
    copy = copy or CopySettings()
    if not PurePosixPath(remote_path).is_absolute():
        raise UsageError(f"remote path {remote_path!r} must be absolute")
    # No trailing slash: copy the directory itself into local_dir, never its contents loose.
    source = remote_path.rstrip("/") or "/"
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    listing: list[str] = []
    if files is not None:
        bad = [name for name in files if not name or "/" in name or "\n" in name]
        if bad:
            raise UsageError(f"copy of {source}: {bad[0]!r} is not a plain file name")
        # rsync reads the names relative to the source directory (given with a slash).
        listing = ["--files-from=-", "--from0"]
        source = source.rstrip("/") + "/"
    argv = [
        "rsync",
        "-rlt",  # recursive, symlinks as symlinks (never followed off the tree), mtimes
        f"--partial-dir={PARTIAL_DIR}",
        "--no-inc-recursive",  # the whole file list first: progress2 percentages are honest
        "--info=name1,progress2",
        "--stats",
        f"--timeout={copy.io_timeout}",
        "-e",
        shlex.join(ssh_command(endpoint, settings)),
    ]
    if copy.bwlimit_kbps:
        argv.append(f"--bwlimit={copy.bwlimit_kbps}")
    if copy.remote_nice is not None:
        argv.append(f"--rsync-path=nice -n {int(copy.remote_nice)} rsync")
    argv += [*listing, endpoint.rsync_spec(source), str(local_dir) + "/"]
    names_input = b"".join(name.encode() + b"\0" for name in files or ())

    report = RsyncReport()
    done_before = 0
    target = local_dir if files is not None else local_dir / PurePosixPath(source).name
    # What already looks like an rsync temp file is not this copy's to move: only temp files
    # that appear while it runs are (a user's `.model.pt.backup` stays where it is).
    before = temp_files(target)
    for attempt in range(1, copy.attempts + 1):
        if attempt > 1:
            adopt_temp_files(temp_files(target) - before)
        stats, stderr = _run_once(
            argv, progress=progress, done_before=done_before, stdin=names_input
        )
        report.attempts.append(stats)
        if stats.returncode == 0:
            if progress is not None and stats.total_file_size is not None:
                progress(CopyProgress(stats.total_file_size, stats.total_file_size, None))
            return report
        done_before += stats.progress_bytes
        retryable = stats.returncode < 0 or stats.returncode in _RETRYABLE_RSYNC
        if stats.returncode == _PARTIAL_TRANSFER and "No such file" not in stderr:
            retryable = True
        why = _summary(stderr) or f"rsync exit status {stats.returncode}"
        if _DISK_FULL.search(stderr):  # rsync exit 11 is retryable, a full disk is not
            raise LocalDiskFull(
                f"copy of {source} into {local_dir}: no space left on device ({why}); make room "
                "there or copy into another directory, then run the same command again (it "
                "resumes)"
            )
        if not retryable or attempt == copy.attempts:
            raise ProviderError(
                f"copy of {source} from {endpoint.host}:{endpoint.port} failed after "
                f"{attempt} attempt(s): {why}"
            )
        wait = min(copy.first_backoff * 2 ** (attempt - 1), copy.max_backoff)
        log.warning(
            "copy attempt %d of %s failed (%s); resuming in %.1fs", attempt, source, why, wait
        )
        sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def rsync_push(
    endpoint: SshEndpoint,
    local_file: Path,
    remote_dir: str,
    settings: SshSettings,
    *,
    copy: CopySettings | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RsyncReport:
    """Copy one local file into `remote_dir` on the box (created if missing), resumably: a cut
    transfer waits in the box's partial dir, never under the file's name. Bounded retries as
    `rsync_pull`; raises ProviderError when they run out."""
    copy = copy or CopySettings()
    if not PurePosixPath(remote_dir).is_absolute():
        raise UsageError(f"remote path {remote_dir!r} must be absolute")
    argv = [
        "rsync",
        "-t",
        "--mkpath",
        f"--partial-dir={PARTIAL_DIR}",
        "--stats",
        f"--timeout={copy.io_timeout}",
        "-e",
        shlex.join(ssh_command(endpoint, settings)),
        str(local_file),
        endpoint.rsync_spec(remote_dir.rstrip("/") + "/"),
    ]
    report = RsyncReport()
    for attempt in range(1, copy.attempts + 1):
        stats, stderr = _run_once(argv, progress=None, done_before=0)
        report.attempts.append(stats)
        if stats.returncode == 0:
            return report
        why = _summary(stderr) or f"rsync exit status {stats.returncode}"
        if stats.returncode not in _RETRYABLE_RSYNC or attempt == copy.attempts:
            raise ProviderError(
                f"copy of {local_file} to {endpoint.host}:{endpoint.port}:{remote_dir} failed "
                f"after {attempt} attempt(s): {why}"
            )
        sleep(min(copy.first_backoff * 2 ** (attempt - 1), copy.max_backoff))
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


# rsync's in-flight temp file for NAME: ".NAME.XXXXXX" next to where NAME will go.
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9]{6}$")


def final_name(temp: Path) -> Path | None:
    """Where the file an rsync temp file `temp` (".NAME.XXXXXX") was becoming goes; None if
    `temp` is not named like one."""
    match = _TEMP_FILE.match(temp.name)
    return temp.parent / match.group("name") if match else None


def temp_files(target: Path) -> set[Path]:
    """Every regular file under `target` (outside partial dirs) named like an rsync temp file.

    Such a name proves nothing alone (`.profile.backup` is one): callers move or delete only
    those they can show their own rsync left, e.g. ones absent from a list taken before it ran."""
    found: set[Path] = set()
    if not target.is_dir() or target.is_symlink():
        return found
    for directory, dirs, names in os.walk(target):
        dirs[:] = [name for name in dirs if name != PARTIAL_DIR]
        here = Path(directory)
        for name in names:
            path = here / name
            if _TEMP_FILE.match(name) and path.is_file() and not path.is_symlink():
                found.add(path)
    return found


def adopt_temp_files(temps: Iterable[Path]) -> int:
    """Move rsync temp files that the caller proved its own rsync left into the partial dir,
    so the next attempt resumes them instead of starting over.

    When a kill takes out the receiving rsync too, it cannot move its half-written temp file
    into --partial-dir; the next run would start that file from zero. Per final name the
    biggest temp is adopted when the final file is absent and the partial dir holds nothing
    bigger; the other temps (also the caller's own, and of no further use) are deleted, so none
    is left to look like an extra result. rsync's whole-file checksum still guards the result.
    Returns how many were adopted."""
    by_final: dict[Path, list[Path]] = {}
    for temp in temps:
        final = final_name(temp)
        if final is not None:
            by_final.setdefault(final, []).append(temp)
    adopted = 0
    for final, group in by_final.items():
        group.sort(key=_size, reverse=True)
        partial = final.parent / PARTIAL_DIR / final.name
        best = group[0]
        if not final.exists() and _size(best) > _size(partial):
            partial.parent.mkdir(exist_ok=True)
            os.replace(best, partial)
            adopted += 1
            group = group[1:]
        for temp in group:
            temp.unlink(missing_ok=True)
    return adopted


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _run_once(
    argv: list[str],
    *,
    progress: ProgressCallback | None,
    done_before: int,
    stdin: bytes | None = None,
) -> tuple[AttemptStats, str]:
    """Run rsync once, feeding progress (and `stdin`, e.g. a --files-from list); returns its
    stats and its stderr text."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # SIGTERM when rgt dies, not SIGKILL: rsync then saves its partial file into
        # --partial-dir and stops its receiver and ssh itself (measured: all three gone about
        # 0.4 s later). This thread waits for rsync, so it only exits with the process.
        preexec_fn=die_with_parent(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    if stdin is not None:
        assert proc.stdin is not None
        # A file list is small (names only): written whole before reading, it fits the pipe
        # buffer or rsync reads it first (it reads the list before sending anything).
        feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
        feeder.start()
    stderr_lines: list[bytes] = []
    drain = threading.Thread(target=_collect, args=(proc.stderr, stderr_lines), daemon=True)
    drain.start()
    stats = AttemptStats(returncode=0, seconds=0.0)
    current_file: str | None = None
    pending = b""
    try:
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                match = _PROGRESS_LINE.match(line)
                if match:
                    stats.progress_bytes = int(match.group(1).replace(",", ""))
                    if progress is not None:
                        progress(
                            CopyProgress(done_before + stats.progress_bytes, None, current_file)
                        )
                    continue
                stat = _STAT_LINE.match(line)
                if stat:
                    _record_stat(stats, stat.group(1), int(stat.group(2).replace(",", "")))
                elif line and not line[0].isspace() and ": " not in line:
                    current_file = line
        proc.wait()
    except BaseException:
        # The caller gave up (progress callback raised, Ctrl-C): SIGTERM lets rsync save the
        # partial file for the next attempt, then make sure it is gone.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        drain.join(timeout=5)
    stats.returncode = proc.returncode
    stats.seconds = time.monotonic() - started
    return stats, b"".join(stderr_lines).decode("utf-8", "replace")


def _feed(stream: Any, data: bytes) -> None:
    with contextlib.suppress(OSError):  # rsync died first: its status says why
        stream.write(data)
        stream.close()


def _collect(stream: object, sink: list[bytes]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)


def _record_stat(stats: AttemptStats, name: str, value: int) -> None:
    if name == "Literal data":
        stats.literal_bytes = value
    elif name == "Total file size":
        stats.total_file_size = value
    elif name == "Number of regular files transferred":
        stats.files_transferred = value
    elif name == "Total bytes received":
        stats.bytes_received = value


def _summary(stderr: str) -> str:
    """The most telling line of rsync's stderr: the first specific complaint, not the generic
    `rsync error: ... (code N)` trailer."""
    lines = [" ".join(line.split()) for line in stderr.splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith("rsync error:")]
    chosen = specific[0] if specific else (lines[-1] if lines else "")
    return chosen[:300]


def _last_line(data: bytes) -> str:
    """The last non-empty line of a tool's stderr, for a one-line error message."""
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        if line.strip():
            return " ".join(line.split())[:300]
    return ""
