"""Per-layer overhead and the cached re-run (docs/guides/performance.md, figures 1 and 2).

Measures, side by side in one run and against the same sandbox:

- `create_layer flow, misses`: a flow that creates a target material and then N layers
  one after another with `create_layer` (caching on, every layer a cache miss: each
  repetition uses a new target material). The target material is new and created by
  this process, so each layer is one POST and no look-up GET.
- `empty-task flow`: a flow of N tasks with the same parameters that return a constant
  (no I/O, `cache_policy=NO_CACHE`, `persist_result=False`).
- `raw httpx loop`: the same N layer POSTs (the same JSON bodies) on one keep-alive
  `httpx.Client`, without Prefect; the body of each reply is decoded.
- `create_layer flow, all cached`: the first flow again with the same arguments, so the
  target material and every layer come from the cache; the sandbox's counters tell how
  many POSTs (and GETs) it received.

For each flow, "body" is the time spent in the flow function's loop of N tasks, timed
inside the flow; "whole call" adds Prefect's flow-run start-up and teardown around it
(for a sync flow, about 1 s of heartbeat-thread join), which is reported, not counted.
The targets: body(misses) <= 1.2 x (body(empty) + raw loop), body(cached) <= 1.1 x
body(empty), and zero POSTs in the cached re-run.

Setup: the sandbox runs in a child process (`_common.SandboxProcess`, uvicorn and
SQLite, loopback HTTP/1.1), the flows and the raw loop in this process, against one
temporary Prefect server started once (its start-up time is reported apart). The
order of the measurements rotates between repetitions; ratios are medians of the
per-repetition ratios.

Rerun it with (defaults shown):

    python benchmarks/per_layer.py --layers 500 --repeat 5
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from prefect_atomscale import AtomscaleCredentials, create_layer, create_target_material

SUBSTRATE = "SrTiO3"
WARM_UP_LAYERS = 20


@task(cache_policy=NO_CACHE, persist_result=False)
def empty_layer(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
) -> int:
    """Take `create_layer`'s parameters, do nothing, return a constant."""
    return 0


