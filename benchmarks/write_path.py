"""The write path on a large account: look-ups that stay flat, cache hits at Prefect's cost.

`GET /target-materials/` is the API's only read, and it lists every layer of the
organisation. This script fills the sandbox's organisation with other target materials
(1,000 rows, then 10,000) and prints, in one run:

1. **Flat look-ups.** Per-layer cost, side by side, of writing N layers to a target
   material this process just created ("new") and to one it did not create ("existing",
   made with plain HTTP): with `create_layer` (one task per layer), with one
   `create_layers` task, and through the stack-file flow; and the cost of finding an
   existing target material (`create_target_material` adopting one). Targets: at 10,000
   rows, existing at most 1.25x new, and at most 1.3x its own cost at 1,000 rows.
2. **Memory.** Peak resident memory of one look-up in a 50,000-row organisation, in a
   child process of its own.
3. **Cache cost.** In the same run: `create_layer` misses and hits against a plain
   user-written task (`retries`, a `cache_key_fn`, `persist_result=True`, the same
   POST on one `httpx.Client`); and the async path's per-layer overhead over bare async
   tasks (N `acreate_layer` gathered) against the sync path's over bare sync tasks.
   The plain task takes the same inputs, the credentials block included, so that
   Prefect's own handling of them is on both sides. Targets: hits at most 1.05x plain
   hits, misses at most 1.0x plain misses, async overhead at most the sync overhead.

    python benchmarks/write_path.py                  # N=200, 5 repetitions
    python benchmarks/write_path.py --layers 50 --repeat 1   # quick look
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from prefect_atomscale import (
    AtomscaleCredentials,
    acreate_layer,
    create_layer,
    create_layers,
    create_target_material,
)

SIZES = (1_000, 10_000)
# CPU seconds of the flow thread in the last timed loop: steadier than wall time on a
# small, busy machine (Prefect's own threads and the sandbox are not counted).
_LAST_CPU = [0.0]
MEMORY_ROWS = 50_000
LAYERS_PATH = "/target-materials/layers/"


def _new_name() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}"


def _made_elsewhere(sandbox: _common.SandboxProcess, layers: int = 0) -> tuple[int, str]:
    """A target material made with plain HTTP (never by this process); its id and name."""
    name = _new_name()
    body: dict[str, Any] = {"sample": {"sample_name": name, "substrate": "SrTiO3"}}
    if layers:
        body["layers"] = [
            {"layer_id": p, **_common.layer_arguments(p)} for p in range(1, layers + 1)
        ]
    reply = httpx.post(
        f"{sandbox.url}/target-materials/",
        headers={"X-API-KEY": sandbox.api_key},
        json=body,
        timeout=60,
    )
    reply.raise_for_status()
    return int(reply.json()["sample_id"]), name


def _stack(layers: int) -> list[dict[str, Any]]:
    return [_common.layer_arguments(p) for p in range(1, layers + 1)]


# --- 1. look-ups -------------------------------------------------------------------------


@flow(name="bench-per-layer")
def per_layer_flow(credentials: AtomscaleCredentials, sample_id: int, layers: int) -> float:
    """`layers` create_layer tasks one after another; the loop's seconds (and CPU seconds)."""
    started, cpu = time.perf_counter(), time.thread_time()
    for position, arguments in enumerate(_stack(layers), start=1):
        create_layer(credentials, position, sample_id, **arguments)
    _LAST_CPU[0] = time.thread_time() - cpu
    return time.perf_counter() - started


@flow(name="bench-whole-stack")
def whole_stack_flow(credentials: AtomscaleCredentials, sample_id: int, layers: int) -> float:
    """One create_layers task; its seconds."""
    started = time.perf_counter()
    create_layers(credentials, sample_id, _stack(layers))
    return time.perf_counter() - started


@flow(name="bench-new-material")
def new_material_flow(credentials: AtomscaleCredentials, name: str) -> int:
    """Create an empty target material in this process."""
    return create_target_material(credentials, name, "SrTiO3").sample_id


@flow(name="bench-find-material")
def find_material_flow(credentials: AtomscaleCredentials, name: str) -> float:
    """Adopt an existing target material (a cache miss: refresh_cache); its seconds."""
    started = time.perf_counter()
    create_target_material.with_options(refresh_cache=True)(credentials, name, "SrTiO3")
    return time.perf_counter() - started


