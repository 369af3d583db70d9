"""Every bundled platform's documented flow, end to end (issue 16): attach the box, `launch --on`,
poll until the job succeeded, pull, verify, and the gate's decision on ending the rental.

One real OpenSSH sshd on 127.0.0.1 (tests/ssh_box.py) stands in for every platform's box, shared
by the whole module; each profile gets its own folder on the box's disk (the profile's paths
moved under it) and a tiny job (the documented example trainer, no sleeps). vast.ai's flow runs
against the emulator elsewhere (tests/test_ironlaw_e2e.py).

* The Slurm variant runs on a REAL single-node Slurm cluster (Debian's slurm-wlm 22.05 with
  munge, tests/slurm_cluster.py): rgt submits the rendered sbatch.sh with the real `sbatch`,
  reads the job with the real `squeue`, and its meter stop is the real `scancel`.
* The Kubernetes variant uses a STAND-IN `kubectl` (tests/kubectl_standin.py) on the box's PATH:
  no Kubernetes cluster can run on this machine (no container runtime); the stand-in runs the
  Job's container command as a process group and answers get/delete/logs like kubectl.

The gate's decision: where the platform's meter stop is a human's action in a console (every
ssh-rental, cloud and workstation profile), `rgt destroy` runs the gate, takes the human's
approval and then asks them to do the profile's meter-stop action and confirm it; the human
declines here (the box is shared), so nothing is recorded as ended and the box still answers.
Where it is a scheduler's cancel rgt can send over the same ssh and that deletes nothing
(Slurm's scancel, kubectl delete job), rgt sends it after the approval and confirms the job
ended; the results stay on the box's disk.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rgt.errors import EXIT_REFUSED
from rgt.job import load_job
from rgt.ledger import Ledger
from rgt.profile import load_profile
from tests.conftest import assert_no_canary
from tests.ptyrun import PtyProcess
from tests.slurm_cluster import SlurmCluster
from tests.ssh_box import StandInBox

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple"
# Every bundled profile and variant whose box rgt reaches over ssh and starts jobs on
# (paperspace:notebook has no detach primitive: its profile documents rendering only).
FLOWS = [
    "autodl",
    "china:matpool",
    "china:featurize",
    "generic-ssh",
    "generic-ssh:slurm",
    "generic-ssh:kubernetes",
    "lambda",
    "local",
    "paperspace",
    "runpod",
]
# How `launch --on` reports the start, per detach primitive.
STARTED = {"sbatch": r"\(Slurm job \d+\)", "k8s-job": r"\(Kubernetes job rgt-flow-[a-z-]+\)"}


class Outcome:
    """What one in-process `rgt` command did: exit code, standard output and error."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = code, stdout, stderr


def rgt(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    """`rgt ARGS` in this process (rgt.cli.main: the CLI's own code, without paying a Python
    start per step; the human's destroy runs as its own process on a terminal)."""
    from rgt.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


@pytest.fixture(scope="module")
def platform_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StandInBox, str]]:
    """(the shared box, why Slurm cannot run here or ""): a real Slurm cluster whose client
    config the box's logins get, and the kubectl stand-in first on their PATH."""
    root = tmp_path_factory.mktemp("platforms")
    cluster = SlurmCluster(root / "slurm")
    env: dict[str, str] = {"KUBECTL_STANDIN_STATE": str(root / "kube")}
    slurm_missing = ""
    try:
        cluster.start()
        env.update(cluster.env)
    except pytest.skip.Exception as exc:
        slurm_missing = str(exc)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(
        f'#!/bin/sh\nexec {sys.executable} {REPO / "tests" / "kubectl_standin.py"} "$@"\n'
    )
    kubectl.chmod(0o755)
    box = StandInBox(root / "box", env=env, path_first=bin_dir).start()
    try:
        yield box, slurm_missing
    finally:
        box.close()
        cluster.close()


