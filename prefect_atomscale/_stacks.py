"""Stack files: a target material and its layers written down in YAML, JSON or CSV.

Labs keep a description of each target material next to its growth recipe. This module
reads those files, checks them completely before anything is sent, compares them with
what an Atomscale account already holds (drawing a stack for the Prefect UI is in
`prefect_atomscale._artifacts`):

- `StackSpec`, `LayerSpec` and `RepeatBlock` are the pydantic models of a file. A
  `RepeatBlock` (`{"repeat": 20, "layers": [...]}`) is a superlattice; it expands to
  consecutive positions. Formulas, Miller indices, space groups, Materials Project ids
  and element amounts are checked with the same rules the tasks apply, so a file that
  loads is a file whose requests will not be refused for their form.
- `load_stack_file` reads `.yaml`/`.yml`, `.json` and `.csv` (flat stacks only) and
  raises `InvalidStackFileError`, whose message names the file, the layer (its position
  and, inside a repeat block, its period) and the field, for every problem at once.
- `compare_with_existing` tells whether a stack was already created, by reading the
  rows of `GET /target-materials/`: absent, complete, partly there, or in conflict.

Layer 1 is the first layer grown, on the substrate.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    field_validator,
)

from prefect_atomscale._composition import parse_composition
from prefect_atomscale._exceptions import AtomscaleConflictError, AtomscaleValidationError
from prefect_atomscale._models import Layer, TargetMaterial, TargetMaterialRow
from prefect_atomscale._orientation import normalize_orientation
from prefect_atomscale._payloads import MAX_TEXT, LayerRequest, TargetMaterialRequest, token_of

__all__ = [
    "MAX_REPEAT",
    "STACK_FILE_SUFFIXES",
    "ExistingStack",
    "InvalidStackFileError",
    "LayerSpec",
    "RepeatBlock",
    "StackConflictError",
    "StackFileProblem",
    "StackLayer",
    "StackSpec",
    "compare_with_existing",
    "load_stack_file",
    "parse_stack",
]

STACK_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".csv")
"""File name endings `load_stack_file` reads."""

MAX_REPEAT = 1000
"""Most periods a repeat block may have; more is almost surely a typo."""

# Shown after "unknown field" for names people reach for from the API or other tools.
_FIELD_HINTS = {
    "sample_name": "'name'",
    "sample_metadata": "'metadata'",
    "composition_string": "'composition'",
    "formula": "'composition'",
    "material": "'composition'",
    "periods": "'repeat'",
    "times": "'repeat'",
    "count": "'repeat'",
    "layer_id": "nothing: a layer's position is its place in the list",
    "position": "nothing: a layer's position is its place in the list",
}
_KNOWN_FIELDS = (
    "name",
    "substrate",
    "metadata",
    "layers",
    "repeat",
    "composition",
    "orientation",
    "space_group",
    "mp_id",
    "element_dict",
)


# --------------------------------------------------------------------------- models


def _error_text(exc: AtomscaleValidationError) -> str:
    """The reason part of a payload error, without its 'Layer 1 of target material 1:' head."""
    return exc.message.split(": ", 1)[1] if ": " in exc.message else exc.message


def _checked_text(value: str, what: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError(f"{what} is empty")
    if len(text) > MAX_TEXT:
        raise ValueError(f"{what} is {len(text)} characters long; the limit is {MAX_TEXT}")
    return text


class LayerSpec(BaseModel):
    """One layer to create: what it is made of and how it is oriented.

    Its position in the stack is its place in the list it is in. Every field is
    checked when the spec is built, with the rules `create_layer` applies, so a spec
    that exists will not be refused for its form.

    Attributes:
        composition: Chemical formula, e.g. `BaTiO3` or `(La0.7Sr0.3)MnO3`.
        orientation: Miller indices of the film surface, e.g. `001`, `(1-10)`, `0001`.
        space_group: Hermann-Mauguin symbol, e.g. `P4mm`; the service fills it in if
            it matches the formula.
        mp_id: Materials Project id, e.g. `mp-5020`; the service fills it in if matched.
        element_dict: Element -> amount; the service derives it from the formula if
            left out.

    Example:
        ```python
        from prefect_atomscale._stacks import LayerSpec

        layer = LayerSpec(composition="BaTiO3", orientation="(001)")
        print(layer.composition, layer.orientation)
        ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    composition: str = Field(description="Chemical formula, e.g. BaTiO3 or (La0.7Sr0.3)MnO3.")
    orientation: str | None = Field(
        default=None, description="Miller indices of the film surface, e.g. 001 or 11-20."
    )
    space_group: str | None = Field(
        default=None, description="Hermann-Mauguin symbol, e.g. P4mm; filled in if matched."
    )
    mp_id: str | None = Field(
        default=None, description="Materials Project id, e.g. mp-5020; filled in if matched."
    )
    element_dict: dict[str, int | float] | None = Field(
        default=None, description="Element to amount; derived from the formula if left out."
    )

    def arguments(self) -> dict[str, Any]:
        """This layer as `create_layer`'s keyword arguments, fields left out omitted.

        Example:
            ```python
            from prefect_atomscale._stacks import LayerSpec

            print(LayerSpec(composition="GaN", orientation="0001").arguments())
            ```
        """
        given = {
            "composition_string": self.composition,
            "orientation": self.orientation,
            "element_dict": self.element_dict,
            "space_group": self.space_group,
            "mp_id": self.mp_id,
        }
        return {name: value for name, value in given.items() if value is not None}

    @field_validator("composition")
    @classmethod
    def _composition(cls, value: str) -> str:
        parse_composition(value)
        return value.strip()

    @field_validator("orientation", mode="before")
    @classmethod
    def _orientation_as_text(cls, value: Any) -> Any:
        # JSON has no way to write 001 as a number, so an int there was written as
        # digits (110 -> "110"); YAML numbers never get here (see _yaml_document).
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, value: str | None) -> str | None:
        if value is None:
            return None
        normalize_orientation(value)
        return value.strip()

    @field_validator("space_group", "mp_id", "element_dict")
    @classmethod
    def _as_the_task_checks(cls, value: Any, info: Any) -> Any:
        if value is None:
            return None
        try:
            request = LayerRequest.build(sample_id=1, layer_id=1, **{info.field_name: value})
        except AtomscaleValidationError as exc:
            raise ValueError(_error_text(exc)) from None
        return request.body[info.field_name]


class RepeatBlock(BaseModel):
    """A superlattice: the same layers grown `repeat` times, one period after another.

    It expands to `repeat * len(layers)` consecutive positions; within each period
    the layers keep their order, first-grown first.

    Attributes:
        repeat: How many periods, 1 to `MAX_REPEAT`.
        layers: The layers of one period, first-grown first.

    Example:
        ```python
        from prefect_atomscale._stacks import LayerSpec, RepeatBlock

        block = RepeatBlock(
            repeat=20,
            layers=[LayerSpec(composition="BaTiO3"), LayerSpec(composition="SrTiO3")],
        )
        print(block.repeat * len(block.layers))  # 40 layers
        ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    repeat: StrictInt = Field(ge=1, le=MAX_REPEAT, description="Number of periods.")
    layers: list[LayerSpec] = Field(
        min_length=1, description="The layers of one period, first-grown first."
    )

    @field_validator("layers", mode="before")
    @classmethod
    def _not_nested(cls, value: Any) -> Any:
        if isinstance(value, list) and any(
            isinstance(item, Mapping) and "repeat" in item for item in value
        ):
            raise ValueError(
                "a repeat block cannot contain another repeat block; write the inner "
                "period out as a list of layers"
            )
        return value


