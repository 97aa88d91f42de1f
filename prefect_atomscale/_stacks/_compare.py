"""Comparing a stack file with what the account holds: absent, complete, partial, conflict."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from prefect_atomscale._exceptions import LayerDifference
from prefect_atomscale._models import Layer, TargetMaterial, TargetMaterialRow
from prefect_atomscale._payloads import LayerRequest
from prefect_atomscale._reconcile import Adopt, Create, decide_layer
from prefect_atomscale._stacks._spec import StackLayer, StackSpec

__all__ = ["ExistingStack", "compare_with_existing"]


class ExistingStack(BaseModel):
    """What an account already holds under a stack file's name.

    Attributes:
        status: `absent` (no target material of that name), `complete` (one with all
            the file's layers), `partial` (one with some of them and nothing else), or
            `conflict` (only ones with different layers or another substrate).
        material: The matching target material, for `complete` and `partial`.
        layers: Its layers that match the file, by position.
        missing: Positions still to create, for `partial`.
        problems: What differs, for `conflict`, one sentence each.
        differences: The layers that differ, for `conflict`, position by position.
    """

    model_config = ConfigDict(frozen=True)

    status: Literal["absent", "complete", "partial", "conflict"]
    material: TargetMaterial | None = None
    layers: dict[int, Layer] = Field(default_factory=dict)
    missing: list[int] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    differences: list[LayerDifference] = Field(default_factory=list)


class _Owner(Protocol):
    def owns(self, sample_name: Any, metadata: Any, user_id: Any) -> bool: ...


def compare_with_existing(
    spec: StackSpec, rows: Iterable[TargetMaterialRow], owner: _Owner | None = None
) -> ExistingStack:
    """Tell whether a stack was already created, from the rows of `GET /target-materials/`.

    A target material counts as the file's when its name is the file's name and, when
    `owner` is given, it is the owner's (`_ownership.Owner.owns`, rule O of the write
    protocol): a colleague's material of the same name is then not the file's at all. It is
    complete when it sits on the file's substrate and every position holds a layer
    that matches the file (formula, orientation, and any field the file sets);
    partial when some positions are still empty and nothing differs. Several of the
    same name: a complete one wins, then a single partial one. The list shows only
    target materials that have layers, so one created without any counts as absent.

    Args:
        spec: The stack file.
        rows: The account's rows, one per layer.
        owner: Whose the file's target material must be (an `_ownership.Owner`); None
            to match by name alone.

    Returns:
        What exists.
    """
    candidates: dict[int, list[TargetMaterialRow]] = {}
    for row in rows:
        if row.sample_id is None or (row.sample_name or "").strip() != spec.name:
            continue
        if owner is None or owner.owns(row.sample_name, row.sample_metadata, row.user_id):
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
        differences=[difference for result in results for difference in result.differences],
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
    differences: list[LayerDifference] = []
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
        # The tasks' own rule; "reuse" reports a different layer instead of raising.
        decision = decide_layer(request, found, "reuse")
        if isinstance(decision, Create):
            missing.append(item.position)
        elif isinstance(decision, Adopt) and decision.equal:
            present[item.position] = request.complete(decision.layer)
        else:
            other = decision.layer if isinstance(decision, Adopt) else decision.existing
            there = " ".join(filter(None, [other.composition_string, other.orientation]))
            problems.append(
                f"L{item.position} is {there or 'empty'}, the file says {item.describe()}"
            )
            differences.append(
                LayerDifference(sample_id, item.position, there or "empty", item.describe())
            )
    beyond = sorted(position for position in at if position > len(expected))
    if beyond:
        problems.append(
            f"it has layers beyond the file's {len(expected)}: "
            + ", ".join(f"L{position}" for position in beyond[:5])
        )
    if problems:
        return ExistingStack(
            status="conflict", material=material, problems=problems, differences=differences
        )
    status: Literal["complete", "partial"] = "partial" if missing else "complete"
    return ExistingStack(status=status, material=material, layers=present, missing=missing)
