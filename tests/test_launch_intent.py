"""A launch that fails never leaves a box billing and unrecorded (issue #18 items 3 and 8).

Every launch is written to the ledger as a pending intent before its create request; a create
whose answer is lost is resolved by the run's label; a ledger that cannot be written before the
create rents nothing, and one that fails after it gets a plain message; `rgt sweep` lists and
resolves pending launches. All against the vast.ai emulator through the real SDK; full disks are
real (a small tmpfs holds the ledger), so those tests need root to mount it and skip without.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rgt import lifecycle
from rgt.errors import ProviderError
from rgt.job import load_job
from rgt.ledger import Ledger, LedgerError
from rgt.profile import load_profile
from rgt.providers.base import Instance
from rgt.providers.retry import RetryPolicy
from rgt.providers.vastai import VastProvider, run_label
from rgt.sweep import LAUNCH_SETTLE_SECONDS, format_report, sweep
from tests.conftest import CANARY_API_KEY, assert_no_canary

EXAMPLE_JOB = Path(__file__).parents[1] / "schemas" / "job.example.yaml"
LABEL = run_label("example-run")
# Fast, still bounded: the emulator answers in milliseconds.
FAST_RETRY = RetryPolicy(attempts=4, total_seconds=20, first_backoff=0.05, max_backoff=0.2)

pytestmark = pytest.mark.timeout(120)


def _rgt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rgt", *args],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


def _offer(provider: VastProvider) -> Any:
    job = load_job(EXAMPLE_JOB)
    query = lifecycle.offer_query_for_job(job, interruptible=False, limit=5)
    return provider.search_offers(query)[0]


def _launch(provider: VastProvider, ledger: Ledger, offer: Any) -> lifecycle.LaunchResult:
    return lifecycle.launch(
        provider=provider,
        ledger=ledger,
        profile=load_profile("vastai"),
        job=load_job(EXAMPLE_JOB),
        offer_id=offer.id,
        max_price_per_hour=offer.dph_total + 1,
    )


def _boxes(emulator: Any) -> list[int]:
    """The emulator's instances that exist (not destroyed), each with its disk."""
    boxes = list(emulator.instance_ids())
    assert all(emulator.instance_disk(box).is_dir() for box in boxes)
    return boxes


# -- a real full disk ------------------------------------------------------------------------------


