"""Prefect tasks that read target materials and change one, each with a sync and an async twin.

`get_stack` / `aget_stack` and `find_target_materials` / `afind_target_materials` read
the organisation's listing (`GET /target-materials/`, the API's only read, one row per
layer), streamed and filtered as the create tasks' look-ups are (see `_listing`).
`update_target_material` / `aupdate_target_material` change a target material's name,
substrate or metadata (`PATCH /target-materials/{sample_id}`).

None of them is cached (`NO_CACHE`): a read must see the service as it is now, and an
update must reach it. They retry transient faults exactly as the create tasks do (see
`_retries`), and check their input before any request.

An update keeps the create tasks right (step U of docs/design/write-protocol.md). It
holds the material's lock, retires the cached `create_target_material` results (see
`_caching.invalidate_target_materials`), which may hold the material as it was, and it
keeps the ownership mark (see `_ownership`) in new metadata: a material the person
created stays theirs, and is adopted by the name it has now. The process's views of
stacks (`_views`) hold layers only, which an update does not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import task
from prefect.logging import get_run_logger
from prefect.runtime import task_run as current_task_run

from prefect_atomscale import _events
from prefect_atomscale._caching import invalidate_target_materials
from prefect_atomscale._client import target_material_changes
from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import AtomscaleNotFoundError
from prefect_atomscale._identities import identity_of, moved, scope_of
from prefect_atomscale._locks import domain
from prefect_atomscale._models import Layer, TargetMaterial, TargetMaterialRow
from prefect_atomscale._ownership import Owner, aowner_of, owner_of
from prefect_atomscale._payloads import OWNER_KEY, _positive_int, _text
from prefect_atomscale._protocol import astack_section, stack_section
from prefect_atomscale._retries import aretry_if_transient, retry_if_transient
from prefect_atomscale._task_support import (
    async_client_to,
    check_credentials,
    client_to,
    listing_purpose,
    listing_run_name,
    shortened,
    uncached_task_options,
)

__all__ = [
    "afind_target_materials",
    "aget_stack",
    "aupdate_target_material",
    "find_target_materials",
    "get_stack",
    "update_target_material",
]


def _stack_run_name() -> str:
    return f"get-stack-s{shortened(current_task_run.parameters.get('sample_id'))}"


_find_run_name = listing_run_name("find-target-materials")


def _update_run_name() -> str:
    return f"update-target-material-s{shortened(current_task_run.parameters.get('sample_id'))}"


def _material_id(sample_id: Any, task_name: str) -> int:
    return _positive_int(
        "sample_id",
        sample_id,
        f"{task_name}({sample_id!r:.40})",
        "the sample_id that create_target_material returned",
    )


def _stack_of(sample_id: int, rows: list[TargetMaterialRow]) -> list[Layer]:
    """The layers of the listed rows in stack order; no rows at all is an error."""
    if not rows:
        raise AtomscaleNotFoundError(
            f"Target material {sample_id} is not in the listing of this API key's "
            "organisation. Either it has no layers yet (the API lists a target material "
            "only through its layers, so it cannot tell an empty one from one that does not "
            f"exist), or no target material {sample_id} exists there. Check the sample_id "
            "and the API key; if you created it empty, add its layers first."
        )
    layers = sorted(
        (layer for row in rows for layer in [row.as_layer()] if layer is not None),
        key=lambda layer: (layer.layer_id, layer.id),
    )
    positions = [layer.layer_id for layer in layers]
    twice = sorted({position for position in positions if positions.count(position) > 1})
    if twice:
        get_run_logger().warning(
            "Target material %s has more than one record at position(s) %s (the API may "
            "store a second row at a position); all are returned, oldest record first.",
            sample_id,
            twice[:20],
        )
    return layers


def _reading(sample_id: int) -> str:
    return f"reading the stack of target material {sample_id}"


@task(**uncached_task_options("get_stack", retry_if_transient, _stack_run_name))
def get_stack(credentials: AtomscaleCredentials, sample_id: int) -> list[Layer]:
    """Read a target material's layers, in stack order (`layer_id` ascending).

    Not cached: every run reads the service as it is now. The API has no read of one
    target material, so this streams the listing of the whole organisation
    (`GET /target-materials/`) and keeps only this material's rows; its time grows with
    the organisation (see the performance guide). Transient faults are retried as in
    the create tasks.

    A sample_id the listing does not show raises `AtomscaleNotFoundError` rather than
    returning `[]`: the API lists a target material only through its layers, so "no
    layers" and "no such target material (here)" look the same, and an empty list for
    a mistyped sample_id or another organisation's material would let a flow go on as if
    the stack were empty. The error says so. Where the service does list a material
    without layers (as one row with empty layer fields), the result is `[]`.

    Two records at one position (the API may store a second row for a repeated write)
    are both returned, next to each other, the older record (lower `id`) first, and a
    warning names the positions: compare `layer_id`s to find them.

    Args:
        credentials: The Atomscale account.
        sample_id: The target material, from `create_target_material`.

    Returns:
        Its layers, by `layer_id`, then by record `id`.

    Raises:
        AtomscaleValidationError: `sample_id` is not a whole number >= 1; nothing is sent.
        AtomscaleNotFoundError: The listing shows no target material `sample_id`.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import AtomscaleCredentials, create_target_material, get_stack

        @flow
        def read_back() -> list[str | None]:
            credentials = AtomscaleCredentials.load("atomscale")
            sample = create_target_material(
                credentials, "SRO/STO read back", "SrTiO3",
                layers=[{"composition_string": "SrTiO3"}, {"composition_string": "SrRuO3"}],
            )
            return [layer.composition_string for layer in get_stack(credentials, sample.sample_id)]

        print(read_back())  # ['SrTiO3', 'SrRuO3']
        ```
    """
    material = _material_id(sample_id, "get_stack")
    client = client_to(credentials, _reading(material))
    return _stack_of(material, client.rows_of(material, _reading(material)))


@task(**uncached_task_options("aget_stack", aretry_if_transient, _stack_run_name))
async def aget_stack(credentials: AtomscaleCredentials, sample_id: int) -> list[Layer]:
    """Async twin of `get_stack`: same arguments, result and errors."""
    material = _material_id(sample_id, "get_stack")
    client = async_client_to(credentials, _reading(material))
    return _stack_of(material, await client.rows_of(material, _reading(material)))


def _checked_name(name: Any) -> str | None:
    if name is None:
        return None
    return _text(
        "name",
        name,
        f"find_target_materials(name={name!r:.40})",
        required="Give the name to look for, or leave name out for every target material",
    )


@task(**uncached_task_options("find_target_materials", retry_if_transient, _find_run_name))
def find_target_materials(
    credentials: AtomscaleCredentials, name: str | None = None
) -> list[TargetMaterial]:
    """List the organisation's target materials, all or those of one name, by `sample_id`.

    Read from the listing (`GET /target-materials/`), one target material per
    `sample_id` however many layers it has. Not cached, retried on transient faults as
    the create tasks are. The API lists a target material only through its layers, so
    one created without layers may be missing until it has some.

    Args:
        credentials: The Atomscale account.
        name: Only target materials named exactly this (surrounding whitespace aside, as
            names are stored); None for all.

    Returns:
        The target materials, lowest `sample_id` first; `[]` if none matches.

    Raises:
        AtomscaleValidationError: `name` is empty or not text; nothing is sent.
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import (
            AtomscaleCredentials,
            create_target_material,
            find_target_materials,
        )

        @flow
        def find_mine() -> list[str | None]:
            credentials = AtomscaleCredentials.load("atomscale")
            create_target_material(
                credentials, "LAO/STO find me", "SrTiO3",
                layers=[{"composition_string": "LaAlO3", "orientation": "001"}],
            )
            found = find_target_materials(credentials, name="LAO/STO find me")
            return [material.substrate for material in found]

        print(find_mine())  # ['SrTiO3']
        ```
    """
    wanted = _checked_name(name)
    purpose = listing_purpose("target materials", wanted)
    return client_to(credentials, purpose).target_materials(wanted, purpose)


@task(**uncached_task_options("afind_target_materials", aretry_if_transient, _find_run_name))
async def afind_target_materials(
    credentials: AtomscaleCredentials, name: str | None = None
) -> list[TargetMaterial]:
    """Async twin of `find_target_materials`: same arguments, result and errors."""
    wanted = _checked_name(name)
    purpose = listing_purpose("target materials", wanted)
    return await async_client_to(credentials, purpose).target_materials(wanted, purpose)


def _checked_update(
    credentials: AtomscaleCredentials,
    sample_id: int,
    sample_name: str | None,
    substrate: str | None,
    sample_metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """The fields an update changes, and usable credentials, checked before any request."""
    changes = target_material_changes(
        sample_id, sample_name=sample_name, substrate=substrate, sample_metadata=sample_metadata
    )
    check_credentials(credentials, _updating(sample_id))
    return changes


def _updating(sample_id: int) -> str:
    return f"update target material {sample_id}"


def _reading_mark(sample_id: int) -> str:
    return f"reading the ownership mark of target material {sample_id}"


def _marked(
    owner: Owner,
    current: TargetMaterial | None,
    sample_name: str | None,
    sample_metadata: Mapping[str, Any] | None,
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """The metadata to send and the ownership mark to keep in it (rule O).

    A listed material that is the person's gets the mark of its (new) name, which means
    sending its metadata too on a rename. A colleague's mark is kept as it is. A material
    the listing does not show (no layers) gets the person's mark with new metadata when
    the person's user id is known: the mark records that id, so on a colleague's
    material it would name nobody but its creator.
    """
    name = (sample_name or "").strip()
    if current is None:
        if sample_metadata is None or owner.person is None:
            return sample_metadata, None
        return sample_metadata, owner.mark(name) if name else {"user_id": owner.person}
    mark = (current.sample_metadata or {}).get(OWNER_KEY)
    if not isinstance(mark, Mapping):
        return sample_metadata, None
    if not owner.owns_material(current):
        return sample_metadata, (mark if sample_metadata is not None else None)
    new_mark = owner.mark(name or (current.sample_name or "").strip())
    if sample_metadata is None and dict(mark) == new_mark:
        return None, None  # the mark stays as it is
    stored = dict(current.sample_metadata or {})
    stored.pop(OWNER_KEY, None)
    return (stored if sample_metadata is None else sample_metadata), new_mark


def _current(rows: list[TargetMaterialRow]) -> TargetMaterial | None:
    return next((m for row in rows for m in [row.as_target_material()] if m is not None), None)


def _reads_the_mark(sample_name: str | None, sample_metadata: Mapping[str, Any] | None) -> bool:
    """Whether an update lists the material first: a new name or metadata moves the mark."""
    return sample_name is not None or sample_metadata is not None


def _metadata_to_send(
    owner: Owner,
    rows: list[TargetMaterialRow] | None,
    sample_name: str | None,
    sample_metadata: Mapping[str, Any] | None,
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """The metadata and ownership mark an update sends, from the rows listed for it.

    No rows (None): the update did not need to read the mark (`_reads_the_mark`).
    """
    if rows is None:
        return sample_metadata, None
    return _marked(owner, _current(rows), sample_name, sample_metadata)


def _record_identity(
    credentials: AtomscaleCredentials, owner: Owner, material: TargetMaterial
) -> None:
    """Step U: record a material this domain made, or the person's, by its new identity.

    So a create of that identity finds it (see `_identities`), even unlisted. Its events
    carry the new name too (see `_events`).
    """
    _events.target_material_known(credentials, material)
    if material.sample_name is None or material.substrate is None:
        return
    if material.sample_metadata is None:
        return  # the reply does not say the whole identity
    identity = identity_of(material.sample_name, material.substrate, material.sample_metadata)
    mine = owner.person is not None and str(material.user_id) == owner.person
    moved(scope_of(credentials, owner), material.sample_id, identity, known_mine=mine)


def _log_update(material: TargetMaterial, changes: dict[str, Any]) -> TargetMaterial:
    get_run_logger().info(
        "Updated the %s of target material %s.", ", ".join(sorted(changes)), material.sample_id
    )
    return material


@task(**uncached_task_options("update_target_material", retry_if_transient, _update_run_name))
def update_target_material(
    credentials: AtomscaleCredentials,
    sample_id: int,
    *,
    sample_name: str | None = None,
    substrate: str | None = None,
    sample_metadata: dict[str, Any] | None = None,
) -> TargetMaterial:
    """Change a target material's name, substrate or metadata (`PATCH /target-materials/{id}`).

    Only the fields given are sent (at least one); the others stay as they are.
    `sample_metadata` replaces the whole metadata. Checked before anything is sent, as
    `create_target_material` checks them. Not cached. Transient faults are retried as
    in the create tasks: a PATCH sets fields to given values, so repeating it after a
    reply that never came changes nothing more.

    The create tasks stay right afterwards: cached `create_target_material` results are
    retired (their next run asks the service), and a target material that
    `create_target_material` made for you keeps its ownership mark (the
    `prefect_atomscale` key of its metadata), so that `create_target_material` adopts
    it by the name and metadata it has now. Reading the mark costs one listing when
    `sample_name` or `sample_metadata` is given.

    Args:
        credentials: The Atomscale account (its key must be allowed to write).
        sample_id: The target material, from `create_target_material`.
        sample_name: Its new name.
        substrate: Its new substrate, e.g. `SrTiO3`.
        sample_metadata: Its new metadata, a JSON object; `{}` empties it. The key
            `prefect_atomscale` is reserved for the ownership mark.

    Returns:
        The target material as changed.

    Raises:
        AtomscaleValidationError: Nothing to change, an empty or non-text name or
            substrate, metadata that is not a JSON object, or a bad `sample_id`;
            nothing is sent.
        AtomscaleNotFoundError: No target material `sample_id` in this organisation.
        AtomscaleAuthError: The API key may read but not write (403).
        AtomscaleError: Any other failure, after retries for transient ones.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import (
            AtomscaleCredentials,
            create_target_material,
            update_target_material,
        )

        @flow
        def fix_the_substrate() -> str | None:
            credentials = AtomscaleCredentials.load("atomscale")
            sample = create_target_material(credentials, "ZnO on sapphire #3", "Al2O3")
            fixed = update_target_material(credentials, sample.sample_id, substrate="MgAl2O4")
            return fixed.substrate

        print(fix_the_substrate())  # MgAl2O4
        ```
    """
    changes = _checked_update(credentials, sample_id, sample_name, substrate, sample_metadata)
    client = client_to(credentials, _updating(sample_id))
    owner = owner_of(credentials)
    with stack_section(None, sample_id) as held:
        rows = None
        if _reads_the_mark(sample_name, sample_metadata):
            rows = client.rows_of(sample_id, _reading_mark(sample_id))
        metadata, mark = _metadata_to_send(owner, rows, sample_name, sample_metadata)
        try:
            material = held.write(
                lambda: client.update_target_material(
                    sample_id,
                    sample_name=sample_name,
                    substrate=substrate,
                    sample_metadata=metadata,
                    owner=mark,
                )
            )
        finally:  # also when the outcome is unknown: the PATCH may have landed
            invalidate_target_materials()
        held.end()
        _record_identity(credentials, owner, material)
    return _log_update(material, changes)


@task(**uncached_task_options("aupdate_target_material", aretry_if_transient, _update_run_name))
async def aupdate_target_material(
    credentials: AtomscaleCredentials,
    sample_id: int,
    *,
    sample_name: str | None = None,
    substrate: str | None = None,
    sample_metadata: dict[str, Any] | None = None,
) -> TargetMaterial:
    """Async twin of `update_target_material`: same arguments, result and errors."""
    changes = _checked_update(credentials, sample_id, sample_name, substrate, sample_metadata)
    client = async_client_to(credentials, _updating(sample_id))
    owner = await aowner_of(credentials)
    async with astack_section(None, sample_id) as held:
        rows = None
        if _reads_the_mark(sample_name, sample_metadata):
            rows = await client.rows_of(sample_id, _reading_mark(sample_id))
        metadata, mark = _metadata_to_send(owner, rows, sample_name, sample_metadata)
        try:
            material = await held.awrite(
                lambda: client.update_target_material(
                    sample_id,
                    sample_name=sample_name,
                    substrate=substrate,
                    sample_metadata=metadata,
                    owner=mark,
                )
            )
        finally:  # also when the outcome is unknown: the PATCH may have landed
            await domain().arun(invalidate_target_materials)
        await held.aend()
        await domain().arun(_record_identity, credentials, owner, material)
    return _log_update(material, changes)
