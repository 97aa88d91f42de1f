"""The hot path against its floor: `create_layer` beside what a user would write (figures 21-23).

Measures, side by side in one run, flows of N tasks awaited or called one after another
(per-task time = the flow's loop of N tasks / N, timed inside the flow):

- `create_layer miss` / `hit`: N `create_layer` on a target material this process just
  created (so one POST each and no listing), then the same flow again (every task a
  cache hit);
- `plain miss` / `hit`: what a competent user writes without exactly-once: a task with
  `retries`, `retry_delay_seconds`, `cache_key_fn=` a hash of its inputs and
  `persist_result=True`, posting the same body with a module-level `httpx.Client`; it
  takes the same inputs as `create_layer`, the credentials block included, so that
  Prefect's handling of them is on both sides;
- `acreate_layer miss` / `hit`: the async twin, awaited one after another in an async
  flow, on a target material of its own;
- `bare sync` / `bare async`: tasks with the same parameters that return a constant
  (`NO_CACHE`, no persisted result): Prefect's own per-task cost;
- `cached no-op sync` / `async`: the bare tasks with a cache key and a persisted result
  (every task a miss): what Prefect's own caching costs, sync and async, with no
  request and no code of ours.

Targets: figure 21, `create_layer` miss / plain miss <= 1.0; figure 22, `create_layer`
hit / plain hit <= 1.05; figure 23, `acreate_layer` miss / bare async <= `create_layer`
miss / bare sync. Every unit (a pair of miss and hit flows, or a bare flow) runs once per
repetition, in an order that reverses every other repetition (ABBA); ratios are medians
of per-repetition ratios, and the server is let go idle between flows.

`--profile` runs each of our three flows once more under cProfile (the flow's thread
only) and prints where its time goes, grouped by package, and the costliest functions.

Rerun it with (defaults shown):

    python benchmarks/hot_path.py --layers 200 --repeat 6
    python benchmarks/hot_path.py --layers 200 --repeat 0 --profile   # breakdown only
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import asyncio
import cProfile
import hashlib
import json
import pstats
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from prefect_atomscale import (
    AtomscaleCredentials,
    acreate_layer,
    acreate_target_material,
    create_layer,
    create_target_material,
)

SUBSTRATE = "SrTiO3"
LAYERS_PATH = "/target-materials/layers/"
WARM_UP_LAYERS = 20

# The plain task's client: made once per process, as a user's module would make it
# (`_plain_client_for` sets it when the sandbox's address is known).
PLAIN_CLIENT: httpx.Client | None = None

# CPU seconds of the flow thread during the last timed loop (set by each flow).
_LAST_CPU = [0.0]


def _plain_client_for(credentials: AtomscaleCredentials) -> httpx.Client:
    global PLAIN_CLIENT
    if PLAIN_CLIENT is None:
        key = credentials.api_key.get_secret_value() if credentials.api_key else ""
        PLAIN_CLIENT = httpx.Client(
            base_url=str(credentials.base_url), headers={"X-API-KEY": key}, timeout=30.0
        )
    return PLAIN_CLIENT


def _plain_key(context: Any, parameters: dict[str, Any]) -> str:
    """A hash of the inputs that say what is written (the block hashes its secret masked)."""
    what = {name: parameters[name] for name in ("layer_id", "sample_id", "composition_string")}
    what["orientation"] = parameters["orientation"]
    what["account"] = str(parameters["credentials"].base_url)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


@task(
    retries=create_layer.retries,
    retry_delay_seconds=create_layer.retry_delay_seconds,
    cache_key_fn=_plain_key,
    persist_result=True,
)
def plain_layer(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
) -> dict[str, Any]:
    """What a user writes by hand: the POST, retried and cached, no exactly-once."""
    body = {
        "layer_id": layer_id,
        "sample_id": sample_id,
        "composition_string": composition_string,
        "orientation": orientation,
    }
    reply = _plain_client_for(credentials).post(LAYERS_PATH, json=body)
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result


@task(cache_policy=NO_CACHE, persist_result=False)
def bare_layer(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
) -> int:
    """Take `create_layer`'s parameters, do nothing: Prefect's own per-task cost."""
    return layer_id


@task(cache_policy=NO_CACHE, persist_result=False)
async def abare_layer(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
) -> int:
    """Async twin of `bare_layer`."""
    return layer_id


# Makes every flow of the cached no-op tasks a flow of cache misses.
_RUN_TOKEN = [""]


def _noop_key(context: Any, parameters: dict[str, Any]) -> str:
    return f"noop/{_RUN_TOKEN[0]}/{parameters['layer_id']}"


@task(cache_key_fn=_noop_key, persist_result=True)
def cached_noop(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
) -> int:
    """A bare task with a cache key and a persisted result: Prefect's own cost of caching."""
    return layer_id


