"""Durable checkpoints: what continuous sync costs the job, and how soon a checkpoint is durable.

A job on an emulated vast.ai box (the embedded emulator, the real rendered boot hook with its
watcher, rsync over the box's real sshd) runs CPU-bound steps (a fixed pure-Python loop) and
writes a checkpoint (random bytes, temp file + rename) every few steps. Three runs of the same
job on this machine:

  none    no `durable:` (no watcher) and no sync: the baseline step time
  local   `durable: local`, with `sync_once` called at the supervisor's pace (every
          max(rgt.supervisor.DEFAULT_INTERVAL_SECONDS, rgt.durable.WATCH_SECONDS)) from another
          process at the priority of the supervisor's sync thread (rgt.durable.lower_priority:
          nice 10, ionice best-effort 7): each checkpoint is copied and re-hashed here
  bucket  a bucket on a real S3 server on loopback (`rclone serve s3`): the box's watcher pushes
          with rclone, the sync loop reads every object back (`hashsum sha256 --download`)

Figures: the job's step time (median, p90) and, per checkpoint, the delay from its mtime on the
box to the moment the sync loop saw it verified (median, max). Everything (job, watcher, sshd,
S3 server, sync) shares this machine's cores, so the step-time cost is an upper bound of what a
real box (whose cores are not shared with rgt) would see.

With `--paired SECONDS` the job runs once per target and the durable side (the box's watcher
at nice 19 with what it starts, and the sync loop with its rsync/ssh) is paused (SIGSTOP) and
resumed every SECONDS while it runs: the job's steps with and without the durable side are
then seconds apart, so a shared machine's drift (other processes, the VM's own speed, which
moved a baseline 7.7 -> 11.1 ms/step between back-to-back runs at load ~1) cancels instead of
deciding the ratio. The paused side catches up in the next running phase, so the running
phases carry all its work; the cost to a job synced continuously is their extra time spread
over all the steps.

    .venv/bin/python bench/bench_durable.py [--steps 1200] [--every 150] [--mib 8]
    .venv/bin/python bench/bench_durable.py --paired 5 --steps 6000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
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
times, starts = [], []
for step in range(1, steps + 1):
    start = time.monotonic()
    sum(i * i for i in range(150_000))
    times.append(time.monotonic() - start)
    starts.append(start)
    if step % every == 0:
        tmp = d / f".part-{step}"
        tmp.write_bytes(os.urandom(size))
        os.replace(tmp, d / f"step-{step:06d}.ckpt")
out = pathlib.Path(os.environ["RGT_RESULTS_ROOT"]) / "cell-a"
out.mkdir(parents=True, exist_ok=True)
(out / "steps.json").write_text(__import__("json").dumps({"d": times, "t": starts}))
"""


def sync_loop(instance_id: str, log: str) -> None:
    """The supervisor's part, in its own process at the priority its sync thread takes
    (rgt.durable.lower_priority): sync_once at the supervisor's pace (its _SyncLoop's wait),
    noting when each checkpoint was first seen verified."""
    from rgt.durable import WATCH_SECONDS, lower_priority, sync_once
    from rgt.ledger import Ledger
    from rgt.supervisor import DEFAULT_INTERVAL_SECONDS

    pace = max(DEFAULT_INTERVAL_SECONDS, WATCH_SECONDS)  # as `rgt run`'s sync thread waits

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
            time.sleep(pace)


def durability_pids(instance_id: str, loop_pid: int) -> set[int]:
    """The processes doing the durable work of one box: the box's own at nice 19 (its watcher
    and what the watcher started: find, sha256sum, rclone, sleep) and the sync loop with its
    children (rsync, ssh). Boxes of the emulator are local processes whose environment names
    their CONTAINER_ID."""
    marker = f"CONTAINER_ID={instance_id}".encode()
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            parents[pid] = int(fields[1])
            if int(fields[16]) == 19 and marker in Path(f"/proc/{pid}/environ").read_bytes():
                found.add(pid)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
    tree = {loop_pid}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return found | tree


def signal_all(pids: set[int], signum: int) -> None:
    """Send `signum` to each of `pids` that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def split_by_phase(
    steps: dict[str, list[float]], toggles: list[tuple[float, bool]]
) -> tuple[list[float], list[float]]:
    """The job's step times while the durable side ran and while it was paused, by each step's
    start against the bench's toggles (the same CLOCK_MONOTONIC in both processes)."""
    import bisect

    moments = [moment for moment, _ in toggles]
    running: list[float] = []
    paused: list[float] = []
    for start, seconds in zip(steps["t"], steps["d"], strict=True):
        at = bisect.bisect_right(moments, start) - 1
        if at < 0:
            continue  # before the first toggle: not part of the comparison
        (running if toggles[at][1] else paused).append(seconds)
    return running, paused


