"""The growth-run tasks on a large account: which calls grow with the organisation.

Growth runs are the API's physical samples. A create is one POST; reading one growth
run by its id is one filtered GET (`GET /physical_samples/?physical_sample_id=...`);
but a search by name has no filter, so `find_growth_runs` streams the listing of every
physical sample of the organisation and keeps what it needs, and so does
`create_growth_run` when a taken name's 409 names no id (the plain-string detail some
deployments send). This script fills the sandbox's organisation with other physical
samples (1,000, then 10,000, then 50,000; every second one linked to a target material
of its own, so the listing nests `target_material` objects as real data does) and, at
each size, times in one flow run per repetition:

- `create_growth_run` of a new name (one POST);
- `create_growth_run` of a taken name whose 409 carries the existing id (the object
  detail): the POST and one filtered GET;
- the same with the plain-string 409 (the sandbox's live setting switched for this
  case only): the POST and the whole listing;
- `get_growth_run` (one filtered GET);
- `find_growth_runs` with a name, and without (every growth run);
- for scale: a bare Prefect task with the same inputs (the task machinery alone), and
  the same listing fetched with a plain `httpx.Client`, its bytes only (mostly the
  sandbox's time to serve it) and decoded whole with `response.json()` (the HTTP and
  JSON work alone).

It counts what the sandbox received per case (POSTs, filtered GETs and whole
listings, told apart in the sandbox's child) and checks them against the design: in
particular the object-409 case sends no whole listing. No target: the cost grows with
the organisation by design where a listing is needed, and is constant otherwise; the
figure tells how much. The exit status is 1 if a count is not as designed.

    python benchmarks/growth_runs.py                       # 1,000 / 10,000 / 50,000, 5 repetitions
    python benchmarks/growth_runs.py --repeat 1 --sizes 1000,10000   # quick look
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
    create_growth_run,
    create_target_material,
    find_growth_runs,
    get_growth_run,
)

SIZES = (1_000, 10_000, 50_000)
# The running sandbox, for its request counters and live settings (not a flow
# parameter: Prefect would try to serialise it).
_SANDBOX: list[Any] = []
# (POSTs, GETs filtered by id, whole listings) each case must send, by design.
DESIGN: dict[str, tuple[int, int, int]] = {
    "bare task": (0, 0, 0),
    "plain GET, bytes": (0, 0, 1),
    "plain GET + json": (0, 0, 1),
    "create (new name)": (1, 0, 0),
    "create (taken, 409 with id)": (1, 1, 0),
    "create (taken, 409 string)": (1, 0, 1),
    "get_growth_run": (0, 1, 0),
    "find_growth_runs(name)": (0, 0, 1),
    "find_growth_runs()": (0, 0, 1),
}
CASES = tuple(DESIGN)
LISTING_CASES = tuple(case for case, (_, _, whole) in DESIGN.items() if whole)
CONSTANT_CASES = tuple(case for case in CASES if case not in LISTING_CASES)


@task(cache_policy=NO_CACHE)
def bare_task(credentials: AtomscaleCredentials, name: str, sample_id: int) -> str:
    """The task machinery alone: same inputs as `create_growth_run`, no request."""
    return name


def _plain_listing(credentials: AtomscaleCredentials, *, decode: bool = True) -> int:
    """The listing with a plain client: its length decoded whole, or its size in bytes.

    Decoded, it is the HTTP and JSON work alone; undecoded, mostly the sandbox's own
    time to serve the listing.
    """
    api_key = credentials.api_key.get_secret_value() if credentials.api_key else ""
    with httpx.Client(base_url=credentials.base_url, headers={"X-API-KEY": api_key}) as client:
        reply = client.get("/physical_samples/", timeout=120).raise_for_status()
        return len(reply.json()) if decode else len(reply.content)


def _counts() -> tuple[int, int, int, int]:
    """(POSTs, filtered GETs, whole listings, all requests) the sandbox has received."""
    stats = _SANDBOX[0].stats()
    posts = stats.count(_common.SAMPLES_POST_ROUTE)
    return posts, stats.sample_reads, stats.sample_listings, stats.requests


@flow(name="bench-growth-runs")
def growth_runs_flow(
    credentials: AtomscaleCredentials, run_id: str, name: str, sample_id: int
) -> dict[str, Any]:
    """Each case once, timed; (seconds, (POSTs, GETs by id, listings, others)) by case."""
    results: dict[str, tuple[float, tuple[int, int, int, int]]] = {}
    sandbox = _SANDBOX[0]

    def timed(case: str, call: Any) -> Any:
        before = _counts()
        started = time.perf_counter()
        value = call()
        seconds = time.perf_counter() - started
        after = _counts()
        posts, reads, listings, requests = (a - b for a, b in zip(after, before, strict=True))
        results[case] = (seconds, (posts, reads, listings, requests - posts - reads - listings))
        return value

    timed("bare task", lambda: bare_task(credentials, name, sample_id))
    timed("plain GET, bytes", lambda: _plain_listing(credentials, decode=False))
    rows = timed("plain GET + json", lambda: _plain_listing(credentials))
    fresh = f"bench-new-{uuid.uuid4().hex[:12]}"
    created = timed(
        "create (new name)", lambda: create_growth_run(credentials, fresh, sample_id=sample_id)
    )
    assert created.name == fresh and created.id != run_id, created
    found = timed(
        "create (taken, 409 with id)",
        lambda: create_growth_run(credentials, name, sample_id=sample_id),
    )
    assert found.id == run_id, found
    sandbox.set_conflict("string")
    try:
        found = timed(
            "create (taken, 409 string)",
            lambda: create_growth_run(credentials, name, sample_id=sample_id),
        )
    finally:
        sandbox.set_conflict("object")
    assert found.id == run_id, found
    read = timed("get_growth_run", lambda: get_growth_run(credentials, run_id))
    assert read.id == run_id and read.target_material_id == sample_id, read
    named = timed("find_growth_runs(name)", lambda: find_growth_runs(credentials, name=name))
    assert [run.id for run in named] == [run_id], named
    everything = timed("find_growth_runs()", lambda: find_growth_runs(credentials))
    # One more than the plain listing saw: the new name's growth run, created since.
    assert len(everything) == rows + 1, (len(everything), rows)
    return results


def _sizes(text: str) -> tuple[int, ...]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 0:
        raise argparse.ArgumentTypeError("sizes are whole numbers >= 0, e.g. 1000,10000")
    return tuple(sizes)


def main(argv: list[str] | None = None) -> int:
    """Fill the organisation size by size, time every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_repeat_argument(parser, default=5)
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=SIZES,
        help="other physical samples in the organisation, comma-separated, filled in "
        "increasing order (default 1000,10000,50000)",
    )
    options = parser.parse_args(argv)
    repeat, sizes = max(1, options.repeat), options.sizes
    samples = _common.Samples()
    counts: dict[tuple[int, str], set[tuple[int, int, int, int]]] = {}
    fill_seconds: dict[int, float] = {}
    started = time.perf_counter()
    with _common.SandboxProcess() as sandbox, _common.prefect_server() as server:
        credentials = _common.bench_credentials(sandbox, timeout=120.0)
        name = f"bench-run-{uuid.uuid4().hex[:8]}"

        @flow(name="bench-make-growth-run")
        def make_growth_run() -> tuple[str, int]:
            material = create_target_material(
                credentials, f"{name} target", "SrTiO3", layers=[_common.layer_arguments(1)]
            )
            run = create_growth_run(credentials, name, sample_id=material.sample_id)
            return run.id, material.sample_id

        _SANDBOX.append(sandbox)
        run_id, sample_id = make_growth_run()
        growth_runs_flow(credentials, run_id, name, sample_id)  # warm-up, not counted
        filled = 0
        for size in sizes:
            filling = time.perf_counter()
            sandbox.fill_samples(size - filled)
            fill_seconds[size] = time.perf_counter() - filling
            filled = size
            for repetition in range(repeat):
                server.settle()
                timings = growth_runs_flow(credentials, run_id, name, sample_id)
                for case, (seconds, sent) in timings.items():
                    samples.add(f"{size}/{case}", seconds * 1000)
                    counts.setdefault((size, case), set()).add(sent)
                print(f"  {size:,} samples: repetition {repetition + 1}/{repeat} done", flush=True)
    measured = time.perf_counter() - started
    as_designed = _report(samples, counts, repeat, sizes)
    fills = ", ".join(f"{size:,}: {seconds:.1f} s" for size, seconds in fill_seconds.items())
    print(f"fills (outside the measurements): {fills}")
    print(
        f"whole run {measured:.0f} s (Prefect server start-up {server.startup_seconds:.1f} s, "
        f"teardown {server.teardown_seconds:.1f} s, settling {server.settled_seconds:.1f} s)"
    )
    return 0 if as_designed else 1