@task(cache_key_fn=_noop_key, persist_result=True)
async def acached_noop(
    credentials: AtomscaleCredentials,
    layer_id: int,
    sample_id: int,
    composition_string: str | None = None,
    orientation: str | None = None,
) -> int:
    """Async twin of `cached_noop`."""
    return layer_id


SYNC_TASKS: dict[str, Any] = {
    "create_layer": create_layer,
    "plain": plain_layer,
    "bare": bare_layer,
    "cached": cached_noop,
}
ASYNC_TASKS: dict[str, Any] = {
    "acreate_layer": acreate_layer,
    "abare": abare_layer,
    "acached": acached_noop,
}


@flow(name="bench-hot-path")
def sync_flow(credentials: AtomscaleCredentials, kind: str, sample_id: int, layers: int) -> float:
    """`layers` tasks of one kind one after another; the loop's wall seconds."""
    run = SYNC_TASKS[kind]
    wall, cpu = time.perf_counter(), time.thread_time()
    for position in range(1, layers + 1):
        run(credentials, position, sample_id, **_common.layer_arguments(position))
    _LAST_CPU[0] = time.thread_time() - cpu
    return time.perf_counter() - wall


@flow(name="bench-hot-path-async")
async def async_flow(
    credentials: AtomscaleCredentials, kind: str, sample_id: int, layers: int
) -> float:
    """`layers` async tasks of one kind awaited one after another; the loop's wall seconds."""
    run = ASYNC_TASKS[kind]
    wall, cpu = time.perf_counter(), time.thread_time()
    for position in range(1, layers + 1):
        await run(credentials, position, sample_id, **_common.layer_arguments(position))
    _LAST_CPU[0] = time.thread_time() - cpu
    return time.perf_counter() - wall


@flow(name="bench-hot-path-material")
def new_material(credentials: AtomscaleCredentials) -> int:
    """A target material this process creates (its stack then needs no listing)."""
    name = f"hot-{uuid.uuid4().hex[:12]}"
    return create_target_material(credentials, name, SUBSTRATE).sample_id


@flow(name="bench-hot-path-amaterial")
async def anew_material(credentials: AtomscaleCredentials) -> int:
    """Async `new_material`, so the async flows' materials are known to their loop's views."""
    name = f"hot-{uuid.uuid4().hex[:12]}"
    return (await acreate_target_material(credentials, name, SUBSTRATE)).sample_id


