"""Request and reply bodies of the sandbox API, as pydantic models.

They give the OpenAPI document its shapes and turn every malformed body into a 422 in
FastAPI's usual `{"detail": [{"type", "loc", "msg", "input"}, ...]}` form. Fields a
client sends that are not declared here are ignored, as FastAPI does by default.

Beyond the types, the limits here exist so that no input reaches storage or the JSON
encoder in a form they would fail on (a 500): integers beyond 64 bits, NaN or Infinity
(Python's JSON parser accepts them), lone UTF-16 surrogates, unbounded text.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_RECORD_ID",
    "ErrorReply",
    "GrowthInstrument",
    "Layer",
    "LayerFields",
    "LayerPatch",
    "LinkedTargetMaterial",
    "PhysicalSample",
    "PhysicalSampleCreate",
    "PhysicalSampleListed",
    "PhysicalSamplePatch",
    "Project",
    "TargetMaterial",
    "TargetMaterialCreate",
    "TargetMaterialFields",
    "TargetMaterialLink",
    "TargetMaterialPatch",
    "TargetMaterialRow",
]

MAX_JSON_DEPTH = 32
"""Deepest nesting of lists and objects accepted in `sample_metadata`."""

MAX_RECORD_ID = 2**53 - 1
"""Largest id accepted: exact in every JSON parser, and far from SQLite's 64-bit limit so
that the id counter cannot run out after an explicit huge id."""


def _utf8_encodable(text: str) -> str:
    # A lone surrogate (JSON "\ud800") survives parsing but not encoding to UTF-8.
    text.encode("utf-8")
    return text


def _nesting_depth(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in `value`, counted up to just past `limit`."""
    deepest = 0
    pending = [(value, 1)]
    while pending and deepest <= limit:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _plain_json(value: dict[str, Any]) -> dict[str, Any]:
    # Deeper nesting parses, but pydantic refuses to serialise it in the reply.
    if _nesting_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValueError(f"must not nest lists and objects more than {MAX_JSON_DEPTH} deep")
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except ValueError as exc:
        raise ValueError("must be plain JSON: no NaN or Infinity, no unpaired surrogates") from exc
    return value


def _no_default(schema: dict[str, Any]) -> None:
    # A field that may be left out but not sent as null has no default to show.
    schema.pop("default", None)


def _first_paragraph(schema: dict[str, Any]) -> None:
    # Model docstrings end in code examples, which have no place in the API docs.
    description = schema.get("description")
    if isinstance(description, str):
        schema["description"] = description.split("\n\n", 1)[0]


RecordId = Annotated[int, Field(strict=True, ge=1, le=MAX_RECORD_ID)]
Utf8 = AfterValidator(_utf8_encodable)
Name = Annotated[str, Field(strict=True, max_length=256), Utf8]
Composition = Annotated[str, Field(strict=True, max_length=256), Utf8]
Orientation = Annotated[str, Field(strict=True, max_length=32), Utf8]
SpaceGroup = Annotated[str, Field(strict=True, max_length=32), Utf8]
MpId = Annotated[str, Field(strict=True, max_length=64), Utf8]
ElementSymbol = Annotated[str, Field(strict=True, min_length=1, max_length=16), Utf8]
# bool is a subclass of int, so the strict types are what keeps `true` out.
Amount = (
    Annotated[int, Field(strict=True)] | Annotated[float, Field(strict=True, allow_inf_nan=False)]
)
ElementDict = Annotated[dict[ElementSymbol, Amount], Field(max_length=128)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_plain_json)]
# The SDK's physical-sample replies show `detail_notes_id` with no type; a client may
# send a number or a text id, and the sandbox keeps whichever it was given.
DetailNotesId = RecordId | Annotated[str, Field(strict=True, max_length=256), Utf8]

_REQUEST = ConfigDict(extra="ignore", json_schema_extra=_first_paragraph)
_REPLY = ConfigDict(json_schema_extra=_first_paragraph)


def _not_blank(name: str | None) -> str:
    # The service and the SDK compare names trimmed; a name that trims to nothing
    # could never be found again by name.
    if name is None:
        raise ValueError("may be left out, but not null")
    if not name.strip():
        raise ValueError("must not be empty or only whitespace")
    return name


