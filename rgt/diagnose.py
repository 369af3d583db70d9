"""Route a job's log tail and exit code to the reference that explains them.

`rgt poll` (the job status record's log tail and exit code) and the MCP `logs` tool (the
container's last lines) name the matching reference entry, so an agent reads the right page
instead of guessing. Patterns are the lines the frameworks print, matched in order of root
cause: an out-of-memory error on one rank also produces NCCL timeouts on the others, so the
memory error wins; a NaN counts only in the last lines (a NaN long ago that the run survived is
history, not state: UNIV25).

Stdlib only and cheap: it runs on every poll.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Only the last lines count for a NaN/Inf loss: the run's present, not its past.
NAN_WINDOW = 20
EXIT_SIGKILL = 137  # 128 + 9: the kernel's OOM killer, or someone's kill -9

# (reference id, what it means, pattern): first match wins, so the root cause comes first.
_LOG_PATTERNS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    (
        "TRAIN-OOM1",
        "CUDA out of memory",
        re.compile(
            r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory"
            r"|CUBLAS_STATUS_ALLOC_FAILED"
        ),
    ),
    (
        "TRAIN-DATA4",
        "a DataLoader worker died (bus error: /dev/shm too small)",
        re.compile(r"DataLoader worker \(pid[^)]*\) is killed by signal: Bus error"),
    ),
    (
        "TRAIN-OOM3",
        "a DataLoader worker was killed (host memory)",
        re.compile(r"DataLoader worker \(pid[^)]*\) is killed by signal: Killed"),
    ),
    (
        "TRAIN-DIST1",
        "the distributed rendezvous timed out",
        re.compile(
            r"RendezvousTimeoutError|Timed out initializing process group"
            r"|client socket has timed out after"
        ),
    ),
    (
        "TRAIN-DIST2",
        "an NCCL timeout or error",
        re.compile(
            r"Watchdog caught collective operation timeout|NCCL (?:error|timeout|WARN Timeout)"
            r"|DistBackendError|nccl(?:System|Internal|UnhandledCuda|Invalid)\w*Error"
            r"|NCCL communicator was aborted"
        ),
    ),
)
_NAN = re.compile(
    r"(?i)\b(?:loss|grad(?:ient)?s?(?:_norm)?|norm)\b[^\n]{0,40}?[=:\s]\s*[-+]?(?:nan|inf)\b"
    r"|returned nan values|\bnon-finite (?:loss|values?)\b|\bloss is (?:nan|inf)\b"
)
# A problem line of the boot hook's health check: "health: <what> (<reference id>)".
_HEALTH_LINE = re.compile(r"^health: .*[(; ]((?:UNIV|TRAIN-[A-Z]+)\d+)\)$")
_KILLED_LINE = re.compile(r"^\s*(?:Killed|.*: line \d+: *\d+ Killed\b.*)\s*$")


@dataclass(frozen=True)
class Diagnosis:
    """Which reference a job's output points at, and why."""

    reference: str  # an entry id, e.g. TRAIN-OOM1
    reason: str  # what matched, e.g. "exit code 137 (SIGKILL)"

    def text(self) -> str:
        """One phrase for next actions and tool results: `TRAIN-OOM1 (references/...): why`."""
        from rgt.references import pointer

        return f"{pointer(self.reference)}: {self.reason}"


def diagnose(lines: Sequence[str], exit_code: int | None = None) -> Diagnosis | None:
    """The reference for a log tail (oldest line first) and the job's exit code; None when
    nothing known matches. A failed box health check (`health: ... (UNIV10)`, the boot hook's
    scripts/_gpu_health.sh.j2) names its own reference, and it wins: the job never ran."""
    for line in lines:
        health = _HEALTH_LINE.search(line)
        if health:
            return Diagnosis(health.group(1), f"the box failed its health check: {_short(line)}")
    for reference, meaning, pattern in _LOG_PATTERNS:
        for line in reversed(lines):
            if pattern.search(line):
                return Diagnosis(reference, f"{meaning} in the log: {_short(line)}")
    for line in reversed(lines[-NAN_WINDOW:]):
        if _NAN.search(line):
            return Diagnosis("TRAIN-NAN1", f"a NaN/Inf in the last log lines: {_short(line)}")
    if exit_code == EXIT_SIGKILL:
        return Diagnosis("TRAIN-OOM3", "exit code 137 (SIGKILL: most often the OOM killer)")
    if lines and _KILLED_LINE.match(lines[-1]):
        return Diagnosis("TRAIN-OOM3", "the log ends in 'Killed' (SIGKILL, no traceback)")
    return None


def _short(line: str, limit: int = 120) -> str:
    text = line.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
