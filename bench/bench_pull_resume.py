"""Pull resume: a 1 GiB pull from an emulated instance, killed at ~50 %, then resumed.

The instance is a real emulated vast.ai box (the embedded emulator, created through the real
`vastai` SDK) with a real sshd on loopback; the pull is `rgt pull` (rsync over ssh) in its own
process group, SIGKILLed (rsync and ssh with it, like a crashed terminal) once about half the
bytes have arrived. Then `rgt pull` runs again. Figures:

  re-sent = bytes the resumed pull transferred - bytes still missing at the kill
            (target < 1 % of the total)

next to a naive restart (the same killed pull, partial data thrown away, copied again from
scratch: a tool without resume), measured the same way. Both also show the bytes the box's sshd
actually sent (the emulator's bandwidth meter), to count what rsync's own statistics might not.

    .venv/bin/python bench/bench_pull_resume.py [--mib 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import REPO, emit, machine_line, table

sys.path.insert(0, str(REPO))

RUN_ID = "bench-pull"
TARGET_FRACTION = 0.01
CHUNK = 64 * 1024 * 1024


def arrived_bytes(local: Path) -> int:
    """Bytes of result data on the local side (final files, rsync temp and partial files)."""
    total = 0
    for path in local.rglob("*"):
        try:
            if path.is_file() and path.name != "PULL_MANIFEST.json":
                total += path.stat().st_size
        except FileNotFoundError:  # rsync renamed it meanwhile
            pass
    return total


def results_root() -> str:
    """The box's results root, as `rgt demo` derives it from the vast.ai profile's data_dir
    (the container disk): the profile owns that path, the bench does not."""
    from rgt.demo.scenario import results_root as under
    from rgt.profile import load_profile

    return under(str(load_profile("vastai").overrides["data_dir"]))


def killed_pull(
    instance_id: str, remote_root: str, local: Path, env: dict[str, str], total: int
) -> int:
    """Start `rgt pull`, SIGKILL its whole process group at ~50 %; returns the bytes present."""
    child = subprocess.Popen(
        [sys.executable, "-m", "rgt", "pull", instance_id, remote_root, str(local)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if arrived_bytes(local) >= total // 2:
            break
        time.sleep(0.005)
    if child.poll() is not None:
        raise SystemExit("the pull finished before it could be killed; use a bigger --mib")
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    time.sleep(0.2)  # let the sshd side notice the dead connection
    return arrived_bytes(local)


def wait_running(provider: Any, instance_id: str) -> None:
    """Until the API says running (the sshd is up then)."""
    deadline = time.monotonic() + 30
    while provider.show(instance_id).state != "running":
        if time.monotonic() > deadline:
            raise SystemExit(f"instance {instance_id} never reached running")
        time.sleep(0.05)


def main() -> int:
    """Build the box, run both scenarios, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024, help="size of the result file")
    args = parser.parse_args()

    from rgt.ledger import Ledger
    from rgt.manifest import write_manifest
    from rgt.providers.base import OfferQuery
    from rgt.providers.vastai import VastProvider, run_label
    from rgt.pull import pull_instance
    from rgt.sim import Emulator

    total = args.mib * 1024 * 1024
    remote_root = results_root()
    with tempfile.TemporaryDirectory(prefix="rgt-bench-pull-") as scratch_name:
        scratch = Path(scratch_name)
        emulator = Emulator(state_dir=scratch / "emulator", seed=0)
        with emulator:
            env = {
                **os.environ,
                "VAST_URL": emulator.url,
                "VAST_API_KEY": emulator.api_key,  # the emulator's key, never a real one
                "RGT_STATE_DIR": str(scratch / "state"),
                "RGT_CONFIG_DIR": str(scratch / "config"),
                "VASTAI_NO_UPDATE_CHECK": "1",
            }
            env.pop("RGT_SSH_COMMAND", None)
            env.update(emulator.client_environment())  # the client key (+ a pipe without sshd)
            os.environ.update(env)
            provider = VastProvider(api_url=emulator.url)
            offer = provider.search_offers(OfferQuery(limit=5))[0]
            instance = provider.create(
                offer.id,
                image="bench/pull",
                disk_gb=20.0,
                onstart="sleep 100000",
                label=run_label(RUN_ID),
            )
            wait_running(provider, instance.id)
            results = emulator.instance_disk(instance.id) / remote_root.lstrip("/")
            (results / "big").mkdir(parents=True)
            with open(results / "big" / "blob.bin", "wb") as handle:
                for _ in range(0, total, CHUNK):
                    handle.write(os.urandom(min(CHUNK, total)))
            write_manifest(results, RUN_ID, ["big"], instance_id=instance.id)
            print(f"# pull resume ({machine_line()})")
            print(f"box {instance.id}: {total / 2**20:.0f} MiB of random bytes; transport: "
                  f"{emulator.ssh_note}")  # fmt: skip

            rows, results_json = [], {}
            for name in ("resume (rgt pull again)", "naive restart (from scratch)"):
                local = scratch / name.split()[0]
                present = killed_pull(instance.id, remote_root, local, env, total)
                if name.startswith("naive"):
                    shutil.rmtree(local)
                before = emulator.meter(instance.id).get("bytes_out", 0.0)
                began = time.perf_counter()
                with Ledger.open() as ledger:
                    pulled = pull_instance(
                        instance.id, remote_root, local, provider=provider, ledger=ledger
                    )
                seconds = time.perf_counter() - began
                time.sleep(0.3)  # the emulator polls sshd traffic on its tick
                wire = emulator.meter(instance.id).get("bytes_out", 0.0) - before
                if (local / "big" / "blob.bin").stat().st_size != total:
                    raise SystemExit(f"{name}: the pulled file has the wrong size")
                remainder = total - present
                resent = pulled.bytes_transferred - remainder
                results_json[name] = {
                    "present_at_kill": present,
                    "bytes_transferred": pulled.bytes_transferred,
                    "wire_bytes_out": wire,
                    "resent_beyond_remainder": resent,
                    "resent_fraction": resent / total,
                    "wire_resent_fraction": (wire - remainder) / total,
                    "seconds": seconds,
                }
                rows.append(
                    [
                        name,
                        f"{present / total:.1%}",
                        f"{pulled.bytes_transferred / 2**20:.1f} MiB",
                        f"{wire / 2**20:.1f} MiB",
                        f"{resent / 2**20:.2f} MiB",
                        f"{resent / total:.3%}",
                        f"{(wire - remainder) / total:.3%}",
                        f"{seconds:.1f} s",
                    ]
                )
            print(table(["after kill -9", "present at kill", "re-pull sent (rsync)",
                         "box sshd sent", "re-sent beyond remainder", "of total",
                         "of total (by sshd)", "re-pull time"], rows))  # fmt: skip
            fraction = results_json["resume (rgt pull again)"]["resent_fraction"]
            met = fraction < TARGET_FRACTION
            print(f"target: resume re-sends < {TARGET_FRACTION:.0%} beyond the remainder: "
                  f"{'MET' if met else 'MISSED'} ({fraction:.3%})")  # fmt: skip
            emit("pull_resume", {"total_bytes": total, "results": results_json, "met": met})
    return 0


if __name__ == "__main__":
    sys.exit(main())
