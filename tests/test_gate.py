"""The gate: each piece of missing evidence is named; destroy happens only with all of it.

Uses the labelled STAND-IN provider (tests/ironlaw_standin.py: a box is a local directory,
copies run the real rsync); the verifier, ledger and approval code are the real ones.
tests/test_ironlaw_e2e.py repeats the chain and the refusal corpus against the emulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rgt.errors import Refused
from rgt.gate import destroy_with_gate, may_destroy
from rgt.ledger import Ledger
from rgt.pull import MANIFEST_NAME, pull_instance
from tests.ironlaw_fixtures import (
    REMOTE_ROOT,
    RUN_ID,
    build_manifest_on_box,
    forge_verified_record,
    safetensors_bytes,
    tamper_verified_record,
    vast_profile,
    verify_and_record,
    write_results,
)
from tests.ironlaw_standin import LocalBoxProvider

FILES = {
    "ckpt/step_100.safetensors": safetensors_bytes(os.urandom(64)),
    "metrics/metrics.json": b'{"loss": 0.25}',
}


class Box:
    """One stand-in box with results and a manifest, and the ledger."""

    def __init__(self, tmp_path: Path, instance_id: str = "1001") -> None:
        self.provider = LocalBoxProvider(tmp_path / "boxes")
        self.id = instance_id
        self.disk = self.provider.add_box(instance_id)
        self.results = self.provider.box_path(instance_id, REMOTE_ROOT)
        write_results(self.results, FILES)
        build_manifest_on_box(
            self.results, run_id=RUN_ID, roster=["ckpt", "metrics"], instance_id=instance_id
        )
        self.local = tmp_path / "local"
        self.ledger = Ledger.open()

    def pull(self) -> None:
        pull_instance(self.id, REMOTE_ROOT, self.local, provider=self.provider, ledger=self.ledger)

    def verify(self) -> None:
        pytest.importorskip("rgt.verify", reason="the verifier (rgt.verify) has not landed yet")
        verify_and_record(self.ledger, self.local)

    def approve(self, instance_id: str | None = None, ttl: float = 900, now: float | None = None):
        return self.ledger.record_approval(instance_id or self.id, "tty", ttl, now=now)

    def decide(self, **kwargs: object):
        return may_destroy(self.id, provider=self.provider, ledger=self.ledger, **kwargs)

    def codes(self, **kwargs: object) -> list[str]:
        return [m.code for m in self.decide(**kwargs).missing]

    def assert_alive(self) -> None:
        assert self.provider.show(self.id).state != "gone"
        assert self.disk.is_dir() and (self.results / MANIFEST_NAME).is_file()
        assert self.provider.destroy_requests() == []


@pytest.fixture
def box(tmp_path: Path):
    b = Box(tmp_path)
    yield b
    b.ledger.close()


def test_nothing_done_lists_every_missing_item(box: Box) -> None:
    assert box.codes() == ["no-pull", "no-verification", "no-approval"]
    with pytest.raises(Refused, match="no-pull"):
        destroy_with_gate(box.id, provider=box.provider, ledger=box.ledger, profile=vast_profile())
    box.assert_alive()


def test_full_chain_allows_and_destroys_once(box: Box) -> None:
    box.pull()
    assert box.codes() == ["no-verification", "no-approval"]
    box.verify()
    assert box.codes() == ["no-approval"]
    assert box.decide(require_approval=False).allowed
    approval_id = box.approve()
    decision = box.decide()
    assert decision.allowed, decision.explain()
    outcome = destroy_with_gate(
        box.id, provider=box.provider, ledger=box.ledger, profile=vast_profile()
    )
    assert outcome.approval_id == approval_id and outcome.confirmed_state == "gone"
    assert box.provider.destroy_requests() == [box.id]
    (record,) = box.ledger.destroys(box.id)
    assert record.status == "confirmed" and record.verb == "destroy"
    assert box.ledger.approvals(box.id)[0].consumed is not None
    # The approval was single-use, and a destroyed instance is not destroyed twice.
    with pytest.raises(Refused, match="already destroyed"):
        destroy_with_gate(box.id, provider=box.provider, ledger=box.ledger, profile=vast_profile())
    assert box.provider.destroy_requests() == [box.id]


def test_approval_for_another_instance_does_not_count(box: Box) -> None:
    box.pull()
    box.verify()
    box.approve("1002")
    assert box.codes() == ["no-approval"]
    box.assert_alive()


def test_expired_approval_is_refused(box: Box) -> None:
    box.pull()
    box.verify()
    box.approve(ttl=60, now=time.time() - 120)
    decision = box.decide()
    assert [m.code for m in decision.missing] == ["no-approval"]
    assert "expired" in decision.missing[0].message
    with pytest.raises(Refused, match="expired"):
        destroy_with_gate(box.id, provider=box.provider, ledger=box.ledger, profile=vast_profile())
    box.assert_alive()


def test_stopped_box_fails_closed(box: Box) -> None:
    box.pull()
    box.verify()
    box.approve()
    box.provider.stop(box.id)
    decision = box.decide(profile=vast_profile())
    assert "box-unreachable" in [m.code for m in decision.missing]
    explained = decision.explain()
    # Says what to do, and that stop is not a meter stop, with what the profile says still bills.
    assert "Start it" in explained and "is not a meter stop" in explained
    assert all(item in explained for item in vast_profile().stop_still_bills)
    with pytest.raises(Refused):
        destroy_with_gate(box.id, provider=box.provider, ledger=box.ledger, profile=vast_profile())
    box.assert_alive()


def test_manifest_rebuilt_on_the_box_after_the_pull_makes_everything_stale(box: Box) -> None:
    box.pull()
    box.verify()
    box.approve()
    # The job wrote more results and rebuilt the manifest after we pulled.
    write_results(box.results, {"metrics/late.json": b"{}"})
    build_manifest_on_box(
        box.results, run_id=RUN_ID, roster=["ckpt", "metrics"], instance_id=box.id
    )
    codes = box.codes()
    assert "pull-stale" in codes and "verification-stale" in codes
    box.assert_alive()


def test_manifest_of_another_instance_on_the_box(box: Box) -> None:
    box.pull()
    box.verify()
    box.approve()
    build_manifest_on_box(box.results, run_id=RUN_ID, roster=["ckpt", "metrics"], instance_id="7")
    assert "manifest-other-instance" in box.codes()
    box.assert_alive()


def test_local_change_after_verification_is_refused(box: Box) -> None:
    box.pull()
    box.verify()
    box.approve()
    target = box.local / "metrics" / "metrics.json"
    target.write_bytes(b'{"loss": 0.26}')  # same size, one byte different
    assert box.codes() == ["local-files-changed"]
    box.assert_alive()


def test_extra_local_file_after_verification_is_refused(box: Box) -> None:
    box.pull()
    box.verify()
    box.approve()
    (box.local / "ckpt" / "extra.bin").write_bytes(b"x")
    assert box.codes() == ["local-files-changed"]
    box.assert_alive()


def test_forged_pull_verified_json_is_not_evidence(box: Box) -> None:
    box.pull()
    # Right shape, wrong hashes, never recorded in the ledger: the gate ignores the file.
    forge_verified_record(box.local, run_id=RUN_ID, instance_id=box.id, paths=list(FILES))
    box.approve()
    assert box.codes() == ["no-verification"]
    box.assert_alive()


def test_forged_record_after_a_real_verification_is_detected(box: Box) -> None:
    box.pull()
    box.verify()
    box.approve()
    tamper_verified_record(box.local)
    assert box.codes() == ["local-files-changed"]
    box.assert_alive()


def test_an_exception_inside_the_gate_is_a_deny(box: Box) -> None:
    class Broken(LocalBoxProvider):
        def show(self, instance_id: str):  # type: ignore[override]
            raise ConnectionError("api unreachable")

    decision = may_destroy(box.id, provider=Broken(box.provider.root), ledger=box.ledger)
    assert not decision.allowed
    assert decision.missing[0].code == "gate-error" and "api unreachable" in decision.explain()


def test_profile_verb_must_be_a_known_meter_stop(box: Box) -> None:
    box.pull()
    box.verify()
    box.approve()
    profile = vast_profile()
    weird = type("P", (), {"name": "x", "meter_stop_verb": "stop"})()
    with pytest.raises(Refused, match="meter_stop_verb 'stop'"):
        destroy_with_gate(box.id, provider=box.provider, ledger=box.ledger, profile=weird)
    from rgt.profile import load_profile

    other = load_profile("generic-ssh")  # another platform's profile: its verb does not apply
    with pytest.raises(Refused, match="is for platform 'generic-ssh'"):
        destroy_with_gate(box.id, provider=box.provider, ledger=box.ledger, profile=other)
    assert profile.meter_stop_verb == "destroy"
    box.assert_alive()


_RACER = r"""
import sys
from pathlib import Path
from rgt.errors import Refused
from rgt.gate import destroy_with_gate
from rgt.ledger import Ledger
from tests.ironlaw_fixtures import vast_profile
from tests.ironlaw_standin import LocalBoxProvider
provider = LocalBoxProvider(Path(sys.argv[1]))
ready = Path(sys.argv[3])
while not ready.exists():
    pass
