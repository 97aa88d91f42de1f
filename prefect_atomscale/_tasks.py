"""Prefect tasks that create target materials and layers, each with a sync and an async twin.

`create_target_material` / `acreate_target_material` and `create_layer` /
`acreate_layer` check their input locally (no request for a mistake that is knowable
here), retry transient faults with Prefect's retry machinery (see `_retries`), and cache
their result by account and request (see `_caching`), so re-running a finished flow
sends nothing. Every write happens inside a write section of `_protocol`, which follows
docs/design/write-protocol.md: look under the lock, decide (`_reconcile`), fence, write;
whose a target material is, is `_ownership`'s rule.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from prefect import task
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

from prefect_atomscale import _events
from prefect_atomscale._caching import (
    DEFAULT_CACHE_EXPIRATION,
    AtomscaleRequestCache,
    ainvalidate_position,
    invalidate_position,
    require_target_material_epoch,
)
from prefect_atomscale._client import AsyncAtomscaleClient, AtomscaleClient
from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import (
    AtomscaleConfigurationError,
    AtomscaleConflictError,
    AtomscaleValidationError,
)
from prefect_atomscale._identities import (
    identity_of,
    layers_written,
    recall,
    remember,
    scope_of,
    stack_created,
    written_here,
)
from prefect_atomscale._locks import domain
from prefect_atomscale._locks._prefect import CacheLockManager
from prefect_atomscale._models import Layer, TargetMaterial, TargetMaterialRow
from prefect_atomscale._ownership import Owner, alearn, aowner_of, learn, owner_of
from prefect_atomscale._payloads import LayerRequest, StackRequest, TargetMaterialRequest
from prefect_atomscale._pool import async_client_for, client_for
from prefect_atomscale._protocol import (
    Section,
    acreated_empty,
    aidentity_section,
    alayer_section,
    created_empty,
    identity_key,
    identity_section,
    layer_section,
    service_of,
)
from prefect_atomscale._reconcile import (
    Adopt,
    Create,
    IfExists,
    Update,
    check_if_exists,
    decide_layer,
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
    "create_layer",
    "create_target_material",
    "fresh_look",
    "is_retry",
    "record_created",
    "refuse_foreign_update",
    "request_client",
    "stack_from_rows",
    "task_options",
]

# The logger Prefect's run loggers of tasks write to (`get_run_logger()` in a task run).
_TASK_RUN_LOGGER = logging.getLogger("prefect.task_runs")

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


def _layer_run_name(parameters: dict[str, Any]) -> str:
    # Prefect passes the parameters to a callable that takes them: no `prefect.runtime`
    # look-up (and its environment reads) on every run, hits included.
    name = (
        f"create-layer-s{_short(parameters.get('sample_id'))}-L{_short(parameters.get('layer_id'))}"
    )
    formula = parameters.get("composition_string")
    return f"{name}-{_short(formula)}" if isinstance(formula, str) and formula.strip() else name


def _target_material_run_name(parameters: dict[str, Any]) -> str:
    return f"create-target-material-{_short(parameters.get('sample_name'))}"


# Prefect asks `inspect.signature` of a run-name callable on every run, to see whether it
# takes `parameters`; a stored signature answers without rebuilding it from the code.
for _run_name in (_layer_run_name, _target_material_run_name):
    _run_name.__signature__ = inspect.signature(_run_name)  # type: ignore[attr-defined]


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
            by their write sections (`_protocol`), so a cache hit takes no lock.

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
    # Runs of one request take turns, through the one lock layer (`_locks`); the
    # second finds the first's record cached (protocol step M1).
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


def _refreshing() -> bool:
    # As Prefect decides it: the task's option, else the PREFECT_TASKS_REFRESH_CACHE setting.
    context = TaskRunContext.get()
    if context is None:
        return False
    option = context.task.refresh_cache
    return bool(PREFECT_TASKS_REFRESH_CACHE.value() if option is None else option)


def fresh_look(service: str, sample_id: int) -> None:
    """On a retry or a refresh, forget the material's view: the write lists again.

    Why: an earlier attempt may have failed after its write landed, and `refresh_cache`
    is how a user says the service changed behind the cache (a record deleted in the
    web app).
    """
    if is_retry() or _refreshing():
        material_views.forget(material_views.key(service, sample_id))


def stack_from_rows(rows: list[TargetMaterialRow]) -> tuple[list[Layer], str | None]:
    """The layers of one material's listed rows, oldest first, and its creator's user id."""
    layers = sorted(
        (layer for row in rows for layer in [row.as_layer()] if layer is not None),
        key=lambda layer: layer.id,
    )
    creators = {str(row.user_id) for row in rows if row.user_id is not None}
    return layers, (creators.pop() if len(creators) == 1 else None)


def refuse_foreign_update(
    credentials: AtomscaleCredentials, view: StackView, existing: Layer, request: LayerRequest
) -> None:
    """Rule O: `if_exists="update"` changes only a layer written here for the person.

    That is: in a target material known to be the person's, a layer record this lock
    domain created for them (`_identities`); the listing does not say who wrote a layer,
    so a colleague's layer inside the person's material is never changed.

    Raises:
        AtomscaleConflictError: Otherwise, saying why.
    """
    owner = owner_of(credentials)
    if owner.person is not None and view.creator is not None and view.creator != owner.person:
        whose = f"target material {request.sample_id} belongs to another user ({view.creator})"
    elif owner.person is None or view.creator is None:
        whose = (
            f"target material {request.sample_id} is not known to be yours (set user_id on "
            "the credentials block)"
        )
    elif not written_here(
        scope_of(credentials, owner), existing, view.at.get(existing.layer_id, [])
    ):
        whose = (
            f"record {existing.id} was not written by prefect-atomscale for you (it may be "
            "a colleague's)"
        )
    else:
        return
    raise AtomscaleConflictError(
        f"Cannot update {request.describe()}: {whose}, and if_exists='update' changes only "
        "layers written for you. Ask its writer, or use if_exists='reuse'."
    )


def record_created(credentials: AtomscaleCredentials, layers: list[Layer]) -> None:
    """Record the layer records just created for the person (see `refuse_foreign_update`)."""
    if layers:
        layers_written(scope_of(credentials, owner_of(credentials)), layers)


def _looking(request: LayerRequest) -> str:
    return f"checking whether {request.describe()} already exists"


def _finish_layer(request: LayerRequest, decision: Adopt | Update | Create, layer: Layer) -> Layer:
    """Log what happened to the layer and fill in what the server left out."""
    if isinstance(decision, Create):
        # DEBUG, not INFO: the routine outcome, already shown by the run's name and
        # state, while an INFO line costs every layer a trip through Prefect's log
        # shipping (about a tenth of a layer's time in `benchmarks/per_layer.py`). The
        # run logger is only made when DEBUG is on: making it costs every layer too.
        if _TASK_RUN_LOGGER.isEnabledFor(logging.DEBUG):
            get_run_logger().debug(
                "Created %s as record %s (space group %s, %s).",
                request.describe(),
                layer.id,
                layer.space_group or "not matched",
                layer.mp_id or "no Materials Project id",
            )
        return request.complete(layer)
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
    else:
        logger.info(
            "Updated record %s from %s to %s.",
            layer.id,
            decision.existing.composition_string,
            request.describe(),
        )
    return request.complete(layer)


def _checked_request(
    credentials: AtomscaleCredentials,
    sample_name: Any,
    substrate: Any,
    sample_metadata: Any,
    layers: Any,
) -> TargetMaterialRequest:
    """The checked request, before it is marked (the mark needs the owner)."""
    request = _target_material_request(
        {
            "sample_name": sample_name,
            "substrate": substrate,
            "sample_metadata": sample_metadata,
            "layers": layers,
        }
    )
    try:
        credentials.key_fingerprint()
    except AtomscaleConfigurationError as exc:
        raise AtomscaleConfigurationError(f"Cannot send {request.describe()}: {exc}") from None
    return request


def _identity(request: TargetMaterialRequest) -> str:
    metadata = json.dumps(request.metadata, sort_keys=True, separators=(",", ":"))
    return identity_key(request.sample_name, request.substrate, metadata)


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


def _persons(owner: Owner, found: list[TargetMaterial]) -> TargetMaterial | None:
    """M3: the lowest-numbered listed material equal to the request and the person's."""
    mine = [material for material in found if owner.owns_material(material)]
    return mine[0] if mine else None


