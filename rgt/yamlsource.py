"""YAML documents that remember where each value came from, and schema errors that say where.

Profiles (a frontmatter block in Markdown) and job requests (a YAML file) are validated by JSON
Schema only. A bare jsonschema error names a path like `overrides.detach`; a person editing the
file wants `profiles/vastai.md:31`. This module parses YAML into both the plain data and the node
tree (whose marks carry line numbers) and turns each schema error into a `Finding` with the line
of the offending key.

Both are bounded before they are parsed (a path on the command line can name `/dev/zero` or a
FIFO, and YAML aliases can repeat a subtree exponentially: 9 nested levels of nine `*a` make
387 million values out of 400 bytes): the file must be a regular file of at most
MAX_DOCUMENT_BYTES, and the document may hold at most MAX_YAML_NODES values with every alias
expanded, counted on the parser's event stream before any node tree is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from rgt.bundle import bundle_path
from rgt.inputfile import InputFileError, read_input_file

try:  # libyaml is ~10x faster; fall back to the pure-Python loader where it is missing
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

# A profile or a job request is a few KiB to a few hundred (a job's `files` each hold at most
# 64 KiB); the bundled profiles are under 25 KiB. Anything bigger is the wrong file.
MAX_DOCUMENT_BYTES = 1024 * 1024
# Values (scalars, lists, mappings) in one document with every alias expanded. The bundled
# profiles hold at most 258 and the example job 32; every later step (duplicate keys, schema,
# templates) walks the expanded document, so this bounds their work too.
MAX_YAML_NODES = 10_000


@dataclass(frozen=True)
class Finding:
    """One problem in one file: `file:line: rule: message`."""

    path: str
    line: int
    rule: str
    message: str
    severity: str = "error"  # "error" fails lint; "warning" is reported only

    def format(self) -> str:
        """The one-line human form."""
        tag = "" if self.severity == "error" else "warning: "
        return f"{self.path}:{self.line}: {self.rule}: {tag}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        """The machine form (`rgt lint --format json`)."""
        return {
            "file": self.path,
            "line": self.line,
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
        }


class SourceError(Exception):
    """A file that cannot be read as the expected document (carries its findings)."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        super().__init__(findings[0].format() if findings else "invalid document")
        self.findings = list(findings)


@dataclass(frozen=True)
class YamlDoc:
    """Parsed YAML: `data` plus the node tree; `first_line` is the file line of YAML line 1."""

    data: Any
    root: yaml.Node | None
    first_line: int = 1

    def line_of(self, path: Sequence[str | int], *, key: bool = True) -> int:
        """File line of the value at `path` (its key's line when `key`), else of its parent."""
        node = self.root
        if node is None:
            return self.first_line
        line = node.start_mark.line
        for step in path:
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(step):
                        child = value_node
                        line = (key_node if key else value_node).start_mark.line
                        break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(step, int)
                and 0 <= step < len(node.value)
            ):
                child = node.value[step]
                line = child.start_mark.line
            if child is None:
                break
            node = child
        return line + self.first_line

    def duplicate_keys(self) -> Iterator[tuple[str, int]]:
        """(key, file line) of every key repeated in one mapping (YAML keeps only the last)."""
        stack = [self.root] if self.root is not None else []
        while stack:
            node = stack.pop()
            if isinstance(node, yaml.MappingNode):
                seen: set[str] = set()
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode):
                        if key_node.value in seen:
                            yield key_node.value, key_node.start_mark.line + self.first_line
                        seen.add(key_node.value)
                    stack.append(value_node)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)


