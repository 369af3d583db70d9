"""The vast.ai emulator (rgt.sim): what a call costs, and how fast an instance comes up.

Measured through the real `vastai` SDK, as rgt's provider calls it. Baseline in the same run: the
same SDK call against a trivial JSON server (stdlib ThreadingHTTPServer answering a fixed row),
so the figure that belongs to the emulator (auth, routing, settling the meter, building the row)
is the difference. Also: search over the whole marketplace, create -> running with and without
a per-instance sshd, stop (SIGKILL of the job + sshd stop), and a stock-CLI process.

    .venv/bin/python bench/bench_sim.py [--calls N] [--boots N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchlib import emit, machine_line, median, percentile, table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import vastai  # noqa: E402

from rgt.sim import Emulator  # noqa: E402

KEY = "bench-key"
ROW = {"id": 1, "actual_status": "running", "start_date": 0.0, "extra_env": []}


class _Trivial(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"instances": ROW}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def call_seconds(client: Any, calls: int, instance_id: int) -> list[float]:
    """Wall seconds of `calls` SDK show_instance calls."""
    seconds = []
    for _ in range(calls):
        began = time.perf_counter()
        client.show_instance(id=instance_id)
        seconds.append(time.perf_counter() - began)
    return seconds


def until_running(client: Any, instance_id: int) -> float:
    began = time.perf_counter()
    while client.show_instance(id=instance_id)["actual_status"] != "running":
        time.sleep(0.005)
    return time.perf_counter() - began


def boots(ssh: bool, count: int) -> tuple[list[float], list[float]]:
    """create -> running and stop wall seconds, `count` times (boot_seconds=0.5)."""
    up, down = [], []
    with Emulator(api_key=KEY, ssh=ssh, boot_seconds=0.5) as sim:
        client = vastai.VastAI(api_key=KEY, server_url=sim.url, retry=1)
        for _ in range(count):
            offer = client.search_offers(query={}, limit=1)[0]
            began = time.perf_counter()
            answer = client.create_instance(
                id=offer["id"], image="img", disk=10, onstart_cmd="sleep 600"
            )
            instance_id = answer["new_contract"]
            while client.show_instance(id=instance_id)["actual_status"] != "running":
                time.sleep(0.005)
            up.append(time.perf_counter() - began)
            began = time.perf_counter()
            client.stop_instance(id=instance_id)
            down.append(time.perf_counter() - began)
            client.destroy_instance(id=instance_id)
    return up, down


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--boots", type=int, default=5)
    args = parser.parse_args()
    print(machine_line())

    trivial = ThreadingHTTPServer(("127.0.0.1", 0), _Trivial)
    threading.Thread(target=trivial.serve_forever, daemon=True).start()
    base_client = vastai.VastAI(api_key=KEY, server_url=f"http://127.0.0.1:{trivial.server_port}")
    baseline = call_seconds(base_client, args.calls, 1)
    trivial.shutdown()

    with Emulator(api_key=KEY, ssh=False) as sim:
        client = vastai.VastAI(api_key=KEY, server_url=sim.url, retry=1)
        offer = client.search_offers(query={}, limit=1)[0]
        instance_id = client.create_instance(id=offer["id"], image="img", disk=10)["new_contract"]
        until_running(client, instance_id)
        shows = call_seconds(client, args.calls, instance_id)
        searches = []
        for _ in range(30):
            began = time.perf_counter()
            found = client.search_offers(query={}, no_default=True, limit=10_000)
            searches.append(time.perf_counter() - began)
        home = tempfile.mkdtemp(prefix="rgt-bench-home-")
        env = dict(os.environ, HOME=home, VAST_URL=sim.url, VAST_API_KEY=KEY)
        env["VASTAI_NO_UPDATE_CHECK"] = "1"
        cli = []
        for _ in range(5):
            began = time.perf_counter()
            subprocess.run(
                [str(Path(sys.executable).parent / "vastai"), "show", "instances", "--raw"],
                env=env, capture_output=True, check=True,
            )  # fmt: skip
            cli.append(time.perf_counter() - began)

    up_ssh, down_ssh = boots(True, args.boots)
    up_plain, down_plain = boots(False, args.boots)

    def ms(values: list[float]) -> str:
        return f"{median(values) * 1000:.1f}"

    def p95(values: list[float]) -> str:
        return f"{percentile(values, 0.95) * 1000:.1f}"

    rows = [
        ["SDK show_instance, trivial JSON server (baseline)", ms(baseline), p95(baseline)],
        ["SDK show_instance, emulator", ms(shows), p95(shows)],
        [f"SDK search_offers, all {len(found)} offers", ms(searches), p95(searches)],
        ["create -> running, boot_seconds=0.5, no sshd", ms(up_plain), p95(up_plain)],
        ["create -> running, boot_seconds=0.5, with sshd", ms(up_ssh), p95(up_ssh)],
        ["stop (SIGKILL job), no sshd", ms(down_plain), p95(down_plain)],
        ["stop (SIGKILL job + stop sshd)", ms(down_ssh), p95(down_ssh)],
        ["stock CLI process: vastai show instances --raw", ms(cli), p95(cli)],
    ]
    print(table(["what", "median ms", "p95 ms"], rows))
    emit(
        "sim",
        {
            "rows": [{"what": r[0], "median_ms": float(r[1]), "p95_ms": float(r[2])} for r in rows],
            "calls": args.calls,
            "boots": args.boots,
        },
    )


if __name__ == "__main__":
    main()
