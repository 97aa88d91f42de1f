"""Prefect events that the create tasks emit, so that Automations can react to them.

Four events about one target material (the event's resource):

- `atomscale.target-material.created`: `create_target_material` created one (not when
  it adopted an existing one);
- `atomscale.layer.created`: `create_layer` created a layer (not when it adopted or
  updated one), or `create_layers` did with `layer_events="each"`;
- `atomscale.layers.created`: the layers one `create_layers` run created, listed in one
  event (up to `LAYERS_PER_EVENT` an event; `layer_events="batch"`, the default);
- `atomscale.stack.completed`: `create_layers` finished with every requested layer in
  place.

Why `create_layers` lists its layers in one event rather than sending one each: an
event costs Prefect's events worker about a millisecond of the same CPU the writes use
(it looks up the run's related resources and sends each event on its own), so one per
layer made a bulk write about a fifth slower (figures 17 and 25); and what reacts to
events reacts better to one stack than to a thousand layers: an Automation runs its
action once (with the list in `event.payload.layers`), and the UI's event feed shows
one row. `layer_events="none"` leaves even the list out, for stacks so large that the
list is only traffic; `atomscale.stack.completed` is sent in every case.

Two about one growth run (the resource), related to its target material (role
`target-material`), so that an Automation on a target material sees them too:

- `atomscale.growth-run.created`: `create_growth_run` created one (not when it found
  one of that name);
- `atomscale.growth-run.linked`: `create_growth_run` or `link_target_material` linked an
  existing one to a target material (a growth run created linked sends only `created`).

A cached re-run sends nothing, because the task body does not run. The resource id is
`atomscale.target-material.<host>.<sample_id>` (`atomscale.growth-run.<host>.<id>` for a
growth run), where `<host>` is the host (and port)
of the account's base URL: sample ids of two services never meet, and nothing derived
from the API key is ever part of an event. Every target-material resource carries the
material's name (`prefect.resource.name`) when this process knows it: it created or
adopted the material, or a create task read the material's rows from the listing
(`materials_listed`), as it does before writing layers of a material created elsewhere.
Prefect itself adds the flow run, task run, flow, deployment, work pool and tags as
related resources, from the run context (`prefect.events.related`), so the events here
name none of them.

Emitting never fails a task: an error is logged at DEBUG and swallowed. See
`docs/guides/events.md` for the payloads and an Automation.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from prefect.events import emit_event

from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import checked_choice
from prefect_atomscale._models import GrowthRun, Layer, TargetMaterial, TargetMaterialRow
from prefect_atomscale._web_app import web_app_url

__all__ = [
    "GROWTH_RUN_CREATED",
    "GROWTH_RUN_LINKED",
    "LAYERS_CREATED",
    "LAYERS_PER_EVENT",
    "LAYER_CREATED",
    "STACK_COMPLETED",
    "TARGET_MATERIAL_CREATED",
    "LayerEvents",
    "account_label",
    "check_layer_events",
    "growth_run_created",
    "growth_run_linked",
    "layers_created",
    "material_resource",
    "materials_listed",
    "stack_completed",
    "stack_layers_created",
    "target_material_created",
    "target_material_known",
]

TARGET_MATERIAL_CREATED = "atomscale.target-material.created"
LAYER_CREATED = "atomscale.layer.created"
LAYERS_CREATED = "atomscale.layers.created"
STACK_COMPLETED = "atomscale.stack.completed"
GROWTH_RUN_CREATED = "atomscale.growth-run.created"
GROWTH_RUN_LINKED = "atomscale.growth-run.linked"

LayerEvents = Literal["batch", "each", "none"]
"""Which events `create_layers` sends about the layers it creates.

`"batch"` (the default): `atomscale.layers.created` listing them, one event for up to
`LAYERS_PER_EVENT` layers; `"each"`: one `atomscale.layer.created` per layer, as
`create_layer` sends; `"none"`: no event about the layers. `atomscale.stack.completed`,
with the counts, is sent in every case.

Example:
    ```python
    from prefect import flow
    from prefect_atomscale import (
        AtomscaleCredentials,
        LayerEvents,
        create_layers,
        create_target_material,
    )

    @flow
    def backfill(layer_events: LayerEvents = "none") -> int:
        credentials = AtomscaleCredentials.load("atomscale")
        sample = create_target_material(credentials, "(BTO/STO)x500 archive", "SrTiO3")
        period = [{"composition_string": "BaTiO3"}, {"composition_string": "SrTiO3"}]
        layers = create_layers(
            credentials, sample.sample_id, period * 500, layer_events=layer_events
        )
        return len(layers)  # one atomscale.stack.completed, no event per layer

    print(backfill())  # 1000
    ```