class LayerFields(BaseModel):
    """A layer as a client sends it, to add it or as part of a stack."""

    model_config = _REQUEST

    layer_id: RecordId = Field(description="Layer position within the stack (1, 2, ...).")
    sample_id: RecordId | None = Field(
        default=None,
        description="ID of the parent target material. Without it the layer is stored "
        "unattached and appears in no listing.",
    )
    composition_string: Composition | None = Field(
        default=None, description="Chemical formula of the layer, e.g. `BaTiO3`."
    )
    element_dict: ElementDict | None = Field(
        default=None,
        description="Element -> count or fraction. Derived from `composition_string` when omitted.",
    )
    orientation: Orientation | None = Field(
        default=None, description="Crystallographic orientation, e.g. `001`, stored as given."
    )
    space_group: SpaceGroup | None = Field(
        default=None,
        description="Hermann-Mauguin symbol. Filled in when omitted and the composition "
        "is a known material.",
    )
    mp_id: MpId | None = Field(
        default=None,
        description="Materials Project id. Filled in when omitted and the composition is "
        "a known material.",
    )
    id: RecordId | None = Field(
        default=None,
        description="Explicit record id for the layer; 409 if it is taken.",
    )


class LayerPatch(BaseModel):
    """Changes to one layer, found by `(sample_id, layer_id)`; fields left out stay."""

    model_config = _REQUEST

    layer_id: RecordId = Field(description="Position of the layer to change.")
    sample_id: RecordId = Field(description="Target material of the layer to change.")
    composition_string: Composition | None = Field(
        default=None,
        description="New formula; re-derives `element_dict`, `space_group` and `mp_id` "
        "unless they are given too.",
    )
    element_dict: ElementDict | None = None
    orientation: Orientation | None = None
    space_group: SpaceGroup | None = None
    mp_id: MpId | None = None


class TargetMaterialFields(BaseModel):
    """The target material itself, as sent to create one."""

    model_config = _REQUEST

    sample_name: Name = Field(description="Name of the target material.")
    substrate: Name = Field(description="Substrate it is grown on, e.g. `SrTiO3`.")
    sample_metadata: JsonObject | None = Field(
        default_factory=dict, description="Free-form JSON object."
    )


class TargetMaterialCreate(BaseModel):
    """A new target material, optionally with its layer stack."""

    model_config = _REQUEST

    sample: TargetMaterialFields
    layers: list[LayerFields] | None = Field(
        default=None,
        description="Layers to create with it, in one transaction. Their `sample_id` is ignored.",
    )


class TargetMaterialPatch(BaseModel):
    """Changes to a target material; fields left out stay as they are."""

    model_config = _REQUEST

    # SkipJsonSchema keeps null out of the published schema, which must not promise
    # what the validator below refuses; None stays the default for a field left out.
    sample_name: Name | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    substrate: Name | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    sample_metadata: JsonObject | None = None

    @field_validator("sample_name", "substrate")
    @classmethod
    def _present_means_not_null(cls, value: str | None) -> str:
        # Runs only for fields that were sent: leaving one out keeps it, but null
        # would blank a field that every target material must have.
        if value is None:
            raise ValueError("may be left out, but not null")
        return value


class Layer(BaseModel):
    """A stored layer."""

    model_config = _REPLY

    id: int = Field(description="Layer record ID.")
    layer_id: int = Field(description="Layer position within the stack.")
    sample_id: int | None = Field(default=None, description="ID of the parent target material.")
    composition_string: str | None = None
    element_dict: dict[str, int | float] | None = None
    orientation: str | None = None
    space_group: str | None = None
    mp_id: str | None = None


class TargetMaterial(BaseModel):
    """A stored target material, without its layers."""

    model_config = _REPLY

    sample_id: int = Field(description="ID of the target material.")
    sample_name: str
    substrate: str
    sample_metadata: dict[str, Any] | None
    detail_notes_id: int | None = Field(description="Always null in the sandbox.")
    user_id: str = Field(description="Stable id of the organisation that owns it.")
    version: str = Field(
        description="Record version as a dotted string, as the API reference shows it "
        "(`0.269.1`); the last part is 1 when created, +1 on each PATCH."
    )
    last_updated: str = Field(description="ISO-8601 UTC timestamp of the last change.")


class TargetMaterialRow(BaseModel):
    """One row of the listing: a layer joined with its target material.

    A target material without layers appears (if at all, see `list_empty_materials`)
    as one row whose layer fields are null.
    """

    model_config = _REPLY

    id: int | None = Field(description="Layer record ID.")
    sample_id: int
    sample_name: str
    substrate: str
    layer_id: int | None
    composition_string: str | None
    element_dict: dict[str, int | float] | None
    orientation: str | None
    space_group: str | None
    mp_id: str | None
    sample_metadata: dict[str, Any] | None
    user_id: str
    version: str
    last_updated: str


