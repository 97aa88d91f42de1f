"""Where in a stack file a problem is: the layer, its period, the field and the line."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from prefect_atomscale._exceptions import (
    StackFileProblem,
)
from prefect_atomscale._stacks._spec import _FIELD_HINTS, _KNOWN_FIELDS

__all__ = []

_Path = tuple[str | int, ...]


def _reported_twice(problem: StackFileProblem, found: list[StackFileProblem]) -> bool:
    """A 'missing' name or substrate also reported with the CSV hint is dropped."""
    return problem.message == "is missing" and any(
        other is not problem
        and other.field == problem.field
        and other.message.startswith("is missing;")
        for other in found
    )


def _entry_sizes(raw_layers: Any) -> list[int]:
    """How many positions each raw entry takes, as far as it can be told."""
    if not isinstance(raw_layers, list):
        return []
    sizes = []
    for item in raw_layers:
        repeat = item.get("repeat") if isinstance(item, Mapping) else None
        inner = item.get("layers") if isinstance(item, Mapping) else None
        if isinstance(repeat, int) and repeat >= 1 and isinstance(inner, list) and inner:
            sizes.append(repeat * len(inner))
        else:
            sizes.append(1)
    return sizes


def _problem(error: Any, data: Mapping[str, Any], lines: Mapping[_Path, int]) -> StackFileProblem:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    # Drop the union tag pydantic puts after each top-level entry ("layer"/"repeat"),
    # which leaves the path of the value in the file.
    if len(loc) >= 3 and loc[0] == "layers" and isinstance(loc[1], int):
        loc = (*loc[:2], *loc[3:])
    return _locate(loc, _message(error), data, lines)


def _locate(
    path: _Path, message: str, data: Mapping[str, Any], lines: Mapping[_Path, int]
) -> StackFileProblem:
    """Name the layer (position, period), field and line of the value at `path`."""
    line = _line(lines, path)
    at_line = f"line {line}" if line is not None else ""
    if len(path) < 2 or path[0] != "layers" or not isinstance(path[1], int):
        # A top-level field, or the layers list as a whole.
        field = ".".join(str(part) for part in path) or None
        return StackFileProblem(where=at_line, field=field, message=message, line=line)
    entry, rest = path[1], path[2:]
    raw_layers = data.get("layers")
    sizes = _entry_sizes(raw_layers)
    start = sum(sizes[:entry]) + 1
    raw_entry = raw_layers[entry] if isinstance(raw_layers, list) else None
    is_block = isinstance(raw_entry, Mapping) and "repeat" in raw_entry
    if is_block and len(rest) >= 2 and rest[0] == "layers" and isinstance(rest[1], int):
        # A layer inside a repeat block: every period holds the same one; name the first.
        index, field_path = rest[1], rest[2:]
        repeat = raw_entry.get("repeat") if isinstance(raw_entry, Mapping) else None
        periods = repeat if isinstance(repeat, int) and repeat >= 1 else None
        position = start + index
        context = [at_line] if at_line else []
        if periods:
            context.append(f"period 1 of {periods}, and the same in every period")
        return StackFileProblem(
            where=f"layer L{position}" + (f" ({'; '.join(context)})" if context else ""),
            field=".".join(str(part) for part in field_path) or None,
            message=message,
            position=position,
            period=1 if periods else None,
            line=line,
        )
    if is_block:
        size = sizes[entry] if entry < len(sizes) else 1
        span = f"L{start}-L{start + size - 1}" if size > 1 else f"from L{start}"
        where = f"repeat block {span}"
    else:
        where = f"layer L{start}"
    return StackFileProblem(
        where=where + (f" ({at_line})" if at_line else ""),
        field=".".join(str(part) for part in rest) or None,
        message=message,
        position=start,
        line=line,
    )


def _line(lines: Mapping[_Path, int], path: _Path) -> int | None:
    """The line of the value at `path`, or of its nearest enclosing value."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _message(error: Any) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        hint = _FIELD_HINTS.get(name)
        if hint is None:
            close = difflib.get_close_matches(name, _KNOWN_FIELDS, n=1)
            hint = f"{close[0]!r}" if close else None
        if hint and hint.startswith("nothing"):
            return f"unknown field {name!r}; write {hint}"
        return f"unknown field {name!r}" + (f"; did you mean {hint}?" if hint else "")
    if kind == "missing":
        return "is missing"
    if kind == "too_short" and loc and loc[-1] == "layers":
        return "lists no layers; give at least one"
    if kind == "model_type":
        return (
            "expected a mapping such as {composition: BaTiO3, orientation: '001'}, got "
            f"{type(error.get('input')).__name__} {error.get('input')!r}"
        )
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, Exception):
        return str(cause)
    shown = error.get("input")
    text = str(error["msg"])
    if kind.endswith("_type"):
        return f"{text}, got {type(shown).__name__} {shown!r}"
    if not isinstance(shown, Mapping | list):
        return f"{text}, got {shown!r}"
    return text
