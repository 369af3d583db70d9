"""A real single-node Slurm cluster for the tests: Debian's slurm-wlm (slurmctld + slurmd) and
munge, all on 127.0.0.1, in a temp directory, as root (the test machine's user).

The node advertises one GPU as a count-only generic resource (no device file): the rendered
sbatch script asks for `--gpus=N`, and a real slurmctld refuses a request no node can satisfy.
Nothing uses a GPU. Clients reach the cluster through $SLURM_CONF (and the munge socket named
in it), which the stand-in box sets for its logins. Skipped where slurm-wlm or munge is not
installed (`tools/setup.sh test` installs them) or where the daemons cannot start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from rgt import loopback

SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
MUNGED = "/usr/sbin/munged"
NODE = "rgtnode"
START_SECONDS = 20.0


class SlurmCluster:
    """slurmctld + slurmd + munged in `root`, started by `start`, stopped by `close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, scancel) needs in its environment."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> SlurmCluster:
        """Start munged, slurmctld and slurmd; wait until the node is idle. The daemons' ports
        are free ones, others when a daemon found its port taken (rgt.loopback)."""
        for attempt in range(loopback.START_TRIES):
            try:
                return self._start_once()
            except loopback.PortTaken:
                if attempt == loopback.START_TRIES - 1:
                    raise
        raise AssertionError("not reached")

    def _start_once(self) -> SlurmCluster:
        missing = [p for p in (SLURMCTLD, SLURMD, MUNGED) if not os.access(p, os.X_OK)]
        if missing or shutil.which("sbatch") is None:
            pytest.skip(f"slurm-wlm/munge not installed ({missing}); run tools/setup.sh test")
        if os.geteuid() != 0:
            pytest.skip("the test cluster's slurmd runs jobs as root: run the tests as root")
        root = self.root
        munge = root / "munge"
        (root / "state").mkdir(parents=True, exist_ok=True)
        (root / "spool").mkdir(exist_ok=True)
        # munged insists its socket's folder be traversable by all
        munge.mkdir(mode=0o755, exist_ok=True)
        for log in ("slurmctld.log", "slurmd.log"):  # an earlier try's clash is not this one's
            (root / log).unlink(missing_ok=True)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        host = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=rgttest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={loopback.free_port()}",
            f"SlurmdPort={loopback.free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge / 'sock'}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",  # no cgroups in a test container
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SchedulerType=sched/builtin",
            "ReturnToService=2",
            "MpiDefault=none",
            "GresTypes=gpu",
            "KillWait=5",
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs=2 Gres=gpu:1 State=UNKNOWN",
            f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
        self.conf.write_text("\n".join(lines))
        gres = f"AutoDetect=off\nNodeName={NODE} Name=gpu File=/dev/null\n"
        (root / "gres.conf").write_text(gres)
        env = {**os.environ, **self.env}
        self._spawn(
            [
                MUNGED,
                "-F",
                "--force",
                f"--key-file={key}",
                f"--socket={munge / 'sock'}",
                f"--pid-file={munge / 'pid'}",
                f"--log-file={munge / 'log'}",
                f"--seed-file={munge / 'seed'}",
            ],
            env,
        )
        self._spawn([SLURMCTLD, "-D", "-i", "-f", str(self.conf)], env)
        self._spawn([SLURMD, "-D", "-N", NODE, "-f", str(self.conf)], env)
        deadline = time.monotonic() + START_SECONDS
        while True:
            done = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, check=False
            )
            if done.stdout.strip() == "idle":
                return self
            dead = [p.args for p in self._procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                said = [
                    (root / name).read_text()
                    for name in ("slurmctld.log", "slurmd.log")
                    if (root / name).exists()
                ]
                logs = " | ".join(text[-300:] for text in said)
                self.close()
                if dead and any(loopback.ADDRESS_IN_USE in text.lower() for text in said):
                    raise loopback.PortTaken(logs)  # another process took a daemon's port
                pytest.skip(f"a test Slurm cluster did not start here ({dead}): {logs}")
            time.sleep(0.1)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self._procs.append(
            subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def close(self) -> None:
        """Stop the daemons (slurmd first, munged last) and any job step they left."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        self._procs.clear()
        # A job's slurmstepd outlives slurmd; it runs out of this cluster's spool directory.
        needle = str(self.conf).encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    environ = Path(f"/proc/{entry}/environ").read_bytes()
                except OSError:
                    continue
                if needle in environ and int(entry) != os.getpid():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(entry), signal.SIGKILL)
