"""Where a layer's time goes: Prefect's task engine and cache, our code, or the HTTP request.

A companion to `per_layer.py` (docs/guides/performance.md, figures 1 and 2): it times
flows of N tasks run one after another that add one ingredient of `create_layer` at a
time, so that the differences between rows price each ingredient in wall time (and in
CPU time of the flow's thread, which the machine's load disturbs less):

- `empty`: a task with `create_layer`'s parameters returning a constant
  (`NO_CACHE`, no persisted result): Prefect's bare per-task cost.
- `empty + persisted result`: the same, writing its result to the result store.
- `empty + Prefect cache (trivial key)`: a cache policy whose key is just the
  position, READ_COMMITTED, 30-day expiry: Prefect's own transaction, cache look-up and
  result write, with nothing of ours.
- `empty + our cache key, no lock`: `AtomscaleRequestCache` (validation, canonical
  request, account fingerprint, SHA-256) at READ_COMMITTED.
- `empty + create_layer's policy (as shipped)`: the very policy object `create_layer`
  ships (layer tasks take no Prefect cache lock; their writes take the package's own
  per-material locks inside the task body, which this variant does not run).
- `create_layer, caching off`: the real task with `cache_policy=NO_CACHE` and no
  persisted result: Prefect's bare cost plus our body (validation, pool, POST, reply
  decoding, one INFO log line).
- `create_layer (as shipped)`: everything.
- `raw httpx loop`: the same POSTs on one keep-alive client, without Prefect.

Each cached variant is then run again with the same arguments: `... cached` rows, where
every task is a cache hit. Every flow first creates its own target material (not
timed), so that keys never collide between variants and `create_layer` skips its
look-up GET. The sandbox runs in a child process; the flows in this one, against one
temporary Prefect server.

Rerun it with (defaults shown):

    python benchmarks/layer_cost_breakdown.py --layers 500 --repeat 3
"""

from __future__ import annotations

import dataclasses

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import time
import uuid
from dataclasses import dataclass
from typing import Any

from prefect import Task, flow, task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import TaskRunContext

from prefect_atomscale import AtomscaleCredentials, create_layer, create_target_material

SUBSTRATE = "SrTiO3"


