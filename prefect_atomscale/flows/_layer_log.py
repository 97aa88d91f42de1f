"""What a stack-file run's log says about each layer: a line each, or a summary.

A stack of up to `LAYERS_LISTED` layers gets one line per layer, as the Prefect UI
shows a run's log: what the layer is, its record, what happened to it. A longer stack
(a superlattice of hundreds of periods) gets a summary instead: how many layers came to
what, with their positions as ranges (`L4-L41`), one WARNING line per failed layer up
to `FAILED_LISTED`, and the layer table artifact, which has every layer, named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect import get_run_logger

from prefect_atomscale._artifacts import IN_PLACE, plural
from prefect_atomscale._models import Layer

__all__ = ["FAILED_LISTED", "LAYERS_LISTED", "log_layers", "log_statuses", "positions"]

# Most layers a run's log lists one by one; a longer stack is summarised. A 42-layer
# superlattice still reads layer by layer; a 1,000-layer one takes a few lines.
LAYERS_LISTED = 50
# Most failed layers a summarised stack's log names one by one, each a WARNING line.
FAILED_LISTED = 20


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


def _what(layer: Layer) -> str:
    return " ".join(filter(None, [layer.composition_string, layer.orientation]))


def log_layers(written: Sequence[Layer], already_there: set[int], table_key: str) -> None:
    """The layers of a stack now in place: one line each, or a summary of a long stack.

    `already_there`: positions that were in place before this run.
    """
    logger = get_run_logger()
    if len(written) <= LAYERS_LISTED:
        for layer in written:
            logger.info(
                "L%s %s: record %s (space group %s, %s), %s.",
                layer.layer_id,
                _what(layer),
                layer.id,
                layer.space_group or "not matched",
                layer.mp_id or "no Materials Project id",
                "already there" if layer.layer_id in already_there else "created",
            )
        return
    status = {
        layer.layer_id: "already there" if layer.layer_id in already_there else "created"
        for layer in written
    }
    logger.info(
        "%s in place: %s. Each layer's formula, orientation, space group and record are "
        "in the table artifact %s.",
        plural(len(written), "layer"),
        _by_state(status, IN_PLACE),
        table_key,
    )


def log_statuses(
    layers: Sequence[Layer],
    status: Mapping[int, str],
    reasons: Mapping[int, str],
    table_key: str,
) -> None:
    """The layers of a stack that was not finished; the run's summary follows.

    A line per layer (INFO in place, WARNING not); for a long stack, one INFO line for
    the layers in place, a WARNING per failed layer and one per reason the layers not
    attempted share, each up to `FAILED_LISTED`, and where the table is.
    """
    logger = get_run_logger()
    if len(layers) <= LAYERS_LISTED:
        for layer in layers:
            state = status[layer.layer_id]
            if state in IN_PLACE:
                logger.info("L%s %s: record %s, %s.", layer.layer_id, _what(layer), layer.id, state)
            else:
                logger.warning(
                    "L%s %s: %s: %s.", layer.layer_id, _what(layer), state, reasons[layer.layer_id]
                )
        return
    in_place = [position for position, state in status.items() if state in IN_PLACE]
    if in_place:
        logger.info(
            "%s of %s in place: %s.",
            len(in_place),
            plural(len(layers), "layer"),
            _by_state(status, IN_PLACE),
        )
    failed = [layer for layer in layers if status[layer.layer_id] == "failed"]
    for layer in failed[:FAILED_LISTED]:
        logger.warning("L%s %s: failed: %s.", layer.layer_id, _what(layer), reasons[layer.layer_id])
    if len(failed) > FAILED_LISTED:
        logger.warning(
            "%s more failed: %s.",
            len(failed) - FAILED_LISTED,
            positions([layer.layer_id for layer in failed[FAILED_LISTED:]]),
        )
    not_attempted: dict[str, list[int]] = {}
    for layer in layers:
        if status[layer.layer_id] == "not attempted":
            not_attempted.setdefault(reasons[layer.layer_id], []).append(layer.layer_id)
    grouped = list(not_attempted.items())
    for reason, at in grouped[:FAILED_LISTED]:
        logger.warning("%s not attempted: %s.", positions(at), reason)
    if len(grouped) > FAILED_LISTED:
        rest = sorted(position for _, at in grouped[FAILED_LISTED:] for position in at)
        logger.warning("%s more not attempted: %s.", len(rest), positions(rest))
    logger.info("The table artifact %s has every layer, its status and reason.", table_key)


def _by_state(status: Mapping[int, str], states: Sequence[str]) -> str:
    """`L1-L40 created, L41-L42 already there`: positions per state, in `states`' order."""
    said = []
    for state in states:
        at = sorted(position for position, s in status.items() if s == state)
        if at:
            said.append(f"{positions(at)} {state}")
    return ", ".join(said)
