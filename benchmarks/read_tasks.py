"""The read tasks on a large account: what one listing of the whole organisation costs.

The API has no read of one target material: `get_stack` and `find_target_materials`
stream `GET /target-materials/`, every layer of the organisation, and keep what they
need. This script fills the sandbox's organisation with other target materials (1,000
rows, then 10,000, then 50,000; 10 layers per filler material) and, at each size, times
in one flow run per repetition:

- `get_stack` of a 10-layer target material;
- `find_target_materials` with a name, and without (every target material, one each);
- `update_target_material` of the substrate only (one PATCH, no listing) and of the
  name (one listing for the ownership mark, then the PATCH);
- for scale: a bare Prefect task with the same inputs (the task machinery alone), and
  the same listing fetched with a plain `httpx.Client` and decoded whole with
  `response.json()` (the HTTP and JSON work alone).

It checks that each read sent exactly one `GET /target-materials/`. No target: the cost
grows with the organisation by design (the API offers nothing else); the figure tells
how much.

    python benchmarks/read_tasks.py                 # 1,000 / 10,000 / 50,000 rows, 5 repetitions
    python benchmarks/read_tasks.py --repeat 1      # quick look
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import time
import uuid
from typing import Any

import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from prefect_atomscale import (
    AtomscaleCredentials,
    create_target_material,
    find_target_materials,
    get_stack,
    update_target_material,
)

SIZES = (1_000, 10_000, 50_000)
STACK_LAYERS = 10
# The running sandbox, for its request counters (not a flow parameter: Prefect would
# try to serialise it).
_SANDBOX: list[Any] = []
CASES = (
    "bare task",
    "plain GET + json",
    "get_stack",
    "find_target_materials(name)",
    "find_target_materials()",
    "update (substrate)",
    "update (name)",
)


@task(cache_policy=NO_CACHE)
def bare_task(credentials: AtomscaleCredentials, sample_id: int) -> int:
    """The task machinery alone: same inputs as `get_stack`, no request."""
    return sample_id


def _plain_listing(credentials: AtomscaleCredentials) -> int:
    """The listing with a plain client, decoded whole: the HTTP and JSON work alone."""
    api_key = credentials.api_key.get_secret_value() if credentials.api_key else ""
    with httpx.Client(base_url=credentials.base_url, headers={"X-API-KEY": api_key}) as client:
        return len(client.get("/target-materials/", timeout=120).raise_for_status().json())


@flow(name="bench-read-tasks")
def read_flow(credentials: AtomscaleCredentials, sample_id: int, name: str) -> dict[str, Any]:
    """Each case once, timed; (seconds, GETs the sandbox received) by case."""
    results: dict[str, tuple[float, int]] = {}
    sandbox_stats = _SANDBOX[0].stats

    def timed(case: str, call: Any) -> Any:
        before = sandbox_stats().count(_common.MATERIALS_GET_ROUTE)
        started = time.perf_counter()
        value = call()
        seconds = time.perf_counter() - started
        results[case] = (seconds, sandbox_stats().count(_common.MATERIALS_GET_ROUTE) - before)
        return value

    timed("bare task", lambda: bare_task(credentials, sample_id))
    rows = timed("plain GET + json", lambda: _plain_listing(credentials))
    layers = timed("get_stack", lambda: get_stack(credentials, sample_id))
    assert len(layers) == STACK_LAYERS, layers
    found = timed("find_target_materials(name)", lambda: find_target_materials(credentials, name))
    assert [material.sample_id for material in found] == [sample_id], found
    everything = timed("find_target_materials()", lambda: find_target_materials(credentials))
    assert len(everything) >= rows // STACK_LAYERS, (len(everything), rows)
    substrate = "MgO" if found[0].substrate != "MgO" else "SrTiO3"
    timed(
        "update (substrate)",
        lambda: update_target_material(credentials, sample_id, substrate=substrate),
    )
    timed(
        "update (name)",
        lambda: update_target_material(credentials, sample_id, sample_name=name),
    )
    return results


def main(argv: list[str] | None = None) -> int:
    """Fill the organisation size by size, time every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_repeat_argument(parser, default=5)
    options = parser.parse_args(argv)
    repeat = max(1, options.repeat)
    samples = _common.Samples()
    gets: dict[tuple[int, str], set[int]] = {}
    with _common.SandboxProcess() as sandbox, _common.prefect_server() as server:
        credentials = _common.bench_credentials(sandbox, timeout=120.0)
        name = f"bench-read-{uuid.uuid4().hex[:8]}"

        @flow(name="bench-make-stack")
        def make_stack() -> int:
            stack = [_common.layer_arguments(p) for p in range(1, STACK_LAYERS + 1)]
            return create_target_material(credentials, name, "SrTiO3", layers=stack).sample_id

        _SANDBOX.append(sandbox)
        sample_id = make_stack()
        read_flow(credentials, sample_id, name)  # warm-up, not counted
        filled = 0
        for size in SIZES:
            sandbox.fill(size - filled)
            filled = size
            for repetition in range(repeat):
                server.settle()
                for case, (seconds, count) in read_flow(credentials, sample_id, name).items():
                    samples.add(f"{size}/{case}", seconds * 1000)
                    gets.setdefault((size, case), set()).add(count)
                print(f"  {size:,} rows: repetition {repetition + 1}/{repeat} done", flush=True)
    _report(samples, gets, repeat)
    return 0


def _report(samples: _common.Samples, gets: dict[tuple[int, str], set[int]], repeat: int) -> None:
    rows = []
    for size in SIZES:
        for case in CASES:
            counts = sorted(gets.get((size, case), set()))
            rows.append(
                [
                    f"{size:,}",
                    case,
                    f"{samples.median(f'{size}/{case}'):.1f}",
                    samples.spread(f"{size}/{case}") if repeat > 1 else "-",
                    ", ".join(str(count) for count in counts),
                ]
            )
    _common.print_table(
        f"The read tasks by organisation size, {repeat} repetitions (medians, ms per call)",
        ["rows", "case", "ms", "range (ms)", "GETs"],
        rows,
        [
            _common.machine_line(),
            "rows: listed layers of the organisation besides the 10-layer target material read.",
            "Each case is timed around the task call inside one flow run per repetition.",
        ],
    )
    small, large = SIZES[0], SIZES[-1]
    for case in ("get_stack", "find_target_materials()"):
        growth = samples.median(f"{large}/{case}") / samples.median(f"{small}/{case}")
        print(f"{case}: {large:,} rows / {small:,} rows = {growth:.1f}x")


if __name__ == "__main__":
    raise SystemExit(main())
