"""Sweep: every visible instance, what it costs, what keeps billing, and the flags.

The first tests use the labelled STAND-IN provider (a box is a local directory); the last runs
against the vast.ai emulator with the real VastProvider, the stock vastai CLI and `rgt sweep`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rgt.ledger import Ledger
from rgt.providers.base import OfferQuery
from rgt.sweep import format_report, sweep
from tests.conftest import CANARY_API_KEY, assert_no_canary
from tests.ironlaw_fixtures import vast_profile
from tests.ironlaw_standin import LocalBoxProvider


def test_sweep_flags_stopped_idle_and_unknown(tmp_path: Path) -> None:
    provider = LocalBoxProvider(tmp_path / "boxes")
    provider.add_box("1", "running")  # known, training
    provider.add_box("2", "stopped")  # known, stopped: disk still bills
    provider.add_box("3", "running")  # rented outside rgt
    provider.add_box("4", "running")  # known, results already verified: idle
    with Ledger.open() as ledger:
        for known in ("1", "2", "4", "5"):
            ledger.record_instance("vastai", known, label=f"rgt-{known}", state="running")
        ledger.record_verification("4", local_dir=tmp_path, manifest_sha256="ab" * 32, run_id="r")
        report = sweep(provider=provider, ledger=ledger, profile=vast_profile())
    rows = {row.instance_id: row for row in report.rows}
    assert set(rows) == {"1", "2", "3", "4"}
    assert rows["1"].flags == [] and "compute" in rows["1"].keeps_billing
    assert rows["2"].flags == ["stopped-but-billing"]
    assert rows["2"].keeps_billing == list(vast_profile().stop_still_bills)
    assert rows["3"].flags == ["unknown-to-ledger"]
    assert rows["4"].flags == ["idle"]
    # "5" is in the ledger but the key cannot see it (destroyed outside rgt, other account).
    assert report.ledger_only == ["5"]
    assert report.hourly_total == 0.5 * 3
    text = format_report(report)
    assert "stopped-but-billing" in text and "unknown-to-ledger" in text and "5" in text
    json_form = report.to_json()
    assert json_form["instances"][1]["flags"] == ["stopped-but-billing"]


def test_sweep_total_names_the_boxes_whose_rate_is_unknown_not_counting_them_as_zero(
    tmp_path: Path,
) -> None:
    # A stopped box bills its disk, but its disk size and storage price are not reported: its
    # hourly cost is unknown. The total used to add it as $0/hour without saying so.
    provider = LocalBoxProvider(tmp_path / "boxes")
    provider.add_box("1", "running")
    provider.add_box("2", "stopped")
    with Ledger.open() as ledger:
        for known in ("1", "2"):
            ledger.record_instance("vastai", known, label=f"rgt-{known}", state="running")
        report = sweep(provider=provider, ledger=ledger, profile=vast_profile())
    assert [row.hourly_cost for row in report.rows] == [0.5, None]
    assert report.hourly_total == 0.5
    assert report.hourly_unknown == ["2"] and report.hourly_covers == 1
    note = "plus 1 instance(s) whose hourly rate is unknown (2)"
    json_form = report.to_json()
    assert (json_form["hourly_total"], json_form["hourly_covers"]) == (0.5, 1)
    assert (json_form["hourly_unknown"], json_form["hourly_note"]) == (["2"], note)
    assert f"total ≈ $0.500/hour over the 1 instance(s) with a known rate, {note}" in (
        format_report(report)
    )


def test_sweep_says_what_each_hourly_figure_rests_on(tmp_path: Path) -> None:
    # A known $0 (stopping bills nothing on this profile) is not "unknown"; a running box
    # without a reported dph_total is not "dph_total (compute + storage)".
    class NoRate(LocalBoxProvider):
        def show(self, instance_id: str) -> Any:
            instance = super().show(instance_id)
            return replace(instance, dph_total=None) if instance_id == "3" else instance

    provider = NoRate(tmp_path / "boxes")
    provider.add_box("1", "running")
    provider.add_box("2", "stopped")
    provider.add_box("3", "running")
    with Ledger.open() as ledger:
        billed_disk = sweep(provider=provider, ledger=ledger, profile=vast_profile())
        free_stop = sweep(
            provider=provider, ledger=ledger, profile=SimpleNamespace(stop_still_bills=[])
        )
    bases = {row.instance_id: (row.hourly_cost, row.hourly_cost_basis) for row in billed_disk.rows}
    assert bases == {
        "1": (0.5, "dph_total (compute + storage)"),
        "2": (None, "unknown (disk size or storage price not reported)"),
        "3": (None, "unknown (the provider reported no dph_total)"),
    }
    stopped = next(row for row in free_stop.rows if row.instance_id == "2")
    assert (stopped.hourly_cost, stopped.flags) == (0.0, ["unknown-to-ledger"])
    assert (
        stopped.hourly_cost_basis == "nothing (the profile says a stopped instance bills nothing)"
    )
    assert free_stop.hourly_unknown == ["3"] and free_stop.hourly_total == 0.5


def test_sweep_of_an_empty_account(tmp_path: Path) -> None:
    provider = LocalBoxProvider(tmp_path / "boxes")
    (tmp_path / "boxes").mkdir()
    with Ledger.open() as ledger:
        report = sweep(provider=provider, ledger=ledger, profile=vast_profile())
    assert report.rows == [] and "no instances" in format_report(report)


# -- against the vast.ai emulator: the provider's list, not the ledger, is the truth ------------


@pytest.mark.timeout(60)
def test_sweep_against_the_emulator_sees_every_instance_the_key_sees(
    emulator: Any, isolated_user: Path
) -> None:
    from rgt.providers.vastai import VastProvider
    from tests.ironlaw_emulator import create_instance

    provider = VastProvider()
    known = create_instance(provider, "sweep-known")
    stopped = create_instance(provider, "sweep-stopped")
    # Rented by hand with the stock vastai CLI: rgt never heard of it.
    key_file = isolated_user / ".config" / "vastai" / "vast_api_key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(CANARY_API_KEY)
    offer = provider.search_offers(OfferQuery(limit=1))[0]
    by_hand = subprocess.run(
        [
            str(Path(sys.executable).parent / "vastai"),
            "create",
            "instance",
            offer.id,
            "--image",
            "ubuntu",
            "--disk",
            "20",
            "--raw",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    unknown = str(json.loads(by_hand.stdout)["new_contract"])
    with Ledger.open() as ledger:
        for instance_id, run in ((known, "sweep-known"), (stopped, "sweep-stopped")):
            ledger.record_instance("vastai", instance_id, label=f"rgt:{run}", state="created")
        ledger.record_instance("vastai", "999999", label="rgt:gone-elsewhere", state="running")
        _wait_state(provider, [known, stopped, unknown], "running")
        provider.stop(stopped)
        _wait_state(provider, [stopped], "stopped")
        report = sweep(provider=provider, ledger=ledger, profile=vast_profile())
    rows = {row.instance_id: row for row in report.rows}
    assert set(rows) == {known, stopped, unknown}
    # (The emulated jobs finished: their GPUs report ~0 % use, so running boxes are also idle.)
    assert "unknown-to-ledger" not in rows[known].flags
    assert rows[known].keeps_billing[0] == "compute"
    assert rows[known].hourly_cost == provider.show(known).dph_total
    assert "unknown-to-ledger" in rows[unknown].flags
    # Stopped but billing: what keeps billing comes from the profile, with its storage $/hour.
    row = rows[stopped]
    assert row.flags == ["stopped-but-billing"]
    assert row.keeps_billing == vast_profile().stop_still_bills
    assert row.hourly_cost is not None and row.hourly_cost > 0
    # ... and that estimate is what the emulator's meter charges a stopped box per hour.
    before = emulator.meter(stopped)
    emulator.clock.advance(3600)
    after = emulator.meter(stopped)
    assert after["compute"] == pytest.approx(before["compute"])
    assert after["storage"] - before["storage"] == pytest.approx(row.hourly_cost, rel=0.02)
    assert report.ledger_only == ["999999"]
    # The CLI: exit 1 because something is flagged; JSON for machines; no key in the output.
    cli = subprocess.run(
        [sys.executable, "-m", "rgt", "sweep", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert cli.returncode == 1, cli.stderr
    flagged = {r["instance_id"]: r["flags"] for r in json.loads(cli.stdout)["instances"]}
    assert flagged[stopped] == ["stopped-but-billing"] and "unknown-to-ledger" in flagged[unknown]
    text = subprocess.run(
        [sys.executable, "-m", "rgt", "sweep"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert f"{row.hourly_cost:.3f}" in text.stdout and "stopped-but-billing" in text.stdout
    assert_no_canary(cli.stdout, cli.stderr, text.stdout, text.stderr)


def _wait_state(provider: Any, ids: list[str], state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {i: provider.show(i).state for i in ids}
        if all(s == state for s in states.values()):
            return
        assert time.monotonic() < deadline, f"waiting for {state}: {states}"
        time.sleep(0.1)
