"""One writer's flow run: Ann's ops through the package's tasks, in one real Prefect flow.

The same code runs in the test process (the `main` writer) and in a writer process of
its own (`python -m adversary._writer SPEC.json`), which signals `ready`, waits for the
`go` file when there is one, runs its flow, and writes every op's start and end to an
outcomes file as JSON lines, flushed at once, so that a writer killed halfway leaves
what it did. Ops never raise: each ends as `ok` with what the task returned, `error`
with the error's type and first line, or `skipped` when a material it needs was never
created. Times are `time.monotonic()`, which every process of the machine shares with
the sandbox's audit.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adversary._model import Op, op_from_dict

Report = Callable[[dict[str, Any]], None]


@dataclass
class Connection:
    """How a writer reaches the sandbox: its port, the keys it may use, the timeout.

    Attributes:
        port: The sandbox's port on loopback.
        keys: Role -> key, for the roles this writer's ops use.
        user_ids: Role -> the person's `user_id`, set on blocks when `user_id` is true.
        timeout: The credentials' timeout.
        user_id: Put the person's `user_id` on every block.
    """

    port: int
    keys: dict[str, str]
    user_ids: dict[str, str]
    timeout: float
    user_id: bool


@dataclass
class FlowSpec:
    """Everything one flow run needs.

    Attributes:
        writer: The writer's name, in every outcome.
        connection: How to reach the sandbox.
        ops: The ops of the run.
        waves: Op ids per wave.
        names: Material reference -> its name in this schedule.
        substrates: Material reference -> substrate.
        refs: Material reference -> sample_id, as known when the run starts; within the
            run, a material's reference then means what its last create returned.
    """

    writer: str
    connection: Connection
    ops: list[Op]
    waves: list[list[str]]
    names: dict[str, str]
    substrates: dict[str, str]
    refs: dict[str, int] = field(default_factory=dict)


def _credentials(connection: Connection, op: Op) -> Any:
    from prefect_atomscale import AtomscaleCredentials

    user_id = connection.user_ids.get(op.key, "") if connection.user_id else ""
    return AtomscaleCredentials(
        api_key=connection.keys[op.key],
        base_url=f"http://{op.host}:{connection.port}",
        user_id=user_id,
        timeout=connection.timeout,
    )


def _layer_args(layers: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if layers is None:
        return None
    return [dict(layer) for layer in layers]


def _call(spec: FlowSpec, op: Op, sample_id: int | None) -> tuple[Any, dict[str, Any]]:
    """The task (with options) and its arguments for an op."""
    from prefect_atomscale import (
        create_layer,
        create_layers,
        create_target_material,
        update_target_material,
    )

    credentials = _credentials(spec.connection, op)
    task: Any
    if op.kind == "create_material":
        task = create_target_material
        args: dict[str, Any] = {
            "credentials": credentials,
            "sample_name": spec.names[op.material],
            "substrate": spec.substrates[op.material],
            "sample_metadata": op.metadata,
            "layers": _layer_args(op.layers),
        }
    elif op.kind == "create_layer":
        task = create_layer
        args = {
            "credentials": credentials,
            "layer_id": op.layer_id,
            "sample_id": sample_id,
            "composition_string": op.formula,
            "orientation": op.orientation,
            "if_exists": op.if_exists,
        }
    elif op.kind == "create_layers":
        task = create_layers
        args = {
            "credentials": credentials,
            "sample_id": sample_id,
            "layers": _layer_args(op.layers),
            "if_exists": op.if_exists,
        }
    elif op.kind == "update_material":
        task = update_target_material
        args = {"credentials": credentials, "sample_id": sample_id, "sample_metadata": op.metadata}
    else:
        raise ValueError(f"{op.kind} is not a package op")
    if op.refresh:
        task = task.with_options(refresh_cache=True)
    return task, args


def record(value: Any) -> Any:
    """What a task returned, as plain data: a material, a layer, or a list of layers."""
    if isinstance(value, list):
        return [record(item) for item in value]
    if hasattr(value, "layer_id"):
        return {
            "layer": True,
            "id": value.id,
            "layer_id": value.layer_id,
            "sample_id": value.sample_id,
            "composition_string": value.composition_string,
            "orientation": value.orientation,
        }
    return {
        "layer": False,
        "sample_id": value.sample_id,
        "sample_name": value.sample_name,
        "substrate": value.substrate,
        "sample_metadata": value.sample_metadata,
    }


def _error_text(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[0][:300]}"


def _finish(spec: FlowSpec, op: Op, state: Any, report: Report, at: float | None = None) -> None:
    end = time.monotonic() if at is None else at
    outcome: dict[str, Any] = {"op": op.id, "writer": spec.writer, "event": "end", "at": end}
    outcome["state"] = state.name
    if state.is_completed():
        try:
            value = state.result()
        except Exception as exc:  # a result that cannot be read back
            outcome.update(status="error", error=_error_text(exc))
        else:
            outcome.update(status="ok", result=record(value))
            if op.kind == "create_material":
                # As a flow would: the later ops of this run use what the create returned.
                spec.refs[op.material] = value.sample_id
    else:
        try:
            state.result()
        except BaseException as exc:
            outcome.update(status="error", error=_error_text(exc))
        else:
            outcome.update(status="error", error=f"ended {state.name}")
    report(outcome)


def run_flow(spec: FlowSpec, report: Report) -> None:
    """Run the spec's waves in one Prefect flow; report each op's start and end."""
    from prefect import flow

    ops = {op.id: op for op in spec.ops}

    @flow(name=f"adversary-{spec.writer}", log_prints=False, validate_parameters=False)
    def adversary_writer() -> None:
        for wave in spec.waves:
            submitted = []
            for op_id in wave:
                op = ops[op_id]
                sample_id = spec.refs.get(op.material)
                start: dict[str, Any] = {"op": op.id, "writer": spec.writer, "event": "start"}
                if op.kind != "create_material" and sample_id is None:
                    at = time.monotonic()
                    report({**start, "at": at})
                    report(
                        {
                            "op": op.id,
                            "writer": spec.writer,
                            "event": "end",
                            "at": at,
                            "status": "skipped",
                            "error": f"{op.material} was never created",
                        }
                    )
                    continue
                task, args = _call(spec, op, sample_id)
                report({**start, "at": time.monotonic(), "sample_id": sample_id})
                if len(wave) == 1:
                    _finish(spec, op, task(**args, return_state=True), report)
                    continue
                ended: dict[str, float] = {}
                future = task.submit(**args)
                future.add_done_callback(lambda _, ended=ended: ended.update(at=time.monotonic()))
                submitted.append((op, future, ended))
            for op, future, ended in submitted:
                future.wait()
                _finish(spec, op, future.state, report, at=ended.get("at"))

    adversary_writer()


def spec_from_json(data: dict[str, Any]) -> FlowSpec:
    """A `FlowSpec` from its JSON form (`dataclasses.asdict`, as the runner writes it)."""
    return FlowSpec(
        writer=data["writer"],
        connection=Connection(**data["connection"]),
        ops=[op_from_dict(op) for op in data["ops"]],
        waves=data["waves"],
        names=data["names"],
        substrates=data["substrates"],
        refs=data["refs"],
    )


def main(path: str) -> int:
    """Entry point of a writer process: `python -m adversary._writer SPEC.json`."""
    control = json.loads(Path(path).read_text())
    spec = spec_from_json(control["spec"])
    outcomes = Path(control["outcomes"])

    def report(line: dict[str, Any]) -> None:
        # Opened per line: a writer killed at any moment leaves every line it finished.
        with outcomes.open("a") as file:
            file.write(json.dumps(line) + "\n")

    import prefect  # noqa: F401  (import before signalling ready: the slow part)

    import prefect_atomscale  # noqa: F401

    Path(control["ready"]).write_text("ready\n")
    go = control.get("go")
    deadline = time.monotonic() + 300
    while go and not Path(go).exists():
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.005)
    run_flow(spec, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
