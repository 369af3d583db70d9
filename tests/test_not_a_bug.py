"""What is not a bug in rgt gets a clear line and its documented exit code, never 70 ("a bug in
rgt"): a box manifest that is hostile (NaN sizes, 100,000 levels deep, gigabytes long), an API
key or an ssh command in the environment that cannot work, a FIFO where the pulled manifest
should be. Issue #18 items 6 and 7. The box is an instance of the vast.ai emulator, driven
through the real CLI; every refusal leaves the instance and its disk in place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rgt.pull import MANIFEST_NAME
from tests.conftest import assert_no_canary
from tests.hostile_inputs import run_rgt_bounded
from tests.ironlaw_emulator import REMOTE_ROOT, Rental, rgt


def _assert_one_line(result: subprocess.CompletedProcess[Any], code: int, *words: str) -> None:
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert result.returncode == code, (result.returncode, result.stdout, stderr)
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    for word in words:
        assert word in stderr, (word, stderr)
    assert_no_canary(stderr)


def _pull_refused(rental: Rental, code: int, *words: str, bounded: bool = False) -> None:
    """`rgt pull` of the rental exits `code` with one line holding `words`, copies nothing,
    records nothing; the instance and its disk are still there."""
    args = ("pull", rental.id, REMOTE_ROOT, str(rental.local))
    result = run_rgt_bounded(*args) if bounded else rgt(*args)
    _assert_one_line(result, code, *words)
    assert not (rental.local / "ckpt").exists()
    assert rental.ledger.pulls(rental.id) == []
    rental.assert_alive()


@pytest.fixture
def rental(emulator: Any, tmp_path: Path) -> Any:
    """A finished run on an emulated instance (results and manifest on its disk)."""
    made = Rental(emulator, tmp_path)
    yield made
    made.close()


@pytest.mark.timeout(120)
def test_a_nan_size_in_the_box_manifest_is_a_failed_check_naming_the_field(rental: Any) -> None:
    manifest = rental.results / MANIFEST_NAME
    document = json.loads(manifest.read_text())
    document["files"][0]["size"] = float("nan")  # json.dumps writes NaN, json.loads reads it
    manifest.write_text(json.dumps(document))
    _pull_refused(rental, 1, "files[0].size nan", "not a byte count", "a whole number >= 0")


@pytest.mark.timeout(120)
def test_a_box_manifest_nested_100000_deep_is_a_failed_check_like_verify(rental: Any) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    (rental.results / MANIFEST_NAME).write_text(
        f'{{"instance_id": "{rental.id}", "roster": {nested}}}'
    )
    _pull_refused(rental, 1, "not JSON (nested too deeply to parse)")


@pytest.mark.timeout(120)
def test_a_2_gb_box_manifest_is_refused_after_64_mib_of_it(rental: Any) -> None:
    # Issue #18 item 6: a 400 MB manifest took ~1 GB of memory before the 64 MiB refusal. A
    # sparse 2 GB one read whole cannot fit the child's 1 GiB address space (MemoryError, exit
    # 70); streamed, ssh is killed once 64 MiB + 1 byte arrived.
    with open(rental.results / MANIFEST_NAME, "r+b") as handle:
        handle.truncate(2 * 1024**3)
    _pull_refused(rental, 1, "larger than rgt reads over ssh (64 MiB", bounded=True)


@pytest.mark.timeout(120)
def test_a_missing_ssh_program_in_rgt_ssh_command_is_a_usage_error(
    rental: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RGT_SSH_COMMAND", "/nope/ssh -x")
    _pull_refused(rental, 2, "RGT_SSH_COMMAND='/nope/ssh -x'", "no program '/nope/ssh'")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args", [["search"], ["poll", "123"], ["pull", "123", REMOTE_ROOT, "local"]]
)
def test_an_api_key_that_is_not_printable_ascii_is_a_usage_error_not_shown(
    tmp_path: Path, args: list[str]
) -> None:
    # $'\xff\xfe': not UTF-8, so Python holds it as surrogates that no encoder takes (exit 70).
    env = {**os.environ, "VAST_API_KEY": os.fsdecode(b"\xff\xfe")}
    result = subprocess.run(
        [sys.executable, "-m", "rgt", *args],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    _assert_one_line(result, 2, "$VAST_API_KEY: the API key holds characters that are not")
    assert b"\xff" not in result.stderr + result.stdout


@pytest.mark.timeout(60)
def test_a_key_file_with_control_characters_is_a_usage_error_naming_the_file(
    isolated_user: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAST_API_KEY")
    key_file = isolated_user / ".config" / "vastai" / "vast_api_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("0123abcd\x1b[2J4567\n")
    result = subprocess.run(
        [sys.executable, "-m", "rgt", "search"], capture_output=True, timeout=60, check=False
    )
    _assert_one_line(result, 2, f"vast.ai key file {key_file}", "not printable ASCII")
    assert b"0123abcd" not in result.stderr


@pytest.mark.timeout(120)
def test_a_fifo_as_the_pulled_manifest_fails_verify_at_once(tmp_path: Path) -> None:
    local = tmp_path / "run"
    local.mkdir()
    os.mkfifo(local / MANIFEST_NAME)
    result = run_rgt_bounded("verify", str(local))
    _assert_one_line(result, 1, f"{local / MANIFEST_NAME}: is a FIFO (named pipe)")
