"""Reading stack files: YAML, JSON and CSV, every problem reported at once."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from prefect_atomscale._exceptions import (
    InvalidStackFileError,
    StackFileProblem,
)
from prefect_atomscale._stacks._locations import _locate, _Path, _problem, _reported_twice
from prefect_atomscale._stacks._spec import StackSpec

__all__ = ["STACK_FILE_SUFFIXES", "load_stack_file", "parse_stack"]

STACK_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".csv")
"""File name endings `load_stack_file` reads."""

_STR_TAG = "tag:yaml.org,2002:str"
# Scalars in these keys are text even when YAML would read them otherwise: an
# unquoted `orientation: 001` is the int 1 to YAML (and `010` is 8), `NO` is False.
_TEXT_KEYS = frozenset({"name", "substrate", "composition", "orientation", "space_group", "mp_id"})
_RETYPED_TAGS = frozenset(
    f"tag:yaml.org,2002:{kind}" for kind in ("int", "float", "bool", "timestamp")
)


def _yaml_document(text: str, duplicates: list[_Path]) -> tuple[Any, dict[_Path, int]]:
    """Parse YAML, keeping text fields as written and noting each node's line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[_Path, int] = {}
        _walk_yaml(node, (), lines, duplicates, set())
        return loader.construct_document(node), lines
    finally:
        loader.dispose()


