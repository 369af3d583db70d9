"""The demo's training job: linear regression by minibatch SGD, in pure Python.

It runs on the (emulated) box, started by the rendered onstart script on every container start:

    python -m rgt.demo.job --steps 240 --ckpt-every 6 --step-seconds 0.04

Small, but it keeps the resume contract a real job must keep:

* full state in every checkpoint (step, weights as bytes, the RNG state, the loss curve), written
  with rgt.checkpoint (atomic; the newest that checks out is loaded on start), so a resumed run
  continues exactly where the checkpoint left it: its final weights equal an uninterrupted run's;
* a results folder, RESULTS_ROOT/linreg/: checkpoints/, metrics.json, starts.json, progress.json.

Every start appends to starts.json what it resumed from and how many steps the previous start had
reached (from progress.json, a per-step heartbeat), so the steps a preemption cost are measured on
the box, not guessed. Stdlib + rgt.checkpoint only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any

from rgt.checkpoint import load_latest, save

RESULT_DIR = "linreg"  # the one roster entry under the results root
FEATURES = 8
SAMPLES = 256
BATCH = 16
LEARNING_RATE = 0.05


def dataset(seed: int) -> tuple[list[list[float]], list[float], list[float]]:
    """Features, targets and the true weights, the same on every start (seeded)."""
    rng = random.Random(seed)
    true_w = [rng.uniform(-2.0, 2.0) for _ in range(FEATURES)]
    xs = [[rng.gauss(0.0, 1.0) for _ in range(FEATURES)] for _ in range(SAMPLES)]
    ys = [sum(w * x for w, x in zip(true_w, row, strict=True)) + rng.gauss(0, 0.1) for row in xs]
    return xs, ys, true_w


def mse(w: list[float], xs: list[list[float]], ys: list[float]) -> float:
    """Mean squared error of weights `w` on the whole data set."""
    total = 0.0
    for row, y in zip(xs, ys, strict=True):
        error = sum(a * b for a, b in zip(w, row, strict=True)) - y
        total += error * error
    return total / len(xs)


def sgd_step(w: list[float], xs: list[list[float]], ys: list[float], rng: random.Random) -> None:
    """One minibatch gradient step on `w` (in place)."""
    grad = [0.0] * FEATURES
    for index in rng.sample(range(SAMPLES), BATCH):
        row = xs[index]
        error = sum(a * b for a, b in zip(w, row, strict=True)) - ys[index]
        for k in range(FEATURES):
            grad[k] += 2.0 * error * row[k] / BATCH
    for k in range(FEATURES):
        w[k] -= LEARNING_RATE * grad[k]


def pack(w: list[float]) -> bytes:
    """Weights as little-endian doubles (a bytes leaf of the checkpoint)."""
    return struct.pack(f"<{len(w)}d", *w)


def unpack(data: bytes) -> list[float]:
    """Inverse of pack."""
    return list(struct.unpack(f"<{len(data) // 8}d", data))


def write_json(path: Path, value: Any, *, durable: bool = True) -> None:
    """Replace `path` atomically (fsync'd unless it is only a heartbeat)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1)
        handle.write("\n")
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: Path, default: Any) -> Any:
    """The JSON in `path`, or `default` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """--steps, --ckpt-every, --step-seconds, --seed, --keep."""
    parser = argparse.ArgumentParser(prog="rgt.demo.job", description=__doc__)
    parser.add_argument("--steps", type=int, default=240, help="training steps in all")
    parser.add_argument("--ckpt-every", type=int, default=6, help="steps between checkpoints")
    parser.add_argument("--step-seconds", type=float, default=0.04, help="simulated GPU time")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=int, default=3, help="checkpoints kept on disk")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train with the paths the onstart script exports; write the results folder."""
    args = parse_args(argv)
    out = Path(os.environ["RGT_RESULTS_ROOT"]) / RESULT_DIR
    train(args, out, Path(os.environ.get("RGT_CHECKPOINT_DIR") or out / "checkpoints"))
    return 0


def train(
    args: argparse.Namespace, out: Path, ckpt_dir: Path, *, verbose: bool = True
) -> dict[str, Any]:
    """Train, resuming from the newest good checkpoint in `ckpt_dir`; returns the metrics."""
    out.mkdir(parents=True, exist_ok=True)
    xs, ys, true_w = dataset(args.seed)

    skipped: list[str] = []
    latest = load_latest(ckpt_dir, skipped=skipped)
    if latest is not None:
        state = latest.state
        step, w = latest.step, unpack(state["w"])
        rng = random.Random()
        rng.setstate((state["rng"][0], tuple(state["rng"][1]), state["rng"][2]))
    else:
        state = {"loss_curve": [], "checkpoints": 0, "checkpoint_seconds": 0.0}
        step, w, rng = 0, [0.0] * FEATURES, random.Random(args.seed + 1)

    starts = read_json(out / "starts.json", [])
    reached = read_json(out / "progress.json", {}).get("step")
    starts.append(
        {
            "start": len(starts) + 1,
            "at": time.time(),
            "resumed_from_step": step,
            "checkpoint": latest.path.name if latest else None,
            "onstart_resume_from": os.path.basename(os.environ.get("RGT_RESUME_FROM", "")),
            "previous_start_reached_step": reached,
            "steps_redone": max(0, reached - step) if isinstance(reached, int) else 0,
            "skipped_corrupt_checkpoints": skipped,
        }
    )
    write_json(out / "starts.json", starts)
    if verbose:
        print(f"rgt demo job: start {len(starts)} at step {step}/{args.steps}", flush=True)

    catch_up = reached if isinstance(reached, int) and reached > step else None
    while step < args.steps:
        time.sleep(args.step_seconds)  # stands in for the GPU's share of a step
        sgd_step(w, xs, ys, rng)
        step += 1
        write_json(out / "progress.json", {"step": step}, durable=False)
        if step == catch_up:  # the work the preemption destroyed is done again: when?
            starts[-1]["caught_up_at"] = time.time()
            write_json(out / "starts.json", starts)
        if step % args.ckpt_every == 0 or step == args.steps:
            state["loss_curve"].append([step, mse(w, xs, ys)])
            began = time.perf_counter()
            version, internal, gauss = rng.getstate()
            state.update(w=pack(w), rng=[version, list(internal), gauss])
            state["checkpoints"] += 1
            save(ckpt_dir, step, state, keep=args.keep)
            state["checkpoint_seconds"] += time.perf_counter() - began

    loss = mse(w, xs, ys)
    error = max(abs(a - b) for a, b in zip(w, true_w, strict=True))
    metrics = {
        "steps": step,
        "final_loss": loss,
        "max_weight_error": error,
        "weights": w,
        "true_weights": true_w,
        "loss_curve": state["loss_curve"],
        "ckpt_every_steps": args.ckpt_every,
        "checkpoints_written": state["checkpoints"],
        "checkpoint_seconds": state["checkpoint_seconds"],
        "starts": len(starts),
        "steps_redone": sum(entry["steps_redone"] for entry in starts),
    }
    write_json(out / "metrics.json", metrics)
    if verbose:
        print(f"rgt demo job: done at step {step}, loss {loss:.5f}", flush=True)
    return metrics


if __name__ == "__main__":
    sys.exit(main())
