"""Attached boxes whose jobs a scheduler runs: a Slurm login node (`sbatch`) or a host with
`kubectl` (a Kubernetes Job). The shell that `rgt launch --on`, `show` and the meter stop send
over ssh to such a box, and how they read its answer.

The box rgt attached is where the scheduler's client runs, and where the job's files are
visible at the profile's paths (Slurm: the shared filesystem; Kubernetes: the claim's volume
mounted on that host): so poll, logs, pull and the gate read the run's state directory there
as on any attached box. What differs is how the job starts and how its meter stops: the
rendered `sbatch.sh` / `k8s_job.yaml` is submitted, and the scheduler's job handle (the id
sbatch prints, the Job's name) is kept next to the run's status record (`scheduler_job`), where
the meter stop (`scancel` / `kubectl delete job`) finds it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

HANDLE_NAME = "scheduler_job"
# What `active_script` prints: the job holds (or waits for) its allocation, or it ended.
ACTIVE, ENDED = "active", "ended"


@dataclass(frozen=True)
class Scheduler:
    """One detach primitive that a scheduler runs."""

    primitive: str  # the profile's detach_primitive
    template: str  # the rgt.render template submitted
    file_name: str  # its name in the run's state directory on the box
    noun: str  # how a human names the job: "Slurm job", "Kubernetes job"


SCHEDULERS: dict[str, Scheduler] = {
    "sbatch": Scheduler("sbatch", "sbatch", "sbatch.sh", "Slurm job"),
    "k8s-job": Scheduler("k8s-job", "k8s_job", "k8s_job.yaml", "Kubernetes job"),
}

# squeue's states of a job that still holds or waits for an allocation (anything else, or no
# such job any more, has ended: its allocation is free).
_SLURM_ACTIVE = (
    "PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED|REQUEUED|REQUEUE_HOLD|REQUEUE_FED|"
    "RESIZING|SIGNALING|STAGE_OUT|STOPPED"
)


def scheduler_for(detach_primitive: str) -> Scheduler | None:
    """The scheduler behind a detach primitive, or None (tmux, nohup: rgt starts the hook)."""
    return SCHEDULERS.get(detach_primitive)


def _active_check(scheduler: Scheduler, handle: str) -> list[str]:
    """Lines of sh that set `state` to active/ended for job `$handle`, or exit 3 when the
    scheduler does not answer (an outage is never taken for an ended job)."""
    if scheduler.primitive == "sbatch":
        return [
            'out=$(squeue -h -j "$handle" -o %T 2>&1) && rc=0 || rc=$?',
            'if [ "$rc" -ne 0 ]; then',
            '  case "$out" in *"Invalid job id"*) state=ended ;;',
            '    *) echo "squeue: $out" >&2; exit 3 ;; esac',
            "else",
            f'  case "$(printf %s "$out" | head -n 1)" in {_SLURM_ACTIVE}) state=active ;;',
            "    *) state=ended ;; esac",
            "fi",
        ]
    return [
        "out=$(kubectl get job \"$handle\" -o 'jsonpath={.status.active}' 2>&1) && rc=0 || rc=$?",
        'if [ "$rc" -ne 0 ]; then',
        '  case "$out" in *NotFound*|*"not found"*) state=ended ;;',
        '    *) echo "kubectl: $out" >&2; exit 3 ;; esac',
        "else",
        '  case "$out" in ""|0) state=ended ;; *) state=active ;; esac',
        "fi",
    ]


def submit_script(
    scheduler: Scheduler, state_dir: str, instance_id: str, handle: str | None
) -> str:
    """sh that submits the shipped file from the run's state directory unless the run's job is
    still active, keeps its job handle in `scheduler_job` (replaced whole), and prints how
    (last line: `Slurm job 42` or `already running as Slurm job 42`).

    `handle`: the Kubernetes Job's name (fixed by the run id); Slurm's is the id sbatch prints.
    The manifest names the box by the id rgt knows it by: $RGT_INSTANCE_ID reaches the job
    (sbatch --export; the Job manifest carries it)."""
    q = shlex.quote
    lines = [
        "set -eu",
        f"export RGT_INSTANCE_ID={q(instance_id)}",
        f"cd {q(state_dir)}",
        f"if [ -s {HANDLE_NAME} ]; then",
        f"  handle=$(cat {HANDLE_NAME})",
        *("  " + line for line in _active_check(scheduler, "$handle")),
        '  if [ "$state" = active ]; then',
        f'    echo "already running as {scheduler.noun} $handle"',
        "    exit 0",
        "  fi",
        "fi",
    ]
    if scheduler.primitive == "sbatch":
        lines += [
            f'out=$(sbatch --parsable --export=ALL,RGT_INSTANCE_ID="$RGT_INSTANCE_ID" '
            f"{q(scheduler.file_name)})",
            # --parsable prints `ID` or `ID;CLUSTER`.
            'handle=$(printf %s "$out" | tail -n 1 | cut -d";" -f1)',
            'case "$handle" in ""|*[!0-9_]*) echo "sbatch printed no job id: $out" >&2; exit 3;; '
            "esac",
        ]
    else:
        lines += [
            f"handle={q(handle or '')}",
            # A finished Job of the same name holds no GPU; its spec cannot be re-applied.
            'if kubectl get job "$handle" >/dev/null 2>&1; then',
            '  kubectl delete job "$handle" >/dev/null',
            "fi",
            f"kubectl apply -f {q(scheduler.file_name)} >&2",
        ]
    lines += [
        f'printf "%s\\n" "$handle" >{HANDLE_NAME}.tmp',
        f"mv -f {HANDLE_NAME}.tmp {HANDLE_NAME}",
        f'echo "{scheduler.noun} $handle"',
    ]
    return "\n".join(lines)


def state_script(scheduler: Scheduler, state_dir: str) -> str:
    """sh that prints `JOB_HANDLE STATE` (active/ended) for the run's job, or `none` when no job
    was submitted; exit 3 when the scheduler does not answer."""
    lines = [
        "set -eu",
        f"if [ ! -s {shlex.quote(state_dir)}/{HANDLE_NAME} ]; then echo none; exit 0; fi",
        f"handle=$(cat {shlex.quote(state_dir)}/{HANDLE_NAME})",
        *_active_check(scheduler, "$handle"),
        'echo "$handle $state"',
    ]
    return "\n".join(lines)


def cancel_script(scheduler: Scheduler, state_dir: str) -> str:
    """sh that stops the run's job's meter (`scancel ID` / `kubectl delete job NAME`) unless it
    ended already, then prints `JOB_HANDLE STATE` as `state_script` does."""
    stop = (
        'scancel "$handle"'
        if scheduler.primitive == "sbatch"
        else 'kubectl delete job "$handle" >&2'
    )
    lines = [
        "set -eu",
        f"if [ ! -s {shlex.quote(state_dir)}/{HANDLE_NAME} ]; then echo none; exit 0; fi",
        f"handle=$(cat {shlex.quote(state_dir)}/{HANDLE_NAME})",
        *_active_check(scheduler, "$handle"),
        f'if [ "$state" = active ]; then {stop}; fi',
        *_active_check(scheduler, "$handle"),
        'echo "$handle $state"',
    ]
    return "\n".join(lines)
