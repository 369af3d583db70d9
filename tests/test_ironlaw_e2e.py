"""The Teardown Iron Law end to end against the vast.ai emulator (rgt.sim), with the real
VastProvider (vastai SDK -> emulator HTTP API; rsync and cat over the instance's real sshd).

`rgt manifest` runs ON the box (the boot hook ships rgt/manifest.py and runs it with the box's
python3) -> `rgt pull` -> `rgt verify` -> `rgt approve` / `rgt destroy` with the passphrase typed
on a real pseudo-terminal -> destroy confirmed, exactly one DELETE. Plus a stopped box
(start -> copy -> verify -> destroy) and the pull's progress bar on a terminal. The refusal
corpus is in tests/test_ironlaw_refusals.py, crash and race tests in tests/test_ironlaw_crash.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rgt.errors import EXIT_REFUSED
from tests.conftest import assert_no_canary
from tests.ironlaw_emulator import REMOTE_ROOT, REPO, Rental, rgt
from tests.ironlaw_fixtures import USER_FILES, tree_of, vast_profile, write_results
from tests.ptyrun import PtyProcess

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def rental(emulator: Any, tmp_path: Path) -> Iterator[Rental]:
    box = Rental(emulator, tmp_path)
    yield box
    box.close()


@pytest.mark.timeout(120)
def test_whole_chain_through_the_cli(rental: Rental) -> None:
    from rgt import approval

    approval.store_passphrase(PASSPHRASE, n=2**14)
    outputs: list[str] = []
    # Before anything: refused, nothing sent.
    early = rgt("destroy", rental.id)
    assert early.returncode == EXIT_REFUSED and "[no-pull]" in early.stderr
    rental.assert_alive()

    pulled = rgt("pull", rental.id, REMOTE_ROOT, str(rental.local), "--json")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["files"] == 3

    before_verify = rgt("destroy", rental.id, "--check", "--json")
    assert before_verify.returncode == EXIT_REFUSED
    codes = [m["code"] for m in json.loads(before_verify.stdout)["missing"]]
    assert codes == ["no-verification", "no-approval"]
    rental.assert_alive()

    verified = rgt("verify", str(rental.local))
    assert verified.returncode == 0, verified.stderr

    # No terminal: refused, and told how to approve.
    headless = rgt("destroy", rental.id)
    assert headless.returncode == EXIT_REFUSED and "rgt approve" in headless.stderr
    rental.assert_alive()

    human = PtyProcess("destroy", rental.id)
    shown = human.expect("Type the instance id")
    assert f"verified  {rental.local}" in shown and "IRREVERSIBLE" in shown
    human.send(rental.id)
    human.expect("Approval passphrase")
    human.send(PASSPHRASE)
    assert human.wait(timeout=90) == 0, human.text
    assert "destroy confirmed" in human.text
    assert PASSPHRASE not in human.text.split("Approval passphrase", 1)[1]  # not echoed
    assert rental.provider.show(rental.id).state == "gone"
    assert rental.destroy_requests() == 1
    (record,) = rental.ledger.destroys(rental.id)
    assert record.status == "confirmed" and record.approval_id is not None
    assert rental.ledger.approval(record.approval_id).channel == "tty"  # type: ignore[union-attr]

    # Destroyed once; a second destroy is refused without reaching the provider.
    again = rgt("destroy", rental.id)
    assert again.returncode == EXIT_REFUSED and rental.destroy_requests() == 1

    swept = rgt("sweep", "--json")
    assert rental.id not in [row["instance_id"] for row in json.loads(swept.stdout)["instances"]]
    outputs += [early.stderr, pulled.stdout, verified.stdout, human.text, swept.stdout]
    assert_no_canary(*outputs)


@pytest.mark.timeout(90)
def test_approve_on_a_terminal_then_destroy_from_a_script(rental: Rental) -> None:
    from rgt import approval

    approval.store_passphrase(PASSPHRASE, n=2**14)
    rental.pull()
    rental.verify()
    human = PtyProcess("approve", rental.id, "--ttl-minutes", "5")
    shown = human.expect("Type the instance id")
    assert "pulled    3 files, 195.5 KiB" in shown  # 200 000 + 118 bytes
    assert f"of run {rental.run_id} from {REMOTE_ROOT}" in shown
    assert f"verified  {rental.local}" in shown
    human.send(rental.id)
    human.expect("Approval passphrase")
    human.send(PASSPHRASE)
    assert human.wait() == 0, human.text
    # The approval is in the ledger, for this id, single-use: a headless destroy may use it once.
    destroyed = rgt("destroy", rental.id, "--json")
    assert destroyed.returncode == 0, destroyed.stderr
    result = json.loads(destroyed.stdout)  # one JSON document, for a script to read
    assert result["destroyed"] is True and result["allowed"] is True
    assert result["evidence"]["approval"]["channel"] == "tty"
    assert rental.provider.show(rental.id).state == "gone" and rental.destroy_requests() == 1
    assert all(a.consumed is not None for a in rental.ledger.approvals(rental.id))


@pytest.mark.timeout(120)
def test_stopped_box_start_copy_verify_destroy(rental: Rental) -> None:
    rental.provider.stop(rental.id)
    deadline = time.monotonic() + 30
    while rental.provider.show(rental.id).state != "stopped" and time.monotonic() < deadline:
        time.sleep(0.1)
    # The gate cannot re-read the manifest of a stopped box: refused, saying what still bills.
    rental.approve()
    message = rental.refused("box-unreachable")
    assert "is not a meter stop" in message
    assert all(item in message for item in vast_profile().stop_still_bills)
    # A plain pull cannot copy from it and offers start -> copy -> verify -> destroy (the start
    # as the command a terminal user types; an MCP agent is told the start tool: test_start.py).
    pulled = rgt("pull", rental.id, REMOTE_ROOT, str(rental.local))
    assert pulled.returncode == 3, pulled.stderr
    assert f"Start it (`rgt start {rental.id}`" in pulled.stderr
    assert "copy → verify → destroy" in pulled.stderr
    assert "is not a meter stop" in pulled.stderr and "still bills disk" in pulled.stderr
    rental.assert_alive()
    # The offered path works end to end (pull --start is `rgt start` then the pull).
    started = rgt("pull", rental.id, REMOTE_ROOT, str(rental.local), "--start")
    assert started.returncode == 0, started.stderr
    # --start is `rgt start`'s own path: the start is in the ledger (cost estimates use it).
    assert ("starting", "started by rgt") in [e[1:] for e in rental.ledger.state_history(rental.id)]
    assert rgt("verify", str(rental.local)).returncode == 0
    from rgt.gate import destroy_with_gate

    # The refused attempt above spent the first approval: the human approves what is now true.
    assert rental.ledger.usable_approval(rental.id) is None
    rental.approve()
    outcome = destroy_with_gate(
        rental.id, provider=rental.provider, ledger=rental.ledger, profile=vast_profile()
    )
    assert outcome.confirmed_state == "gone" and rental.destroy_requests() == 1


@pytest.mark.timeout(60)
def test_pull_on_a_terminal_draws_a_progress_bar_and_a_repeat_sends_nothing(
    rental: Rental,
) -> None:
    terminal = PtyProcess("pull", rental.id, REMOTE_ROOT, str(rental.local))
    terminal.expect(f"pull {rental.id} [")
    assert terminal.wait() == 0, terminal.text
    assert "100.0%" in terminal.text and "next: rgt verify" in terminal.text
    # Headless (a pipe, as an agent captures it): no bar, no carriage returns.
    again = rgt("pull", rental.id, REMOTE_ROOT, str(rental.local))
    assert again.returncode == 0 and "\r" not in again.stderr
    assert ", 0 sent this time)" in again.stdout  # everything was already here


@pytest.mark.timeout(90)
def test_pull_refuses_an_empty_or_foreign_local_dir_and_never_moves_the_users_files(
    rental: Rental, tmp_path: Path
) -> None:
    # Was: '' meant the current directory, and a pull into a folder of the user's moved its
    # `.env.sample`, `src/.eslintrc.config` and `.profile.backup` under .rsync-partial/.
    project = tmp_path / "project"
    write_results(project, USER_FILES)
    before = tree_of(project)
    allowed = "give a new or empty directory, or the directory of an earlier `rgt pull` of this run"

    def rgt_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return subprocess.run(
            [sys.executable, "-m", "rgt", *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": path},
            timeout=120,
        )

    empty = rgt_in(project, "pull", rental.id, REMOTE_ROOT, "")
    assert empty.returncode == 2, empty.stderr
    assert empty.stderr.splitlines() == [f"rgt pull: error: LOCAL_DIR '': empty; {allowed}"]
    foreign = rgt_in(project, "pull", rental.id, REMOTE_ROOT, ".")
    assert foreign.returncode == 2, foreign.stderr
    assert foreign.stderr.splitlines() == [
        f"rgt pull: error: LOCAL_DIR {project.resolve()}: not empty and not the directory of an "
        f"earlier pull (no PULL_MANIFEST.json); {allowed}"
    ]
    assert tree_of(project) == before
    assert rental.ledger.pulls() == []
    rental.assert_alive()

    # The folder of an earlier pull of this run takes the run again; the user's files stay put.
    assert rgt("pull", rental.id, REMOTE_ROOT, str(rental.local)).returncode == 0
    write_results(rental.local, USER_FILES)
    again = rgt("pull", rental.id, REMOTE_ROOT, str(rental.local))
    assert again.returncode == 0, again.stderr
    for relative, content in USER_FILES.items():
        assert (rental.local / relative).read_bytes() == content
    assert not (rental.local / ".rsync-partial").exists()
    assert len(rental.ledger.pulls()) == 2
