"""How a `stack-from-file` run that could not write its whole stack says so.

Every failure after the file was read publishes the layer table (with a status and a
reason per layer) and the picture, logs one line per layer that is not in place, and
raises an error of the service error's type whose message is one summary: what
failed, which layers (always L1, L2, ..., L1 on the substrate; the service counts
`layers.1` from 0), why (said once), and the next step.

That summary is the run's first ERROR line. Prefect logs a failed task's own ERROR
lines ("Finished in state Failed(...)", "Retries are exhausted") when the task ends,
before the flow gets the error back, so no `except` in the flow can come first; in a
run that reports its tasks' failures itself (`reported_by_the_flow`), those lines are
logged as warnings instead. The task runs still end Failed.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from prefect_atomscale._artifacts import (
    IN_PLACE,
    plural,
    publish_stack_artifacts,
    publish_unwritten_stack,
)
from prefect_atomscale._bulk import LAYER_OUTCOMES, layer_outcomes
from prefect_atomscale._exceptions import (
    AtomscaleError,
    InvalidStackFileError,
    StackConflictError,
)
from prefect_atomscale._models import Layer, TargetMaterial
from prefect_atomscale._stacks import ExistingStack, LayerSpec, StackSpec

__all__ = [
    "SAMPLE_ID",
    "SHORT",
    "not_created",
    "positions",
    "publish_invalid_file",
    "reported_by_the_flow",
    "retyped",
    "short_reason",
    "stack_failed",
]

# The attribute of a stack run's error that holds its reason in a few words, for the
# folder run's table and message.
SHORT = "_short_reason"
# The attribute of a stack run's error that holds the id of its target material, when
# one exists (the stack failed halfway), for the folder run's table.
SAMPLE_ID = "_sample_id"

# Most distinct reasons a summary names; the others are in the log and the table.
_MAX_REASONS = 5


def retyped(error: AtomscaleError, message: str, short: str) -> AtomscaleError:
    """The same error, same type and attributes (`transient`, ...), saying `message`.

    `short` is the reason in a few words, which a folder run shows for the file.
    """
    copied = copy.copy(error)
    copied.message = message
    copied.args = (message,)
    vars(copied).pop(LAYER_OUTCOMES, None)
    vars(copied)[SHORT] = short
    return copied


def l_numbered(text: str) -> str:
    """`layers.1.space_group` (the service counts from 0) -> `L2 space_group`."""
    return re.sub(
        r"\b(?:body\.)?layers\.(\d+)(\.(?=\w))?",
        lambda found: f"L{int(found[1]) + 1}" + (" " if found[2] else ""),
        text,
    )


def short_reason(message: str, limit: int = 140) -> str:
    """The gist of an error message for a summary.

    What the service said, or the first sentence, cut to `limit` characters; layers
    numbered L1, L2, ...
    """
    said = re.search(r"Atomscale answered (\d+) to .+? while .+?: (.+?)\.(?:\s|$)", message)
    if said:
        text = f"{said[2]} ({said[1]})"
    else:
        text = re.split(r"(?<=[.!?])\s", message.strip(), maxsplit=1)[0].rstrip(".")
    text = l_numbered(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def positions(numbers: Sequence[int]) -> str:
    """L4, L30 or L4-L41 (a run of consecutive positions), at most 8 named."""
    runs: list[list[int]] = []
    for position in numbers:
        if runs and position == runs[-1][-1] + 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    names = [f"L{run[0]}" if len(run) == 1 else f"L{run[0]}-L{run[-1]}" for run in runs]
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _asked(spec: LayerSpec, position: int, sample_id: int) -> Layer:
    """A layer that is not at the service, as the file asks for it (no record id)."""
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

    Logs each layer, publishes the artifacts with a status and a reason per layer, and
    returns the error to raise, whose message is the stack's summary and the next step.
    """
    outcomes = layer_outcomes(error)
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
            status[position], reasons[position] = "failed", short_reason(outcome)
        else:  # the task failed before it tried the layers one by one
            status[position], reasons[position] = "not attempted", short_reason(str(error))
    summary = _stack_summary(material.sample_id, status, reasons)
    failed = [position for position, state in sorted(status.items()) if state == "failed"]
    in_place = sum(state in IN_PLACE for state in status.values())
    _log_statuses(layers, status, reasons)
    publish_stack_artifacts(
        material, layers, summary=summary, source=path, status=status, reasons=reasons, url=url
    )
    message = f"{path}: {summary}. {_next_step(path, failed, in_place, error)}"
    reported = retyped(error, message, summary)
    vars(reported)[SAMPLE_ID] = material.sample_id
    return reported


