"""rgt.lifecycle without a network: classification, gotchas, danger clocks and cost arithmetic
read from the real bundled profile; poll/stop against the labelled stand-in provider
(tests/ironlaw_standin.py: a box is a local directory). Launch and the whole lifecycle run against
the emulator in tests/test_mcp_lifecycle.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rgt import lifecycle
from rgt.ledger import Ledger
from rgt.pricing import HOURS_PER_MONTH
from rgt.profile import load_profile
from rgt.providers.base import Instance, OfferQuery
from tests.ironlaw_standin import LocalBoxProvider


@pytest.fixture
def vast():
    return load_profile("vastai")


@pytest.mark.parametrize(
    ("state", "classification", "gotcha"),
    [
        ("loading", "loading", "VAST13"),
        ("running", "running", None),
        ("paused", "preempted", "VAST4"),
        ("scheduling", "stuck-scheduling", "VAST3"),
        ("offline", "offline", "VAST7"),
        ("stopped", "stopped-but-billing", "VAST1"),
        ("gone", "gone", None),
    ],
)
def test_each_state_is_classified_with_the_profiles_gotcha(
    vast, state: str, classification: str, gotcha: str | None
) -> None:
    found, next_action = lifecycle.classify(Instance(id="7", state=state), vast)  # type: ignore[arg-type]
    assert found == classification
    assert lifecycle.gotcha_for(vast, found) == gotcha
    assert next_action and next_action[0].islower()


def test_stopped_next_action_names_what_still_bills_and_the_meter_stop(vast) -> None:
    _, action = lifecycle.classify(Instance(id="7", state="stopped"), vast)
    for item in vast.stop_still_bills:
        assert item in action
    assert vast.meter_stop_verb in action
    assert lifecycle.keeps_billing(Instance(id="7", state="stopped"), vast) == vast.stop_still_bills
    assert lifecycle.keeps_billing(Instance(id="7", state="gone"), vast) == []


def test_danger_clocks_come_from_the_profile_fields(vast) -> None:
    clocks = lifecycle.danger_clocks(vast)
    assert f"`{vast.stop_verb}` does not stop the meter" in clocks[0]
    assert all(item in clocks[0] for item in vast.stop_still_bills)
    assert f"only `{vast.meter_stop_verb}` ends all billing" in clocks[1]
    assert "irreversible" in clocks[1]
    assert any(vast.egress["notes"] in clock for clock in clocks)
    summary = lifecycle.profile_summary(vast)
    assert next(iter(summary)) == "danger_clocks"
    assert summary["gotchas"]["VAST1"].startswith("a stopped instance keeps billing")


def test_danger_clocks_follow_a_changed_profile(vast) -> None:
    # Not hard-coded: a profile whose stop bills only disk says only disk.
    from dataclasses import replace

    changed = replace(vast, frontmatter={**vast.frontmatter, "stop_still_bills": ["disk"]})
    assert "still bills disk, indefinitely" in lifecycle.danger_clocks(changed)[0]
    extra = replace(
        vast,
        frontmatter={
            **vast.frontmatter,
            "residual_billables": ["volume"],
            "clocks": {"release_after_stop": "15d"},
        },
    )
    clocks = lifecycle.danger_clocks(extra)
    assert any("volume" in c and "separately" in c for c in clocks)
    assert any("released" in c and "15d" in c for c in clocks)


def test_cost_estimate_integrates_running_and_stopped_time(vast) -> None:
    hour = 3600.0
    instance = Instance(
        id="9", state="stopped", disk_gb=73.0, raw={"storage_cost": 0.1}, dph_total=0.5
    )
    from rgt.ledger import InstanceRecord

    record = InstanceRecord(
        provider="vastai",
        instance_id="9",
        label=None,
        profile="vastai",
        offer_id="1",
        price_per_hour=0.4,
        interruptible=False,
        created=1000.0,
        last_state=None,
        last_state_at=None,
    )
    history = [(1000.0, "loading", None), (1000.0 + hour, "running", None)]
    history.append((1000.0 + 3 * hour, "stopped", None))
    hourly, so_far, basis = lifecycle.estimate_cost(
        instance, record, history, vast, now=1000.0 + 4 * hour
    )
    storage = 73.0 * 0.1 / HOURS_PER_MONTH
    assert hourly == pytest.approx(storage)
    # 1 h loading (storage) + 2 h running at the rental price + 1 h stopped (storage)
    assert so_far == pytest.approx(2 * 0.4 + 2 * storage, abs=1e-6)
    assert "bandwidth not included" in basis


def test_poll_records_state_changes_and_reports_gone(tmp_path: Path, vast) -> None:
    provider = LocalBoxProvider(tmp_path / "boxes")
    provider.add_box("42", state="running")
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", "42", profile="vastai", price_per_hour=0.5)
        first = lifecycle.poll("42", provider=provider, ledger=ledger, profile=vast)
        assert first.classification == "running"
        assert first.keeps_billing[0] == "compute"
        assert first.cost_so_far is not None
        lifecycle.stop("42", provider=provider, ledger=ledger, profile=vast)
        stopped = lifecycle.poll("42", provider=provider, ledger=ledger, profile=vast)
        assert stopped.classification == "stopped-but-billing"
        assert stopped.gotcha == "VAST1"
        states = [state for _, state, _ in ledger.state_history("42")]
        assert states[:2] == ["running", "stopped"]
        # Polling again without a change adds no event.
        lifecycle.poll("42", provider=provider, ledger=ledger, profile=vast)
        assert len(ledger.state_history("42")) == len(states)


def test_stop_says_what_keeps_billing(tmp_path: Path, vast) -> None:
    provider = LocalBoxProvider(tmp_path / "boxes")
    provider.add_box("5")
    with Ledger.open() as ledger:
        result = lifecycle.stop("5", provider=provider, ledger=ledger, profile=vast)
    assert provider.show("5").state == "stopped"
    assert result["keeps_billing"] == vast.stop_still_bills
    assert "disk" in result["message"] and vast.meter_stop_verb in result["message"]


# -- the CLI commands against the emulator (real vastai SDK, real processes) -------------------


def _rgt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rgt", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.timeout(60)
def test_cli_search_launch_poll_stop_cost(emulator, tmp_path: Path) -> None:
    from tests.conftest import assert_no_canary

    found = _rgt("search", "--gpu", "RTX_4090", "--disk", "40", "--json")
    assert found.returncode == 0, found.stderr
    offers = json.loads(found.stdout)
    assert offers and all(o["verified"] and o["direct_port_count"] >= 1 for o in offers)
    offer = offers[0]
    job = tmp_path / "job.yaml"
    job.write_text((Path(__file__).parents[1] / "schemas" / "job.example.yaml").read_text())

    capped = _rgt("launch", offer["offer_id"], "--job", str(job), "--max-price", "0.01")
    assert capped.returncode == 4
    assert capped.stderr.count("\n") == 1 and "above the cap" in capped.stderr
    assert emulator.instance_ids() == []

    price = str(offer["price_per_hour"] + 0.01)
    launched = _rgt("launch", offer["offer_id"], "--job", str(job), "--max-price", price, "--json")
    assert launched.returncode == 0, launched.stderr
    instance_id = json.loads(launched.stdout)["instance_id"]

    deadline = time.monotonic() + 30
    while True:
        polled = _rgt("poll", instance_id, "--json")
        assert polled.returncode == 0, polled.stderr
        if json.loads(polled.stdout)["classification"] == "running":
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)

    stopped = _rgt("stop", instance_id)
    assert stopped.returncode == 0 and "still bills: disk, bandwidth" in stopped.stdout
    human = _rgt("poll", instance_id)
    assert "stopped-but-billing (VAST1)" in human.stdout
    cost = _rgt("cost", "--json")
    rows = json.loads(cost.stdout)["instances"]
    assert [r["instance_id"] for r in rows] == [instance_id] and rows[0]["cost_so_far"] > 0
    assert int(instance_id) in emulator.instance_ids()
    for result in (found, capped, launched, polled, stopped, human, cost):
        assert_no_canary(result.stdout, result.stderr)


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    missing = _rgt("launch", "1", "--job", str(tmp_path / "nope.yaml"), "--max-price", "1")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "nope.yaml" in missing.stderr
    port = _rgt("mcp", "--http", "--port", "0")
    assert port.returncode == 2 and "--port" in port.stderr


def test_danger_clocks_of_a_family_and_of_a_releasing_platform() -> None:
    family = load_profile("china")
    clocks = lifecycle.danger_clocks(family)
    assert "family profile" in clocks[0]
    assert all(name in clocks[0] for name in family.variants)
    assert not any("`variant-dependent`" in clock for clock in clocks)
    runpod = load_profile("runpod")
    stop_clock = lifecycle.danger_clocks(runpod)[0]
    assert "until the platform releases it" in stop_clock and "indefinitely" not in stop_clock


@pytest.mark.timeout(60)
def test_relaunch_adopts_the_labelled_box_when_its_offer_is_now_fully_rented(
    emulator, vast
) -> None:
    # An interrupted launch: the create reached vast.ai (the box carries the run's label and
    # bills) but the ledger never heard of it. Then the offer's machine filled up.
    from rgt.job import load_job
    from rgt.providers.vastai import VastProvider, run_label

    job = load_job(Path(__file__).parents[1] / "schemas" / "job.example.yaml")
    provider = VastProvider()
    query = lifecycle.offer_query_for_job(job, interruptible=False, limit=1000)
    offer = provider.search_offers(query)[0]
    box = provider.create(
        offer.id,
        image=job.image,
        disk_gb=float(job.disk_gb),
        onstart="true",
        label=run_label(job.run_id),
    )
    for n in range(16):  # rent the machine's other GPUs until the offer is gone from search
        if offer.id not in [o.id for o in provider.search_offers(query)]:
            break
        provider.create(
            offer.id,
            image=job.image,
            disk_gb=float(job.disk_gb),
            onstart="true",
            label=run_label(f"someone-else-{n}"),
        )
    with pytest.raises(Exception, match="not among the rentable"):
        lifecycle.find_offer(provider, offer.id, job, interruptible=False)
    before = sorted(emulator.instance_ids())
    with Ledger.open() as ledger:
        result = lifecycle.launch(
            provider=provider,
            ledger=ledger,
            profile=vast,
            job=job,
            offer_id=offer.id,
            max_price_per_hour=offer.dph_total + 1,
        )
        record = ledger.instance("vastai", box.id)
    assert result.adopted and result.instance_id == box.id
    assert result.label == run_label(job.run_id)
    assert sorted(emulator.instance_ids()) == before  # nothing new rented
    # The gate's binding (results root, roster) and a price are now in the ledger.
    assert record is not None and record.results_root == job.results_root
    assert record.roster == list(job.roster) and record.price_per_hour
    assert any("adopted" in warning for warning in result.warnings)


@pytest.mark.timeout(60)
def test_poll_of_a_box_rgt_did_not_rent_says_its_cost_is_unknown_not_zero(emulator) -> None:
    # A box rented outside rgt (not in the ledger) bills; rgt knows neither its rental price
    # nor its states, and used to print "so far ≈ $0.0000".
    from rgt.providers.vastai import VastProvider, run_label

    provider = VastProvider()
    offer = provider.search_offers(OfferQuery(gpu_name="RTX_4090", disk_gb=40))[0]
    box = provider.create(
        offer.id, image="img", disk_gb=40, onstart="sleep 60", label=run_label("elsewhere")
    )
    emulator.clock.advance(3600)
    machine = _rgt("poll", box.id, "--json")
    assert machine.returncode == 0, machine.stderr
    report = json.loads(machine.stdout)
    assert report["cost_so_far"] is None
    assert report["cost_basis"].startswith("unknown (not rented through rgt)")
    assert report["hourly_cost"] and report["hourly_cost"] > 0  # it does bill
    human = _rgt("poll", box.id)
    assert human.returncode == 0, human.stderr
    assert "so far ≈ unknown (not rented through rgt)" in human.stdout
    assert "$0.0000" not in human.stdout


def test_cost_total_names_the_boxes_whose_cost_is_unknown_not_counting_them_as_zero(
    emulator,
) -> None:
    # A box rented straight through the SDK (not rgt: no ledger record) bills, but rgt cannot
    # know its cost so far; the total used to add it as $0 without saying so.
    from rgt.providers.vastai import VastProvider, run_label

    provider = VastProvider()
    offer = provider.search_offers(OfferQuery(gpu_name="RTX_4090", disk_gb=40))[0]
    box = provider.create(
        offer.id, image="img", disk_gb=40, onstart="sleep 60", label=run_label("sdk-direct")
    )
    emulator.clock.advance(3600)
    assert emulator.meter(box.id)["total"] > 0  # it does bill
    machine = _rgt("cost", box.id, "--json")
    assert machine.returncode == 0, machine.stderr
    report = json.loads(machine.stdout)
    assert report["unknown"] == [box.id]
    assert report["total_covers"] == 0
    assert [r["cost_so_far"] for r in report["instances"]] == [None]
    assert (
        "1 instance(s) not rented through rgt whose cost so far is unknown"
        in (report["total_note"])
    )
    human = _rgt("cost", box.id)
    assert human.returncode == 0, human.stderr
    total_line = human.stdout.strip().splitlines()[-1]
    assert "over the 0 instance(s) with a known cost" in total_line
    assert f"plus 1 instance(s) not rented through rgt whose cost so far is unknown ({box.id})" in (
        total_line
    )


def test_cost_hourly_total_names_the_boxes_whose_rate_is_unknown_not_counting_them_as_zero(
    tmp_path: Path, vast, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stopped box still bills its disk (VAST1), but the provider reported neither its disk
    # size nor its storage price: its hourly rate is unknown. The burn rate used to add it as
    # $0/h without saying so ("burning ≈ $0.5000/h" while two boxes billed).
    import argparse

    import anyio

    from rgt.commands import cost as cost_command
    from rgt.mcp_server import server

    provider = LocalBoxProvider(tmp_path / "boxes")
    provider.add_box("1", state="running")
    provider.add_box("2", state="stopped")
    with Ledger.open() as ledger:
        for ident in ("1", "2"):
            ledger.record_instance("vastai", ident, profile="vastai", price_per_hour=0.5)
        report = lifecycle.cost_report(provider=provider, ledger=ledger, profile=vast)
    assert [r["hourly_cost"] for r in report["instances"]] == [0.5, None]
    assert report["hourly_total"] == 0.5
    assert report["hourly_covers"] == 1
    assert report["hourly_unknown"] == ["2"]
    note = "plus 1 instance(s) whose hourly rate is unknown (2)"
    assert report["hourly_note"] == note
    assert report["unknown"] == []  # the cost so far of both is known: only the rate is not

    monkeypatch.setattr("rgt.commands._platform.open_platform", lambda name: (provider, vast))
    args = argparse.Namespace(instance=None, json=False, platform="vastai")
    assert cost_command.run(args) == 0
    total_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"burning ≈ $0.5000/h over the 1 instance(s) with a known rate, {note}" in total_line
    assert cost_command.run(argparse.Namespace(instance=None, json=True, platform="vastai")) == 0
    machine = json.loads(capsys.readouterr().out)
    assert (machine["hourly_unknown"], machine["hourly_note"]) == (["2"], note)

    # The MCP cost tool serves the same report.
    monkeypatch.setattr(server, "_provider", lambda platform, **_: provider)
    served = anyio.run(server.cost).model_dump()
    assert (served["hourly_total"], served["hourly_covers"]) == (0.5, 1)
    assert (served["hourly_unknown"], served["hourly_note"]) == (["2"], note)


def test_cost_with_every_rate_known_has_no_rate_note(tmp_path: Path, vast) -> None:
    provider = LocalBoxProvider(tmp_path / "boxes")
    provider.add_box("1", state="running")
    with Ledger.open() as ledger:
        ledger.record_instance("vastai", "1", profile="vastai", price_per_hour=0.5)
        report = lifecycle.cost_report(provider=provider, ledger=ledger, profile=vast)
    assert (report["hourly_total"], report["hourly_covers"]) == (0.5, 1)
    assert (report["hourly_unknown"], report["hourly_note"]) == ([], "")
