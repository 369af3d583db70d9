"""`rgt mcp --http`: streamable HTTP, listening on 127.0.0.1 only, same tools as stdio."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp import Client

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, state = fields[1], fields[3]
            if state == "0A" and int(address.rsplit(":", 1)[1], 16) == port:
                found.append(address.rsplit(":", 1)[0])
    return found


@pytest.fixture
def http_server():
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rgt", "mcp", "--http", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not _listeners(port):
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "rgt mcp --http did not listen"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_listens_on_loopback_only_and_serves_the_tools(
    http_server: int, mode: str
) -> None:
    # 127.0.0.1 in /proc/net/tcp is 0100007F; no wildcard (00000000 or ::) listener.
    assert _listeners(http_server) == ["0100007F"]
    async with Client(f"http://127.0.0.1:{http_server}/mcp", mode=mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"destroy", "poll", "launch", "copy", "verify"} <= names
        result = await client.call_tool("get_profile", {"name": "vastai"})
        assert not result.is_error
        assert "Iron Law" in (client.instructions or "")


def _post_initialize(port: int, host: str) -> int:
    """The HTTP status of an MCP initialize request sent to 127.0.0.1:`port` with `host` as
    its Host header (what a browser sends after a DNS-rebinding attack)."""
    import http.client
    import json

    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "probe", "version": "0"},
            },
        }
    )
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST",
            "/mcp",
            body=body,
            headers={
                "Host": host,
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
        )
        return connection.getresponse().status
    finally:
        connection.close()


def test_http_refuses_a_foreign_host_header(http_server: int) -> None:
    # A web page can make a browser send requests to 127.0.0.1 under its own name (DNS
    # rebinding): the server must answer only requests addressed to the loopback name itself,
    # or any page the user opens could call `launch` (which rents GPUs) through it.
    assert _post_initialize(http_server, f"127.0.0.1:{http_server}") == 200
    assert _post_initialize(http_server, f"attacker.example:{http_server}") == 421
