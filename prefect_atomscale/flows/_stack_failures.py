"""How a `stack-from-file` run that could not write its whole stack says so.

Every failure after the file was read publishes the layer table (with a status and a
reason per layer) and the picture, logs the layers that are not in place
(`_layer_log`), and raises an error of the service error's type whose message is one
summary: what failed, which layers (always L1, L2, ..., L1 on the substrate; the
service counts `layers.1` from 0), why (said once), and the next step. That summary is
the run's first ERROR line (`_reported_by_the_flow`).

Everything here is read from the errors' declared fields (`AtomscaleError.reason`,
`.service_said`, `.layer_outcomes`, `StackConflictError.differences`), never from their
messages; the error raised carries the stack's outcome in a few words
(`stack_summary`) and its target material (`sample_id`), for a folder run's table.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

from prefect_atomscale._artifacts import (
    IN_PLACE,
    plural,
    publish_stack_artifacts,
    publish_unwritten_stack,
)
from prefect_atomscale._exceptions import AtomscaleError, StackConflictError
from prefect_atomscale._models import Layer, TargetMaterial
from prefect_atomscale._stacks import ExistingStack, LayerSpec, StackSpec
from prefect_atomscale.flows._layer_log import log_statuses, positions

__all__ = [
    "clipped",
    "not_created",
    "said_briefly",
    "stack_failed",
    "unreachable",
]

# Most distinct reasons a summary names; the others are in the log and the table.
_MAX_REASONS = 5


def clipped(text: str, limit: int = 140) -> str:
    """`text` on one line, cut to `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def l_numbered(text: str) -> str:
    """The service's `layers.1.space_group` (counted from 0) -> `L2 space_group`."""
    return re.sub(
        r"\b(?:body\.)?layers\.(\d+)(\.(?=\w))?",
        lambda found: f"L{int(found[1]) + 1}" + (" " if found[2] else ""),
        text,
    )


def said_briefly(error: AtomscaleError, limit: int = 140) -> str:
    """What went wrong, for a summary: what the service said and its status, else the reason."""
    if error.service_said is not None:
        status = f" ({error.status_code})" if error.status_code else ""
        return clipped(l_numbered(error.service_said.rstrip(".")) + status, limit)
    return clipped(error.reason, limit)


def unreachable(error: AtomscaleError) -> str | None:
    """`service unreachable: <what happened>` if `error` is a transient fault, else None.

    A transient error that reaches a flow outlived its retries.
    """
    return f"service unreachable: {said_briefly(error, 120)}" if error.transient else None


def _reported(
    error: AtomscaleError, message: str, summary: str, sample_id: int | None = None
) -> AtomscaleError:
    """The same error, same type and fields (`transient`, ...), saying the stack's summary."""
    copied = copy.copy(error)
    copied.message = message
    copied.args = (message,)
    copied.layer_outcomes = None  # said in the message and the artifacts
    copied.stack_summary = summary
    copied.sample_id = sample_id
    return copied


def _asked(spec: LayerSpec, position: int, sample_id: int) -> Layer:
    """A layer that is not at the service, as the file asks for it (no record id).

    `sample_id` 0 for a target material that was not created: the artifacts of such a
    stack (`publish_unwritten_stack`) never show it, nor a record id not in place.
    """
    return Layer(
        id=0,
        layer_id=position,
        sample_id=sample_id,
        composition_string=spec.composition,
        orientation=spec.orientation,
        space_group=spec.space_group,
        mp_id=spec.mp_id,
    )


def _next_step(
    path: str, failed: Sequence[int], in_place: int, error: AtomscaleError | None
) -> str:
    """What to do now, said at the end of a failed run's summary.

    E.g. `Fix L4 in lab/pld_0412.yaml and run again; the 4 layers in place are not
    rewritten.`
    """
    kept = ""
    if in_place:
        verb = "is" if in_place == 1 else "are"
        kept = f"; the {plural(in_place, 'layer')} in place {verb} not rewritten"
    if error is not None and error.transient:
        return f"Run again once the service answers{kept}."
    if failed:
        return f"Fix {positions(failed)} in {path} and run again{kept}."
    return f"Run again once the cause is fixed{kept}."


def stack_failed(
    spec: StackSpec,
    existing: ExistingStack,
    material: TargetMaterial,
    path: str,
    error: AtomscaleError,
    url: str,
) -> AtomscaleError:
    """Report a stack `create_layers` could not finish, on a target material that exists.

    Publishes the artifacts with a status and a reason per layer, logs the layers, and
    returns the error to raise, whose message is the stack's summary and the next step.
    """
    outcomes = error.layer_outcomes
    layers: list[Layer] = []
    status: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for position, layer_spec in enumerate(spec.layer_specs(), start=1):
        outcome = outcomes.get(position) if outcomes is not None else existing.layers.get(position)
        if isinstance(outcome, Layer):
            layers.append(outcome)
            status[position] = "already there" if position in existing.layers else "created"
            continue
        layers.append(_asked(layer_spec, position, material.sample_id))
        if isinstance(outcome, str):
            status[position], reasons[position] = "failed", clipped(outcome)
        else:  # the task failed before it tried the layers one by one
            status[position], reasons[position] = "not attempted", said_briefly(error)
    summary = _stack_summary(material.sample_id, status, reasons)
    failed = [position for position, state in sorted(status.items()) if state == "failed"]
    in_place = sum(state in IN_PLACE for state in status.values())
    published = publish_stack_artifacts(
        material, layers, summary=summary, source=path, status=status, reasons=reasons, url=url
    )
    log_statuses(layers, status, reasons, f"layers-{published.key}")
    message = f"{path}: {summary}. {_next_step(path, failed, in_place, error)}"
    return _reported(error, message, summary, material.sample_id)


def not_created(spec: StackSpec, path: str, error: AtomscaleError) -> AtomscaleError:
    """Report a stack whose target material was not created; nothing of it was written.

    The service refused the whole request (naming the layers it refused), was
    unreachable, or the file's name is taken by a different stack. Publishes the
    artifacts (the stack drawn as the file asks for it), logs the layers, and returns
    the error to raise: for a name taken, `error` itself, whose message says what to do.
    """
    specs = spec.layer_specs()
    refused = _refused_layers(error, specs)
    conflicts = _conflicting_layers(error) if isinstance(error, StackConflictError) else {}
    if refused:
        said = [
            f"L{position} {_what(specs[position - 1])}: {reason}"
            for position, reason in list(refused.items())[:_MAX_REASONS]
        ]
        if len(refused) > _MAX_REASONS:
            said.append(f"{len(refused) - _MAX_REASONS} more in the layer table")
        cause = f"the service refused {'; '.join(said)}"
        other = f"not written: the stack is one request, refused for {positions(list(refused))}"
    elif isinstance(error, StackConflictError):
        cause = "the account has a different stack of this name"
        other = "not sent: the account has a different stack of this name"
    else:
        cause = said_briefly(error)
        other = f"not written: {cause}"
    status: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for position in range(1, len(specs) + 1):
        if position in refused:
            status[position], reasons[position] = "failed", refused[position]
        else:
            status[position] = "not attempted"
            reasons[position] = conflicts.get(position, other)
    layers = [_asked(layer, position, 0) for position, layer in enumerate(specs, start=1)]
    published = publish_unwritten_stack(
        spec.name,
        spec.substrate,
        layers,
        summary=clipped(cause, 200),
        source=path,
        status=status,
        reasons=reasons,
    )
    log_statuses(layers, status, reasons, f"layers-{published.key}")
    if isinstance(error, StackConflictError):
        error.stack_summary = clipped(error.reason)
        return error
    # In a few words, for the folder's table: its sample id column says it was not created.
    if refused:
        short = "; ".join(f"L{position} refused: {why}" for position, why in refused.items())
        where = f"{path}: target material {spec.name!r} not created: {cause}"
        nothing = f"none of its {plural(len(specs), 'layer')} was written"
        message = f"{where}; {nothing}. {_next_step(path, list(refused), 0, error)}"
    else:
        short = f"not created: {cause}"
        message = (
            f"{path}: target material {spec.name!r} not created, none of its "
            f"{plural(len(specs), 'layer')} written: {error.message}"
        )
        if error.transient:
            message += f" {_next_step(path, [], 0, error)}"
    return _reported(error, message, short)


def _what(layer: LayerSpec) -> str:
    """`(BaTiO3 001)`: a layer's formula and orientation, for a sentence."""
    return f"({' '.join(filter(None, [layer.composition, layer.orientation]))})"


def _refused_layers(error: AtomscaleError, specs: Sequence[LayerSpec]) -> dict[int, str]:
    """Position -> why, for each layer a refused create-with-layers names.

    The service's 422 names them by `loc` `body.layers.<index>.<field>`, the index
    counted from 0.
    """
    refused: dict[int, list[str]] = {}
    code = f" ({error.status_code})" if error.status_code else ""
    for item in error.detail if isinstance(error.detail, list) else []:
        loc = item.get("loc", []) if isinstance(item, dict) else []
        index = loc[2] if len(loc) >= 3 and list(loc[:2]) == ["body", "layers"] else None
        if isinstance(index, int) and 0 <= index < len(specs):
            field = ".".join(str(part) for part in loc[3:]) or "the layer"
            said = f"{field}: {str(item.get('msg', 'refused')).rstrip('.')}{code}"
            refused.setdefault(index + 1, []).append(l_numbered(said))
    return {position: "; ".join(refused[position]) for position in sorted(refused)}


def _conflicting_layers(error: StackConflictError) -> dict[int, str]:
    """Position -> what the account's target material holds there instead."""
    found: dict[int, str] = {}
    for difference in error.differences:
        found.setdefault(
            difference.position,
            f"target material {difference.sample_id} has {difference.there} here",
        )
    return found


def _stack_summary(sample_id: int, status: Mapping[int, str], reasons: Mapping[int, str]) -> str:
    """What a stack that was not finished came to, in one sentence.

    E.g. `2 of 42 layers failed (L4: <reason>; L30: <reason>); the other 40 are in
    place in target material 17`. A reason several layers share is said once.
    """
    total = len(status)
    parts = []
    for state in ("failed", "not attempted"):
        where = [position for position, s in sorted(status.items()) if s == state]
        if not where:
            continue
        by_reason: dict[str, list[int]] = {}
        for position in where:
            by_reason.setdefault(reasons.get(position, ""), []).append(position)
        said = [
            f"{positions(at)}: {reason}" if reason else positions(at)
            for reason, at in list(by_reason.items())[:_MAX_REASONS]
        ]
        if len(by_reason) > _MAX_REASONS:
            said.append(f"{len(by_reason) - _MAX_REASONS} more reasons in the log")
        parts.append(f"{len(where)} of {plural(total, 'layer')} {state} ({'; '.join(said)})")
    in_place = sum(s in IN_PLACE for s in status.values())
    if in_place == 0:
        tail = f"no layer is in place in target material {sample_id}"
    elif in_place == total:
        tail = f"all {plural(total, 'layer')} are in place in target material {sample_id}"
    else:
        verb = "is" if in_place == 1 else "are"
        tail = f"the other {in_place} {verb} in place in target material {sample_id}"
    return "; ".join([*parts, tail])
