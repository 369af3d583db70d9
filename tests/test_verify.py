"""rgt.verify: the bad-input corpus, safe checkpoint loading, and staleness after verification.

Real parts throughout: the box-side rgt.manifest builds the manifest, torch (installed in the
venv) saves and loads real checkpoints, the ledger is the real SQLite one."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from rgt import checkpoint
from rgt.errors import CheckFailed
from rgt.ledger import Ledger
from rgt.manifest import write_manifest
from rgt.verify import (
    VERIFIED_NAME,
    VerificationFailed,
    check_unchanged,
    verify_pull,
)
from tests.conftest import spy_big_file_hashing

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("alone_in_process")]

RUN = "run-9"
INSTANCE = "1001"
REPO = Path(__file__).resolve().parent.parent
RECORD_SCHEMA = json.loads((REPO / "schemas/verification.schema.json").read_text())


def _torch() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
    return torch


def _safetensors(data_bytes: int = 64) -> bytes:
    header = json.dumps(
        {
            "__metadata__": {"step": "100"},
            "w": {"dtype": "F32", "shape": [data_bytes // 4], "data_offsets": [0, data_bytes]},
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + os.urandom(data_bytes)


def _torch_file(obj: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    _torch().save(obj, buffer)
    return buffer.getvalue()


class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class Pull:
    """A box's results with their manifest, and the local copy of them."""

    def __init__(self, tmp_path: Path, files: dict[str, bytes]) -> None:
        self.box = tmp_path / "box" / "results"
        for relative, data in files.items():
            (self.box / relative).parent.mkdir(parents=True, exist_ok=True)
            (self.box / relative).write_bytes(data)
        roster = sorted({relative.split("/")[0] for relative in files})
        write_manifest(self.box, RUN, roster, INSTANCE)
        self.local = tmp_path / "local"
        shutil.copytree(self.box, self.local, symlinks=True)

    def manifest(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.local / "PULL_MANIFEST.json").read_text())
        return document

    def rewrite_manifest(self, document: dict[str, Any]) -> None:
        (self.local / "PULL_MANIFEST.json").write_text(json.dumps(document))

    def fails(self, expected: str, **kwargs: Any) -> list[str]:
        """Verification fails naming `expected`; the record says so; the ledger gains nothing."""
        with Ledger.open() as ledger:
            before = ledger.latest_verification(INSTANCE)
        with pytest.raises(VerificationFailed) as caught:
            verify_pull(self.local, **kwargs)
        assert any(expected in line for line in caught.value.problems), caught.value.problems
        assert json.loads((self.local / VERIFIED_NAME).read_text())["ok"] is False
        with Ledger.open() as ledger:
            assert ledger.latest_verification(INSTANCE) == before
        return caught.value.problems


BASIC = {
    "ckpt/model.safetensors": _safetensors(),
    "ckpt/blob.bin": os.urandom(3000),
    "metrics/metrics.json": b'{"loss": 0.25}',
    "metrics/log.jsonl": b'{"step": 1}\n{"step": 2}\n',
}


@pytest.fixture
def pull(tmp_path: Path) -> Pull:
    return Pull(tmp_path, BASIC)


def test_a_good_pull_verifies_and_is_recorded(pull: Pull) -> None:
    record = verify_pull(pull.local, workers=2)
    jsonschema.Draft202012Validator(RECORD_SCHEMA).validate(record)
    assert record["ok"] and record["problems"] == []
    assert record["run_id"] == RUN and record["instance_id"] == INSTANCE
    manifest_bytes = (pull.local / "PULL_MANIFEST.json").read_bytes()
    assert record["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    assert record["totals"] == {"files": 4, "bytes": sum(map(len, BASIC.values()))}
    assert {c["path"]: c["method"] for c in record["checkpoints"]} == {
        "ckpt/model.safetensors": (
            "safetensors header parsed: 1 tensors, offsets cover the data exactly"
        )
    }
    written = (pull.local / VERIFIED_NAME).read_bytes()
    assert json.loads(written) == record
    with Ledger.open() as ledger:
        verification = ledger.latest_verification(INSTANCE)
    assert verification is not None
    assert verification.record_sha256 == hashlib.sha256(written).hexdigest()
    assert verification.manifest_sha256 == record["manifest_sha256"]
    assert verification.local_dir == str(pull.local.resolve())
    assert check_unchanged(pull.local) is None


# -- the bad-input corpus ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("../outside.bin", "component '..'"),
        ("ckpt/../../etc/passwd", "component '..'"),
        ("/etc/passwd", "is absolute"),
        ("ckpt\\..\\x", "backslash"),
        ("ckpt/a\x00b", "control character"),
        ("ckpt//x", "component ''"),
    ],
)
def test_path_traversal_in_the_manifest(pull: Pull, path: str, expected: str) -> None:
    document = pull.manifest()
    document["files"][0]["path"] = path
    pull.rewrite_manifest(document)
    pull.fails(expected)