def flow_profile(tmp_path: Path, root: str, name: str) -> str:
    """The bundled profile with every box path moved under `root`, python3 as the interpreter,
    a 1 s heartbeat; `file.md` or `file.md:variant`."""
    base, _, variant = name.partition(":")
    text = load_profile(base).path.read_text()
    end = text.index("\n---", 3)
    front, body = text[:end], text[end:]
    front = re.sub(
        r"^(\s+(?:data_dir|durable_dir|hf_home):\s+)(?:\$HOME/|/)",
        lambda m: f"{m[1]}{root}/",
        front,
        flags=re.M,
    )
    front = re.sub(r"^(\s+python:\s+)\S+", r"\1python3", front, flags=re.M)
    # AutoDL's proxy hook sources its network script: a harmless one on the box's disk.
    front = front.replace("source /etc/network_turbo", f"source {root}/etc/network_turbo")
    Path(root, "etc").mkdir(parents=True, exist_ok=True)
    Path(root, "etc", "network_turbo").write_text("export RGT_PROXY_HOOK_RAN=1\n")
    front, count = re.subn(
        r"^(  python: python3\n)", r"\1  status_heartbeat_seconds: 1\n", front, count=1, flags=re.M
    )
    assert count == 1
    path = tmp_path / "profiles" / f"{base}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(front + body)
    return f"{path}:{variant}" if variant else str(path)