@pytest.fixture
def ledger_on_tmpfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Any]]:
    """RGT_STATE_DIR on a 2 MiB tmpfs with a fresh ledger in it, and `fill()` / `free()` that
    take the rest of its space and give it back."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a real full disk: {mounted.stderr.strip()}")
    try:
        monkeypatch.setenv("RGT_STATE_DIR", str(mount))
        (mount / "locks").mkdir()  # the provider's per-label lock files live here
        Ledger.open().close()
        filler = mount / "filler"

        class Disk:
            @staticmethod
            def fill() -> None:
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                try:
                    while True:
                        os.write(fd, b"\0" * 4096)
                except OSError:
                    pass  # ENOSPC: the disk is full
                finally:
                    os.close(fd)

            @staticmethod
            def free() -> None:
                filler.unlink()

        yield mount, Disk
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_before_the_create_rents_nothing(
    emulator: Any, ledger_on_tmpfs: tuple[Path, Any]
) -> None:
    """Was: the box was rented, then recording it failed: exit 70, a box billing, unknown."""
    _, disk = ledger_on_tmpfs
    provider = VastProvider(retry=FAST_RETRY)
    offer = _offer(provider)
    # The ledger is open (as in the MCP server) when the disk fills: the intent cannot be
    # written, so the create is never sent.
    with Ledger.open() as ledger:
        disk.fill()
        with pytest.raises(LedgerError) as caught:
            _launch(provider, ledger, offer)
    message = caught.value.message
    assert caught.value.exit_code == 2 and "\n" not in message
    assert "cannot record the launch before renting" in message
    assert "database or disk is full" in message and "nothing was rented" in message
    assert emulator.request_count("PUT", "/api/v0/asks/*") == 0
    assert _boxes(emulator) == []
    # The same from the CLI: one line, exit 2, before any request. (Whether SQLite can still
    # open the ledger on the full disk depends on whether its -wal and -shm files were left.)
    result = _rgt("launch", offer.id, "--job", str(EXAMPLE_JOB), "--max-price", "5")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert (
        "cannot record the launch before renting" in result.stderr
        or "cannot open the ledger (disk I/O error); is its disk full" in result.stderr
    )
    assert emulator.request_count("PUT", "/api/v0/asks/*") == 0
    assert _boxes(emulator) == []
    assert_no_canary(result.stdout, result.stderr, message)


def test_a_full_disk_after_the_create_says_the_box_bills_unrecorded_and_sweep_records_it(
    emulator: Any, ledger_on_tmpfs: tuple[Path, Any]
) -> None:
    """Was: exit 70 "database or disk is full", a box billing that the ledger never heard of
    and no word of it."""
    _, disk = ledger_on_tmpfs

    class DiskFillsDuringTheCreate(VastProvider):
        # The one seam: the disk fills while the (real) create is on its way back.
        def create(self, *args: Any, **kwargs: Any) -> Instance:
            instance = super().create(*args, **kwargs)
            disk.fill()
            return instance

    provider = DiskFillsDuringTheCreate(retry=FAST_RETRY)
    offer = _offer(provider)
    with Ledger.open() as ledger, pytest.raises(LedgerError) as caught:
        _launch(provider, ledger, offer)
    message = caught.value.message
    (box,) = _boxes(emulator)
    assert caught.value.exit_code == 2 and "\n" not in message
    assert f"instance {box} carrying label {LABEL} was rented and is billing" in message
    assert "it is NOT recorded" in message and "database or disk is full" in message
    assert "`rgt launch` again with the same job" in message and "`rgt sweep`" in message
    with Ledger.open() as ledger:
        assert ledger.instances() == []
        (pending,) = ledger.launches(status="pending")
        assert pending.label == LABEL and pending.offer_id == offer.id
    # Space again: the sweep finds the pending launch's box by its label and records it.
    disk.free()
    swept = _rgt("sweep")
    assert swept.returncode == 1, swept.stderr
    assert f"launch #{pending.id} ({LABEL}, offer {offer.id}): resolved" in swept.stdout
    assert "recorded-by-sweep" in swept.stdout
    with Ledger.open() as ledger:
        record = ledger.instance("vastai", str(box))
        assert ledger.launches(status="pending") == []
    job = load_job(EXAMPLE_JOB)
    assert record is not None and record.label == LABEL and record.offer_id == offer.id
    assert record.results_root == job.results_root and record.roster == list(job.roster)
    assert record.price_per_hour == pytest.approx(offer.dph_total)
    assert _boxes(emulator) == [box]  # nothing more rented, nothing destroyed
    assert_no_canary(swept.stdout, swept.stderr, message)


# -- lost and cut-off answers ----------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["connection", "body"])
def test_a_cut_off_create_answer_is_resolved_by_the_label_and_recorded(
    emulator: Any, cut: str
) -> None:
    """Was (cut connection): ChunkedEncodingError taken for "not done": exit 3, a box billing,
    not in the ledger."""
    provider = VastProvider(retry=FAST_RETRY)
    offer = _offer(provider)
    emulator.fail_next(1, cut=cut, method="PUT", path="/api/v0/asks/*")
    with Ledger.open() as ledger:
        result = _launch(provider, ledger, offer)
        (launch,) = ledger.launches()
        record = ledger.instance("vastai", result.instance_id)
    assert _boxes(emulator) == [int(result.instance_id)]
    assert emulator.request_count("PUT", "/api/v0/asks/*") == 1
    assert launch.status == "rented" and launch.instance_id == result.instance_id
    assert record is not None and record.offer_id == offer.id


def test_retries_exhausted_after_the_create_was_done_say_so_and_sweep_resolves_it(
    emulator: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """The create is carried out, then every call fails (its answer, each look-up for the
    label, each retry). Was: exit 3 "list instances failed", a box billing, no record."""
    provider = VastProvider(retry=FAST_RETRY)
    offer = _offer(provider)
    # Through: the launch's look-up for the label, the offer search, the provider's look-up.
    emulator.fail_next(1000, status=503, after_commit=True, skip=3)
    with Ledger.open() as ledger, pytest.raises(ProviderError) as caught:
        _launch(provider, ledger, offer)
    emulator.fail_next(0)
    message = caught.value.message
    assert "\n" not in message and caught.value.exit_code == 3
    assert f"whether a box carrying label {LABEL} was rented is unknown" in message
    assert "the launch is pending in the ledger" in message and "`rgt sweep`" in message
    assert emulator.request_count("PUT", "/api/v0/asks/*") == 1  # never sent twice
    (box,) = _boxes(emulator)
    with Ledger.open() as ledger:
        (pending,) = ledger.launches(status="pending")
        assert pending.pid is None  # its process is done with it
        report = sweep(provider=provider, ledger=ledger, profile=load_profile("vastai"))
        (row,) = report.launches
        assert (row.outcome, row.instance_id) == ("recorded", str(box))
        assert ledger.instance("vastai", str(box)) is not None
        assert ledger.launches(status="pending") == []
    assert report.flagged and "recorded-by-sweep" in format_report(report)
    out, err = capfd.readouterr()
    assert_no_canary(out, err, message)


def test_an_offer_taken_before_the_create_closes_the_launch_as_not_rented(emulator: Any) -> None:
    """The platform refuses the create outright (someone rented the offer's GPUs between the
    search and the create): certain that nothing was rented, so the launch is closed."""

    class SomeoneRentsTheOfferFirst(VastProvider):
        def create(self, offer_id: str, **kwargs: Any) -> Instance:
            other = VastProvider(retry=FAST_RETRY)
            for n in range(16):  # a machine has at most 8 GPUs
                try:
                    other.create(
                        offer_id, image="img", disk_gb=40, onstart="true", label=f"rgt:o{n}"
                    )
                except ProviderError:
                    break
            return super().create(offer_id, **kwargs)

    provider = SomeoneRentsTheOfferFirst(retry=FAST_RETRY)
    offer = _offer(provider)
    with Ledger.open() as ledger, pytest.raises(ProviderError) as caught:
        _launch(provider, ledger, offer)
    assert "no_such_ask" in caught.value.message and caught.value.exit_code == 3
    with Ledger.open() as ledger:
        (launch,) = ledger.launches()
        assert launch.status == "not-rented" and "no_such_ask" in (launch.detail or "")
        assert ledger.instances() == []
    assert LABEL not in [i.label for i in provider.list_instances()]


def test_a_relaunch_adopts_the_box_of_a_pending_launch_with_that_launchs_facts(
    emulator: Any,
) -> None:
    """A launch killed mid-create (its intent pending, its box rented): the same launch again
    rents nothing and records the box with the pending launch's offer and price."""
    provider = VastProvider(retry=FAST_RETRY)
    offer = _offer(provider)
    job = load_job(EXAMPLE_JOB)
    with Ledger.open() as ledger:
        pending = ledger.record_launch_intent(
            "vastai",
            label=LABEL,
            run_id=job.run_id,
            profile="vastai",
            offer_id=offer.id,
            price_per_hour=offer.dph_total,
            max_price_per_hour=5.0,
            interruptible=False,
            results_root=job.results_root,
            roster=list(job.roster),
        )
        box = provider.create(offer.id, image="img", disk_gb=40, onstart="true", label=LABEL)
        result = _launch(provider, ledger, offer)
        launch = ledger.launch(pending)
        record = ledger.instance("vastai", box.id)
    assert result.adopted and result.instance_id == box.id
    assert _boxes(emulator) == [int(box.id)]
    assert launch is not None and launch.status == "rented" and launch.instance_id == box.id
    assert record is not None and record.offer_id == offer.id
    assert record.price_per_hour == pytest.approx(offer.dph_total)


