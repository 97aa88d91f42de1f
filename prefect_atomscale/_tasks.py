"""Prefect tasks that create target materials and layers, each with a sync and an async twin.

`create_target_material` / `acreate_target_material` and `create_layer` /
`acreate_layer` check their input locally (no request for a mistake that is knowable
here), retry transient faults with Prefect's retry machinery (see `_retries`), and cache
their result by account and request (see `_caching`), so re-running a finished flow
sends nothing. They never create a record twice: before writing they look for one that
may already exist (see `_reconcile`), and runs of the same request take turns through
the cache lock, also across processes (see `_locking`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

from prefect import task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.runtime import task_run as current_task_run
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

from prefect_atomscale import _events, _reconcile
from prefect_atomscale._caching import (
    DEFAULT_CACHE_EXPIRATION,
    AtomscaleRequestCache,
    invalidate_position,
    require_target_material_epoch,
)
from prefect_atomscale._client import AsyncAtomscaleClient, AtomscaleClient
from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import (
    AtomscaleConfigurationError,
    AtomscaleError,
    AtomscaleRateLimitError,
    AtomscaleValidationError,
)
from prefect_atomscale._locking import CacheLockManager
from prefect_atomscale._models import Layer, TargetMaterial
from prefect_atomscale._payloads import LayerRequest, StackRequest, TargetMaterialRequest
from prefect_atomscale._pool import async_client_for, client_for
from prefect_atomscale._reconcile import (
    Adopt,
    Create,
    IfExists,
    Update,
    check_if_exists,
    decide_layer,
    mark_unsettled,
    settle_delay,
)
from prefect_atomscale._retries import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAYS,
    RETRY_JITTER_FACTOR,
    aretry_if_transient,
    retry_if_transient,
)
from prefect_atomscale._views import StackView, material_views

__all__ = [
    "TASK_VERSION",
    "acreate_layer",
    "acreate_target_material",
    "async_request_client",
    "aunsettled_on_failure",
    "create_layer",
    "create_target_material",
    "is_retry",
    "pending",
    "request_client",
    "settle_if_retry",
    "task_options",
    "unsettled_on_failure",
]

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
    request = TargetMaterialRequest.build(
        sample_name=inputs.get("sample_name"),
        substrate=inputs.get("substrate"),
        sample_metadata=inputs.get("sample_metadata"),
    )
    layers = inputs.get("layers")
    if layers is None:
        return request
    stack = StackRequest.build(None, layers, parent=request.describe())
    return request.with_layers(stack.requests)


def _short(value: object, limit: int = 40) -> str:
    # Run names are shown in the UI and stored by Prefect: keep a huge input out of them.
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _layer_run_name() -> str:
    parameters = current_task_run.parameters
    name = (
        f"create-layer-s{_short(parameters.get('sample_id'))}-L{_short(parameters.get('layer_id'))}"
    )
    formula = parameters.get("composition_string")
    return f"{name}-{_short(formula)}" if isinstance(formula, str) and formula.strip() else name


def _target_material_run_name() -> str:
    return f"create-target-material-{_short(current_task_run.parameters.get('sample_name'))}"


def is_retry() -> bool:
    """Tell whether the running task is on its second or later attempt."""
    context = TaskRunContext.get()
    return context is not None and context.task_run.run_count > 1


def task_options(
    name: str, build: Any, condition: Any, run_name: Any, *, serializable: bool = False
) -> dict[str, Any]:
    """Return the `@task` settings every create task shares: retries, cache, lock.

    Args:
        name: The task's name; the async twin's leading "a" is dropped for its cache key,
            so a sync and an async run of one request share the entry.
        build: Builds the checked request from the task's inputs, for the cache key.
        condition: The retry condition (`retry_if_transient` or its async twin).
        run_name: Callable giving the task run's name.
        serializable: Make runs of one request take turns through the cache lock, so
            the second finds the first's record in the cache. Only target materials need
            it (one created empty is invisible to the listing); layer writes are ordered
            by position locks inside the task (see `_views`), so a cache hit takes no lock.

    Returns:
        Keyword arguments for `prefect.task`.
    """
    return {
        "name": name,
        "task_run_name": run_name,
        "retries": DEFAULT_RETRIES,
        "retry_delay_seconds": DEFAULT_RETRY_DELAYS,
        "retry_jitter_factor": RETRY_JITTER_FACTOR,
        "retry_condition_fn": condition,
        "cache_policy": _cache_policy(name, build, serializable),
        "cache_expiration": DEFAULT_CACHE_EXPIRATION,
        "persist_result": True,
    }


def _cache_policy(name: str, build: Any, serializable: bool) -> AtomscaleRequestCache:
    policy = AtomscaleRequestCache(
        task_name=name.removeprefix("a"), version=TASK_VERSION, build_request=build
    )
    if not serializable:
        return policy
    # Runs of one request take turns, in this process and, through lock files, in
    # every process on this Prefect home; the second finds the first's record cached.
    return policy.configure(isolation_level="SERIALIZABLE", lock_manager=CacheLockManager())


class _Described(Protocol):
    def describe(self) -> str: ...


def request_client(credentials: AtomscaleCredentials, request: _Described) -> AtomscaleClient:
    """Return the shared client, or a configuration error that names the request.

    Args:
        credentials: The account.
        request: What is about to be sent, named in the error.

    Returns:
        This process's shared client for the account.

    Raises:
        AtomscaleConfigurationError: The credentials cannot be used.
    """
    try:
        return client_for(credentials)
    except AtomscaleConfigurationError as exc:
        raise AtomscaleConfigurationError(f"Cannot send {request.describe()}: {exc}") from None


def async_request_client(
    credentials: AtomscaleCredentials, request: _Described
) -> AsyncAtomscaleClient:
    """Async twin of `request_client`, for the running event loop.

    Args:
        credentials: The account.
        request: What is about to be sent, named in the error.

    Returns:
        The shared async client for the account on this loop.

    Raises:
        AtomscaleConfigurationError: The credentials cannot be used.
    """
    try:
        return async_client_for(credentials)
    except AtomscaleConfigurationError as exc:
        raise AtomscaleConfigurationError(f"Cannot send {request.describe()}: {exc}") from None


def _position(credentials: AtomscaleCredentials, request: LayerRequest) -> tuple[str, int, int]:
    return (credentials.account_fingerprint(), request.sample_id, request.layer_id)


def _material_key(request: TargetMaterialRequest) -> tuple[str, str]:
    return ("material", request.canonical_json())


def pending(exc: AtomscaleError) -> bool:
    """Whether a failed write may still land at the service (a 429 was refused outright)."""
    return exc.transient and not isinstance(exc, AtomscaleRateLimitError)


@contextmanager
def unsettled_on_failure(view_key: str | None, *what: object) -> Iterator[None]:
    """On a failed write, forget the material's view; let a pending one settle, locks held.

    The wait happens before the locks are given back, so that no other writer (another
    task, process or machine) lists the material before a write the service may still
    commit has landed.
    """
    try:
        yield
    except AtomscaleError as exc:
        if exc.transient:
            mark_unsettled(*what)
        if view_key is not None:
            material_views.forget(view_key)
        if pending(exc):
            time.sleep(_reconcile.SETTLE_SECONDS)
        raise


@asynccontextmanager
async def aunsettled_on_failure(view_key: str | None, *what: object) -> AsyncIterator[None]:
    """Async `unsettled_on_failure`: waits without blocking the event loop."""
    try:
        yield
    except AtomscaleError as exc:
        if exc.transient:
            mark_unsettled(*what)
        if view_key is not None:
            material_views.forget(view_key)
        if pending(exc):
            await asyncio.sleep(_reconcile.SETTLE_SECONDS)
        raise


def _refreshing() -> bool:
    # As Prefect decides it: the task's option, else the PREFECT_TASKS_REFRESH_CACHE setting.
    context = TaskRunContext.get()
    if context is None:
        return False
    option = context.task.refresh_cache
    return bool(PREFECT_TASKS_REFRESH_CACHE.value() if option is None else option)


def settle_if_retry(position: tuple[str, int, int]) -> float:
    """On a retry or a refresh, forget the material's view; return how long to settle."""
    if not (is_retry() or _refreshing()):
        return 0.0
    material_views.forget(material_views.key(position[0], position[1]))
    return settle_delay(*position)


