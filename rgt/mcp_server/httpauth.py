"""A bearer token for `rgt mcp --http`: any local process can reach 127.0.0.1, so every request
must carry the token the human gave their MCP client.

The token is made at the first HTTP start (32 random bytes, URL-safe), stored in rgt's config
directory readable by its owner only (in keeper mode: the keeper), and printed that once, for
the client's configuration. Requests without it, or with another, get 401 before they reach
the MCP session; the comparison takes constant time (hmac.compare_digest).
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

TOKEN_FILE = "mcp_http_token"
TOKEN_BYTES = 32

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def token_path() -> Path:
    """Where the HTTP bearer token lives (rgt's config directory, mode 0600)."""
    from rgt.paths import config_dir

    return config_dir() / TOKEN_FILE


def load_or_create_token() -> tuple[str, bool]:
    """(token, created now). A new token is written atomically, readable by its owner only."""
    from rgt.atomic import atomic_write_bytes
    from rgt.errors import UsageError

    path = token_path()
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the MCP HTTP token ({exc.strerror})") from None
    if token:
        return token, False
    token = secrets.token_urlsafe(TOKEN_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (token + "\n").encode(), mode=0o600)
    return token, True


class BearerTokenMiddleware:
    """ASGI middleware: an HTTP request without `Authorization: Bearer <token>` gets 401 and
    never reaches the app; lifespan and other scopes pass through."""

    def __init__(self, app: App, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http" and not self._authorised(scope):
            body = json.dumps(
                {"error": "unauthorized: send the rgt MCP bearer token (Authorization: Bearer)"}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="rgt"'),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                given = value
                break
        return hmac.compare_digest(given, self._expected)
