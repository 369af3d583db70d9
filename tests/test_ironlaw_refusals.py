"""The Iron Law refusal corpus against the vast.ai emulator (issue 4).

Each case is refused with a clear reason, and in every one the instance still exists
(provider show), its disk directory still exists, and no DELETE request reached the emulator.
Real parts throughout: VastProvider over the vastai SDK, the emulator's HTTP API and per-instance
sshd, rsync, the box-built manifest, rgt.verify, SQLite.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rgt.errors import CheckFailed
from rgt.pull import MANIFEST_NAME, pull_instance
from tests.ironlaw_emulator import Rental, RentalPool, emulator_pool, use_pool
from tests.ironlaw_fixtures import forge_verified_record, tamper_verified_record

pytestmark = pytest.mark.timeout(60)


# One emulator for the module, with a box per case rented up front (boots overlap).
CASES = 17


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RentalPool]:
    with emulator_pool(tmp_path_factory, {"normal": CASES, "other-run": 1}) as rentals:
        yield rentals


@pytest.fixture
def rental(pool: RentalPool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Rental]:
    use_pool(pool, monkeypatch)
    box = pool.take(tmp_path)
    yield box
    box.close()


def _edit_box_manifest(rental: Rental, change: Any) -> None:
    manifest = rental.results / MANIFEST_NAME
    document = json.loads(manifest.read_text())
    change(document)
    manifest.write_text(json.dumps(document))


def test_destroy_before_anything(rental: Rental) -> None:
    rental.approve()
    message = rental.refused("no-pull")
    assert "[no-verification]" in message and "rgt pull" in message


def test_destroy_before_verify(rental: Rental) -> None:
    rental.pull()
    rental.approve()
    rental.refused("no-verification")


@pytest.mark.parametrize("where", ["roster", "files"])
def test_path_traversal_in_the_manifest(rental: Rental, where: str) -> None:
    if where == "roster":
        _edit_box_manifest(rental, lambda d: d["roster"].append("../../etc"))
        expected = "roster entry '../../etc'"
    else:
        _edit_box_manifest(
            rental,
            lambda d: d["files"].append(
                {"path": "ckpt/../../../etc/passwd", "size": 1, "sha256": "0" * 64}
            ),
        )
        expected = "files[3].path 'ckpt/../../../etc/passwd'"
    with pytest.raises(CheckFailed, match=re.escape(expected)):
        rental.pull()
    assert not (rental.local / "ckpt").exists()  # refused before anything was copied
    rental.approve()
    rental.refused("no-pull")


def test_symlink_among_the_results(rental: Rental) -> None:
    os.symlink("/etc/passwd", rental.results / "ckpt" / "passwd")
    rental.pull()
    with pytest.raises(CheckFailed, match="symlink"):
        rental.verify()
    rental.approve()
    rental.refused("no-verification")


def test_duplicate_path_in_the_manifest(rental: Rental) -> None:
    _edit_box_manifest(rental, lambda d: d["files"].append(dict(d["files"][0])))
    rental.pull()
    with pytest.raises(CheckFailed, match=r"(?i)duplicate|twice|more than once"):
        rental.verify()
    rental.approve()
    rental.refused("no-verification")


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "extra file", "missing file"])
def test_local_damage_before_verify(rental: Rental, damage: str) -> None:
    rental.pull()
    blob = rental.local / "ckpt" / "blob.bin"
    if damage == "truncated":
        blob.write_bytes(blob.read_bytes()[:-1])
    elif damage == "flipped byte":
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
    elif damage == "extra file":
        (rental.local / "metrics" / "extra.json").write_text("{}")
    else:
        blob.unlink()
    with pytest.raises(CheckFailed, match=r"blob\.bin|extra\.json"):
        rental.verify()
    rental.approve()
    rental.refused("no-verification")


def test_wrong_run_id(pool: RentalPool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Rented for one run, but the manifest on the box is of another: pulled and verified
    # consistently, yet not the results this rental was for.
    use_pool(pool, monkeypatch)
    box = pool.take(tmp_path, "other-run")
    try:
        box.pull()
        box.verify()
        box.approve()
        message = box.refused("run-id-mismatch")
        assert "'some-other-run'" in message and repr(box.run_id) in message
    finally:
        box.close()


def test_manifest_of_another_instance(rental: Rental) -> None:
    rental.pull()
    rental.verify()
    rental.approve()
    _edit_box_manifest(rental, lambda d: d.update(instance_id="999999"))
    message = rental.refused("manifest-other-instance")
    assert "[pull-stale]" in message  # and the pull no longer matches the box


def test_verification_made_stale_by_a_later_local_change(rental: Rental) -> None:
    rental.pull()
    rental.verify()
    rental.approve()
    metrics = rental.local / "metrics" / "metrics.json"
    metrics.write_text(metrics.read_text().replace("0.25", "0.26"))  # same size
    rental.refused("local-files-changed")


def test_forged_pull_verified_json(rental: Rental) -> None:
    rental.pull()
    forge_verified_record(
        rental.local, run_id=rental.run_id, instance_id=rental.id, paths=["ckpt/blob.bin"]
    )
    rental.approve()
    rental.refused("no-verification")


def test_forged_pull_verified_json_after_a_real_verification(rental: Rental) -> None:
    rental.pull()
    rental.verify()
    rental.approve()
    tamper_verified_record(rental.local)
    rental.refused("local-files-changed")


def test_approval_for_another_instance(rental: Rental) -> None:
    rental.pull()
    rental.verify()
    rental.approve("424242")
    rental.refused("no-approval")


def test_expired_approval(rental: Rental) -> None:
    rental.pull()
    rental.verify()
    rental.approve(ttl=60, now=time.time() - 3600)
    message = rental.refused("no-approval")
    assert "expired" in message


def test_pull_of_another_directory_than_the_jobs_results(rental: Rental) -> None:
    from rgt import manifest

    side = rental.disk / "workspace" / "side"
    (side / "ckpt").mkdir(parents=True)
    (side / "ckpt" / "tiny.json").write_text("{}")
    manifest.write_manifest(side, rental.run_id, ["ckpt"], rental.id)
    pull_instance(
        rental.id, "/workspace/side", rental.local, provider=rental.provider, ledger=rental.ledger
    )
    rental.verify()  # consistent in itself...
    rental.approve()
    message = rental.refused("wrong-results-root")  # ...but not the job's results
    assert "[roster-mismatch]" in message
