"""`rgt mcp [--http [--port N]]`: serve rgt's tools to a coding agent over MCP."""

from __future__ import annotations

import argparse
import os
import signal

ORDER = 150  # position in `rgt --help` (see rgt.cli.command_modules)
HELP = "run the MCP server for coding agents (stdio by default; --http on 127.0.0.1 only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """[--http] [--port N]."""
    parser.add_argument(
        "--http",
        action="store_true",
        help="serve streamable HTTP on 127.0.0.1 (never another interface) instead of stdio",
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="port for --http (default 8765; path /mcp)"
    )


def run(args: argparse.Namespace) -> int:
    """Serve until the client disconnects (stdio) or the process is interrupted (HTTP)."""
    from rgt.errors import UsageError

    if not 0 < args.port < 65536:
        raise UsageError(f"--port: {args.port} is not a TCP port (1-65535)")
    from rgt import approval
    from rgt.mcp_server import serve

    if args.http:
        _check_port_free(args.port)
    else:
        signal.signal(signal.SIGINT, _exit_interrupted)
    if not approval.is_configured():
        # Fail closed, and say so where the human starting the server sees it.
        os.write(
            2,
            b"rgt mcp: no approval passphrase is set: destroy and discard refuse until a human "
            b"runs `rgt approval init` in a terminal\n",
        )
    serve(http=args.http, port=args.port)
    return 0


def _exit_interrupted(signum: int, frame: object) -> None:
    """Ctrl-C on the stdio server: exit at once, as the other commands do (exit 130).

    Why not the usual KeyboardInterrupt: the stdio transport reads stdin in a worker thread, and
    the cancelled event loop waits for that read, which on a terminal (or a client's pipe left
    open) never returns, so Ctrl-C hung forever. Exiting here leaves nothing a kill -9 would not
    (every ledger write is one transaction; an interrupted destroy is taken over by the next)."""
    os.write(2, b"rgt mcp: interrupted\n")
    os._exit(130)


def _check_port_free(port: int) -> None:
    """A taken port is the user's to fix: one rgt line and exit 2, instead of the HTTP server's
    own log line and its exit code 3 (which README reserves for provider errors)."""
    import socket

    from rgt.errors import UsageError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise UsageError(
                f"--port {port}: cannot listen on 127.0.0.1 ({exc.strerror}); choose another port"
            ) from None
