"""Prefect tasks for growth runs (physical samples), each with a sync and an async twin.

`create_growth_run` creates the growth run of a name, or finds the one that exists, and
links it to a target material; `link_target_material` links an existing one;
`get_growth_run` and `find_growth_runs` read them (`GET /physical_samples/`).

Exactly once by the service's own rule: a name is unique in the organisation, so a
second create of it, a retry after a lost reply or a colleague's run of the same name
answers 409 and resolves to the growth run that exists. Nothing is cached (`NO_CACHE`):
a re-run costs one create answered 409 and one read, and sees links as they are now.
Linking follows `link_decision` (see `_growth_runs`), under one lock per growth-run name
in this lock domain (see `_locks`), so two runs here never both link or both announce
the same growth run. Transient faults are retried as in the target-material tasks (see
`_retries`); input is checked before any request.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from prefect import task
from prefect.logging import get_run_logger
from prefect.runtime import task_run as current_task_run

from prefect_atomscale._client import AsyncAtomscaleClient, AtomscaleClient
from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._events import growth_run_created, growth_run_linked
from prefect_atomscale._exceptions import (
    AtomscaleConflictError,
    AtomscaleError,
    AtomscaleNotFoundError,
    AtomscaleValidationError,
    GrowthRunLinkedError,
)
from prefect_atomscale._growth_runs import (
    IfLinked,
    LinkDecision,
    checked_create_inputs,
    checked_if_linked,
    checked_optional_id,
    checked_physical_sample_id,
    checked_run_name,
    create_call,
    link_decision,
    name_key,
    taken_id,
)
from prefect_atomscale._models import GrowthRun
from prefect_atomscale._protocol import aidentity_section, identity_section, service_of
from prefect_atomscale._retries import aretry_if_transient, retry_if_transient
from prefect_atomscale._task_support import (
    async_client_to,
    client_to,
    listing_purpose,
    listing_run_name,
    shortened,
    uncached_task_options,
)

__all__ = [
    "acreate_growth_run",
    "afind_growth_runs",
    "aget_growth_run",
    "alink_target_material",
    "create_growth_run",
    "find_growth_runs",
    "get_growth_run",
    "link_target_material",
]


def _create_run_name() -> str:
    return f"create-growth-run-{shortened(current_task_run.parameters.get('name'))}"


def _link_run_name() -> str:
    parameters = current_task_run.parameters
    run = shortened(parameters.get("physical_sample_id"), 8)
    return f"link-target-material-{run}-s{shortened(parameters.get('sample_id'))}"


def _get_run_name() -> str:
    return f"get-growth-run-{shortened(current_task_run.parameters.get('physical_sample_id'), 8)}"


_find_run_name = listing_run_name("find-growth-runs")


def _lock_key(credentials: AtomscaleCredentials, name: str) -> str:
    """The lock key of a growth-run name at a service; neither the URL nor the key in it."""
    text = "\0".join(["growth-run", service_of(credentials), name_key(name)])
    return f"identity/{hashlib.sha256(text.encode()).hexdigest()[:32]}"


# Creates whose outcome this task run could not know (the reply was lost), by task run
# and name: when a retry then meets the growth run of that name, this run created it,
# and `atomscale.growth-run.created` is still sent. Bounded; an entry is used once.
_MAX_UNSURE = 1_000
_unsure: OrderedDict[tuple[str, str], None] = OrderedDict()
_unsure_lock = threading.Lock()


def _unsure_key(credentials: AtomscaleCredentials, name: str) -> tuple[str, str]:
    return (str(current_task_run.id), _lock_key(credentials, name))


def _note_unsure(credentials: AtomscaleCredentials, name: str) -> None:
    with _unsure_lock:
        _unsure[_unsure_key(credentials, name)] = None
        while len(_unsure) > _MAX_UNSURE:
            _unsure.popitem(last=False)


def _claim_unsure(credentials: AtomscaleCredentials, name: str) -> bool:
    key = _unsure_key(credentials, name)
    with _unsure_lock:
        if key not in _unsure:
            return False
        del _unsure[key]
        return True


def _create_inputs(
    name: Any, sample_id: Any, growth_instrument_id: Any, if_linked: Any
) -> tuple[str, int | None, int | None, IfLinked]:
    """The client's checks of a create (one rule for both), then `if_linked`."""
    name_sent, wanted, instrument = checked_create_inputs(name, sample_id, growth_instrument_id)
    return name_sent, wanted, instrument, checked_if_linked(if_linked, create_call(name))


