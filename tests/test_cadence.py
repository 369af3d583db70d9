"""`rgt cadence`: Young/Daly W = sqrt(2 * MTBF * C), rounded down to whole steps."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from rgt.cadence import DurationError, format_seconds, parse_duration, young_daly


def _rgt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rgt", "cadence", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3h", 10800.0),
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("2.5min", 150.0),
        ("250ms", 0.25),
        ("90", 90.0),
        ("1d", 86400.0),
        (" 5M ", 300.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "3x", "h", "0s", "-5s", "3h junk", "inf", "nan", "5 s 3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(DurationError, match="duration"):
        parse_duration(text)


def test_young_daly_three_hours_thirty_seconds() -> None:
    cadence = young_daly(3 * 3600, 30)
    # sqrt(2 * 10800 * 30) = sqrt(648000) = 804.98 s
    assert cadence.interval_seconds == pytest.approx(804.984, abs=1e-3)
    assert cadence.interval_steps is None
    # C/W + W/(2 mu) = 30/804.98 + 804.98/21600
    assert cadence.overhead_fraction == pytest.approx(0.0745, abs=1e-4)


def test_young_daly_rounds_down_to_whole_steps() -> None:
    cadence = young_daly(3 * 3600, 30, step_time=2)
    assert cadence.interval_steps == 402  # floor(804.98 / 2)
    assert cadence.interval_seconds == 804.0
    cadence = young_daly(3600, 10, step_time=7)
    # sqrt(72000) = 268.3 s -> 38 whole steps of 7 s = 266 s
    assert (cadence.interval_steps, cadence.interval_seconds) == (38, 266.0)


def test_a_step_longer_than_the_interval_still_checkpoints_every_step() -> None:
    cadence = young_daly(600, 1, step_time=120)  # W = 34.6 s < one step
    assert (cadence.interval_steps, cadence.interval_seconds) == (1, 120.0)


def test_interval_is_the_minimum_of_the_overhead() -> None:
    mtbf, cost = 7200.0, 45.0
    best = young_daly(mtbf, cost).interval_seconds

    def overhead(w: float) -> float:
        return cost / w + w / (2 * mtbf)

    assert overhead(best) <= overhead(best * 0.8)
    assert overhead(best) <= overhead(best * 1.25)
    assert best == pytest.approx(math.sqrt(2 * mtbf * cost))


def test_format_seconds() -> None:
    assert format_seconds(804.98) == "13m 25s"
    assert format_seconds(3725) == "1h 02m 05s"
    assert format_seconds(12.5) == "12.5s"


def test_cli_prints_interval_and_steps() -> None:
    result = _rgt("--mtbf", "3h", "--ckpt-cost", "30s", "--step-time", "2s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "checkpoint every 13m 24s = every 402 steps"


def test_cli_json() -> None:
    result = _rgt("--mtbf", "3h", "--ckpt-cost", "30s", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["interval_seconds"] == pytest.approx(804.984, abs=1e-3)
    assert data["interval_steps"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mtbf", "3x", "--ckpt-cost", "30s"], "--mtbf: cannot read duration '3x'"),
        (["--mtbf", "3h", "--ckpt-cost", "0s"], "--ckpt-cost: duration '0s' must be positive"),
        (["--mtbf", "30s", "--ckpt-cost", "1m"], "must be well below --mtbf"),
        (["--mtbf", "3h"], "required: --ckpt-cost"),
        (["--mtbf", "1e400", "--ckpt-cost", "30s"], "--mtbf: duration '1e400' must be finite"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    result = _rgt(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
