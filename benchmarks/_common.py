"""Helpers shared by the benchmark scripts; not a benchmark itself.

Importing this module prepares the process for a benchmark, so import it before Prefect:

- `PREFECT_HOME` points at a fresh temporary directory (removed at exit), so cached
  results of one run never make the next run's cache misses into hits;
- Prefect's telemetry is off (offline it only logs errors);
- Prefect's console handler shows warnings and errors only. Task and flow logs still
  go, at INFO, to the Prefect server through its API handler, as in production; they
  are just not printed, so that the tables stay readable.

What it offers:

- `SandboxProcess`: the Atomscale sandbox in a child process (uvicorn on loopback), so
  that the benchmark process pays only the client side of each request. The child
  answers `stats` and `reset` on a pipe, so its counters (requests per route, TCP
  connections accepted, the most connections open at once, and listings of physical
  samples whole or filtered by id) can be read without anything added to the sandbox;
  `fill`, `fill_samples` and `set_conflict` grow the benchmark organisation and switch
  the shape of the 409 for a taken growth-run name.
- `prefect_server`: one temporary Prefect server per script run
  (`prefect_test_harness`), whose start-up and teardown times are reported apart;
  `settle()` waits, between measurements, until the server has stored what the last
  flow sent it, so that its backlog does not compete with the next measurement.
- `Samples`, `median`, `ratio`, `print_table`, `machine_line`, `verdict`: repetitions,
  medians, ratios of medians, a plain-text table, and target checks.
- `bench_credentials`, `layer_arguments`, `rss_bytes`, `add_repeat_argument`: the
  credentials, layer formulas and options every script shares.

`python benchmarks/_common.py serve-sandbox --api-key KEY` is the child's entry point.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
_THIS_FILE = str(Path(__file__).resolve())
LAYERS_ROUTE = ("POST", "/target-materials/layers/")
MATERIALS_POST_ROUTE = ("POST", "/target-materials/")
MATERIALS_GET_ROUTE = ("GET", "/target-materials/")
SAMPLES_POST_ROUTE = ("POST", "/physical_samples/")
SAMPLES_GET_ROUTE = ("GET", "/physical_samples/")
BENCH_API_KEY = "benchmark-key-0123456789abcdef"
FORMULAS = ("BaTiO3", "SrTiO3", "SrRuO3", "(La0.7Sr0.3)MnO3", "LaAlO3", "GaN", "AlN", "MgO")
ORIENTATIONS = ("001", "110", "111", "0001")
SANDBOX_START_TIMEOUT_SECONDS = 60.0
SANDBOX_REPLY_TIMEOUT_SECONDS = 30.0


def _isolate_prefect() -> Path:
    """Point Prefect at a throw-away home; must run before `prefect` is imported."""
    if "prefect" in sys.modules:
        raise RuntimeError("import benchmarks/_common.py before prefect")
    home = Path(tempfile.mkdtemp(prefix="prefect-atomscale-bench-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["PREFECT_HOME"] = str(home)
    # The machine-wide lock directory too, so a run starts from an empty lock store.
    os.environ.setdefault("PREFECT_ATOMSCALE_LOCK_DIR", str(home / "atomscale-locks"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    for name in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT", "PREFECT_API_URL"):
        os.environ.pop(name, None)
    return home


PREFECT_HOME = _isolate_prefect() if __name__ != "__main__" else None


# --- repetitions, medians and tables ------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Return the median, or NaN for no values.

    Args:
        values: The samples.

    Returns:
        Their median.
    """
    return statistics.median(values) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    """Return `numerator / denominator`, NaN if the denominator is not positive.

    Args:
        numerator: Top.
        denominator: Bottom.

    Returns:
        The quotient.
    """
    return numerator / denominator if denominator > 0 else float("nan")