def _layer_decision(
    request: LayerRequest, view: StackView, policy: IfExists
) -> Adopt | Update | Create:
    return decide_layer(request, view.at.get(request.layer_id, []), policy)


def _looking(request: LayerRequest) -> str:
    return f"checking whether {request.describe()} already exists"


def _finish_layer(request: LayerRequest, decision: Adopt | Update | Create, layer: Layer) -> Layer:
    """Log what happened to the layer and fill in what the server left out."""
    logger = get_run_logger()
    if isinstance(decision, Adopt) and decision.equal:
        logger.info(
            "Found %s already created (record %s); using it instead of writing again.",
            request.describe(),
            layer.id,
        )
    elif isinstance(decision, Adopt):
        logger.warning(
            "Kept record %s at the position of %s as it is (if_exists='reuse'): it is %s.",
            layer.id,
            request.describe(),
            layer.composition_string,
        )
    elif isinstance(decision, Update):
        logger.info(
            "Updated record %s from %s to %s.",
            layer.id,
            decision.existing.composition_string,
            request.describe(),
        )
    else:
        # DEBUG, not INFO: the routine outcome, already shown by the run's name and
        # state, while an INFO line costs every layer a trip through Prefect's log
        # shipping (about a tenth of a layer's time in `benchmarks/per_layer.py`).
        logger.debug(
            "Created %s as record %s (space group %s, %s).",
            request.describe(),
            layer.id,
            layer.space_group or "not matched",
            layer.mp_id or "no Materials Project id",
        )
    return request.complete(layer)