def flow_job(tmp_path: Path, root: str, run_id: str) -> Path:
    """The documented example job with its paths under `root/work` and no sleeps."""
    data: dict[str, Any] = load_job().as_dict()

    def moved(text: str) -> str:
        return text.replace("${RGT_BOX_ROOT:-}", "").replace("/workspace", f"{root}/work")

    data.update(
        run_id=run_id,
        command=moved(data["command"]),
        results_root=moved(data["results_root"]),
        checkpoint_dir=moved(data["checkpoint_dir"]),
        files={moved(path): content for path, content in data["files"].items()},
        env={**data["env"], "STEP_SECONDS": "0"},
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def state(profile_ref: str, instance: str) -> str:
    """The attached box's state as rgt sees it now (ssh provider, in this process)."""
    from rgt.providers.ssh import SshProvider

    return SshProvider(load_profile(profile_ref)).show(instance).state


@pytest.mark.parametrize("name", FLOWS)
def test_the_documented_flow_runs_to_a_verified_pull_and_the_gates_decision(
    platform_box: tuple[StandInBox, str],
    name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rgt import approval

    box, slurm_missing = platform_box
    if name.endswith(":slurm") and slurm_missing:
        pytest.skip(slurm_missing)
    slug = name.replace(":", "-")
    root = f"{box.disk}/{slug}"
    profile_ref = flow_profile(tmp_path, root, name)
    profile = load_profile(profile_ref)
    job = flow_job(tmp_path, root, f"flow-{slug}")
    approval.store_passphrase(PASSPHRASE, n=2**14)

    key = str(box.client_key)
    attached = rgt(capsys, "attach", profile_ref, box.target, "--identity", key, "--json")
    assert attached.returncode == 0, attached.stderr
    instance = str(json.loads(attached.stdout)["instance_id"])
    launched = rgt(capsys, "launch", "--on", instance, "--job", str(job))
    assert launched.returncode == 0, launched.stderr
    started = STARTED.get(profile.detach_primitive, r"\(tmux session rgt-flow-")
    assert re.search(started, launched.stdout), launched.stdout

    done = rgt(capsys, "poll", instance, "--until", "done", "--interval", "1", "--timeout", "120")
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout + done.stderr
    if profile.detach_primitive in ("sbatch", "k8s-job"):  # the log, read through the login node
        logs = rgt(capsys, "logs", instance, "--tail", "20")
        assert logs.returncode == 0 and "start at step 0" in logs.stdout, logs.stderr

    local = tmp_path / "pulled"
    pulled = rgt(capsys, "pull", instance, f"{root}/work/results", str(local), "--json")
    assert pulled.returncode == 0, pulled.stderr
    verified = rgt(capsys, "verify", str(local))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    metrics = json.loads((local / "cell-a" / "metrics.json").read_text())
    assert metrics == {"steps": 40, "total": 820}

    if not profile.meter_stop_verb:  # `local`: nothing rents the machine, nothing to end
        refused = rgt(capsys, "destroy", instance)
        assert refused.returncode == EXIT_REFUSED and "no meter to stop" in refused.stderr
        assert state(profile_ref, instance) == "running"
        assert Path(root, "work/results/PULL_MANIFEST.json").is_file()
        return
    # The gate's decision, with the human's approval given on a terminal.
    human = PtyProcess("destroy", instance)
    human.expect("Type the instance id")
    human.send(instance)
    human.expect("Approval passphrase")
    human.send(PASSPHRASE)
    if profile.detach_primitive in ("sbatch", "k8s-job"):
        # rgt sends the scheduler's cancel itself (it deletes nothing) and sees the job ended.
        assert human.wait(timeout=90) == 0, human.text
        assert f"rgt sent {profile.meter_stop_verb}" in human.text
        with Ledger.open() as ledger:
            assert [d.status for d in ledger.destroys(instance)] == ["confirmed"]
        assert state(profile_ref, instance) == "gone"
        assert Path(root, "work/results/PULL_MANIFEST.json").is_file()  # its files stay
    else:
        told = human.expect("to confirm, or press Enter")
        assert profile.meter_stop_action in " ".join(told.split()), told
        human.send("")  # declined: the box is shared by the other profiles' flows
        assert human.wait(timeout=60) == EXIT_REFUSED, human.text
        assert "not confirmed" in human.text
        with Ledger.open() as ledger:
            assert [d.status for d in ledger.destroys(instance)] == ["failed"]
        assert state(profile_ref, instance) == "running"  # the box and its disk are still there
        assert Path(root, "work/results/PULL_MANIFEST.json").is_file()
    assert_no_canary(launched.stdout, done.stdout, pulled.stdout, human.text)


@pytest.mark.parametrize("name", ["generic-ssh:slurm", "generic-ssh:kubernetes"])
def test_a_running_scheduler_job_is_not_submitted_twice_and_its_meter_stop_ends_it(
    platform_box: tuple[StandInBox, str],
    name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The meter stop rgt sends for a scheduler's job (Slurm: the real scancel; Kubernetes: the
    stand-in's kubectl delete job) ends a job that still runs; the provider says gone only once
    the scheduler says the job ended. Called on the provider directly: the gate's part is the
    flow test's."""
    from rgt.providers.ssh import SshProvider

    box, slurm_missing = platform_box
    if name.endswith(":slurm") and slurm_missing:
        pytest.skip(slurm_missing)
    slug = name.replace(":", "-") + "-cancel"
    root = f"{box.disk}/{slug}"
    profile_ref = flow_profile(tmp_path, root, name)
    job = flow_job(tmp_path, root, f"cancel-{slug}")
    data = yaml.safe_load(job.read_text())
    data["command"] = "sleep 600"
    job.write_text(yaml.safe_dump(data))
    attached = rgt(capsys, "attach", profile_ref, box.target, "--identity", str(box.client_key))
    assert attached.returncode == 0, attached.stderr
    instance = "ssh-1"
    first = rgt(capsys, "launch", "--on", instance, "--job", str(job))
    assert first.returncode == 0, first.stderr
    provider = SshProvider(load_profile(profile_ref))
    handle = provider.scheduler_job(instance)
    assert handle is not None and handle[1] == "active", handle
    again = rgt(capsys, "launch", "--on", instance, "--job", str(job))
    assert again.returncode == 0 and "already running as" in again.stdout, again.stdout
    assert provider.scheduler_job(instance) == handle  # nothing submitted twice

    assert provider.sends_meter_stop
    provider.destroy(instance)
    deadline = time.monotonic() + 60
    while provider.show(instance).state != "gone":
        assert time.monotonic() < deadline, provider.show(instance)
        time.sleep(0.5)
    assert provider.scheduler_job(instance) == (handle[0], "ended")
