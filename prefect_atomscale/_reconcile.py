"""Decide what a create task does when its record may already exist: adopt, update, create.

The API's answer to a second POST of the same layer position is unknown; assume it
stores a second row. So a task always knows what a position holds before it writes
(step L3 of docs/design/write-protocol.md, in `_protocol`), and what it finds decides:

- a layer equal to the request: adopt it, write nothing (exactly-once);
- a different layer at that position: `if_exists` says what to do: `"error"` (the
  default) refuses, `"update"` changes it with PATCH, `"reuse"` keeps it as it is;
- nothing: create it.

Pure decisions: no I/O, no locks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from prefect_atomscale._exceptions import (
    AtomscaleConflictError,
    checked_choice,
)
from prefect_atomscale._models import Layer
from prefect_atomscale._payloads import LayerRequest

__all__ = [
    "Adopt",
    "Create",
    "IfExists",
    "Update",
    "check_if_exists",
    "decide_layer",
]

IfExists = Literal["error", "update", "reuse"]
"""What `create_layer` does when a different layer already sits at its position.

`"error"` (the default) fails with `AtomscaleConflictError`, `"update"` changes the
layer there to the one asked for (PATCH), `"reuse"` keeps it as it is and returns it.
An equal layer is always adopted, whatever the choice.

Example:
    ```python
    from prefect import flow
    from prefect_atomscale import (
        AtomscaleCredentials,
        IfExists,
        create_layer,
        create_target_material,
    )

    @flow
    def top_layer(if_exists: IfExists) -> str | None:
        credentials = AtomscaleCredentials.load("atomscale")
        sample = create_target_material(
            credentials, "LAO on STO #4", "SrTiO3", layers=[{"composition_string": "LaAlO3"}]
        )
        layer = create_layer(credentials, layer_id=1, sample_id=sample.sample_id,
                             composition_string="SrTiO3", if_exists=if_exists)
        return layer.composition_string

    print(top_layer("reuse"))  # LaAlO3: position 1 keeps what it holds
    ```
"""


@dataclass(frozen=True)
class Adopt:
    """Use this existing layer; write nothing.

    Attributes:
        layer: The layer already at the position.
        equal: Whether it is what the request asks for (else kept by `if_exists="reuse"`).
    """

    layer: Layer
    equal: bool = True


@dataclass(frozen=True)
class Update:
    """Change the existing layer at the position with PATCH.

    Attributes:
        existing: The layer as it is now.
    """

    existing: Layer


@dataclass(frozen=True)
class Create:
    """Nothing is at the position: create the layer."""


def check_if_exists(if_exists: object) -> IfExists:
    """Check an `if_exists` argument locally.

    Args:
        if_exists: The value given.

    Returns:
        The value, typed.

    Raises:
        AtomscaleValidationError: If it is not one of "error", "update", "reuse".
    """
    return checked_choice("if_exists", if_exists, get_args(IfExists))  # type: ignore[return-value]


def decide_layer(
    request: LayerRequest, existing: list[Layer], if_exists: IfExists
) -> Adopt | Update | Create:
    """Decide what to do given the layers already at the request's position.

    Args:
        request: The layer to create.
        existing: Layers at its `(sample_id, layer_id)`, oldest first.
        if_exists: What to do about a different layer there.

    Returns:
        The decision.

    Raises:
        AtomscaleConflictError: A different layer is there and `if_exists` is "error".
    """
    equal = [layer for layer in existing if request.matches(layer)]
    if equal:
        return Adopt(equal[0])
    if not existing:
        return Create()
    current = existing[0]
    if if_exists == "update":
        return Update(current)
    if if_exists == "reuse":
        return Adopt(current, equal=False)
    raise AtomscaleConflictError(
        f"Cannot create {request.describe()}: record {current.id} already sits at that "
        f"position as {current.composition_string or 'a layer without a formula'} "
        f"{current.orientation or ''}".rstrip()
        + ". Pass if_exists='update' to change it to what you asked for, "
        "if_exists='reuse' to keep it, or use another layer_id.",
        detail=current.model_dump(),
    )
