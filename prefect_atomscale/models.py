"""Typed records the Atomscale API answers with: target materials, layers, list rows.

Each model has exactly the fields the API reference documents. Fields the server adds
later are ignored rather than rejected, so a new server version never breaks a flow.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Layer", "TargetMaterial", "TargetMaterialRow"]


class _Reply(BaseModel):
    # extra="ignore": unknown reply fields are dropped, never an error.
    model_config = ConfigDict(extra="ignore", frozen=True)


class TargetMaterial(_Reply):
    """A target material ("sample") as the API returns it after creating or updating it.

    Attributes:
        sample_id: The target material's integer id; layers refer to it.
        sample_name: Its name.
        substrate: The substrate it is grown on.
        sample_metadata: Free-form metadata stored with it.
        detail_notes_id: Id of attached notes, if any.
        user_id: The owning user.
        version: Record version, bumped on each update.
        last_updated: When it last changed, as the server wrote it.

    Example:
        ```python
        from prefect_atomscale import TargetMaterial

        material = TargetMaterial(sample_id=42, sample_name="BTO/STO", substrate="SrTiO3")
        print(material.sample_id)
        ```
    """

    sample_id: int
    sample_name: str
    substrate: str
    sample_metadata: dict[str, Any] = Field(default_factory=dict)
    detail_notes_id: int | str | None = None
    user_id: str | None = None
    version: int | None = None
    last_updated: str | None = None


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
        print(layer.layer_id)
        ```
    """

    id: int
    layer_id: int
    sample_id: int | None = None
    composition_string: str | None = None
    element_dict: dict[str, int | float] | None = None
    orientation: str | None = None
    space_group: str | None = None
    mp_id: str | None = None


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
        print(row.as_layer())
        ```
    """

    id: int | None = None
    sample_id: int | None = None
    sample_name: str | None = None
    substrate: str | None = None
    sample_metadata: dict[str, Any] | None = None
    layer_id: int | None = None
    composition_string: str | None = None
    element_dict: dict[str, int | float] | None = None
    orientation: str | None = None
    space_group: str | None = None
    mp_id: str | None = None
    user_id: str | None = None
    version: int | None = None
    last_updated: str | None = None

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
        if self.id is None or self.layer_id is None:
            return None
        return Layer.model_validate(self.model_dump())

    def as_target_material(self) -> TargetMaterial | None:
        """Return the row's target material, or None if the row names none.

        Returns:
            The target-material part of the row.

        Example:
            ```python
            from prefect_atomscale import TargetMaterialRow

            row = TargetMaterialRow(sample_id=42, sample_name="GaN film", substrate="Al2O3")
            print(row.as_target_material())
            ```
        """
        if self.sample_id is None or self.sample_name is None or self.substrate is None:
            return None
        return TargetMaterial(
            sample_id=self.sample_id,
            sample_name=self.sample_name,
            substrate=self.substrate,
            sample_metadata=self.sample_metadata or {},
            user_id=self.user_id,
            version=self.version,
            last_updated=self.last_updated,
        )