def _link_inputs(
    physical_sample_id: Any, sample_id: Any, if_linked: Any
) -> tuple[str, int, IfLinked]:
    where = f"link_target_material({physical_sample_id!r:.40}, {sample_id!r:.20})"
    run_id = checked_physical_sample_id(physical_sample_id, where)
    linked = checked_optional_id(
        "sample_id", sample_id, where, "the sample_id that create_target_material returned"
    )
    if linked is None:
        raise AtomscaleValidationError(
            f"{where}: sample_id is missing. Pass the target material to link the growth "
            "run to (the sample_id that create_target_material returned)."
        )
    return run_id, linked, checked_if_linked(if_linked, where)


def _linking(run_id: str, sample_id: int) -> str:
    return f"link growth run {run_id} to target material {sample_id}"


def _after_failed_create(
    credentials: AtomscaleCredentials, name: str, error: AtomscaleError
) -> AtomscaleConflictError | None:
    """The 409 of a taken name, to resolve to the growth run of that name; None to raise.

    A transient failure is noted first: the create may have landed, so the retry's 409
    is this task run's own create (see `_note_unsure`).
    """
    if isinstance(error, AtomscaleConflictError):
        taken = not isinstance(error, GrowthRunLinkedError) and error.status_code == 409
        return error if taken else None
    if error.transient:
        _note_unsure(credentials, name)
    return None


def _vanished(name: str, error: AtomscaleConflictError) -> AtomscaleConflictError:
    return AtomscaleConflictError(
        f"The service says growth run name {name!r} is taken, but lists no growth run of "
        "that name for this API key (it may belong to a record this key cannot see). "
        "Choose another name, or ask the organisation's admin who holds it.",
        status_code=error.status_code,
        detail=error.detail,
    )


def _the_one(runs: list[GrowthRun], name: str, error: AtomscaleConflictError) -> GrowthRun:
    if not runs:
        raise _vanished(name, error)
    return runs[0]


def _found_by_id(error: AtomscaleConflictError) -> str | None:
    """The id a 409 names, if it is a usable UUID; else the name is looked up instead."""
    found = taken_id(error)
    if found is None:
        return None
    try:
        return checked_physical_sample_id(found, "the 409 reply")
    except AtomscaleValidationError:
        return None


def _existing(client: AtomscaleClient, name: str, error: AtomscaleConflictError) -> GrowthRun:
    """The growth run a 409 is about: by the id it names, else by name (as the SDK does)."""
    found = _found_by_id(error)
    run = None if found is None else client.get_growth_run(found, _reading(repr(name)))
    return run or _the_one(client.find_growth_runs(name, _finding(name)), name, error)


async def _aexisting(
    client: AsyncAtomscaleClient, name: str, error: AtomscaleConflictError
) -> GrowthRun:
    found = _found_by_id(error)
    run = None if found is None else await client.get_growth_run(found, _reading(repr(name)))
    return run or _the_one(await client.find_growth_runs(name, _finding(name)), name, error)


def _reading(run: str) -> str:
    """What reading a growth run is for, quoted in errors: `run` is a quoted name or an id."""
    return f"reading growth run {run}"


def _finding(name: str) -> str:
    return f"finding growth run {name!r}"


def _not_found(physical_sample_id: str) -> AtomscaleNotFoundError:
    return AtomscaleNotFoundError(
        f"Growth run {physical_sample_id} is not among this API key's organisation's "
        "physical samples. Check the id (GrowthRun.id from create_growth_run or "
        "find_growth_runs) and the API key."
    )