def run_once(
    kind: str,
    args: argparse.Namespace,
    scratch: Path,
    emulator: Any,
    s3: Any | None,
    block: float = 0.0,
) -> dict[str, Any]:
    """Launch the job with target `kind`, sync while it runs, return its figures. With `block`
    seconds, the durable side (the box's watcher and the sync loop) is paused and resumed
    every `block` seconds while the job runs (SIGSTOP/SIGCONT), so the job's steps with and
    without it are measured seconds apart: the machine's own drift cancels out."""
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
    toggles: list[tuple[float, bool]] = []  # (monotonic time, durable side running)
    stopped: set[int] = set()
    try:
        while not steps_file.is_file():
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind}: the job did not finish")
            now = time.monotonic()
            if block and loop is not None and (not toggles or now - toggles[-1][0] >= block):
                running = not toggles or not toggles[-1][1]
                if running:
                    signal_all(stopped, signal.SIGCONT)
                    stopped.clear()
                else:
                    for _ in range(2):  # the second pass catches a child forked meanwhile
                        pids = durability_pids(instance_id, loop.pid) - stopped
                        signal_all(pids, signal.SIGSTOP)
                        stopped |= pids
                toggles.append((time.monotonic(), running))
            time.sleep(0.05 if block else 0.5)
    finally:
        signal_all(stopped, signal.SIGCONT)
    document = json.loads(steps_file.read_text())
    times = document["d"]
    checkpoints = {
        p.name: p.stat().st_mtime for p in (disk / "workspace/checkpoints").glob("*.ckpt")
    }
    delays: list[float] = []
    errors: list[str] = []
    phases: dict[str, Any] = {}
    if toggles:
        running_steps, paused_steps = split_by_phase(document, toggles)
        phases = {
            "steps_running": len(running_steps),
            "steps_paused": len(paused_steps),
            "running_ms_mean": round(sum(running_steps) / len(running_steps) * 1000, 3),
            "paused_ms_mean": round(sum(paused_steps) / len(paused_steps) * 1000, 3),
            "running_ms_median": round(median(running_steps) * 1000, 2),
            "paused_ms_median": round(median(paused_steps) * 1000, 2),
            "blocks": len(toggles),
        }
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
    verified = len(delays)
    if toggles:
        delays = []  # a sync paused half the time says nothing about the delay: not reported
    return {
        "kind": kind,
        "steps": len(times),
        "step_ms_median": round(median(times) * 1000, 1),
        "step_ms_p90": round(percentile(times, 0.9) * 1000, 1),
        "checkpoints": len(checkpoints),
        "verified": verified,
        "delay_s_median": round(median(delays), 2) if delays else None,
        "delay_s_max": round(max(delays), 2) if delays else None,
        "errors": sorted(set(errors))[:3],
        **phases,
    }


def main() -> int:
    """Run the three scenarios and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--every", type=int, default=150, help="steps between checkpoints")
    parser.add_argument("--mib", type=int, default=8, help="checkpoint size")
    parser.add_argument(
        "--paired",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="pause and resume the durable side every SECONDS within each run (local, bucket) "
        "and compare the job's steps in both phases, instead of runs without and with it",
    )
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
                kinds = (["local"] if args.paired else ["none", "local"]) + (
                    ["bucket"] if s3 else []
                )
                for kind in kinds:
                    rows.append(run_once(kind, args, scratch, emulator, s3, args.paired))
                    print(f"[bench_durable] {rows[-1]}", file=sys.stderr)
        finally:
            if s3 is not None:
                stop_s3_server(s3)
    if args.paired:
        print_paired(rows, args)
        return 0
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


def print_paired(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The paired comparison: the job's step time while the durable side ran vs while it was
    paused. A paused side does its work in the next running phase, so the running phases
    carry all of it; spread over the whole run (as it is without pauses), the job pays the
    extra time of the running phases over all its steps."""
    print(machine_line())
    print(
        f"{args.steps} steps, a {args.mib} MiB checkpoint every {args.every} steps; the durable "
        f"side paused and resumed every {args.paired:g} s"
    )
    table_rows = []
    for r in rows:
        extra = (r["running_ms_mean"] - r["paused_ms_mean"]) * r["steps_running"]
        continuous = extra / (r["paused_ms_mean"] * (r["steps_running"] + r["steps_paused"]))
        r["continuous_cost"] = round(continuous, 4)
        table_rows.append(
            [
                r["kind"],
                f"{r['steps_running']}/{r['steps_paused']}",
                r["running_ms_mean"],
                r["paused_ms_mean"],
                f"{r['running_ms_mean'] / r['paused_ms_mean']:.3f}x",
                f"{r['running_ms_median']} / {r['paused_ms_median']}",
                f"{continuous * 100:+.1f} %",
                f"{r['verified']}/{r['checkpoints']}",
            ]
        )
    print(
        table(
            [
                "target",
                "steps running/paused",
                "step ms mean, side running",
                "side paused",
                "running / paused",
                "medians",
                "cost to the job, continuous",
                "checkpoints verified",
            ],
            table_rows,
        )
    )
    emit("durable_paired", {"args": vars(args) | {"sync_loop": None}, "rows": rows})


if __name__ == "__main__":
    raise SystemExit(main())