def test_roster_traversal_in_the_manifest(pull: Pull) -> None:
    document = pull.manifest()
    document["roster"].append("..")
    pull.rewrite_manifest(document)
    pull.fails("roster entry '..'")


def test_local_symlink_is_refused(pull: Pull, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", pull.local / "ckpt" / "link")
    pull.fails("ckpt/link: is a symlink")


def test_symlink_in_place_of_a_listed_file(pull: Pull) -> None:
    target = pull.local / "ckpt" / "blob.bin"
    moved = pull.local.parent / "blob.bin"
    target.rename(moved)
    os.symlink(moved, target)  # same bytes, reached through a link: still refused
    pull.fails("ckpt/blob.bin: is a symlink")


def test_duplicate_path_in_the_manifest(pull: Pull) -> None:
    document = pull.manifest()
    document["files"].append(dict(document["files"][0]))
    pull.rewrite_manifest(document)
    pull.fails("is listed twice")


def test_truncated_file(pull: Pull) -> None:
    blob = pull.local / "ckpt" / "blob.bin"
    blob.write_bytes(blob.read_bytes()[:-1])
    pull.fails("ckpt/blob.bin: 2999 bytes, the manifest says 3000")


def test_one_flipped_byte(pull: Pull) -> None:
    blob = pull.local / "ckpt" / "blob.bin"
    data = bytearray(blob.read_bytes())
    data[1500] ^= 0x01
    blob.write_bytes(bytes(data))
    pull.fails("ckpt/blob.bin: sha256")


def test_extra_local_file(pull: Pull) -> None:
    (pull.local / "metrics" / "extra.json").write_text("{}")
    (pull.local / "stray.txt").write_text("x")
    problems = pull.fails("metrics/extra.json: extra file")
    assert any("stray.txt: outside the roster" in p for p in problems)


def test_killed_rsync_temp_file_is_extra_but_partial_dir_is_not(pull: Pull) -> None:
    partial = pull.local / "ckpt" / ".rsync-partial"
    partial.mkdir()
    (partial / "blob.bin").write_bytes(b"half")
    assert verify_pull(pull.local)["ok"]
    (pull.local / "ckpt" / ".blob.bin.Ab12Cd").write_bytes(b"half")
    pull.fails("ckpt/.blob.bin.Ab12Cd: extra file")


def test_missing_file(pull: Pull) -> None:
    (pull.local / "metrics" / "metrics.json").unlink()
    pull.fails("metrics/metrics.json: missing")


def test_missing_roster_directory(pull: Pull) -> None:
    shutil.rmtree(pull.local / "metrics")
    pull.fails("metrics/: roster directory missing")


def test_wrong_run_id(pull: Pull) -> None:
    pull.fails("run id 'run-9', expected run 'run-10'", expected_run_id="run-10")


def test_manifest_of_another_instance(pull: Pull) -> None:
    pull.fails("manifest of instance '1001', expected instance '7'", expected_instance_id="7")


def test_manifest_of_another_instance_than_the_recorded_pull(pull: Pull) -> None:
    # The ledger says this directory was pulled from instance 2002; the manifest here is 1001's.
    with Ledger.open() as ledger:
        ledger.record_pull(
            "2002",
            remote_root="/workspace/results",
            local_dir=pull.local,
            manifest_sha256="a" * 64,
            run_id=RUN,
            files=4,
            bytes_total=1,
            bytes_transferred=1,
            attempts=1,
            transport="rsync",
            started=0.0,
        )
    problems = pull.fails("manifest of instance '1001', but this directory was pulled from")
    assert any("is not the manifest pulled into this directory" in p for p in problems)


def test_manifest_without_instance_id(pull: Pull) -> None:
    document = pull.manifest()
    document["instance_id"] = None
    pull.rewrite_manifest(document)
    with pytest.raises(VerificationFailed, match="instance_id is missing"):
        verify_pull(pull.local)


def test_bad_metrics_json(tmp_path: Path) -> None:
    Pull(tmp_path, {**BASIC, "metrics/metrics.json": b'{"loss": 0.25'}).fails(
        "metrics/metrics.json: not valid JSON"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x05\x00", "shorter than the 8-byte header length"),
        ((10**9).to_bytes(8, "little") + b"{}", "header length 1000000000 does not fit"),
        ((2).to_bytes(8, "little") + b"{}" + b"\x00" * 8, "tensors cover 0 bytes of data"),
        (_safetensors()[:-1], "tensors cover 64 bytes of data, the file has 63"),
        ((4).to_bytes(8, "little") + b"nope", "header is not JSON"),
    ],
)
def test_bad_safetensors(tmp_path: Path, data: bytes, expected: str) -> None:
    Pull(tmp_path, {**BASIC, "ckpt/model.safetensors": data}).fails(expected)


