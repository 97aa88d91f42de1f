"""Run one stack flow in its own process, for the kill, double-start and many-machines tests.

    python scripts/run_stack.py --block NAME --sample-name NAME --layers 40 [--pace 0.05]

With `--pace`, layers are created one at a time with that pause between them, so a
test can kill the process while the stack is half built; without it, all layers are
submitted at once, as the example flow does.

Options for tests that run several of these at once (each one a "machine"):

- without `--block`, the credentials come from the environment (`AS_API_KEY` or
  `ATOMSCALE_API_KEY`, `AS_API_ENDPOINT`), with `--timeout` seconds per request: a
  machine with its own Prefect server has no saved block;
- `--with-layers K` sends the first K layers with the target material, in one request
  (a target material with layers is listed, so a retry after a lost reply finds it);
- `--ready FILE` is written once the process is ready to run the flow, and
  `--barrier FILE` makes it wait for that file to appear first, so that several
  processes start their flows at the same instant;
- `--started FILE` is written as the flow's body begins;
- `--report FILE` gets one JSON line per task run as it finishes: which task, its
  position, its final state's name (`Completed`, `Cached`, `Failed`, ...) and the
  record it returned;
- `--attempts N` runs the flow again, up to N runs in all, after an `AtomscaleError`
  (a plain re-run finishes what ran out of retries).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.states import State

from prefect_atomscale import (
    AtomscaleCredentials,
    AtomscaleError,
    Layer,
    create_layer,
    create_target_material,
)

FORMULAS = ("BaTiO3", "SrTiO3")


def _layer(position: int) -> dict[str, Any]:
    return {"composition_string": FORMULAS[position % 2], "orientation": "001"}


class _Report:
    """Appends one JSON line per finished task run to a file, if one was given."""

    def __init__(self, path: str | None, attempt: int) -> None:
        self._path = Path(path) if path else None
        self._attempt = attempt

    def state(self, task: str, position: int | None, state: State) -> None:
        if self._path is None:
            return
        line: dict[str, Any] = {
            "attempt": self._attempt,
            "task": task,
            "layer_id": position,
            "state": state.name,
        }
        if state.is_completed():
            record = state.result()
            line["sample_id"] = record.sample_id
            line["id"] = getattr(record, "id", None)
        with self._path.open("a") as file:
            file.write(json.dumps(line) + "\n")


@flow(name="stack-driver")
def stack(
    block: str | None,
    sample_name: str,
    layers: int,
    pace: float,
    timeout: float = 30.0,
    with_layers: int = 0,
    started: str | None = None,
    report: str | None = None,
    attempt: int = 1,
) -> list[Layer]:
    """Create a target material and `layers` alternating BaTiO3/SrTiO3 layers."""
    if started:
        Path(started).write_text("started\n")
    credentials = (
        AtomscaleCredentials.load(block) if block else AtomscaleCredentials(timeout=timeout)
    )
    reported = _Report(report, attempt)
    first = [_layer(position) for position in range(1, with_layers + 1)]
    material_state = create_target_material(
        credentials, sample_name, "SrTiO3", layers=first or None, return_state=True
    )
    reported.state("create_target_material", None, material_state)
    material = material_state.result()
    arguments = [
        {"layer_id": position, "sample_id": material.sample_id, **_layer(position)}
        for position in range(1, layers + 1)
    ]
    if pace:
        created = []
        for layer in arguments:
            state = create_layer(credentials, **layer, return_state=True)
            reported.state("create_layer", layer["layer_id"], state)
            created.append(state.result())
            time.sleep(pace)
        return created
    futures = [create_layer.submit(credentials, **layer) for layer in arguments]
    wait(futures)
    for layer, future in zip(arguments, futures, strict=True):
        reported.state("create_layer", layer["layer_id"], future.state)
    return [future.result() for future in futures]


def _wait_for(path: str) -> None:
    while not Path(path).exists():
        time.sleep(0.005)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--block", help="a saved AtomscaleCredentials block; else the environment")
    parser.add_argument("--sample-name", required=True)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--pace", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--with-layers", type=int, default=0)
    parser.add_argument("--ready")
    parser.add_argument("--barrier")
    parser.add_argument("--started")
    parser.add_argument("--report")
    parser.add_argument("--attempts", type=int, default=1)
    args = parser.parse_args()
    if args.ready:
        Path(args.ready).write_text("ready\n")
    if args.barrier:
        _wait_for(args.barrier)
    for attempt in range(1, args.attempts + 1):
        try:
            built = stack(
                args.block,
                args.sample_name,
                args.layers,
                args.pace,
                timeout=args.timeout,
                with_layers=args.with_layers,
                started=args.started,
                report=args.report,
                attempt=attempt,
            )
            break
        except AtomscaleError as exc:
            if attempt == args.attempts:
                raise
            print(f"run {attempt} failed, running again: {exc}")
    print(f"built {len(built)} layers on target material {built[0].sample_id}")