def _owned_request(
    credentials: AtomscaleCredentials,
    sample_name: Any,
    substrate: Any,
    sample_metadata: Any,
    layers: Any,
) -> TargetMaterialRequest:
    """The checked request, marked with the account's ownership token (see `_payloads`)."""
    request = _target_material_request(
        {
            "sample_name": sample_name,
            "substrate": substrate,
            "sample_metadata": sample_metadata,
            "layers": layers,
        }
    )
    try:
        account = credentials.key_fingerprint()
    except AtomscaleConfigurationError as exc:
        raise AtomscaleConfigurationError(f"Cannot send {request.describe()}: {exc}") from None
    return request.owned_by(account)


def _name_refused_layers(
    request: TargetMaterialRequest, error: AtomscaleValidationError
) -> AtomscaleValidationError:
    """Name the layers a refused create-with-layers points at (`loc` body.layers.N...)."""
    named = []
    for item in error.detail if isinstance(error.detail, list) else []:
        loc = item.get("loc", []) if isinstance(item, dict) else []
        index = loc[2] if len(loc) >= 3 and list(loc[:2]) == ["body", "layers"] else None
        if isinstance(index, int) and 0 <= index < len(request.layers):
            field = ".".join(str(part) for part in loc[3:]) or "the layer"
            named.append(f"{request.layers[index].describe()}: {field}: {item.get('msg')}")
    if not named:
        return error
    return AtomscaleValidationError(
        f"Refused {'; '.join(named)}. {error.message}",
        status_code=error.status_code,
        detail=error.detail,
    )


def _adopted_material(
    credentials: AtomscaleCredentials, request: TargetMaterialRequest, found: list[TargetMaterial]
) -> TargetMaterial:
    material = found[0]
    _events.target_material_known(credentials, material)  # its name, for layer events
    get_run_logger().info(
        "Found %s already created (sample_id %s); using it instead of creating another.",
        request.describe(),
        material.sample_id,
    )
    return material


def _created_material(
    credentials: AtomscaleCredentials, request: TargetMaterialRequest, material: TargetMaterial
) -> TargetMaterial:
    if not request.layers:  # created empty: its layers need no listing (see `_views`)
        material_views.created(
            material_views.key(credentials.account_fingerprint(), material.sample_id)
        )
    count = len(request.layers)
    with_layers = f" with {count} layer{'' if count == 1 else 's'}" if count else ""
    get_run_logger().info(
        "Created %s%s as sample_id %s.", request.describe(), with_layers, material.sample_id
    )
    _events.target_material_created(credentials, material, len(request.layers))
    return material


