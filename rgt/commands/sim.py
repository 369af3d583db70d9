"""`rgt sim serve [--port N] [--state DIR] [--seed S] [--api-key KEY] ...`: a local vast.ai.

Runs the rgt.sim emulator until interrupted and prints what a user pastes to drive it with the
stock `vastai` CLI (VAST_URL, VAST_API_KEY) or with rgt itself. The key printed is the
emulator's own (generated unless --api-key gives one): never give it a real vast.ai key."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

ORDER = 40  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "run a local vast.ai emulator ($0 rehearsals with the stock vastai CLI and rgt)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`serve` and its flags."""
    actions = parser.add_subparsers(dest="sim_action", metavar="ACTION", parser_class=type(parser))
    serve = actions.add_parser(
        "serve",
        help="serve the emulated vast.ai API on 127.0.0.1 until interrupted",
        description="Serve the emulated vast.ai REST API on 127.0.0.1 until Ctrl-C / SIGTERM.",
    )
    serve.add_argument("--port", type=_port, default=0, help="TCP port (default: a free one)")
    serve.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep instances, disks and balance here across restarts "
        "(default: <rgt state dir>/sim)",
    )
    serve.add_argument("--seed", type=int, default=0, help="marketplace seed (default 0)")
    serve.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="the key the emulator accepts (default: a generated one; never a real vast.ai key)",
    )
    serve.add_argument(
        "--time-scale",
        type=_non_negative,
        default=1.0,
        metavar="X",
        help="simulated seconds per real second for billing and boots (default 1)",
    )
    serve.add_argument(
        "--boot-seconds",
        type=_non_negative,
        default=5.0,
        metavar="S",
        help="simulated image pull before an instance runs (default 5)",
    )
    serve.add_argument(
        "--balance",
        type=_dollars,
        default=100.0,
        metavar="USD",
        help="starting credit (default 100)",
    )
    serve.add_argument("--no-ssh", action="store_true", help="no sshd per instance")
    serve.add_argument(
        "--json", action="store_true", help="print one JSON line (url, api_key, env) then serve"
    )


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected a TCP port 0-65535 (0 = any free), got {text!r}"
        )
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):  # NaN compares false both ways
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _dollars(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected an amount in dollars, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Dispatch the sim action."""
    from rgt.errors import UsageError

    if args.sim_action != "serve":
        raise UsageError("say what to do: `rgt sim serve` (see `rgt sim serve --help`)")
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    """Start the emulator, print how to use it, serve until SIGINT/SIGTERM."""
    from rgt.errors import UsageError
    from rgt.paths import state_dir
    from rgt.sim import Emulator

    state = args.state if args.state is not None else state_dir() / "sim"
    if state.exists() and not state.is_dir():
        raise UsageError(f"--state: {state} exists and is not a directory")
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--state: cannot create {state}: {exc.strerror}") from None
    generated = args.api_key is None
    emulator = Emulator(
        state_dir=state,
        seed=args.seed,
        api_key=args.api_key,
        ssh=not args.no_ssh,
        port=args.port,
        time_scale=args.time_scale,
        boot_seconds=args.boot_seconds,
        balance=args.balance,
    )
    try:
        emulator.start()
    except OSError as exc:
        raise UsageError(
            f"--port {args.port}: cannot listen on 127.0.0.1 ({exc.strerror})"
        ) from exc
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.json:
            print(json.dumps(_summary(emulator, state)), flush=True)
        else:
            print(_banner(emulator, state, generated), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    if not args.json:
        print(f"rgt sim: stopped; instances are kept in {state}", file=sys.stderr)
    return 0


def _key_is_from_environment(emulator: Any) -> bool:
    # A key the user already holds in $VAST_API_KEY is never echoed (it may be a real one).
    return bool(emulator.api_key == os.environ.get("VAST_API_KEY"))


def _environment(emulator: Any) -> dict[str, str]:
    environment = {"VAST_URL": emulator.url}
    if not _key_is_from_environment(emulator):
        environment["VAST_API_KEY"] = emulator.api_key
    environment.update(emulator.client_environment())
    return environment


def _summary(emulator: Any, state: Path) -> dict[str, Any]:
    hidden = _key_is_from_environment(emulator)
    return {
        "url": emulator.url,
        "api_key": None if hidden else emulator.api_key,
        "api_key_from_env": hidden,
        "state_dir": str(state),
        "seed": emulator.settings.seed,
        "ssh": emulator.ssh_note,
        "env": _environment(emulator),
    }


def _banner(emulator: Any, state: Path, generated: bool) -> str:
    url = emulator.url
    hidden = _key_is_from_environment(emulator)
    key = "$VAST_API_KEY" if hidden else emulator.api_key
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in _environment(emulator).items())
    one_line = (
        f"VAST_URL={url}{'' if hidden else ' VAST_API_KEY=' + key} vastai search offers "
        "'gpu_name=RTX_4090 num_gpus=1 direct_port_count>=1' -o dph+"
    )
    auth = f'-H "Authorization: Bearer {key}"'
    if hidden:
        key_line = "API key: the value of $VAST_API_KEY (not shown)"
    else:
        key_line = f"API key: {key}" + (
            "  (generated; choose one with --api-key)" if generated else ""
        )
    return "\n".join(
        [
            f"rgt sim: vast.ai emulator at {url} (seed {emulator.settings.seed}, state {state})",
            key_line,
            f"{emulator.ssh_note}",
            "",
            "Try the stock vastai CLI:",
            f"  {one_line}",
            "Or set it up for this shell (vastai and rgt both read these):",
            f"  export {exports}",
            "Faults and meters (same key):",
            f"  curl -X POST {auth} {url}/_sim/preempt/INSTANCE_ID    "
            "(also win_bid, host_offline, host_online)",
            f'  curl -X POST {auth} -d \'{{"n": 3, "status": 429, "retry_after": 1}}\' '
            f"{url}/_sim/fail_next",
            f"  curl {auth} {url}/_sim/meter",
            "Ctrl-C stops the emulator; instances stay in the state directory.",
        ]
    )
