"""No false all-clear (issue 12 item 5): an instance the provider no longer shows is told apart
by the ledger — never known (`unknown`), destroyed through rgt, discarded, gone after a verified
pull, or LOST (gone with no verified pull and no discard) — in poll (CLI and library) and sweep.
The vast.ai emulator through the real VastProvider; the destroys "outside rgt" are sent with the
stock `vastai` CLI, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rgt.ledger import Ledger
from tests.ironlaw_emulator import Rental, RentalPool, emulator_pool, use_pool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RentalPool]:
    with emulator_pool(tmp_path_factory, {"normal": 3}) as rentals:
        yield rentals


@pytest.fixture
def rental(pool: RentalPool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Rental]:
    use_pool(pool, monkeypatch)
    box = pool.take(tmp_path)
    yield box
    box.close()


def _rgt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rgt", *args], capture_output=True, text=True, timeout=120
    )


def _destroy_outside_rgt(rental: Rental) -> None:
    """What a user (or an agent) does when it bypasses rgt: the stock CLI's destroy."""
    vastai = str(Path(sys.executable).parent / "vastai")
    env = {**os.environ, "VAST_URL": rental.emulator.url}
    done = subprocess.run(
        [vastai, "--url", rental.emulator.url, "destroy", "instance", rental.id, "-y"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 30
    while rental.provider.show(rental.id).state != "gone" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rental.provider.show(rental.id).state == "gone"


def test_an_id_never_known_is_unknown_not_gone(pool: RentalPool, rental: Rental) -> None:
    never = str(int(rental.id) + 50_000)
    done = _rgt("poll", never, "--json")
    assert done.returncode == 0, done.stderr
    assert '"classification": "unknown"' in done.stdout
    assert "rgt has no record of it" in done.stdout and "nothing to do" not in done.stdout
    with Ledger.open() as ledger:
        assert ledger.state_history(never) == []  # nothing recorded about a stranger


def test_a_box_destroyed_outside_rgt_before_its_pull_is_lost(rental: Rental) -> None:
    _destroy_outside_rgt(rental)
    done = _rgt("poll", rental.id)
    assert done.returncode == 0, done.stderr
    assert "LOST" in done.stdout and "its results were never pulled" in done.stdout
    assert f"(run {rental.run_id})" in done.stdout
    sweep = _rgt("sweep")
    assert f"{rental.id}: LOST" in sweep.stdout, sweep.stdout


def test_a_box_destroyed_outside_rgt_after_a_verified_pull_is_gone(rental: Rental) -> None:
    rental.pull()
    rental.verify()
    _destroy_outside_rgt(rental)
    done = _rgt("poll", rental.id, "--json")
    assert '"classification": "gone"' in done.stdout, done.stdout
    assert "pulled and verified into" in done.stdout and "LOST" not in done.stdout