# -- rgt sweep and pending launches ------------------------------------------------------------


def test_sweep_lists_a_launch_in_doubt_and_resolves_each_by_its_label(emulator: Any) -> None:
    provider = VastProvider(retry=FAST_RETRY)
    offer = _offer(provider)

    def intent(ledger: Ledger, run_id: str) -> int:
        return ledger.record_launch_intent(
            "vastai",
            label=run_label(run_id),
            run_id=run_id,
            profile="vastai",
            offer_id=offer.id,
            price_per_hour=offer.dph_total,
            max_price_per_hour=5.0,
            interruptible=False,
            results_root="/workspace/results",
            roster=["cell-a"],
        )

    found = provider.create(
        offer.id, image="img", disk_gb=40, onstart="true", label=run_label("found")
    )
    with Ledger.open() as ledger:
        running = intent(ledger, "running")  # this process is still launching it
        ended = intent(ledger, "ended")  # its process ended without finding a box
        ledger.record_launch_outcome(ended, "pending", detail="create: HTTP 503")
        boxed = intent(ledger, "found")
        soon = sweep(provider=provider, ledger=ledger, profile=load_profile("vastai"))
        outcomes = {row.launch_id: (row.outcome, row.instance_id) for row in soon.launches}
        assert outcomes == {
            running: ("in-doubt", None),
            ended: ("in-doubt", None),  # its create might still land
            boxed: ("recorded", found.id),
        }
        text = format_report(soon)
        assert f"launch #{running} (rgt:running, offer {offer.id}): LAUNCH IN DOUBT" in text
        assert soon.flagged and soon.to_json()["launches"][0]["outcome"] == "in-doubt"
        later = sweep(
            provider=provider,
            ledger=ledger,
            profile=load_profile("vastai"),
            now=time.time() + LAUNCH_SETTLE_SECONDS + 1,
        )
        outcomes = {row.launch_id: row.outcome for row in later.launches}
        assert outcomes == {running: "in-doubt", ended: "not-rented"}
        assert [launch.id for launch in ledger.launches(status="pending")] == [running]
        record = ledger.instance("vastai", found.id)
        assert record is not None and record.offer_id == offer.id
    assert _boxes(emulator) == [int(found.id)]


