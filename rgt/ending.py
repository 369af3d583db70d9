"""How a rental that the provider no longer shows ended, in the words poll, sweep and cost share.

"Gone" alone is a false all-clear: an id that never existed, a box rgt destroyed after a
verified pull, one it discarded with a human's approval, and one destroyed outside rgt before
its results were saved all read "gone" at the provider. The ledger tells them apart:

    unknown     rgt has no record of the id (a typo, another account): nothing is known
    destroyed   rgt destroyed it through the gate: results pulled and verified first
    discarded   rgt discarded it through the gate, for a proven reason, approved by a human:
                its results were NOT saved, and the human was told so
    gone        it ended outside rgt, but its results had been pulled and verified
    lost        it ended outside rgt with no verified pull and no discard: whatever it held
                is gone — a loud warning naming what the ledger knew
"""

from __future__ import annotations

import json
from typing import NamedTuple

from rgt.ledger import Ledger

ENDINGS = ("unknown", "destroyed", "discarded", "gone", "lost")


class Ending(NamedTuple):
    """How an instance the provider reports gone came to be gone, and what to say about it."""

    word: str  # one of ENDINGS
    message: str


def gone_ending(ledger: Ledger, platform: str, instance_id: str) -> Ending:
    """Classify an instance the provider reports gone, from the ledger alone."""
    instance_id = str(instance_id)
    confirmed = [d for d in ledger.destroys(instance_id) if d.status == "confirmed"]
    if confirmed:
        last = confirmed[-1]
        if last.purpose == "discard":
            lost = json.loads(last.lost) if last.lost else {}
            files = lost.get("files_on_box")
            held = (f"{files} file(s) on the box" if files is not None else "what the box held") + (
                f", last checkpoint {lost['last_checkpoint']}"
                if lost.get("last_checkpoint")
                else ""
            )
            return Ending(
                "discarded",
                f"discarded through rgt ({last.reason}), approved by a human: its results were "
                f"NOT saved ({held}); it bills nothing",
            )
        verification = ledger.latest_verification(instance_id)
        where = f" into {verification.local_dir}" if verification is not None else ""
        return Ending(
            "destroyed",
            f"destroyed through rgt after its results were pulled and verified{where}; it bills "
            "nothing",
        )
    record = ledger.instance(platform, instance_id)
    pull = ledger.latest_pull(instance_id)
    verification = ledger.latest_verification(instance_id)
    if record is None and pull is None:
        return Ending(
            "unknown",
            f"unknown: the provider does not show instance {instance_id} and rgt has no record "
            "of it (a typo, or an instance of another account?); nothing is known about it",
        )
    if verification is not None:
        return Ending(
            "gone",
            f"gone, ended outside rgt; its results had been pulled and verified into "
            f"{verification.local_dir}; it bills nothing",
        )
    known = (
        f"the last pull copied {pull.files} file(s) of manifest {pull.manifest_sha256[:12]}… "
        f"into {pull.local_dir}, never verified"
        if pull is not None
        else "its results were never pulled"
    )
    run = f" (run {record.label.split(':', 1)[-1]})" if record and record.label else ""
    return Ending(
        "lost",
        f"LOST: instance {instance_id}{run} was destroyed outside rgt without a verified pull or "
        f"a discard: whatever it held is gone; {known}. It bills nothing now",
    )
