"""`rgt mcp --http`: streamable HTTP, listening on 127.0.0.1 only, same tools as stdio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from rgt.loopback import NotListening, start_on_free_port, wait_listening

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
REPO = Path(__file__).resolve().parents[1]


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


def _start(port: int) -> subprocess.Popen[bytes]:
    """`rgt mcp --http` on `port`, once it listens there; raises PortTaken when another process
    took the port (start_on_free_port then tries another)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rgt", "mcp", "--http", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(process, port, 20, lambda: process.stderr.read().decode())  # type: ignore[union-attr]
    except NotListening as exc:
        _stop(process)
        raise AssertionError(f"rgt mcp --http did not listen: {exc}") from None
    return process


def _start_on_a_free_port() -> tuple[int, subprocess.Popen[bytes]]:
    """(port, `rgt mcp --http` listening there)."""
    return start_on_free_port(lambda port: (port, _start(port)))


def _stop(process: subprocess.Popen[bytes]) -> str:
    """Stop the server; returns what it wrote on stderr."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.stderr.read().decode()  # type: ignore[union-attr]


@pytest.fixture
def http_server():
    port, process = _start_on_a_free_port()
    try:
        yield port
    finally:
        _stop(process)


def _token() -> str:
    from rgt.mcp_server.httpauth import token_path

    return token_path().read_text().strip()


def _client(port: int, mode: str, token: str | None = None) -> Client:
    """A real MCP client over streamable HTTP, sending `token` (the stored one by default)."""
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {_token() if token is None else token}"}
    transport = streamable_http_client(
        f"http://127.0.0.1:{port}/mcp", http_client=create_mcp_http_client(headers=headers)
    )
    return Client(transport, mode=mode)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_listens_on_loopback_only_and_serves_the_tools(
    http_server: int, mode: str
) -> None:
    # 127.0.0.1 in /proc/net/tcp is 0100007F; no wildcard (00000000 or ::) listener.
    assert _listeners(http_server) == ["0100007F"]
    async with _client(http_server, mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"destroy", "poll", "launch", "copy", "verify"} <= names
        result = await client.call_tool("get_profile", {"name": "vastai"})
        assert not result.is_error
        assert "Iron Law" in (client.instructions or "")


def _post_initialize(port: int, host: str, token: str | None = "stored") -> int:
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
                **(
                    {}
                    if token is None
                    else {"Authorization": f"Bearer {_token() if token == 'stored' else token}"}
                ),
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


def test_every_request_needs_the_bearer_token_shown_once(isolated_user: Path) -> None:
    # Any local process can reach 127.0.0.1: without the token (made at the first start, kept
    # owner-only, printed that once) a request never reaches the MCP session.
    from rgt.mcp_server.httpauth import token_path

    port, first = _start_on_a_free_port()
    try:
        assert oct(token_path().stat().st_mode & 0o777) == "0o600"
        host = f"127.0.0.1:{port}"
        assert _post_initialize(port, host, token=None) == 401
        assert _post_initialize(port, host, token="not-the-token") == 401
        assert _post_initialize(port, host, token=_token()[:-1]) == 401
        assert _post_initialize(port, host) == 200
    finally:
        shown = _stop(first)
    assert _token() in shown
    second = _start(port)
    try:
        assert _post_initialize(port, f"127.0.0.1:{port}") == 200
    finally:
        assert _token() not in _stop(second)  # shown once only


async def test_a_client_with_a_wrong_token_gets_nothing(http_server: int) -> None:
    with pytest.raises(Exception):  # noqa: B017 (the SDK's error type for a 401 varies by era)
        async with _client(http_server, "auto", token="wrong") as client:
            await client.list_tools()