def _report(
    samples: _common.Samples,
    counts: dict[tuple[int, str], set[tuple[int, int, int, int]]],
    repeat: int,
    sizes: tuple[int, ...],
) -> bool:
    """Print the table and the growth ratios; True if every count is as designed."""
    rows, as_designed = [], True
    for size in sizes:
        for case in CASES:
            seen = sorted(counts.get((size, case), set()))
            met = seen == [(*DESIGN[case], 0)]
            as_designed = as_designed and met
            rows.append(
                [
                    f"{size:,}",
                    case,
                    f"{samples.median(f'{size}/{case}'):.1f}",
                    samples.spread(f"{size}/{case}") if repeat > 1 else "-",
                    "; ".join("/".join(str(n) for n in sent) for sent in seen),
                    "ok" if met else "MISSED",
                ]
            )
    _common.print_table(
        f"The growth-run tasks by organisation size, {repeat} repetitions (medians, ms per call)",
        ["samples", "case", "ms", "range (ms)", "POST/by id/all/other", "as designed"],
        rows,
        [
            _common.machine_line(),
            "samples: other physical samples of the organisation (every second one linked to "
            "a target material); the growth run read is one more, plus one per new-name create.",
            "POST/by id/all/other: POST /physical_samples/, GET /physical_samples/ filtered by "
            "physical_sample_id, the whole listing, any other request (per call).",
            "Each case is timed around the task call inside one flow run per repetition.",
            "No target: grows with the organisation by design where a listing is needed; "
            "constant otherwise.",
        ],
    )
    small, large = sizes[0], sizes[-1]
    if large != small:
        for case in (*LISTING_CASES, *CONSTANT_CASES):
            growth = _common.ratio(
                samples.median(f"{large}/{case}"), samples.median(f"{small}/{case}")
            )
            kind = "listing" if case in LISTING_CASES else "constant by design"
            print(f"{case}: {large:,} / {small:,} samples = {growth:.1f}x ({kind})")
    print("counts as designed: " + ("yes" if as_designed else "NO (see the table)"))
    return as_designed


if __name__ == "__main__":
    raise SystemExit(main())