@task(
    **task_options(
        "create_target_material",
        _target_material_request,
        retry_if_transient,
        _target_material_run_name,
        serializable=True,
    )
)
def create_target_material(
    credentials: AtomscaleCredentials,
    sample_name: str,
    substrate: str,
    sample_metadata: dict[str, Any] | None = None,
    layers: Sequence[Mapping[str, Any]] | None = None,
) -> TargetMaterial:
    """Create a target material ("sample"): a name, a substrate, and metadata.

    Layers are added afterwards with `create_layer`, using the returned `sample_id`.
    The target material is marked as this account's with an ownership token in its
    metadata (under the key `prefect_atomscale`). One with the same name, substrate and metadata
    that the service already lists *and that carries this account's token* is returned
    instead of creating another; a colleague's material of the same name is never
    taken. The list shows target materials once they have layers: pass `layers` to
    create both in one request. Cached by account and arguments: calling it again with
    the same arguments returns the same target material without a request. Emits the
    Prefect event `atomscale.target-material.created` when it creates one (not when it
    adopts one; see the events guide).

    Args:
        credentials: The Atomscale account to create it in.
        sample_name: Its name, e.g. `BTO on STO #12`.
        substrate: The substrate, e.g. `SrTiO3`.
        sample_metadata: Free-form JSON metadata, e.g. `{"growth": "PLD"}`. The key
            `prefect_atomscale` is reserved for the ownership token.
        layers: The stack to create with it, in the same request, as `create_layers`
            takes it (one dict of `create_layer`'s arguments per layer). A target
            material created with its layers is never empty, so a retry after a lost
            reply always finds it; written only when the target material is created,
            not when an existing one is adopted.

    Returns:
        The created (or adopted) target material.

    Raises:
        AtomscaleValidationError: For an empty name or substrate, metadata that is not
            a JSON object, or a bad layer; nothing is sent.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import AtomscaleCredentials, create_target_material

        @flow
        def make_sample() -> int:
            credentials = AtomscaleCredentials.load("atomscale")
            material = create_target_material(
                credentials,
                "BTO on STO #12",
                "SrTiO3",
                sample_metadata={"growth": "PLD"},
                layers=[{"composition_string": "BaTiO3", "orientation": "001"}],
            )
            return material.sample_id

        first, again = make_sample(), make_sample()
        print(first == again)  # True: the second run finds the first one's target material
        ```
    """
    request = _owned_request(credentials, sample_name, substrate, sample_metadata, layers)
    require_target_material_epoch(credentials)  # a lock server down fails here, unwritten
    client = request_client(credentials, request)
    time.sleep(settle_delay(*_material_key(request)))
    if found := client.find_target_materials(request):
        return _adopted_material(credentials, request, found)
    try:
        with unsettled_on_failure(None, *_material_key(request)):
            material = client.create_target_material(request)
    except AtomscaleValidationError as exc:
        refused = _name_refused_layers(request, exc)
    else:
        return _created_material(credentials, request, material)
    raise refused  # outside the except block: no request in its __context__


@task(
    **task_options(
        "acreate_target_material",
        _target_material_request,
        aretry_if_transient,
        _target_material_run_name,
        serializable=True,
    )
)
async def acreate_target_material(
    credentials: AtomscaleCredentials,
    sample_name: str,
    substrate: str,
    sample_metadata: dict[str, Any] | None = None,
    layers: Sequence[Mapping[str, Any]] | None = None,
) -> TargetMaterial:
    """Async twin of `create_target_material`: same arguments, result and errors."""
    request = _owned_request(credentials, sample_name, substrate, sample_metadata, layers)
    require_target_material_epoch(credentials)  # a lock server down fails here, unwritten
    client = async_request_client(credentials, request)
    await asyncio.sleep(settle_delay(*_material_key(request)))
    if found := await client.find_target_materials(request):
        return _adopted_material(credentials, request, found)
    try:
        async with aunsettled_on_failure(None, *_material_key(request)):
            material = await client.create_target_material(request)
    except AtomscaleValidationError as exc:
        refused = _name_refused_layers(request, exc)
    else:
        return _created_material(credentials, request, material)
    raise refused  # outside the except block: no request in its __context__


