"""What a growth-run write is given and what it decides, without sending anything.

A growth run is a physical sample: a record of the organisation with a UUID id and a
name that is unique in it (surrounding whitespace aside, ignoring case, the rule the
service and the official SDK apply). The checks here run before any request, so bad
input fails at once and is never retried. `link_decision` is the one rule both
`create_growth_run` and `link_target_material` follow when a growth run exists already
(see docs/guides/growth-runs.md): linked as asked, nothing to do; unlinked, link it; linked
elsewhere, do what `if_linked` says.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal, get_args

from prefect_atomscale._exceptions import (
    AtomscaleConflictError,
    AtomscaleProtocolError,
    AtomscaleValidationError,
    GrowthRunLinkedError,
)
from prefect_atomscale._models import GrowthRun
from prefect_atomscale._payloads import _positive_int, _text

__all__ = [
    "IfLinked",
    "LinkDecision",
    "checked_create_inputs",
    "checked_if_linked",
    "checked_optional_id",
    "checked_physical_sample_id",
    "checked_run_name",
    "create_call",
    "link_decision",
    "name_key",
    "taken_id",
]

IfLinked = Literal["error", "relink", "keep"]
"""What to do with a growth run that is linked to a different target material.

`"error"` (the default) raises `GrowthRunLinkedError` and changes nothing; `"relink"`
links it to the target material asked for; `"keep"` leaves it linked as it is, with a
warning in the run's log.

Example:
    ```python
    from typing import get_args

    from prefect_atomscale import IfLinked

    print(get_args(IfLinked))  # ('error', 'relink', 'keep')
    ```
"""


def name_key(name: str) -> str:
    """The form in which two growth-run names are the same: trimmed, lower case.

    `str.lower`, not `casefold`, because that is what the SDK compares with.
    """
    return name.strip().lower()


def checked_run_name(name: Any, where: str) -> str:
    """A growth run's name as it is sent: text, trimmed, not empty, within the limit."""
    return _text(
        "name",
        name,
        where,
        required="Give the growth run a name, e.g. the one written on the sample holder",
    )


def checked_physical_sample_id(value: Any, where: str) -> str:
    """A physical sample's id in its canonical form (lower-case UUID), checked locally."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            pass
    raise AtomscaleValidationError(
        f"{where}: physical_sample_id {value!r:.60} is not a UUID. Pass the id that "
        "create_growth_run or find_growth_runs returned (GrowthRun.id), e.g. "
        "'0b7c6a4e-3f7e-4c57-9d0e-1a2b3c4d5e6f'."
    )


def checked_optional_id(name: str, value: Any, where: str, meaning: str) -> int | None:
    """An optional positive integer id (`sample_id`, `growth_instrument_id`)."""
    return None if value is None else _positive_int(name, value, where, meaning)


def create_call(name: Any) -> str:
    """How errors name a create of a growth run: `create_growth_run(<name>)`, kept short."""
    return f"create_growth_run({name!r:.40})"


def checked_create_inputs(
    name: Any, sample_id: Any, growth_instrument_id: Any
) -> tuple[str, int | None, int | None]:
    """A create's name, target material and growth instrument, checked as they are sent.

    One check for the client's `create_growth_run` and the tasks': the same input fails
    with the same error, whichever is called.
    """
    where = create_call(name)
    return (
        checked_run_name(name, where),
        checked_optional_id(
            "sample_id", sample_id, where, "the sample_id that create_target_material returned"
        ),
        checked_optional_id(
            "growth_instrument_id",
            growth_instrument_id,
            where,
            "the growth instrument's id (the SDK's list_growth_instruments: synth_source_id)",
        ),
    )


def checked_if_linked(value: Any, where: str) -> IfLinked:
    """`if_linked` as one of its three values; anything else fails before any request."""
    for choice in get_args(IfLinked):
        if value == choice:
            return choice  # type: ignore[no-any-return]
    raise AtomscaleValidationError(
        f"{where}: if_linked={value!r:.40} is not one of 'error', 'relink' or 'keep'."
    )


def taken_id(error: AtomscaleConflictError) -> str | None:
    """The existing sample's id from a 409 that says which (`detail.physical_sample_id`)."""
    detail = error.detail
    found = detail.get("physical_sample_id") if isinstance(detail, dict) else None
    return found.strip() if isinstance(found, str) and found.strip() else None


@dataclass(frozen=True)
class LinkDecision:
    """What to do with an existing growth run: link it (or not), and why, for the log.

    `kept` marks a growth run left linked elsewhere (`if_linked="keep"`): a warning.
    """

    link: bool
    why: str
    kept: bool = False


def _linked_to(run: GrowthRun) -> int | None:
    """The target material `run` is linked to; an error when the reply does not tell."""
    linked = run.target_material_id
    if linked is not None:
        return linked
    # Unlinked only when the reply says so: a null link and no nested target material.
    # A nested one without an id is linked to something we cannot name.
    said = {"sample_id", "target_material"} & run.model_fields_set
    if said and run.target_material is None:
        return None
    raise AtomscaleProtocolError(
        f"The reply for growth run {run.name!r} ({run.id}) does not say which target "
        "material it is linked to (no usable sample_id or target_material.sample_id), so "
        "it cannot be linked safely. Check that base_url is the Atomscale API; if it is, "
        "the API has changed and prefect-atomscale needs an update."
    )


def link_decision(run: GrowthRun, wanted: int | None, if_linked: IfLinked) -> LinkDecision:
    """Decide whether an existing growth run gets linked to `wanted`.

    Raises:
        GrowthRunLinkedError: Linked elsewhere and `if_linked="error"`.
        AtomscaleProtocolError: The reply does not say what it is linked to.
    """
    if wanted is None:
        return LinkDecision(False, "no target material was asked for")
    linked = _linked_to(run)
    if linked == wanted:
        return LinkDecision(False, f"already linked to target material {wanted}")
    if linked is None:
        return LinkDecision(True, f"not linked yet; linking it to target material {wanted}")
    if if_linked == "relink":
        return LinkDecision(True, f"linked to target material {linked}; relinking to {wanted}")
    if if_linked == "keep":
        return LinkDecision(
            False,
            f"linked to target material {linked}, kept (if_linked='keep'), not {wanted}",
            kept=True,
        )
    raise GrowthRunLinkedError(run.id, run.name, linked_to=linked, wanted=wanted)