def _walk_yaml(
    node: Any,
    path: _Path,
    lines: dict[_Path, int],
    duplicates: list[_Path],
    seen: set[int],
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in seen:  # an alias back to an enclosing node
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        # Dates in metadata stay as written; they are not JSON types.
        if node.tag == "tag:yaml.org,2002:timestamp":
            node.tag = _STR_TAG
    elif isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            if key in keys:
                duplicates.append((*path, key))
            keys.add(key)
            if (
                key in _TEXT_KEYS
                and isinstance(value_node, yaml.ScalarNode)
                and value_node.tag in _RETYPED_TAGS
            ):
                value_node.tag = _STR_TAG
            # A value's line is its key's: a block list under `layers:` starts below it.
            lines.setdefault((*path, key), key_node.start_mark.line + 1)
            _walk_yaml(value_node, (*path, key), lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk_yaml(item, (*path, index), lines, duplicates, seen)


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers the keys it had twice (the last value wins)."""

    duplicates: list[str]


def _json_document(text: str, duplicates: list[_Path]) -> Any:
    def keep_duplicates(pairs: list[tuple[str, Any]]) -> _JsonObject:
        result = _JsonObject()
        result.duplicates = []
        for key, value in pairs:
            if key in result:
                result.duplicates.append(key)
            result[key] = value
        return result

    data = json.loads(text, object_pairs_hook=keep_duplicates)
    _find_duplicates(data, (), duplicates)
    return data


def _find_duplicates(value: Any, path: _Path, found: list[_Path]) -> None:
    if isinstance(value, _JsonObject):
        found.extend((*path, key) for key in value.duplicates)
        for key, item in value.items():
            _find_duplicates(item, (*path, key), found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _find_duplicates(item, (*path, index), found)


_CSV_COLUMNS = ("layer", "composition", "orientation", "space_group", "mp_id")
# What spreadsheets separate cells with: Excel in much of Europe writes ';', since
# ',' is the decimal mark there; "Text (tab-delimited)" exports write tabs.
_CSV_DELIMITERS = (",", ";", "\t")
# A digit, a comma, a digit: a decimal comma (a formula has no other use for a comma).
_DECIMAL_COMMA = re.compile(r"(?<=\d),(?=\d)")


def _is_blank(line: str) -> bool:
    """Empty, or only the empty cells a spreadsheet pads short rows with."""
    return not line.strip().strip("".join(_CSV_DELIMITERS)).strip()


def _is_row(line: str) -> bool:
    """A header or layer row: neither blank nor a comment.

    A spreadsheet quotes a comment cell that holds its delimiter: `"# name: a, b";;`.
    """
    return not _is_blank(line) and not line.lstrip().startswith(("#", '"#'))


def _csv_delimiter(header: str) -> str:
    """The delimiter of a header line: the one that finds the most known columns.

    Only the header is looked at: a data row of a ';' file may hold decimal commas
    (`12,5`). With no known column to tell, `csv.Sniffer` decides, and ',' if it
    cannot.
    """
    try:
        sniffed = csv.Sniffer().sniff(header, delimiters="".join(_CSV_DELIMITERS)).delimiter
    except csv.Error:
        sniffed = ","

    def known_columns(delimiter: str) -> int:
        row = next(csv.reader([header], delimiter=delimiter), [])
        return sum(cell.strip().lower() in _CSV_COLUMNS for cell in row)

    return max((sniffed, *_CSV_DELIMITERS), key=known_columns)


def _delimiter_name(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def _comment_text(line: str, delimiter: str) -> str:
    """A comment line's text, without the quotes and empty cells a spreadsheet adds."""
    cells = next(csv.reader([line], delimiter=delimiter), [])
    if cells and not any(cell.strip() for cell in cells[1:]):
        return cells[0].strip()
    return line.strip()  # written by hand: a `,` in a note is part of it


def _csv_document(text: str, problems: list[StackFileProblem]) -> tuple[Any, dict[_Path, int]]:
    """Read a flat stack: `# key: value` lines on top, then one row per layer.

    Read as spreadsheets write it: cells separated by `,`, `;` or tabs (found from
    the header line), CRLF or CR line ends, and decimal commas in a file whose cells
    are not separated by commas. (A byte-order mark is stripped when the file is read.)
    """
    document: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    lines: dict[_Path, int] = {}
    numbered = list(enumerate(text.splitlines(), start=1))
    # The header is the first line that is neither blank nor a comment.
    start = next(
        (index for index, (_, line) in enumerate(numbered) if _is_row(line)), len(numbered)
    )
    delimiter = _csv_delimiter(numbered[start][1]) if start < len(numbered) else ","
    decimal_commas = delimiter != ","
    for number, line in numbered[:start]:
        if _is_blank(line):
            continue
        # Any other comment line is free text, e.g. a note on the growth.
        key, _, value = _comment_text(line, delimiter).lstrip("#").partition(":")
        key, value = key.strip(), value.strip()
        if key.startswith("metadata.") and len(key) > len("metadata."):
            if decimal_commas and re.fullmatch(r"-?\d+,\d+", value):
                value = value.replace(",", ".")
            metadata[key.removeprefix("metadata.")] = _csv_value(value)
            lines.setdefault(("metadata",), number)
        elif key in ("name", "substrate", "growth_run"):
            document[key] = value
            lines[(key,)] = number
    if metadata:
        document["metadata"] = metadata
    body = [(number, line) for number, line in numbered[start:] if _is_row(line)]
    if not body:
        document["layers"] = []
        return document, lines
    reader = csv.reader((line for _, line in body), delimiter=delimiter)
    header = [column.strip().lower() for column in next(reader)]
    for column in header:
        if column not in _CSV_COLUMNS and column:
            problems.append(
                StackFileProblem(
                    where=f"line {body[0][0]}",
                    field=column,
                    message=(
                        f"read as {_delimiter_name(delimiter)}-separated: unknown column "
                        f"{column!r}; the columns are {', '.join(_CSV_COLUMNS)} (only "
                        "composition is required), separated by ',', ';' or tabs"
                    ),
                    line=body[0][0],
                )
            )
    layers: list[dict[str, Any]] = []
    for (number, _), row in zip(body[1:], reader, strict=False):
        if not any(cell.strip() for cell in row):
            continue  # spreadsheets often export trailing empty rows
        position = len(layers) + 1
        where = f"layer L{position} (line {number})"
        lines[("layers", len(layers))] = number
        cells: dict[str, str] = {}
        for index, cell in enumerate(row):
            column = header[index] if index < len(header) else ""
            if column in _CSV_COLUMNS and cell.strip():
                cells[column] = cell.strip()
            elif not column and cell.strip():
                problems.append(
                    StackFileProblem(
                        where=where,
                        field=None,
                        message=(
                            f"{cell.strip()!r} is in column {index + 1}, which has no name "
                            "in the header line; name the column or delete the value"
                        ),
                        position=position,
                        line=number,
                    )
                )
        if "composition" in cells:
            cells["composition"] = _DECIMAL_COMMA.sub(".", cells["composition"])
        orientation = cells.get("orientation", "")
        if re.fullmatch(r"-?\d{1,2}", orientation):
            # Spreadsheets read 001 as the number 1 and save it that way.
            del cells["orientation"]
            problems.append(
                StackFileProblem(
                    where=where,
                    field="orientation",
                    message=(
                        f"{orientation!r} has fewer than 3 Miller indices; if a spreadsheet "
                        "turned 001 into 1, format the column as text and write 001 again"
                    ),
                    position=position,
                    line=number,
                )
            )
        given = cells.pop("layer", None)
        if given is not None and given.removeprefix("L") != str(position):
            problems.append(
                StackFileProblem(
                    where=where,
                    field="layer",
                    message=(
                        f"the row says layer {given!r} but it is row {position} of the "
                        "stack; rows are layers in growth order, first-grown first"
                    ),
                    position=position,
                    line=number,
                )
            )
        layers.append(cells)
    document["layers"] = layers
    return document, lines


def _csv_value(text: str) -> Any:
    """A metadata value: a JSON number, true/false/null, or else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | bool) or value is None else text


def load_stack_file(path: str | Path) -> StackSpec:
    """Read and check a stack file: `.yaml`/`.yml`, `.json`, or `.csv` for flat stacks.

    Everything is checked before this returns: the file's shape, and every layer's
    formula, orientation, space group, Materials Project id and element amounts. A
    CSV file is read as spreadsheets write it: cells separated by `,`, `;` or tabs
    (found from the header row), with or without a byte-order mark, any line ends,
    and decimal commas in a file not separated by commas.

    Args:
        path: The file.

    Returns:
        The stack it describes.

    Raises:
        InvalidStackFileError: The file cannot be read or has problems; the message
            lists them all, each with the layer, its period and the field.

    Example:
        ```python
        from pathlib import Path

        from prefect_atomscale import load_stack_file

        Path("superlattice.yaml").write_text('''
        name: BTO/STO superlattice #7
        substrate: SrTiO3
        metadata: {growth: MBE}
        layers:
          - composition: SrRuO3       # L1, on the substrate
            orientation: 001
          - repeat: 20                # L2-L41
            layers:
              - {composition: BaTiO3, orientation: 001}
              - {composition: SrTiO3, orientation: 001}
        ''')
        spec = load_stack_file("superlattice.yaml")
        print(len(spec.expanded_layers()))  # 41
        print(spec.expanded_layers()[-1].describe())  # L41 SrTiO3 001 (period 20 of 20)
        ```
    """
    source = str(path)
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in STACK_FILE_SUFFIXES:
        raise InvalidStackFileError(
            source,
            [
                StackFileProblem(
                    where="",
                    field=None,
                    message=(
                        f"unsupported file type {suffix or '(none)'!r}; stack files end in "
                        f"{', '.join(STACK_FILE_SUFFIXES)}"
                    ),
                )
            ],
        )
    try:
        # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark.
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, UnicodeDecodeError):
            # A spreadsheet's plain "CSV" export is in the computer's own code page.
            reason = (
                f"it is not UTF-8 text (byte {exc.object[exc.start]:#x} at offset "
                f"{exc.start}); save it as UTF-8 (in Excel: 'CSV UTF-8')"
            )
        elif not file.is_absolute():
            # A relative path is read from the working directory, which a worker or a
            # deployment's pull step chooses: say which one it was.
            cwd = Path.cwd()
            reason += f" (resolved against the working directory {cwd}: {cwd / file})"
        raise InvalidStackFileError(
            source, [StackFileProblem(where="", field=None, message=f"cannot read it: {reason}")]
        ) from None
    problems: list[StackFileProblem] = []
    duplicates: list[_Path] = []
    lines: dict[_Path, int] = {}
    try:
        if suffix == ".json":
            data = _json_document(text, duplicates)
        elif suffix == ".csv":
            data, lines = _csv_document(text, problems)
        else:
            data, lines = _yaml_document(text, duplicates)
    except json.JSONDecodeError as exc:
        raise InvalidStackFileError(
            source,
            [
                StackFileProblem(
                    where="", field=None, message=f"not valid JSON: {exc.msg}", line=exc.lineno
                )
            ],
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise InvalidStackFileError(
            source,
            [
                StackFileProblem(
                    where="",
                    field=None,
                    message=f"not valid YAML: {reason}",
                    line=mark.line + 1 if mark is not None else None,
                )
            ],
        ) from None
    if suffix == ".csv":
        # Where a CSV file's name and substrate go is not obvious; say it.
        hint = "; add a line '# {field}: ...' above the column header"
        problems.extend(
            StackFileProblem(where="", field=field, message="is missing" + hint.format(field=field))
            for field in ("name", "substrate")
            if isinstance(data, Mapping) and field not in data
        )
    return _checked(data, source, lines, duplicates, problems)


def parse_stack(data: Any, *, source: str = "<stack>") -> StackSpec:
    """Check a stack already read into Python objects (e.g. from an API or a form).

    Args:
        data: A mapping with `name`, `substrate`, optional `metadata`, and `layers`.
        source: What to call it in messages, usually where it came from.

    Returns:
        The checked stack.

    Raises:
        InvalidStackFileError: Naming every problem, its layer, period and field.

    Example:
        ```python
        from prefect_atomscale import parse_stack

        spec = parse_stack({
            "name": "GaN film",
            "substrate": "Al2O3",
            "layers": [{"composition": "GaN", "orientation": "(0001)"}],
        })
        print(spec.layer_specs()[0].arguments())
        # {'composition_string': 'GaN', 'orientation': '(0001)'}
        ```
    """
    return _checked(data, source, {}, [], [])


def _checked(
    data: Any,
    source: str,
    lines: Mapping[_Path, int],
    duplicates: Sequence[_Path],
    problems: Sequence[StackFileProblem],
) -> StackSpec:
    found = list(problems)
    if not isinstance(data, Mapping):
        found.append(
            StackFileProblem(
                where="",
                field=None,
                message=(
                    "the file must describe one target material: a mapping with name, "
                    f"substrate, metadata and layers, not {type(data).__name__}"
                ),
            )
        )
        raise InvalidStackFileError(source, found)
    found.extend(
        _locate(path, f"appears twice; keep one {path[-1]!r}", data, lines) for path in duplicates
    )
    spec: StackSpec | None = None
    try:
        spec = StackSpec.model_validate(data)
    except ValidationError as exc:
        found.extend(_problem(error, data, lines) for error in exc.errors())
        found = [problem for problem in found if not _reported_twice(problem, found)]
    if found or spec is None:
        # Top-level problems first, then layer by layer.
        found.sort(key=lambda p: (p.position is not None, p.position or 0, p.line or 0))
        raise InvalidStackFileError(source, found)
    return spec