def _present(run: GrowthRun | None, physical_sample_id: str) -> GrowthRun:
    """The growth run read by id; the listing not showing it is `AtomscaleNotFoundError`."""
    if run is None:
        raise _not_found(physical_sample_id)
    return run


def _named(run: GrowthRun) -> str:
    """The name a growth run is locked by; its id when the reply has no name."""
    return run.name if run.name else run.id


def _announce_created(
    credentials: AtomscaleCredentials, run: GrowthRun, *, lost_reply: bool
) -> GrowthRun:
    """Send `atomscale.growth-run.created` and log it; the run, for the task to return."""
    growth_run_created(credentials, run)
    linked = run.target_material_id
    get_run_logger().info(
        "Created growth run %r (%s)%s%s.",
        run.name,
        run.id,
        f", linked to target material {linked}" if linked is not None else "",
        " (its first reply was lost; the retry found it)" if lost_reply else "",
    )
    return run


def _announce_linked(
    credentials: AtomscaleCredentials,
    linked: GrowthRun,
    previous: int | None,
    decision: LinkDecision,
) -> GrowthRun:
    """Send `atomscale.growth-run.linked` and log why; the run, for the task to return."""
    growth_run_linked(credentials, linked, previous)
    _log_found(linked, decision.why)
    return linked


def _log_found(run: GrowthRun, why: str) -> None:
    get_run_logger().info("Growth run %r (%s) exists already: %s.", run.name, run.id, why)


def _log_left_as_is(run: GrowthRun, decision: LinkDecision) -> None:
    """Log a decision not to link: found as asked, or kept linked elsewhere (a warning)."""
    if decision.kept:
        get_run_logger().warning("Growth run %r (%s) is %s.", run.name, run.id, decision.why)
    else:
        _log_found(run, decision.why)


def _decision_on_taken_name(
    credentials: AtomscaleCredentials,
    name: str,
    run: GrowthRun,
    wanted: int | None,
    if_linked: IfLinked,
) -> LinkDecision:
    """What to do with the growth run of a taken name (`link_decision`), logged.

    When this task run's own create made it (its reply was lost), it is announced as
    created first.
    """
    lost_reply = _claim_unsure(credentials, name)
    decision = link_decision(run, wanted, if_linked)
    if lost_reply:
        _announce_created(credentials, run, lost_reply=True)
    if not decision.link:
        _log_left_as_is(run, decision)
    return decision


def _decision_on_link(run: GrowthRun, wanted: int, if_linked: IfLinked) -> LinkDecision:
    """What to do with a growth run asked to be linked (`link_decision`), logged."""
    decision = link_decision(run, wanted, if_linked)
    if not decision.link:
        _log_left_as_is(run, decision)
    return decision