@task(**task_options("create_layer", _layer_request, retry_if_transient, _layer_run_name))
def create_layer(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
    element_dict: dict[str, int | float] | None = None,
    space_group: str | None = None,
    mp_id: str | None = None,
    if_exists: IfExists = "error",
) -> Layer:
    """Add one layer to a target material's stack (`POST /target-materials/layers/`).

    The formula and orientation are checked before anything is sent; the orientation
    is sent in the bare form the API uses (`(001)` becomes `001`). Transient faults are
    retried. Before writing, the task looks for a layer already at this position (on
    every retry, and on a first attempt unless this process just created the target
    material): an equal one is adopted, so a lost reply, a killed run or two runs at
    once never create the layer twice; a different one is handled as `if_exists` says.
    Cached by account and request: calling it again with the same arguments returns
    the layer without a request. Emits the Prefect event `atomscale.layer.created` when
    it creates the layer (not when it adopts or updates one; see the events guide).

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
        if_exists: What to do if a different layer already sits at this position:
            `"error"` (default) fails with `AtomscaleConflictError`, `"update"` changes
            it to this one (PATCH), `"reuse"` keeps it as it is.

    Returns:
        The created (or adopted, or updated) layer.

    Raises:
        InvalidCompositionError: The formula cannot be parsed; nothing is sent.
        InvalidOrientationError: The orientation is not Miller indices; nothing is sent.
        AtomscaleValidationError: Any other bad argument (nothing sent), or a 400/422.
        AtomscaleConflictError: A different layer is at this position and `if_exists`
            is "error".
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import AtomscaleCredentials, create_layer, create_target_material

        @flow
        def bto_on_sto() -> str | None:
            credentials = AtomscaleCredentials.load("atomscale")
            sample = create_target_material(credentials, "BTO on STO #14", "SrTiO3")
            layer = create_layer(
                credentials,
                layer_id=1,
                sample_id=sample.sample_id,
                composition_string="BaTiO3",
                orientation="(001)",
            )
            return layer.orientation

        print(bto_on_sto())  # 001
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
    policy = check_if_exists(if_exists)
    client = request_client(credentials, request)
    position = _position(credentials, request)
    if settle := settle_if_retry(position):
        time.sleep(settle)
    with material_views.layer_write(*position, request.describe()) as key:
        view = material_views.current(key) or material_views.load(
            key, client.layers_of(request.sample_id, _looking(request))
        )
        decision = _layer_decision(request, view, policy)
        if isinstance(decision, Adopt):
            return _finish_layer(request, decision, decision.layer)
        material_views.writing(key)
        with unsettled_on_failure(key, *position):
            if isinstance(decision, Update):
                layer = client.update_layer(request)
            else:
                layer = client.create_layer(request)
        material_views.wrote(key, [layer], replaced=isinstance(decision, Update))
    if isinstance(decision, Update):
        invalidate_position(*position)
    finished = _finish_layer(request, decision, layer)
    if isinstance(decision, Create):
        _events.layers_created(credentials, request.sample_id, [finished])
    return finished


@task(**task_options("acreate_layer", _layer_request, aretry_if_transient, _layer_run_name))
async def acreate_layer(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
    element_dict: dict[str, int | float] | None = None,
    space_group: str | None = None,
    mp_id: str | None = None,
    if_exists: IfExists = "error",
) -> Layer:
    """Async twin of `create_layer`: same arguments, result and errors."""
    request = LayerRequest.build(
        layer_id=layer_id,
        sample_id=sample_id,
        composition_string=composition_string,
        orientation=orientation,
        element_dict=element_dict,
        space_group=space_group,
        mp_id=mp_id,
    )
    policy = check_if_exists(if_exists)
    client = async_request_client(credentials, request)
    position = _position(credentials, request)
    if settle := settle_if_retry(position):
        await asyncio.sleep(settle)
    async with material_views.alayer_write(*position, request.describe()) as key:
        view = material_views.current(key) or material_views.load(
            key, await client.layers_of(request.sample_id, _looking(request))
        )
        decision = _layer_decision(request, view, policy)
        if isinstance(decision, Adopt):
            return _finish_layer(request, decision, decision.layer)
        material_views.writing(key)
        async with aunsettled_on_failure(key, *position):
            if isinstance(decision, Update):
                layer = await client.update_layer(request)
            else:
                layer = await client.create_layer(request)
        material_views.wrote(key, [layer], replaced=isinstance(decision, Update))
    if isinstance(decision, Update):
        invalidate_position(*position)
    finished = _finish_layer(request, decision, layer)
    if isinstance(decision, Create):
        _events.layers_created(credentials, request.sample_id, [finished])
    return finished