def _recorded(
    credentials: AtomscaleCredentials, owner: Owner, request: TargetMaterialRequest
) -> TargetMaterial | None:
    """M3: a material of this identity that this lock domain made for the person, if any."""
    if _refreshing():
        return None
    identity = identity_of(request.sample_name, request.substrate, request.metadata)
    sample_id = recall(scope_of(credentials, owner), identity)
    if sample_id is None:
        return None
    stored = TargetMaterial(sample_id=sample_id, user_id=owner.person)
    return request.complete(stored)


def _record(
    credentials: AtomscaleCredentials, request: TargetMaterialRequest, material: TargetMaterial
) -> None:
    """M3: record the created material's identity and stack, under the person known now."""
    identity = identity_of(request.sample_name, request.substrate, request.metadata)
    scope = scope_of(credentials, owner_of(credentials))
    remember(scope, identity, material.sample_id)
    if request.layers:
        stack_created(scope, material.sample_id, [layer.layer_id for layer in request.layers])


def _adopted_material(
    credentials: AtomscaleCredentials, request: TargetMaterialRequest, material: TargetMaterial
) -> TargetMaterial:
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
    count = len(request.layers)
    with_layers = f" with {count} layer{'' if count == 1 else 's'}" if count else ""
    get_run_logger().info(
        "Created %s%s as sample_id %s.", request.describe(), with_layers, material.sample_id
    )
    _events.target_material_created(credentials, material, len(request.layers))
    return material


def _create(
    section: Section, client: AtomscaleClient, request: TargetMaterialRequest
) -> TargetMaterial:
    """M3's write: fenced, settled on an unknown outcome; a refusal names its layers."""
    try:
        return section.write(lambda: client.create_target_material(request))
    except AtomscaleValidationError as exc:
        refused = _name_refused_layers(request, exc)
    raise refused  # outside the except block: no request in its __context__