class Bench:
    """The runs of one script invocation: the sandbox, the server and the samples."""

    def __init__(
        self, sandbox: _common.SandboxProcess, server: _common.ServerTimes, layers: int
    ) -> None:
        self.sandbox, self.server, self.layers = sandbox, server, layers
        self.credentials = _common.bench_credentials(sandbox)
        self.samples = _common.Samples()
        self.posts: dict[str, set[int]] = {}

    def _record(self, name: str, seconds: float) -> None:
        per_task = 1000 / self.layers
        self.samples.add(name, seconds * per_task)
        self.samples.add(f"{name} cpu", _LAST_CPU[0] * per_task)
        self.posts.setdefault(name, set()).add(self.sandbox.stats().count(_common.LAYERS_ROUTE))

    def _timed(self, name: str, run: Callable[[], float]) -> None:
        self.server.settle()
        self.sandbox.reset_stats()
        self._record(name, run())

    def pair(self, kind: str) -> None:
        """A miss flow, then the same flow again (every task a hit)."""
        c, n = self.credentials, self.layers
        if kind == "acreate_layer":
            sample_id = asyncio.run(anew_material(c))
            self._timed(f"{kind} miss", lambda: asyncio.run(async_flow(c, kind, sample_id, n)))
            self._timed(f"{kind} hit", lambda: asyncio.run(async_flow(c, kind, sample_id, n)))
            return
        sample_id = new_material(c)
        self._timed(f"{kind} miss", lambda: sync_flow(c, kind, sample_id, n))
        self._timed(f"{kind} hit", lambda: sync_flow(c, kind, sample_id, n))

    def bare(self, kind: str) -> None:
        """A flow of bare tasks, or of cached no-op tasks (every task a miss)."""
        c, n = self.credentials, self.layers
        _RUN_TOKEN[0] = uuid.uuid4().hex
        if kind == "bare async":
            self._timed(kind, lambda: asyncio.run(async_flow(c, "abare", 1, n)))
        elif kind == "cached no-op async":
            self._timed(kind, lambda: asyncio.run(async_flow(c, "acached", 1, n)))
        elif kind == "cached no-op sync":
            self._timed(kind, lambda: sync_flow(c, "cached", 1, n))
        else:
            self._timed(kind, lambda: sync_flow(c, "bare", 1, n))

    def units(self) -> list[Callable[[], None]]:
        """The units of one repetition, in the order of an even repetition."""
        return [
            lambda: self.pair("create_layer"),
            lambda: self.pair("plain"),
            lambda: self.bare("bare sync"),
            lambda: self.bare("bare async"),
            lambda: self.pair("acreate_layer"),
            lambda: self.bare("cached no-op sync"),
            lambda: self.bare("cached no-op async"),
        ]

    def warm_up(self) -> None:
        """First calls pay imports, registrations and the connection pools."""
        layers, self.layers = self.layers, WARM_UP_LAYERS
        for unit in self.units():
            unit()
        self.layers = layers
        self.samples = _common.Samples()
        self.posts = {}


def _profile(bench: Bench, dump: str | None) -> None:
    """Run our three flows once more under cProfile and print where the time goes."""
    c, n = bench.credentials, bench.layers
    runs: list[tuple[str, Callable[[], Any]]] = []
    sync_id = new_material(c)
    runs.append(("create_layer miss", lambda: sync_flow(c, "create_layer", sync_id, n)))
    runs.append(("create_layer hit", lambda: sync_flow(c, "create_layer", sync_id, n)))
    plain_id = new_material(c)
    runs.append(("plain miss", lambda: sync_flow(c, "plain", plain_id, n)))
    runs.append(("plain hit", lambda: sync_flow(c, "plain", plain_id, n)))
    async_id = asyncio.run(anew_material(c))
    runs.append(
        ("acreate_layer miss", lambda: asyncio.run(async_flow(c, "acreate_layer", async_id, n)))
    )
    for name, run in runs:
        bench.server.settle()
        # CPU time of this thread, so waits (the server's replies, other processes on a
        # busy machine) are left out.
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        run()
        profiler.disable()
        stats = pstats.Stats(profiler)
        if dump:
            stats.dump_stats(f"{dump}-{name.replace(' ', '-')}.prof")
        _print_profile(name, stats, n)


def _package(filename: str) -> str:
    if filename == "~":
        return "built-ins (I/O waits, C code)"
    for marker in ("prefect_atomscale", "httpx", "httpcore", "h11", "pydantic", "filelock"):
        if f"/{marker}/" in filename:
            return marker
    if "/prefect/" in filename:
        return "prefect"
    if "asyncio" in filename:
        return "asyncio"
    return "other"


def _print_profile(name: str, stats: pstats.Stats, layers: int) -> None:
    # Own time by package, then the costliest functions by inclusive time.
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    own: Counter[str] = Counter()
    ours: list[tuple[float, str]] = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in table.items():
        own[_package(filename)] += tottime
        short = filename.rsplit("/site-packages/", 1)[-1].rsplit("/prefect_atomscale/", 1)[-1]
        ours.append((cumtime, f"{short}:{line}({function}) x{calls / max(layers, 1):.1f}"))
    total = sum(own.values())
    print(f"\ncProfile of '{name}', {layers} tasks: {total * 1000 / layers:.2f} CPU ms/task")
    for package, seconds in own.most_common():
        print(f"  own time {package:18s} {seconds * 1000 / layers:6.3f} ms/task")
    print("  functions by inclusive time (ms/task, calls/task):")
    for cumtime, label in sorted(ours, reverse=True)[:60]:
        print(f"    {cumtime * 1000 / layers:6.3f}  {label}")


