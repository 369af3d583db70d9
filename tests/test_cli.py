"""The `rgt` entry point itself: help, version, usage errors."""

from __future__ import annotations

import subprocess
import sys

from rgt import __version__


def run_rgt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rgt", *args], capture_output=True, text=True)


def test_version_prints_the_package_version() -> None:
    result = run_rgt("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rgt {__version__}"


def test_unknown_command_is_a_usage_error_with_exit_2() -> None:
    result = run_rgt("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_command_prints_help_and_exits_2() -> None:
    result = run_rgt()
    assert result.returncode == 2
    assert "usage: rgt" in result.stderr