# -- staleness after verification ------------------------------------------------------------


def test_same_size_rewrite_with_mtime_restored_is_seen(pull: Pull) -> None:
    verify_pull(pull.local)
    target = pull.local / "metrics" / "metrics.json"
    before = target.stat()
    target.write_bytes(b'{"loss": 0.26}')
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # hide it from mtime
    reason = check_unchanged(pull.local)
    assert reason is not None and "metrics/metrics.json" in reason


def test_stale_after_added_removed_or_replaced(pull: Pull) -> None:
    verify_pull(pull.local)
    extra = pull.local / "ckpt" / "new.bin"
    extra.write_bytes(b"x")
    assert check_unchanged(pull.local) == "ckpt/new.bin was added"
    extra.unlink()
    assert check_unchanged(pull.local) is None
    blob = pull.local / "ckpt" / "blob.bin"
    data = blob.read_bytes()
    blob.unlink()
    assert check_unchanged(pull.local) == "ckpt/blob.bin was removed"
    blob.write_bytes(data)  # same bytes back, a new inode: no longer the verified file
    reason = check_unchanged(pull.local)
    assert reason is not None and "ckpt/blob.bin changed" in reason


def test_change_within_one_timestamp_tick_is_caught_by_rehash(pull: Pull) -> None:
    record = verify_pull(pull.local)
    target = pull.local / "metrics" / "metrics.json"
    row = next(r for r in record["files"] if r["path"] == "metrics/metrics.json")
    # Rewrite in place keeping size, and make every stat field look as verified (the case a
    # coarse clock produces): only the content differs. mtime can be put back; ctime cannot,
    # so fake the record's view instead: the file is racily clean.
    target.write_bytes(b'{"loss": 0.99}')
    now = target.stat()
    document = json.loads((pull.local / VERIFIED_NAME).read_text())
    for entry in document["files"]:
        if entry["path"] == row["path"]:
            entry["stat"] = [now.st_size, now.st_mtime_ns, now.st_ctime_ns, now.st_ino, now.st_dev]
    document["snapshot"]["taken_ns"] = now.st_ctime_ns
    data = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()
    (pull.local / VERIFIED_NAME).write_bytes(data)
    with Ledger.open() as ledger:  # as if the verifier itself had written this record
        ledger.record_verification(
            INSTANCE,
            local_dir=pull.local,
            manifest_sha256=record["manifest_sha256"],
            run_id=RUN,
            record_sha256=hashlib.sha256(data).hexdigest(),
        )
    assert check_unchanged(pull.local) == (
        "metrics/metrics.json changed (its content no longer matches the manifest)"
    )


