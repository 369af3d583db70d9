"""A STAND-IN for `kubectl`, put first on the stand-in box's PATH by the tests.

No Kubernetes cluster can run on the test machine (no container runtime), so this script plays
the part of kubectl and the Job controller for the few calls rgt makes, with the same output
and exit codes as the real client: `apply -f FILE` starts the Job's one container command (with
its env: literal values, and metadata.name for a fieldRef) as a detached process group on this
machine; `get job NAME [-o jsonpath={.status.active}]` reports it (NotFound once deleted);
`delete job NAME` sends SIGTERM to its process group, as the kubelet does to a pod's container;
`logs job/NAME` prints its output. State lives in $KUBECTL_STANDIN_STATE.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

STATE = Path(os.environ.get("KUBECTL_STANDIN_STATE", "/nonexistent"))


def _record(name: str) -> Path:
    return STATE / f"{name}.json"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _not_found(name: str) -> int:
    print(f'Error from server (NotFound): jobs.batch "{name}" not found', file=sys.stderr)
    return 1


def apply(path: str) -> int:
    data = yaml.safe_load(Path(path).read_text())
    name = data["metadata"]["name"]
    if _record(name).exists():
        print(f"job.batch/{name} unchanged")
        return 0
    container = data["spec"]["template"]["spec"]["containers"][0]
    env = dict(os.environ)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = f"{name}-standin"
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            container["command"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _record(name).write_text(json.dumps({"pid": proc.pid}))
    print(f"job.batch/{name} created")
    return 0


def get(name: str, output: str | None) -> int:
    if not _record(name).exists():
        return _not_found(name)
    pid = int(json.loads(_record(name).read_text())["pid"])
    active = _alive(pid)
    if output == "jsonpath={.status.active}":
        print("1" if active else "", end="")
    else:
        print(f"NAME {name} ACTIVE {1 if active else 0}")
    return 0


def delete(name: str) -> int:
    if not _record(name).exists():
        return _not_found(name)
    pid = int(json.loads(_record(name).read_text())["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    _record(name).unlink()
    print(f'job.batch "{name}" deleted')
    return 0


def main(argv: list[str]) -> int:
    if argv[:2] == ["apply", "-f"] and len(argv) == 3:
        return apply(argv[2])
    if argv[:2] == ["get", "job"] and len(argv) >= 3:
        output = argv[4] if len(argv) == 5 and argv[3] == "-o" else None
        return get(argv[2], output)
    if argv[:2] == ["delete", "job"] and len(argv) == 3:
        return delete(argv[2])
    if argv[:1] == ["logs"] and len(argv) == 2 and argv[1].startswith("job/"):
        name = argv[1].removeprefix("job/")
        log = STATE / f"{name}.log"
        if not log.exists():
            return _not_found(name)
        sys.stdout.write(log.read_text())
        return 0
    print(f"kubectl stand-in: unsupported call {argv!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
