"""Strict tool inputs: an argument the tool does not declare is an error, never ignored.

The SDK's argument models ignore unknown keys. For rgt that would let a model believe it passed
an `approval`, `override` or `api_key` the server silently dropped; worse, a future parameter
added carelessly could start honouring one. Every rgt tool is therefore registered with an
argument model that forbids extra fields, and its published inputSchema says
`additionalProperties: false`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict


def strict_tool(fn: Callable[..., Any], **options: Any) -> Any:
    """A `mcp` Tool for `fn` whose arguments forbid unknown keys (see the module docstring)."""
    from mcp.server.mcpserver.tools import Tool

    tool = Tool.from_function(fn, **options)
    loose = tool.fn_metadata.arg_model
    strict: Any = type(
        loose.__name__,
        (loose,),
        {
            "model_config": ConfigDict(arbitrary_types_allowed=True, extra="forbid"),
            "__module__": loose.__module__,
        },
    )
    tool.fn_metadata.arg_model = strict
    tool.parameters = strict.model_json_schema(by_alias=True)
    return tool