def test_forged_record_never_verified_is_not_evidence(pull: Pull) -> None:
    forged = {
        "schema": "rgt.pull-verified/v1",
        "ok": True,
        "problems": [],
        "run_id": RUN,
        "instance_id": INSTANCE,
        "manifest_sha256": "0" * 64,
        "files": [{"path": p, "size": len(d), "sha256": "0" * 64, "ok": True} for p, d in
                  BASIC.items()],
    }  # fmt: skip
    (pull.local / VERIFIED_NAME).write_text(json.dumps(forged))
    assert check_unchanged(pull.local) == (
        f"no verification of instance {INSTANCE} is recorded in the ledger"
    )


def test_forged_record_after_a_real_verification(pull: Pull) -> None:
    verify_pull(pull.local)
    path = pull.local / VERIFIED_NAME
    document = json.loads(path.read_text())
    for row in document["files"]:
        row["sha256"] = "0" * 64
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    reason = check_unchanged(pull.local)
    assert reason is not None and "edited or forged" in reason


def test_a_failed_reverification_replaces_the_passing_record(pull: Pull) -> None:
    verify_pull(pull.local)
    (pull.local / "ckpt" / "blob.bin").write_bytes(b"y" * 3000)
    with pytest.raises(VerificationFailed):
        verify_pull(pull.local)
    reason = check_unchanged(pull.local)
    assert reason is not None and "edited or forged" in reason


# -- checkpoints ------------------------------------------------------------------------------


def test_torch_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    torch = _torch()
    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "step": 7}
    files = {**BASIC, "ckpt/model.pt": _torch_file(state), "ckpt/opt.pth": _torch_file([1, 2])}
    record = verify_pull(Pull(tmp_path, files).local)
    methods = {c["path"]: c["method"] for c in record["checkpoints"]}
    assert methods["ckpt/model.pt"] == "torch.load(weights_only=True)"
    assert methods["ckpt/opt.pth"] == "torch.load(weights_only=True)"
    assert record["allow_pickle"] is False


def test_pickle_checkpoint_refused_by_default_and_allowed_explicitly(tmp_path: Path) -> None:
    files = {**BASIC, "ckpt/meta.pt": _torch_file({"when": datetime.date(2026, 1, 1)})}
    pull = Pull(tmp_path, files)
    pull.fails("ckpt/meta.pt: checkpoint does not load safely: refused to unpickle")
    record = verify_pull(pull.local, allow_pickle=True)
    assert record["allow_pickle"] is True
    methods = {c["path"]: c["method"] for c in record["checkpoints"]}
    assert methods["ckpt/meta.pt"] == "torch.load(weights_only=False) --allow-pickle"
    with Ledger.open() as ledger:
        verification = ledger.latest_verification(INSTANCE)
    assert verification is not None and verification.allow_pickle is True


@pytest.mark.parametrize("torch_present", [True, False])
def test_malicious_pickle_is_never_executed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_present: bool
) -> None:
    marker = tmp_path / "pwned"
    Evil.marker = str(marker)
    files = {**BASIC, "ckpt/evil.pt": _torch_file({"x": Evil()})}
    pull = Pull(tmp_path, files)
    if not torch_present:
        monkeypatch.setattr("rgt.verify._torch_module", lambda: None)
        problems = pull.fails("ckpt/evil.pt: checkpoint does not load safely")
        assert any("names posix.system" in p and "nothing was unpickled" in p for p in problems)
    else:
        pull.fails("ckpt/evil.pt: checkpoint does not load safely: refused to unpickle")
    assert not marker.exists()


