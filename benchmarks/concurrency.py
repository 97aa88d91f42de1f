"""Concurrent layer creation and connection reuse (docs/guides/performance.md, figure 3).

Measures, side by side in one run and against the same sandbox, flows that create
`--layers` layers (default 1,000) spread over `--materials` target materials (default
20):

- `sequential`: one task after another, `create_target_material` then `create_layer`;
- `concurrent`: the target materials with `.submit`, then every layer at once with
  `create_layer.map(unmapped(credentials), ...)` on Prefect's default
  `ThreadPoolTaskRunner` (no thread limit, so up to one thread per layer);
- `concurrent, threads = pool size`: the same on `ThreadPoolTaskRunner(max_workers=
  max_connections)`, so that no task thread waits for a pooled connection;
- `concurrent, one create_layers task per target material`: the target materials with
  `.submit`, then one `create_layers.submit` per target material with its whole stack
  (a new target material, so each task writes its stack in one replace-stack request):
  the same 1,000 layers, 20 tasks instead of 1,000, all running at once;
- with `--dask-workers N`, also `concurrent, Dask`: the same flow on prefect-dask's
  `DaskTaskRunner` with a local cluster of N worker processes (each with its own
  pool, so up to N x pool size connections), the scale-out beyond one process's GIL;
  and the `create_layers` flow on such a cluster.

For each flow it reports the body's time (timed inside the flow; Prefect's flow start-up
and teardown are reported apart), the speed-up over the sequential flow (target: at
least 2x), the peak number of threads of this process, and what the sandbox saw: layer
POSTs and TCP connections accepted, which must not exceed the pool size
(`AtomscaleCredentials.max_connections`, default 20; `--pool-sizes 20,4` also runs a
smaller pool to show the bound holds). Each flow gets credentials of its own (a
timeout a microsecond apart), hence a pool of its own, so the count is of the
connections that flow opened.

Setup: the sandbox runs in a child process (`_common.SandboxProcess`) whose counters are
read over a pipe: it counts every TCP connection it accepts. Flows run in this process
against one temporary Prefect server started once.

Rerun it with (defaults shown):

    python benchmarks/concurrency.py --layers 1000 --materials 20 --repeat 3 --pool-sizes 20
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, unmapped
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_atomscale import (
    AtomscaleCredentials,
    create_layer,
    create_layers,
    create_target_material,
)

SUBSTRATE = "SrTiO3"
REPLACE_ROUTE = ("POST", "/target-materials/{sample_id}/layers")


def _positions(layers: int, materials: int) -> list[tuple[int, int]]:
    """(material index, layer position) for every layer, spread evenly over the materials."""
    return [(index % materials, index // materials + 1) for index in range(layers)]


@flow(name="bench-sequential")
def sequential_flow(
    credentials: AtomscaleCredentials, run: str, layers: int, materials: int
) -> float:
    """Create the materials and then every layer, one task after another; return seconds."""
    started = time.perf_counter()
    sample_ids = [
        create_target_material(credentials, f"{run}-{index}", SUBSTRATE).sample_id
        for index in range(materials)
    ]
    for material, position in _positions(layers, materials):
        create_layer(
            credentials,
            layer_id=position,
            sample_id=sample_ids[material],
            **_common.layer_arguments(position),
        )
    return time.perf_counter() - started


def _submit_materials(credentials: AtomscaleCredentials, run: str, materials: int) -> list[Any]:
    """Submit the creation of `materials` target materials at once; return the futures."""
    return [
        create_target_material.submit(credentials, f"{run}-{index}", SUBSTRATE)
        for index in range(materials)
    ]


@flow(name="bench-concurrent")
def concurrent_flow(
    credentials: AtomscaleCredentials, run: str, layers: int, materials: int
) -> float:
    """Submit the materials, then map every layer at once; return the body's seconds."""
    started = time.perf_counter()
    material_futures = _submit_materials(credentials, run, materials)
    sample_ids = [future.result().sample_id for future in material_futures]
    spread = _positions(layers, materials)
    futures = create_layer.map(
        unmapped(credentials),
        layer_id=[position for _, position in spread],
        sample_id=[sample_ids[material] for material, _ in spread],
        composition_string=[
            _common.layer_arguments(position)["composition_string"] for _, position in spread
        ],
        orientation=[_common.layer_arguments(position)["orientation"] for _, position in spread],
    )
    wait(futures)
    failed = [future.state for future in futures if not future.state.is_completed()]
    if failed:
        failed[0].result()  # raises the first failure
    return time.perf_counter() - started


