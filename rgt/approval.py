"""Human approval of a destroy, on a channel an agent cannot fill in.

A pseudo-terminal is easy for an agent with a shell to fake; a secret it was never told is not.
So the human sets an approval passphrase once (``rgt approval init``) and types it, together with
the instance id, each time an instance is to be destroyed. Only a salted scrypt hash of the
passphrase (with its cost parameters) is stored, in ``rgt.paths.config_dir()/approval.json``
(mode 0600, written atomically); never the passphrase, and never anything in the ledger but the
fact of an approval (instance id, channel, created, expires, consumed).

Wrong passphrases are recorded in the ledger and rate-limited with an exponential backoff that
is computed from those records, so restarting the process does not reset it.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import io
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rgt import paths
from rgt.atomic import atomic_write_text
from rgt.errors import Declined, Refused, UsageError
from rgt.ledger import Ledger

APPROVAL_FILE = "approval.json"
FORMAT_VERSION = 1
DEFAULT_TTL_SECONDS = 15 * 60
# A discard approval is asked for by the discard that uses it at once: minutes, not a quarter hour.
DISCARD_TTL_SECONDS = 5 * 60
MIN_PASSPHRASE_CHARS = 10
# scrypt cost: N=2**17, r=8, p=1 is the OWASP password-storage recommendation (128 MiB, a few
# hundred ms per check here), which makes offline guessing of a stolen hash expensive.
DEFAULT_SCRYPT = {"n": 2**17, "r": 8, "p": 1, "dklen": 32}
# Wrong-passphrase backoff: this many free attempts, then 5 s doubling up to one hour.
FREE_FAILURES = 3
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 3600.0
TTY_CHANNEL = "tty"

HOW_TO_APPROVE = (
    "a human must run `rgt approve {instance}` (or `rgt destroy {instance}`) in a real terminal "
    "and type the instance id and the approval passphrase"
)


@dataclass(frozen=True)
class PassphraseHash:
    """The stored form: salted scrypt hash plus the parameters that made it."""

    salt: bytes
    digest: bytes
    n: int
    r: int
    p: int
    dklen: int
    created: float

    def to_json(self) -> dict[str, Any]:
        """The approval.json document."""
        return {
            "format": FORMAT_VERSION,
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "dklen": self.dklen,
            "salt": self.salt.hex(),
            "hash": self.digest.hex(),
            "created": self.created,
        }


def approval_path() -> Path:
    """Where the passphrase hash lives."""
    return paths.config_dir() / APPROVAL_FILE


# `rgt approval init` itself needs the current passphrase, which a broken file cannot check: a
# human removes it by hand (deliberately not automatic: a file an agent corrupted must not let
# the agent set a passphrase of its own without a human noticing).
_START_OVER = "a human must remove it (rm {}) and run `rgt approval init` in a terminal"


def is_configured() -> bool:
    """True once `rgt approval init` has stored a passphrase hash."""
    return approval_path().is_file()


def _scrypt(passphrase: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # maxmem must cover 128 * r * n bytes plus slack, or OpenSSL refuses large N.
    return hashlib.scrypt(
        passphrase.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=dklen,
        maxmem=128 * r * n + 16 * 1024 * 1024,
    )


def hash_passphrase(passphrase: str, *, n: int | None = None) -> PassphraseHash:
    """Salt and hash a passphrase (a cheaper `n` only for tests)."""
    params = dict(DEFAULT_SCRYPT)
    if n is not None:
        params["n"] = n
    salt = secrets.token_bytes(16)
    digest = _scrypt(passphrase, salt, params["n"], params["r"], params["p"], params["dklen"])
    return PassphraseHash(
        salt, digest, params["n"], params["r"], params["p"], params["dklen"], time.time()
    )


# What `store_passphrase` is told the file held when the human's current passphrase was checked.
NOT_CONFIGURED = b""


def store_passphrase(
    passphrase: str, *, n: int | None = None, replacing: bytes | None = None
) -> Path:
    """Validate and store the hash of a new passphrase (atomic write, mode 0600).

    `replacing` is what approval.json held when the caller checked the human's right to set it
    (`NOT_CONFIGURED` when there was none): if the file changed since, another process stored a
    passphrase in between, and it is never overwritten (Refused). None skips that check (tests
    and callers that checked nothing)."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise UsageError(
            f"approval passphrase: {len(passphrase)} characters; at least "
            f"{MIN_PASSPHRASE_CHARS} are required"
        )
    record = hash_passphrase(passphrase, n=n)
    target = approval_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(target.parent, 0o700)
    with _approval_file_lock(target):
        if replacing is not None and _current_bytes(target) != replacing:
            raise Refused(
                f"an approval passphrase was set while this one was being asked for ({target} "
                "changed); nothing stored: run `rgt approval init` again (it asks for the "
                "current passphrase)"
            )
        atomic_write_text(target, json.dumps(record.to_json(), indent=2) + "\n", mode=0o600)
    return target