async def _acreate(
    section: Section, client: AsyncAtomscaleClient, request: TargetMaterialRequest
) -> TargetMaterial:
    try:
        return await section.awrite(lambda: client.create_target_material(request))
    except AtomscaleValidationError as exc:
        refused = _name_refused_layers(request, exc)
    raise refused


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
    The target material is marked as made by prefect-atomscale in its metadata (under
    the key `prefect_atomscale`). One with the same name, substrate and metadata that is
    yours (the service's `user_id` on it is yours: set `user_id` on the block, or it is
    learned from this key's first create) is returned instead of creating another, also
    when the listing hides it because it has no layers yet, if this machine (or lock
    server) made it; a colleague's material of the same name is never taken. Pass
    `layers` to create both in one request. Cached by account and arguments: calling it
    again with the same arguments returns the same target material without a request.
    Emits the Prefect event `atomscale.target-material.created` when it creates one (not
    when it adopts one; see the events guide).

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
    checked = _checked_request(credentials, sample_name, substrate, sample_metadata, layers)
    require_target_material_epoch()  # a lock server down fails here, unwritten
    client = request_client(credentials, checked)
    with identity_section(_identity(checked), checked.describe()) as section:
        owner = owner_of(credentials)
        request = checked.owned_by(owner.key, owner.person)
        if found := _persons(owner, client.find_target_materials(request)):
            return _adopted_material(credentials, request, found)
        if recorded := _recorded(credentials, owner, request):  # one the listing hides
            return _adopted_material(credentials, request, recorded)
        material = _create(section, client, request)
        learn(credentials, material)
        _record(credentials, request, material)
    if not request.layers:  # created empty: its stack needs no listing (see `_views`)
        created_empty(service_of(credentials), material.sample_id, material.user_id)
    return _created_material(credentials, request, material)


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
    checked = _checked_request(credentials, sample_name, substrate, sample_metadata, layers)
    await domain().arun(require_target_material_epoch)
    client = async_request_client(credentials, checked)
    async with aidentity_section(_identity(checked), checked.describe()) as section:
        owner = await aowner_of(credentials)
        request = checked.owned_by(owner.key, owner.person)
        if found := _persons(owner, await client.find_target_materials(request)):
            return _adopted_material(credentials, request, found)
        recorded = await domain().arun(_recorded, credentials, owner, request)
        if recorded:  # one the listing hides
            return _adopted_material(credentials, request, recorded)
        material = await _acreate(section, client, request)
        await alearn(credentials, material)
        await domain().arun(_record, credentials, request, material)
    if not request.layers:
        service = service_of(credentials)
        await acreated_empty(service, material.sample_id, material.user_id)
    return _created_material(credentials, request, material)


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
    service = service_of(credentials)
    fresh_look(service, request.sample_id)
    with layer_section(service, request.sample_id, request.layer_id, request.describe()) as held:
        view = held.view() or held.load(
            *stack_from_rows(
                _events.materials_listed(
                    credentials, client.rows_of(request.sample_id, _looking(request))
                )
            )
        )
        decision = decide_layer(request, view.at.get(request.layer_id, []), policy)
        if isinstance(decision, Adopt):
            return _finish_layer(request, decision, decision.layer)
        if isinstance(decision, Update):
            refuse_foreign_update(credentials, view, decision.existing, request)
            # Before the PATCH too: a reply lost after it landed leaves no cached entry
            # of the record as it was answering.
            invalidate_position(request.sample_id, request.layer_id)
            layer = held.write(lambda: client.update_layer(request))
            held.end(updated=[layer])
        else:
            layer = held.write(lambda: client.create_layer(request))
            held.end(created=[layer])
            record_created(credentials, [layer])
    if isinstance(decision, Update):
        invalidate_position(request.sample_id, request.layer_id)
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
    service = service_of(credentials)
    fresh_look(service, request.sample_id)
    where = request.describe()
    async with alayer_section(service, request.sample_id, request.layer_id, where) as held:
        view = await held.aview() or held.load(
            *stack_from_rows(
                _events.materials_listed(
                    credentials, await client.rows_of(request.sample_id, _looking(request))
                )
            )
        )
        decision = decide_layer(request, view.at.get(request.layer_id, []), policy)
        if isinstance(decision, Adopt):
            return _finish_layer(request, decision, decision.layer)
        if isinstance(decision, Update):
            locks = domain()
            existing = decision.existing
            await locks.arun(refuse_foreign_update, credentials, view, existing, request)
            await ainvalidate_position(request.sample_id, request.layer_id)
            layer = await held.awrite(lambda: client.update_layer(request))
            await held.aend(updated=[layer])
        else:
            layer = await held.awrite(lambda: client.create_layer(request))
            await held.aend(created=[layer])
            await domain().arun(record_created, credentials, [layer])
    if isinstance(decision, Update):
        await ainvalidate_position(request.sample_id, request.layer_id)
    finished = _finish_layer(request, decision, layer)
    if isinstance(decision, Create):
        _events.layers_created(credentials, request.sample_id, [finished])
    return finished