@task(**uncached_task_options("create_growth_run", retry_if_transient, _create_run_name))
def create_growth_run(
    credentials: AtomscaleCredentials,
    name: str,
    sample_id: int | None = None,
    growth_instrument_id: int | None = None,
    *,
    if_linked: IfLinked = "error",
) -> GrowthRun:
    """Create the growth run (physical sample) of a name, or find it, linked to a target material.

    Exactly once by the service's own rule: names are unique in the organisation
    (ignoring case and surrounding whitespace), so when the name is taken (by an earlier
    run, a colleague, the SDK's upload, or this task's own create whose reply was lost)
    the existing growth run is returned rather than a second one made. An existing one
    that is not linked is linked to `sample_id`; one linked to a *different* target
    material is not re-linked silently: `if_linked` decides. Pass the same name to the
    SDK's `Client.upload(files, physical_sample=name)` on the instrument PC and the data
    lands in this growth run.

    Sends `atomscale.growth-run.created` when it creates one, and
    `atomscale.growth-run.linked` when it links an existing one, each related to the
    target material's resource. Not cached; transient faults are retried.

    Args:
        credentials: The Atomscale account (its key must be allowed to write).
        name: The growth run's name, e.g. the one on the sample holder; sent trimmed,
            at most 256 characters.
        sample_id: The target material this run grows (from `create_target_material`),
            or None for none.
        growth_instrument_id: The growth instrument's id, if any (the SDK's
            `list_growth_instruments()` gives them as `synth_source_id`).
        if_linked: For an existing growth run linked to another target material:
            `"error"` raises `GrowthRunLinkedError`, `"relink"` links it to `sample_id`,
            `"keep"` leaves it (a warning says so).

    Returns:
        The growth run, linked as asked (or as kept).

    Raises:
        AtomscaleValidationError: A blank or too long name, an id that is not a whole
            number >= 1, or an unknown `if_linked`; nothing is sent.
        AtomscaleNotFoundError: No target material `sample_id` in this organisation.
        GrowthRunLinkedError: The name's growth run is linked to another target
            material and `if_linked="error"`; nothing was changed.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import (
            AtomscaleCredentials,
            create_growth_run,
            create_target_material,
        )

        @flow
        def start_growth() -> str | None:
            credentials = AtomscaleCredentials.load("atomscale")
            sample = create_target_material(
                credentials, "BTO on STO #22", "SrTiO3",
                layers=[{"composition_string": "BaTiO3", "orientation": "001"}],
            )
            run = create_growth_run(credentials, "PLD-2026-0412", sample_id=sample.sample_id)
            return run.name

        print(start_growth())  # PLD-2026-0412 (the same growth run when run again)
        ```
    """
    name, wanted, instrument, if_linked = _create_inputs(
        name, sample_id, growth_instrument_id, if_linked
    )
    client = client_to(credentials, f"create growth run {name!r}")
    with identity_section(_lock_key(credentials, name), f"growth run {name!r}") as held:
        held.fence()
        try:
            run = client.create_growth_run(name, sample_id=wanted, growth_instrument_id=instrument)
        except AtomscaleError as exc:
            taken = _after_failed_create(credentials, name, exc)
            if taken is None:
                raise
        else:
            return _announce_created(credentials, run, lost_reply=False)
        run = _existing(client, name, taken)
        decision = _decision_on_taken_name(credentials, name, run, wanted, if_linked)
        if not decision.link:
            return run
        held.fence()
        previous = run.target_material_id
        linked = client.link_target_material(run.id, wanted)
    return _announce_linked(credentials, linked, previous, decision)


@task(**uncached_task_options("acreate_growth_run", aretry_if_transient, _create_run_name))
async def acreate_growth_run(
    credentials: AtomscaleCredentials,
    name: str,
    sample_id: int | None = None,
    growth_instrument_id: int | None = None,
    *,
    if_linked: IfLinked = "error",
) -> GrowthRun:
    """Async twin of `create_growth_run`: same arguments, result and errors."""
    name, wanted, instrument, if_linked = _create_inputs(
        name, sample_id, growth_instrument_id, if_linked
    )
    client = async_client_to(credentials, f"create growth run {name!r}")
    async with aidentity_section(_lock_key(credentials, name), f"growth run {name!r}") as held:
        await held.afence()
        try:
            run = await client.create_growth_run(
                name, sample_id=wanted, growth_instrument_id=instrument
            )
        except AtomscaleError as exc:
            taken = _after_failed_create(credentials, name, exc)
            if taken is None:
                raise
        else:
            return _announce_created(credentials, run, lost_reply=False)
        run = await _aexisting(client, name, taken)
        decision = _decision_on_taken_name(credentials, name, run, wanted, if_linked)
        if not decision.link:
            return run
        await held.afence()
        previous = run.target_material_id
        linked = await client.link_target_material(run.id, wanted)
    return _announce_linked(credentials, linked, previous, decision)