def _report(bench: Bench, repeat: int) -> None:
    s, layers = bench.samples, bench.layers
    names = [
        "create_layer miss",
        "plain miss",
        "create_layer hit",
        "plain hit",
        "acreate_layer miss",
        "acreate_layer hit",
        "bare sync",
        "bare async",
        "cached no-op sync",
        "cached no-op async",
    ]
    rows = [
        [
            name,
            f"{s.median(name):.3f}",
            s.spread(name),
            f"{s.median(f'{name} cpu'):.3f}",
            ",".join(map(str, sorted(bench.posts.get(name, set())))),
        ]
        for name in names
    ]
    fig21 = s.ratio_medians("create_layer miss", "plain miss")
    fig22 = s.ratio_medians("create_layer hit", "plain hit")
    async_ratio = s.ratio_medians("acreate_layer miss", "bare async")
    sync_ratio = s.ratio_medians("create_layer miss", "bare sync")
    per_repetition = [
        a / b - c / d
        for a, b, c, d in zip(
            s.values["acreate_layer miss"],
            s.values["bare async"],
            s.values["create_layer miss"],
            s.values["bare sync"],
            strict=True,
        )
    ]
    fig23 = _common.median(per_repetition)
    prefect_sync = s.ratio_medians("cached no-op sync", "bare sync")
    prefect_async = s.ratio_medians("cached no-op async", "bare async")
    cpu21 = s.ratio_medians("create_layer miss cpu", "plain miss cpu")
    cpu22 = s.ratio_medians("create_layer hit cpu", "plain hit cpu")
    _common.print_table(
        f"The hot path, N={layers} tasks one after another per flow, {repeat} repetitions "
        "(medians)",
        ["flow of N tasks", "ms/task", "range ms/task", "CPU ms/task", "layer POSTs"],
        rows,
        [
            f"Figure 21: create_layer miss / plain miss = {fig21:.2f}x (target <= 1.0: "
            f"{_common.verdict(fig21, 1.0)}); in CPU time of the flow thread {cpu21:.2f}x.",
            f"Figure 22: create_layer hit / plain hit = {fig22:.2f}x (target <= 1.05: "
            f"{_common.verdict(fig22, 1.05)}); in CPU time {cpu22:.2f}x.",
            f"Figure 23: acreate_layer miss / bare async = {async_ratio:.2f}x, create_layer "
            f"miss / bare sync = {sync_ratio:.2f}x; median per-repetition difference "
            f"{fig23:+.2f} (target <= 0: {_common.verdict(fig23, 0.0)}).",
            f"Prefect's own cost of a cache key and a persisted result, no I/O of ours: "
            f"cached no-op / bare = {prefect_sync:.2f}x sync, {prefect_async:.2f}x async "
            "(Prefect's async result store reads and writes files through worker threads).",
            "Ratios are medians of per-repetition ratios; units reverse order every other "
            "repetition (ABBA). ms/task = the flow's loop / N, timed inside the flow; CPU = "
            "CPU time of the flow's thread during the loop.",
            f"Not counted: temporary Prefect server start-up {bench.server.startup_seconds:.1f}"
            f" s; waits for it to go idle between flows {bench.server.settled_seconds:.0f} s.",
            f"Machine: {_common.machine_line()}.",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    """Run the units `--repeat` times, taking turns, and print the table and figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=200, help="tasks per flow (default 200)")
    _common.add_repeat_argument(parser, default=6)
    parser.add_argument(
        "--profile", action="store_true", help="also profile our flows once (cProfile)"
    )
    parser.add_argument(
        "--profile-dump", help="also write each profile to PREFIX-<flow>.prof (pstats)"
    )
    options = parser.parse_args(argv)
    repeat = max(0, options.repeat)
    with _common.SandboxProcess() as sandbox, _common.prefect_server() as server:
        bench = Bench(sandbox, server, max(1, options.layers))
        bench.warm_up()
        for repetition in range(repeat):
            units = bench.units()
            for unit in units if repetition % 2 == 0 else units[::-1]:
                unit()
            print(f"  repetition {repetition + 1}/{repeat} done", flush=True)
        if options.profile:
            _profile(bench, options.profile_dump)
    if repeat:
        _report(bench, repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