def _entry_kind(value: Any) -> str:
    if isinstance(value, RepeatBlock) or (isinstance(value, Mapping) and "repeat" in value):
        return "repeat"
    return "layer"


_StackEntry = Annotated[
    Annotated[LayerSpec, Tag("layer")] | Annotated[RepeatBlock, Tag("repeat")],
    Discriminator(_entry_kind),
]


class StackLayer(BaseModel):
    """One layer of an expanded stack: its position and where it came from in the file.

    Attributes:
        position: Position in the stack (`layer_id`), 1 for the first layer grown.
        spec: The layer.
        entry: Index of the entry in `StackSpec.layers` it comes from (0-based).
        period: Which period of its repeat block (1-based), or None outside one.
        periods: How many periods its repeat block has, or None outside one.

    Example:
        ```python
        from prefect_atomscale._stacks import LayerSpec, StackLayer

        layer = StackLayer(position=3, spec=LayerSpec(composition="SrTiO3"), entry=1,
                           period=1, periods=20)
        print(layer.describe())
        ```
    """

    model_config = ConfigDict(frozen=True)

    position: int
    spec: LayerSpec
    entry: int
    period: int | None = None
    periods: int | None = None

    def describe(self) -> str:
        """Name the layer for messages, e.g. `L3 BaTiO3 001 (period 2 of 20)`.

        Returns:
            A short description.

        Example:
            ```python
            from prefect_atomscale._stacks import LayerSpec, StackLayer

            print(StackLayer(position=1, spec=LayerSpec(composition="GaN"), entry=0).describe())
            ```
        """
        what = " ".join(filter(None, [self.spec.composition, self.spec.orientation]))
        where = f" (period {self.period} of {self.periods})" if self.period else ""
        return f"L{self.position} {what}{where}"


