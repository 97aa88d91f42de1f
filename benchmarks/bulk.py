"""Bulk path throughput (docs/guides/performance.md, figure 4): one task per stack vs raw httpx.

Measures, side by side in one run and against the same sandbox, N layers (default 1,000)
written to one target material with the same concurrency C (default 16):

- `raw httpx async loop`: N layer POSTs from one `httpx.AsyncClient`, at most C in
  flight (an `asyncio.Semaphore`), each reply decoded; no Prefect, no validation.
- `acreate_layers, post path`: the async bulk task on a target material that this
  process did not just create, so it reads the stack once (one GET) and posts every
  layer, at most C at a time: the same POSTs as the raw loop plus the task's
  validation, look-up, caching and result.
- `create_layers, post path`: the same with the sync task (a thread pool of C).
- `create_layers, new material`: the sync task on a target material this process just
  created: known empty, so no listing, and every layer posted (the tasks never send
  the replace-stack request, which deletes what a stack holds); the count of
  replace-stack requests is printed to show it stays 0.

The target: throughput(acreate_layers, post path) >= 0.8 x throughput(raw loop). Each
row's time is the task call alone, timed inside the flow, so Prefect's flow start-up
is not counted. Every row runs once first as a warm-up; the order of the rows rotates
between repetitions, and each waits for the Prefect server to go idle first. The tasks'
pool size (`max_connections`) is the concurrency, as for the raw loop's client.

Setup: the sandbox runs in a child process (`_common.SandboxProcess`), the flows in
this one, against one temporary Prefect server started once.

    python benchmarks/bulk.py --layers 1000 --concurrency 16 --repeat 5
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import asyncio
import time
import uuid
from typing import Any

import httpx
from prefect import flow

from prefect_atomscale import (
    AtomscaleCredentials,
    acreate_layers,
    create_layer,
    create_layers,
    create_target_material,
)

REPLACE_ROUTE = ("POST", "/target-materials/{sample_id}/layers")
WARM_UP_LAYERS = 50


def _stack(count: int) -> list[dict[str, Any]]:
    return [_common.layer_arguments(position) for position in range(1, count + 1)]


def _material(credentials: AtomscaleCredentials, *, foreign: bool) -> int:
    """A new target material; `foreign` makes it look created elsewhere (post path)."""

    @flow(name="bench-bulk-material")
    def make() -> int:
        material = create_target_material(credentials, f"bulk-{uuid.uuid4().hex}", "SrTiO3")
        if foreign:
            # Writing one position first means the stack is no longer "new": the bulk
            # task must read it and post the rest, as for any existing target material.
            create_layer(credentials, 1, material.sample_id, **_common.layer_arguments(1))
        return material.sample_id

    return make()


async def raw_loop(url: str, key: str, sample_id: int, count: int, concurrency: int) -> float:
    """Seconds for `count` POSTs at most `concurrency` at a time on one AsyncClient."""
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-API-KEY": key}, limits=limits, timeout=30
    ) as client:

        async def post(position: int) -> None:
            body = {
                "layer_id": position,
                "sample_id": sample_id,
                **_common.layer_arguments(position),
            }
            async with slots:
                reply = await client.post("/target-materials/layers/", json=body)
                reply.raise_for_status()
                reply.json()

        started = time.perf_counter()
        await asyncio.gather(*(post(position) for position in range(2, count + 2)))
        return time.perf_counter() - started


def timed_async_bulk(
    credentials: AtomscaleCredentials, sample_id: int, count: int, c: int
) -> float:
    """Seconds for one `acreate_layers` call on the post path, timed inside the flow."""

    @flow(name="bench-acreate-layers")
    async def run() -> float:
        started = time.perf_counter()
        await acreate_layers(credentials, sample_id, _stack(count), max_concurrency=c)
        return time.perf_counter() - started

    return asyncio.run(run())


def timed_sync_bulk(credentials: AtomscaleCredentials, sample_id: int, count: int, c: int) -> float:
    """Seconds for one `create_layers` call, timed inside the flow."""

    @flow(name="bench-create-layers")
    def run() -> float:
        started = time.perf_counter()
        create_layers(credentials, sample_id, _stack(count), max_concurrency=c)
        return time.perf_counter() - started

    return run()


def main() -> int:
    """Measure every row `--repeat` times and print medians and the target ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    _common.add_repeat_argument(parser, default=5)
    args = parser.parse_args()
    n, c = args.layers, args.concurrency
    samples = _common.Samples()
    with _common.prefect_server() as server, _common.SandboxProcess() as sandbox:
        # The same pool size as the raw loop's client: one connection per write in flight.
        credentials = _common.bench_credentials(sandbox, max_connections=c)
        replace_requests = 0

        def run_raw(count: int) -> float:
            sample_id = _material(credentials, foreign=True)
            server.settle()
            return asyncio.run(raw_loop(sandbox.url, sandbox.api_key, sample_id, count, c))

        def run_async_post(count: int) -> float:
            sample_id = _material(credentials, foreign=True)
            server.settle()
            return timed_async_bulk(credentials, sample_id, count, c)

        def run_sync_post(count: int) -> float:
            sample_id = _material(credentials, foreign=True)
            server.settle()
            return timed_sync_bulk(credentials, sample_id, count, c)

        def run_sync_replace(count: int) -> float:
            nonlocal replace_requests
            sample_id = _material(credentials, foreign=False)
            server.settle()
            sandbox.reset_stats()
            seconds = timed_sync_bulk(credentials, sample_id, count, c)
            replace_requests = sandbox.stats().count(REPLACE_ROUTE)
            return seconds

        rows = [
            ("raw", run_raw),
            ("async post", run_async_post),
            ("sync post", run_sync_post),
            ("sync replace", run_sync_replace),
        ]
        # Warm-up: the first call of each kind pays for imports and pool start-up.
        for _, run in rows:
            run(WARM_UP_LAYERS)
        for repetition in range(args.repeat):
            shift = repetition % len(rows)
            for key, run in rows[shift:] + rows[:shift]:
                samples.add(key, run(n))
    raw = samples.median("raw")
    rows = [
        [
            name,
            samples.median(key),
            n / samples.median(key),
            raw / samples.median(key),
            samples.spread(key),
        ]
        for name, key in [
            ("raw httpx async loop", "raw"),
            ("acreate_layers, post path", "async post"),
            ("create_layers, post path", "sync post"),
            ("create_layers, new material", "sync replace"),
        ]
    ]
    ratio = samples.ratio_medians("raw", "async post")
    _common.print_table(
        f"Bulk path: {n} layers, concurrency {c}, medians of {args.repeat}",
        ["row", "seconds", "layers/s", "throughput vs raw", "spread"],
        rows,
        notes=[
            f"acreate_layers / raw loop throughput: {ratio:.2f} (target >= 0.8: "
            f"{_common.verdict(ratio, 0.8, at_least=True)})",
            f"new material: {replace_requests} replace-stack request(s) per stack",
            f"Prefect server start-up {server.startup_seconds:.1f} s (not counted)",
            _common.machine_line(),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