@dataclass
class Samples:
    """Named lists of measurements, one value per repetition.

    Attributes:
        values: Name -> the values recorded under it, in order.
    """

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str, value: float) -> None:
        """Record one value under `name`.

        Args:
            name: What was measured.
            value: The measurement.
        """
        self.values[name].append(value)

    def median(self, name: str) -> float:
        """Return the median of the values under `name`.

        Args:
            name: What was measured.

        Returns:
            Their median (NaN if none).
        """
        return median(self.values.get(name, []))

    def spread(self, name: str) -> str:
        """Return "min-max" of the values under `name`, for the table.

        Args:
            name: What was measured.

        Returns:
            The range as text.
        """
        values = self.values.get(name, [])
        return f"{min(values):.3g}-{max(values):.3g}" if values else "-"

    def ratio_medians(self, numerator: str, denominator: str) -> float:
        """Return the median of per-repetition ratios `numerator / denominator`.

        Pairing the two measurements of one repetition cancels slow drifts of the
        machine's load better than a ratio of two medians does.

        Args:
            numerator: Name of the top series.
            denominator: Name of the bottom series.

        Returns:
            The median ratio.
        """
        pairs = zip(self.values.get(numerator, []), self.values.get(denominator, []), strict=False)
        return median([ratio(top, bottom) for top, bottom in pairs])


def machine_line() -> str:
    """Describe the machine and how busy it is, for the table's heading.

    Returns:
        One line: CPUs, load averages, Python and Prefect versions.
    """
    try:
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = "unknown"
    versions = [f"Python {platform.python_version()}"]
    for package in ("prefect", "httpx"):
        module = sys.modules.get(package)
        if module is not None:
            versions.append(f"{package} {getattr(module, '__version__', '?')}")
    return f"{os.cpu_count()} CPUs, load average {load} (1/5/15 min); " + ", ".join(versions)


