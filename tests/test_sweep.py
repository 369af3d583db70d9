"""Sweep: every visible instance, what it costs, what keeps billing, and the flags.

Uses the labelled STAND-IN provider (a box is a local directory); tests/test_ironlaw_e2e.py runs
`rgt sweep --json` against the vast.ai emulator.
"""

from __future__ import annotations

from pathlib import Path

from rgt.ledger import Ledger
from rgt.sweep import format_report, sweep
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


def test_sweep_of_an_empty_account(tmp_path: Path) -> None:
    provider = LocalBoxProvider(tmp_path / "boxes")
    (tmp_path / "boxes").mkdir()
    with Ledger.open() as ledger:
        report = sweep(provider=provider, ledger=ledger, profile=vast_profile())
    assert report.rows == [] and "no instances" in format_report(report)
