"""rgt.checkpoint: atomic save, load-latest, keep-last-N, survival of a writer killed mid-save."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rgt import checkpoint
from rgt.checkpoint import CheckpointError, load, load_latest, save

REPO = Path(__file__).resolve().parents[1]


def test_round_trip_keeps_json_values_and_bytes(tmp_path: Path) -> None:
    state = {
        "weights": b"\x00\x01\xff" * 1000,
        "nested": {"moments": [b"a", b"", 1.5, None, True], "lr": 0.1},
        "name": "run-7",
        "tuple_becomes_list": (1, 2),
    }
    path = save(tmp_path, 12, state)
    assert path.name == "step-000000012.ckpt"
    loaded = load(path)
    assert loaded.step == 12
    assert loaded.state == {**state, "tuple_becomes_list": [1, 2]}


def test_keep_last_n_prunes_oldest_only(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        save(tmp_path, step, {"step": step}, keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [15, 20]
    for step in (25, 30):
        save(tmp_path, step, {"step": step}, keep=None)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [15, 20, 25, 30]


def test_a_corrupt_later_checkpoint_does_not_push_out_the_good_ones(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        save(tmp_path, step, {"step": step}, keep=2)
    (tmp_path / "step-000000030.ckpt").write_bytes(b"RGTCKPT1\n torn")
    resumed = load_latest(tmp_path)
    assert resumed is not None and resumed.step == 20
    save(tmp_path, 21, {"step": 21}, keep=2)
    steps = [s for s, _ in checkpoint.list_checkpoints(tmp_path)]
    assert steps == [20, 21, 30]  # 20 and 21 kept; the torn 30 is not counted (nor trusted)
    latest = load_latest(tmp_path)
    assert latest is not None and latest.step == 21


def test_load_latest_is_none_on_fresh_start(tmp_path: Path) -> None:
    assert load_latest(tmp_path / "missing") is None
    assert load_latest(tmp_path) is None


def test_torn_newest_file_is_skipped_not_trusted(tmp_path: Path) -> None:
    save(tmp_path, 1, {"step": 1, "w": b"x" * 100}, keep=None)
    newest = save(tmp_path, 2, {"step": 2, "w": b"y" * 100}, keep=None)
    # A torn file under a final name (a non-atomic copy, a disk fault): cut off its tail.
    newest.write_bytes(newest.read_bytes()[:-40])
    skipped: list[str] = []
    latest = load_latest(tmp_path, skipped=skipped)
    assert latest is not None and latest.step == 1
    assert len(skipped) == 1 and "SHA-256 mismatch" in skipped[0]
    # One flipped byte is caught just the same.
    data = bytearray((tmp_path / "step-000000001.ckpt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "step-000000001.ckpt").write_bytes(bytes(data))
    assert load_latest(tmp_path) is None


def test_unstorable_values_are_refused_with_their_place(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"state\['opt'\]\[0\]: set is not storable"):
        save(tmp_path, 1, {"opt": [{1, 2}]})
    with pytest.raises(CheckpointError, match="reserved"):
        save(tmp_path, 1, {"$rgt.bytes": 1})
    with pytest.raises(CheckpointError, match="non-negative integer"):
        save(tmp_path, -1, {})
    with pytest.raises(CheckpointError, match="keep must be at least 1"):
        save(tmp_path, 1, {}, keep=0)
    assert not list(tmp_path.iterdir()), "a refused save left a file behind"


def test_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "step-000000001.ckpt"
    bogus.write_bytes(b"\x80\x04pickle-looking bytes")
    with pytest.raises(CheckpointError, match="not an rgt checkpoint"):
        load(bogus)


def test_random_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1234)
    random.random()
    save(tmp_path, 3, {"rng": checkpoint.random_state()})
    expected = [random.random() for _ in range(5)]
    random.seed(999)
    loaded = load_latest(tmp_path)
    assert loaded is not None
    checkpoint.set_random_state(loaded.state["rng"])
    assert [random.random() for _ in range(5)] == expected


def test_torch_state_round_trips_without_pickle(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(4, 3)
    state = {
        **model.state_dict(),
        "half": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 5),
        "transposed": model.weight.detach().t(),  # not contiguous
        "strided_slice": torch.arange(10.0)[2:9:3],  # offset into a larger storage
        "epoch": 4,
    }
    save(tmp_path, 1, checkpoint.torch_state_to_tree(state))
    loaded = load_latest(tmp_path)
    assert loaded is not None
    restored = checkpoint.tree_to_torch_state(loaded.state)
    assert restored["epoch"] == 4
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), key


def test_temp_files_never_match_the_onstart_resume_pattern(tmp_path: Path) -> None:
    """The boot hook picks RGT_RESUME_FROM with find -name GLOB ! -name '.*' ! -name '*.tmp'."""
    save(tmp_path, 1, {})
    leftover = tmp_path / ".step-000000002.ckpt.abc123.tmp"
    leftover.write_bytes(b"half")
    found = subprocess.run(
        ["find", str(tmp_path), "-maxdepth", "1", "-type", "f", "-name", "step-*.ckpt",
         "!", "-name", ".*", "!", "-name", "*.tmp"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert found == [str(tmp_path / "step-000000001.ckpt")]
    save(tmp_path, 2, {})  # the next save sweeps the killed writer's temp file
    assert not leftover.exists()


WRITER = textwrap.dedent(
    """
    import random, sys
    sys.path.insert(0, sys.argv[2])
    from rgt.checkpoint import load_latest, save
    folder = sys.argv[1]
    latest = load_latest(folder)
    step = latest.step if latest else 0
    print("ready", step, flush=True)
    while True:
        step += 1
        blob = random.Random(step).randbytes(2 * 1024 * 1024)
        save(folder, step, {"step": step, "blob": blob, "tail": [step] * 10}, keep=3)
    """
)


@pytest.mark.timeout(90)
def test_writer_killed_mid_save_leaves_latest_good_checkpoint(tmp_path: Path) -> None:
    """SIGKILL a writer at random moments, many times: every time, the newest checkpoint loads
    with exactly the state of its step, no file under a final name is partial, and the next
    writer resumes from it (steps never go back)."""
    folder = tmp_path / "ckpt"
    chance = random.Random(7)
    killed_mid_save = 0
    last_step = 0
    unpruned = 1
    for _ in range(30):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), str(REPO)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        ready = writer.stdout.readline().split()
        assert ready[0] == "ready"
        assert int(ready[1]) == last_step, "the writer did not resume from the latest checkpoint"
        time.sleep(chance.uniform(0.0, 0.25))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        if list(folder.glob(".*.tmp")):
            killed_mid_save += 1
        for step, path in checkpoint.list_checkpoints(folder):
            loaded = load(path)  # raises if any final-named file is partial
            assert loaded.step == step == loaded.state["step"]
        latest = load_latest(folder)
        if latest is None:
            assert last_step == 0
            continue
        assert latest.step >= last_step
        assert latest.state["blob"] == random.Random(latest.step).randbytes(2 * 1024 * 1024)
        assert latest.state["tail"] == [latest.step] * 10
        # keep=3, plus one per writer killed between its save and its prune: each writer that
        # saved once may have died before pruning; one that saved twice pruned after its first.
        saved = latest.step - last_step
        unpruned = 1 if saved >= 2 else unpruned + saved
        assert len(checkpoint.list_checkpoints(folder)) <= 3 + unpruned
        last_step = latest.step
    assert last_step > 10, "the writers made too little progress to test anything"
    assert killed_mid_save >= 3, f"only {killed_mid_save} kills landed mid-save"
