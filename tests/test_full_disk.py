"""A full local disk is the user's environment, not a bug in rgt: `rgt pull` and `rgt verify` name
the path that has no space left and exit 2 (README, exit codes) at once; a copy that fills the
disk is not retried. The disk is really full: a small tmpfs mounted for the test (root only;
skipped, with the reason, where mount is not permitted). The box is an instance of the vast.ai
emulator driven through the real VastProvider and the real CLI.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rgt.ledger import Ledger
from rgt.pull import MANIFEST_NAME
from rgt.verify import VERIFIED_NAME
from tests.ironlaw_emulator import REMOTE_ROOT, Rental, rgt
from tests.smalldisk import fill, small_disk


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """mount(kib) -> a fresh tmpfs of that size (see tests/smalldisk.py); unmounted afterwards."""
    with contextlib.ExitStack() as mounts:
        yield lambda kib: mounts.enter_context(small_disk(tmp_path / f"disk-{kib}k", kib))


def _assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.mark.timeout(180)
def test_pull_whose_manifest_cannot_be_written_names_the_path_and_exits_2(
    emulator: Any, tmp_path: Path, disk: Callable[[int], Path]
) -> None:
    # Issue #18 item 7: ENOSPC at the pull's manifest write ended in exit 70, "a bug in rgt".
    rental = Rental(emulator, tmp_path)
    try:
        local = disk(256) / "run"
        local.mkdir()
        fill(local.parent)
        result = rgt("pull", rental.id, REMOTE_ROOT, str(local))
        _assert_one_line(
            result, 2, f"no space left on device writing {local / MANIFEST_NAME}", "rgt pull"
        )
        assert list(local.iterdir()) == []  # nothing half-written: no temp file, no manifest
        assert rental.ledger.pulls(rental.id) == []
        rental.assert_alive()
    finally:
        rental.close()


@pytest.mark.timeout(180)
def test_a_copy_that_fills_the_disk_stops_at_once_and_exits_2(
    emulator: Any, tmp_path: Path, disk: Callable[[int], Path]
) -> None:
    # rsync says "No space left on device" with exit 11, which rgt retried as a link failure:
    # five attempts over 35 s, then exit 3. A full disk is checked first: no retry, exit 2.
    rental = Rental(emulator, tmp_path, blob_bytes=400_000)
    try:
        local = disk(128) / "run"  # room for the manifest, not for the 400 kB blob
        result = rgt("pull", rental.id, REMOTE_ROOT, str(local))
        _assert_one_line(result, 2, "no space left on device", str(local))
        assert "attempt" not in result.stderr
        assert (local / MANIFEST_NAME).is_file()  # the part that fit stays for the resume
        assert rental.ledger.pulls(rental.id) == []
        rental.assert_alive()
    finally:
        rental.close()


@pytest.mark.timeout(180)
def test_verify_whose_record_cannot_be_written_names_it_and_exits_2(
    emulator: Any, tmp_path: Path, disk: Callable[[int], Path]
) -> None:
    # Issue #18 item 7: ENOSPC at verify's record write ended in exit 70.
    rental = Rental(emulator, tmp_path)
    try:
        local = disk(1024) / "run"
        pulled = rgt("pull", rental.id, REMOTE_ROOT, str(local))
        assert pulled.returncode == 0, pulled.stderr
        fill(local.parent)
        result = rgt("verify", str(local))
        _assert_one_line(
            result, 2, f"{local / VERIFIED_NAME}: no space left on device", "rgt verify"
        )
        assert not (local / VERIFIED_NAME).exists()
        assert [p.name for p in local.iterdir() if p.name.startswith(".")] == []  # no temp file
        with Ledger.open() as ledger:
            assert ledger.latest_verification(rental.id) is None
        rental.assert_alive()
    finally:
        rental.close()


@pytest.mark.timeout(60)
def test_rgt_manifest_on_a_full_disk_names_the_manifest_and_exits_2(
    tmp_path: Path, disk: Callable[[int], Path]
) -> None:
    root = disk(64) / "results"
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "loss.json").write_text('{"loss": 0.25}\n')
    roster = tmp_path / "roster.txt"
    roster.write_text("metrics\n")
    fill(root.parent)
    result = rgt("manifest", str(root), "--run-id", "r1", "--roster", str(roster))
    _assert_one_line(result, 2, f"{root / MANIFEST_NAME}: no space left on device", "rgt manifest")
    assert sorted(p.name for p in root.iterdir()) == ["metrics"]  # no temp file left


def test_a_full_disk_no_command_names_is_still_exit_2_not_an_internal_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI's safety net for a write site that does not name its file: the error mapping
    # alone (a command stubbed to fail as a write to a full disk fails; no disk can be made to
    # fail at an arbitrary write).
    import errno

    import rgt.commands.ledger as command
    from rgt.cli import main

    def full(_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(command, "run", full)
    assert main(["ledger"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "rgt ledger: error: no space left on device (a local disk or your quota is full); "
        "make room, then run the command again\n"
    )