def test_raw_pickle_named_pt_is_refused(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"
    Evil.marker = str(marker)
    pull = Pull(tmp_path, {**BASIC, "ckpt/raw.pt": pickle.dumps(Evil())})
    pull.fails("ckpt/raw.pt: checkpoint does not load safely")
    assert not marker.exists()


def test_without_torch_a_plain_torch_file_passes_the_opcode_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = _torch()
    files = {**BASIC, "ckpt/model.pt": _torch_file({"w": torch.ones(2, 2), "b": torch.zeros(2)})}
    monkeypatch.setattr("rgt.verify._torch_module", lambda: None)
    record = verify_pull(Pull(tmp_path, files).local)
    methods = {c["path"]: c["method"] for c in record["checkpoints"]}
    assert methods["ckpt/model.pt"] == "pickle opcodes scanned, not executed (torch not installed)"


def test_rgt_checkpoint_format(tmp_path: Path) -> None:
    good = checkpoint.encode(5, {"lr": 0.1, "weights": b"\x00\x01"})
    files = {**BASIC, "ckpt/step-000000005.ckpt": good}
    record = verify_pull(Pull(tmp_path / "a", files).local)
    methods = {c["path"]: c["method"] for c in record["checkpoints"]}
    assert methods["ckpt/step-000000005.ckpt"].startswith("rgt.checkpoint.load")
    torn = {**BASIC, "ckpt/step-000000005.ckpt": good[:-5] + b"\x00" * 5}
    Pull(tmp_path / "b", torn).fails("ckpt/step-000000005.ckpt: checkpoint does not load safely")


# -- the command -------------------------------------------------------------------------------


def _rgt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rgt", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_rgt_verify_command(pull: Pull) -> None:
    done = _rgt("verify", str(pull.local), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] and summary["totals"]["files"] == 4
    blob = pull.local / "ckpt" / "blob.bin"
    blob.write_bytes(blob.read_bytes()[:-1])
    (pull.local / "metrics" / "extra.json").write_text("{}")
    failed = _rgt("verify", str(pull.local))
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert lines[0] == "rgt verify: FAILED: metrics/extra.json: extra file, not in the manifest"
    assert lines[1].startswith("rgt verify: FAILED: ckpt/blob.bin: 2999 bytes")
    assert "do NOT destroy" in lines[-1] and len(lines) == 3
    missing = _rgt("verify", str(pull.local.parent / "nowhere"))
    assert missing.returncode == 2 and "not a directory" in missing.stderr  # a bad argument
    assert "Traceback" not in missing.stderr


def test_many_small_files_take_the_forked_path_and_still_catch_one_flip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lone_thread: None
) -> None:
    from rgt import manifest

    forks: list[int] = []
    real = manifest.fork_map

    def spy(shares: Any, *args: Any) -> Any:
        forks.append(len(shares))
        return real(shares, *args)

    monkeypatch.setattr(manifest, "fork_map", spy)
    files = {f"metrics/m{i // 1000}/{i:05d}.json": b'{"i": %d}' % i for i in range(4200)}
    pull = Pull(tmp_path, {**BASIC, **files})
    cpus = manifest.default_workers()
    assert forks == ([cpus] if cpus > 1 else [])  # the manifest build forked too
    forks.clear()
    record = verify_pull(pull.local, workers=2)
    assert forks == [2]
    assert record["totals"]["files"] == 4204
    assert all(row["ok"] and len(row["stat"]) == 5 for row in record["files"])
    assert check_unchanged(pull.local) is None
    (pull.local / "metrics/m3/03999.json").write_bytes(b'{"i": 3998}')
    pull.fails("metrics/m3/03999.json: sha256")


def test_big_json_is_parsed_too(tmp_path: Path) -> None:
    big = json.dumps({"losses": list(range(300_000))}).encode()  # > 1 MiB: parsed after hashing
    assert len(big) > 1024 * 1024
    assert verify_pull(Pull(tmp_path / "a", {**BASIC, "metrics/big.json": big}).local)["ok"]
    Pull(tmp_path / "b", {**BASIC, "metrics/big.json": big[:-1]}).fails(
        "metrics/big.json: not valid JSON"
    )


def test_symlinked_manifest_is_refused(pull: Pull) -> None:
    real = pull.local.parent / "elsewhere.json"
    (pull.local / "PULL_MANIFEST.json").rename(real)
    os.symlink(real, pull.local / "PULL_MANIFEST.json")
    with pytest.raises(CheckFailed, match=r"PULL_MANIFEST\.json: is a symlink"):
        verify_pull(pull.local)


def _without_times(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.items()
        if k not in ("verified_at", "started_at", "seconds", "snapshot")
    }