class StackSpec(BaseModel):
    """A target material as a stack file describes it: name, substrate, metadata, layers.

    Attributes:
        name: The target material's name (`sample_name`); also what tells whether it
            was already created.
        substrate: The substrate, e.g. `SrTiO3` or `Al2O3`.
        metadata: Free-form JSON metadata (`sample_metadata`), e.g. growth conditions.
        layers: Layers and repeat blocks, first-grown first.

    Example:
        ```python
        from prefect_atomscale._stacks import StackSpec

        spec = StackSpec.model_validate({
            "name": "BTO/STO SL", "substrate": "SrTiO3",
            "layers": [{"repeat": 3, "layers": [{"composition": "BaTiO3"},
                                                 {"composition": "SrTiO3"}]}],
        })
        print([layer.position for layer in spec.expanded_layers()])  # [1, ..., 6]
        ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Name of the target material (sample_name).")
    substrate: str = Field(description="The substrate, e.g. SrTiO3.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free-form JSON metadata, e.g. growth conditions."
    )
    layers: list[_StackEntry] = Field(
        min_length=1, description="Layers and repeat blocks, first-grown first."
    )

    @field_validator("name", "substrate", mode="before")
    @classmethod
    def _text(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            return _checked_text(value, info.field_name)
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            request = TargetMaterialRequest.build(
                sample_name="-", substrate="-", sample_metadata=value
            )
        except AtomscaleValidationError as exc:
            raise ValueError(_error_text(exc)) from None
        checked: dict[str, Any] = request.body["sample"]["sample_metadata"]
        return checked

    def expanded_layers(self) -> list[StackLayer]:
        """Return every layer with its position, repeat blocks written out.

        Returns:
            Layers at positions 1..N, first-grown first.

        Example:
            ```python
            from prefect_atomscale._stacks import LayerSpec, RepeatBlock, StackSpec

            spec = StackSpec(name="SL", substrate="SrTiO3", layers=[
                RepeatBlock(repeat=2, layers=[LayerSpec(composition="BaTiO3")])])
            print([layer.describe() for layer in spec.expanded_layers()])
            ```
        """
        expanded: list[StackLayer] = []
        for entry, item in enumerate(self.layers):
            if isinstance(item, LayerSpec):
                expanded.append(StackLayer(position=len(expanded) + 1, spec=item, entry=entry))
                continue
            for period in range(1, item.repeat + 1):
                expanded.extend(
                    StackLayer(
                        position=len(expanded) + 1,
                        spec=spec,
                        entry=entry,
                        period=period,
                        periods=item.repeat,
                    )
                    for spec in item.layers
                )
        return expanded

    def layer_specs(self) -> list[LayerSpec]:
        """Return the layers in stack order, repeat blocks written out.

        Returns:
            One `LayerSpec` per position, first-grown first.

        Example:
            ```python
            from prefect_atomscale._stacks import LayerSpec, StackSpec

            spec = StackSpec(name="film", substrate="MgO", layers=[LayerSpec(composition="TiO2")])
            print(len(spec.layer_specs()))  # 1
            ```
        """
        return [layer.spec for layer in self.expanded_layers()]


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class StackFileProblem:
    """One problem found in a stack file.

    Attributes:
        where: The place in words, with the line where known, e.g. `layer L5 (line 14;
            period 1 of 20, and the same in every period)`; empty if unknown.
        field: The field at fault, e.g. `orientation`, or None.
        message: What is wrong and what to write instead.
        position: The layer's position, if the problem is in a layer.
        period: The period, if the layer is in a repeat block (the first period is
            named; every period is the same).
        line: Line in the file, for YAML and CSV files.

    Example:
        ```python
        from prefect_atomscale._stacks import StackFileProblem

        problem = StackFileProblem(where="layer L2 (line 9)", field="orientation", message="bad")
        print(problem.describe())
        ```
    """

    where: str
    field: str | None
    message: str
    position: int | None = None
    period: int | None = None
    line: int | None = None

    def describe(self) -> str:
        """Render the problem as one line, e.g. `layer L2 (line 9), field 'orientation': bad`.

        Returns:
            The problem in words.

        Example:
            ```python
            from prefect_atomscale._stacks import StackFileProblem

            print(StackFileProblem(where="", field="name", message="is missing").describe())
            ```
        """
        parts = [self.where] if self.where else []
        if not parts and self.line is not None:
            parts = [f"line {self.line}"]
        if self.field:
            parts.append(f"field {self.field!r}")
        head = ", ".join(parts)
        return f"{head}: {self.message}" if head else self.message


class InvalidStackFileError(AtomscaleValidationError):
    """A stack file that cannot be used; nothing was sent.

    The message names the file and, for each problem, the layer (position and, in a
    repeat block, the period), the field and what is wrong.

    Attributes:
        path: The file as given.
        problems: Every problem found.

    Example:
        ```python
        from prefect_atomscale._stacks import InvalidStackFileError, parse_stack

        try:
            parse_stack({"name": "x", "substrate": "SrTiO3",
                         "layers": [{"composition": "Xx2O3"}]}, source="x.yaml")
        except InvalidStackFileError as exc:
            print(exc.problems[0].position, exc.problems[0].field)  # 1 composition
        ```
    """

    def __init__(self, path: str, problems: Sequence[StackFileProblem]):
        self.path = path
        self.problems = list(problems)
        shown = [problem.describe() for problem in self.problems[:20]]
        if len(self.problems) > len(shown):
            shown.append(f"... and {len(self.problems) - len(shown)} more")
        if len(shown) == 1:
            message = f"{path}: {shown[0]}. Nothing was sent; fix the file and run again."
        else:
            lines = "\n".join(f"  - {line}" for line in shown)
            message = (
                f"{path} has {len(self.problems)} problems; nothing was sent. Fix the file "
                f"and run again:\n{lines}"
            )
        super().__init__(message)


class StackConflictError(AtomscaleConflictError):
    """The account already has a target material of this name whose stack is different.

    Raised instead of creating a second one; nothing was sent. Rename the target
    material in the file, or fix the file so that it describes what exists.

    Attributes:
        path: The stack file.
        problems: What differs, one sentence each.

    Example:
        ```python
        from prefect_atomscale._stacks import StackConflictError

        print(StackConflictError("sl.yaml", "SL", ["L3 is SrTiO3 there"]).problems)
        ```
    """

    def __init__(self, path: str, name: str, problems: Sequence[str]):
        self.path = path
        self.problems = list(problems)
        super().__init__(
            f"{path}: the account already has a target material named {name!r} with a "
            f"different stack: {'; '.join(self.problems)}. Nothing was sent. Give the "
            "file a new name, or make it describe what exists."
        )


# --------------------------------------------------------------------------- loading

_STR_TAG = "tag:yaml.org,2002:str"
# Scalars in these keys are text even when YAML would read them otherwise: an
# unquoted `orientation: 001` is the int 1 to YAML (and `010` is 8), `NO` is False.
_TEXT_KEYS = frozenset({"name", "substrate", "composition", "orientation", "space_group", "mp_id"})
_RETYPED_TAGS = frozenset(
    f"tag:yaml.org,2002:{kind}" for kind in ("int", "float", "bool", "timestamp")
)
_Path = tuple[str | int, ...]


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


def _csv_document(text: str, problems: list[StackFileProblem]) -> tuple[Any, dict[_Path, int]]:
    """Read a flat stack: `# key: value` lines on top, then one row per layer."""
    document: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    lines: dict[_Path, int] = {}
    body: list[tuple[int, str]] = []
    in_preamble = True
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not in_preamble):
            continue
        if in_preamble and stripped.startswith("#"):
            # Any other comment line is free text, e.g. a note on the growth.
            key, _, value = stripped.lstrip("#").partition(":")
            key = key.strip()
            if key.startswith("metadata.") and len(key) > len("metadata."):
                metadata[key.removeprefix("metadata.")] = _csv_value(value.strip())
                lines.setdefault(("metadata",), number)
            elif key in ("name", "substrate"):
                document[key] = value.strip()
                lines[(key,)] = number
            continue
        in_preamble = False
        body.append((number, line))
    if metadata:
        document["metadata"] = metadata
    if not body:
        document["layers"] = []
        return document, lines
    reader = csv.reader(io.StringIO("\n".join(line for _, line in body)))
    header = [column.strip().lower() for column in next(reader)]
    for column in header:
        if column not in _CSV_COLUMNS:
            problems.append(
                StackFileProblem(
                    where=f"line {body[0][0]}",
                    field=column,
                    message=(
                        f"unknown column {column!r}; the columns are "
                        f"{', '.join(_CSV_COLUMNS)} (only composition is required)"
                    ),
                    line=body[0][0],
                )
            )
    layers: list[dict[str, Any]] = []
    for (number, _), row in zip(body[1:], reader, strict=False):
        cells = {
            column: cell.strip()
            for column, cell in zip(header, row, strict=False)
            if column in _CSV_COLUMNS and cell.strip()
        }
        if not any(cell.strip() for cell in row):
            continue  # spreadsheets often export trailing empty rows
        position = len(layers) + 1
        lines[("layers", len(layers))] = number
        orientation = cells.get("orientation", "")
        if re.fullmatch(r"-?\d{1,2}", orientation):
            # Spreadsheets read 001 as the number 1 and save it that way.
            del cells["orientation"]
            problems.append(
                StackFileProblem(
                    where=f"layer L{position} (line {number})",
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
                    where=f"layer L{position} (line {number})",
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
    formula, orientation, space group, Materials Project id and element amounts.

    Args:
        path: The file.

    Returns:
        The stack it describes.

    Raises:
        InvalidStackFileError: The file cannot be read or has problems; the message
            lists them all, each with the layer, its period and the field.

    Example:
        ```python
        from prefect_atomscale._stacks import load_stack_file

        spec = load_stack_file("flows/examples/bto_sto_superlattice.yaml")
        print(spec.name, len(spec.expanded_layers()))
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
        from prefect_atomscale._stacks import parse_stack

        spec = parse_stack({"name": "GaN film", "substrate": "Al2O3",
                            "layers": [{"composition": "GaN", "orientation": "0001"}]})
        print(spec.layer_specs()[0].orientation)
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


# --------------------------------------------------------------------------- existing


class ExistingStack(BaseModel):
    """What an account already holds under a stack file's name.

    Attributes:
        status: `absent` (no target material of that name), `complete` (one with all
            the file's layers), `partial` (one with some of them and nothing else), or
            `conflict` (only ones with different layers or another substrate).
        material: The matching target material, for `complete` and `partial`.
        layers: Its layers that match the file, by position.
        missing: Positions still to create, for `partial`.
        problems: What differs, for `conflict`.

    Example:
        ```python
        from prefect_atomscale._stacks import ExistingStack

        print(ExistingStack(status="absent").status)
        ```
    """

    model_config = ConfigDict(frozen=True)

    status: Literal["absent", "complete", "partial", "conflict"]
    material: TargetMaterial | None = None
    layers: dict[int, Layer] = Field(default_factory=dict)
    missing: list[int] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)


def compare_with_existing(
    spec: StackSpec, rows: Iterable[TargetMaterialRow], owner: str | None = None
) -> ExistingStack:
    """Tell whether a stack was already created, from the rows of `GET /target-materials/`.

    A target material counts as the file's when its name is the file's name and, when
    `owner` is given, its metadata carries that ownership token (`payloads.OWNER_KEY`):
    a colleague's material of the same name is then not the file's at all. It is
    complete when it sits on the file's substrate and every position holds a layer
    that matches the file (formula, orientation, and any field the file sets);
    partial when some positions are still empty and nothing differs. Several of the
    same name: a complete one wins, then a single partial one. The list shows only
    target materials that have layers, so one created without any counts as absent.

    Args:
        spec: The stack file.
        rows: The account's rows, one per layer.
        owner: The ownership token the file's target material must carry, from
            `payloads.owner_token(account, spec.name)`; None to match by name alone.

    Returns:
        What exists.

    Example:
        ```python
        from prefect_atomscale import TargetMaterialRow
        from prefect_atomscale._stacks import compare_with_existing, parse_stack

        spec = parse_stack(
            {"name": "film", "substrate": "MgO", "layers": [{"composition": "TiO2"}]}
        )
        row = TargetMaterialRow(id=9, sample_id=4, sample_name="film", substrate="MgO",
                                layer_id=1, composition_string="TiO2")
        print(compare_with_existing(spec, [row]).status)  # complete
        ```
    """
    candidates: dict[int, list[TargetMaterialRow]] = {}
    for row in rows:
        if row.sample_id is None or (row.sample_name or "").strip() != spec.name:
            continue
        if owner is None or token_of(row.sample_metadata) == owner:
            candidates.setdefault(row.sample_id, []).append(row)
    if not candidates:
        return ExistingStack(status="absent")
    expected = spec.expanded_layers()
    results = [_compare_one(expected, spec, rows) for _, rows in sorted(candidates.items())]
    for status in ("complete", "partial"):
        found = [result for result in results if result.status == status]
        if len(found) == 1 or (found and status == "complete"):
            return found[0]
        if found:
            ids = ", ".join(str(result.material.sample_id) for result in found if result.material)
            return ExistingStack(
                status="conflict",
                problems=[
                    f"{len(found)} target materials of this name (sample_id {ids}) each hold "
                    "part of the stack, so it is not clear which one to complete"
                ],
            )
    return ExistingStack(
        status="conflict",
        problems=[
            f"sample_id {result.material.sample_id}: {problem}"
            for result in results
            if result.material
            for problem in result.problems
        ],
    )


def _compare_one(
    expected: list[StackLayer], spec: StackSpec, rows: list[TargetMaterialRow]
) -> ExistingStack:
    first = rows[0]
    sample_id = first.sample_id or 0
    material = TargetMaterial(
        sample_id=sample_id,
        sample_name=first.sample_name or spec.name,
        substrate=first.substrate or "",
        sample_metadata=first.sample_metadata or {},
    )
    problems: list[str] = []
    if (first.substrate or "").strip() != spec.substrate:
        problems.append(f"its substrate is {first.substrate!r}, the file says {spec.substrate!r}")
    at: dict[int, list[Layer]] = {}
    for row in rows:
        layer = row.as_layer()
        if layer is not None:
            at.setdefault(layer.layer_id, []).append(layer)
    present: dict[int, Layer] = {}
    missing: list[int] = []
    for item in expected:
        request = LayerRequest.build(
            sample_id=sample_id,
            layer_id=item.position,
            composition_string=item.spec.composition,
            orientation=item.spec.orientation,
            element_dict=item.spec.element_dict,
            space_group=item.spec.space_group,
            mp_id=item.spec.mp_id,
        )
        found = sorted(at.get(item.position, []), key=lambda layer: layer.id)
        match = next((layer for layer in found if request.matches(layer)), None)
        if match is not None:
            present[item.position] = request.complete(match)
        elif found:
            there = " ".join(filter(None, [found[0].composition_string, found[0].orientation]))
            problems.append(
                f"L{item.position} is {there or 'empty'}, the file says {item.describe()}"
            )
        else:
            missing.append(item.position)
    beyond = sorted(position for position in at if position > len(expected))
    if beyond:
        problems.append(
            f"it has layers beyond the file's {len(expected)}: "
            + ", ".join(f"L{position}" for position in beyond[:5])
        )
    if problems:
        return ExistingStack(status="conflict", material=material, problems=problems)
    status: Literal["complete", "partial"] = "partial" if missing else "complete"
    return ExistingStack(status=status, material=material, layers=present, missing=missing)
