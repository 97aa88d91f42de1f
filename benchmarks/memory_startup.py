"""Memory over many layers, and the import cost of the package (performance guide, figure 6).

Start-up: `import prefect_atomscale` against `import prefect` (and against
`from prefect import flow, task`, what any flow file imports) in fresh interpreters,
interleaved, median of `--import-runs` each; the target is at most 50 ms more than
`import prefect`. One `-X importtime` run then lists the modules the package adds,
slowest first.

Memory: `--batches` flows (default 10) of `--batch-layers` layers each (default 1,000),
each on a new target material, all cache misses; then the same flows again, every
layer a cache hit. After each flow: the resident set size (RSS, from /proc), live
httpx clients, registered loggers, open file descriptors and threads. The slope of RSS
per 1,000 layers is fitted after a warm-up flow, separately for misses and hits. Then,
with `tracemalloc` (25 frames) on, a few more flows of each kind tell how much of the
memory still held after them was allocated below a `prefect_atomscale` frame (ours)
and how much elsewhere (Prefect's own per-run state, caches, ...).

Setup: the sandbox runs in a child process; flows in this process against one temporary
Prefect server (start-up not counted).

Rerun it with (defaults shown):

    python benchmarks/memory_startup.py --batches 10 --batch-layers 1000 --import-runs 15
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import gc
import logging
import os
import re
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from typing import Any

import httpx
from prefect import flow

from prefect_atomscale import AtomscaleCredentials, create_layer, create_target_material

SUBSTRATE = "SrTiO3"
IMPORTS = {
    "import prefect": "import prefect",
    "from prefect import flow, task": "from prefect import flow, task",
    "import prefect_atomscale": "import prefect_atomscale",
}
IMPORT_TARGET_MS = 50.0


# --- start-up ---------------------------------------------------------------------------


def _run_python(code: str, *options: str) -> tuple[float, float, str]:
    """Run `python <options> -c code` in a fresh interpreter.

    Returns:
        Wall seconds, CPU seconds (user + system, of the child), and its stderr.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *options, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=_common.REPO_ROOT,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stderr


# Prints the modules other than ours that `import prefect_atomscale` loads beyond
# `import prefect`, as JSON.
_NEEDED = """
import json, sys
import prefect
before = set(sys.modules)
import prefect_atomscale
print(json.dumps(sorted(
    m for m in set(sys.modules) - before if m.split(".")[0] != "prefect_atomscale"
)))
"""
# Imports those modules first, then times `import prefect_atomscale` alone.
_OWN = """
import importlib, json, sys, time
import prefect
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
started = time.perf_counter()
import prefect_atomscale
print(time.perf_counter() - started)
"""
OWN = "the package alone, after the Prefect modules it uses"


def measure_imports(runs: int) -> tuple[_common.Samples, list[tuple[str, float]]]:
    """Time each import `runs` times, interleaved; find the modules the package adds.

    Returns:
        The samples (seconds) per import, and (module, self ms) of the modules that
        `import prefect_atomscale` loads beyond `import prefect`, slowest first.
    """
    samples = _common.Samples()
    needed = subprocess.run(
        [sys.executable, "-c", _NEEDED],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=_common.REPO_ROOT,
    ).stdout.strip()
    for _ in range(runs):
        for name, code in IMPORTS.items():
            seconds, cpu, _ = _run_python(code)
            samples.add(name, seconds)
            samples.add(f"{name} cpu", cpu)
        own = subprocess.run(
            [sys.executable, "-c", _OWN, needed],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            cwd=_common.REPO_ROOT,
        )
        samples.add(OWN, float(own.stdout.strip().splitlines()[-1]))
    *_, prefect_log = _run_python(IMPORTS["import prefect"], "-X", "importtime")
    *_, ours_log = _run_python(IMPORTS["import prefect_atomscale"], "-X", "importtime")
    pattern = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")
    before = {m.group(4) for m in map(pattern.match, prefect_log.splitlines()) if m}
    added = [
        (m.group(4), int(m.group(1)) / 1000)
        for m in map(pattern.match, ours_log.splitlines())
        if m and m.group(4) not in before
    ]
    return samples, sorted(added, key=lambda item: -item[1])


# --- memory ----------------------------------------------------------------------------------