def not_created(spec: StackSpec, path: str, error: AtomscaleError) -> AtomscaleError:
    """Report a stack whose target material was not created; nothing of it was written.

    The service refused the whole request (naming the layers it refused), was
    unreachable, or the file's name is taken by a different stack. Logs each layer,
    publishes the artifacts (the stack drawn as the file asks for it) and returns the
    error to raise: for a name taken, `error` itself, whose message says what to do.
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
        cause = short_reason(str(error))
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
    # In a few words, for the folder's table: its sample id column says it was not created.
    if refused:
        short = "; ".join(f"L{position} refused: {why}" for position, why in refused.items())
    else:
        short = f"not created: {cause}"
    _log_statuses(layers, status, reasons)
    publish_unwritten_stack(
        spec.name,
        spec.substrate,
        layers,
        summary=short_reason(cause, 200),
        source=path,
        status=status,
        reasons=reasons,
    )
    if isinstance(error, StackConflictError):
        vars(error)[SHORT] = short_reason(_without(path, str(error)))
        return error
    if refused:
        where = f"{path}: target material {spec.name!r} not created: {cause}"
        nothing = f"none of its {plural(len(specs), 'layer')} was written"
        message = f"{where}; {nothing}. {_next_step(path, list(refused), 0, error)}"
    else:
        message = (
            f"{path}: target material {spec.name!r} not created, none of its "
            f"{plural(len(specs), 'layer')} written: {l_numbered(str(error))}"
        )
        if error.transient:
            message += f" {_next_step(path, [], 0, error)}"
    return retyped(error, message, short)


def publish_invalid_file(path: str, error: InvalidStackFileError) -> None:
    """A markdown artifact listing a file's problems: it has no stack to draw.

    Key `stack-file-<file name>-invalid`; one problem per line, as the error says them.
    """
    name = Path(path).name
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "unnamed"
    # First lines: a formula's problem goes on with the formula and a caret under it.
    problems = [problem.describe().splitlines()[0] for problem in error.problems]
    problems = problems or [str(error).splitlines()[0]]
    said = plural(len(problems), "problem")
    create_markdown_artifact(
        markdown="\n\n".join(
            [
                f"### {_md(name)} cannot be used",
                f"**{said}**; nothing was sent. Fix the file and run again.",
                "\n".join(f"- {_md(problem)}" for problem in problems),
            ]
        ),
        key=f"stack-file-{slug}-invalid",
        description=f"Stack file {path} cannot be used: {said}; nothing was sent.",
    )


def _md(text: str) -> str:
    """Escape what markdown would read as formatting or HTML."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", text)


def _what(layer: LayerSpec) -> str:
    """`(BaTiO3 001)`: a layer's formula and orientation, for a sentence."""
    return f"({' '.join(filter(None, [layer.composition, layer.orientation]))})"


def _without(path: str, message: str) -> str:
    """A message about `path` without the path it starts with."""
    return message.removeprefix(f"{path}: ")


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
    """Position -> what differs there, from a conflict's problems."""
    found: dict[int, str] = {}
    for problem in error.problems:
        match = re.match(r"sample_id (\d+): L(\d+) is (.*?), the file says", problem)
        if match:
            found.setdefault(int(match[2]), f"target material {match[1]} has {match[3]} here")
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


def _log_statuses(
    layers: Sequence[Layer], status: Mapping[int, str], reasons: Mapping[int, str]
) -> None:
    """One line per layer of a stack that was not finished; the summary follows."""
    logger = get_run_logger()
    for layer in layers:
        what = " ".join(filter(None, [layer.composition_string, layer.orientation]))
        state = status[layer.layer_id]
        if state in IN_PLACE:
            logger.info("L%s %s: record %s, %s.", layer.layer_id, what, layer.id, state)
        else:
            logger.warning("L%s %s: %s: %s.", layer.layer_id, what, state, reasons[layer.layer_id])


# The tasks whose failure `stack_from_file` reports itself, by task name.
_REPORTED_TASKS = frozenset({"find-existing-stacks", "create_target_material", "create_layers"})
# Prefect's own ERROR lines of a failed task run (`prefect.task_engine`).
_TASK_FAILED = ("Finished in state ", "Task run failed with ")


class _ReportedByTheFlow(logging.Filter):
    """Logs a reported task's failure lines as warnings, in the flow runs registered."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, int] = {}
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.ERROR
            and getattr(record, "task_name", None) in _REPORTED_TASKS
            and getattr(record, "flow_run_id", None) in self.runs
            and isinstance(record.msg, str)
            and record.msg.startswith(_TASK_FAILED)
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_FILTER = _ReportedByTheFlow()


@contextmanager
def reported_by_the_flow(flow_run_id: str | None) -> Iterator[None]:
    """Within it, this flow run's reported tasks log their failure as warnings.

    The flow then logs the summary as the run's first ERROR line. Prefect's task run
    logger (`prefect.task_runs`) logs those lines directly, so a filter on it sees each
    one before any handler, the API's included.
    """
    if flow_run_id is None:
        yield
        return
    logger = logging.getLogger("prefect.task_runs")
    with _FILTER.lock:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        _FILTER.runs[flow_run_id] = _FILTER.runs.get(flow_run_id, 0) + 1
    try:
        yield
    finally:
        with _FILTER.lock:
            _FILTER.runs[flow_run_id] -= 1
            if not _FILTER.runs[flow_run_id]:
                del _FILTER.runs[flow_run_id]