@task(**uncached_task_options("link_target_material", retry_if_transient, _link_run_name))
def link_target_material(
    credentials: AtomscaleCredentials,
    physical_sample_id: str,
    sample_id: int,
    *,
    if_linked: IfLinked = "error",
) -> GrowthRun:
    """Link an existing growth run to a target material; idempotent.

    `PATCH /physical_samples/{id}/target_material`, sent only when needed: already
    linked to `sample_id`, nothing is sent; linked to another target material,
    `if_linked` decides, as in `create_growth_run`. Sends `atomscale.growth-run.linked`
    when it links. Not cached; transient faults are retried.

    Args:
        credentials: The Atomscale account (its key must be allowed to write).
        physical_sample_id: The growth run's id, a UUID (`GrowthRun.id`).
        sample_id: The target material, from `create_target_material`.
        if_linked: For a growth run linked to another target material: `"error"`,
            `"relink"` or `"keep"` (see `create_growth_run`).

    Returns:
        The growth run as linked (or as kept).

    Raises:
        AtomscaleValidationError: A malformed UUID, a bad `sample_id` or an unknown
            `if_linked`; nothing is sent.
        AtomscaleNotFoundError: No such growth run, or no target material `sample_id`,
            in this organisation.
        GrowthRunLinkedError: Linked to another target material and
            `if_linked="error"`; nothing was changed.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import (
            AtomscaleCredentials,
            create_growth_run,
            create_target_material,
            link_target_material,
        )

        @flow
        def link_later() -> bool:
            credentials = AtomscaleCredentials.load("atomscale")
            run = create_growth_run(credentials, "MBE-2026-117")
            sample = create_target_material(
                credentials, "GaAs buffer #117", "GaAs",
                layers=[{"composition_string": "GaAs", "orientation": "001"}],
            )
            linked = link_target_material(credentials, run.id, sample.sample_id)
            return linked.target_material_id == sample.sample_id

        print(link_later())  # True
        ```
    """
    run_id, wanted, if_linked = _link_inputs(physical_sample_id, sample_id, if_linked)
    client = client_to(credentials, _linking(run_id, wanted))
    first = _present(client.get_growth_run(run_id, _reading(run_id)), run_id)
    with identity_section(_lock_key(credentials, _named(first)), f"growth run {run_id}") as held:
        # As it is now, under the lock: another run may have linked it meanwhile.
        run = _present(client.get_growth_run(run_id, _reading(run_id)), run_id)
        decision = _decision_on_link(run, wanted, if_linked)
        if not decision.link:
            return run
        held.fence()
        previous = run.target_material_id
        linked = client.link_target_material(run_id, wanted)
    return _announce_linked(credentials, linked, previous, decision)


@task(**uncached_task_options("alink_target_material", aretry_if_transient, _link_run_name))
async def alink_target_material(
    credentials: AtomscaleCredentials,
    physical_sample_id: str,
    sample_id: int,
    *,
    if_linked: IfLinked = "error",
) -> GrowthRun:
    """Async twin of `link_target_material`: same arguments, result and errors."""
    run_id, wanted, if_linked = _link_inputs(physical_sample_id, sample_id, if_linked)
    client = async_client_to(credentials, _linking(run_id, wanted))
    first = _present(await client.get_growth_run(run_id, _reading(run_id)), run_id)
    key = _lock_key(credentials, _named(first))
    async with aidentity_section(key, f"growth run {run_id}") as held:
        run = _present(await client.get_growth_run(run_id, _reading(run_id)), run_id)
        decision = _decision_on_link(run, wanted, if_linked)
        if not decision.link:
            return run
        await held.afence()
        previous = run.target_material_id
        linked = await client.link_target_material(run_id, wanted)
    return _announce_linked(credentials, linked, previous, decision)


def _wanted_id(physical_sample_id: Any) -> str:
    return checked_physical_sample_id(
        physical_sample_id, f"get_growth_run({physical_sample_id!r:.40})"
    )


