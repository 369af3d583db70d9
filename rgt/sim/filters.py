"""vast.ai's query filter objects (`{"field": {"op": value}}`) and ordering, applied to rows.

The CLI sends numbers as strings (`num_gpus=1` arrives as `{"eq": "1"}`), booleans as JSON
booleans and GPU names with spaces, so every comparison coerces the wanted value to the type of
the row's value first."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Keys of a search body that are not column filters.
NON_FILTER_KEYS = frozenset({"order", "type", "limit", "allocated_storage", "select_cols"})
OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin", "nin")


class FilterError(ValueError):
    """A filter the API refuses (unknown operator, a value that cannot compare)."""


def _coerce(want: Any, like: Any) -> Any:
    """`want` converted to the type of the row value `like`."""
    if want is None or like is None:
        return want
    if isinstance(like, bool):
        if isinstance(want, str):
            lowered = want.strip().lower()
            if lowered in ("true", "1"):
                return True
            if lowered in ("false", "0"):
                return False
            raise FilterError(f"{want!r} is not a boolean")
        return bool(want)
    if isinstance(like, (int, float)):
        try:
            return float(want)
        except (TypeError, ValueError) as exc:
            raise FilterError(f"{want!r} is not a number") from exc
    return str(want).casefold()


def _norm(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _compare(actual: Any, op: str, want: Any) -> bool:
    if op in ("in", "notin", "nin"):
        if not isinstance(want, list):
            want = [want]
        found = _norm(actual) in [_coerce(w, actual) for w in want]
        return found if op == "in" else not found
    target = _coerce(want, actual)
    value = _norm(actual)
    if op == "eq":
        return bool(value == target)
    if op == "neq":
        return bool(value != target)
    if actual is None or target is None:
        return False
    try:
        if op == "gt":
            return bool(value > target)
        if op == "gte":
            return bool(value >= target)
        if op == "lt":
            return bool(value < target)
        return bool(value <= target)
    except TypeError as exc:
        raise FilterError(f"cannot compare {actual!r} with {want!r}") from exc


def matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """True when `row` passes every column filter. Columns the row does not have are ignored
    (the real API ignores unknown columns too; the CLI warns about them client-side)."""
    for field, condition in filters.items():
        if field in NON_FILTER_KEYS or field not in row:
            continue
        conditions = condition if isinstance(condition, Mapping) else {"eq": condition}
        for op, want in conditions.items():
            if op not in OPERATORS:
                raise FilterError(
                    f"unknown operator {op!r} on {field!r} (allowed: {', '.join(OPERATORS)})"
                )
            if not _compare(_column_value(row, field, want), op, want):
                return False
    return True


def _column_value(row: Mapping[str, Any], field: str, want: Any) -> Any:
    """The row value a filter compares with: `geolocation` is "Region, CC" in rows, and
    the CLI filters by country code (`geolocation in [US,CA]`), so a wanted value without a
    comma is compared with the code."""
    value = row[field]
    wanted = want if isinstance(want, list) else [want]
    by_code = not any("," in str(w) for w in wanted)
    if field == "geolocation" and isinstance(value, str) and ", " in value and by_code:
        return value.rsplit(", ", 1)[1]
    return value


def parse_order(order: Any) -> list[tuple[str, bool]]:
    """`[["dph_total","asc"]]`, `[{"col": "id", "dir": "asc"}]` or `"score-"`
    → [(column, descending)]."""
    if order is None:
        return []
    if isinstance(order, str):
        order = [order]
    parsed: list[tuple[str, bool]] = []
    for item in order:
        if isinstance(item, Mapping):
            column, direction = str(item.get("col", "")), str(item.get("dir", "asc"))
        elif isinstance(item, (list, tuple)) and item:
            column = str(item[0])
            direction = str(item[1]) if len(item) > 1 else "asc"
        elif isinstance(item, str):
            column, direction = item.rstrip("+-"), "desc" if item.endswith("-") else "asc"
        else:
            raise FilterError(f"cannot read order entry {item!r}")
        if not column:
            raise FilterError(f"order entry {item!r} names no column")
        parsed.append((column, direction.lower().startswith("desc")))
    return parsed


def sort_rows(
    rows: Iterable[dict[str, Any]], order: list[tuple[str, bool]]
) -> list[dict[str, Any]]:
    """Rows sorted by each (column, descending) in turn; missing values sort last."""
    result = list(rows)
    for column, descending in reversed(order):
        present = [r for r in result if r.get(column) is not None]
        missing = [r for r in result if r.get(column) is None]
        try:
            present.sort(key=lambda r, c=column: _norm(r[c]), reverse=descending)  # type: ignore[misc]
        except TypeError as exc:
            raise FilterError(f"cannot order by {column!r}: mixed value types") from exc
        result = present + missing
    return result
