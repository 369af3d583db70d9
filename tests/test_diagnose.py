"""A job's log tail and exit code name the reference that explains them (rgt.diagnose).

The snippets are the lines PyTorch, NCCL, torchrun and bash print. End to end: on the emulator
(real vastai SDK, real sshd, the real rendered boot hook) a job that prints an NCCL watchdog
timeout, and a job killed by a real SIGKILL (exit 137), are routed by `rgt poll` to
TRAIN-DIST2 and TRAIN-OOM3; a running job whose last lines show a NaN loss is routed to
TRAIN-NAN1 (stand-in provider); the MCP `logs` and `poll` tools name the reference and the
references are MCP resources (a real MCP client over stdio)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rgt.diagnose import NAN_WINDOW, diagnose
from rgt.references import load_catalog
from tests.mcp_client import connect
from tests.test_poll_job import (
    _assert_alive,
    _box_status,
    _launch,
    _old_running_record,
    _poll,
    _rgt,
    _standin_with_record,
    _wait_for,
    _write_job,
)

CUDA_OOM = [
    "step 2990 loss 2.3114",
    "Traceback (most recent call last):",
    '  File "/workspace/train.py", line 88, in <module>',
    "    loss.backward()",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 23.64 GiB of which 1.12 GiB is free. Of the allocated memory 20.1 GiB is "
    "allocated by PyTorch, and 1.9 GiB is reserved by PyTorch but unallocated.",
]
NCCL_TIMEOUT = [
    "step 120 loss 4.02",
    "[rank1]:[E1203 10:41:07.552818 ProcessGroupNCCL.cpp:632] [Rank 1] Watchdog caught "
    "collective operation timeout: WorkNCCL(SeqNum=421, OpType=ALLREDUCE, NumelIn=1, "
    "NumelOut=1, Timeout(ms)=600000) ran for 600023 milliseconds before timing out.",
    "[rank1]:[E1203 10:41:07.553000 ProcessGroupNCCL.cpp:2168] [PG 0 (default_pg) Rank 1] "
    "Timeout at NCCL work: 421, last enqueued NCCL work: 421, last completed NCCL work: 420.",
]
NCCL_ERROR = [
    "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
    "NCCLUtils.hpp:275, unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL "
    "version 2.21.5",
]
RENDEZVOUS = [
    "torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError",
]
NAN_LOSS = [
    "step 3000 | loss 1.8821 | grad_norm 0.91 | lr 3.0e-04",
    "step 3010 | loss 7.4410 | grad_norm 412.5 | lr 3.0e-04",
    "step 3020 | loss nan | grad_norm nan | lr 3.0e-04",
]
ANOMALY = [
    "RuntimeError: Function 'LogSoftmaxBackward0' returned nan values in its 0th output.",
]
BUS_ERROR = [
    "RuntimeError: DataLoader worker (pid 4121) is killed by signal: Bus error. It is possible "
    "that dataloader's workers are out of shared memory. Please try to raise your shared memory "
    "limit.",
]
WORKER_KILLED = ["RuntimeError: DataLoader worker (pid(s) 311) exited unexpectedly"]
HEALTHY = [
    "2026-12-03 10:00:01 INFO  starting: 1 GPU, bf16, nan_policy=raise",
    "step 100 | loss 2.8817 | grad_norm 1.02 | 731 ms/step (12 nanoseconds overhead)",
    "eval: inference_time 3.1 s, info ok, max_norm=inf clipping disabled",
    "saved checkpoint step-000100.ckpt",
]


@pytest.mark.parametrize(
    ("lines", "exit_code", "reference"),
    [
        (CUDA_OOM, 1, "TRAIN-OOM1"),
        (NCCL_TIMEOUT, 1, "TRAIN-DIST2"),
        (NCCL_ERROR, 1, "TRAIN-DIST2"),
        (RENDEZVOUS, 1, "TRAIN-DIST1"),
        (NAN_LOSS, None, "TRAIN-NAN1"),
        (ANOMALY, 1, "TRAIN-NAN1"),
        (BUS_ERROR, 1, "TRAIN-DATA4"),
        (["epoch 1", "epoch 2"], 137, "TRAIN-OOM3"),
        (["epoch 1", "/root/.rgt/run.sh: line 4:  2211 Killed   python train.py"], 1, "TRAIN-OOM3"),
    ],
)
def test_known_patterns_name_their_reference(
    lines: list[str], exit_code: int | None, reference: str
) -> None:
    found = diagnose(lines, exit_code)
    assert found is not None and found.reference == reference, found
    # The pointer names the file the entry lives in, which exists in the catalog.
    entries, _ = load_catalog()
    assert found.text().startswith(f"{reference} ({entries[reference].file}): ")


def test_healthy_logs_and_other_failures_name_nothing() -> None:
    assert diagnose(HEALTHY) is None
    assert diagnose(HEALTHY, 0) is None
    assert diagnose(["error: unrecognized arguments: --lr-typo"], 2) is None
    assert diagnose(WORKER_KILLED, 1) is None  # no signal named: no guess
    assert diagnose([], None) is None


def test_a_nan_counts_only_in_the_last_lines() -> None:
    recovered = NAN_LOSS + [f"step {3030 + 10 * i} | loss 1.9 | grad_norm 0.8" for i in range(30)]
    assert diagnose(recovered) is None
    assert len(recovered) - len(NAN_LOSS) >= NAN_WINDOW
    recent = NAN_LOSS + ["step 3030 | loss 1.9"] * (NAN_WINDOW - 1)
    found = diagnose(recent)
    assert found is not None and found.reference == "TRAIN-NAN1"


def test_the_root_cause_wins_over_its_consequences() -> None:
    # One rank runs out of memory; the others then time out in NCCL, and the job exits 137.
    found = diagnose(CUDA_OOM + NCCL_TIMEOUT, 137)
    assert found is not None and found.reference == "TRAIN-OOM1"
    found = diagnose(NCCL_TIMEOUT + NAN_LOSS, 1)
    assert found is not None and found.reference == "TRAIN-DIST2"


def test_a_running_job_with_a_nan_loss_is_routed_by_poll(tmp_path: Path) -> None:
    from rgt.jobstatus import utc_seconds

    record = _old_running_record("2026-01-01T00:00:00Z")
    record["log_tail"] = NAN_LOSS
    provider = _standin_with_record(tmp_path, record)
    report = _poll(provider, read_job=True, now=utc_seconds("2026-01-01T00:00:00Z") + 10)
    assert report.job is not None and report.job.state == "running"
    assert report.job.reference is not None
    assert report.job.reference.startswith("TRAIN-NAN1 (references/train-numerics.md): ")
    assert "loss nan" in report.job.reference
    assert report.next_action.startswith("the job runs; poll again later")
    assert report.next_action.endswith(
        f"The job's log points at {report.job.reference}: read that reference first"
    )
    # A healthy tail names nothing.
    record["log_tail"] = HEALTHY
    quiet = _standin_with_record(tmp_path / "quiet", record)
    plain = _poll(quiet, read_job=True, now=utc_seconds("2026-01-01T00:00:00Z") + 10)
    assert plain.job is not None and plain.job.reference is None
    assert "points at" not in plain.next_action


def _command(lines: list[str], then: str) -> str:
    """A job command that prints `lines` (as the framework would) and then runs `then`."""
    printed = "; ".join(f"printf '%s\\n' {json.dumps(line)}" for line in lines)
    return f"{printed}; {then}"


@pytest.mark.timeout(240)
def test_poll_routes_an_nccl_timeout_and_a_sigkill_on_the_emulator(
    emulator: Any, tmp_path: Path
) -> None:
    cases = {
        "nccl-timeout": (_command(NCCL_TIMEOUT, "exit 1"), 1, "TRAIN-DIST2"),
        # A real SIGKILL of the training process: bash reports 137, the log has no traceback.
        "sigkilled": (
            _command(["step 3000 loss 2.31"], "python3 -c 'import os; os.kill(os.getpid(), 9)'"),
            137,
            "TRAIN-OOM3",
        ),
    }
    for run_id, (command, exit_code, reference) in cases.items():
        instance_id = _launch(_write_job(tmp_path, run_id, command))
        _wait_for(
            lambda i=instance_id, r=run_id: (
                (s := _box_status(emulator, i, r)) and s["outcome"] == "failed"
            ),
            f"the boot hook to record the failure of {run_id}",
        )
        polled = _rgt("poll", instance_id, "--json")
        assert polled.returncode == 0, polled.stderr
        report = json.loads(polled.stdout)
        job = report["job"]
        assert (job["state"], job["exit_code"]) == ("failed", exit_code), job
        assert job["reference"].startswith(f"{reference} (references/"), job
        assert "FAILED with exit code" in report["next_action"]
        assert f"The job's log points at {reference} (references/" in report["next_action"]
        _assert_alive(emulator, instance_id)


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_mcp_logs_names_the_reference_and_serves_the_references(
    emulator: Any, tmp_path: Path
) -> None:
    job = _write_job(tmp_path, "oom-mcp", _command(CUDA_OOM, "exit 1"))
    instance_id = _launch(job)
    _wait_for(
        lambda: (s := _box_status(emulator, instance_id, "oom-mcp")) and s["outcome"] == "failed",
        "the boot hook to record the failure",
    )
    async with connect(emulator, "auto") as session:
        shown = await session.data("logs", {"instance_id": instance_id, "tail": 100})
        assert any("CUDA out of memory" in line for line in shown["lines"]), shown
        assert shown["reference"].startswith("TRAIN-OOM1 (references/train-oom.md): "), shown
        polled = await session.data("poll", {"instance_id": instance_id})
        assert polled["job"]["reference"].startswith("TRAIN-OOM1 ")
        assert "The job's log points at TRAIN-OOM1" in polled["next_action"]

        listed = await session.client.list_resources()
        uris = {str(r.uri) for r in listed.resources}
        assert "rgt://references/train-oom.md" in uris
        assert "rgt://references/gotchas-universal.md" in uris
        read = await session.client.read_resource("rgt://references/train-oom.md")
        text = read.contents[0].text  # type: ignore[union-attr]
        assert "### TRAIN-OOM1 — " in text and "- **Check:**" in text
    _assert_alive(emulator, instance_id)
