"""Typed records the Atomscale API answers with: target materials, layers, list rows, growth runs.

Read tolerantly. A reply is refused only when a field the package uses to find or link
records is missing or unusable: a target material's `sample_id`; a layer's `id`,
`layer_id` and `sample_id`; a growth run's `id`, and its `sample_id` when sent. Every
other documented field is optional and nullable, and read leniently (a number where
text was expected becomes text, a JSON object sent as a string is decoded, anything else
unusable is read as `None`); the ones nobody here reads (`user_id`, `version`,
`last_updated`, `detail_notes_id`, ...) take any JSON value. Fields
the reference does not list are kept on the model (`model_extra`), never an error.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = ["GrowthRun", "Layer", "TargetMaterial", "TargetMaterialRow"]


def _lenient_text(value: Any) -> str | None:
    # A number where text was expected (an orientation written 1, a name 2026) is
    # still that text; a list, an object or a boolean is no text at all.
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _lenient_object(value: Any) -> dict[str, Any] | None:
    # Some services store JSON columns as text and send them back as a string.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return value
    return None


def _record_id(value: Any) -> Any:
    # An id is a whole number, sent as a number or as its digits (pydantic's lax mode
    # reads both); a boolean is not one, though lax mode would read `true` as 1.
    if isinstance(value, bool):
        raise ValueError("Input should be a whole number, not a boolean")
    return value


def _uuid_text(value: Any) -> Any:
    # A physical sample's id is a UUID; it is only ever sent back in a path, so any
    # non-empty text is usable and kept as the service wrote it.
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError("Input should be the physical sample's id, a non-empty string")


Id = Annotated[int, BeforeValidator(_record_id)]
SampleUuid = Annotated[str, BeforeValidator(_uuid_text)]
Text = Annotated[str | None, BeforeValidator(_lenient_text)]
JsonObject = Annotated[dict[str, Any] | None, BeforeValidator(_lenient_object)]


class _Reply(BaseModel):
    # extra="allow": fields the reference does not list are kept, never an error.
    model_config = ConfigDict(extra="allow", frozen=True)


class TargetMaterial(_Reply):
    """A target material ("sample") as the API returns it after creating or updating it.

    Attributes:
        sample_id: The target material's integer id; layers refer to it.
        sample_name: Its name.
        substrate: The substrate it is grown on.
        sample_metadata: Free-form metadata stored with it.
        detail_notes_id: Id of attached notes, if any (any JSON value).
        user_id: The owning user, a number or a UUID string (any JSON value).
        version: Record version as the service writes it, e.g. `"0.269.1"` (any JSON
            value).
        last_updated: When it last changed, as the server wrote it (any JSON value).

    Example:
        ```python
        from prefect_atomscale import TargetMaterial

        material = TargetMaterial(sample_id=42, sample_name="BTO/STO", substrate="SrTiO3")
        print(material.sample_id)  # 42
        ```
    """

    sample_id: Id
    sample_name: Text = None
    substrate: Text = None
    sample_metadata: JsonObject = None
    detail_notes_id: Any = None
    user_id: Any = None
    version: Any = None
    last_updated: Any = None


class Layer(_Reply):
    """One layer of a target material's stack, as `POST /target-materials/layers/` returns it.

    Attributes:
        id: The layer record's own id, given by the server.
        layer_id: Position of the layer in the stack (1, 2, ...).
        sample_id: Id of the parent target material.
        composition_string: Chemical formula, e.g. `BaTiO3`.
        element_dict: Element -> count or fraction, e.g. `{"Ba": 1, "Ti": 1, "O": 3}`.
        orientation: Miller indices of the surface normal, e.g. `001`.
        space_group: Hermann-Mauguin symbol, e.g. `P4mm`.
        mp_id: Materials Project id, e.g. `mp-5020`.

    Example:
        ```python
        from prefect_atomscale import Layer

        layer = Layer(id=100, layer_id=1, sample_id=42, composition_string="BaTiO3")
        print(layer.layer_id)  # 1
        ```
    """

    id: Id
    layer_id: Id
    sample_id: Id
    composition_string: Text = None
    element_dict: JsonObject = None
    orientation: Text = None
    space_group: Text = None
    mp_id: Text = None


class TargetMaterialRow(_Reply):
    """One row of `GET /target-materials/`: a layer joined with its target material.

    The list has one row per layer for the whole organisation; a target material
    without layers may have a row whose layer fields are empty, or none at all.

    Attributes:
        id: The layer record's id, or None on a row of a target material without layers.
        sample_id: The target material's id.
        sample_name: The target material's name.
        substrate: The target material's substrate.
        sample_metadata: The target material's metadata.
        layer_id: The layer's position, or None.
        composition_string: The layer's formula.
        element_dict: The layer's elements.
        orientation: The layer's orientation.
        space_group: The layer's space group.
        mp_id: The layer's Materials Project id.
        user_id: The target material's owner.
        version: The target material's record version.
        last_updated: When the target material last changed.

    Example:
        ```python
        from prefect_atomscale import TargetMaterialRow

        row = TargetMaterialRow(id=1, sample_id=42, layer_id=1, composition_string="GaN")
        print(row.as_layer().composition_string)  # GaN
        ```
    """

    id: Id | None = None
    sample_id: Id | None = None
    sample_name: Text = None
    substrate: Text = None
    sample_metadata: JsonObject = None
    layer_id: Id | None = None
    composition_string: Text = None
    element_dict: JsonObject = None
    orientation: Text = None
    space_group: Text = None
    mp_id: Text = None
    user_id: Any = None
    version: Any = None
    last_updated: Any = None

    def as_layer(self) -> Layer | None:
        """Return the row's layer, or None if the row carries no layer.

        Returns:
            The layer part of the row.

        Example:
            ```python
            from prefect_atomscale import TargetMaterialRow

            print(TargetMaterialRow(sample_id=42).as_layer())  # None
            ```
        """
        if self.id is None or self.layer_id is None or self.sample_id is None:
            return None
        # The layer's own fields, and what the service added that nobody knows of;
        # not the target material's fields, which belong to the row, not the layer.
        fields = {name: getattr(self, name) for name in Layer.model_fields}
        return Layer.model_validate({**(self.model_extra or {}), **fields})

    def as_target_material(self) -> TargetMaterial | None:
        """Return the row's target material, or None if the row names none.

        Returns:
            The target-material part of the row.

        Example:
            ```python
            from prefect_atomscale import TargetMaterialRow

            row = TargetMaterialRow(sample_id=42, sample_name="GaN film", substrate="Al2O3")
            print(row.as_target_material().substrate)  # Al2O3
            ```
        """
        if self.sample_id is None:
            return None
        return TargetMaterial(
            sample_id=self.sample_id,
            sample_name=self.sample_name,
            substrate=self.substrate,
            sample_metadata=self.sample_metadata,
            user_id=self.user_id,
            version=self.version,
            last_updated=self.last_updated,
        )


class GrowthRun(_Reply):
    """A growth run: a physical sample of the organisation, as `/physical_samples/` returns it.

    Its name is unique in the organisation (ignoring case and surrounding whitespace);
    the instrument's data is uploaded into it by that name with the official `atomscale`
    SDK. It may be linked to one target material, the stack the run aims for.

    Attributes:
        id: The physical sample's id, a UUID.
        name: Its name.
        sample_id: The linked target material's id, or None when it has none.
        target_material: The linked target material as the listing nests it (at least
            `sample_name` and `substrate`); None in a create's reply and when unlinked.
        growth_instrument_id: The growth instrument's id, if one was given.
        created_datetime: When it was created (any JSON value).
        last_updated: When it last changed (any JSON value).
        version: Record version as the service writes it (any JSON value).
        user_id: The user who created it (any JSON value).

    Example:
        ```python
        from prefect_atomscale import GrowthRun

        run = GrowthRun(
            id="0b7c6a4e-3f7e-4c57-9d0e-1a2b3c4d5e6f",
            name="PLD-0412",
            target_material={"sample_id": 7, "sample_name": "BTO/STO", "substrate": "SrTiO3"},
        )
        print(run.target_material_id, run.target_material_name)  # 7 BTO/STO
        ```
    """

    id: SampleUuid
    name: Text = None
    sample_id: Id | None = None
    target_material: JsonObject = None
    growth_instrument_id: Any = None
    created_datetime: Any = None
    last_updated: Any = None
    version: Any = None
    user_id: Any = None

    @property
    def target_material_id(self) -> int | None:
        """The linked target material's id: `sample_id`, else the nested record's, else None.

        Example:
            ```python
            from prefect_atomscale import GrowthRun

            print(GrowthRun(id="0b7c6a4e-3f7e-4c57-9d0e-1a2b3c4d5e6f").target_material_id)
            # None
            ```
        """
        if self.sample_id is not None:
            return self.sample_id
        nested = (self.target_material or {}).get("sample_id")
        if isinstance(nested, int) and not isinstance(nested, bool):
            return nested
        return None

    @property
    def target_material_name(self) -> str | None:
        """The linked target material's name as the listing nests it, if it does.

        Example:
            ```python
            from prefect_atomscale import GrowthRun

            run = GrowthRun(id="0b7c6a4e-3f7e-4c57-9d0e-1a2b3c4d5e6f",
                            target_material={"sample_name": "GaN HEMT", "substrate": "Al2O3"})
            print(run.target_material_name)  # GaN HEMT
            ```
        """
        return _lenient_text((self.target_material or {}).get("sample_name"))
