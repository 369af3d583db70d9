"""`rgt ledger [INSTANCE] [--json]`: what rgt remembers renting, pulling, verifying, destroying."""

from __future__ import annotations

import argparse

ORDER = 140  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "show the ledger: launches, instances, pulls, verifications, approvals and destroys"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """[INSTANCE] [--json]."""
    parser.add_argument("instance", nargs="?", help="only this instance's history")
    parser.add_argument("--json", action="store_true", help="print JSON lines")


def run(args: argparse.Namespace) -> int:
    """Print the history, oldest first."""
    import json
    import time

    from rgt.ledger import Ledger, default_path

    if not default_path().exists():
        print(f"no ledger yet ({default_path()})")
        return 0
    with Ledger.open() as ledger:
        events = ledger.history(args.instance)
    if not events and not args.json:
        # Silence would look like a broken command (or a typo'd id that matched nothing).
        about = f" for instance {args.instance}" if args.instance else ""
        print(f"no ledger entries{about} ({default_path()})")
        return 0
    for event in events:
        if args.json:
            print(json.dumps(event, sort_keys=True))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["at"]))
        detail = {
            "instance_events": lambda e: (
                f"state {e['state']}" + (f" ({e['detail']})" if e["detail"] else "")
            ),
            "pulls": lambda e: (
                f"pulled {e['files']} files to {e['local_dir']} "
                f"(manifest {e['manifest_sha256'][:12]}…)"
            ),
            "verifications": lambda e: (
                f"verified {e['local_dir']} (manifest {e['manifest_sha256'][:12]}…)"
            ),
            "approvals": lambda e: (
                f"approved via {e['channel']}" + (" (used)" if e["consumed"] else "")
            ),
            "approval_failures": lambda e: f"approval FAILED via {e['channel']}: {e['reason']}",
            "destroys": _destroy_line,
            "launches": lambda e: (
                f"launch #{e['id']} {e['status']}: {e['label']} on offer {e['offer_id']}"
                + (f" ({e['detail']})" if e["detail"] else "")
            ),
            "discard_declines": lambda e: (
                f"discard ({e['reason']}) {e['answer']} when rgt run asked"
                + (f" ({e['detail']})" if e["detail"] else "")
            ),
        }[event["kind"]](event)
        print(f"{when}Z  {event.get('instance_id') or '-':<12} {detail}")
    return 0


def _destroy_line(event: dict[str, object]) -> str:
    """`destroy confirmed: gone`, not `destroy confirmed: destroy confirmed: gone` (the gate's
    detail often repeats the status). A discard says so, why, and what it lost: it is not a
    verified destroy."""
    import json

    status, detail = event["status"], event.get("detail")
    if event.get("purpose") == "discard":
        head = f"DISCARD {status} ({event.get('reason')}; results NOT saved)"
        lost = json.loads(str(event["lost"])) if event.get("lost") else {}
        if lost:
            files = lost.get("files_on_box")
            head += (
                f"; lost: {'unknown' if files is None else files} file(s) on the box, last "
                f"checkpoint {lost.get('last_checkpoint') or 'none'}"
            )
        return head if not detail else f"{head}: {detail}"
    head = f"destroy {status}"
    if not detail:
        return head
    return str(detail) if str(detail).startswith(head) else f"{head}: {detail}"
