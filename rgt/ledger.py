"""The ledger: rgt's durable memory of what was rented, pulled, verified, approved and destroyed.

One SQLite database in WAL mode (``rgt.paths.state_dir()/ledger.sqlite3``; ``RGT_STATE_DIR``
moves it). Every write is one ``BEGIN IMMEDIATE`` transaction, so a ``kill -9`` at any instant
leaves either the whole record or none of it, and concurrent writers in other processes queue on
``busy_timeout`` instead of failing. The schema is versioned with ``PRAGMA user_version`` and
migrated forward on open.

The ledger holds evidence, never secrets: no API key, no passphrase, no passphrase hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

from rgt import paths
from rgt.errors import UsageError

LEDGER_FILE = "ledger.sqlite3"
SCHEMA_VERSION = 9
BUSY_TIMEOUT_MS = 15_000
# A destroy claim older than this is abandoned (its process died mid-destroy) and may be re-taken;
# a live destroy finishes well inside it (bounded retries + a confirm poll).
DESTROY_CLAIM_SECONDS = 600.0
# What a launch record says about its create: written 'pending' BEFORE the create request, then
# 'rented' (with the instance, in the same transaction as the instance's row) or 'not-rented'.
LAUNCH_STATUSES = ("pending", "rented", "not-rented")

# Each entry migrates from version (index) to version (index + 1).
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE instances (
        provider TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        label TEXT,
        profile TEXT,
        offer_id TEXT,
        price_per_hour REAL,
        interruptible INTEGER,
        created REAL NOT NULL,
        PRIMARY KEY (provider, instance_id)
    );
    CREATE TABLE instance_events (
        id INTEGER PRIMARY KEY,
        provider TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT,
        at REAL NOT NULL
    );
    CREATE INDEX instance_events_by_instance ON instance_events (instance_id, at);
    CREATE TABLE pulls (
        id INTEGER PRIMARY KEY,
        instance_id TEXT NOT NULL,
        remote_root TEXT NOT NULL,
        local_dir TEXT NOT NULL,
        manifest_sha256 TEXT NOT NULL,
        run_id TEXT,
        files INTEGER NOT NULL,
        bytes_total INTEGER NOT NULL,
        bytes_transferred INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        transport TEXT,
        started REAL NOT NULL,
        finished REAL NOT NULL
    );
    CREATE INDEX pulls_by_instance ON pulls (instance_id, finished);
    CREATE TABLE verifications (
        id INTEGER PRIMARY KEY,
        instance_id TEXT NOT NULL,
        local_dir TEXT NOT NULL,
        manifest_sha256 TEXT NOT NULL,
        run_id TEXT,
        record_sha256 TEXT,
        allow_pickle INTEGER NOT NULL DEFAULT 0,
        detail TEXT,
        created REAL NOT NULL
    );
    CREATE INDEX verifications_by_instance ON verifications (instance_id, created);
    CREATE TABLE approvals (
        id INTEGER PRIMARY KEY,
        instance_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        consumed REAL
    );
    CREATE INDEX approvals_by_instance ON approvals (instance_id, expires);
    CREATE TABLE approval_failures (
        id INTEGER PRIMARY KEY,
        instance_id TEXT,
        channel TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE destroys (
        id INTEGER PRIMARY KEY,
        provider TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        claim_token TEXT NOT NULL UNIQUE,
        pid INTEGER,
        status TEXT NOT NULL CHECK (status IN ('claimed', 'sent', 'confirmed', 'failed')),
        verb TEXT,
        approval_id INTEGER,
        detail TEXT,
        claimed REAL NOT NULL,
        finished REAL
    );
    CREATE INDEX destroys_by_instance ON destroys (instance_id, status);
    """,
    # v2: where the job writes its results, and the exact roster, as launched: the gate binds
    # the pull to them, so pulling some other directory cannot unlock a destroy.
    """
    ALTER TABLE instances ADD COLUMN results_root TEXT;
    ALTER TABLE instances ADD COLUMN roster TEXT;
    """,
    # v3: every launch is recorded as an intent before its create request, so a box whose
    # create answer was lost, or whose recording failed, is never unknown: `rgt sweep` finds
    # the pending intent and resolves it by the label.
    """
    CREATE TABLE launches (
        id INTEGER PRIMARY KEY,
        provider TEXT NOT NULL,
        label TEXT NOT NULL,
        run_id TEXT NOT NULL,
        profile TEXT,
        offer_id TEXT,
        price_per_hour REAL,
        max_price_per_hour REAL,
        interruptible INTEGER,
        results_root TEXT,
        roster TEXT,
        pid INTEGER,
        status TEXT NOT NULL CHECK (status IN ('pending', 'rented', 'not-rented')),
        instance_id TEXT,
        detail TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE INDEX launches_by_status ON launches (provider, status, label);
    """,
    # v4, discard: ending a rental whose results will not be saved. An approval says what it is
    # for (a destroy approval never unlocks a discard, nor the other way round); a meter-stop
    # attempt says whether it is a verified destroy or a discard, why, and what the human was
    # told would be lost.
    """
    ALTER TABLE approvals ADD COLUMN purpose TEXT NOT NULL DEFAULT 'destroy';
    ALTER TABLE destroys ADD COLUMN purpose TEXT NOT NULL DEFAULT 'destroy';
    ALTER TABLE destroys ADD COLUMN reason TEXT;
    ALTER TABLE destroys ADD COLUMN lost TEXT;
    """,
    # v5, attached boxes: a box rgt did not rent through an API (a pod, a lab server, a login
    # node) is reached over ssh under a local id (`ssh-N`); the endpoint and the profile it was
    # attached with live here, its instance row and states in `instances`/`instance_events`.
    """
    CREATE TABLE attached (
        instance_id TEXT PRIMARY KEY,
        number INTEGER NOT NULL UNIQUE,
        provider TEXT NOT NULL,
        profile TEXT NOT NULL,
        user TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        identity_file TEXT,
        name TEXT,
        attached REAL NOT NULL
    );
    """,
    # v6, the evidence chain: a verification names the SHA-256 of the pull row it rests on, a
    # destroy approval the SHA-256 of the verification row it approves (row_sha256), so a row
    # written into the ledger by hand breaks a link the gate recomputes. Rows from before this
    # version have no link (NULL) and cannot count: the gate says which command re-creates them.
    """
    ALTER TABLE verifications ADD COLUMN pull_sha256 TEXT;
    ALTER TABLE approvals ADD COLUMN verification_sha256 TEXT;
    """,
    # v7, runs and their attempts (`rgt run`, rgt.runs): a run is one job request supervised to
    # its end; each attempt rents one instance, and says why it ended. An attempt is written
    # before its launch (like a launch intent), so a supervisor killed mid-launch and started
    # again finds the attempt and adopts its box by the attempt's label instead of renting.
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        profile TEXT NOT NULL,
        job_file TEXT,
        max_price_per_hour REAL NOT NULL,
        budget REAL,
        interruptible INTEGER NOT NULL,
        bid_per_hour REAL,
        status TEXT NOT NULL,
        detail TEXT,
        pid INTEGER,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        label TEXT NOT NULL,
        offer_id TEXT,
        machine_id TEXT,
        price_per_hour REAL,
        instance_id TEXT,
        seed_name TEXT,
        seed_step INTEGER,
        started REAL NOT NULL,
        lost_state TEXT,
        lost_since REAL,
        ended REAL,
        end_reason TEXT,
        detail TEXT,
        UNIQUE (run_id, number)
    );
    """,
    # v8, moving a run to a cheaper offer (`rgt run --move-if-cheaper`): the run keeps its margin,
    # so the command that takes an unsupervised run over repeats it (0: the run never moves).
    # NULL on a run recorded before v8 (rgt did not move runs then).
    """
    ALTER TABLE runs ADD COLUMN move_margin REAL;
    """,
    # v9, a human's no to a discard the supervisor asked for (`rgt run`, a superseded box): kept
    # here, not in the supervisor's memory, so no later supervisor of the run (one that took it
    # over after a kill -9, or a restarted --detach) asks again; `rgt poll RUN_ID` says when.
    # `answer`: 'declined' (the human said no) or 'not-approved' (the answer did not approve it:
    # a mistyped confirmation, a wrong passphrase, no answer); `detail` says which.
    """
    CREATE TABLE discard_declines (
        id INTEGER PRIMARY KEY,
        provider TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        run_id TEXT,
        reason TEXT NOT NULL,
        answer TEXT NOT NULL CHECK (answer IN ('declined', 'not-approved')),
        detail TEXT,
        at REAL NOT NULL
    );
    CREATE INDEX discard_declines_by_instance ON discard_declines (instance_id, at);
    """,
)
# How a human's answer to a discard question did not approve it (the discard_declines table).
DECLINE_ANSWERS = ("declined", "not-approved")
# What an approval or a meter-stop attempt is for.
PURPOSES = ("destroy", "discard")


# Records are NamedTuples, not dataclasses: importing dataclasses (and inspect, ast, dis with it)
# costs `rgt verify` a visible part of its start-up, and these records are plain immutable rows.
class InstanceRecord(NamedTuple):
    """An instance rgt rented (or learned of), with its latest recorded state."""

    provider: str
    instance_id: str
    label: str | None
    profile: str | None
    offer_id: str | None
    price_per_hour: float | None
    interruptible: bool | None
    created: float
    last_state: str | None
    last_state_at: float | None
    results_root: str | None = None  # absolute box path the job writes results under
    roster: list[str] | None = None  # the job's exact top-level result directories


class PullRecord(NamedTuple):
    """A completed pull: which manifest (by SHA-256) was copied from where to where."""

    id: int
    instance_id: str
    remote_root: str
    local_dir: str
    manifest_sha256: str
    run_id: str | None
    files: int
    bytes_total: int
    bytes_transferred: int
    attempts: int
    transport: str | None
    started: float
    finished: float


class VerificationRecord(NamedTuple):
    """A passed verification of a local pull, bound to the manifest SHA-256 it checked."""

    id: int
    instance_id: str
    local_dir: str
    manifest_sha256: str
    run_id: str | None
    record_sha256: str | None
    allow_pickle: bool
    detail: dict[str, Any]
    created: float
    pull_sha256: str | None = None  # row_sha256 of the pull it verified; None: unchained


class DiscardDeclineRecord(NamedTuple):
    """A discard a supervisor asked a human for, and the answer that did not approve it."""

    id: int
    provider: str
    instance_id: str
    run_id: str | None
    reason: str  # the discard reason asked about (rgt.discard.REASONS)
    answer: str  # one of DECLINE_ANSWERS
    detail: str | None
    at: float


class ApprovalRecord(NamedTuple):
    """A human approval to destroy one instance: single-use, expiring."""

    id: int
    instance_id: str
    channel: str
    created: float
    expires: float
    consumed: float | None
    purpose: str = "destroy"  # or "discard" (one of PURPOSES)
    # row_sha256 of the verification a destroy approval approves; None: unchained.
    verification_sha256: str | None = None

    def usable(self, now: float) -> bool:
        """True while unconsumed and unexpired."""
        return self.consumed is None and now < self.expires


class DestroyRecord(NamedTuple):
    """One destroy attempt: claimed → sent → confirmed (or failed)."""

    id: int
    provider: str
    instance_id: str
    claim_token: str
    pid: int | None
    status: str
    verb: str | None
    approval_id: int | None
    detail: str | None
    claimed: float
    finished: float | None
    purpose: str = "destroy"  # "discard": ended without a verified pull, for `reason`
    reason: str | None = None
    lost: str | None = None  # JSON: what the human was told the discard loses


class LaunchRecord(NamedTuple):
    """One launch: the intent written before the create request, and what came of it."""

    id: int
    provider: str
    label: str
    run_id: str
    profile: str | None
    offer_id: str | None
    price_per_hour: float | None  # what the rental was to cost ($/h: the offer or the bid)
    max_price_per_hour: float | None
    interruptible: bool | None
    results_root: str | None
    roster: list[str] | None
    pid: int | None  # the launching process (a pending launch whose process lives is running)
    status: str  # one of LAUNCH_STATUSES
    instance_id: str | None
    detail: str | None
    created: float
    updated: float


class AttachedBox(NamedTuple):
    """A box attached with `rgt attach`: reached over ssh, its meter stopped by a human."""

    instance_id: str  # the local id, `ssh-N`
    provider: str  # the profile's platform (the `instances` row's provider)
    profile: str  # as attached: a bundled profile name (`runpod`, `china:matpool`) or a file
    user: str
    host: str
    port: int
    identity_file: str | None
    name: str | None
    attached: float


# -- the evidence chain ------------------------------------------------------------------------
# The canonical bytes of a chained row: the one definition both the writer (record_verification,
# record_approval: the link, inside the transaction that writes the row) and the reader (the
# gate, recomputing it) use. The fields are listed, not taken from the record, so a column
# added by a later schema version does not change the bytes of rows already linked.
CHAIN_FORMAT = "rgt.ledger-row/v1"
CHAINED_FIELDS: dict[str, tuple[str, ...]] = {
    "pulls": (
        "id", "instance_id", "remote_root", "local_dir", "manifest_sha256", "run_id", "files",
        "bytes_total", "bytes_transferred", "attempts", "transport", "started", "finished",
    ),
    "verifications": (
        "id", "instance_id", "local_dir", "manifest_sha256", "run_id", "record_sha256",
        "allow_pickle", "detail", "created", "pull_sha256",
    ),
}  # fmt: skip


def row_bytes(record: PullRecord | VerificationRecord) -> bytes:
    """The canonical bytes of a pull or verification row: stable JSON (sorted keys, no
    whitespace, ASCII) of its chained fields, tagged with the format and the table."""
    table = "pulls" if isinstance(record, PullRecord) else "verifications"
    values = record._asdict()
    document = {
        "format": CHAIN_FORMAT,
        "table": table,
        "row": {name: values[name] for name in CHAINED_FIELDS[table]},
    }
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def row_sha256(record: PullRecord | VerificationRecord) -> str:
    """SHA-256 (hex) of `row_bytes(record)`: what the next row of the chain names."""
    return hashlib.sha256(row_bytes(record)).hexdigest()


class LedgerError(UsageError):
    """The ledger file is unusable (corrupt, newer schema, not a database): a bad input file,
    reported in one line (exit 2), never as an internal error."""


def default_path() -> Path:
    """Where the ledger lives: ``$RGT_STATE_DIR/ledger.sqlite3`` or the platform state dir."""
    return paths.state_dir() / LEDGER_FILE


def _switch_to_wal(db: sqlite3.Connection) -> str:
    """Put the ledger in WAL mode (a no-op once it is) and return the mode SQLite reports.

    While another connection is creating the same new ledger, SQLite answers "database is
    locked" at once instead of waiting in its busy handler (10 of 100 trials with 4 threads
    opening a fresh ledger together; a supervisor and its caller do that): retry within the
    busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Ledger:
    """A connection to the ledger. Cheap to open; use one per thread/process."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str | None = None) -> Ledger:
        """Open (creating and migrating if needed) the ledger at `path` or the default place."""
        target = Path(path) if path is not None else default_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
            db = sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = _switch_to_wal(db)
            if str(mode).lower() != "wal":
                raise LedgerError(f"{target}: could not switch the ledger to WAL (got {mode!r})")
            # FULL: a committed transaction survives power loss, not only a process crash.
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            ledger = cls(db, target)
            ledger._migrate()
        except sqlite3.OperationalError as exc:
            # The file may be sound: SQLite could not write beside it (its -wal/-shm files).
            raise LedgerError(
                f"{target}: cannot open the ledger ({exc}); is its disk full or read-only?"
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{target}: not a usable rgt ledger ({exc})") from exc
        _restrict_mode(target)
        return ledger

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: schema version {version} is newer than this rgt understands "
                    f"({SCHEMA_VERSION}); upgrade rgt"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _split_sql(_MIGRATIONS[step]):
                    db.execute(statement)
                # PRAGMA user_version is transactional in SQLite: it commits with the DDL.
                db.execute(f"PRAGMA user_version = {step + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: takes the write lock up front, so a
        read-then-write inside it cannot race another process)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed (disk full) can leave the transaction open: end it, so the
            # write is wholly absent and this connection stays usable.
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        """The schema version stored in the file."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def integrity_check(self) -> str:
        """SQLite's own integrity check: ``"ok"`` when the file is sound."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # -- instances -----------------------------------------------------------------------------

    def record_instance(
        self,
        provider: str,
        instance_id: str,
        *,
        label: str | None = None,
        profile: str | None = None,
        offer_id: str | None = None,
        price_per_hour: float | None = None,
        interruptible: bool | None = None,
        state: str | None = None,
        results_root: str | None = None,
        roster: Sequence[str] | None = None,
        now: float | None = None,
    ) -> None:
        """Remember a rented instance (idempotent: a second call updates the known fields).

        `results_root` and `roster` (from the job request) let the gate insist that the pull it
        is shown is of the job's results, not of some other directory on the box."""
        at = _now(now)
        with self.transaction() as db:
            _upsert_instance(
                db,
                provider,
                str(instance_id),
                label=label,
                profile=profile,
                offer_id=offer_id,
                price_per_hour=price_per_hour,
                interruptible=interruptible,
                state=state,
                results_root=results_root,
                roster=roster,
                at=at,
            )

    def record_state(
        self,
        provider: str,
        instance_id: str,
        state: str,
        *,
        detail: str | None = None,
        now: float | None = None,
    ) -> None:
        """Append one observed state (running, stopped, gone, ...) to the instance's history."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO instance_events (provider, instance_id, state, detail, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (provider, str(instance_id), state, detail, _now(now)),
            )

    def instances(self, provider: str | None = None) -> list[InstanceRecord]:
        """Every known instance with its latest recorded state, oldest first."""
        sql = """
            SELECT i.*, e.state AS last_state, e.at AS last_state_at
            FROM instances i
            LEFT JOIN instance_events e ON e.id = (
                SELECT id FROM instance_events
                WHERE provider = i.provider AND instance_id = i.instance_id
                ORDER BY at DESC, id DESC LIMIT 1)
        """
        args: tuple[Any, ...] = ()
        if provider is not None:
            sql += " WHERE i.provider = ?"
            args = (provider,)
        sql += " ORDER BY i.created, i.instance_id"
        return [
            InstanceRecord(
                provider=row["provider"],
                instance_id=row["instance_id"],
                label=row["label"],
                profile=row["profile"],
                offer_id=row["offer_id"],
                price_per_hour=row["price_per_hour"],
                interruptible=None if row["interruptible"] is None else bool(row["interruptible"]),
                created=row["created"],
                last_state=row["last_state"],
                last_state_at=row["last_state_at"],
                results_root=row["results_root"],
                roster=None if row["roster"] is None else list(json.loads(row["roster"])),
            )
            for row in self._db.execute(sql, args)
        ]

    def instance(self, provider: str, instance_id: str) -> InstanceRecord | None:
        """One known instance, or None when rgt has no record of it."""
        for record in self.instances(provider):
            if record.instance_id == str(instance_id):
                return record
        return None

    def state_history(self, instance_id: str) -> list[tuple[float, str, str | None]]:
        """(time, state, detail) for one instance, oldest first."""
        return [
            (row["at"], row["state"], row["detail"])
            for row in self._db.execute(
                "SELECT at, state, detail FROM instance_events WHERE instance_id = ? "
                "ORDER BY at, id",
                (str(instance_id),),
            )
        ]

    # -- launches ------------------------------------------------------------------------------

    def record_launch_intent(
        self,
        provider: str,
        *,
        label: str,
        run_id: str,
        profile: str | None,
        offer_id: str | None,
        price_per_hour: float | None,
        max_price_per_hour: float | None,
        interruptible: bool,
        results_root: str | None,
        roster: Sequence[str] | None,
        now: float | None = None,
    ) -> int:
        """Write a 'pending' launch BEFORE its create request; returns its id.

        If this fails, nothing may be rented. Once it is written, a box the create rents can
        never go unrecorded: `record_launch_rented` completes it, or `rgt sweep` finds the
        pending launch and resolves it by `label`."""
        at = _now(now)
        with self.transaction() as db:
            cursor = db.execute(
                """
                INSERT INTO launches (provider, label, run_id, profile, offer_id, price_per_hour,
                                      max_price_per_hour, interruptible, results_root, roster,
                                      pid, status, created, updated)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)
                """,
                (
                    provider,
                    label,
                    run_id,
                    profile,
                    offer_id,
                    price_per_hour,
                    max_price_per_hour,
                    int(interruptible),
                    results_root,
                    None if roster is None else json.dumps(list(roster)),
                    os.getpid(),
                    at,
                    at,
                ),
            )
            return int(cursor.lastrowid or 0)

    def record_launch_rented(
        self,
        launch_id: int,
        instance_id: str,
        *,
        state: str | None,
        label: str | None = None,
        price_per_hour: float | None = None,
        interruptible: bool | None = None,
        detail: str | None = None,
        now: float | None = None,
    ) -> None:
        """The launch rented `instance_id`: the launch, every other pending launch of its label
        (an earlier interrupted one rented the same box), and the instance's row with the
        launch's facts (offer, price, results root, roster), in ONE transaction.

        `price_per_hour` and `interruptible` override the launch's (an adopted box's own)."""
        at = _now(now)
        with self.transaction() as db:
            row = db.execute("SELECT * FROM launches WHERE id = ?", (int(launch_id),)).fetchone()
            if row is None:
                raise ValueError(f"no launch {launch_id} in the ledger")
            launch = _launch_record(row)
            db.execute(
                "UPDATE launches SET status = 'rented', instance_id = ?, "
                "detail = COALESCE(?, detail), updated = ? "
                "WHERE provider = ? AND label = ? AND (id = ? OR status = 'pending')",
                (str(instance_id), detail, at, launch.provider, launch.label, launch.id),
            )
            _upsert_instance(
                db,
                launch.provider,
                str(instance_id),
                label=label or launch.label,
                profile=launch.profile,
                offer_id=launch.offer_id,
                price_per_hour=price_per_hour
                if price_per_hour is not None
                else launch.price_per_hour,
                interruptible=interruptible if interruptible is not None else launch.interruptible,
                state=state,
                results_root=launch.results_root,
                roster=launch.roster,
                at=at,
            )

    def record_launch_outcome(
        self, launch_id: int, status: str, *, detail: str, now: float | None = None
    ) -> None:
        """Close a launch as 'not-rented' (the create was refused before it could rent, or no
        box carries its label), or keep it 'pending' with a new `detail`; either way its
        process is done with it (`rgt sweep` no longer counts it as in progress)."""
        if status not in ("pending", "not-rented"):
            raise ValueError(f"launch status {status!r}: use record_launch_rented for 'rented'")
        with self.transaction() as db:
            db.execute(
                # pid cleared: the launching process is done with this launch.
                "UPDATE launches SET status = ?, detail = ?, updated = ?, pid = NULL "
                "WHERE id = ? AND status = 'pending'",
                (status, detail, _now(now), int(launch_id)),
            )

    def launches(
        self, provider: str | None = None, *, status: str | None = None
    ) -> list[LaunchRecord]:
        """Launches (of one provider, with one status, or all), oldest first."""
        sql = "SELECT * FROM launches WHERE 1 = 1"
        args: list[Any] = []
        if provider is not None:
            sql += " AND provider = ?"
            args.append(provider)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return [
            _launch_record(row) for row in self._db.execute(sql + " ORDER BY created, id", args)
        ]

    def launch(self, launch_id: int) -> LaunchRecord | None:
        """One launch by id, or None."""
        row = self._db.execute("SELECT * FROM launches WHERE id = ?", (int(launch_id),)).fetchone()
        return None if row is None else _launch_record(row)

    # -- pulls and verifications ---------------------------------------------------------------

    def record_pull(
        self,
        instance_id: str,
        *,
        remote_root: str,
        local_dir: Path | str,
        manifest_sha256: str,
        run_id: str | None,
        files: int,
        bytes_total: int,
        bytes_transferred: int,
        attempts: int,
        transport: str | None,
        started: float,
        now: float | None = None,
    ) -> int:
        """Record a completed pull; returns its id."""
        with self.transaction() as db:
            cursor = db.execute(
                """
                INSERT INTO pulls (instance_id, remote_root, local_dir, manifest_sha256, run_id,
                                   files, bytes_total, bytes_transferred, attempts, transport,
                                   started, finished)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    str(instance_id),
                    remote_root,
                    str(Path(local_dir).resolve()),
                    manifest_sha256,
                    run_id,
                    files,
                    bytes_total,
                    bytes_transferred,
                    attempts,
                    transport,
                    started,
                    _now(now),
                ),
            )
            return int(cursor.lastrowid or 0)

    def _oldest_first(self, table: str, order: str, instance_id: str | None) -> list[sqlite3.Row]:
        """Every row of `table` (or only `instance_id`'s), oldest first by `order`, then id.

        `table` and `order` are this module's own names, never input."""
        if instance_id is None:
            return self._db.execute(f"SELECT * FROM {table} ORDER BY {order}, id").fetchall()
        return self._db.execute(
            f"SELECT * FROM {table} WHERE instance_id = ? ORDER BY {order}, id",
            (str(instance_id),),
        ).fetchall()

    def latest_pull(self, instance_id: str) -> PullRecord | None:
        """The most recent completed pull of this instance."""
        row = self._db.execute(
            "SELECT * FROM pulls WHERE instance_id = ? ORDER BY finished DESC, id DESC LIMIT 1",
            (str(instance_id),),
        ).fetchone()
        return None if row is None else PullRecord(**dict(row))

    def pulls(self, instance_id: str | None = None) -> list[PullRecord]:
        """Completed pulls (of one instance, or all), oldest first."""
        return [
            PullRecord(**dict(row)) for row in self._oldest_first("pulls", "finished", instance_id)
        ]

    def record_verification(
        self,
        instance_id: str,
        *,
        local_dir: Path | str,
        manifest_sha256: str,
        run_id: str | None,
        record_sha256: str | None = None,
        allow_pickle: bool = False,
        detail: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> int:
        """Record a PASSED verification of `local_dir` against the manifest with this SHA-256.

        `record_sha256` is the SHA-256 of the PULL_VERIFIED.json written then; `detail` is small
        JSON-able evidence (e.g. the stat fingerprint of the verified files).

        The row names the pull it rests on (`pull_sha256`: row_sha256 of the latest pull of
        this instance into `local_dir`, when that pull copied this manifest; else None, and the
        gate will not count it), read in the same transaction that writes it."""
        folder = str(Path(local_dir).resolve())
        with self.transaction() as db:
            pull = db.execute(
                "SELECT * FROM pulls WHERE instance_id = ? AND local_dir = ? "
                "ORDER BY finished DESC, id DESC LIMIT 1",
                (str(instance_id), folder),
            ).fetchone()
            pull_sha256 = None
            if pull is not None and pull["manifest_sha256"] == manifest_sha256:
                pull_sha256 = row_sha256(PullRecord(**dict(pull)))
            cursor = db.execute(
                """
                INSERT INTO verifications (instance_id, local_dir, manifest_sha256, run_id,
                                           record_sha256, allow_pickle, detail, created,
                                           pull_sha256)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    str(instance_id),
                    folder,
                    manifest_sha256,
                    run_id,
                    record_sha256,
                    int(allow_pickle),
                    json.dumps(detail or {}, sort_keys=True),
                    _now(now),
                    pull_sha256,
                ),
            )
            return int(cursor.lastrowid or 0)

    def latest_verification(self, instance_id: str) -> VerificationRecord | None:
        """The most recent passed verification for this instance."""
        row = self._db.execute(_LATEST_VERIFICATION, (str(instance_id),)).fetchone()
        return None if row is None else _verification(row)

    # -- approvals -----------------------------------------------------------------------------

    def record_approval(
        self,
        instance_id: str,
        channel: str,
        ttl_seconds: float,
        *,
        purpose: str = "destroy",
        now: float | None = None,
    ) -> int:
        """Record a human approval to destroy `instance_id`, valid for `ttl_seconds`, single-use.

        Call this only after the human answered on a channel an agent cannot fill in (the TTY
        passphrase prompt, ``"tty"``; an MCP elicitation answered in the client UI,
        ``"mcp-elicitation"``). Returns the approval id.

        A destroy approval names the verification it approves (`verification_sha256`:
        row_sha256 of the instance's latest verification, read in the same transaction; None
        when there is none yet, and the gate will not count it once one exists)."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if purpose not in PURPOSES:
            raise ValueError(f"purpose {purpose!r} is not one of {PURPOSES}")
        at = _now(now)
        with self.transaction() as db:
            approves = None
            if purpose == "destroy":
                verification = db.execute(_LATEST_VERIFICATION, (str(instance_id),)).fetchone()
                if verification is not None:
                    approves = row_sha256(_verification(verification))
            cursor = db.execute(
                "INSERT INTO approvals (instance_id, channel, created, expires, consumed, purpose, "
                "verification_sha256) VALUES (?, ?, ?, ?, NULL, ?, ?)",
                (str(instance_id), channel, at, at + ttl_seconds, purpose, approves),
            )
            return int(cursor.lastrowid or 0)

    def usable_approval(
        self, instance_id: str, *, now: float | None = None
    ) -> ApprovalRecord | None:
        """The newest unexpired, unconsumed destroy approval for exactly this instance id
        (a discard approval is only ever used by id, by the call that just obtained it)."""
        row = self._db.execute(
            "SELECT * FROM approvals WHERE instance_id = ? AND consumed IS NULL AND expires > ? "
            "AND purpose = 'destroy' ORDER BY created DESC, id DESC LIMIT 1",
            (str(instance_id), _now(now)),
        ).fetchone()
        return None if row is None else ApprovalRecord(**dict(row))

    def approval(self, approval_id: int) -> ApprovalRecord | None:
        """One approval by id (whatever its instance or state), or None."""
        row = self._db.execute(
            "SELECT * FROM approvals WHERE id = ?", (int(approval_id),)
        ).fetchone()
        return None if row is None else ApprovalRecord(**dict(row))

    def approvals(self, instance_id: str | None = None) -> list[ApprovalRecord]:
        """Every approval (of one instance, or all), oldest first."""
        return [
            ApprovalRecord(**dict(row))
            for row in self._oldest_first("approvals", "created", instance_id)
        ]

    def consume_approval(self, approval_id: int, *, now: float | None = None) -> bool:
        """Mark an approval used. False if it was already consumed or has expired (a race lost)."""
        at = _now(now)
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE approvals SET consumed = ? "
                "WHERE id = ? AND consumed IS NULL AND expires > ?",
                (at, approval_id, at),
            )
            return cursor.rowcount == 1

    def spend_approvals(
        self, instance_id: str, *, only: int | None = None, now: float | None = None
    ) -> list[int]:
        """Mark the usable approvals of `instance_id` used (just approval `only`, when given),
        in one transaction; returns their ids. A destroy attempt that the gate refused spends
        them: an approval is good for one attempt, so a human who approved a box that then
        failed the gate is asked again."""
        at = _now(now)
        with self.transaction() as db:
            rows = db.execute(
                "SELECT id FROM approvals WHERE instance_id = ? AND consumed IS NULL "
                "AND expires > ? AND (id = ? OR (? IS NULL AND purpose = 'destroy')) ORDER BY id",
                (str(instance_id), at, only, only),
            ).fetchall()
            ids = [int(row["id"]) for row in rows]
            db.executemany("UPDATE approvals SET consumed = ? WHERE id = ?", [(at, i) for i in ids])
        return ids

    def record_approval_failure(
        self, instance_id: str | None, channel: str, reason: str, *, now: float | None = None
    ) -> None:
        """Record a failed approval attempt (wrong passphrase, mistyped id, ...)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO approval_failures (instance_id, channel, reason, at) "
                "VALUES (?, ?, ?, ?)",
                (None if instance_id is None else str(instance_id), channel, reason, _now(now)),
            )

    def recent_approval_failures(self, channel: str = "tty") -> tuple[int, float | None]:
        """(count, time of the last one) of failures on `channel` since its last success."""
        last_ok = self._db.execute(
            "SELECT MAX(created) FROM approvals WHERE channel = ?", (channel,)
        ).fetchone()[0]
        row = self._db.execute(
            "SELECT COUNT(*), MAX(at) FROM approval_failures WHERE channel = ? AND at > ?",
            (channel, last_ok if last_ok is not None else float("-inf")),
        ).fetchone()
        return int(row[0]), row[1]

    def approval_failures(self) -> list[dict[str, Any]]:
        """Every recorded failed approval attempt, oldest first."""
        return [
            dict(row) for row in self._db.execute("SELECT * FROM approval_failures ORDER BY at, id")
        ]

    # -- discard declines ----------------------------------------------------------------------

    def record_discard_declined(
        self,
        provider: str,
        instance_id: str,
        *,
        run_id: str | None,
        reason: str,
        answer: str,
        detail: str | None = None,
        now: float | None = None,
    ) -> None:
        """Record that a human asked to discard `instance_id` for `reason` did not approve it
        (`answer`: one of DECLINE_ANSWERS)."""
        if answer not in DECLINE_ANSWERS:
            raise ValueError(f"answer {answer!r}: allowed are {', '.join(DECLINE_ANSWERS)}")
        with self.transaction() as db:
            db.execute(
                "INSERT INTO discard_declines (provider, instance_id, run_id, reason, answer, "
                "detail, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (provider, str(instance_id), run_id, reason, answer, detail, _now(now)),
            )

    def discard_declines(self, instance_id: str | None = None) -> list[DiscardDeclineRecord]:
        """Discards a human did not approve when a supervisor asked (of one instance, or all),
        oldest first."""
        return [
            DiscardDeclineRecord(**dict(row))
            for row in self._oldest_first("discard_declines", "at", instance_id)
        ]

    # -- destroys ------------------------------------------------------------------------------

    def claim_destroy(
        self,
        provider: str,
        instance_id: str,
        *,
        abandon_unfinished: bool = False,
        purpose: str = "destroy",
        reason: str | None = None,
        now: float | None = None,
    ) -> str | None:
        """Take the exclusive right to destroy `instance_id`; returns a claim token, or None when
        another live claim holds it or the instance is already confirmed destroyed.

        The check and the insert run in one BEGIN IMMEDIATE transaction, so of two processes
        racing here exactly one gets a token. `abandon_unfinished`: the caller holds the
        per-instance destroy lock, so an unfinished claim can only be one whose process died
        (kill -9, power loss); it is marked failed and taken over at once instead of blocking
        for DESTROY_CLAIM_SECONDS. Safe: the gate re-checks everything after the claim."""
        at = _now(now)
        token = os.urandom(16).hex()
        with self.transaction() as db:
            if abandon_unfinished:
                db.execute(
                    "UPDATE destroys SET status = 'failed', finished = ?, "
                    "detail = COALESCE(detail || '; ', '') || 'abandoned: its process died' "
                    "WHERE instance_id = ? AND status IN ('claimed', 'sent')",
                    (at, str(instance_id)),
                )
            blocking = db.execute(
                "SELECT 1 FROM destroys WHERE instance_id = ? AND ("
                " status = 'confirmed' OR (status IN ('claimed', 'sent') AND claimed > ?))",
                (str(instance_id), at - DESTROY_CLAIM_SECONDS),
            ).fetchone()
            if blocking is not None:
                return None
            db.execute(
                "INSERT INTO destroys (provider, instance_id, claim_token, pid, status, claimed, "
                "purpose, reason) VALUES (?, ?, ?, ?, 'claimed', ?, ?, ?)",
                (provider, str(instance_id), token, os.getpid(), at, purpose, reason),
            )
        return token

    def update_destroy(
        self,
        claim_token: str,
        status: str,
        *,
        verb: str | None = None,
        approval_id: int | None = None,
        detail: str | None = None,
        lost: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Advance a destroy claim: 'sent' (request made), 'confirmed' (gone), 'failed'.
        `lost`: for a discard, what the human was told it loses (kept as JSON)."""
        finished = _now(now) if status in ("confirmed", "failed") else None
        with self.transaction() as db:
            db.execute(
                "UPDATE destroys SET status = ?, verb = COALESCE(?, verb), "
                "approval_id = COALESCE(?, approval_id), detail = COALESCE(?, detail), "
                "lost = COALESCE(?, lost), finished = COALESCE(?, finished) "
                "WHERE claim_token = ?",
                (
                    status,
                    verb,
                    approval_id,
                    detail,
                    None if lost is None else json.dumps(lost, sort_keys=True),
                    finished,
                    claim_token,
                ),
            )
            if status == "confirmed":
                row = db.execute(
                    "SELECT provider, instance_id, purpose, reason FROM destroys "
                    "WHERE claim_token = ?",
                    (claim_token,),
                ).fetchone()
                how = (
                    f"discarded by rgt ({row['reason']})"
                    if row["purpose"] == "discard"
                    else "destroyed by rgt"
                )
                db.execute(
                    "INSERT INTO instance_events (provider, instance_id, state, detail, at) "
                    "VALUES (?, ?, 'gone', ?, ?)",
                    (row["provider"], row["instance_id"], how, _now(now)),
                )

    # -- attached boxes (rgt.providers.ssh) ------------------------------------------------------

    def attach_box(
        self,
        provider: str,
        profile: str,
        *,
        user: str,
        host: str,
        port: int,
        identity_file: str | None = None,
        name: str | None = None,
        id_prefix: str = "ssh-",
        now: float | None = None,
    ) -> tuple[str, bool]:
        """Record a box reached over ssh under the next local id (`ssh-1`, `ssh-2`, ...), with
        its instance row; (id, created). Attaching the same endpoint with the same profile and
        name again returns the existing id (created False), unless that box was destroyed."""
        at = _now(now)
        with self.transaction() as db:
            for row in db.execute(
                "SELECT instance_id FROM attached WHERE provider = ? AND profile = ? AND user = ? "
                "AND host = ? AND port = ? AND name IS ? ORDER BY number",
                (provider, profile, user, host, int(port), name),
            ):
                ended = db.execute(
                    "SELECT 1 FROM destroys WHERE instance_id = ? AND status = 'confirmed'",
                    (row["instance_id"],),
                ).fetchone()
                if ended is None:
                    return str(row["instance_id"]), False
            number = int(db.execute("SELECT COALESCE(MAX(number), 0) FROM attached").fetchone()[0])
            instance_id = f"{id_prefix}{number + 1}"
            db.execute(
                "INSERT INTO attached (instance_id, number, provider, profile, user, host, port, "
                "identity_file, name, attached) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    instance_id,
                    number + 1,
                    provider,
                    profile,
                    user,
                    host,
                    int(port),
                    identity_file,
                    name,
                    at,
                ),
            )
            _upsert_instance(
                db,
                provider,
                instance_id,
                label=None,
                profile=profile,
                offer_id=None,
                price_per_hour=None,
                interruptible=None,
                state="running",
                results_root=None,
                roster=None,
                at=at,
            )
        return instance_id, True

    def attached_box(self, instance_id: str) -> AttachedBox | None:
        """The attached box with local id `instance_id`, or None."""
        row = self._db.execute(
            "SELECT * FROM attached WHERE instance_id = ?", (str(instance_id),)
        ).fetchone()
        return None if row is None else _attached(row)

    def attached_boxes(self, provider: str | None = None) -> list[AttachedBox]:
        """Every attached box (of one platform), in the order they were attached."""
        sql = "SELECT * FROM attached"
        args: tuple[Any, ...] = ()
        if provider is not None:
            sql += " WHERE provider = ?"
            args = (provider,)
        return [_attached(row) for row in self._db.execute(sql + " ORDER BY number", args)]

    def destroys(self, instance_id: str | None = None) -> list[DestroyRecord]:
        """Destroy attempts (of one instance, or all), oldest first."""
        return [
            DestroyRecord(**dict(row))
            for row in self._oldest_first("destroys", "claimed", instance_id)
        ]

    def history(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        """Everything the ledger knows, as one time-ordered list of small dicts (for display)."""
        events: list[dict[str, Any]] = []
        where = "" if instance_id is None else " WHERE instance_id = ?"
        args: Sequence[Any] = () if instance_id is None else (str(instance_id),)
        for table, at_col in (
            ("instance_events", "at"),
            ("pulls", "finished"),
            ("verifications", "created"),
            ("approvals", "created"),
            ("approval_failures", "at"),
            ("destroys", "claimed"),
            ("launches", "created"),
            ("discard_declines", "at"),
        ):
            for row in self._db.execute(f"SELECT * FROM {table}{where}", args):
                item = dict(row)
                item["kind"] = table
                item["at"] = item[at_col]
                events.append(item)
        events.sort(key=lambda item: (item["at"], item["kind"]))
        return events


def _upsert_instance(
    db: sqlite3.Connection,
    provider: str,
    instance_id: str,
    *,
    label: str | None,
    profile: str | None,
    offer_id: str | None,
    price_per_hour: float | None,
    interruptible: bool | None,
    state: str | None,
    results_root: str | None,
    roster: Sequence[str] | None,
    at: float,
) -> None:
    """Insert or update an instance's row (known fields win over None), plus its first or
    next observed state; inside the caller's transaction."""
    db.execute(
        """
        INSERT INTO instances (provider, instance_id, label, profile, offer_id,
                               price_per_hour, interruptible, created, results_root,
                               roster)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (provider, instance_id) DO UPDATE SET
            label = COALESCE(excluded.label, label),
            profile = COALESCE(excluded.profile, profile),
            offer_id = COALESCE(excluded.offer_id, offer_id),
            price_per_hour = COALESCE(excluded.price_per_hour, price_per_hour),
            interruptible = COALESCE(excluded.interruptible, interruptible),
            results_root = COALESCE(excluded.results_root, results_root),
            roster = COALESCE(excluded.roster, roster)
        """,
        (
            provider,
            instance_id,
            label,
            profile,
            offer_id,
            price_per_hour,
            None if interruptible is None else int(interruptible),
            at,
            results_root,
            None if roster is None else json.dumps(list(roster)),
        ),
    )
    if state is not None:
        db.execute(
            "INSERT INTO instance_events (provider, instance_id, state, detail, at) "
            "VALUES (?, ?, ?, NULL, ?)",
            (provider, instance_id, state, at),
        )


# The verification the gate holds as an instance's latest (and a destroy approval approves).
_LATEST_VERIFICATION = (
    "SELECT * FROM verifications WHERE instance_id = ? ORDER BY created DESC, id DESC LIMIT 1"
)


def _verification(row: sqlite3.Row) -> VerificationRecord:
    data = dict(row)
    data["allow_pickle"] = bool(data["allow_pickle"])
    data["detail"] = json.loads(data["detail"] or "{}")
    return VerificationRecord(**data)


def _attached(row: sqlite3.Row) -> AttachedBox:
    data = dict(row)
    data.pop("number")
    return AttachedBox(**data)


def _launch_record(row: sqlite3.Row) -> LaunchRecord:
    data = dict(row)
    data["interruptible"] = None if data["interruptible"] is None else bool(data["interruptible"])
    data["roster"] = None if data["roster"] is None else list(json.loads(data["roster"]))
    return LaunchRecord(**data)


def _split_sql(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)


def _restrict_mode(path: Path) -> None:
    # The ledger is private to the user (it names instances and local paths).
    with suppress(OSError):
        os.chmod(path, 0o600)