@flow(name="bench-empty-tasks")
def empty_flow(credentials: AtomscaleCredentials, layers: int) -> tuple[float, float]:
    """Run `layers` empty tasks one after another; return the loop's wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for position in range(1, layers + 1):
        empty_layer(
            credentials, layer_id=position, sample_id=1, **_common.layer_arguments(position)
        )
    return time.perf_counter() - wall, time.thread_time() - cpu


@flow(name="bench-create-layers")
def layer_flow(
    credentials: AtomscaleCredentials, sample_name: str, layers: int
) -> tuple[float, float]:
    """Create a target material and `layers` layers one after another.

    Returns:
        Wall and CPU seconds of the loop of layers.
    """
    material = create_target_material(credentials, sample_name, SUBSTRATE)
    wall, cpu = time.perf_counter(), time.thread_time()
    for position in range(1, layers + 1):
        create_layer(
            credentials,
            layer_id=position,
            sample_id=material.sample_id,
            **_common.layer_arguments(position),
        )
    return time.perf_counter() - wall, time.thread_time() - cpu


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """Run `call`; return its result and its wall time (the whole call, for flows)."""
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=500, help="layers per flow (default 500)")
    _common.add_repeat_argument(parser, default=5)
    options = parser.parse_args(argv)
    layers, repeat = options.layers, max(1, options.repeat)
    samples = _common.Samples()
    posts_cached: list[int] = []
    gets_cached: list[int] = []
    posts_missed: list[int] = []

    with _common.SandboxProcess() as sandbox, _common.prefect_server() as server:
        credentials = _common.bench_credentials(sandbox)

        def record(name: str, result: tuple[float, float], whole: float | None = None) -> None:
            wall, cpu = result
            samples.add(f"{name} body", wall)
            samples.add(f"{name} cpu", cpu)
            if whole is not None:
                samples.add(f"{name} whole", whole)

        def run_raw() -> None:
            server.settle()
            record("raw", _common.raw_post_loop(sandbox, layers))

        def run_empty() -> None:
            server.settle()
            record("empty", *timed(lambda: empty_flow(credentials, layers)))

        def run_layers() -> None:
            name = f"bench-{uuid.uuid4().hex[:12]}"
            server.settle()
            sandbox.reset_stats()
            record("miss", *timed(lambda: layer_flow(credentials, name, layers)))
            posts_missed.append(sandbox.stats().count(_common.LAYERS_ROUTE))
            server.settle()
            sandbox.reset_stats()
            record("cached", *timed(lambda: layer_flow(credentials, name, layers)))
            stats = sandbox.stats()
            posts_cached.append(stats.posts)
            gets_cached.append(stats.count(_common.MATERIALS_GET_ROUTE))

        # Warm-up: the first flow call of a process pays for imports and registration.
        _, first_call = timed(lambda: empty_flow(credentials, WARM_UP_LAYERS))
        layer_flow(credentials, f"warm-up-{uuid.uuid4().hex[:12]}", WARM_UP_LAYERS)
        _common.raw_post_loop(sandbox, WARM_UP_LAYERS)

        steps = [run_raw, run_empty, run_layers]
        for repetition in range(repeat):
            shift = repetition % len(steps)
            for step in steps[shift:] + steps[:shift]:
                step()
            print(
                f"  repetition {repetition + 1}/{repeat}: "
                + ", ".join(
                    f"{name} {samples.values[f'{name} body'][-1]:.2f} s"
                    for name in ("miss", "empty", "raw", "cached")
                ),
                flush=True,
            )

    for kind in ("body", "cpu"):
        samples.values[f"empty+raw {kind}"] = [
            empty + raw
            for empty, raw in zip(
                samples.values[f"empty {kind}"], samples.values[f"raw {kind}"], strict=True
            )
        ]
    fig1 = samples.ratio_medians("miss body", "empty+raw body")
    fig2 = samples.ratio_medians("cached body", "empty body")
    fig1_cpu = samples.ratio_medians("miss cpu", "empty+raw cpu")
    fig2_cpu = samples.ratio_medians("cached cpu", "empty cpu")

    def row(label: str, name: str, setup: str) -> list[Any]:
        body, whole = samples.median(f"{name} body"), samples.median(f"{name} whole")
        return [
            label,
            setup,
            f"{body:.3f}",
            f"{body * 1000 / layers:.2f}",
            f"{samples.median(f'{name} cpu') * 1000 / layers:.2f}",
            "-" if math.isnan(whole) else f"{whole:.3f}",  # NaN: not a flow
            "-" if math.isnan(whole) else f"{whole - body:.3f}",
            samples.spread(f"{name} body"),
        ]

    flow_setup = "flow here, sandbox in a child process"
    _common.print_table(
        f"Per-layer overhead, N={layers} layers one after another, {repeat} repetitions (medians)",
        [
            "measurement",
            "setup",
            "body s",
            "ms/layer",
            "CPU ms/layer",
            "whole call s",
            "start+teardown s",
            "body min-max s",
        ],
        [
            row("create_layer flow, misses", "miss", flow_setup),
            row("empty-task flow", "empty", "flow here, no I/O"),
            row("raw httpx loop (1 keep-alive client)", "raw", "sandbox in a child process"),
            row("empty-task flow + raw loop", "empty+raw", "sum of the two rows above"),
            row("create_layer flow, all cached", "cached", flow_setup),
        ],
        [
            f"Figure 1: misses / (empty + raw) = {fig1:.2f} in wall time (target <= 1.2: "
            f"{_common.verdict(fig1, 1.2)}), {fig1_cpu:.2f} in CPU time; layer POSTs per "
            f"miss run: {sorted(set(posts_missed))} (expected [{layers}]).",
            f"Figure 2: cached / empty = {fig2:.2f} in wall time (target <= 1.1: "
            f"{_common.verdict(fig2, 1.1)}), {fig2_cpu:.2f} in CPU time; POSTs in cached "
            f"re-runs: {sorted(set(posts_cached))}, GETs: {sorted(set(gets_cached))} "
            "(expected [0]).",
            f"Prefect's own costs, not counted above: temporary server start-up "
            f"{server.startup_seconds:.1f} s, teardown {server.teardown_seconds:.1f} s; "
            f"first flow call of the process {first_call:.2f} s; sandbox child start-up "
            f"{sandbox.startup_seconds:.1f} s; waits for the server to go idle between "
            f"flows {server.settled_seconds:.0f} s in all.",
            "'body' is timed inside the flow; CPU = CPU time of the flow's own thread (the "
            "sandbox, the Prefect server and Prefect's background threads not included). "
            "Ratios are medians of per-repetition ratios.",
            f"Machine: {_common.machine_line()}.",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