@flow(name="bench-concurrent-stacks")
def concurrent_stacks_flow(
    credentials: AtomscaleCredentials, run: str, layers: int, materials: int
) -> float:
    """Submit the materials, then one `create_layers` per material; return the body's seconds."""
    started = time.perf_counter()
    material_futures = _submit_materials(credentials, run, materials)
    stacks: list[list[dict[str, Any]]] = [[] for _ in range(materials)]
    for material, position in _positions(layers, materials):
        stacks[material].append({"layer_id": position, **_common.layer_arguments(position)})
    futures = [
        create_layers.submit(credentials, future.result().sample_id, stack)
        for future, stack in zip(material_futures, stacks, strict=True)
    ]
    wait(futures)
    for future in futures:
        future.result()  # raises the first failure
    return time.perf_counter() - started


@contextmanager
def peak_threads() -> Iterator[list[int]]:
    """Sample this process's thread count every 10 ms; yield a one-item list with the peak."""
    peak = [threading.active_count()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], threading.active_count())

    sampler = threading.Thread(target=sample, name="thread-count-sampler", daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join(5)


def main(argv: list[str] | None = None) -> int:
    """Run the flows `--repeat` times, interleaved, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1000, help="layers per flow (default 1000)")
    parser.add_argument(
        "--materials", type=int, default=20, help="target materials per flow (default 20)"
    )
    parser.add_argument(
        "--pool-sizes",
        default="20",
        help="comma-separated max_connections values to run the concurrent flow with "
        "(default 20, the block's default)",
    )
    parser.add_argument(
        "--dask-workers",
        type=int,
        default=0,
        help="also run the concurrent flow on a local Dask cluster of this many worker "
        "processes (needs prefect-dask; default 0: skip)",
    )
    _common.add_repeat_argument(parser, default=3)
    options = parser.parse_args(argv)
    layers, materials, repeat = options.layers, options.materials, max(1, options.repeat)
    pool_sizes = [int(size) for size in options.pool_sizes.split(",") if size.strip()]
    samples = _common.Samples()
    seen: dict[str, dict[str, set[int]]] = {}

    with _common.SandboxProcess() as sandbox, _common.prefect_server() as server:
        default = _common.bench_credentials(sandbox)
        variants: list[tuple[str, Callable[[AtomscaleCredentials, str, int], float], Any]] = [
            ("sequential", lambda c, run, n: sequential_flow(c, run, n, materials), default)
        ]
        for size in pool_sizes:
            credentials = _common.bench_credentials(sandbox, max_connections=size)
            variants.append(
                (
                    f"concurrent, default thread pool, pool size {size}",
                    lambda c, run, n: concurrent_flow(c, run, n, materials),
                    credentials,
                )
            )
            capped = concurrent_flow.with_options(
                task_runner=ThreadPoolTaskRunner(max_workers=size)
            )
            variants.append(
                (
                    f"concurrent, {size} threads, pool size {size}",
                    lambda c, run, n, capped=capped: capped(c, run, n, materials),
                    credentials,
                )
            )
        variants.append(
            (
                "concurrent, one create_layers task per target material",
                lambda c, run, n: concurrent_stacks_flow(c, run, n, materials),
                default,
            )
        )
        if options.dask_workers > 0:
            from prefect_dask import DaskTaskRunner

            workers = options.dask_workers
            cluster = {
                "n_workers": workers,
                "threads_per_worker": max(1, pool_sizes[0] // workers),
                "processes": True,
            }
            dask_credentials = _common.bench_credentials(sandbox, max_connections=pool_sizes[0])
            on_dask = concurrent_flow.with_options(
                task_runner=DaskTaskRunner(cluster_kwargs=cluster)
            )
            stacks_on_dask = concurrent_stacks_flow.with_options(
                task_runner=DaskTaskRunner(cluster_kwargs=cluster)
            )
            variants += [
                (
                    f"concurrent, Dask, {workers} worker processes, pool size {pool_sizes[0]} each",
                    lambda c, run, n: on_dask(c, run, n, materials),
                    dask_credentials,
                ),
                (
                    f"one create_layers task per target material, Dask, {workers} worker processes",
                    lambda c, run, n: stacks_on_dask(c, run, n, materials),
                    dask_credentials,
                ),
            ]
        # Warm-up: the first flow calls of a process pay imports and registrations.
        for _, call, credentials in variants:
            call(credentials, f"warm-up-{uuid.uuid4().hex[:12]}", 2 * materials)

        fresh = 0
        for repetition in range(repeat):
            shift = repetition % len(variants)
            for name, call, credentials in variants[shift:] + variants[:shift]:
                # A new pool (the pool is keyed by the connection settings): count the
                # connections this flow opens, from none.
                fresh += 1
                credentials = credentials.model_copy(
                    update={"timeout": credentials.timeout + fresh * 1e-6}
                )
                server.settle()
                sandbox.reset_stats()
                started = time.perf_counter()
                with peak_threads() as peak:
                    body = call(credentials, f"bench-{uuid.uuid4().hex[:12]}", layers)
                whole = time.perf_counter() - started
                stats = sandbox.stats()
                samples.add(name, body)
                samples.add(f"{name} whole", whole)
                counts = seen.setdefault(
                    name,
                    {
                        "posts": set(),
                        "replaces": set(),
                        "conns": set(),
                        "threads": set(),
                        "peak": set(),
                    },
                )
                counts["posts"].add(stats.count(_common.LAYERS_ROUTE))
                counts["replaces"].add(stats.count(REPLACE_ROUTE))
                counts["conns"].add(stats.connections)
                counts["peak"].add(stats.peak_open)
                counts["threads"].add(peak[0])
            print(f"  repetition {repetition + 1}/{repeat} done", flush=True)

    rows = []
    verdicts = []
    for name, _, credentials in variants:
        body = samples.median(name)
        speedup = samples.ratio_medians("sequential", name)
        counts = seen[name]
        connections, peak_open = max(counts["conns"]), max(counts["peak"])
        rows.append(
            [
                name,
                f"{body:.2f}",
                f"{body / layers * 1000:.2f}",
                f"{speedup:.2f}",
                f"{samples.median(f'{name} whole') - body:.2f}",
                max(counts["threads"]),
                ",".join(map(str, sorted(counts["posts"]))),
                ",".join(map(str, sorted(counts["replaces"]))),
                ",".join(map(str, sorted(counts["conns"]))),
                ",".join(map(str, sorted(counts["peak"]))),
                credentials.max_connections,
            ]
        )
        if name != "sequential":
            verdicts.append(
                f"{name}: speed-up {speedup:.2f} (target >= 2: "
                f"{_common.verdict(speedup, 2.0, at_least=True)}); connections accepted "
                f"{connections} <= pool {credentials.max_connections}: "
                f"{_common.verdict(connections, credentials.max_connections)}; open at once "
                f"{peak_open} <= pool: {_common.verdict(peak_open, credentials.max_connections)}."
            )
    _common.print_table(
        f"Concurrency: {layers} layers over {materials} target materials, {repeat} repetitions "
        "(medians)",
        [
            "flow",
            "body s",
            "ms/layer",
            "speed-up",
            "start+teardown s",
            "peak threads",
            "layer POSTs",
            "replace-stack requests",
            "connections accepted",
            "open at once (peak)",
            "pool size",
        ],
        rows,
        [
            *verdicts,
            "Speed-up = median of per-repetition (sequential body / this body). Connections are "
            "counted at the sandbox (child process), per repetition, from a closed pool at each "
            "flow's start: accepted = TCP connections opened in the flow; open at once = the "
            "most open at the same moment (sampled every 2 ms).",
            f"Not counted: temporary Prefect server start-up {server.startup_seconds:.1f} s; "
            f"waits for it to go idle between flows {server.settled_seconds:.0f} s in all.",
            f"Machine: {_common.machine_line()}.",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