def _stack_file(layers: int, name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    path = folder / "stack.json"
    entries = [
        {"composition": a["composition_string"], "orientation": a["orientation"]}
        for a in _stack(layers)
    ]
    path.write_text(json.dumps({"name": name, "substrate": "SrTiO3", "layers": entries}))
    return path


def _lookups(
    sandbox: _common.SandboxProcess,
    credentials: AtomscaleCredentials,
    block: str,
    layers: int,
    samples: _common.Samples,
    size: int,
) -> None:
    from prefect_atomscale.flows import stack_from_file

    def gets() -> int:
        return sandbox.stats().count(_common.MATERIALS_GET_ROUTE)

    for kind, run in (("create_layer", per_layer_flow), ("create_layers", whole_stack_flow)):
        for case in ("new", "existing"):
            if case == "new":
                sample_id = new_material_flow(credentials, _new_name())
            else:
                sample_id, _ = _made_elsewhere(sandbox)
            sandbox.reset_stats()
            seconds = run(credentials, sample_id, layers)
            samples.add(f"{kind} {case} {size}", seconds * 1000 / layers)
            samples.add(f"{kind} {case} {size} GETs", gets())
    # A stack file whose target material is absent: created with its layers, read back.
    sandbox.reset_stats()
    started = time.perf_counter()
    stack_from_file(str(_stack_file(layers, _new_name())), credentials)
    samples.add(f"stack file {size}", (time.perf_counter() - started) * 1000 / layers)
    samples.add(f"stack file {size} GETs", gets())
    # Finding an existing target material (one listing, whatever the organisation).
    _, name = _made_elsewhere(sandbox, layers=1)
    sandbox.reset_stats()
    samples.add(f"find material {size}", find_material_flow(credentials, name) * 1000)
    samples.add(f"find material {size} GETs", gets())


def _peak_memory(sandbox: _common.SandboxProcess) -> tuple[float, float]:
    """Resident memory (MB) of a child process before a look-up, and its peak during it.

    The peak is reset just before the look-up (Linux: /proc/self/clear_refs), so the
    import of Prefect, which peaks higher, does not hide it.
    """
    code = f"""
from pathlib import Path
from prefect_atomscale import AtomscaleClient, AtomscaleCredentials
def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
credentials = AtomscaleCredentials(api_key={sandbox.api_key!r}, base_url={sandbox.url!r},
                                   timeout=120)
with AtomscaleClient.from_credentials(credentials) as client:
    before = status("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")
    client.layers_of(1, "measuring a look-up")
    print(before, status("VmHWM:"))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    return float(out[0]), float(out[1])


# --- 3. cache cost -------------------------------------------------------------------------

_PLAIN_CLIENTS: dict[str, httpx.Client] = {}


def _plain_client(credentials: AtomscaleCredentials) -> httpx.Client:
    url = str(credentials.base_url)
    if url not in _PLAIN_CLIENTS:
        key = credentials.api_key.get_secret_value() if credentials.api_key else ""
        _PLAIN_CLIENTS[url] = httpx.Client(base_url=url, headers={"X-API-KEY": key}, timeout=30)
    return _PLAIN_CLIENTS[url]


def _plain_key(context: Any, parameters: dict[str, Any]) -> str:
    return "plain/" + "/".join(
        str(parameters[name])
        for name in ("sample_id", "layer_id", "composition_string", "orientation")
    )


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
    composition_string: str,
    orientation: str,
) -> dict[str, Any]:
    """What a user would write by hand, with the same inputs: the POST, retried, cached."""
    body = {
        "layer_id": layer_id,
        "sample_id": sample_id,
        "composition_string": composition_string,
        "orientation": orientation,
    }
    reply = _plain_client(credentials).post(LAYERS_PATH, json=body)
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result


@flow(name="bench-plain")
def plain_flow(credentials: AtomscaleCredentials, sample_id: int, layers: int) -> float:
    """`layers` plain tasks one after another; the loop's seconds (and CPU seconds)."""
    started, cpu = time.perf_counter(), time.thread_time()
    for position, arguments in enumerate(_stack(layers), start=1):
        plain_layer(credentials, position, sample_id, **arguments)
    _LAST_CPU[0] = time.thread_time() - cpu
    return time.perf_counter() - started


@task(cache_policy=NO_CACHE, persist_result=False)
def bare_layer(layer_id: int, sample_id: int) -> int:
    """A task that does nothing: Prefect's own per-task cost."""
    return layer_id


@task(cache_policy=NO_CACHE, persist_result=False)
async def abare_layer(layer_id: int, sample_id: int) -> int:
    """An async task that does nothing."""
    return layer_id


@flow(name="bench-bare")
def bare_flow(layers: int) -> float:
    """`layers` bare sync tasks one after another; the loop's seconds."""
    started = time.perf_counter()
    for position in range(1, layers + 1):
        bare_layer(position, 1)
    return time.perf_counter() - started


@flow(name="bench-abare")
async def abare_flow(layers: int) -> float:
    """`layers` bare async tasks gathered; the gather's seconds."""
    started = time.perf_counter()
    await asyncio.gather(*(abare_layer(position, 1) for position in range(1, layers + 1)))
    return time.perf_counter() - started


@flow(name="bench-async-layers")
async def async_layers_flow(
    credentials: AtomscaleCredentials, sample_id: int, layers: int
) -> float:
    """`layers` acreate_layer calls gathered; the gather's seconds."""
    started = time.perf_counter()
    await asyncio.gather(
        *(
            acreate_layer(credentials, position, sample_id, **arguments)
            for position, arguments in enumerate(_stack(layers), start=1)
        )
    )
    return time.perf_counter() - started


def _cache_cost(
    sandbox: _common.SandboxProcess,
    credentials: AtomscaleCredentials,
    layers: int,
    samples: _common.Samples,
    server: _common.ServerTimes,
    repetition: int,
) -> None:
    per = 1000 / layers
    ours = new_material_flow(credentials, _new_name())
    plain, _ = _made_elsewhere(sandbox)
    pairs = [
        (
            ("ours miss", lambda: per_layer_flow(credentials, ours, layers)),
            ("plain miss", lambda: plain_flow(credentials, plain, layers)),
        ),
        (
            ("ours hit", lambda: per_layer_flow(credentials, ours, layers)),
            ("plain hit", lambda: plain_flow(credentials, plain, layers)),
        ),
        (
            ("bare sync", lambda: bare_flow(layers)),
            ("bare async", lambda: asyncio.run(abare_flow(layers))),
        ),
    ]
    for pair in pairs:
        # Alternate which of a pair goes first, so that neither always follows a lull.
        for name, run in pair if repetition % 2 == 0 else pair[::-1]:
            server.settle()
            samples.add(name, run() * per)
            if not name.startswith("bare"):  # only the layer flows time their CPU
                samples.add(f"{name} cpu", _LAST_CPU[0] * per)
    server.settle()
    fresh = new_material_flow(credentials, _new_name())
    samples.add("sync layers", per_layer_flow(credentials, fresh, layers) * per)
    server.settle()
    fresh = new_material_flow(credentials, _new_name())
    samples.add("async layers", asyncio.run(async_layers_flow(credentials, fresh, layers)) * per)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, then print the tables and the targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=200, help="layers per case (default 200)")
    _common.add_repeat_argument(parser, default=5)
    options = parser.parse_args(argv)
    layers, repeat = options.layers, max(1, options.repeat)
    samples = _common.Samples()
    with _common.SandboxProcess() as sandbox, _common.prefect_server() as server:
        credentials = _common.bench_credentials(sandbox)
        block = f"bench-{uuid.uuid4().hex[:8]}"
        credentials.save(block)
        # Warm-up: imports, registrations, the first flow call of the process.
        per_layer_flow(credentials, new_material_flow(credentials, _new_name()), 10)
        filled = 0
        for size in SIZES:
            sandbox.fill(size - filled)
            filled = size
            for repetition in range(repeat):
                server.settle()
                _lookups(sandbox, credentials, block, layers, samples, size)
                if size == SIZES[0]:
                    _cache_cost(sandbox, credentials, layers, samples, server, repetition)
                print(f"  {size:,} rows: repetition {repetition + 1}/{repeat} done", flush=True)
        sandbox.fill(MEMORY_ROWS - filled)
        before_mb, peak_mb = _peak_memory(sandbox)
    _report(samples, layers, repeat, before_mb, peak_mb)
    return 0