@task(**uncached_task_options("get_growth_run", retry_if_transient, _get_run_name))
def get_growth_run(credentials: AtomscaleCredentials, physical_sample_id: str) -> GrowthRun:
    """Read one growth run by its id, with its target material as the listing nests it.

    `GET /physical_samples/?physical_sample_id=...`. Not cached; transient faults are
    retried.

    Args:
        credentials: The Atomscale account.
        physical_sample_id: The growth run's id, a UUID (`GrowthRun.id`).

    Returns:
        The growth run; `target_material` holds the linked target material's
        `sample_name` and `substrate` (None when unlinked).

    Raises:
        AtomscaleValidationError: `physical_sample_id` is not a UUID; nothing is sent.
        AtomscaleNotFoundError: This organisation has no growth run with that id.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import (
            AtomscaleCredentials,
            create_growth_run,
            create_target_material,
            get_growth_run,
        )

        @flow
        def what_does_it_grow() -> str | None:
            credentials = AtomscaleCredentials.load("atomscale")
            sample = create_target_material(
                credentials, "LSMO on STO #3", "SrTiO3",
                layers=[{"composition_string": "La0.7Sr0.3MnO3", "orientation": "001"}],
            )
            run = create_growth_run(credentials, "PLD-2026-0500", sample_id=sample.sample_id)
            return get_growth_run(credentials, run.id).target_material_name

        print(what_does_it_grow())  # LSMO on STO #3
        ```
    """
    wanted = _wanted_id(physical_sample_id)
    client = client_to(credentials, f"read growth run {wanted}")
    return _present(client.get_growth_run(wanted, _reading(wanted)), wanted)


@task(**uncached_task_options("aget_growth_run", aretry_if_transient, _get_run_name))
async def aget_growth_run(credentials: AtomscaleCredentials, physical_sample_id: str) -> GrowthRun:
    """Async twin of `get_growth_run`: same arguments, result and errors."""
    wanted = _wanted_id(physical_sample_id)
    client = async_client_to(credentials, f"read growth run {wanted}")
    return _present(await client.get_growth_run(wanted, _reading(wanted)), wanted)


def _checked_name(name: Any) -> str | None:
    return None if name is None else checked_run_name(name, f"find_growth_runs(name={name!r:.40})")


@task(**uncached_task_options("find_growth_runs", retry_if_transient, _find_run_name))
def find_growth_runs(credentials: AtomscaleCredentials, name: str | None = None) -> list[GrowthRun]:
    """List the organisation's growth runs, all or the one of a name.

    Reads `GET /physical_samples/` as it arrives and keeps only what is asked for, so
    memory does not grow with the organisation (its time does; see the performance
    guide). Names compare as the service compares them: ignoring case and surrounding
    whitespace. Not cached; transient faults are retried.

    Args:
        credentials: The Atomscale account.
        name: Only the growth run of this name; None for all.

    Returns:
        The growth runs in the service's order; `[]` if none matches.

    Raises:
        AtomscaleValidationError: `name` is blank, too long or not text; nothing is sent.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import AtomscaleCredentials, create_growth_run, find_growth_runs

        @flow
        def look_up() -> list[str | None]:
            credentials = AtomscaleCredentials.load("atomscale")
            create_growth_run(credentials, "Sputter-2026-031")
            return [run.name for run in find_growth_runs(credentials, name="  sputter-2026-031")]

        print(look_up())  # ['Sputter-2026-031']
        ```
    """
    wanted = _checked_name(name)
    purpose = listing_purpose("growth runs", wanted)
    return client_to(credentials, purpose).find_growth_runs(wanted, purpose)


@task(**uncached_task_options("afind_growth_runs", aretry_if_transient, _find_run_name))
async def afind_growth_runs(
    credentials: AtomscaleCredentials, name: str | None = None
) -> list[GrowthRun]:
    """Async twin of `find_growth_runs`: same arguments, result and errors."""
    wanted = _checked_name(name)
    purpose = listing_purpose("growth runs", wanted)
    return await async_client_to(credentials, purpose).find_growth_runs(wanted, purpose)