def test_ctrl_c_mid_create_leaves_a_pending_launch_that_sweep_resolves(emulator: Any) -> None:
    """The launch process dies while its create request is on the platform: the intent it
    wrote before the request is what lets `rgt sweep` find and record the box."""
    import signal

    offer = _offer(VastProvider())
    emulator.add_latency(2.0)
    ctrl_c_able = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'rgt'; runpy.run_module('rgt', run_name='__main__')"
    )
    launch = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ctrl_c_able,
            "launch",
            offer.id,
            "--job",
            str(EXAMPLE_JOB),
            "--max-price",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while emulator.request_count("PUT", "/api/v0/asks/*") == 0:
        assert time.monotonic() < deadline and launch.poll() is None
        time.sleep(0.05)
    launch.send_signal(signal.SIGINT)
    _, stderr = launch.communicate(timeout=30)
    emulator.add_latency(0)
    assert launch.returncode == 130 and "rgt sweep" in stderr
    with Ledger.open() as ledger:
        (pending,) = ledger.launches(status="pending")
    deadline = time.monotonic() + 20
    while not _boxes(emulator):  # the platform finishes the create
        assert time.monotonic() < deadline
        time.sleep(0.1)
    swept = _rgt("sweep", "--json")
    assert swept.returncode == 1, swept.stderr
    report = json.loads(swept.stdout)
    (row,) = report["launches"]
    (box,) = _boxes(emulator)
    assert (row["launch_id"], row["outcome"], row["instance_id"]) == (
        pending.id,
        "recorded",
        str(box),
    )
    flags = {r["instance_id"]: r["flags"] for r in report["instances"]}
    assert "recorded-by-sweep" in flags[str(box)] and "unknown-to-ledger" not in flags[str(box)]
    assert_no_canary(stderr, swept.stdout, swept.stderr)


# -- poll: one 404 is not "gone" -------------------------------------------------------------------