"""

# Layers listed in one `atomscale.layers.created`: about 100 kB of payload, well under
# Prefect's maximum event size (PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES, 1.5 MB by
# default), which would refuse the event whole; a larger stack is listed in parts.
LAYERS_PER_EVENT = 1_000

_logger = logging.getLogger(__name__)

# Name and substrate of the target materials this process created, adopted or read rows
# of, by (host, sample_id), so that every event about one carries its name (and
# `stack.completed` its substrate) without asking the service.
_MAX_NAMES = 10_000
_names: OrderedDict[tuple[str, int], tuple[str | None, str | None]] = OrderedDict()
_names_lock = threading.Lock()


def account_label(credentials: AtomscaleCredentials) -> str:
    """The host (and port, if any) of the account's base URL: no user, path or key.

    Args:
        credentials: The account.

    Returns:
        For example `api.atomscale.ai` or `127.0.0.1:8000`.
    """
    parts = urlsplit(credentials.resolve().base_url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


def _remember(account: str, sample_id: int, name: str | None, substrate: str | None) -> None:
    """Keep what is known; a reply that leaves a field out does not forget it."""
    if not name and not substrate:
        return
    key = (account, sample_id)
    with _names_lock:
        old_name, old_substrate = _names.get(key, (None, None))
        _names[key] = (name or old_name, substrate or old_substrate)
        _names.move_to_end(key)
        while len(_names) > _MAX_NAMES:
            _names.popitem(last=False)


def _known(account: str, sample_id: int) -> tuple[str | None, str | None]:
    """The name and substrate this process last saw for a target material, if any."""
    with _names_lock:
        return _names.get((account, sample_id), (None, None))


def material_resource(account: str, sample_id: int, name: str | None = None) -> dict[str, str]:
    """The event resource of one target material.

    Args:
        account: `account_label` of the credentials.
        sample_id: The target material.
        name: Its name, if known; else the name this process last saw for it, if any.

    Returns:
        `prefect.resource.id`, `prefect.resource.name` (when known), and the labels
        `atomscale.sample-id` and `atomscale.host`.
    """
    resource = {
        "prefect.resource.id": f"atomscale.target-material.{account}.{sample_id}",
        "atomscale.sample-id": str(sample_id),
        "atomscale.host": account,
    }
    known = name or _known(account, sample_id)[0]
    if known:
        resource["prefect.resource.name"] = known
    return resource


def _emit(
    event: str,
    resource: dict[str, str],
    payload: dict[str, Any],
    related: list[dict[str, str]] | None = None,
) -> None:
    try:
        emit_event(event=event, resource=resource, payload=payload, related=related)
    except Exception as exc:  # an event is never worth a failed flow
        _logger.debug("Could not emit %s for %s: %r", event, resource["prefect.resource.id"], exc)


def _account(credentials: AtomscaleCredentials) -> str | None:
    try:
        return account_label(credentials)
    except Exception as exc:  # the client was built from them, so this is not expected
        _logger.debug("No account label for events: %r", exc)
        return None


def target_material_known(credentials: AtomscaleCredentials, material: TargetMaterial) -> None:
    """Remember an adopted or changed target material's name for its events; emit nothing."""
    account = _account(credentials)
    if account is not None:
        _remember(account, material.sample_id, material.sample_name, material.substrate)


def materials_listed(
    credentials: AtomscaleCredentials, rows: list[TargetMaterialRow]
) -> list[TargetMaterialRow]:
    """Remember the name and substrate of the listed rows' materials; emit nothing.

    For a target material created elsewhere, the rows a create task reads before
    writing its layers are where this process learns its name.

    Args:
        credentials: The account the rows were listed from.
        rows: Rows of `GET /target-materials/`.

    Returns:
        `rows`, unchanged, so that it wraps a listing where the rows are used.
    """
    account = _account(credentials)
    if account is not None:
        for row in rows:
            if row.sample_id is not None:
                _remember(account, row.sample_id, row.sample_name, row.substrate)
    return rows


def _web_url(credentials: AtomscaleCredentials, sample_id: int) -> str | None:
    """The material's "Open in Atomscale" link (a guess, see `_web_app`); None if unknown."""
    try:
        return web_app_url(credentials.resolve().base_url, sample_id)
    except Exception as exc:  # an event is never worth a failed flow
        _logger.debug("No web app link for events: %r", exc)
        return None


def target_material_created(
    credentials: AtomscaleCredentials, material: TargetMaterial, layers: int
) -> None:
    """Emit `atomscale.target-material.created`.

    Args:
        credentials: The account it was created in.
        material: The created target material.
        layers: How many layers were created with it, in the same request.
    """
    account = _account(credentials)
    if account is None:
        return
    _remember(account, material.sample_id, material.sample_name, material.substrate)
    payload = {
        "sample_id": material.sample_id,
        "sample_name": material.sample_name,
        "substrate": material.substrate,
        "layers": layers,
        "url": _web_url(credentials, material.sample_id),
    }
    _emit(TARGET_MATERIAL_CREATED, material_resource(account, material.sample_id), payload)


