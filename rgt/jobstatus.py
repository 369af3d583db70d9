"""The job status record the boot hook keeps on the box, and how rgt reads it.

Every start of the boot hook (scripts/onstart.sh.j2, and the sbatch / Kubernetes launchers that
run it) replaces `<profile data_dir>/.rgt/<run_id>/status.json` atomically on every change: the
attempt (the start count), when it started and ended, a heartbeat refreshed while the job runs,
the newest checkpoint seen, and the outcome:

    running      the job runs (or the hook prepares it); the heartbeat says the hook is alive
    succeeded    the job exited 0 and the manifest was written (`manifest: true`)
    failed       the job (or the hook's set-up, or the manifest builder) exited non-zero:
                 `exit_code` and the last lines of output in `log_tail`; or the box failed the
                 health check before the job started: `reason` says `health: ...`
    interrupted  the hook got SIGTERM/SIGINT (a preemption's grace, a scheduler's stop)

A record that still says `running` with a heartbeat older than 3 heartbeats + 60 s is stale: the
hook was killed without warning (SIGKILL, a preemption, a host restart) and nothing runs.

The record's JSON Schema is schemas/job_status.schema.json. This module is stdlib-only and
imports nothing heavy: `rgt poll` reads a record on every call.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Any, NamedTuple

from rgt.errors import CheckFailed, UsageError

STATUS_NAME = "status.json"
SCHEMA = "rgt.job-status/v1"
OUTCOMES = ("running", "succeeded", "failed", "interrupted")
# A record is a few hundred bytes plus at most LOG_TAIL_LINES lines; anything far larger is not
# one rgt wrote, and is refused before parsing.
MAX_STATUS_BYTES = 64 * 1024
LOG_TAIL_LINES = 20
# How long past 3 missed heartbeats a `running` record is still believed: slack for a slow box
# and for the clock difference between the box and this machine.
STALE_SLACK_SECONDS = 60
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# How the boot hook's health check (scripts/_gpu_health.sh.j2) starts a problem line, and so the
# reason of an attempt that failed it.
HEALTH_PREFIX = "health: "
# The job schema's run_id pattern: the run id becomes a path component on the box.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


class JobStatus(NamedTuple):
    """One status record as written on the box (times as the record's UTC text)."""

    run_id: str
    attempt: int
    outcome: str
    started: str
    ended: str | None
    heartbeat: str
    heartbeat_seconds: int
    last_checkpoint: str | None
    exit_code: int | None
    log_tail: list[str]
    manifest: bool
    # Why a failed attempt failed, when the hook knows (`health: ...`); None otherwise.
    reason: str | None = None

    def failed_health_check(self) -> bool:
        """True when the attempt failed the box health check before the job started."""
        return self.outcome == "failed" and (self.reason or "").startswith(HEALTH_PREFIX)

    def heartbeat_age(self, now: float) -> float:
        """Seconds between the record's last heartbeat and `now` (epoch seconds)."""
        return now - utc_seconds(self.heartbeat)

    def stale_after(self) -> float:
        """The heartbeat age beyond which a `running` record is stale."""
        return 3 * self.heartbeat_seconds + STALE_SLACK_SECONDS

    def is_running(self, now: float) -> bool:
        """True when the record says running and its heartbeat is recent enough to believe."""
        return self.outcome == "running" and self.heartbeat_age(now) <= self.stale_after()

    def is_stale(self, now: float) -> bool:
        """True when the record says running but its heartbeat stopped (the hook is dead)."""
        return self.outcome == "running" and not self.is_running(now)

    def to_json(self) -> dict[str, Any]:
        """The record as the box wrote it (with its schema tag)."""
        return {"schema": SCHEMA, **self._asdict()}


def status_remote_dir(profile: Any, run_id: str) -> str:
    """The run's state directory on the box: `<profile data_dir>/.rgt/<run_id>` (the boot hook's
    `$state_dir`; logs, the start count and the status record live there)."""
    if not _RUN_ID.match(run_id):
        raise UsageError(
            f"run id {run_id!r} is not a run id (1-64 characters of A-Z a-z 0-9 . _ -, starting "
            "with a letter or digit)"
        )
    data_dir = str(profile.overrides["data_dir"]).rstrip("/")
    return f"{data_dir}/.rgt/{run_id}"


def status_remote_path(profile: Any, run_id: str) -> str:
    """Where the boot hook keeps run `run_id`'s status record on the box."""
    return f"{status_remote_dir(profile, run_id)}/{STATUS_NAME}"


def utc_seconds(text: str) -> float:
    """Epoch seconds of a record time (`YYYY-MM-DDTHH:MM:SSZ`)."""
    return float(calendar.timegm(time.strptime(text, TIME_FORMAT)))


def parse_status(data: bytes) -> JobStatus:
    """The status record in `data`; CheckFailed (one line naming the field) when it is not a
    record of this schema."""
    if len(data) > MAX_STATUS_BYTES:
        raise CheckFailed(
            f"{STATUS_NAME}: {len(data)} bytes, more than a status record can be "
            f"({MAX_STATUS_BYTES}); not written by rgt's boot hook"
        )
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckFailed(f"{STATUS_NAME}: not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise CheckFailed(f"{STATUS_NAME}: a JSON {type(record).__name__}, expected an object")
    if record.get("schema") != SCHEMA:
        raise CheckFailed(f"{STATUS_NAME}: schema is {record.get('schema')!r}, expected {SCHEMA!r}")
    outcome = _field(record, "outcome", str)
    if outcome not in OUTCOMES:
        raise CheckFailed(f"{STATUS_NAME}: outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    run_id = _field(record, "run_id", str)
    if not _RUN_ID.match(run_id):
        raise CheckFailed(f"{STATUS_NAME}: run_id {run_id!r} is not a run id")
    tail = _field(record, "log_tail", list)
    if len(tail) > LOG_TAIL_LINES or not all(isinstance(line, str) for line in tail):
        raise CheckFailed(
            f"{STATUS_NAME}: log_tail must be at most {LOG_TAIL_LINES} strings, got {tail!r:.80}"
        )
    return JobStatus(
        run_id=run_id,
        attempt=_count(record, "attempt", minimum=1),
        outcome=outcome,
        started=_time(record, "started"),
        ended=_time(record, "ended", optional=True),
        heartbeat=_time(record, "heartbeat"),
        heartbeat_seconds=_count(record, "heartbeat_seconds", minimum=1),
        last_checkpoint=_field(record, "last_checkpoint", str, optional=True),
        exit_code=_field(record, "exit_code", int, optional=True),
        log_tail=list(tail),
        manifest=_field(record, "manifest", bool),
        reason=_field(record, "reason", str, optional=True) if "reason" in record else None,
    )


def _field(record: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    """`record[name]`, of type `kind` (or null when `optional`)."""
    if name not in record:
        raise CheckFailed(f"{STATUS_NAME}: field {name!r} is missing")
    value = record[name]
    if value is None and optional:
        return None
    # bool is an int in Python; a record's true is never a count or an exit code.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        allowed = kind.__name__ + (" or null" if optional else "")
        raise CheckFailed(f"{STATUS_NAME}: {name} is {value!r:.80}, expected {allowed}")
    return value


def _count(record: dict[str, Any], name: str, *, minimum: int) -> int:
    value = _field(record, name, int)
    if value < minimum:
        raise CheckFailed(f"{STATUS_NAME}: {name} is {value}, expected an integer >= {minimum}")
    return int(value)


def _time(record: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = _field(record, name, str, optional=optional)
    if value is None:
        return None
    try:
        if not _TIME.match(value):
            raise ValueError(value)
        utc_seconds(value)
    except ValueError:
        raise CheckFailed(
            f"{STATUS_NAME}: {name} is {value!r:.80}, expected a UTC time YYYY-MM-DDTHH:MM:SSZ"
        ) from None
    return value