with Ledger.open() as ledger:
    try:
        destroy_with_gate(sys.argv[2], provider=provider, ledger=ledger, profile=vast_profile())
        print("destroyed")
    except Refused as exc:
        print("refused", exc)
"""


@pytest.mark.timeout(60)
def test_concurrent_destroys_send_at_most_one_request(box: Box, tmp_path: Path) -> None:
    box.pull()
    box.verify()
    box.approve()
    box.approve()  # even with two approvals on record, only one destroy goes out
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(box.provider.root), box.id, str(go)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(0.5)
    go.touch()
    outputs = [racer.communicate(timeout=45)[0] for racer in racers]
    assert sum(out.startswith("destroyed") for out in outputs) == 1, outputs
    assert box.provider.destroy_requests() == [box.id]


def test_stopped_box_is_refused_even_before_any_evidence(box: Box) -> None:
    box.provider.stop(box.id)
    box.approve()
    decision = box.decide(profile=vast_profile())
    assert [m.code for m in decision.missing] == ["box-unreachable", "no-pull", "no-verification"]
    with pytest.raises(Refused, match="box-unreachable"):
        destroy_with_gate(box.id, provider=box.provider, ledger=box.ledger, profile=vast_profile())
    box.assert_alive()


def test_a_given_approval_id_must_be_this_instances_and_usable(box: Box) -> None:
    box.pull()
    box.verify()
    other = box.approve("1002")
    mine = box.approve()
    # An explicit approval id of another instance is not accepted, though one of ours exists.
    decision = box.decide(approval_id=other)
    assert [m.code for m in decision.missing] == ["no-approval"]
    assert "is for instance 1002" in decision.missing[0].message
    assert box.codes(approval_id=999) == ["no-approval"]
    with pytest.raises(Refused, match="is for instance 1002"):
        destroy_with_gate(
            box.id,
            provider=box.provider,
            ledger=box.ledger,
            profile=vast_profile(),
            approval_id=other,
        )
    box.assert_alive()
    # The failed attempt released its claim: the right approval goes through, and is the one used.
    outcome = destroy_with_gate(
        box.id, provider=box.provider, ledger=box.ledger, profile=vast_profile(), approval_id=mine
    )
    assert outcome.approval_id == mine
    assert box.ledger.approval(other).consumed is None  # type: ignore[union-attr]
    assert box.provider.destroy_requests() == [box.id]


def test_mcp_elicitation_approval_is_accepted_when_passed_explicitly(box: Box) -> None:
    box.pull()
    box.verify()
    # What the MCP destroy tool does after the human answered the elicitation in the client UI.
    approval_id = box.ledger.record_approval(box.id, "mcp-elicitation", 300)
    outcome = destroy_with_gate(
        box.id,
        provider=box.provider,
        ledger=box.ledger,
        profile=vast_profile(),
        approval_id=approval_id,
    )
    assert outcome.decision.evidence["approval"]["channel"] == "mcp-elicitation"
    assert box.ledger.destroys(box.id)[-1].approval_id == approval_id


def test_a_destroy_in_progress_elsewhere_holds_the_lock(box: Box) -> None:
    from rgt.locks import instance_lock

    box.pull()
    box.verify()
    box.approve()
    # Another holder of the instance's lock (a lock is per open file, so one in this process
    # counts as another process in the middle of destroying it).
    with (
        instance_lock(box.id, "destroy"),
        pytest.raises(Refused, match=f"instance {box.id}: another destroy of it is in progress"),
    ):
        destroy_with_gate(box.id, provider=box.provider, ledger=box.ledger, profile=vast_profile())
    box.assert_alive()
    assert box.ledger.usable_approval(box.id) is not None  # not consumed by the refused try


def test_manifest_of_another_run_than_the_instance_was_rented_for(box: Box) -> None:
    box.pull()
    box.approve()
    box.ledger.record_instance("vastai", box.id, label="rgt:some-other-run", state="running")
    decision = box.decide()
    assert "run-id-mismatch" in [m.code for m in decision.missing]
    assert "'some-other-run'" in decision.explain() and f"'{RUN_ID}'" in decision.explain()
    box.assert_alive()


def test_manifest_of_the_run_the_instance_was_rented_for_passes_that_check(box: Box) -> None:
    box.pull()
    box.ledger.record_instance("vastai", box.id, label=f"rgt:{RUN_ID}", state="running")
    decision = box.decide()
    assert "run-id-mismatch" not in [m.code for m in decision.missing]
    assert decision.evidence["run_id"] == RUN_ID


def test_a_failed_confirmation_is_a_provider_error_recorded_as_failed(box: Box) -> None:
    from rgt.errors import ProviderError

    class LosesTheAnswer(LocalBoxProvider):
        def show(self, instance_id: str):  # type: ignore[no-untyped-def]
            if self.destroy_requests():
                raise ConnectionError("api unreachable")
            return super().show(instance_id)

    box.pull()
    box.verify()
    box.approve()
    flaky = LosesTheAnswer(box.provider.root)
    with pytest.raises(ProviderError, match="confirming it failed"):
        destroy_with_gate(box.id, provider=flaky, ledger=box.ledger, profile=vast_profile())
    (record,) = box.ledger.destroys(box.id)
    assert record.status == "failed" and "api unreachable" in (record.detail or "")
    # A retry does not send a second request: the gate finds the instance gone.
    box.approve()
    with pytest.raises(Refused, match="instance-gone"):
        destroy_with_gate(box.id, provider=box.provider, ledger=box.ledger, profile=vast_profile())
    assert box.provider.destroy_requests() == [box.id]


def test_the_gate_is_the_only_code_that_sends_a_destroy() -> None:
    """Static guard of the single destroy path: outside the providers (which implement the
    verb) and the emulator (which serves it), no module of rgt calls a destroy method, names
    the SDK's destroy calls, or shells out to `vastai destroy`; the gate calls the profile's
    verb only through getattr."""
    import ast

    import rgt

    package = Path(rgt.__file__).resolve().parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith(("providers/", "sim/")):
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"destroy", "destroy_instance", "destroy_instances"}
            ):
                offenders.append(f"{relative}:{node.lineno}: .{node.func.attr}(...)")
        for needle in ("destroy_instance", "vastai destroy", "'destroy', 'instance'"):
            if needle in source and relative != "gate.py":
                offenders += [
                    f"{relative}:{number}: {needle}"
                    for number, line in enumerate(source.splitlines(), 1)
                    if needle in line
                    and not line.lstrip().startswith("#")
                    and "`vastai destroy" not in line  # prose in docstrings and messages
                ]
    assert offenders == [], offenders
    gate_source = (package / "gate.py").read_text(encoding="utf-8")
    assert gate_source.count("getattr(provider, method)(instance_id)") == 1


def test_a_pull_of_another_directory_than_the_jobs_results_root_is_refused(box: Box) -> None:
    # The job writes under /workspace/results; someone pulls (and verifies) a small side
    # directory with a manifest of its own instead. It must not unlock the destroy.
    box.ledger.record_instance(
        "vastai", box.id, results_root=REMOTE_ROOT, roster=["ckpt", "metrics"], state="running"
    )
    side = box.provider.box_path(box.id, "/workspace/side")
    write_results(side, {"ckpt/tiny.json": b"{}"})
    build_manifest_on_box(side, run_id=RUN_ID, roster=["ckpt"], instance_id=box.id)
    pull_instance(box.id, "/workspace/side", box.local, provider=box.provider, ledger=box.ledger)
    box.verify()
    box.approve()
    decision = box.decide()
    assert [m.code for m in decision.missing] == ["wrong-results-root", "roster-mismatch"]
    assert f"rgt pull {box.id} {REMOTE_ROOT}" in decision.explain()
    box.assert_alive()


def test_the_jobs_results_root_and_roster_pass(box: Box) -> None:
    box.ledger.record_instance(
        "vastai", box.id, results_root=REMOTE_ROOT + "/", roster=["metrics", "ckpt"]
    )
    box.pull()
    box.verify()
    box.approve()
    assert box.decide().allowed


def test_an_offline_box_fails_closed_and_is_told_to_wait_not_to_start(box: Box) -> None:
    # Was "Start it (`rgt pull ... --start`)" for an offline host too (QA).
    box.pull()
    box.verify()
    box.approve()
    box.provider._set_state(box.id, "offline")
    decision = box.decide(profile=vast_profile())
    assert "box-unreachable" in [m.code for m in decision.missing]
    explained = decision.explain()
    assert "wait for it to come back" in explained and "--start" not in explained
    box.provider._set_state(box.id, "running")
    box.assert_alive()