def _current_bytes(target: Path) -> bytes:
    """approval.json's bytes, `NOT_CONFIGURED` when it does not exist."""
    try:
        return target.read_bytes()
    except FileNotFoundError:
        return NOT_CONFIGURED


@contextlib.contextmanager
def _approval_file_lock(target: Path) -> Iterator[None]:
    """An flock beside approval.json: the compare-and-replace of two `approval init`s never
    interleaves (released by the kernel even if the holder is killed)."""
    import fcntl

    fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_passphrase_hash() -> PassphraseHash:
    """Read approval.json; one clear error if it is missing or malformed."""
    target = approval_path()
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Refused(
            f"no approval passphrase is configured ({target} missing); a human must run "
            "`rgt approval init` in a terminal first"
        ) from None
    except (OSError, ValueError) as exc:
        raise Refused(
            f"{target}: unreadable approval file ({exc}); {_START_OVER.format(target)}"
        ) from None
    try:
        if data["kdf"] != "scrypt" or data["format"] != FORMAT_VERSION:
            raise ValueError(f"kdf/format {data['kdf']!r}/{data['format']!r}")
        return PassphraseHash(
            salt=bytes.fromhex(data["salt"]),
            digest=bytes.fromhex(data["hash"]),
            n=int(data["n"]),
            r=int(data["r"]),
            p=int(data["p"]),
            dklen=int(data["dklen"]),
            created=float(data["created"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(
            f"{target}: malformed approval file ({exc}); {_START_OVER.format(target)}"
        ) from None


def check_passphrase(passphrase: str) -> bool:
    """True if `passphrase` matches the stored hash (constant-time comparison)."""
    stored = load_passphrase_hash()
    candidate = _scrypt(passphrase, stored.salt, stored.n, stored.r, stored.p, stored.dklen)
    return hmac.compare_digest(candidate, stored.digest)


def backoff_seconds(failures: int) -> float:
    """How long to wait after `failures` consecutive wrong answers."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(BACKOFF_BASE_SECONDS * 2 ** (failures - FREE_FAILURES), BACKOFF_MAX_SECONDS)


def wait_remaining(
    ledger: Ledger, *, channel: str = TTY_CHANNEL, now: float | None = None
) -> float:
    """Seconds until another approval attempt is allowed on `channel` (0 when allowed now)."""
    failures, last = ledger.recent_approval_failures(channel)
    if last is None:
        return 0.0
    at = time.time() if now is None else now
    return max(0.0, last + backoff_seconds(failures) - at)


def approve_with_passphrase(
    ledger: Ledger,
    instance_id: str,
    *,
    typed_instance_id: str,
    passphrase: str,
    channel: str = TTY_CHANNEL,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    purpose: str = "destroy",
    now: float | None = None,
) -> int:
    """Check a human's answers and record an approval; returns its id, raises Refused.

    Rate limit first (so a locked-out caller learns nothing about the passphrase), then the
    typed-back text (the instance id; for a discard, `discard <id>`: see `confirm_phrase`),
    then the passphrase. Every failure is recorded in the ledger."""
    if not is_configured():
        raise Refused(
            f"no approval passphrase is configured; a human must run `rgt approval init` in a "
            f"terminal, then {HOW_TO_APPROVE.format(instance=instance_id)}"
        )
    wait = wait_remaining(ledger, channel=channel, now=now)
    if wait > 0:
        raise Refused(
            f"too many wrong approval answers; try again in {wait:.0f} s (failures are recorded)"
        )
    expected = confirm_phrase(instance_id, purpose)
    if " ".join(typed_instance_id.split()) != expected:
        what = "instance id" if purpose == "destroy" else "confirmation"
        ledger.record_approval_failure(instance_id, channel, f"{what} typed back differs", now=now)
        raise Refused(
            f"the {what} typed back ({typed_instance_id.strip()!r}) is not {expected!r}; "
            "nothing approved"
        )
    if not check_passphrase(passphrase):
        ledger.record_approval_failure(instance_id, channel, "wrong passphrase", now=now)
        raise Refused("wrong approval passphrase; nothing approved (the attempt is recorded)")
    return ledger.record_approval(instance_id, channel, ttl_seconds, purpose=purpose, now=now)


def confirm_phrase(instance_id: str, purpose: str = "destroy") -> str:
    """What the human types back: the instance id for a destroy; `discard <id>` for a discard,
    so the answer itself says that results will be lost."""
    return str(instance_id) if purpose == "destroy" else f"{purpose} {instance_id}"


def prompt_discard_approval(ledger: Ledger, instance_id: str, *, summary: str) -> int:
    """Ask on the TTY for a discard: `summary` says what is lost; the human types `discard <id>`
    and the passphrase, or presses Enter alone to keep the box (Declined: a no, not a wrong
    answer, so it neither asks for the passphrase nor counts toward the backoff). Unlike a
    destroy, a discard needs a configured passphrase always and its approval lives only
    DISCARD_TTL_SECONDS, for the discard that asked. Returns its id."""
    try:
        tty = open_tty()
    except Refused as exc:
        raise Refused(
            f"{exc}; a discard is approved only by a human at a terminal: "
            f"`rgt discard {instance_id} --reason ...` (or the MCP discard prompt)"
        ) from None
    with tty:
        if not is_configured():
            raise Refused(
                "no approval passphrase is configured, and a discard needs one: a human must run "
                "`rgt approval init` in a terminal first"
            )
        wait = wait_remaining(ledger)
        if wait > 0:
            raise Refused(f"too many wrong approval answers; try again in {wait:.0f} s")
        phrase = confirm_phrase(instance_id, "discard")
        tty.write(summary.rstrip("\n") + "\n")
        tty.write(f"DISCARD instance {instance_id}: its results are NOT saved (irreversible).\n")
        tty.write("Press Enter alone to keep it.\n")
        tty.write(f"Type '{phrase}' to confirm: ")
        tty.flush()
        typed = tty.readline()
        if not typed:
            raise Refused("no answer on the terminal; nothing approved")
        if not typed.strip():
            raise Declined(f"instance {instance_id} kept: the discard was declined")
        try:
            secret = getpass.getpass("Approval passphrase: ", stream=tty)
        except EOFError:
            raise Refused("no answer on the terminal; nothing approved") from None
        return approve_with_passphrase(
            ledger,
            instance_id,
            typed_instance_id=typed,
            passphrase=secret,
            ttl_seconds=DISCARD_TTL_SECONDS,
            purpose="discard",
        )


def open_tty() -> TextIO:
    """The controlling terminal, or Refused when there is none (no human is at the keyboard).

    Both must hold: stdin is a TTY and /dev/tty opens. Piped input cannot approve."""
    if not sys.stdin.isatty():
        raise Refused("stdin is not a terminal")
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError as exc:
        raise Refused(f"no controlling terminal ({exc.strerror})") from None
    # Unbuffered read+write on a terminal (a buffered "r+" would demand a seekable file), the
    # way getpass opens it; the caller closes it.
    return io.TextIOWrapper(io.FileIO(fd, "r+"), encoding="utf-8", line_buffering=True)


def confirm_meter_stop_on_tty(instance_id: str, action: str) -> bool:
    """After the gate allowed ending a box whose meter stop rgt cannot send (a box reached over
    ssh): tell the human on the terminal exactly what to do, and return True only when they
    type the instance id back to say it is done. Refused when no terminal is at hand."""
    try:
        tty = open_tty()
    except Refused as exc:
        raise Refused(
            f"{exc}; the meter stop of instance {instance_id} is a human's action ({action}): "
            f"run `rgt destroy {instance_id}` on a terminal"
        ) from None
    with tty:
        tty.write(
            f"The gate allows ending instance {instance_id}. rgt cannot do it on this platform; "
            f"do it yourself now:\n    {action}\n"
            "rgt records it as ended only once you confirm here AND the box stops answering "
            "over ssh.\n"
            f"When it is done, type the instance id ({instance_id}) to confirm, or press Enter "
            "to cancel: "
        )
        tty.flush()
        typed = tty.readline().strip()
    return bool(typed) and hmac.compare_digest(typed, instance_id)


def prompt_approval(
    ledger: Ledger,
    instance_id: str,
    *,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    summary: str | None = None,
    read_secret: Callable[[str, TextIO], str] | None = None,
) -> int:
    """Ask on the TTY for the instance id typed back and the passphrase; record the approval.

    Refuses (rgt exit 4) with no TTY, no passphrase configured, while rate-limited, or on a
    wrong answer. Returns the approval id."""
    try:
        tty = open_tty()
    except Refused as exc:
        raise Refused(f"{exc}; {HOW_TO_APPROVE.format(instance=instance_id)}") from None
    with tty:
        if not is_configured():
            raise Refused(
                "no approval passphrase is configured; a human must run `rgt approval init` "
                "in a terminal first"
            )
        wait = wait_remaining(ledger)
        if wait > 0:
            raise Refused(f"too many wrong approval answers; try again in {wait:.0f} s")
        if summary:
            tty.write(summary.rstrip("\n") + "\n")
        tty.write(f"Approve DESTROYING instance {instance_id} (irreversible).\n")
        tty.write("Type the instance id to confirm: ")
        tty.flush()
        typed = tty.readline()
        if not typed:
            raise Refused("no answer on the terminal; nothing approved")
        reader = read_secret or (lambda prompt, stream: getpass.getpass(prompt, stream=stream))
        try:
            secret = reader("Approval passphrase: ", tty)
        except EOFError:  # Ctrl-D at the prompt
            raise Refused("no answer on the terminal; nothing approved") from None
        approval_id = approve_with_passphrase(
            ledger,
            instance_id,
            typed_instance_id=typed,
            passphrase=secret,
            ttl_seconds=ttl_seconds,
        )
        tty.write(
            f"Approved: instance {instance_id} may be destroyed once within "
            f"{ttl_seconds / 60:.0f} min.\n"
        )
        tty.flush()
        return approval_id


def check_approvable(ledger: Ledger, provider: Any, instance_id: str) -> None:
    """Refuse (UsageError, before any prompt) to approve an instance rgt does not know: one the
    ledger has no record of (rented, adopted or pulled through rgt), or one the provider no
    longer has. An approval for an id that does not exist yet would wait, unseen, for the next
    rental to get that id."""
    from rgt.errors import UsageError

    known = (
        ledger.instance(provider.platform, instance_id) is not None
        or ledger.latest_pull(instance_id) is not None
    )
    if not known:
        raise UsageError(
            f"instance {instance_id}: not in rgt's ledger (not rented, adopted or pulled through "
            "rgt); approve only an instance rgt knows (see `rgt ledger`); nothing approved"
        )
    state = provider.show(instance_id).state
    if state == "gone":
        raise UsageError(
            f"instance {instance_id}: the provider reports it gone; there is nothing to "
            "approve; nothing approved"
        )


def ledger_summary(ledger: Ledger, instance_id: str) -> str:
    """What the ledger knows about `instance_id`'s results, shown to the human before they
    approve (local only: the gate re-checks everything against the box at destroy time)."""
    from rgt.progress import human_bytes

    lines = [f"What rgt knows about instance {instance_id}:"]
    pull = ledger.latest_pull(instance_id)
    if pull is None:
        lines.append("  pulled    NOTHING yet: its results exist only on the box")
    else:
        lines.append(
            f"  pulled    {pull.files} files, {human_bytes(pull.bytes_total)} of run "
            f"{pull.run_id} from {pull.remote_root} into {pull.local_dir}"
        )
    verification = ledger.latest_verification(instance_id)
    if verification is None:
        lines.append("  verified  NO")
    else:
        lines.append(
            f"  verified  {verification.local_dir} against manifest sha256 "
            f"{verification.manifest_sha256[:16]}…"
        )
        # The approval names this verification's row (the evidence chain, rgt.gate).
        lines.append(
            f"  approving binds verification #{verification.id}: after another pull or "
            "verify, destroy asks again"
        )
    return "\n".join(lines)


INIT_FAILURE_REASON = "approval init: wrong current passphrase"


def prompt_new_passphrase(ledger: Ledger) -> tuple[str, bytes]:
    """Ask twice on the TTY for a new passphrase, first for the current one when replacing.

    A wrong current passphrase is a guess like a wrong answer to `rgt approve`: recorded in the
    ledger and under the same backoff (one budget for both, on the TTY channel). Returns the new
    passphrase and what approval.json held when the current one was checked, for
    `store_passphrase(replacing=...)`."""
    try:
        tty = open_tty()
    except Refused as exc:
        raise Refused(f"{exc}; run `rgt approval init` yourself in a real terminal") from None
    with tty:
        seen = _current_bytes(approval_path())
        try:
            if seen != NOT_CONFIGURED:
                load_passphrase_hash()  # a broken file says how to start over, before any prompt
                wait = wait_remaining(ledger)
                if wait > 0:
                    raise Refused(
                        f"too many wrong approval answers; try again in {wait:.0f} s; the "
                        "approval passphrase is unchanged"
                    )
                old = getpass.getpass("Current approval passphrase: ", stream=tty)
                if not check_passphrase(old):
                    ledger.record_approval_failure(None, TTY_CHANNEL, INIT_FAILURE_REASON)
                    raise Refused(
                        "wrong current passphrase; the approval passphrase is unchanged "
                        "(the attempt is recorded)"
                    )
            first = getpass.getpass(
                f"New approval passphrase (at least {MIN_PASSPHRASE_CHARS} characters; "
                "never tell it to an agent): ",
                stream=tty,
            )
            second = getpass.getpass("Repeat it: ", stream=tty)
        except EOFError:  # Ctrl-D at a prompt
            raise Refused(
                "no answer on the terminal; the approval passphrase is unchanged"
            ) from None
        if first != second:
            raise UsageError("the two passphrases differ; nothing stored")
        return first, seen