def check_layer_events(layer_events: object) -> LayerEvents:
    """Check a `layer_events` argument locally, before any request.

    Args:
        layer_events: The value given.

    Returns:
        The value, typed.

    Raises:
        AtomscaleValidationError: If it is not one of "batch", "each", "none".
    """
    return checked_choice("layer_events", layer_events, get_args(LayerEvents))  # type: ignore[return-value]


def _layer_payload(layer: Layer) -> dict[str, Any]:
    """What an event says of one created layer: position, record id, what it is."""
    return {
        "layer_id": layer.layer_id,
        "record_id": layer.id,
        "composition_string": layer.composition_string,
        "orientation": layer.orientation,
    }


def layers_created(
    credentials: AtomscaleCredentials, sample_id: int, layers: Sequence[Layer]
) -> None:
    """Emit one `atomscale.layer.created` per layer, in the order given.

    Args:
        credentials: The account.
        sample_id: The target material the layers belong to.
        layers: The layers just created (not adopted, not updated).
    """
    if not layers:
        return
    account = _account(credentials)
    if account is None:
        return
    resource = material_resource(account, sample_id)
    for layer in layers:
        _emit(LAYER_CREATED, dict(resource), _layer_payload(layer))


def stack_layers_created(
    credentials: AtomscaleCredentials,
    sample_id: int,
    layers: Sequence[Layer],
    layer_events: LayerEvents,
) -> None:
    """Emit the events of the layers one `create_layers` run created, as `layer_events` asks.

    With `"batch"`, one `atomscale.layers.created` per `LAYERS_PER_EVENT` layers, each
    listing its layers in stack order, numbered `part` of `parts`.

    Args:
        credentials: The account.
        sample_id: The target material the layers belong to.
        layers: The layers just created (not adopted, not updated), in stack order.
        layer_events: `"batch"`, `"each"` or `"none"` (see `LayerEvents`).
    """
    if layer_events == "each":
        layers_created(credentials, sample_id, layers)
        return
    if layer_events == "none" or not layers:
        return
    account = _account(credentials)
    if account is None:
        return
    resource = material_resource(account, sample_id)
    starts = range(0, len(layers), LAYERS_PER_EVENT)
    for part, start in enumerate(starts, start=1):
        payload = {
            "sample_id": sample_id,
            "part": part,
            "parts": len(starts),
            "layers": [_layer_payload(layer) for layer in layers[start : start + LAYERS_PER_EVENT]],
        }
        _emit(LAYERS_CREATED, dict(resource), payload)


def stack_completed(
    credentials: AtomscaleCredentials,
    sample_id: int,
    *,
    created: int,
    already_there: int,
    updated: int,
) -> None:
    """Emit `atomscale.stack.completed`: every requested layer is in place.

    Its payload names the material and its substrate (null where this process does not
    know them), so that a report triggered by it can title its picture.

    Args:
        credentials: The account.
        sample_id: The target material.
        created: Layers this task created.
        already_there: Equal layers found and adopted (or kept, with `if_exists="reuse"`).
        updated: Different layers changed to the requested ones (`if_exists="update"`).
    """
    account = _account(credentials)
    if account is None:
        return
    name, substrate = _known(account, sample_id)
    payload = {
        "sample_id": sample_id,
        "sample_name": name,
        "substrate": substrate,
        "layers": created + already_there + updated,
        "created": created,
        "already_there": already_there,
        "updated": updated,
        "url": _web_url(credentials, sample_id),
    }
    _emit(STACK_COMPLETED, material_resource(account, sample_id), payload)


def _growth_run_event(
    event: str, credentials: AtomscaleCredentials, run: GrowthRun, payload: dict[str, Any]
) -> None:
    account = _account(credentials)
    if account is None:
        return
    resource = {
        "prefect.resource.id": f"atomscale.growth-run.{account}.{run.id}",
        "atomscale.physical-sample-id": run.id,
        "atomscale.host": account,
    }
    if run.name:
        resource["prefect.resource.name"] = run.name
    sample_id = run.target_material_id
    related = None
    if sample_id is not None:
        material = material_resource(account, sample_id, run.target_material_name)
        related = [{**material, "prefect.resource.role": "target-material"}]
    _emit(event, resource, {"physical_sample_id": run.id, "name": run.name, **payload}, related)


def growth_run_created(credentials: AtomscaleCredentials, run: GrowthRun) -> None:
    """Emit `atomscale.growth-run.created`.

    Args:
        credentials: The account it was created in.
        run: The created growth run.
    """
    payload = {
        "sample_id": run.target_material_id,
        "growth_instrument_id": run.growth_instrument_id,
    }
    _growth_run_event(GROWTH_RUN_CREATED, credentials, run, payload)


def growth_run_linked(
    credentials: AtomscaleCredentials, run: GrowthRun, previous: int | None
) -> None:
    """Emit `atomscale.growth-run.linked`.

    Args:
        credentials: The account.
        run: The growth run as linked now.
        previous: The target material it was linked to before, if any.
    """
    payload = {"sample_id": run.target_material_id, "previous_sample_id": previous}
    _growth_run_event(GROWTH_RUN_LINKED, credentials, run, payload)
