"""The demo's report: what happened, what it cost, what came home. Plain text for people; the
same dict is printed as JSON with `rgt demo --json`.

Also a small step progress bar (the byte bar of rgt.progress speaks bytes; a training job speaks
steps)."""

from __future__ import annotations

import sys
import textwrap
import time
from typing import Any, TextIO

from rgt.progress import human_bytes

_METER_PARTS = ("compute", "storage", "bandwidth", "total")


def dollars(value: float | None) -> str:
    """'$0.012345': six decimals, enough for a demo-sized bill (a few cents) to add up."""
    if value is None:
        return "-"
    return f"${value:,.6f}"


def rate(value: float | None) -> str:
    """A price: '$0.1745'."""
    return "-" if value is None else f"${value:.4f}"


def _percent(actual: float, ideal: float) -> str:
    return f"{(actual / ideal - 1):+.1%}" if ideal > 0 else ""


def _signed_dollars(value: float) -> str:
    return ("+" if value >= 0 else "-") + dollars(abs(value))


def render_text(report: dict[str, Any]) -> str:
    """The report as readable text (sections: rental, timeline, job, cost, results, teardown)."""
    lines: list[str] = []
    add = lines.append
    offer = report["offer"]
    add(f"rgt demo: run {report['run_id']} on the embedded vast.ai emulator ({report['emulator']})")
    add(
        f"  instance {report['instance_id']}: offer {offer['offer_id']}, {offer['num_gpus']}x "
        f"{offer['gpu_name']}, the cheapest verified interruptible one that fits"
    )
    add(
        f"  price: bid {rate(offer['bid_per_hour'])}/h (on-demand {rate(offer['dph_total'])}/h), "
        f"storage {rate(offer['storage_cost_per_gb_month'])}/GB-month, bandwidth "
        f"{rate(offer.get('inet_up_cost_per_gb'))}/GB out of the box"
    )
    cadence = report["cadence"]
    add(
        f"  checkpoint cadence (Young/Daly, MTBF {cadence['mtbf_seconds']:.0f} s, checkpoint cost "
        f"{cadence['checkpoint_cost_seconds'] * 1000:.1f} ms): every {cadence['interval_steps']} "
        f"steps"
        + (
            f" (Young/Daly said {cadence['young_daly_steps']}; capped so the demo has a checkpoint)"
            if cadence.get("young_daly_steps") != cadence["interval_steps"]
            else ""
        )
    )
    clock = report.get("clock_scale", 1.0)
    if clock != 1.0:
        add(f"  the emulator's clock runs x{clock:g}: billed time is {clock:g}x the demo's time")
    add("")
    add("Timeline (seconds since the demo started; states as the API reported them)")
    for event in report["timeline"]:
        add(f"  {event['t']:6.1f} s  {event['state']:<10}  {event.get('note', '')}".rstrip())
    add("")
    job = report["job"]
    add("Job (read from the pulled, verified results)")
    add(f"  steps            {job['final_step']} of {job['steps']} (starts: {job['starts']})")
    add(
        f"  preempted at     step {job['preempted_at_step']}; resumed from checkpoint step "
        f"{job['resumed_from_step']} ({job['resume_checkpoint']})"
    )
    add(f"  steps lost       {job['steps_lost']} (redone after the preemption)")
    add(
        f"  checkpoints      {job['checkpoints_written']} written, "
        f"{job['checkpoint_seconds'] * 1000:.1f} ms in all"
    )
    add(
        f"  model            loss {job['final_loss']:.5f}, max weight error "
        f"{job['max_weight_error']:.4f}; final weights identical to an uninterrupted run: "
        f"{'yes' if job['weights_match_uninterrupted'] else 'NO'}"
    )
    add("")
    add("Cost by the emulator's meter")
    actual, ideal = report["cost"]["actual"], report["cost"]["without_preemption"]
    add(f"  {'':<10} {'this run':>12} {'no preemption':>14} {'difference':>12}")
    for part in _METER_PARTS:
        add(
            f"  {part:<10} {dollars(actual[part]):>12} {dollars(ideal[part]):>14} "
            f"{_signed_dollars(actual[part] - ideal[part]):>12}"
        )
    add(f"  {'':<10} {'':>12} {'':>14} {_percent(actual['total'], ideal['total']):>12}")
    add(
        textwrap.fill(
            report["cost"]["basis"], width=96, initial_indent="  ", subsequent_indent="  "
        )
    )
    add("")
    pulled, verified = report["pull"], report["verify"]
    add("Results")
    add(
        f"  pulled           {pulled['files']} files, {human_bytes(pulled['bytes_total'])} "
        f"({pulled['bytes_total']} B) by {pulled['transport']} into {pulled['local_dir']}"
    )
    add(
        f"  verified         {verified['files']} files, {human_bytes(verified['bytes'])} "
        f"byte-for-byte against manifest {verified['manifest_sha256'][:16]}…; "
        f"{verified.get('checkpoints_loaded', 0)} checkpoints load"
    )
    add("")
    add("Teardown (the Iron Law)")
    before, after = report["gate"]["before_verify"], report["gate"]["after_approval"]
    add(f"  gate before verification: REFUSED, missing {', '.join(before['missing'])}")
    add(f"  gate after verify + approval: {'ALLOWED' if after['allowed'] else 'REFUSED'}")
    approval = report["approval"]
    add(f"  approval         #{approval['id']} on channel {approval['channel']!r}")
    teardown = report["destroy"]
    add(
        f"  destroy          instance {report['instance_id']} is {teardown['state']}; meter "
        f"{dollars(teardown['meter_at_destroy'])} then {dollars(teardown['meter_after'])} "
        f"{teardown['seconds_after']:.1f} s later: "
        f"{'billing stopped' if teardown['billing_stopped'] else 'STILL BILLING'}"
    )
    add("")
    add(f"Done in {report['seconds']:.1f} s. Demo files: {report['demo_dir']}")
    return "\n".join(lines) + "\n"


class StepBar:
    """A one-line step bar on a terminal (silent otherwise): label [####----] 120/240 note."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.enabled = self.stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self._last = 0.0

    def update(self, done: int, note: str = "") -> None:
        """Redraw (at most ~10 times a second)."""
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.1:
            return
        self._last = now
        filled = int(28 * min(done, self.total) / self.total)
        line = f"{self.label} [{'#' * filled}{'-' * (28 - filled)}] {done}/{self.total} {note}"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()

    def finish(self, note: str = "") -> None:
        """Draw the last state and end the line."""
        if self.enabled:
            self._last = 0.0
            self.update(self.total, note)
            self.stream.write("\n")
            self.stream.flush()
