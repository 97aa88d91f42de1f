"""`create_layers` / `acreate_layers`: a whole layer stack written inside one task.

One task per layer costs Prefect's per-task overhead per layer; for campaigns and
back-fills of thousands of layers, these tasks write a whole stack at once with the
same guarantees as `create_layer`: local validation of every layer before any request,
retries of transient faults only, caching by account and request, and no layer
written twice. The whole write is one write section of `_protocol` holding the target
material exclusively (docs/design/write-protocol.md, section L): the stack is known from
this process's view (one `GET /target-materials/` the first time, none for a material
this process just created), then each missing layer is posted, fenced, at most
`max_concurrency` at a time on the shared pool; equal layers are adopted and different
ones follow `if_exists`, as in `create_layer`. The replace-stack endpoint, which deletes
what a stack holds, is never used: a colleague's layer is never ours to delete.

The layers created (listed in one event by default, `layer_events`) and the completed
stack are Prefect events (see `_events`). If some
layers fail with transient faults, the failed writes settle under the lock, the task is
retried, and the retry lists the stack again and writes only what is still missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from prefect import task
from prefect.logging import get_run_logger
from prefect.runtime import task_run as current_task_run

from prefect_atomscale import _events
from prefect_atomscale._caching import ainvalidate_position, invalidate_position
from prefect_atomscale._client import AsyncAtomscaleClient, AtomscaleClient
from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import (
    AtomscaleError,
)
from prefect_atomscale._locks import domain
from prefect_atomscale._models import Layer
from prefect_atomscale._payloads import LayerRequest, StackRequest
from prefect_atomscale._protocol import (
    SETTLE_SECONDS,
    Section,
    astack_section,
    service_of,
    stack_section,
)
from prefect_atomscale._reconcile import (
    Adopt,
    Create,
    IfExists,
    Update,
    check_if_exists,
    decide_layer,
)
from prefect_atomscale._retries import aretry_if_transient, retry_if_transient
from prefect_atomscale._tasks import (
    async_request_client,
    fresh_look,
    record_created,
    refuse_foreign_update,
    request_client,
    stack_from_rows,
    task_options,
)
from prefect_atomscale._views import StackView

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "acreate_layers",
    "create_layers",
    "made_with_material",
]

# Writes in flight at once when posting layer by layer; at or below the default pool
# size (AtomscaleCredentials.max_connections), so every write has a connection ready.
DEFAULT_MAX_CONCURRENCY = 16


# Positions of one target material that the caller created together with the material,
# in the same request, just before: `create_layers` finds them there and adopts them,
# and its `atomscale.stack.completed` counts them as created, which they were.
_MADE_WITH_MATERIAL: ContextVar[tuple[int, frozenset[int]] | None] = ContextVar(
    "prefect_atomscale_made_with_material", default=None
)


@contextmanager
def made_with_material(sample_id: int, positions: Iterable[int]) -> Iterator[None]:
    """Within it, `create_layers` counts these layers as created in its completed event.

    For a flow that created the target material with its layers in one request, then
    calls `create_layers` to read them back: without it, the event of a brand-new
    stack would say `created: 0`.
    """
    token = _MADE_WITH_MATERIAL.set((sample_id, frozenset(positions)))
    try:
        yield
    finally:
        _MADE_WITH_MATERIAL.reset(token)


def _stack_request(inputs: dict[str, Any]) -> StackRequest:
    return StackRequest.build(inputs.get("sample_id"), inputs.get("layers"))


def _run_name() -> str:
    parameters = current_task_run.parameters
    layers = parameters.get("layers")
    count = len(layers) if isinstance(layers, Sequence) else "?"
    return f"create-layers-s{parameters.get('sample_id')}-{count}-layers"


def _plan(
    stack: StackRequest, view: StackView, if_exists: IfExists
) -> list[tuple[LayerRequest, Adopt | Update | Create]]:
    return [
        (request, decide_layer(request, view.at.get(request.layer_id, []), if_exists))
        for request in stack.requests
    ]


def _refuse_foreign_updates(
    credentials: AtomscaleCredentials,
    view: StackView,
    plan: list[tuple[LayerRequest, Adopt | Update | Create]],
) -> None:
    """Rule O for every update of the plan; then retire the cached entries they change.

    Before the PATCHes, so that a reply lost after one landed leaves no cached entry of
    the record as it was answering.
    """
    for request, decision in plan:
        if isinstance(decision, Update):
            refuse_foreign_update(credentials, view, decision.existing, request)
    for request, decision in plan:
        if isinstance(decision, Update):
            invalidate_position(request.sample_id, request.layer_id)


def _updates(plan: list[tuple[LayerRequest, Adopt | Update | Create]]) -> bool:
    return any(isinstance(decision, Update) for _, decision in plan)


def _written(
    plan: list[tuple[LayerRequest, Any]], outcomes: Sequence[Layer | AtomscaleError]
) -> list[Layer]:
    """The layers in stack order, or raise the error to report.

    A permanent error goes first (no retry can help it); else a transient one, so that
    Prefect retries the task and the retry writes what is still missing.
    """
    errors = [o for o in outcomes if isinstance(o, AtomscaleError)]
    if errors:
        permanent = [error for error in errors if not error.transient]
        raised = (permanent or errors)[0]
        # What every layer came to, for a flow that reports the stack as a whole: the
        # layer in place, or why it failed (text, so the error holds no other errors).
        raised.layer_outcomes = {
            request.layer_id: request.complete(o) if isinstance(o, Layer) else o.reason
            for (request, _), o in zip(plan, outcomes, strict=True)
        }
        raise raised
    layers = [o for o in outcomes if isinstance(o, Layer)]
    return [request.complete(layer) for (request, _), layer in zip(plan, layers, strict=True)]


def _counts(plan: list[tuple[LayerRequest, Any]]) -> dict[str, int]:
    """Layers created, adopted and updated; those made with the material count as created."""
    counts = {"created": 0, "adopted": 0, "updated": 0}
    made = _MADE_WITH_MATERIAL.get()
    for request, decision in plan:
        kind = {Adopt: "adopted", Update: "updated", Create: "created"}[type(decision)]
        if kind == "adopted" and made is not None and made[0] == request.sample_id:
            kind = "created" if request.layer_id in made[1] else kind
        counts[kind] += 1
    return counts


def _report(stack: StackRequest, plan: list[tuple[LayerRequest, Any]]) -> None:
    """One line for the task, which counts as `_counts` does, as its completed event does.

    Layers the caller created with the target material (`made_with_material`) were
    found there and read back, not written: the line says so rather than claim they
    were already there or that this task wrote them.
    """
    counts = _counts(plan)
    made = _MADE_WITH_MATERIAL.get()
    with_material = sum(
        isinstance(decision, Adopt)
        and made is not None
        and made[0] == request.sample_id
        and request.layer_id in made[1]
        for request, decision in plan
    )
    logger = get_run_logger()
    if plan and with_material == len(plan):
        logger.info(
            "Read back %s: its %s created with the target material; nothing to write.",
            stack.describe(),
            "layer was" if with_material == 1 else f"{with_material} layers were",
        )
        return
    logger.info(
        "Wrote %s: %s created%s, %s already there, %s updated.",
        stack.describe(),
        counts["created"],
        f" ({with_material} with the target material)" if with_material else "",
        counts["adopted"],
        counts["updated"],
    )


def _reading(stack: StackRequest) -> str:
    return f"reading {stack.describe()}"


def _emit_created(
    credentials: AtomscaleCredentials,
    stack: StackRequest,
    plan: list[tuple[LayerRequest, Adopt | Update | Create]],
    outcomes: Sequence[Layer | AtomscaleError],
    layer_events: _events.LayerEvents,
) -> None:
    """The events of the layers created, as `layer_events` asks, also when others failed."""
    _events.stack_layers_created(
        credentials, stack.sample_id, _of_kind(plan, outcomes, Create), layer_events
    )


def _emit_completed(
    credentials: AtomscaleCredentials,
    stack: StackRequest,
    plan: list[tuple[LayerRequest, Adopt | Update | Create]],
) -> None:
    counts = _counts(plan)
    _events.stack_completed(
        credentials,
        stack.sample_id,
        created=counts["created"],
        already_there=counts["adopted"],
        updated=counts["updated"],
    )


def _of_kind(
    plan: list[tuple[LayerRequest, Adopt | Update | Create]],
    outcomes: Sequence[Layer | AtomscaleError],
    kind: type[Create | Update],
) -> list[Layer]:
    return [
        o
        for (_, d), o in zip(plan, outcomes, strict=True)
        if isinstance(d, kind) and isinstance(o, Layer)
    ]


def _settle(
    credentials: AtomscaleCredentials,
    held: Section,
    outcomes: Sequence[Layer | AtomscaleError],
    plan: Any,
) -> bool:
    """L5/L6 after the writes: record them; whether a failed one may still land."""
    created = _of_kind(plan, outcomes, Create)
    held.end(created, _of_kind(plan, outcomes, Update))
    record_created(credentials, created)
    return held.failed([o for o in outcomes if isinstance(o, AtomscaleError)])


async def _asettle(
    credentials: AtomscaleCredentials,
    held: Section,
    outcomes: Sequence[Layer | AtomscaleError],
    plan: Any,
) -> bool:
    """Async `_settle`."""
    created = _of_kind(plan, outcomes, Create)
    await held.aend(created, _of_kind(plan, outcomes, Update))
    await domain().arun(record_created, credentials, created)
    return held.failed([o for o in outcomes if isinstance(o, AtomscaleError)])


def _write_one(
    client: AtomscaleClient, request: LayerRequest, decision: Adopt | Update | Create
) -> Layer:
    if isinstance(decision, Adopt):
        return decision.layer
    if isinstance(decision, Update):
        return client.update_layer(request)
    return client.create_layer(request)


async def _awrite_one(
    client: AsyncAtomscaleClient, request: LayerRequest, decision: Adopt | Update | Create
) -> Layer:
    if isinstance(decision, Adopt):
        return decision.layer
    if isinstance(decision, Update):
        return await client.update_layer(request)
    return await client.create_layer(request)


@task(**task_options("create_layers", _stack_request, retry_if_transient, _run_name))
def create_layers(
    credentials: AtomscaleCredentials,
    sample_id: int,
    layers: Sequence[Mapping[str, Any]],
    if_exists: IfExists = "error",
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    layer_events: _events.LayerEvents = "batch",
) -> list[Layer]:
    """Write a whole layer stack of one target material inside one task.

    Emits the Prefect event `atomscale.layers.created` listing the layers it creates
    (none for layers it adopts or updates) and, once every layer is in place,
    `atomscale.stack.completed` with the counts (see the events guide).

    Args:
        credentials: The Atomscale account.
        sample_id: The target material, from `create_target_material`.
        layers: One dict per layer with `create_layer`'s arguments
            (`composition_string`, `orientation`, ...); `layer_id` defaults to the
            layer's place in the list, 1 for the first.
        if_exists: What to do where a different layer already sits at a position:
            `"error"` (default), `"update"` or `"reuse"`, as for `create_layer`.
        max_concurrency: Most layer writes in flight at once (when not replacing).
        layer_events: The events about the layers created: `"batch"` (default), one
            `atomscale.layers.created` listing up to 1,000 of them; `"each"`, one
            `atomscale.layer.created` per layer, as `create_layer` sends; `"none"`, for
            very large stacks, none (`atomscale.stack.completed` is always sent).

    Returns:
        The layers, in the order given.

    Raises:
        AtomscaleValidationError: A bad layer anywhere in the list, or a bad
            `if_exists` or `layer_events`; nothing is sent.
        AtomscaleConflictError: A different layer is at a position and `if_exists` is
            "error"; nothing is sent.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import AtomscaleCredentials, create_layers, create_target_material

        @flow
        def superlattice() -> int:
            credentials = AtomscaleCredentials.load("atomscale")
            sample = create_target_material(credentials, "(BTO/STO)x20 #3", "SrTiO3")
            period = [
                {"composition_string": "BaTiO3", "orientation": "001"},
                {"composition_string": "SrTiO3", "orientation": "001"},
            ]
            layers = create_layers(credentials, sample.sample_id, period * 20)
            return len(layers)

        print(superlattice())  # 40
        ```
    """
    stack = StackRequest.build(sample_id, layers)
    policy = check_if_exists(if_exists)
    events = _events.check_layer_events(layer_events)
    client = request_client(credentials, stack)
    service = service_of(credentials)
    fresh_look(service, stack.sample_id)
    with stack_section(service, stack.sample_id) as held:
        view = held.view() or held.load(
            *stack_from_rows(
                _events.materials_listed(
                    credentials, client.rows_of(stack.sample_id, _reading(stack))
                )
            )
        )
        plan = _plan(stack, view, policy)
        if _updates(plan):  # whose it is matters only to a change
            _refuse_foreign_updates(credentials, view, plan)

        def write(step: tuple[LayerRequest, Adopt | Update | Create]) -> Layer | AtomscaleError:
            try:
                if not isinstance(step[1], Adopt):
                    held.fence()
                return _write_one(client, *step)
            except AtomscaleError as exc:
                return exc

        held.begin()
        with ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool:
            outcomes = list(pool.map(write, plan))
        _emit_created(credentials, stack, plan, outcomes, events)
        if _settle(credentials, held, outcomes, plan):
            time.sleep(SETTLE_SECONDS)
    for layer in _of_kind(plan, outcomes, Update):  # and after: runs since may have cached
        invalidate_position(layer.sample_id, layer.layer_id)
    written = _written(plan, outcomes)
    _report(stack, plan)
    _emit_completed(credentials, stack, plan)
    return written


@task(**task_options("acreate_layers", _stack_request, aretry_if_transient, _run_name))
async def acreate_layers(
    credentials: AtomscaleCredentials,
    sample_id: int,
    layers: Sequence[Mapping[str, Any]],
    if_exists: IfExists = "error",
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    layer_events: _events.LayerEvents = "batch",
) -> list[Layer]:
    """Async twin of `create_layers`: same arguments, result and errors."""
    stack = StackRequest.build(sample_id, layers)
    policy = check_if_exists(if_exists)
    events = _events.check_layer_events(layer_events)
    client = async_request_client(credentials, stack)
    service = service_of(credentials)
    fresh_look(service, stack.sample_id)
    async with astack_section(service, stack.sample_id) as held:
        view = await held.aview() or held.load(
            *stack_from_rows(
                _events.materials_listed(
                    credentials, await client.rows_of(stack.sample_id, _reading(stack))
                )
            )
        )
        plan = _plan(stack, view, policy)
        if _updates(plan):  # whose it is matters only to a change
            await domain().arun(_refuse_foreign_updates, credentials, view, plan)
        slots = asyncio.Semaphore(max(1, max_concurrency))

        async def write(
            step: tuple[LayerRequest, Adopt | Update | Create],
        ) -> Layer | AtomscaleError:
            async with slots:
                try:
                    if not isinstance(step[1], Adopt):
                        await held.afence()
                    return await _awrite_one(client, *step)
                except AtomscaleError as exc:
                    return exc

        await held.abegin()
        outcomes = await asyncio.gather(*(write(step) for step in plan))
        _emit_created(credentials, stack, plan, outcomes, events)
        if await _asettle(credentials, held, outcomes, plan):
            await asyncio.sleep(SETTLE_SECONDS)
    for layer in _of_kind(plan, outcomes, Update):  # and after: runs since may have cached
        await ainvalidate_position(layer.sample_id, layer.layer_id)
    written = _written(plan, outcomes)
    _report(stack, plan)
    _emit_completed(credentials, stack, plan)
    return written
