"""A next step as facts (which action, with which known arguments), rendered for its reader.

A refusal or a report knows what to do next and with what: the instance id, the job's results
root from the ledger, the directory an earlier pull wrote. It states that once, as a `Step`;
the CLI prints it as the command a human types (`rgt pull 42 /workspace/results DIR`), the MCP
server as the tool call an agent makes (`copy(instance_id="42", remote_root=...)`). A message
that names a step holds the placeholder `{next}` where the rendering goes (or, naming several,
one `{<name>}` per step of a mapping).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NEXT = "{next}"

# How each tool's arguments appear on the command line: (positional..., {arg: option}).
# An argument the step does not know is shown as its placeholder (CLI) or left out (tool).
_CLI: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "copy": ("pull", ("instance_id", "remote_root", "local_dir"), {}),
    "verify": ("verify", ("local_dir",), {"instance_id": "--instance-id"}),
    "poll": ("poll", ("instance_id",), {}),
    "sync": ("sync", ("instance_id",), {}),
    "start": ("start", ("instance_id",), {}),
    "stop": ("stop", ("instance_id",), {}),
    "destroy": ("destroy", ("instance_id",), {}),
    "discard": ("discard", ("instance_id",), {"reason": "--reason"}),
}


@dataclass(frozen=True)
class Step:
    """One next action: the MCP tool's name and the arguments rgt knows for it (None: the
    caller must choose, e.g. a local directory)."""

    tool: str
    args: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, tool: str, **args: Any) -> Step:
        """Step.of("copy", instance_id="42", remote_root="/workspace/results", local_dir=None)."""
        return cls(tool, tuple(args.items()))

    def call(self) -> str:
        """The MCP rendering: `copy(instance_id="42", remote_root="/workspace/results")`."""
        known = [f"{name}={json.dumps(value)}" for name, value in self.args if value is not None]
        if self.tool == "poll" and dict(self.args).get("wait"):
            known = [k for k in known if not k.startswith("wait=")] + ["wait_seconds=600"]
        return f"{self.tool}({', '.join(known)})"

    def cli(self) -> str:
        """The terminal rendering: `rgt pull 42 /workspace/results LOCAL_DIR`."""
        command, positional, options = _CLI.get(self.tool, (self.tool, (), {}))
        values = dict(self.args)
        words = ["rgt", command]
        for name in positional:
            value = values.get(name)
            words.append(name.upper() if value is None else str(value))
        for name, option in options.items():
            if values.get(name) is not None:
                words += [option, str(values[name])]
        if self.tool == "poll" and values.get("wait"):
            words += ["--until", "done"]
        return " ".join(words)


# What a message may name: one step at `{next}`, or several, each at `{<name>}` (a remedy that
# says "wait (`{poll}`)" or "start it (`{start}`)" names two).
Steps = Step | Mapping[str, Step]


def render(template: str, step: Steps | None, *, tool: bool = False) -> str:
    """`template` with its `{next}` placeholder replaced by the step's rendering; with a mapping
    of steps, each `{<name>}` by the step of that name."""
    if step is None:
        return template
    named = {"next": step} if isinstance(step, Step) else step
    for name, each in named.items():
        placeholder = "{" + name + "}"
        if placeholder in template:
            template = template.replace(placeholder, each.call() if tool else each.cli())
    return template