class PhysicalSampleCreate(BaseModel):
    """A new physical sample (growth run); its name must be new to the organisation."""

    model_config = _REQUEST

    name: Name = Field(
        description="Name of the growth run, stored trimmed. Unique in the organisation, "
        "compared trimmed and ignoring case; a taken name answers 409. At most 256 "
        "characters as sent; must not be blank."
    )
    growth_instrument_id: RecordId | None = Field(
        default=None, description="Integer ID of the growth instrument (MBE, PLD, ...)."
    )
    sample_id: RecordId | None = Field(
        default=None,
        description="ID of the target material the run aims for; must be one of the "
        "organisation's, else 404.",
    )
    detail_notes_id: DetailNotesId | None = Field(
        default=None, description="ID of the run's notes, stored as given."
    )

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        return _not_blank(value)


class PhysicalSamplePatch(BaseModel):
    """Changes to a physical sample; fields left out stay as they are.

    Its target material is changed through `PATCH
    /physical_samples/{physical_sample_id}/target_material`, not here.
    """

    model_config = _REQUEST

    name: Name | SkipJsonSchema[None] = Field(
        default=None,
        json_schema_extra=_no_default,
        description="New name, stored trimmed; unique again (409 if taken), not blank.",
    )
    growth_instrument_id: RecordId | None = None
    detail_notes_id: DetailNotesId | None = None
    physical_sample_metadata: JsonObject | None = Field(
        default=None, description="Free-form JSON object; replaces the stored one."
    )

    @field_validator("name")
    @classmethod
    def _name_present_and_not_blank(cls, value: str | None) -> str:
        # Runs only when the name was sent: null would blank the name.
        return _not_blank(value)


class TargetMaterialLink(BaseModel):
    """The target material a physical sample aims for, or none."""

    model_config = _REQUEST

    target_material_id: RecordId | None = Field(
        description="ID of one of the organisation's target materials (404 otherwise), or "
        "null to unlink. Required, even as null."
    )


class PhysicalSample(BaseModel):
    """A stored physical sample (growth run), as a create or an update answers it."""

    model_config = _REPLY

    id: str = Field(description="UUID of the physical sample.")
    name: str = Field(description="Name, trimmed.")
    created_datetime: str = Field(description="ISO-8601 UTC timestamp of the create.")
    last_updated: str = Field(description="ISO-8601 UTC timestamp of the last change.")
    version: str = Field(
        description="Record version as a dotted string (`0.269.1`); the last part is 1 "
        "when created, +1 on each PATCH."
    )
    user_id: str = Field(description="Stable id of the person whose key created it.")
    growth_instrument_id: int | None
    sample_id: int | None = Field(description="ID of the linked target material, if any.")
    detail_notes_id: int | str | None
    physical_sample_metadata: dict[str, Any] | None


class LinkedTargetMaterial(BaseModel):
    """The target material a listed physical sample is linked to, as it is now."""

    model_config = _REPLY

    sample_id: int
    sample_name: str
    substrate: str


class GrowthInstrument(BaseModel):
    """The growth instrument of a listed physical sample (the sandbox knows only its id)."""

    model_config = _REPLY

    id: int


class Project(BaseModel):
    """A project a physical sample belongs to (the sandbox has none)."""

    model_config = _REPLY

    id: str
    name: str


class PhysicalSampleListed(PhysicalSample):
    """One physical sample of the listing: the stored fields and related records."""

    owner_id: str = Field(description="Same as `user_id`.")
    owner_name: str = Field(description="Display name of the creator.")
    num_data_items: int = Field(description="Always 0: the sandbox stores no data items.")
    growth_instrument: GrowthInstrument | None
    target_material: LinkedTargetMaterial | None
    projects: list[Project] = Field(description="Always empty in the sandbox.")
    detail_notes: dict[str, Any] | None = Field(description="Always null in the sandbox.")


class ErrorReply(BaseModel):
    """The error envelope, as FastAPI sends it."""

    model_config = _REPLY

    detail: Any = Field(
        description="What went wrong: a string, or for 422 a list of "
        "`{type, loc, msg, input}` items."
    )