@dataclass
class PositionKey(CachePolicy):
    """The cheapest meaningful key: the layer's position (unique per target material)."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """Return `bench-<sample_id>-<layer_id>`."""
        return f"bench-{inputs['sample_id']}-{inputs['layer_id']}"


def _empty(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
) -> int:
    return 0


_CACHED = {"cache_expiration": create_layer.cache_expiration, "persist_result": True}
VARIANTS: dict[str, Task[..., Any]] = {
    "empty": task(_empty, name="empty", cache_policy=NO_CACHE, persist_result=False),
    "empty + persisted result": task(
        _empty, name="empty-persisted", cache_policy=NO_CACHE, persist_result=True
    ),
    "empty + Prefect cache (trivial key)": task(
        _empty, name="empty-trivial-key", cache_policy=PositionKey(), **_CACHED
    ),
    "empty + our cache key, no lock": task(
        _empty,
        name="empty-our-key",
        # `create_layer`'s own key (task name, version, account, request body), without
        # its lock: the same policy object with the isolation level left unset.
        cache_policy=dataclasses.replace(
            create_layer.cache_policy,
            task_name="bench-empty",
            isolation_level=None,
            lock_manager=None,
        ),
        **_CACHED,
    ),
    # The very policy object `create_layer` uses.
    "empty + create_layer's policy (as shipped)": task(
        _empty, name="empty-shipped-policy", cache_policy=create_layer.cache_policy, **_CACHED
    ),
    "create_layer, caching off": create_layer.with_options(
        cache_policy=NO_CACHE, persist_result=False
    ),
    "create_layer (as shipped)": create_layer,
}
CACHING = [name for name, variant in VARIANTS.items() if variant.cache_policy is not NO_CACHE]


@flow(name="bench-layer-loop")
def loop_flow(
    credentials: AtomscaleCredentials, variant: str, sample_name: str, layers: int
) -> tuple[float, float]:
    """Create (or reuse) a target material, then run `layers` tasks of one variant.

    Returns:
        Wall seconds and CPU seconds of this thread, for the loop of tasks only.
    """
    run = VARIANTS[variant]
    sample_id = create_target_material(credentials, sample_name, SUBSTRATE).sample_id
    wall, cpu = time.perf_counter(), time.thread_time()
    for position in range(1, layers + 1):
        run(
            credentials, layer_id=position, sample_id=sample_id, **_common.layer_arguments(position)
        )
    return time.perf_counter() - wall, time.thread_time() - cpu


def main(argv: list[str] | None = None) -> int:
    """Run every variant `--repeat` times, interleaved, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=500, help="tasks per flow (default 500)")
    _common.add_repeat_argument(parser, default=3)
    options = parser.parse_args(argv)
    layers, repeat = options.layers, max(1, options.repeat)
    samples = _common.Samples()
    posts: dict[str, set[int]] = {}

    with _common.SandboxProcess() as sandbox, _common.prefect_server() as server:
        credentials = _common.bench_credentials(sandbox)
        for name in VARIANTS:  # warm-up: first calls pay imports and registrations
            loop_flow(credentials, name, f"warm-up-{uuid.uuid4().hex[:12]}", 10)
        _common.raw_post_loop(sandbox, 10)
        names = [*VARIANTS, "raw httpx loop"]
        for repetition in range(repeat):
            shift = repetition % len(names)
            for name in names[shift:] + names[:shift]:
                if name == "raw httpx loop":
                    server.settle()
                    wall, cpu = _common.raw_post_loop(sandbox, layers)
                    samples.add(name, wall)
                    samples.add(f"{name} cpu", cpu)
                    continue
                sample_name = f"bench-{uuid.uuid4().hex[:12]}"
                runs = [name, f"{name}, cached"] if name in CACHING else [name]
                for label in runs:
                    server.settle()
                    sandbox.reset_stats()
                    wall, cpu = loop_flow(credentials, name, sample_name, layers)
                    posts.setdefault(label, set()).add(sandbox.stats().count(_common.LAYERS_ROUTE))
                    samples.add(label, wall)
                    samples.add(f"{label} cpu", cpu)
            print(f"  repetition {repetition + 1}/{repeat} done", flush=True)

    labels = [
        *VARIANTS,
        "raw httpx loop",
        *(f"{name}, cached" for name in CACHING),
    ]
    base_wall, base_cpu = samples.median("empty"), samples.median("empty cpu")
    rows = []
    for label in labels:
        wall, cpu = samples.median(label), samples.median(f"{label} cpu")
        rows.append(
            [
                label,
                f"{wall / layers * 1000:.2f}",
                f"{samples.ratio_medians(label, 'empty'):.2f}",
                f"{cpu / layers * 1000:.2f}",
                f"{samples.ratio_medians(f'{label} cpu', 'empty cpu'):.2f}",
                ",".join(map(str, sorted(posts.get(label, set())))) or "-",
            ]
        )
    _common.print_table(
        f"Cost of each ingredient of create_layer, N={layers} tasks one after another, "
        f"{repeat} repetitions (medians)",
        ["flow of N tasks", "wall ms/task", "x empty", "CPU ms/task", "CPU x empty", "POSTs"],
        rows,
        [
            f"Baseline 'empty': {base_wall / layers * 1000:.2f} ms wall, "
            f"{base_cpu / layers * 1000:.2f} ms CPU per task.",
            "CPU = CPU time of the flow's own thread during the loop (Prefect's background "
            "threads and the sandbox's process not included).",
            "Setup: sandbox in a child process; flows in this process, one temporary Prefect "
            f"server (start-up {server.startup_seconds:.1f} s, not counted; waits for it to "
            f"go idle between flows {server.settled_seconds:.0f} s in all).",
            f"Machine: {_common.machine_line()}.",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