@flow(name="bench-memory-batch")
def batch_flow(credentials: AtomscaleCredentials, sample_name: str, layers: int) -> int:
    """Create (or take from the cache) a target material and `layers` layers; return how many."""
    material = create_target_material(credentials, sample_name, SUBSTRATE)
    for position in range(1, layers + 1):
        create_layer(
            credentials,
            layer_id=position,
            sample_id=material.sample_id,
            **_common.layer_arguments(position),
        )
    return layers


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def census() -> dict[str, int]:
    """Collect garbage, then count what could leak: RSS, clients, loggers, fds, threads."""
    gc.collect()
    return {
        "rss": _common.rss_bytes(),
        "clients": sum(
            isinstance(obj, httpx.Client | httpx.AsyncClient) for obj in gc.get_objects()
        ),
        "loggers": len(logging.Logger.manager.loggerDict),
        "fds": _open_fds(),
        "threads": threading.active_count(),
    }


def slope_per_batch(values: list[float]) -> float:
    """Least-squares slope of `values` against their index (0 for fewer than 2)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    top = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return top / sum((x - mean_x) ** 2 for x in range(n))


def traced_growth(
    credentials: AtomscaleCredentials, batches: int, layers: int, server: _common.ServerTimes
) -> tuple[dict[str, float], list[tuple[str, int]]]:
    """Run flows under tracemalloc; split the memory still held after them, ours vs others.

    Returns:
        Bytes per 1,000 layers held after the misses and after the hits, ours and
        others', and the lines of ours holding the most.
    """
    names = [f"traced-{uuid.uuid4().hex[:12]}" for _ in range(batches)]
    batch_flow(credentials, f"traced-warm-up-{uuid.uuid4().hex[:12]}", layers)
    tracemalloc.start(25)
    try:
        results: dict[str, float] = {}
        ours_lines: dict[str, int] = {}
        for phase in ("misses", "hits"):
            gc.collect()
            start = tracemalloc.take_snapshot()
            for name in names:
                server.settle()
                batch_flow(credentials, name, layers)
            gc.collect()
            end = tracemalloc.take_snapshot()
            held_ours = held_other = 0
            for stat in end.compare_to(start, "traceback"):
                trace_is_ours = any("prefect_atomscale" in f.filename for f in stat.traceback)
                if trace_is_ours:
                    held_ours += stat.size_diff
                    line = next(
                        f"{f.filename.split('prefect_atomscale/')[-1]}:{f.lineno}"
                        for f in stat.traceback
                        if "prefect_atomscale" in f.filename
                    )
                    ours_lines[line] = ours_lines.get(line, 0) + stat.size_diff
                else:
                    held_other += stat.size_diff
            per_thousand = 1000 / (batches * layers)
            results[f"{phase} ours"] = held_ours * per_thousand
            results[f"{phase} others"] = held_other * per_thousand
    finally:
        tracemalloc.stop()
    top = sorted(ours_lines.items(), key=lambda item: -item[1])[:5]
    return results, top


def main(argv: list[str] | None = None) -> int:
    """Measure start-up and memory and print the two tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10, help="flows per phase (default 10)")
    parser.add_argument(
        "--batch-layers", type=int, default=1000, help="layers per flow (default 1000)"
    )
    parser.add_argument(
        "--import-runs", type=int, default=15, help="fresh interpreters per import (default 15)"
    )
    parser.add_argument(
        "--traced-batches",
        type=int,
        default=2,
        help="flows per phase under tracemalloc (default 2; 0 to skip)",
    )
    options = parser.parse_args(argv)
    batches, layers = max(2, options.batches), options.batch_layers

    imports, added = measure_imports(max(1, options.import_runs))
    base = imports.median("import prefect")
    extra_ms = (imports.median("import prefect_atomscale") - base) * 1000
    extra_vs_flow_ms = (
        imports.median("import prefect_atomscale")
        - imports.median("from prefect import flow, task")
    ) * 1000
    base_cpu = imports.median("import prefect cpu")
    extra_cpu_ms = (imports.median("import prefect_atomscale cpu") - base_cpu) * 1000
    rows: list[list[Any]] = [
        [
            name,
            f"{imports.median(name) * 1000:.0f}",
            f"{(imports.median(name) - base) * 1000:+.0f}",
            f"{imports.median(f'{name} cpu') * 1000:.0f}",
            f"{(imports.median(f'{name} cpu') - base_cpu) * 1000:+.0f}",
            imports.spread(name),
        ]
        for name in IMPORTS
    ]
    rows.append(
        [
            OWN,
            f"{imports.median(OWN) * 1000:.0f}",
            "(in-process)",
            "-",
            "-",
            imports.spread(OWN),
        ]
    )
    _common.print_table(
        f"Start-up: fresh interpreters, {options.import_runs} runs each, interleaved (medians)",
        [
            "python -c",
            "wall ms",
            "vs import prefect, ms",
            "CPU ms",
            "CPU vs import prefect, ms",
            "wall min-max s",
        ],
        rows,
        [
            f"Figure 6 (start-up): import prefect_atomscale adds {extra_ms:.0f} ms to import "
            f"prefect (target <= {IMPORT_TARGET_MS:.0f}: "
            f"{_common.verdict(extra_ms, IMPORT_TARGET_MS)}) in wall time and "
            f"{extra_cpu_ms:.0f} ms in CPU time (user + system of the interpreter, which "
            f"the machine's load disturbs less: {_common.verdict(extra_cpu_ms, IMPORT_TARGET_MS)}"
            "); it adds "
            f"{extra_vs_flow_ms:.0f} ms to `from prefect import flow, task`; the package's "
            f"own modules take {imports.median(OWN) * 1000:.0f} ms once the Prefect modules "
            "it uses are loaded (last row, timed inside one interpreter).",
            "Modules added beyond `import prefect` (self time, one -X importtime run; the "
            "first of ours to run `from prefect import task` also carries the work of "
            "Prefect's lazy `__getattr__` behind it): "
            + ", ".join(f"{name} {ms:.1f} ms" for name, ms in added[:8])
            + f"; {len(added)} modules, {sum(ms for _, ms in added):.0f} ms in all.",
            f"Machine: {_common.machine_line()}.",
        ],
    )

    readings: dict[str, list[dict[str, int]]] = {"misses": [], "hits": []}
    with _common.SandboxProcess() as sandbox, _common.prefect_server() as server:
        credentials = _common.bench_credentials(sandbox)
        names = [f"mem-{uuid.uuid4().hex[:12]}" for _ in range(batches)]
        before = census()
        for phase in ("misses", "hits"):
            for batch, name in enumerate(names, start=1):
                server.settle()
                batch_flow(credentials, name, layers)
                readings[phase].append(census())
                print(
                    f"  {phase} flow {batch}/{batches}: RSS "
                    f"{readings[phase][-1]['rss'] / 2**20:.1f} MiB",
                    flush=True,
                )
        traced: dict[str, float] = {}
        top: list[tuple[str, int]] = []
        if options.traced_batches > 0:
            traced, top = traced_growth(credentials, options.traced_batches, layers, server)

    rows = []
    for phase, label in (("misses", "uncached (misses)"), ("hits", "cached (hits)")):
        after_warm_up = [reading["rss"] for reading in readings[phase][1:]]
        slope = slope_per_batch(after_warm_up) * 1000 / layers
        first, last = readings[phase][0], readings[phase][-1]
        rows.append(
            [
                label,
                f"{batches} x {layers}",
                f"{first['rss'] / 2**20:.1f} -> {last['rss'] / 2**20:.1f}",
                f"{slope / 1024:.0f}",
                f"{traced.get(f'{phase} ours', float('nan')) / 1024:.1f}",
                f"{traced.get(f'{phase} others', float('nan')) / 1024:.1f}",
                f"{first['clients']} -> {last['clients']}",
                f"{first['loggers']} -> {last['loggers']}",
                f"{first['fds']} -> {last['fds']}",
                f"{first['threads']} -> {last['threads']}",
            ]
        )
    _common.print_table(
        f"Memory: {batches} flows of {layers} layers one after another, uncached then cached",
        [
            "phase",
            "flows x layers",
            "RSS MiB first -> last",
            "RSS KiB per 1,000 layers (slope after warm-up)",
            "held by ours, KiB/1,000",
            "held by others, KiB/1,000",
            "httpx clients",
            "loggers",
            "open fds",
            "threads",
        ],
        rows,
        [
            f"Before the first flow: RSS {before['rss'] / 2**20:.1f} MiB, "
            f"{before['clients']} httpx clients, {before['loggers']} loggers, "
            f"{before['fds']} fds, {before['threads']} threads.",
            "held by ours/others: tracemalloc (25 frames), memory allocated during "
            f"{options.traced_batches} further flows per phase and still held after them, "
            "split by whether a prefect_atomscale frame is on the allocating stack.",
            "Largest holders of ours: "
            + (", ".join(f"{line} {size / 1024:+.1f} KiB" for line, size in top) or "none"),
            f"Not counted: temporary Prefect server start-up {server.startup_seconds:.1f} s.",
            f"Machine: {_common.machine_line()}.",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
