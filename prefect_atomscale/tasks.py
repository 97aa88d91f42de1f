"""Prefect tasks that create target materials and layers, each with a sync and an async twin.

`create_target_material` / `acreate_target_material` and `create_layer` /
`acreate_layer` check their input locally (no request for a mistake that is knowable
here), retry transient faults with Prefect's retry machinery (see `retries`), and cache
their result by account and request (see `caching`), so re-running a finished flow
sends nothing. On a retry, a layer task first looks for the layer its previous attempt
may have written before the reply was lost, and adopts it instead of writing twice.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.runtime import task_run as current_task_run

from prefect_atomscale.caching import DEFAULT_CACHE_EXPIRATION, AtomscaleRequestCache
from prefect_atomscale.credentials import AtomscaleCredentials
from prefect_atomscale.models import Layer, TargetMaterial
from prefect_atomscale.payloads import LayerRequest, TargetMaterialRequest
from prefect_atomscale.pool import async_client_for, client_for
from prefect_atomscale.retries import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAYS,
    RETRY_JITTER_FACTOR,
    aretry_if_transient,
    retry_if_transient,
)

__all__ = ["acreate_layer", "acreate_target_material", "create_layer", "create_target_material"]

# Part of every cache key: bump when what a task sends or returns changes meaning.
TASK_VERSION = "1"

_LAYER_ARGUMENTS = (
    "layer_id",
    "sample_id",
    "composition_string",
    "orientation",
    "element_dict",
    "space_group",
    "mp_id",
)


def _layer_request(inputs: dict[str, Any]) -> LayerRequest:
    return LayerRequest.build(**{name: inputs.get(name) for name in _LAYER_ARGUMENTS})


def _target_material_request(inputs: dict[str, Any]) -> TargetMaterialRequest:
    return TargetMaterialRequest.build(
        sample_name=inputs.get("sample_name"),
        substrate=inputs.get("substrate"),
        sample_metadata=inputs.get("sample_metadata"),
    )


def _layer_run_name() -> str:
    parameters = current_task_run.parameters
    name = f"create-layer-s{parameters.get('sample_id')}-L{parameters.get('layer_id')}"
    formula = parameters.get("composition_string")
    return f"{name}-{formula}" if isinstance(formula, str) and formula.strip() else name


def _target_material_run_name() -> str:
    return f"create-target-material-{current_task_run.parameters.get('sample_name')}"


def _is_retry() -> bool:
    context = TaskRunContext.get()
    return context is not None and context.task_run.run_count > 1


def _settings(name: str, build: Any, condition: Any, run_name: Any) -> dict[str, Any]:
    """The retry and cache settings shared by a task and its async twin."""
    return {
        "name": name,
        "task_run_name": run_name,
        "retries": DEFAULT_RETRIES,
        "retry_delay_seconds": DEFAULT_RETRY_DELAYS,
        "retry_jitter_factor": RETRY_JITTER_FACTOR,
        "retry_condition_fn": condition,
        "cache_policy": AtomscaleRequestCache(
            task_name=name.removeprefix("a"), version=TASK_VERSION, build_request=build
        ),
        "cache_expiration": DEFAULT_CACHE_EXPIRATION,
        "persist_result": True,
    }


def _adopted(request: LayerRequest, existing: list[Layer]) -> Layer | None:
    """The layer an earlier attempt already wrote, if one matches this request."""
    matching = [layer for layer in existing if request.matches(layer)]
    if not matching:
        return None
    get_run_logger().info(
        "Found %s already created (record %s) by an earlier attempt; using it instead of "
        "writing again.",
        request.describe(),
        matching[0].id,
    )
    return request.complete(matching[0])


def _log_created(request: LayerRequest, layer: Layer) -> Layer:
    get_run_logger().info(
        "Created %s as record %s (space group %s, %s).",
        request.describe(),
        layer.id,
        layer.space_group or "not matched",
        layer.mp_id or "no Materials Project id",
    )
    return request.complete(layer)


@task(
    **_settings(
        "create_target_material",
        _target_material_request,
        retry_if_transient,
        _target_material_run_name,
    )
)
def create_target_material(
    credentials: AtomscaleCredentials,
    sample_name: str,
    substrate: str,
    sample_metadata: dict[str, Any] | None = None,
) -> TargetMaterial:
    """Create a target material ("sample"): a name, a substrate, and metadata.

    Layers are added afterwards with `create_layer`, using the returned `sample_id`.
    Cached by account and arguments: calling it again with the same arguments returns
    the same target material without a request.

    Args:
        credentials: The Atomscale account to create it in.
        sample_name: Its name, e.g. `BTO on STO #12`.
        substrate: The substrate, e.g. `SrTiO3`.
        sample_metadata: Free-form JSON metadata, e.g. `{"growth": "PLD"}`.

    Returns:
        The created target material.

    Raises:
        AtomscaleValidationError: For an empty name or substrate, or metadata that is not
            a JSON object; nothing is sent.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import AtomscaleCredentials, create_target_material

        @flow
        def make_sample() -> int:
            credentials = AtomscaleCredentials.load("atomscale")
            return create_target_material(credentials, "BTO on STO", "SrTiO3").sample_id
        ```
    """
    request = TargetMaterialRequest.build(
        sample_name=sample_name, substrate=substrate, sample_metadata=sample_metadata
    )
    material = client_for(credentials).create_target_material(request)
    get_run_logger().info("Created %s as sample_id %s.", request.describe(), material.sample_id)
    return material


@task(
    **_settings(
        "acreate_target_material",
        _target_material_request,
        aretry_if_transient,
        _target_material_run_name,
    )
)
async def acreate_target_material(
    credentials: AtomscaleCredentials,
    sample_name: str,
    substrate: str,
    sample_metadata: dict[str, Any] | None = None,
) -> TargetMaterial:
    """Create a target material ("sample"); the async twin of `create_target_material`.

    Args:
        credentials: The Atomscale account to create it in.
        sample_name: Its name, e.g. `BTO on STO #12`.
        substrate: The substrate, e.g. `SrTiO3`.
        sample_metadata: Free-form JSON metadata, e.g. `{"growth": "PLD"}`.

    Returns:
        The created target material.

    Raises:
        AtomscaleValidationError: For an empty name or substrate, or metadata that is not
            a JSON object; nothing is sent.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import AtomscaleCredentials, acreate_target_material

        @flow
        async def make_sample() -> int:
            credentials = await AtomscaleCredentials.aload("atomscale")
            material = await acreate_target_material(credentials, "BTO on STO", "SrTiO3")
            return material.sample_id
        ```
    """
    request = TargetMaterialRequest.build(
        sample_name=sample_name, substrate=substrate, sample_metadata=sample_metadata
    )
    material = await async_client_for(credentials).create_target_material(request)
    get_run_logger().info("Created %s as sample_id %s.", request.describe(), material.sample_id)
    return material


@task(**_settings("create_layer", _layer_request, retry_if_transient, _layer_run_name))
def create_layer(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
    element_dict: dict[str, int | float] | None = None,
    space_group: str | None = None,
    mp_id: str | None = None,
) -> Layer:
    """Add one layer to a target material's stack (`POST /target-materials/layers/`).

    The formula and orientation are checked before anything is sent; the orientation
    is sent in the bare form the API uses (`(001)` becomes `001`). Transient faults are
    retried; on a retry the task first looks for the layer its earlier attempt may have
    written, so a lost reply never creates the layer twice. Cached by account and
    request: calling it again with the same arguments returns the layer without a POST.

    Args:
        credentials: The Atomscale account.
        layer_id: Position in the stack, 1 for the first layer.
        sample_id: The parent target material, from `create_target_material`.
        composition_string: Chemical formula, e.g. `BaTiO3` or `(La0.7Sr0.3)MnO3`.
        orientation: Miller indices, e.g. `001`, `(1-10)`, `[110]` or `11-20`.
        element_dict: Element -> amount; the service derives it from the formula if
            omitted, and the returned layer carries the local parse if it does not.
        space_group: Hermann-Mauguin symbol, e.g. `P4mm`; filled in by the service if
            it matches the formula.
        mp_id: Materials Project id, e.g. `mp-5020`; filled in by the service if matched.

    Returns:
        The created layer.

    Raises:
        InvalidCompositionError: The formula cannot be parsed; nothing is sent.
        InvalidOrientationError: The orientation is not Miller indices; nothing is sent.
        AtomscaleValidationError: Any other bad argument (nothing sent), or a 400/422.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import AtomscaleCredentials, create_layer, create_target_material

        @flow
        def bto_on_sto() -> None:
            credentials = AtomscaleCredentials.load("atomscale")
            sample = create_target_material(credentials, "BTO on STO", "SrTiO3")
            create_layer(credentials, layer_id=1, sample_id=sample.sample_id,
                         composition_string="BaTiO3", orientation="(001)")
        ```
    """
    request = LayerRequest.build(
        layer_id=layer_id,
        sample_id=sample_id,
        composition_string=composition_string,
        orientation=orientation,
        element_dict=element_dict,
        space_group=space_group,
        mp_id=mp_id,
    )
    client = client_for(credentials)
    if _is_retry() and (adopted := _adopted(request, client.find_layers(request))):
        return adopted
    return _log_created(request, client.create_layer(request))


@task(**_settings("acreate_layer", _layer_request, aretry_if_transient, _layer_run_name))
async def acreate_layer(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
    element_dict: dict[str, int | float] | None = None,
    space_group: str | None = None,
    mp_id: str | None = None,
) -> Layer:
    """Add one layer to a target material's stack; the async twin of `create_layer`.

    Args:
        credentials: The Atomscale account.
        layer_id: Position in the stack, 1 for the first layer.
        sample_id: The parent target material, from `acreate_target_material`.
        composition_string: Chemical formula, e.g. `BaTiO3` or `(La0.7Sr0.3)MnO3`.
        orientation: Miller indices, e.g. `001`, `(1-10)`, `[110]` or `11-20`.
        element_dict: Element -> amount; derived by the service if omitted.
        space_group: Hermann-Mauguin symbol, e.g. `P4mm`.
        mp_id: Materials Project id, e.g. `mp-5020`.

    Returns:
        The created layer.

    Raises:
        InvalidCompositionError: The formula cannot be parsed; nothing is sent.
        InvalidOrientationError: The orientation is not Miller indices; nothing is sent.
        AtomscaleValidationError: Any other bad argument (nothing sent), or a 400/422.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        import asyncio
        from prefect import flow
        from prefect_atomscale import AtomscaleCredentials, acreate_layer

        @flow
        async def add_layers(sample_id: int) -> None:
            credentials = await AtomscaleCredentials.aload("atomscale")
            await asyncio.gather(*(
                acreate_layer(credentials, layer_id=i, sample_id=sample_id,
                              composition_string=f, orientation="001")
                for i, f in enumerate(["SrRuO3", "BaTiO3"], start=1)
            ))
        ```
    """
    request = LayerRequest.build(
        layer_id=layer_id,
        sample_id=sample_id,
        composition_string=composition_string,
        orientation=orientation,
        element_dict=element_dict,
        space_group=space_group,
        mp_id=mp_id,
    )
    client = async_client_for(credentials)
    if _is_retry() and (adopted := _adopted(request, await client.find_layers(request))):
        return adopted
    return _log_created(request, await client.create_layer(request))