def parse_yaml(text: str, *, path: str, first_line: int = 1) -> YamlDoc:
    """Parse one YAML document; a syntax error becomes a `SourceError` naming its line, and so
    does a document over MAX_YAML_NODES values once its aliases are expanded."""
    try:
        _check_expansion(text, path=path, first_line=first_line)
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = (mark.line if mark else 0) + first_line
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark:
            # Where the unfinished construct began: often the line that holds the typo.
            began = exc.context_mark.line + first_line
            problem += f" ({exc.context} started on line {began})"
        raise SourceError([Finding(path, line, "yaml", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:  # e.g. a constructor error without a mark
        raise SourceError([Finding(path, first_line, "yaml", f"invalid YAML: {exc}")]) from None
    return YamlDoc(data, root, first_line)


# Where an alias can begin: at a line start, after white space or a flow indicator (`[*a]`,
# `{a: *b}`). A '*' elsewhere (`step-*.ckpt`) is text; a false match only costs the full count.
_ALIAS = re.compile(r"(?:^|[\s\[{,:?])\*", re.MULTILINE)


def _check_expansion(text: str, *, path: str, first_line: int) -> None:
    """Count the document's values on the parser's event stream, each alias as the size of what
    it repeats, and stop at MAX_YAML_NODES: the count needs no node tree and no expansion, so
    an alias bomb costs at most MAX_YAML_NODES events. A recursive alias is refused too (it
    expands forever). Syntax errors are left to the real parse, which reports them."""
    if len(text) <= MAX_YAML_NODES // 2 and not _ALIAS.search(text):
        # No alias, and YAML has at most about one value per character ('{a,b}' is five): this
        # text cannot reach the limit. The shortcut spares `rgt lint` a pass per profile.
        return
    loader = _Loader(text)
    expanded = 0
    sizes: dict[str, int] = {}  # anchor -> values it holds, aliases expanded
    open_nodes: list[tuple[str | None, list[int]]] = []  # unfinished collections: anchor, count
    try:
        while loader.check_event():
            event: Any = loader.get_event()
            if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, (count,) = open_nodes.pop()
                if anchor is not None:
                    sizes[anchor] = count
                if open_nodes:
                    open_nodes[-1][1][0] += count
                continue
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                count = 1
            elif isinstance(event, yaml.ScalarEvent):
                count = 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                if any(anchor == event.anchor for anchor, _ in open_nodes):
                    raise _expansion_error(
                        path,
                        event,
                        first_line,
                        f"alias *{event.anchor} is inside its own anchor &{event.anchor}: a "
                        "recursive document never ends; write the values out",
                    )
                count = sizes.get(event.anchor or "", 1)  # an undefined alias: the parse says so
            else:  # stream and document start/end
                continue
            expanded += count
            if expanded > MAX_YAML_NODES:
                raise _expansion_error(
                    path,
                    event,
                    first_line,
                    f"more than {MAX_YAML_NODES:,} values (each alias *name counted as the "
                    f"values it repeats); rgt reads documents of up to {MAX_YAML_NODES:,}",
                )
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                open_nodes.append((event.anchor, [1]))
            elif open_nodes:
                open_nodes[-1][1][0] += count
    except yaml.YAMLError:
        return
    finally:
        loader.dispose()


def _expansion_error(path: str, event: Any, first_line: int, message: str) -> SourceError:
    line = (event.start_mark.line if event.start_mark else 0) + first_line
    return SourceError([Finding(path, line, "yaml", message)])


def read_text(path: Path) -> str:
    """A UTF-8 text file's content; unreadable, binary or non-UTF-8 files become a SourceError,
    and so does anything but a regular file of at most MAX_DOCUMENT_BYTES (checked before
    reading: `/dev/zero` or a FIFO given as a file is refused at once)."""
    shown = str(path)
    try:
        raw = read_input_file(path, max_bytes=MAX_DOCUMENT_BYTES)
    except InputFileError as exc:
        raise SourceError([Finding(shown, 1, "read", exc.reason)]) from None
    if b"\x00" in raw:
        raise SourceError([Finding(shown, 1, "read", "binary file (NUL bytes), expected text")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SourceError([Finding(shown, line, "read", "not UTF-8 text")]) from None


_FENCE = re.compile(r"^---[ \t]*$")
_END = re.compile(r"^(---|\.\.\.)[ \t]*$")


def split_frontmatter(text: str, *, path: str) -> tuple[str, str, int]:
    """Split `---`-fenced frontmatter off a Markdown text.

    Returns (frontmatter, body, body_first_line); the frontmatter's line 1 is file line 2.
    A UTF-8 byte-order mark before the opening `---` (some Windows editors write one) is
    accepted: it is not part of the text.
    """
    text = text.removeprefix("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or not text.strip():
        raise SourceError([Finding(path, 1, "frontmatter", "empty file, expected a profile")])
    if not _FENCE.match(lines[0].rstrip("\r\n")):
        raise SourceError(
            [Finding(path, 1, "frontmatter", "no YAML frontmatter: line 1 must be '---'")]
        )
    for index in range(1, len(lines)):
        if _END.match(lines[index].rstrip("\r\n")):
            return "".join(lines[1:index]), "".join(lines[index + 1 :]), index + 2
    raise SourceError(
        [Finding(path, 1, "frontmatter", "frontmatter opened on line 1 is never closed by '---'")]
    )


# ---------------------------------------------------------------------------------------------
# JSON Schema validation with line numbers


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A bundled JSON Schema by file name (`profile.schema.json`)."""
    with open(bundle_path("schemas", name), encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


@cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema(name))


_UNEXPECTED = re.compile(r"'([^']+)'")


def schema_findings(
    data: Any,
    schema_name: str,
    *,
    path: str,
    line_of: Any,
    prefix: Sequence[str | int] = (),
) -> list[Finding]:
    """Validate `data` against a bundled schema; one Finding per error, located by `line_of(path)`.

    `line_of` maps an instance path (a sequence of keys/indices) to a file line; `prefix` is
    prepended to every reported field path (e.g. a variant's name) without changing the lookup.
    """
    findings = []
    schema = load_schema(schema_name)
    for error in _validator(schema_name).iter_errors(data):
        for where, message in _explain(error, schema):
            field = ".".join(str(step) for step in [*prefix, *where]) or "(top level)"
            findings.append(Finding(path, line_of(where), "schema", f"{field}: {message}"))
    findings.sort(key=lambda f: (f.line, f.message))
    return findings


def _explain(error: Any, schema: dict[str, Any]) -> list[tuple[list[str | int], str]]:
    """(instance path, message) pairs for one jsonschema error, phrased for a person."""
    where: list[str | int] = list(error.absolute_path)
    rule = error.schema.get("x-rule") if isinstance(error.schema, dict) else None
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        names = _UNEXPECTED.findall(error.message.split("(")[-1])
        allowed = _allowed_keys(error.schema, schema)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return [([*where, name], f"unknown key {name!r}{hint}") for name in names] or [
            (where, error.message)
        ]
    if error.validator == "required":
        missing = _UNEXPECTED.findall(error.message)
        name = missing[0] if missing else "?"
        return [(where, f"missing required key {name!r}")]
    if error.validator in ("oneOf", "anyOf"):
        expected = " or ".join(_describe(sub, schema) for sub in error.validator_value)
        return [(where, f"{error.instance!r} is not allowed; expected {expected}")]
    if "propertyNames" in error.schema_path:
        # A bad key name: point at the key itself, not at the mapping holding it.
        where = [*where, error.instance]
    message = error.message
    phrase = error.schema.get("x-expected") if isinstance(error.schema, dict) else None
    if phrase:
        message = f"{error.instance!r} is not allowed; expected {phrase}"
    elif error.validator == "pattern":
        message = f"{error.instance!r} does not match {error.validator_value!r}"
    if rule:
        message = f"{message} ({rule})"
    return [(where, message)]


def _resolve(sub: Any, schema: dict[str, Any]) -> Any:
    """Follow local `$ref`s (`#/$defs/...`) so a description can name what is allowed."""
    seen = 0
    while isinstance(sub, dict) and "$ref" in sub and seen < 10:
        ref = sub["$ref"]
        if not ref.startswith("#/"):
            break
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target[part]
        sub = {**target, **{k: v for k, v in sub.items() if k != "$ref"}}
        seen += 1
    return sub


def _describe(sub: Any, schema: dict[str, Any]) -> str:
    """A short phrase for what a subschema accepts: 'boolean', 'one of a, b', 'integer >= 1'."""
    sub = _resolve(sub, schema)
    if not isinstance(sub, dict):
        return "a valid value"
    if "x-expected" in sub:  # the schema's own phrase for a branch beats one built from it
        return str(sub["x-expected"])
    if "const" in sub:
        return repr(sub["const"])
    if "enum" in sub:
        return "one of " + ", ".join(str(v) for v in sub["enum"])
    if "oneOf" in sub or "anyOf" in sub:
        options: list[Any] = sub.get("oneOf") or sub.get("anyOf") or []
        return " or ".join(_describe(option, schema) for option in options)
    kind = sub.get("type")
    text = " or ".join(kind) if isinstance(kind, list) else str(kind or "a value")
    if "pattern" in sub:
        text += f" matching {sub['pattern']!r}"
    if "minimum" in sub:
        text += f" >= {sub['minimum']}"
    return text


def _allowed_keys(sub: Any, schema: dict[str, Any]) -> list[str]:
    """The property names a (possibly $ref-composed) object schema declares, sorted."""
    keys: set[str] = set()
    stack = [sub]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        keys.update(node.get("properties", {}))
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = schema
            for part in ref[2:].split("/"):
                target = target[part]
            stack.append(target)
    return sorted(keys)
