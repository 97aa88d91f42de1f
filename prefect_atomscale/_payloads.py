"""Check and normalise what a user asks to create, before anything is sent.

A `LayerRequest` or `TargetMaterialRequest` is built from task arguments; building it
raises an `AtomscaleValidationError` for anything knowable locally (a bad formula, an
orientation that is not Miller indices, a layer position of 0). What it holds is the
canonical request body: the same body for the same intent, which is what the cache key
and the exactly-once check compare.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from prefect_atomscale._composition import ELEMENTS, parse_composition
from prefect_atomscale._exceptions import (
    AtomscaleProtocolError,
    AtomscaleValidationError,
    InvalidCompositionError,
    InvalidOrientationError,
)
from prefect_atomscale._models import Layer, TargetMaterial
from prefect_atomscale._orientation import normalize_orientation

__all__ = [
    "OWNER_KEY",
    "LayerRequest",
    "StackRequest",
    "TargetMaterialRequest",
    "owner_token",
    "token_of",
]

OWNER_KEY = "prefect_atomscale"
"""The key in `sample_metadata` under which the tasks write their ownership token.

A target material the tasks create carries `{"prefect_atomscale": {"owner": TOKEN,
"user_id": ID}}` in its metadata, where TOKEN is `owner_token(account, sample_name)` and
ID the creator's user id when known. The mark says "made by prefect-atomscale"; whose it
is, is the service's `user_id` (see `_ownership` and docs/design/write-protocol.md, rule
O), so a colleague's material of the same name is never taken, extended or changed, and
a copied mark transfers nothing. User metadata may not use this key."""

# Limits the sandbox enforces too; checking here turns a 422 round trip into a local error.
MAX_TEXT = 256
_MP_ID = re.compile(r"^[a-z]+-\d+$")
# Values quoted in messages are cut short: a message must not copy a 10,000-character input.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _shown(value: Any) -> str:
    return _REPR.repr(value)


@dataclass(frozen=True)
class LayerRequest:
    """A checked request to create one layer; `body` is what goes over the wire.

    Attributes:
        sample_id: The parent target material.
        layer_id: The layer's position in the stack.
        body: The JSON body: given fields only, orientation in bare form.
        elements: The formula parsed locally, used when the server returns none.

    Example:
        ```python
        from prefect_atomscale import LayerRequest

        request = LayerRequest.build(sample_id=42, layer_id=1, orientation="(001)")
        print(request.body)  # {'layer_id': 1, 'sample_id': 42, 'orientation': '001'}
        ```
    """

    sample_id: int
    layer_id: int
    body: Mapping[str, Any]
    elements: Mapping[str, int | float] | None
    parent: str | None = None

    @classmethod
    def build(
        cls,
        *,
        sample_id: Any,
        layer_id: Any,
        composition_string: Any = None,
        orientation: Any = None,
        element_dict: Any = None,
        space_group: Any = None,
        mp_id: Any = None,
        parent: str | None = None,
    ) -> LayerRequest:
        """Check the arguments of `create_layer` and build the request.

        Args:
            sample_id: Id of the parent target material, an integer >= 1.
            layer_id: Position in the stack, an integer >= 1.
            composition_string: A chemical formula such as `BaTiO3`.
            orientation: Miller indices such as `001`, `(1-10)` or `11-20`.
            element_dict: Element -> amount; derived by the server if omitted.
            space_group: Hermann-Mauguin symbol; filled in by the server if matched.
            mp_id: Materials Project id such as `mp-5020`.
            parent: Names a target material not created yet, whose layer this is
                (`sample_id` is then None and not sent: the service gives it).

        Returns:
            The checked request.

        Raises:
            AtomscaleValidationError: For any argument that cannot be sent; subclasses
                `InvalidCompositionError` and `InvalidOrientationError` for those two.

        Example:
            ```python
            from prefect_atomscale import LayerRequest

            print(LayerRequest.build(sample_id=1, layer_id=2, composition_string="GaN").body)
            # {'layer_id': 2, 'sample_id': 1, 'composition_string': 'GaN'}
            ```
        """
        owner = parent or f"target material {_shown(sample_id)}"
        where = f"Layer {_shown(layer_id)} of {owner}"
        layer_position = _positive_int(
            "layer_id", layer_id, where, "the layer's position in the stack, 1 for the first"
        )
        body: dict[str, Any] = {"layer_id": layer_position}
        material_id = 0  # a target material not created yet has no id to send
        if parent is None or sample_id is not None:
            material_id = _positive_int(
                "sample_id", sample_id, where, "the sample_id that create_target_material returned"
            )
            owner = parent or f"target material {material_id}"
            body["sample_id"] = material_id
        where = f"Layer {layer_position} of {owner}"
        elements = None
        if composition_string is not None:
            # The parser checks everything about a formula (text, empty, length), so that
            # any bad formula is an InvalidCompositionError, as parse_composition raises.
            try:
                elements = parse_composition(composition_string)
            except InvalidCompositionError as exc:
                raise InvalidCompositionError(
                    f"{where}: {exc.message}",
                    formula=exc.formula,
                    position=exc.position,
                ) from None
            body["composition_string"] = composition_string.strip()
        if orientation is not None:
            try:
                body["orientation"] = normalize_orientation(orientation)
            except InvalidOrientationError as exc:
                raise InvalidOrientationError(
                    f"{where}: {exc.message}", orientation=exc.orientation
                ) from None
        if element_dict is not None:
            body["element_dict"] = _element_dict(element_dict, where)
        if space_group is not None:
            body["space_group"] = _text("space_group", space_group, where)
        if mp_id is not None:
            mp = _text("mp_id", mp_id, where)
            if not _MP_ID.match(mp):
                raise AtomscaleValidationError(
                    f"{where}: mp_id {mp!r} is not a Materials Project id. Write "
                    "it as on materialsproject.org, e.g. 'mp-5020', or leave it out to let "
                    "the service match one."
                )
            body["mp_id"] = mp
        return cls(
            sample_id=material_id,
            layer_id=layer_position,
            body=body,
            elements=elements,
            parent=parent,
        )

    def describe(self) -> str:
        """Name the layer for messages and logs, e.g. `layer 3 (BaTiO3 001) of target material 42`.

        Returns:
            A short human description.

        Example:
            ```python
            from prefect_atomscale import LayerRequest

            request = LayerRequest.build(sample_id=42, layer_id=3, composition_string="BaTiO3")
            print(request.describe())  # layer 3 (BaTiO3) of target material 42
            ```
        """
        what = " ".join(
            str(self.body[field])
            for field in ("composition_string", "orientation")
            if field in self.body
        )
        label = f" ({what})" if what else ""
        owner = self.parent or f"target material {self.sample_id}"
        return f"layer {self.layer_id}{label} of {owner}"

    def canonical_json(self) -> str:
        """Return the body as canonical JSON: same intent, same text.

        Returns:
            The body with sorted keys and no insignificant whitespace.

        Example:
            ```python
            from prefect_atomscale import LayerRequest

            print(LayerRequest.build(sample_id=1, layer_id=1).canonical_json())
            # {"layer_id":1,"sample_id":1}
            ```
        """
        return json.dumps(self.body, sort_keys=True, separators=(",", ":"))

    def matches(self, layer: Layer) -> bool:
        """Tell whether an existing layer is the one this request would create.

        Compares position, parent, and every field the request sets.

        Args:
            layer: A layer read back from the service.

        Returns:
            True if the layer already is what this request asks for.

        Example:
            ```python
            from prefect_atomscale import Layer
            from prefect_atomscale import LayerRequest

            request = LayerRequest.build(sample_id=1, layer_id=1, composition_string="GaN")
            print(request.matches(Layer(id=7, layer_id=1, sample_id=1, composition_string="GaN")))
            # True
            ```
        """
        existing = layer.model_dump()
        return all(existing.get(field) == value for field, value in self.body.items())

    def complete(self, layer: Layer) -> Layer:
        """Fill in `element_dict` from the local parse when the server returned none.

        Args:
            layer: The layer the service answered with.

        Returns:
            The same layer, with `element_dict` set where it could be.

        Example:
            ```python
            from prefect_atomscale import Layer
            from prefect_atomscale import LayerRequest

            request = LayerRequest.build(sample_id=1, layer_id=1, composition_string="GaN")
            print(request.complete(Layer(id=7, layer_id=1, sample_id=1)).element_dict)
            # {'Ga': 1, 'N': 1}
            ```
        """
        if layer.element_dict is not None or self.elements is None:
            return layer
        return layer.model_copy(update={"element_dict": dict(self.elements)})


_LAYER_FIELDS = (
    "layer_id",
    "composition_string",
    "orientation",
    "element_dict",
    "space_group",
    "mp_id",
)


@dataclass(frozen=True)
class StackRequest:
    """The checked requests of one stack, in the order given.

    Attributes:
        sample_id: The target material (0 for one not created yet).
        requests: One checked request per layer.
    """

    sample_id: int
    requests: tuple[LayerRequest, ...]

    @classmethod
    def build(cls, sample_id: Any, layers: Any, parent: str | None = None) -> StackRequest:
        """Check a list of layers as `create_layers` takes it; `parent` as for `LayerRequest`.

        Raises:
            AtomscaleValidationError: For anything wrong anywhere in the list.
        """
        owner = parent or f"target material {sample_id!r}"
        if isinstance(layers, str | bytes) or not isinstance(layers, Sequence) or not layers:
            raise _invalid(
                f"layers must be a non-empty list of layers for {owner}, "
                f"each a dict of create_layer's arguments, e.g. "
                f"[{{'composition_string': 'BaTiO3', 'orientation': '001'}}]; got {layers!r:.80}."
            )
        requests = []
        for index, layer in enumerate(layers):
            if not isinstance(layer, Mapping):
                raise _invalid(
                    f"Layer {index + 1} of the list for {owner} must be "
                    f"a dict of create_layer's arguments, got {type(layer).__name__}."
                )
            unknown = set(layer) - set(_LAYER_FIELDS)
            if unknown:
                raise _invalid(
                    f"Layer {index + 1} of the list for {owner} has "
                    f"unknown fields {sorted(unknown)}; the fields are {', '.join(_LAYER_FIELDS)}."
                )
            arguments = {"layer_id": index + 1, **layer}
            requests.append(LayerRequest.build(sample_id=sample_id, parent=parent, **arguments))
        positions = [request.layer_id for request in requests]
        if len(set(positions)) != len(positions):
            twice = sorted({p for p in positions if positions.count(p) > 1})
            raise _invalid(
                f"The stack for {owner} puts two layers at position(s) "
                f"{twice}; give each layer its own layer_id."
            )
        return cls(sample_id=requests[0].sample_id, requests=tuple(requests))

    def canonical_json(self) -> str:
        """The stack as canonical JSON, for cache keys."""
        return "[" + ",".join(request.canonical_json() for request in self.requests) + "]"

    def describe(self) -> str:
        """Name the stack for messages."""
        return f"the {len(self.requests)}-layer stack of target material {self.sample_id}"

    def in_order(self, written: list[Layer]) -> list[Layer]:
        """The written layers, one per request in the given order, completed locally."""
        by_position: dict[int, Layer] = {}
        for layer in written:  # oldest first: keep the first record at each position
            by_position.setdefault(layer.layer_id, layer)
        missing = [r.layer_id for r in self.requests if r.layer_id not in by_position]
        if missing:
            raise AtomscaleProtocolError(
                f"After writing {self.describe()}, the service does not list positions "
                f"{missing[:10]}; check base_url, or run again to write what is missing."
            )
        return [request.complete(by_position[request.layer_id]) for request in self.requests]


def _invalid(message: str) -> AtomscaleValidationError:
    return AtomscaleValidationError(message)


def owner_token(account: str, sample_name: str) -> str:
    """The ownership token of a target material: same account and name, same token.

    Args:
        account: The key fingerprint (`AtomscaleCredentials.key_fingerprint()`), itself
            a hash, so the token reveals nothing of the API key.
        sample_name: The target material's name, stripped.

    Returns:
        32 hex digits.
    """
    material = "\0".join(["prefect-atomscale owner v1", account, sample_name])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def token_of(metadata: Mapping[str, Any] | None) -> str | None:
    """The ownership token a target material's metadata carries, if any."""
    mark = (metadata or {}).get(OWNER_KEY)
    owner = mark.get("owner") if isinstance(mark, Mapping) else None
    return owner if isinstance(owner, str) else None


