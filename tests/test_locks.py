"""rgt.locks: one lock per instance (pull, the verification's record, destroy) and one per local
folder; a held lock is a refusal naming its holder, and the kernel frees it when the holder dies.

The pull/destroy races against the vast.ai emulator are in tests/test_ironlaw_crash.py; here
the locks themselves, two pulls into one folder (stand-in provider: real rsync, local "boxes"),
and the verification's record step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rgt.errors import EXIT_REFUSED, Refused
from rgt.ledger import Ledger
from rgt.locks import folder_lock, instance_lock
from rgt.pull import pull_instance
from rgt.verify import verify_pull
from tests.ironlaw_fixtures import REMOTE_ROOT
from tests.ironlaw_standin import assert_box_alive, finished_box

REPO = Path(__file__).resolve().parent.parent

_HOLDER = r"""
import sys
from rgt.locks import instance_lock
with instance_lock(sys.argv[1], "pull"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_held_instance_lock_refuses_naming_the_holder_and_dies_with_it() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, "4242"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(Refused) as caught, instance_lock("4242", "destroy"):
            pass
        assert caught.value.exit_code == EXIT_REFUSED
        assert str(caught.value) == (
            f"instance 4242: another pull of it is in progress right now (pid {holder.pid}); "
            "try again when it has finished"
        )
        with instance_lock("4243", "destroy"):  # another instance is another lock
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no chance to release it: the kernel does
        holder.wait()
    with instance_lock("4242", "destroy"):
        pass


def test_two_holders_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    # The MCP server runs tools on threads of one process: they must not share a lock.
    with (
        folder_lock(tmp_path, "pull"),
        pytest.raises(Refused, match=r"another pull into it is in progress right now"),
        folder_lock(tmp_path, "pull"),
    ):
        pass
    with folder_lock(tmp_path, "pull"):
        pass


_SLOW_PULL = r"""
import sys
from pathlib import Path
from rgt.ledger import Ledger
from rgt.pull import pull_instance
from tests.ironlaw_standin import LocalBoxProvider
provider = LocalBoxProvider(Path(sys.argv[1]), bwlimit_kbps=500)
with Ledger.open() as ledger:
    pull_instance(sys.argv[2], sys.argv[3], sys.argv[4], provider=provider, ledger=ledger)
"""


@pytest.mark.timeout(60)
def test_a_second_pull_into_the_same_folder_or_of_the_same_instance_is_refused(
    tmp_path: Path,
) -> None:
    # Was: both copied into the same folder at once (a confusing rsync temp-file error).
    big = {"ckpt/big.pt": os.urandom(3_000_000), "metrics/metrics.json": b"{}"}
    provider, _, _, _ = finished_box(tmp_path / "boxes", "1001", big)
    finished_box(tmp_path / "boxes", "1002", big)
    local = tmp_path / "local"
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PULL, str(tmp_path / "boxes"), "1001", REMOTE_ROOT, local],
        cwd=REPO,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list((local / "ckpt").glob(".big.pt.*")):
            time.sleep(0.02)
        assert child.poll() is None, "the slow pull ended before the test could race it"
        with Ledger.open() as ledger:
            with pytest.raises(Refused) as into_folder:
                pull_instance("1002", REMOTE_ROOT, local, provider=provider, ledger=ledger)
            with pytest.raises(Refused) as of_instance:
                pull_instance(
                    "1001", REMOTE_ROOT, tmp_path / "other", provider=provider, ledger=ledger
                )
            assert ledger.pulls() == []
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert str(into_folder.value) == (
        f"LOCAL_DIR {local.resolve()}: another pull into it is in progress right now "
        f"(pid {child.pid}); wait for it to finish, or pull into another directory"
    )
    assert str(of_instance.value).startswith(
        f"instance 1001: another pull of it is in progress right now (pid {child.pid})"
    )
    assert not (tmp_path / "other").exists()
    assert_box_alive(provider, "1001")
    assert_box_alive(provider, "1002")
    # The killed pull's locks died with it: the same pull now resumes and is recorded.
    with Ledger.open() as ledger:
        result = pull_instance("1001", REMOTE_ROOT, local, provider=provider, ledger=ledger)
        assert [p.id for p in ledger.pulls()] == [result.pull_id]
    assert (local / "ckpt" / "big.pt").read_bytes() == big["ckpt/big.pt"]


def test_a_verification_is_not_recorded_while_the_instance_is_locked(tmp_path: Path) -> None:
    files = {"ckpt/weights.bin": os.urandom(1000), "metrics/metrics.json": b"{}"}
    provider, _, _, _ = finished_box(tmp_path / "boxes", "1001", files)
    local = tmp_path / "local"
    with Ledger.open() as ledger:
        pull_instance("1001", REMOTE_ROOT, local, provider=provider, ledger=ledger)
        with (
            instance_lock("1001", "pull"),  # as a pull of it in another process holds it
            pytest.raises(Refused, match=r"^instance 1001: another pull of it is in progress"),
        ):
            verify_pull(local, ledger=ledger)
        assert ledger.latest_verification("1001") is None
        verify_pull(local, ledger=ledger)
        assert ledger.latest_verification("1001") is not None