def _report(
    samples: _common.Samples, layers: int, repeat: int, before_mb: float, peak_mb: float
) -> None:
    small, large = SIZES
    m = samples.median
    rows, verdicts = [], []
    for kind in ("create_layer", "create_layers"):
        for size in SIZES:
            new, old = m(f"{kind} new {size}"), m(f"{kind} existing {size}")
            rows.append(
                [
                    kind,
                    f"{size:,}",
                    f"{new:.2f}",
                    f"{m(f'{kind} new {size} GETs'):.0f}",
                    f"{old:.2f}",
                    f"{m(f'{kind} existing {size} GETs'):.0f}",
                    f"{old / new:.2f}x",
                ]
            )
        new, old = m(f"{kind} new {large}"), m(f"{kind} existing {large}")
        growth = old / m(f"{kind} existing {small}")
        verdicts += [
            f"{kind}: existing/new at {large:,} rows {old / new:.2f}x (target <= 1.25x: "
            f"{_common.verdict(old / new, 1.25)}); existing at {large:,} / at {small:,} rows "
            f"{growth:.2f}x (target <= 1.3x: {_common.verdict(growth, 1.3)})",
        ]
    for name, label in (("stack file", "stack file, new"), ("find material", "find material")):
        unit = "ms/layer" if name == "stack file" else "ms"
        at_small, at_large = m(f"{name} {small}"), m(f"{name} {large}")
        rows.append(
            [
                label,
                f"{small:,} / {large:,}",
                f"{at_small:.2f} / {at_large:.2f} {unit}",
                f"{m(f'{name} {small} GETs'):.0f} / {m(f'{name} {large} GETs'):.0f}",
                "-",
                "-",
                f"{at_large / at_small:.2f}x growth",
            ]
        )
        verdicts.append(
            f"{label}: at {large:,} / at {small:,} rows {at_large / at_small:.2f}x (target <= "
            f"1.3x: {_common.verdict(at_large / at_small, 1.3)})"
        )
    _common.print_table(
        f"1. Per-layer cost by organisation size, N={layers}, {repeat} repetitions (medians)",
        ["task", "rows", "new ms/layer", "GETs", "existing ms/layer", "GETs", "existing/new"],
        rows,
        [*verdicts, f"Machine: {_common.machine_line()}."],
    )
    print(
        f"\n2. One look-up in a {MEMORY_ROWS:,}-row organisation: resident memory "
        f"{before_mb:.0f} MB before it, peak {peak_mb:.0f} MB during it "
        f"(+{peak_mb - before_mb:.0f} MB)."
    )
    hits = samples.ratio_medians("ours hit", "plain hit")
    misses = samples.ratio_medians("ours miss", "plain miss")
    sync_over = m("sync layers") - m("bare sync")
    async_over = m("async layers") - m("bare async")
    _common.print_table(
        f"3. Cache cost at {small:,} rows, N={layers} (ms per layer, medians)",
        ["measurement", "create_layer", "plain task", "ratio"],
        [
            ["misses", f"{m('ours miss'):.2f}", f"{m('plain miss'):.2f}", f"{misses:.2f}x"],
            ["hits", f"{m('ours hit'):.2f}", f"{m('plain hit'):.2f}", f"{hits:.2f}x"],
            [
                "sync: create_layer in sequence / bare tasks",
                f"{m('sync layers'):.2f}",
                f"{m('bare sync'):.2f}",
                f"+{sync_over:.2f}",
            ],
            [
                "async: acreate_layer gathered / bare tasks",
                f"{m('async layers'):.2f}",
                f"{m('bare async'):.2f}",
                f"+{async_over:.2f}",
            ],
        ],
        [
            "Ratios are medians of per-repetition ratios; each pair alternates its order.",
            f"In CPU time of the flow thread: hits "
            f"{samples.ratio_medians('ours hit cpu', 'plain hit cpu'):.2f}x, misses "
            f"{samples.ratio_medians('ours miss cpu', 'plain miss cpu'):.2f}x.",
            f"Hits: {hits:.2f}x a plain task's hits (target <= 1.05x: "
            f"{_common.verdict(hits, 1.05)}). Misses: {misses:.2f}x (target <= 1.0x: "
            f"{_common.verdict(misses, 1.0)}).",
            f"Async overhead per layer over bare async tasks {async_over:.2f} ms, sync "
            f"{sync_over:.2f} ms (target: async <= sync: "
            f"{'ok' if async_over <= sync_over else 'MISSED'}).",
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())
