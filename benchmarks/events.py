"""What the `atomscale.*` events cost per layer (docs/guides/events.md, docs/guides/performance.md).

`create_layers` emits one `atomscale.layer.created` per layer it creates, so a stack of
thousands of layers is thousands of events. Measured in one run, against one sandbox
and one temporary Prefect server:

- `emit_event alone`: N events shaped like `atomscale.layer.created`, emitted from
  inside a task (so Prefect's events worker attaches the run's related resources, as
  for the real ones). Two figures: the time the calling thread spends per event
  (building and queueing it), and the time until Prefect's events worker has sent them
  all (`EventsWorker.drain_all`), per event: the background work, on the same 2 cores.
- `create_layers, events on / off`: the bulk task writing N layers (post path: every
  layer a POST, and an event), timed inside the flow, with events on (as shipped) and
  off. Off is Prefect's own switch in this process,
  `EventsWorker.set_client_override(NullEventsClient)`: `emit_event` then returns at
  once, for Prefect's task-run events as for ours (Prefect 3.9 has no setting that turns
  client events off while a server is in use). The runs alternate on/off/off/on, each
  waits for the server to go idle first, medians are reported; the difference per layer
  is the events' cost, including the events worker competing for the CPU.

    python benchmarks/events.py --layers 1000 --repeat 5
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import time
import uuid
from typing import Any

from prefect import flow, task
from prefect.events import emit_event
from prefect.events.clients import NullEventsClient
from prefect.events.worker import EventsWorker

from prefect_atomscale import (
    AtomscaleCredentials,
    create_layer,
    create_layers,
    create_target_material,
)


def _stack(count: int) -> list[dict[str, Any]]:
    return [_common.layer_arguments(position) for position in range(1, count + 1)]


def _foreign_material(credentials: AtomscaleCredentials) -> int:
    """A new target material with L1 written, so create_layers posts layer by layer."""

    @flow(name="bench-events-material")
    def make() -> int:
        material = create_target_material(credentials, f"events-{uuid.uuid4().hex}", "SrTiO3")
        create_layer(credentials, 1, material.sample_id, **_common.layer_arguments(1))
        return material.sample_id

    return make()


def emit_alone(count: int) -> tuple[float, float]:
    """Seconds spent in `emit_event` by the caller, and until the worker sent them all."""

    @task(name="bench-emit")
    def emit_many() -> float:
        resource = {
            "prefect.resource.id": "atomscale.target-material.127.0.0.1:8000.42",
            "prefect.resource.name": "bench stack",
            "atomscale.sample-id": "42",
            "atomscale.host": "127.0.0.1:8000",
        }
        started = time.perf_counter()
        for position in range(1, count + 1):
            payload = {
                "layer_id": position,
                "record_id": 1000 + position,
                **_common.layer_arguments(position),
            }
            emit_event(event="atomscale.layer.created", resource=dict(resource), payload=payload)
        return time.perf_counter() - started

    @flow(name="bench-emit-alone")
    def run() -> tuple[float, float]:
        started = time.perf_counter()
        calling = emit_many()
        EventsWorker.drain_all(timeout=300)
        return calling, time.perf_counter() - started

    return run()


def timed_create_layers(credentials: AtomscaleCredentials, sample_id: int, count: int) -> float:
    """Seconds for one `create_layers` call (layers 2..count+1 posted), inside the flow."""

    @flow(name="bench-events-create-layers")
    def run() -> float:
        started = time.perf_counter()
        create_layers(credentials, sample_id, _stack(count + 1))
        seconds = time.perf_counter() - started
        return seconds

    return run()


def main() -> int:
    """Measure every row `--repeat` times and print medians and the per-layer cost."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1000)
    _common.add_repeat_argument(parser, default=5)
    args = parser.parse_args()
    n = args.layers
    samples = _common.Samples()
    with _common.prefect_server() as server, _common.SandboxProcess() as sandbox:
        credentials = _common.bench_credentials(sandbox)

        def bulk(events_on: bool) -> float:
            sample_id = _foreign_material(credentials)
            EventsWorker.drain_all(timeout=300)
            server.settle()
            if not events_on:
                EventsWorker.set_client_override(NullEventsClient)
            try:
                return timed_create_layers(credentials, sample_id, n)
            finally:
                EventsWorker.set_client_override(None)
                EventsWorker.drain_all(timeout=300)

        # Warm-up: imports, the pool, the events worker's connection.
        emit_alone(50)
        bulk(True)
        bulk(False)
        for repetition in range(args.repeat):
            server.settle()
            calling, drained = emit_alone(n)
            samples.add("emit calling", calling)
            samples.add("emit drained", drained)
            order = [True, False] if repetition % 2 == 0 else [False, True]
            for events_on in order:
                samples.add("on" if events_on else "off", bulk(events_on))
    on, off = samples.median("on"), samples.median("off")
    rows = [
        ["emit_event alone, calling thread", samples.median("emit calling"), "-"],
        ["emit_event alone, until sent", samples.median("emit drained"), "-"],
        ["create_layers, events on", on, samples.spread("on")],
        ["create_layers, events off", off, samples.spread("off")],
    ]
    rows = [[name, seconds, seconds / n * 1e3, spread] for name, seconds, spread in rows]
    _common.print_table(
        f"Events: {n} layers (events), medians of {args.repeat}",
        ["row", "seconds", "ms per layer", "spread"],
        rows,
        notes=[
            f"events' cost in create_layers: {(on - off) / n * 1e3:+.3f} ms per layer "
            f"({_common.ratio(on - off, off) * 100:+.1f}% of the task's time with events off)",
            f"Prefect server start-up {server.startup_seconds:.1f} s (not counted)",
            _common.machine_line(),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
