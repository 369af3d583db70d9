"""Durable checkpoints: what continuous sync costs the job, and how soon a checkpoint is durable.

A job on an emulated vast.ai box (the embedded emulator, the real rendered boot hook with its
watcher, rsync over the box's real sshd) runs CPU-bound steps (a fixed pure-Python loop) and
writes a checkpoint (random bytes, temp file + rename) every few steps. Three runs of the same
job on this machine:

  none    no `durable:` (no watcher) and no sync: the baseline step time
  local   `durable: local`, with `sync_once` called back to back (1 s apart) from another
          process at the priority of the supervisor's sync thread (rgt.durable.lower_priority:
          nice 10, ionice best-effort 7): each checkpoint is copied and re-hashed here
  bucket  a bucket on a real S3 server on loopback (`rclone serve s3`): the box's watcher pushes
          with rclone, the sync loop reads every object back (`hashsum sha256 --download`)

Figures: the job's step time (median, p90) and, per checkpoint, the delay from its mtime on the
box to the moment the sync loop saw it verified (median, max). Everything (job, watcher, sshd,
S3 server, sync) shares this machine's cores, so the step-time cost is an upper bound of what a
real box (whose cores are not shared with rgt) would see.

    .venv/bin/python bench/bench_durable.py [--steps 1200] [--every 150] [--mib 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import REPO, emit, machine_line, median, percentile, table

sys.path.insert(0, str(REPO))

JOB = r"""
import os, pathlib, time
d = pathlib.Path(os.environ["RGT_CHECKPOINT_DIR"]); d.mkdir(parents=True, exist_ok=True)
steps, every = int(os.environ["B_STEPS"]), int(os.environ["B_EVERY"])
size = int(os.environ["B_BYTES"])
times = []
for step in range(1, steps + 1):
    start = time.perf_counter()
    sum(i * i for i in range(150_000))
    times.append(time.perf_counter() - start)
    if step % every == 0:
        tmp = d / f".part-{step}"
        tmp.write_bytes(os.urandom(size))
        os.replace(tmp, d / f"step-{step:06d}.ckpt")
