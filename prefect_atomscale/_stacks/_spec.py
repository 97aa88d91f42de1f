"""What a stack file describes: the target material, its layers, and repeat blocks.

Layer 1 is the first layer grown, on the substrate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    field_validator,
)

from prefect_atomscale._composition import parse_composition
from prefect_atomscale._exceptions import (
    AtomscaleValidationError,
)
from prefect_atomscale._orientation import normalize_orientation
from prefect_atomscale._payloads import MAX_TEXT, LayerRequest, TargetMaterialRequest

__all__ = ["MAX_REPEAT", "LayerSpec", "RepeatBlock", "StackLayer", "StackSpec"]

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
        from prefect_atomscale import LayerSpec

        layer = LayerSpec(composition="BaTiO3", orientation="(001)")
        print(layer.composition, layer.orientation)  # BaTiO3 (001)
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
            from prefect_atomscale import LayerSpec

            print(LayerSpec(composition="GaN", orientation="0001").arguments())
            # {'composition_string': 'GaN', 'orientation': '0001'}
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
        from prefect_atomscale import LayerSpec, RepeatBlock, StackSpec

        block = RepeatBlock(
            repeat=20,
            layers=[LayerSpec(composition="BaTiO3"), LayerSpec(composition="SrTiO3")],
        )
        spec = StackSpec(name="(BTO/STO)x20", substrate="SrTiO3", layers=[block])
        print(len(spec.expanded_layers()))  # 40
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
        from prefect_atomscale import parse_stack

        spec = parse_stack({
            "name": "(BTO/STO)x20",
            "substrate": "SrTiO3",
            "layers": [
                {"composition": "SrRuO3"},
                {"repeat": 20, "layers": [{"composition": "BaTiO3"}, {"composition": "SrTiO3"}]},
            ],
        })
        layer = spec.expanded_layers()[3]
        print(layer.position, layer.entry, layer.period, layer.periods)  # 4 1 2 20
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
            from prefect_atomscale import LayerSpec, StackLayer

            spec = LayerSpec(composition="GaN", orientation="0001")
            print(StackLayer(position=1, spec=spec, entry=0).describe())  # L1 GaN 0001
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
        growth_run: The name of the growth run (physical sample) that grows this stack,
            if the file names one; `growth_run_from_file` creates and links it.

    Example:
        ```python
        from prefect_atomscale import StackSpec

        spec = StackSpec.model_validate({
            "name": "BTO/STO SL",
            "substrate": "SrTiO3",
            "layers": [{"repeat": 3, "layers": [{"composition": "BaTiO3"},
                                                {"composition": "SrTiO3"}]}],
        })
        print([layer.position for layer in spec.expanded_layers()])  # [1, 2, 3, 4, 5, 6]
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
    growth_run: str | None = Field(
        default=None,
        description="Name of the growth run (physical sample) that grows this stack.",
    )

    @field_validator("name", "substrate", "growth_run", mode="before")
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
            from prefect_atomscale import LayerSpec, RepeatBlock, StackSpec

            spec = StackSpec(name="SL", substrate="SrTiO3", layers=[
                RepeatBlock(repeat=2, layers=[LayerSpec(composition="BaTiO3")])])
            print([layer.describe() for layer in spec.expanded_layers()])
            # ['L1 BaTiO3 (period 1 of 2)', 'L2 BaTiO3 (period 2 of 2)']
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
            from prefect_atomscale import LayerSpec, StackSpec

            spec = StackSpec(name="film", substrate="MgO", layers=[LayerSpec(composition="TiO2")])
            print(len(spec.layer_specs()))  # 1
            ```
        """
        return [layer.spec for layer in self.expanded_layers()]