def test_poll_after_one_transient_404_neither_says_nor_records_gone(emulator: Any) -> None:
    """Was: "gone → nothing to do, billing nothing" printed and `gone` written to the ledger
    while the box ran."""
    offer = _offer(VastProvider())
    launched = _rgt("launch", offer.id, "--job", str(EXAMPLE_JOB), "--max-price", "5", "--json")
    assert launched.returncode == 0, launched.stderr
    instance_id = json.loads(launched.stdout)["instance_id"]
    emulator.fail_next(1, status=404, method="GET", path=f"/api/v0/instances/{instance_id}/")
    polled = _rgt("poll", instance_id)
    assert polled.returncode == 0, polled.stderr
    assert "gone" not in polled.stdout and "billing nothing" not in polled.stdout
    with Ledger.open() as ledger:
        states = [state for _, state, _ in ledger.state_history(instance_id)]
    assert "gone" not in states
    assert int(instance_id) in _boxes(emulator)


# -- the key inside the job ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["command", "file", "file-b64"])
def test_launch_refuses_a_job_whose_text_holds_the_api_key_and_rents_nothing(
    emulator: Any, tmp_path: Path, where: str
) -> None:
    """Was: the key pasted into `command` or a file travelled to the box inside the onstart
    (only an env value equal to the key was refused)."""
    text = EXAMPLE_JOB.read_text()
    if where == "command":
        text = text.replace("--ckpt-every 5", f"--ckpt-every 5 --token {CANARY_API_KEY}", 1)
    elif where == "file":  # ends in a newline: shipped as a here-document
        text = text.replace('    """A tiny', f'    # key: {CANARY_API_KEY}\n    """A tiny', 1)
    else:  # no final newline: shipped as one base64 word
        text += f'  /workspace/job/key.txt: "{CANARY_API_KEY}"\n'
    assert CANARY_API_KEY in text
    job = tmp_path / "job.yaml"
    job.write_text(text)
    offer = _offer(VastProvider())
    result = _rgt("launch", offer.id, "--job", str(job), "--max-price", "5")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "onstart: holds this account's vast.ai API key" in result.stderr
    assert "nothing was rented" in result.stderr
    assert_no_canary(result.stdout, result.stderr)
    assert emulator.request_count("PUT", "/api/v0/asks/*") == 0 and _boxes(emulator) == []
    with Ledger.open() as ledger:
        (launch,) = ledger.launches()
    assert launch.status == "not-rented"
    assert_no_canary(launch.detail or "")
    for name in ("ledger.sqlite3", "ledger.sqlite3-wal"):
        with contextlib.suppress(FileNotFoundError):
            assert_no_canary((Path(os.environ["RGT_STATE_DIR"]) / name).read_bytes())


@pytest.mark.parametrize(
    ("field", "secret"),
    [("command", "key"), ("files[/workspace/job/train.py]", "key"), ("command", "secret")],
)
def test_render_refuses_a_job_whose_text_holds_the_key_or_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, secret: str
) -> None:
    """`rgt render` printed the script with the value in it, to the terminal or a file."""
    value = CANARY_API_KEY if secret == "key" else "hf_canary_5e2d8c1a9b7f"
    monkeypatch.setenv("HF_TOKEN", "hf_canary_5e2d8c1a9b7f")
    text = EXAMPLE_JOB.read_text().replace("secret_env: []", "secret_env: [HF_TOKEN]", 1)
    if field == "command":
        text = text.replace("--ckpt-every 5", f"--ckpt-every 5 --token {value}", 1)
    else:
        text = text.replace('    """A tiny', f'    # token: {value}\n    """A tiny', 1)
    job = tmp_path / "job.yaml"
    job.write_text(text)
    out = tmp_path / "onstart.sh"
    for extra in ([], ["-o", str(out)]):
        result = _rgt("render", "vastai", "onstart", "--job", str(job), *extra)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        name = "this account's vast.ai API key" if secret == "key" else "HF_TOKEN"
        assert f"{job}: {field}: holds" in result.stderr and name in result.stderr
        assert value not in result.stdout + result.stderr and not out.exists()
        assert_no_canary(result.stdout, result.stderr)
    # The same job without the value renders.
    job.write_text(text.replace(value, "not-a-secret"))
    assert _rgt("render", "vastai", "onstart", "--job", str(job)).returncode == 0
