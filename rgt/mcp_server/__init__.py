"""The MCP server (`rgt mcp`): launch / poll / copy / verify / destroy for coding agents.

Importing this package imports the `mcp` SDK; the CLI imports it only inside `rgt mcp`.
"""

from __future__ import annotations

from rgt.mcp_server.server import INSTRUCTIONS, build_server, serve

__all__ = ["INSTRUCTIONS", "build_server", "serve"]
