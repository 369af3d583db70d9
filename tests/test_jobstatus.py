"""rgt.jobstatus: the status record's path from the profile, its parser (every malformed field is
one line naming it) and the stale-heartbeat rule. The records the real boot hook writes are
checked against schemas/job_status.schema.json in tests/test_onstart_status.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rgt.errors import CheckFailed, UsageError
from rgt.jobstatus import (
    MAX_STATUS_BYTES,
    STATUS_NAME,
    parse_status,
    status_remote_dir,
    status_remote_path,
    utc_seconds,
)
from rgt.profile import load_profile


def _record(**changes: Any) -> dict[str, Any]:
    record = {
        "schema": "rgt.job-status/v1",
        "run_id": "run-7",
        "attempt": 2,
        "outcome": "running",
        "started": "2026-01-02T03:04:05Z",
        "ended": None,
        "heartbeat": "2026-01-02T03:05:05Z",
        "heartbeat_seconds": 30,
        "last_checkpoint": "step-000035.ckpt",
        "exit_code": None,
        "log_tail": [],
        "manifest": False,
    }
    record.update(changes)
    return record


def _bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def test_path_comes_from_the_profiles_data_dir() -> None:
    vast = load_profile("vastai")
    data_dir = vast.overrides["data_dir"].rstrip("/")
    assert status_remote_path(vast, "run-7") == f"{data_dir}/.rgt/run-7/{STATUS_NAME}"
    lambda_ = load_profile("lambda")
    assert status_remote_dir(lambda_, "r") == f"{lambda_.overrides['data_dir'].rstrip('/')}/.rgt/r"
    for bad in ("../x", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(UsageError, match="is not a run id"):
            status_remote_path(vast, bad)


def test_a_record_parses_and_running_turns_stale_after_three_missed_heartbeats() -> None:
    status = parse_status(_bytes(_record()))
    assert (status.run_id, status.attempt, status.outcome) == ("run-7", 2, "running")
    assert status.last_checkpoint == "step-000035.ckpt"
    beat = utc_seconds("2026-01-02T03:05:05Z")
    limit = 3 * 30 + 60
    assert status.is_running(beat + limit) and not status.is_stale(beat + limit)
    assert not status.is_running(beat + limit + 1) and status.is_stale(beat + limit + 1)
    assert status.heartbeat_age(beat + 10) == 10
    failed = parse_status(
        _bytes(
            _record(outcome="failed", exit_code=2, log_tail=["boom"], ended="2026-01-02T03:06:00Z")
        )
    )
    # A finished record is never running nor stale, however old.
    assert not failed.is_running(beat) and not failed.is_stale(beat + 10**6)
    assert failed.to_json()["schema"] == "rgt.job-status/v1"
    assert parse_status(json.dumps(failed.to_json()).encode()) == failed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "a JSON list, expected an object"),
        (_bytes(_record(schema="other/v9")), "schema is 'other/v9'"),
        (_bytes(_record(outcome="done")), "outcome 'done' is not one of running, succeeded"),
        (_bytes(_record(run_id="../etc")), "run_id '../etc' is not a run id"),
        (_bytes(_record(attempt=0)), "attempt is 0, expected an integer >= 1"),
        (_bytes(_record(attempt=True)), "attempt is True, expected int"),
        (_bytes(_record(exit_code="2")), "exit_code is '2', expected int or null"),
        (_bytes(_record(started="yesterday")), "started is 'yesterday', expected a UTC time"),
        (_bytes(_record(heartbeat="2026-13-40T00:00:00Z")), "heartbeat is '2026-13-40T00:00:00Z'"),
        (_bytes(_record(log_tail=[1])), "log_tail must be at most 20 strings"),
        (_bytes(_record(log_tail=["x"] * 21)), "log_tail must be at most 20 strings"),
        (_bytes(_record(manifest="yes")), "manifest is 'yes', expected bool"),
        (_bytes({k: v for k, v in _record().items() if k != "heartbeat_seconds"}), "missing"),
        (b" " * (MAX_STATUS_BYTES + 1), "more than a status record can be"),
    ],
)
def test_a_malformed_record_is_one_line_naming_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(CheckFailed) as caught:
        parse_status(data)
    assert message in caught.value.message
    assert caught.value.message.startswith(f"{STATUS_NAME}: ")
    assert "\n" not in caught.value.message


def test_the_schema_and_the_parser_agree_on_a_record() -> None:
    import jsonschema

    from rgt.yamlsource import load_schema

    schema = load_schema("job_status.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = [_record(), _record(outcome="failed", exit_code=2, log_tail=["x"], ended=None)]
    for record in good:
        assert not list(validator.iter_errors(record))
        parse_status(_bytes(record))
    for bad in (_record(outcome="done"), _record(attempt=0), _record(extra=1)):
        assert list(validator.iter_errors(bad))