def print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()
) -> None:
    """Print a plain-text (and Markdown-compatible) table with a title and notes.

    Args:
        title: Printed above the table.
        headers: Column names.
        rows: One sequence of cells per row; floats are printed with 3 significant digits.
        notes: Lines printed under the table.
    """

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    text = [[cell(value) for value in row] for row in rows]
    widths = [
        max([len(header)] + [len(row[i]) for row in text]) for i, header in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(f"\n{title}\n")
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in text:
        print(line(row))
    if notes:
        print()
        for note in notes:
            print(note)
    sys.stdout.flush()


def verdict(value: float, limit: float, *, at_least: bool = False) -> str:
    """Say whether a measured ratio meets its target.

    Args:
        value: The measured ratio.
        limit: The target.
        at_least: True if the ratio must be at least `limit`, else at most.

    Returns:
        "ok" or "MISSED".
    """
    met = value >= limit if at_least else value <= limit
    return "ok" if met else "MISSED"


# --- the sandbox in a child process ---------------------------------------------------


@dataclass(frozen=True)
class SandboxStats:
    """The sandbox's counters, read from the child process.

    Attributes:
        requests: HTTP requests received.
        by_route: Requests per `(method, path template)`.
        connections: TCP connections accepted.
        peak_open: Most connections open at the same time (sampled every 2 ms).
        sample_listings: `GET /physical_samples/` without `physical_sample_id`: the
            whole organisation's listing.
        sample_reads: `GET /physical_samples/` filtered by `physical_sample_id`.
    """

    requests: int
    by_route: dict[tuple[str, str], int]
    connections: int
    peak_open: int = 0
    sample_listings: int = 0
    sample_reads: int = 0

    def count(self, route: tuple[str, str]) -> int:
        """Return the requests to one route.

        Args:
            route: `(method, path template)`.

        Returns:
            How many there were.
        """
        return self.by_route.get(route, 0)

    @property
    def posts(self) -> int:
        """All POST requests, to any route."""
        return sum(n for (method, _), n in self.by_route.items() if method == "POST")


class SandboxProcess:
    """The sandbox served by a child process, with its counters readable from here.

    Use as a context manager. The child serves HTTP/1.1 on a free loopback port with a
    temporary SQLite database, and exits when this object closes its pipe.

    Attributes:
        url: Base URL of the sandbox.
        api_key: The key it accepts.
        startup_seconds: How long the child took to answer its first `stats`.
    """

    def __init__(self, api_key: str = BENCH_API_KEY) -> None:
        self.api_key = api_key
        self.url = ""
        self.startup_seconds = float("nan")
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> SandboxProcess:
        started = time.perf_counter()
        self._process = subprocess.Popen(
            [sys.executable, _THIS_FILE, "serve-sandbox", "--api-key", self.api_key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=REPO_ROOT,
        )
        ready = self._reply(SANDBOX_START_TIMEOUT_SECONDS)
        if not ready.startswith("READY "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the sandbox child did not start: {ready!r}")
        self.url = ready.split(" ", 1)[1].strip()
        self.startup_seconds = time.perf_counter() - started
        return self

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def _reply(self, timeout: float) -> str:
        assert self._process is not None and self._process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self._process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        if not result:
            raise RuntimeError(f"the sandbox child did not answer within {timeout:.0f} s")
        return result[0]

    def _ask(self, command: str) -> str:
        with self._lock:
            assert self._process is not None and self._process.stdin is not None
            self._process.stdin.write(command + "\n")
            self._process.stdin.flush()
            return self._reply(SANDBOX_REPLY_TIMEOUT_SECONDS)

    def stats(self) -> SandboxStats:
        """Read the counters now.

        Returns:
            Requests, requests per route and connections accepted since the last reset.
        """
        data = json.loads(self._ask("stats"))
        return SandboxStats(
            requests=data["requests"],
            by_route={(method, route): n for method, route, n in data["by_route"]},
            connections=data["connections"],
            peak_open=data.get("peak_open", 0),
            sample_listings=data.get("sample_listings", 0),
            sample_reads=data.get("sample_reads", 0),
        )

    def reset_stats(self) -> None:
        """Set every counter back to zero."""
        self._ask("reset")

    def fill(self, rows: int) -> None:
        """Add `rows` listed rows (other target materials) to the benchmark organisation."""
        self._ask(f"fill {int(rows)}")

    def fill_samples(self, count: int) -> None:
        """Add `count` other physical samples (growth runs) to the benchmark organisation.

        Every second one is linked to a target material of its own (without layers), so
        the listing nests `target_material` objects as real data does.
        """
        self._ask(f"fill_samples {int(count)}")

    def set_conflict(self, shape: str) -> None:
        """Switch the live shape of the 409 for a taken growth-run name.

        Args:
            shape: `"object"` (the detail carries `physical_sample_id`) or `"string"`.
        """
        reply = self._ask(f"conflict {shape}")
        if reply.strip() != "ok":
            raise RuntimeError(f"the sandbox child refused conflict {shape!r}: {reply!r}")


class _PeakOpenConnections:
    """Samples how many connections the sandbox has open at once (child side).

    The sandbox counts connections accepted; how many are open at the same moment is
    read here from its connection registry (its open-connection table, a private
    attribute: this helper reads it, and changes nothing in the sandbox).
    """

    def __init__(self, sandbox: Any, interval: float = 0.002) -> None:
        self._open = sandbox.app.connections._open
        self._interval = interval
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-open-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            now = len(self._open)
            with self._lock:
                self._peak = max(self._peak, now)

    def reset(self) -> None:
        with self._lock:
            self._peak = len(self._open)

    def peak(self) -> int:
        with self._lock:
            return max(self._peak, len(self._open))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class _SampleListings:
    """Counts the store's physical-sample listings, whole and filtered by id (child side).

    The sandbox counts requests per route, and both reads are `GET /physical_samples/`;
    this tells them apart by wrapping `list_physical_samples` on the one store object of
    this child (an attribute of that instance: the sandbox's code and its answers are
    unchanged).
    """

    def __init__(self, store: Any) -> None:
        self._lock = threading.Lock()
        self._whole = 0
        self._filtered = 0
        listing = store.list_physical_samples

        def counted(organisation: str, **options: Any) -> Any:
            with self._lock:
                if options.get("physical_sample_id") is None:
                    self._whole += 1
                else:
                    self._filtered += 1
            return listing(organisation, **options)

        store.list_physical_samples = counted

    def reset(self) -> None:
        with self._lock:
            self._whole = self._filtered = 0

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self._whole, self._filtered


def _serve_sandbox(api_key: str) -> int:
    """The child: serve the sandbox; answer command lines on stdin until EOF.

    Commands: `stats`, `reset`, `fill N` (N listed layers of other target materials),
    `fill_samples N` (N other physical samples) and `conflict object|string` (the live
    shape of the 409 for a taken physical-sample name).
    """
    from atomscale_sandbox import SandboxConfig, run_sandbox

    with run_sandbox(SandboxConfig(api_keys={api_key: "benchmark"})) as sandbox:
        peak = _PeakOpenConnections(sandbox)
        listings = _SampleListings(sandbox.app.store)
        print(f"READY {sandbox.url}", flush=True)
        for command in sys.stdin:
            command = command.strip()
            if command == "reset":
                sandbox.reset_stats()
                peak.reset()
                listings.reset()
                print("ok", flush=True)
            elif command.startswith("fill "):
                sandbox.app.store.fill("benchmark", int(command.split()[1]))
                print("ok", flush=True)
            elif command.startswith("fill_samples "):
                sandbox.app.store.fill_physical_samples("benchmark", int(command.split()[1]))
                print("ok", flush=True)
            elif command in ("conflict object", "conflict string"):
                sandbox.physical_sample_conflict = "string" if "string" in command else "object"
                print("ok", flush=True)
            elif command == "stats":
                snapshot = sandbox.stats
                whole, filtered = listings.counts()
                print(
                    json.dumps(
                        {
                            "requests": snapshot.requests,
                            "by_route": [[m, r, n] for (m, r), n in snapshot.by_route.items()],
                            "connections": snapshot.connections,
                            "peak_open": peak.peak(),
                            "sample_listings": whole,
                            "sample_reads": filtered,
                        }
                    ),
                    flush=True,
                )
            else:
                print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
        peak.stop()
    return 0


# --- Prefect -----------------------------------------------------------------------------


@dataclass
class ServerTimes:
    """The temporary Prefect server: how long it took to start and stop, and its process.

    Attributes:
        startup_seconds: From entering `prefect_server` until flows can run.
        teardown_seconds: From leaving it until the server is gone (set on exit).
        pid: The server's process id, if known.
        settled_seconds: Time spent in `settle` so far (not part of any measurement).
    """

    startup_seconds: float = float("nan")
    teardown_seconds: float = float("nan")
    pid: int | None = None
    settled_seconds: float = 0.0

    def settle(
        self, *, busy_share: float = 0.1, window: float = 0.5, limit: float = 120.0
    ) -> float:
        """Wait until the server has worked off what the last flow sent it.

        A flow hands its events and logs to the server faster than a busy 2-core
        machine lets the server store them; without a pause the backlog of one flow
        would compete with the next measurement (and a long backlog makes the server
        drop events and answer 503). Waits, outside any measurement, until the server
        process used less than `busy_share` of one CPU over `window` seconds.

        Args:
            busy_share: CPU share below which the server counts as idle.
            window: Seconds per observation.
            limit: Give up waiting after this many seconds.

        Returns:
            Seconds waited.
        """
        started = time.perf_counter()
        previous = _cpu_seconds(self.pid)
        while previous is not None and time.perf_counter() - started < limit:
            time.sleep(window)
            now = _cpu_seconds(self.pid)
            if now is None or now - previous < busy_share * window:
                break
            previous = now
        waited = time.perf_counter() - started
        self.settled_seconds += waited
        return waited


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) of process `pid` so far, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def prefect_server() -> Iterator[ServerTimes]:
    """Run one temporary Prefect server (and database) for the whole script.

    Yields:
        Its start-up time and process now, and its teardown time once the block is left.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.testing.utilities import prefect_test_harness

    times = ServerTimes()
    started = time.perf_counter()
    harness = prefect_test_harness(server_startup_timeout=180)
    harness.__enter__()
    times.startup_seconds = time.perf_counter() - started
    server = SubprocessASGIServer._instances.get(None)
    process = getattr(server, "server_process", None)
    times.pid = getattr(process, "pid", None)
    try:
        yield times
    finally:
        stopping = time.perf_counter()
        harness.__exit__(None, None, None)
        times.teardown_seconds = time.perf_counter() - stopping


def bench_credentials(sandbox: SandboxProcess, **options: Any) -> Any:
    """Return `AtomscaleCredentials` for the benchmark's sandbox.

    Args:
        sandbox: The running sandbox.
        **options: Further block fields, e.g. `max_connections`.

    Returns:
        The credentials block (built in memory, not saved).
    """
    from prefect_atomscale import AtomscaleCredentials

    return AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url, **options)


def raw_post_loop(sandbox: SandboxProcess, layers: int) -> tuple[float, float]:
    """POST `layers` layers to a new target material on one keep-alive `httpx.Client`.

    The floor the per-layer figures compare with: the same request bodies the tasks
    send, without Prefect; each reply is decoded.

    Returns:
        Wall and CPU seconds (of this thread) of the loop of POSTs.
    """
    import httpx

    from prefect_atomscale import LayerRequest, TargetMaterialRequest

    headers = {"X-API-KEY": sandbox.api_key, "Accept": "application/json"}
    with httpx.Client(base_url=sandbox.url, headers=headers, timeout=30.0) as client:
        material = TargetMaterialRequest.build(
            sample_name=f"raw-{uuid.uuid4().hex[:12]}", substrate="SrTiO3"
        )
        reply = client.post("/target-materials/", json=material.body)
        reply.raise_for_status()
        sample_id = reply.json()["sample_id"]
        bodies = [
            dict(
                LayerRequest.build(
                    sample_id=sample_id, layer_id=position, **layer_arguments(position)
                ).body
            )
            for position in range(1, layers + 1)
        ]
        wall, cpu = time.perf_counter(), time.thread_time()
        for body in bodies:
            reply = client.post("/target-materials/layers/", json=body)
            reply.raise_for_status()
            reply.json()
        return time.perf_counter() - wall, time.thread_time() - cpu


def layer_arguments(position: int) -> dict[str, Any]:
    """Return the formula and orientation used for layer `position` in every benchmark.

    Args:
        position: The layer's position, from 1.

    Returns:
        `composition_string` and `orientation` keyword arguments.
    """
    return {
        "composition_string": FORMULAS[position % len(FORMULAS)],
        "orientation": ORIENTATIONS[position % len(ORIENTATIONS)],
    }


def rss_bytes() -> int:
    """Return this process's resident set size now (Linux: /proc/self/status).

    Returns:
        Bytes resident, or the peak from `getrusage` where /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def add_repeat_argument(parser: argparse.ArgumentParser, default: int) -> None:
    """Add the `--repeat` option every script takes.

    Args:
        parser: The script's parser.
        default: Repetitions when not given.
    """
    parser.add_argument(
        "--repeat",
        type=int,
        default=default,
        help=f"repetitions of every measurement; medians are reported (default {default})",
    )


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Helpers of the benchmarks (child entry).")
    parser.add_argument("command", choices=["serve-sandbox"])
    parser.add_argument("--api-key", default=BENCH_API_KEY)
    options = parser.parse_args(argv)
    return _serve_sandbox(options.api_key)


if __name__ == "__main__":
    sys.exit(_main())
