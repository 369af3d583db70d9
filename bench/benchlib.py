"""Shared bits of the benchmark scripts: the machine line, medians, a plain table, JSON output.

Benchmarks are scripts, not tests: each measures rgt next to a baseline in the same run and
prints both. `tools/bench.sh` runs every bench/bench_*.py; bench/RESULTS.md records the figures.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews timings (record it)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


def machine() -> dict[str, Any]:
    """Cores, CPU, Python, OS, load and the UTC date: printed with every result."""
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_1min": load_average(),
    }


def machine_line() -> str:
    """One line describing the machine."""
    m = machine()
    return (
        f"{m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['os']}, {m['date']}, "
        f"load {m['load_1min']}"
    )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain Markdown table (readable in a terminal and pasteable into RESULTS.md)."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def emit(name: str, result: dict[str, Any]) -> None:
    """Write bench/out/NAME.json (with the machine) for RESULTS.md; the text is printed apart."""
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    result = {"bench": name, "machine": machine(), **result}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[{name}] wrote bench/out/{name}.json", file=sys.stderr)


def compile_rgt() -> None:
    """Write rgt's bytecode (.pyc), as pip does when it installs the wheel. Without it, an
    editable checkout run with PYTHONDONTWRITEBYTECODE=1 (set on the machine these figures come
    from) compiles every rgt module from source in every process a bench starts: that is the
    first run after an upgrade, which bench_startup measures on its own, not the normal case."""
    import compileall

    compileall.compile_dir(str(REPO / "rgt"), quiet=1)