def _spy_general_path(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of the general path (rgt.verify._verify_tree) from here to the end of the test."""
    from rgt import verify

    calls: list[int] = []
    real = verify._verify_tree

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(verify, "_verify_tree", spy)
    return calls


# Enough files for the forked fast path once the fork threshold is lowered (the `fork_early`
# fixture): what it proves does not depend on the count, and 4,000 files cost seconds to make.
MANY = {f"m{i % 3}/d{i // 60}/{i:05d}.json": b'{"i": %d}' % i for i in range(150)}


@pytest.fixture
def lone_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """rgt forks only a process that runs no other thread (manifest.only_thread). A test of the
    forked path must not hang on what earlier tests in this pytest process left winding down
    (CI saw one such thread): wait for strays a little, and if one outlives the wait, let this
    test fork beside it (its children only hash files and exit), naming the thread."""
    from rgt import manifest

    deadline = time.monotonic() + 2
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    strays = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if strays:
        warnings.warn(f"threads left by earlier tests: {strays}; forking beside them", stacklevel=1)
        monkeypatch.setattr(manifest, "only_thread", lambda: True)


@pytest.fixture
def fork_early(monkeypatch: pytest.MonkeyPatch, lone_thread: None) -> None:
    from rgt import manifest

    monkeypatch.setattr(manifest, "PROCESS_MIN_FILES", 50)


def test_a_process_running_another_thread_hashes_with_threads_not_forks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork_early: None
) -> None:
    from rgt import manifest

    pull = Pull(tmp_path, MANY)
    forks: list[int] = []
    real = manifest.fork_map
    monkeypatch.setattr(
        manifest, "fork_map", lambda shares, *a: forks.append(len(shares)) or real(shares, *a)
    )
    release = threading.Event()
    other = threading.Thread(target=release.wait, name="an-mcp-server-say")
    other.start()
    try:
        assert not manifest.only_thread()
        record = verify_pull(pull.local, workers=2)
    finally:
        release.set()
        other.join()
    assert record["ok"] and record["totals"]["files"] == len(MANY)
    assert forks == []  # the threaded path did the work
    verify_pull(pull.local, workers=2)
    assert forks == [2]  # alone again: the same pull forks


def test_fast_path_declines_a_manifest_encoded_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork_early: None
) -> None:
    pull = Pull(tmp_path, MANY)
    # The same document, indented: not what rgt's encoder writes, so the byte comparison of the
    # fast path cannot vouch for it; the general path checks every entry and passes it.
    (pull.local / "PULL_MANIFEST.json").write_text(json.dumps(pull.manifest(), indent=1))
    general = _spy_general_path(monkeypatch)
    record = verify_pull(pull.local, workers=2)
    assert record["ok"] and record["totals"]["files"] == len(MANY)
    assert general == [1]


@pytest.mark.parametrize("change", ["none", "drop", "add", "resize", "rehash", "reorder"])
def test_fast_path_hands_any_manifest_difference_to_the_general_path(
    tmp_path: Path, change: str, monkeypatch: pytest.MonkeyPatch, fork_early: None
) -> None:
    from rgt.manifest import encode_manifest

    pull = Pull(tmp_path, MANY)
    document = pull.manifest()
    entries = document["files"]
    victim = entries[100]
    if change == "drop":
        entries.remove(victim)
        expected = f"{victim['path']}: extra file, not in the manifest"
    elif change == "add":
        entries.append({"path": "m2/ghost.json", "sha256": "0" * 64, "size": 2})
        expected = "m2/ghost.json: missing"
    elif change == "resize":
        victim["size"] += 1
        expected = f"{victim['path']}: {victim['size'] - 1} bytes, the manifest says"
    elif change == "rehash":
        victim["sha256"] = "f" * 64
        expected = f"{victim['path']}: sha256"
    elif change == "reorder":  # the same entries out of order: the general path accepts it
        entries.reverse()
        expected = ""
    else:  # the control: nothing changed, the fast path vouches alone
        expected = ""
    # Written as rgt's encoder writes it, so only the entries differ from what the files give.
    (pull.local / "PULL_MANIFEST.json").write_bytes(encode_manifest(document))
    general = _spy_general_path(monkeypatch)
    if expected:
        pull.fails(expected, workers=2)
    else:
        assert verify_pull(pull.local, workers=2)["ok"]
    assert general == ([] if change == "none" else [1])


def test_fast_path_leaves_big_files_to_the_parents_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork_early: None
) -> None:
    from rgt import manifest

    big = os.urandom(manifest.BIG_FILE + 1)
    huge_json = json.dumps({"losses": list(range(1_200_000))}).encode()  # > BIG_FILE, parsed
    assert len(huge_json) > manifest.BIG_FILE
    files = {**MANY, "m0/a.bin": big, "m0/b.json": huge_json, "m0/c.safetensors": _safetensors()}
    pull = Pull(tmp_path, files)
    serial = verify_pull(pull.local, workers=1)
    hashed_by = spy_big_file_hashing(monkeypatch)
    general = _spy_general_path(monkeypatch)
    forked = verify_pull(pull.local, workers=2)
    assert general == []
    assert _without_times(forked) == _without_times(serial)
    assert len(hashed_by) == 2  # a.bin and b.json, in this process, on the hashing threads
    assert all(pid == os.getpid() and name.startswith("rgt-hash") for pid, name in hashed_by)
    (pull.local / "m0/b.json").write_bytes(huge_json[:-1])  # same size class, no longer JSON
    pull.fails("m0/b.json: ", workers=2)


def test_entries_hidden_in_another_files_key_are_not_the_file_list(
    tmp_path: Path, fork_early: None
) -> None:
    from rgt.manifest import encode_manifest

    pull = Pull(tmp_path, MANY)
    document = pull.manifest()
    # The right entries, byte for byte, but under builder.files, followed by a "hash" key as
    # the real list is; the real file list is empty. The fast path must not take them for it.
    document["builder"] = {"files": document["files"], "hash": "x", **document["builder"]}
    document["files"] = []
    data = encode_manifest(document)
    assert data.count(b'"files":[') == 2 and b'"files":[{"path":' in data
    (pull.local / "PULL_MANIFEST.json").write_bytes(data)
    problems = pull.fails("extra file, not in the manifest", workers=2)
    assert len(problems) == len(MANY)


@pytest.mark.parametrize("many", [False, True])  # the general path / the forked fast path
def test_json_nested_too_deeply_is_a_verdict_not_a_crash(
    tmp_path: Path, many: bool, fork_early: None
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # json's C scanner recurses once per level
    files = {**(MANY if many else BASIC), "m0/deep.json": deep}
    Pull(tmp_path, files).fails("m0/deep.json: not valid JSON (nested too deeply to parse)")


@pytest.mark.parametrize("tops", [2, 9])  # parent lists and splits / each worker lists its own
def test_forked_fast_path_writes_the_record_the_general_path_writes(
    tmp_path: Path, tops: int, monkeypatch: pytest.MonkeyPatch, lone_thread: None
) -> None:
    from rgt import manifest

    files = {f"m{i % tops}/d{i // 700}/{i:05d}.json": b'{"i": %d}' % i for i in range(4300)}
    files["m0/ü name.txt"] = b"not json"
    files["m1/w.safetensors"] = _safetensors()
    pull = Pull(tmp_path, files)
    (pull.local / "m0/.rsync-partial").mkdir()  # an interrupted copy's leftovers: skipped
    (pull.local / "m0/.rsync-partial/half").write_bytes(b"partial")
    serial = verify_pull(pull.local, workers=1)
    serial_bytes = (pull.local / VERIFIED_NAME).read_bytes()
    assert check_unchanged(pull.local) is None
    calls: list[int] = []
    real = manifest.fork_map

    def spy(shares: Any, *args: Any) -> Any:
        calls.append(len(shares))
        return real(shares, *args)

    general = _spy_general_path(monkeypatch)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest, "fork_map", spy)
        forked = verify_pull(pull.local, workers=2)
        slim = verify_pull(pull.local, workers=2, keep_rows=False)
    assert calls == [2, 2]
    assert general == [], "a clean pull with a manifest rgt wrote takes the fast path"
    assert _without_times(forked) == _without_times(serial)
    assert "files" not in slim
    assert _without_times({**slim, "files": serial["files"]}) == _without_times(serial)
    record = json.loads((pull.local / VERIFIED_NAME).read_bytes())
    assert _without_times(record) == _without_times(json.loads(serial_bytes))
    assert {c["path"] for c in record["checkpoints"]} == {"m1/w.safetensors"}
    assert check_unchanged(pull.local) is None
    # Anything amiss sends it down the general path, which names it.
    (pull.local / "m1/d3/02101.json").write_bytes(b'{"i": 2101')
    pull.fails("m1/d3/02101.json: ", workers=2)