out = pathlib.Path(os.environ["RGT_RESULTS_ROOT"]) / "cell-a"
out.mkdir(parents=True, exist_ok=True)
(out / "steps.json").write_text(__import__("json").dumps(times))
"""


def sync_loop(instance_id: str, log: str) -> None:
    """The supervisor's part, in its own process at the priority its sync thread takes
    (rgt.durable.lower_priority): sync_once back to back, noting when each checkpoint was first
    seen verified."""
    from rgt.durable import lower_priority, sync_once
    from rgt.ledger import Ledger

    lower_priority()
    with Ledger.open() as ledger, open(log, "a") as out:
        while True:
            try:
                report = sync_once(ledger, instance_id)
            except Exception as exc:  # a bench keeps going and says why
                out.write(json.dumps({"error": str(exc)[:200]}) + "\n")
            else:
                for entry in report.verified:
                    out.write(json.dumps({"name": entry.name, "at": time.time()}) + "\n")
            out.flush()
            time.sleep(1.0)


def run_once(
    kind: str, args: argparse.Namespace, scratch: Path, emulator: Any, s3: Any | None
) -> dict[str, Any]:
    """Launch the job with target `kind`, sync while it runs, return its figures."""
    import yaml

    from rgt import lifecycle
    from rgt.job import load_job
    from rgt.ledger import Ledger
    from rgt.profile import load_profile
    from rgt.providers.vastai import VastProvider

    run_id = f"bench-durable-{kind}"
    data: dict[str, Any] = {
        "run_id": run_id,
        "image": "bench/durable",
        "gpu": "RTX_4090:1",
        "disk_gb": 20,
        "command": 'python3 "$RGT_BOX_ROOT/workspace/job.py"',
        "results_root": "/workspace/results",
        "roster": ["cell-a"],
        "checkpoint_dir": "/workspace/checkpoints",
        "checkpoint_glob": "*.ckpt",
        "health": {"gpu_required": False},  # the emulator's boxes have no GPU
        "files": {"/workspace/job.py": JOB.lstrip()},
        "env": {
            "B_STEPS": str(args.steps),
            "B_EVERY": str(args.every),
            "B_BYTES": str(args.mib * 1024 * 1024),
        },
    }
    if kind == "local":
        data["durable"] = "local"
    elif kind == "bucket":
        names = s3.env()
        data["durable"] = {"bucket": f"s3box:ckpts/{run_id}"}
        data["secret_env"] = [n for n in names if n.endswith(("KEY_ID", "ACCESS_KEY"))]
        data["env"].update({n: v for n, v in names.items() if n not in data["secret_env"]})
    job_path = scratch / f"{run_id}.yaml"
    job_path.write_text(yaml.safe_dump(data))
    job = load_job(job_path)
    provider = VastProvider(api_url=emulator.url)
    offer = provider.search_offers(
        lifecycle.offer_query_for_job(job, interruptible=False, limit=5)
    )[0]
    with Ledger.open() as ledger:
        instance_id = lifecycle.launch(
            provider=provider,
            ledger=ledger,
            profile=load_profile("vastai"),
            job=job,
            offer_id=offer.id,
            max_price_per_hour=offer.dph_total + 1,
        ).instance_id
    disk = Path(emulator.instance_disk(instance_id))
    steps_file = disk / "workspace/results/cell-a/steps.json"
    log = scratch / f"{run_id}.sync.jsonl"
    loop = None
    if kind != "none":
        loop = subprocess.Popen(
            [sys.executable, __file__, "--sync-loop", instance_id, str(log)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 900
    while not steps_file.is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"{kind}: the job did not finish")
        time.sleep(0.5)
    times = json.loads(steps_file.read_text())
    checkpoints = {
        p.name: p.stat().st_mtime for p in (disk / "workspace/checkpoints").glob("*.ckpt")
    }
    delays: list[float] = []
    errors: list[str] = []
    if loop is not None:
        seen: dict[str, float] = {}
        while time.monotonic() < deadline and len(seen) < len(checkpoints):
            seen = {}
            for line in log.read_text().splitlines() if log.is_file() else []:
                entry = json.loads(line)
                if "name" in entry:
                    seen.setdefault(entry["name"], entry["at"])
                else:
                    errors.append(entry["error"])
            time.sleep(0.5)
        loop.terminate()
        loop.wait()
        delays = [seen[name] - mtime for name, mtime in checkpoints.items() if name in seen]
    return {
        "kind": kind,
        "steps": len(times),
        "step_ms_median": round(median(times) * 1000, 1),
        "step_ms_p90": round(percentile(times, 0.9) * 1000, 1),
        "checkpoints": len(checkpoints),
        "verified": len(delays),
        "delay_s_median": round(median(delays), 2) if delays else None,
        "delay_s_max": round(max(delays), 2) if delays else None,
        "errors": sorted(set(errors))[:3],
    }


def main() -> int:
    """Run the three scenarios and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--every", type=int, default=150, help="steps between checkpoints")
    parser.add_argument("--mib", type=int, default=8, help="checkpoint size")
    parser.add_argument("--sync-loop", nargs=2, metavar=("INSTANCE", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sync_loop:
        sync_loop(*args.sync_loop)
        return 0

    from rgt.sim import Emulator
    from tests.s3_server import rclone_binary, rclone_path_dir, start_s3_server, stop_s3_server

    rows = []
    with tempfile.TemporaryDirectory(prefix="rgt-bench-durable-") as scratch_name:
        scratch = Path(scratch_name)
        s3 = start_s3_server(scratch / "s3") if rclone_binary() else None
        emulator = Emulator(state_dir=scratch / "emulator", seed=0)
        try:
            with emulator:
                os.environ.update(
                    {
                        "VAST_URL": emulator.url,
                        "VAST_API_KEY": emulator.api_key,  # the emulator's, never a real one
                        "RGT_STATE_DIR": str(scratch / "state"),
                        "RGT_CONFIG_DIR": str(scratch / "config"),
                        "VASTAI_NO_UPDATE_CHECK": "1",
                        **emulator.client_environment(),
                        **(s3.env() if s3 else {}),
                    }
                )
                if s3 is not None:
                    os.environ["PATH"] = rclone_path_dir() + os.pathsep + os.environ["PATH"]
                kinds = ["none", "local"] + (["bucket"] if s3 else [])
                for kind in kinds:
                    rows.append(run_once(kind, args, scratch, emulator, s3))
                    print(f"[bench_durable] {rows[-1]}", file=sys.stderr)
        finally:
            if s3 is not None:
                stop_s3_server(s3)
    print(machine_line())
    print(
        f"{args.steps} steps, a {args.mib} MiB checkpoint every {args.every} steps"
        + ("" if len(rows) == 3 else " (no rclone here: bucket skipped)")
    )
    base = rows[0]["step_ms_median"]
    print(
        table(
            [
                "target",
                "step ms median",
                "vs none",
                "step ms p90",
                "checkpoints verified",
                "written -> verified s median",
                "max",
            ],
            [
                [
                    r["kind"],
                    r["step_ms_median"],
                    f"{r['step_ms_median'] / base:.2f}x",
                    r["step_ms_p90"],
                    f"{r['verified']}/{r['checkpoints']}",
                    r["delay_s_median"] if r["delay_s_median"] is not None else "-",
                    r["delay_s_max"] if r["delay_s_max"] is not None else "-",
                ]
                for r in rows
            ],
        )
    )
    emit("durable", {"args": vars(args) | {"sync_loop": None}, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