@dataclass(frozen=True)
class TargetMaterialRequest:
    """A checked request to create one target material.

    Attributes:
        sample_name: The name, stripped of surrounding whitespace.
        substrate: The substrate, stripped of surrounding whitespace.
        body: The JSON body, `{"sample": {...}}`, and `"layers"` when it has any.
        metadata: The user's metadata, without the ownership token.
        owner: The ownership token written into the metadata, if any.
        layers: Layers created together with it, in the same request.

    Example:
        ```python
        from prefect_atomscale import TargetMaterialRequest

        print(TargetMaterialRequest.build(sample_name="BTO/STO", substrate="SrTiO3").body)
        ```
    """

    sample_name: str
    substrate: str
    body: Mapping[str, Any]
    metadata: Mapping[str, Any]
    owner: str | None = None
    layers: tuple[LayerRequest, ...] = ()

    @classmethod
    def build(
        cls, *, sample_name: Any, substrate: Any, sample_metadata: Any = None
    ) -> TargetMaterialRequest:
        """Check the arguments of `create_target_material` and build the request.

        Args:
            sample_name: A non-empty name.
            substrate: A non-empty substrate, e.g. `SrTiO3`.
            sample_metadata: A JSON-serialisable mapping, or None for `{}`.

        Returns:
            The checked request.

        Raises:
            AtomscaleValidationError: For an empty or non-text name or substrate, or
                metadata that is not a JSON object.

        Example:
            ```python
            from prefect_atomscale import TargetMaterialRequest

            request = TargetMaterialRequest.build(sample_name="GaN film", substrate="Al2O3")
            print(request.describe())  # target material 'GaN film' on Al2O3
            ```
        """
        where = f"Target material {_shown(sample_name)}"
        name = _text("sample_name", sample_name, where, required="Give the target material a name")
        base = _text("substrate", substrate, where, required="Give the substrate, e.g. 'SrTiO3'")
        metadata = {} if sample_metadata is None else sample_metadata
        if not isinstance(metadata, Mapping):
            raise AtomscaleValidationError(
                f"Target material {name!r}: sample_metadata must be a mapping (a JSON "
                f"object), got {type(metadata).__name__}. Pass a dict such as "
                "{'growth': 'PLD'} or leave it out."
            )
        try:
            metadata = json.loads(json.dumps(dict(metadata), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise AtomscaleValidationError(
                f"Target material {name!r}: sample_metadata cannot be sent as JSON ({exc}). "
                "Use only strings, numbers, booleans, None, lists and dicts."
            ) from None
        if OWNER_KEY in metadata:
            raise AtomscaleValidationError(
                f"Target material {name!r}: sample_metadata may not have the key "
                f"{OWNER_KEY!r}; prefect-atomscale writes its ownership token there. Rename "
                "that key."
            )
        body = {"sample": {"sample_name": name, "substrate": base, "sample_metadata": metadata}}
        return cls(sample_name=name, substrate=base, body=body, metadata=metadata)

    def owned_by(self, account: str, user_id: str | None = None) -> TargetMaterialRequest:
        """Return this request with the ownership mark in its metadata.

        Args:
            account: The key fingerprint (`AtomscaleCredentials.key_fingerprint()`).
            user_id: The creator's user id, recorded in the mark when known.

        Returns:
            The same request, marked (see `OWNER_KEY`).

        Example:
            ```python
            from prefect_atomscale import TargetMaterialRequest

            request = TargetMaterialRequest.build(sample_name="X", substrate="MgO")
            print(request.owned_by("0123abcd").body["sample"]["sample_metadata"])
            ```
        """
        owner = owner_token(account, self.sample_name)
        mark: dict[str, Any] = {"owner": owner}
        if user_id is not None:
            mark["user_id"] = user_id
        metadata = {**self.metadata, OWNER_KEY: mark}
        sample = {**self.body["sample"], "sample_metadata": metadata}
        return replace(self, owner=owner, body={**self.body, "sample": sample})

    def with_layers(self, layers: Sequence[LayerRequest]) -> TargetMaterialRequest:
        """Return this request with layers to create in the same `POST /target-materials/`.

        Args:
            layers: Checked layer requests; their `sample_id` is not sent (the service
                gives the new material's).

        Returns:
            The same request, with `layers` in its body.

        Example:
            ```python
            from prefect_atomscale import LayerRequest, TargetMaterialRequest

            request = TargetMaterialRequest.build(sample_name="X", substrate="MgO")
            layer = LayerRequest.build(sample_id=1, layer_id=1, composition_string="TiO2")
            print(request.with_layers([layer]).body["layers"])
            # [{'layer_id': 1, 'composition_string': 'TiO2'}]
            ```
        """
        sent = [
            {field: value for field, value in layer.body.items() if field != "sample_id"}
            for layer in layers
        ]
        return replace(self, layers=tuple(layers), body={**self.body, "layers": sent})

    def describe(self) -> str:
        """Name the target material for messages and logs.

        Returns:
            E.g. `target material 'BTO/STO' on SrTiO3`.

        Example:
            ```python
            from prefect_atomscale import TargetMaterialRequest

            print(TargetMaterialRequest.build(sample_name="X", substrate="MgO").describe())
            # target material 'X' on MgO
            ```
        """
        return f"target material {self.sample_name!r} on {self.substrate}"

    def matches(self, material: TargetMaterial) -> bool:
        """Tell whether an existing target material is the one this request would create.

        Metadata is compared without the ownership mark. Whose the material is, is a
        separate question (rule O of the write protocol), which this does not answer.

        Args:
            material: A target material read back from the service.

        Returns:
            True if name, substrate and metadata are all equal.

        Example:
            ```python
            from prefect_atomscale import TargetMaterial
            from prefect_atomscale import TargetMaterialRequest

            request = TargetMaterialRequest.build(sample_name="X", substrate="MgO")
            print(request.matches(TargetMaterial(sample_id=1, sample_name="X", substrate="MgO")))
            # True
            ```
        """
        stored = dict(material.sample_metadata or {})
        stored.pop(OWNER_KEY, None)
        return bool(
            (material.sample_name or "").strip() == self.sample_name
            and (material.substrate or "").strip() == self.substrate
            and stored == self.metadata
        )

    def complete(self, material: TargetMaterial) -> TargetMaterial:
        """Fill in what a create reply left out (name, substrate, metadata) from the request.

        Args:
            material: The target material the service answered with.

        Returns:
            The same target material, with the fields it lacked set as they were sent.

        Example:
            ```python
            from prefect_atomscale import TargetMaterial
            from prefect_atomscale import TargetMaterialRequest

            request = TargetMaterialRequest.build(sample_name="X", substrate="MgO")
            print(request.complete(TargetMaterial(sample_id=3)).sample_name)  # X
            ```
        """
        sample = self.body["sample"]
        missing = {
            field: sample[field]
            for field, value in (
                ("sample_name", material.sample_name),
                ("substrate", material.substrate),
                ("sample_metadata", material.sample_metadata),
            )
            if value is None
        }
        return material.model_copy(update=missing) if missing else material

    def canonical_json(self) -> str:
        """Return the body as canonical JSON: same intent, same text.

        Returns:
            The body with sorted keys and no insignificant whitespace.

        Example:
            ```python
            from prefect_atomscale import TargetMaterialRequest

            print(TargetMaterialRequest.build(sample_name="X", substrate="MgO").canonical_json())
            # {"sample":{"sample_metadata":{},"sample_name":"X","substrate":"MgO"}}
            ```
        """
        return json.dumps(self.body, sort_keys=True, separators=(",", ":"))


def _positive_int(name: str, value: Any, where: str, meaning: str) -> int:
    # bool is an int subclass; True as a layer position is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        shown = "nothing" if value is None else _shown(value)
        raise AtomscaleValidationError(
            f"{where}: {name} must be a whole number >= 1 ({meaning}), got {shown}."
        )
    return value


def _text(name: str, value: Any, where: str, required: str | None = None) -> str:
    """Check one text field; `required` says what to give when it may not be left out."""
    if not isinstance(value, str):
        raise AtomscaleValidationError(
            f"{where}: {name} must be text, got {type(value).__name__} {_shown(value)}."
        )
    text = value.strip()
    if not text:
        fix = required or "Give a value, or leave the argument out"
        raise AtomscaleValidationError(f"{where}: {name} is empty. {fix}.")
    if len(text) > MAX_TEXT:
        raise AtomscaleValidationError(
            f"{where}: {name} is {len(text)} characters long; the limit is {MAX_TEXT}."
        )
    return text


def _element_dict(value: Any, where: str) -> dict[str, int | float]:
    if not isinstance(value, Mapping) or not value:
        raise AtomscaleValidationError(
            f"{where}: element_dict must be a non-empty mapping of element to "
            f"amount, e.g. {{'Ba': 1, 'Ti': 1, 'O': 3}}; got {_shown(value)}. Or leave it out and "
            "the service derives it from composition_string."
        )
    for element, amount in value.items():
        if element not in ELEMENTS:
            raise AtomscaleValidationError(
                f"{where}: element_dict has {element!r}, which is not an element "
                "symbol. Write symbols as in the periodic table, e.g. 'Ba', 'O'."
            )
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or not (math.isfinite(amount) and amount > 0)
        ):
            raise AtomscaleValidationError(
                f"{where}: element_dict[{element!r}] must be a positive number, got {amount!r}."
            )
    return dict(value)
