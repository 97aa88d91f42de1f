"""What the `atomscale.*` events cost `create_layers` (docs/guides/events.md, performance.md).

`create_layers` lists the layers it creates in one `atomscale.layers.created` event (up
to 1,000 layers an event; `layer_events="batch"`, the default), or sends one
`atomscale.layer.created` per layer with `layer_events="each"` (the only behaviour
before the batch, figure 17). Measured in one run, against one sandbox and one
temporary Prefect server:

- `emit_event alone`: N events shaped like `atomscale.layer.created`, emitted from
  inside a task (so Prefect's events worker attaches the run's related resources, as
  for the real ones). Two figures: the time the calling thread spends per event
  (building and queueing it), and the time until Prefect's events worker has sent them
  all (`EventsWorker.drain_all`), per event: the background work, on the same 2 cores.
  Then one `atomscale.layers.created` listing N layers: the calling thread's time.
- `create_layers`: the bulk task writing N layers (post path: every layer a POST), timed
  inside the flow, four ways: events on as shipped (`batch`), events on with
  `layer_events="each"`, events on with `layer_events="none"` (no layer event, so batch
  - none is what the layer events alone cost), and events off. Off is Prefect's own
  switch in this process, `EventsWorker.set_client_override(NullEventsClient)`:
  `emit_event` then returns at once, for Prefect's task-run events as for ours (Prefect
  3.9 has no setting that turns client events off while a server is in use). The four
  alternate in an ABCD DCBA order, each run waits for the server to go idle first (and
  its events are sent before the next run starts), and medians are reported, with the
  median of the per-repetition ratios to the run with events off (figure 25: the batch's
  cost, target at most +5 %). Two times per run: the wall time of the call, and this
  process's CPU time (every thread) from the call until Prefect's events worker has sent
  its events. The CPU time holds all the events' work in this process, also the sending
  after the task has returned, and hardly moves with other processes' load, which on a
  shared 2-core machine changes the wall time of one run by 2-3x, far more than the 5 %
  sought.

    python benchmarks/events.py --layers 1000 --repeat 7
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import time
import uuid
from typing import Any, Literal

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

# `create_layers`'s `layer_events` values measured here.
LayerEvents = Literal["batch", "each", "none"]
# The ways `create_layers` is timed: row name -> its `layer_events`, None for off.
# "none" sends no layer event but keeps stack.completed and Prefect's own task-run
# events: batch - none is what the layer events themselves cost.
VARIANTS: dict[str, LayerEvents | None] = {
    "batch": "batch",
    "off": None,
    "each": "each",
    "none": "none",
}
TARGET = 0.05  # figure 25: the events add at most 5 % to create_layers


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


def emit_listed(count: int) -> float:
    """Seconds the calling thread spends on one `atomscale.layers.created` of `count` layers."""

    @task(name="bench-emit-listed")
    def emit_one() -> float:
        resource = {
            "prefect.resource.id": "atomscale.target-material.127.0.0.1:8000.42",
            "atomscale.sample-id": "42",
            "atomscale.host": "127.0.0.1:8000",
        }
        layers = [
            {
                "layer_id": position,
                "record_id": 1000 + position,
                **_common.layer_arguments(position),
            }
            for position in range(1, count + 1)
        ]
        payload = {"sample_id": 42, "part": 1, "parts": 1, "layers": layers}
        started = time.perf_counter()
        emit_event(event="atomscale.layers.created", resource=resource, payload=payload)
        return time.perf_counter() - started

    @flow(name="bench-emit-listed")
    def run() -> float:
        seconds = emit_one()
        EventsWorker.drain_all(timeout=300)
        return seconds

    return run()


def timed_create_layers(
    credentials: AtomscaleCredentials, sample_id: int, count: int, layer_events: LayerEvents
) -> tuple[float, float]:
    """One `create_layers` call (layers 2..count+1 posted), inside the flow.

    Returns:
        Its wall time; and the CPU time of this process (every thread) from its start
        until Prefect's events worker has sent what it queued, which counts the sending
        that goes on after the task returned and is less sensitive to other processes.
    """

    @flow(name="bench-events-create-layers")
    def run() -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        create_layers(credentials, sample_id, _stack(count + 1), layer_events=layer_events)
        seconds = time.perf_counter() - started
        EventsWorker.drain_all(timeout=300)
        return seconds, time.process_time() - cpu

    return run()


def main() -> int:
    """Measure every row `--repeat` times and print medians and the events' cost."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1000)
    _common.add_repeat_argument(parser, default=9)
    args = parser.parse_args()
    n = args.layers
    samples = _common.Samples()
    with _common.prefect_server() as server, _common.SandboxProcess() as sandbox:
        credentials = _common.bench_credentials(sandbox)

        def bulk(variant: str) -> None:
            sample_id = _foreign_material(credentials)
            EventsWorker.drain_all(timeout=300)
            server.settle()
            layer_events = VARIANTS[variant]
            if layer_events is None:
                EventsWorker.set_client_override(NullEventsClient)
            try:
                wall, cpu = timed_create_layers(credentials, sample_id, n, layer_events or "batch")
            finally:
                EventsWorker.set_client_override(None)
                EventsWorker.drain_all(timeout=300)
            samples.add(variant, wall)
            samples.add(f"{variant} cpu", cpu)

        # Warm-up: imports, the pool, the events worker's connection.
        emit_alone(50)
        for variant in VARIANTS:
            bulk(variant)
        samples = _common.Samples()
        for repetition in range(args.repeat):
            server.settle()
            calling, drained = emit_alone(n)
            samples.add("emit calling", calling)
            samples.add("emit drained", drained)
            samples.add("emit listed", emit_listed(n))
            order = list(VARIANTS) if repetition % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                bulk(variant)

    def versus_off(variant: str, suffix: str = "") -> str:
        top, bottom = f"{variant}{suffix}", f"off{suffix}"
        of_medians = _common.ratio(samples.median(top), samples.median(bottom))
        paired = samples.ratio_medians(top, bottom)
        return f"{(of_medians - 1) * 100:+.1f}% ({(paired - 1) * 100:+.1f}%)"

    rows: list[list[Any]] = [
        [f"emit_event alone, {n} events, calling thread", samples.median("emit calling")],
        [f"emit_event alone, {n} events, until sent", samples.median("emit drained")],
        [f"one atomscale.layers.created of {n} layers", samples.median("emit listed")],
    ]
    rows = [[name, seconds, seconds / n * 1e3, "-", "-", "-", "-"] for name, seconds in rows]
    for variant, name in [
        ("batch", "create_layers, events on (batch, default)"),
        ("each", 'create_layers, events on, layer_events="each"'),
        ("none", 'create_layers, events on, layer_events="none"'),
        ("off", "create_layers, events off"),
    ]:
        wall, cpu = samples.median(variant), samples.median(f"{variant} cpu")
        rows.append(
            [
                name,
                wall,
                wall / n * 1e3,
                versus_off(variant) if variant != "off" else "-",
                samples.spread(variant),
                cpu,
                versus_off(variant, " cpu") if variant != "off" else "-",
            ]
        )
    off = samples.median("off")
    batch_cost = _common.ratio(samples.median("batch"), off) - 1
    batch_cpu = _common.ratio(samples.median("batch cpu"), samples.median("off cpu")) - 1
    notes = [
        f"{variant}: {(samples.median(variant) - off) / n * 1e3:+.3f} ms per layer (wall), "
        f"{(samples.median(f'{variant} cpu') - samples.median('off cpu')) / n * 1e3:+.3f} "
        "ms per layer (CPU)"
        for variant in ("batch", "each", "none")
    ]
    layer_wall = _common.ratio(samples.median("batch"), samples.median("none")) - 1
    layer_cpu = _common.ratio(samples.median("batch cpu"), samples.median("none cpu")) - 1
    notes.append(
        "batch over none (the layer events alone; Prefect's own events and stack.completed "
        f"on in both): wall {layer_wall * 100:+.1f}%, CPU {layer_cpu * 100:+.1f}%"
    )
    notes += [
        f"figure 25, create_layers with events on (batch) over off, ratio of medians "
        f"(target at most +{TARGET * 100:.0f}%): CPU {batch_cpu * 100:+.1f}% "
        f"({_common.verdict(batch_cpu, TARGET)}), wall {batch_cost * 100:+.1f}% "
        f"({_common.verdict(batch_cost, TARGET)}; resolvable only on a quiet machine: "
        "compare the spread)",
        "vs off: ratio of medians (median of the per-repetition ratios); CPU: this "
        "process's CPU time from the call until its events were sent",
        f"Prefect server start-up {server.startup_seconds:.1f} s (not counted)",
        _common.machine_line(),
    ]
    _common.print_table(
        f"Events: {n} layers, medians of {args.repeat} (ABCD DCBA order)",
        ["row", "seconds", "ms per layer", "vs off", "spread", "CPU s", "CPU vs off"],
        rows,
        notes=notes,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
