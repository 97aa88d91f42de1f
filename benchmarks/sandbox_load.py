"""Load and durability benchmark of the sandbox: concurrent layer POSTs, then a restart.

Measures the sandbox's write figure (docs/guides/performance.md, figure 5), layer POSTs per
second with durable SQLite writes and their p50/p99 latency, and checks its durability
promise under that load: every acknowledged write is stored, and still there after a
restart.

The server runs as `python -m atomscale_sandbox` in its own process and the
load generator in one or more other processes, so that the two share the machine's
cores the way a real deployment and its clients would. Each client is one keep-alive
HTTP/1.1 connection writing layers one after another to its own target material.

    python benchmarks/sandbox_load.py --writes 10000 --clients 16
    python benchmarks/sandbox_load.py --writes 10000 --clients 16 --repeat 5 --crash
    python benchmarks/sandbox_load.py --http h11 --client httpx --processes 2

Steps of one run: start the server on a fresh database; create one target material per
client; send `--writes` layer POSTs from `--clients` connections at once, counting the
2xx replies (acknowledged writes) and timing each; stop the server (SIGTERM, graceful);
count the stored layers in the SQLite file; start the server again on the same file and
read the layers back over the API. `--crash` adds a run that kills the server with
SIGKILL half-way through the load instead, then checks the same after a restart. The
table shows each run and the median of the runs: on a shared machine single runs vary
widely, and the server's CPU time per write varies much less than its writes/s.

Two load generators: `raw` (default) writes HTTP/1.1 by hand on asyncio streams, like
`wrk`, so that the client spends as little of the shared CPU as possible on itself;
`httpx` uses one `httpx.AsyncClient` per connection, as the package's own client does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import httpx

from atomscale_sandbox import HttpParser, available_http_parsers

LAYERS = "/target-materials/layers/"
MATERIALS = "/target-materials/"
FORMULAS = ("BaTiO3", "SrTiO3", "LaAlO3", "MgO", "GaAs", "ZnO", "(La0.7Sr0.3)MnO3")
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0
# A bound on every load loop: a run that is not done by then is reported as failed.
LOAD_TIMEOUT_SECONDS = 300.0
REQUEST_TIMEOUT_SECONDS = 30.0
DURABILITY = (
    "SQLite WAL, synchronous=NORMAL: each acknowledged write is in the WAL file before its "
    "reply, so it survives the server process being killed; a power cut or OS crash may "
    "lose the commits since the last checkpoint"
)


@dataclass
class ClientResult:
    """What one load-generator process saw.

    Attributes:
        acknowledged_ids: Record ids of the writes answered with 2xx.
        latencies_ns: Time from sending each acknowledged write to its full reply.
        refused: Replies with a status other than 2xx, per status.
        transport_errors: Writes that got no reply (connection refused, reset, closed).
        started_ns: `time.monotonic_ns()` when its first write went out.
        finished_ns: `time.monotonic_ns()` when its last reply came in.
        cpu_seconds: CPU time (user + system) the process used for the load.

    Example:
        ```python
        result = ClientResult()
        print(len(result.acknowledged_ids))  # 0
        ```
    """

    acknowledged_ids: list[int] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class RunResult:
    """One benchmark run, as one row of the table.

    Attributes:
        label: What kind of run (`load` or `crash`).
        writes: Writes attempted.
        acknowledged: Writes answered with 2xx.
        refused: Writes answered with another status.
        transport_errors: Writes with no reply at all.
        seconds: Wall time from the first write to the last reply.
        p50_ms: Median latency of the acknowledged writes.
        p99_ms: 99th percentile latency of the acknowledged writes.
        server_cpu_ms_per_write: Server CPU time (user + system) during the load,
            divided by the writes it answered; `None` where `/proc` is missing.
        stored: Layer rows of the run's target materials in the SQLite file after the
            server stopped.
        all_acknowledged_stored: Whether every acknowledged record id is in the file.
        after_restart: Layer rows the restarted server lists over the API.
        restart_ok: Whether the restarted server lists exactly the stored rows.
        client_cpu_ms_per_write: The load generators' CPU time per answered write.

    Example:
        ```python
        row = RunResult("load", 10, 10, 0, 0, 0.01, 1.0, 2.0, 0.4, 10, True, 10, True)
        print(row.writes_per_second)  # 1000.0
        ```
    """

    label: str
    writes: int
    acknowledged: int
    refused: int
    transport_errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_write: float | None
    stored: int
    all_acknowledged_stored: bool
    after_restart: int
    restart_ok: bool
    client_cpu_ms_per_write: float | None = None

    @property
    def writes_per_second(self) -> float:
        """Acknowledged writes per second of wall time.

        Example:
            ```python
            row = RunResult("load", 1, 1, 0, 0, 0.5, 1.0, 1.0, None, 1, True, 1, True)
            print(row.writes_per_second)  # 2.0
            ```
        """
        return self.acknowledged / self.seconds if self.seconds > 0 else 0.0

    @property
    def nothing_lost(self) -> bool:
        """Whether every acknowledged write was stored and survived the restart.

        A graceful run must store exactly the acknowledged writes. A crashed run may
        also have stored writes whose reply the kill cut off, at most one per client.

        Example:
            ```python
            row = RunResult("load", 1, 1, 0, 0, 0.5, 1.0, 1.0, None, 1, True, 1, True)
            print(row.nothing_lost)  # True
            ```
        """
        exact = self.stored == self.acknowledged or self.label == "crash"
        return exact and self.all_acknowledged_stored and self.restart_ok


# --- the server -------------------------------------------------------------------------


class SandboxProcess:
    """`python -m atomscale_sandbox` in a child process, on a given database.

    Args:
        db_path: SQLite file to serve from.
        api_key: The one key it accepts.
        http_parser: Its `--http` option.

    Example:
        ```python
        with SandboxProcess(Path("bench.db"), "key") as server:
            print(server.url)
        ```
    """

    def __init__(self, db_path: Path, api_key: str, http_parser: str = "auto") -> None:
        self.db_path = db_path
        self.api_key = api_key
        self.http_parser = http_parser
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SandboxProcess:
        command = [
            sys.executable,
            "-m",
            "atomscale_sandbox",
            "--port",
            "0",
            "--db",
            str(self.db_path),
            # One argument with "=": a key may start with "-", which argparse would
            # otherwise take for an option.
            f"--api-key={self.api_key}",
        ]
        if self.http_parser != "auto":
            command += ["--http", self.http_parser]
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if " listening on " not in line:
            self._process.kill()
            _, err = self._process.communicate(timeout=STOP_TIMEOUT_SECONDS)
            raise RuntimeError(f"the sandbox did not start: {line!r} {err!r}")
        self.url = line.split(" listening on ", 1)[1].split(" ", 1)[0]
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)

    @property
    def pid(self) -> int:
        """The server's process id.

        Example:
            ```python
            with SandboxProcess(Path("bench.db"), "key") as server:
                print(server.pid)
            ```
        """
        assert self._process is not None
        return self._process.pid

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time the server has used so far, from `/proc`.

        Example:
            ```python
            with SandboxProcess(Path("bench.db"), "key") as server:
                print(server.cpu_seconds())
            ```
        """
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # After the command name: fields 14 and 15 of stat(5) are utime and stime.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM) and wait; raise if it did not exit cleanly.

        Example:
            ```python
            with SandboxProcess(Path("bench.db"), "key") as server:
                server.stop()
            ```
        """
        assert self._process is not None
        # SIGTERM, not SIGINT: a shell running this in the background makes its
        # children ignore SIGINT, and the sandbox stops on either the same way.
        self._process.send_signal(signal.SIGTERM)
        _, err = self._process.communicate(timeout=STOP_TIMEOUT_SECONDS)
        if self._process.returncode != 0:
            raise RuntimeError(f"the sandbox exited with {self._process.returncode}: {err}")

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would, and wait.

        Example:
            ```python
            with SandboxProcess(Path("bench.db"), "key") as server:
                server.kill()
            ```
        """
        assert self._process is not None
        self._process.kill()
        self._process.communicate(timeout=STOP_TIMEOUT_SECONDS)


# --- the load generators --------------------------------------------------------------


def _layer_body(sample_id: int, index: int) -> bytes:
    layer = {
        "layer_id": index + 1,
        "sample_id": sample_id,
        "composition_string": FORMULAS[index % len(FORMULAS)],
        "orientation": "001",
    }
    return json.dumps(layer, separators=(",", ":")).encode()


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 reply with a Content-Length body, as the sandbox sends them."""
    status_line = await reader.readuntil(b"\r\n")
    length = 0
    while True:
        header = await reader.readuntil(b"\r\n")
        if header == b"\r\n":
            break
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return int(status_line.split(b" ", 2)[1]), body


async def _raw_connection(
    url: str,
    api_key: str,
    sample_id: int,
    writes: int,
    result: ClientResult,
    progress: Synchronized[int],
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {LAYERS} HTTP/1.1\r\nHost: {parts.netloc}\r\nX-API-KEY: {api_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        result.transport_errors += writes
        return
    try:
        for index in range(writes):
            body = _layer_body(sample_id, index)
            request = b"%s%d\r\n\r\n%s" % (head, len(body), body)
            sent = time.perf_counter_ns()
            try:
                writer.write(request)
                status, reply = await asyncio.wait_for(_read_reply(reader), REQUEST_TIMEOUT_SECONDS)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                # A connection that failed once is not reused: the rest of its writes
                # count as unanswered, as they would for a client that gave up.
                result.transport_errors += writes - index
                return
            _count_reply(result, status, reply, time.perf_counter_ns() - sent, progress)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _httpx_connection(
    url: str,
    api_key: str,
    sample_id: int,
    writes: int,
    result: ClientResult,
    progress: Synchronized[int],
) -> None:
    headers = {"X-API-KEY": api_key, "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_SECONDS
    ) as client:
        for index in range(writes):
            body = _layer_body(sample_id, index)
            sent = time.perf_counter_ns()
            try:
                reply = await client.post(LAYERS, content=body)
            except httpx.TransportError:
                result.transport_errors += writes - index
                return
            elapsed = time.perf_counter_ns() - sent
            _count_reply(result, reply.status_code, reply.content, elapsed, progress)


def _count_reply(
    result: ClientResult,
    status: int,
    reply: bytes,
    elapsed_ns: int,
    progress: Synchronized[int],
) -> None:
    if 200 <= status < 300:
        result.acknowledged_ids.append(int(json.loads(reply)["id"]))
        result.latencies_ns.append(elapsed_ns)
        with progress.get_lock():
            progress.value += 1
    else:
        result.refused[status] = result.refused.get(status, 0) + 1


async def _generate_load(
    url: str,
    api_key: str,
    work: Sequence[tuple[int, int]],
    kind: str,
    progress: Synchronized[int],
    barrier: Barrier,
) -> ClientResult:
    result = ClientResult()
    connection = _raw_connection if kind == "raw" else _httpx_connection
    # Every process starts its writes together, once all have started up.
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait, START_TIMEOUT_SECONDS)
    result.started_ns = time.monotonic_ns()
    cpu_before = time.process_time()
    await asyncio.wait_for(
        asyncio.gather(
            *(
                connection(url, api_key, sample_id, writes, result, progress)
                for sample_id, writes in work
            )
        ),
        LOAD_TIMEOUT_SECONDS,
    )
    result.finished_ns = time.monotonic_ns()
    result.cpu_seconds = time.process_time() - cpu_before
    return result


def _client_process(
    url: str,
    api_key: str,
    work: Sequence[tuple[int, int]],
    kind: str,
    progress: Synchronized[int],
    barrier: Barrier,
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    outcome = asyncio.run(_generate_load(url, api_key, work, kind, progress, barrier))
    # A plain dict: a class of a script's __main__ does not unpickle in the parent.
    results.put(dataclasses.asdict(outcome))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


# --- one run ---------------------------------------------------------------------------


def _create_materials(url: str, api_key: str, count: int) -> list[int]:
    with httpx.Client(base_url=url, headers={"X-API-KEY": api_key}, timeout=30) as client:
        sample_ids = []
        for index in range(count):
            sample = {"sample_name": f"load {index}", "substrate": "SrTiO3"}
            reply = client.post(MATERIALS, json={"sample": sample})
            reply.raise_for_status()
            sample_ids.append(int(reply.json()["sample_id"]))
    return sample_ids


def _stored_ids(db_path: Path, sample_ids: Sequence[int]) -> set[int]:
    marks = ",".join("?" * len(sample_ids))
    query = f"SELECT id FROM layers WHERE sample_id IN ({marks})"  # noqa: S608
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return {int(row[0]) for row in db.execute(query, tuple(sample_ids))}


def _listed_ids(url: str, api_key: str, sample_ids: Sequence[int]) -> set[int]:
    reply = httpx.get(f"{url}{MATERIALS}", headers={"X-API-KEY": api_key}, timeout=60)
    reply.raise_for_status()
    wanted = set(sample_ids)
    return {int(row["id"]) for row in reply.json() if row["sample_id"] in wanted}


def _percentile_ms(sorted_ns: Sequence[int], fraction: float) -> float:
    if not sorted_ns:
        return float("nan")
    index = min(len(sorted_ns) - 1, round(fraction * (len(sorted_ns) - 1)))
    return sorted_ns[index] / 1e6


def run_once(
    *,
    writes: int,
    clients: int,
    processes: int,
    kind: str,
    crash: bool,
    workdir: Path,
    http_parser: str = "auto",
) -> RunResult:
    """One run: load a fresh server, stop or kill it, and check the writes after a restart.

    Args:
        writes: Layer POSTs to send in all.
        clients: Concurrent connections, spread over the processes.
        processes: Load-generator processes.
        kind: `raw` or `httpx`.
        crash: Kill the server half-way through the load instead of letting it finish.
        workdir: Directory for the database.
        http_parser: The server's HTTP parser (`auto`, `h11`, `httptools`).

    Returns:
        The run's row of the table.

    Example:
        ```python
        row = run_once(
            writes=200, clients=4, processes=1, kind="raw", crash=False, workdir=Path(".")
        )
        ```
    """
    db_path = workdir / f"load-{secrets.token_hex(4)}.db"
    api_key = secrets.token_urlsafe(24)
    context = multiprocessing.get_context("spawn")
    progress: Synchronized[int] = context.Value("q", 0)
    barrier = context.Barrier(processes + 1)
    results: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    per_client = _split(writes, clients)
    with SandboxProcess(db_path, api_key, http_parser) as server:
        sample_ids = _create_materials(server.url, api_key, clients)
        work = list(zip(sample_ids, per_client, strict=True))
        workers = [
            context.Process(
                target=_client_process,
                args=(
                    server.url,
                    api_key,
                    work[share::processes],
                    kind,
                    progress,
                    barrier,
                    results,
                ),
                daemon=True,
            )
            for share in range(processes)
        ]
        for worker in workers:
            worker.start()
        barrier.wait(START_TIMEOUT_SECONDS)
        cpu_before = server.cpu_seconds()
        if crash:
            deadline = time.monotonic() + LOAD_TIMEOUT_SECONDS
            while progress.value < writes // 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            server.kill()
        outcomes = [ClientResult(**results.get(timeout=LOAD_TIMEOUT_SECONDS + 30)) for _ in workers]
        cpu_after = None if crash else server.cpu_seconds()
        for worker in workers:
            worker.join(timeout=STOP_TIMEOUT_SECONDS)
        if not crash:
            server.stop()
    acknowledged = [record for outcome in outcomes for record in outcome.acknowledged_ids]
    latencies = sorted(ns for outcome in outcomes for ns in outcome.latencies_ns)
    refused: dict[int, int] = {}
    for outcome in outcomes:
        for status, count in outcome.refused.items():
            refused[status] = refused.get(status, 0) + count
    stored = _stored_ids(db_path, sample_ids)
    with SandboxProcess(db_path, api_key, http_parser) as restarted:
        listed = _listed_ids(restarted.url, api_key, sample_ids)
        restarted.stop()
    answered = len(acknowledged) + sum(refused.values())
    cpu_per_write = None
    if cpu_before is not None and cpu_after is not None and answered:
        cpu_per_write = (cpu_after - cpu_before) * 1000 / answered
    client_cpu = sum(outcome.cpu_seconds for outcome in outcomes)
    return RunResult(
        label="crash" if crash else "load",
        writes=writes,
        acknowledged=len(acknowledged),
        refused=sum(refused.values()),
        transport_errors=sum(outcome.transport_errors for outcome in outcomes),
        seconds=(
            max(outcome.finished_ns for outcome in outcomes)
            - min(outcome.started_ns for outcome in outcomes)
        )
        / 1e9,
        p50_ms=_percentile_ms(latencies, 0.50),
        p99_ms=_percentile_ms(latencies, 0.99),
        server_cpu_ms_per_write=cpu_per_write,
        stored=len(stored),
        all_acknowledged_stored=set(acknowledged) <= stored,
        after_restart=len(listed),
        restart_ok=listed == stored,
        client_cpu_ms_per_write=client_cpu * 1000 / answered if answered else None,
    )


# --- the report ------------------------------------------------------------------------


def _format_row(name: str, row: RunResult) -> str:
    cpu = "-" if row.server_cpu_ms_per_write is None else f"{row.server_cpu_ms_per_write:.3f}"
    client = "-" if row.client_cpu_ms_per_write is None else f"{row.client_cpu_ms_per_write:.3f}"
    failed = row.refused + row.transport_errors
    return (
        f"| {name:<6} | {row.writes:>6} | {row.acknowledged:>6} | {failed:>6} "
        f"| {row.writes_per_second:>9,.0f} | {row.p50_ms:>6.2f} | {row.p99_ms:>6.2f} "
        f"| {cpu:>12} | {client:>12} | {row.stored:>6} | {row.after_restart:>7} "
        f"| {'yes' if row.nothing_lost else 'NO':>12} |"
    )


def _median_row(rows: Sequence[RunResult]) -> RunResult:
    cpus = [row.server_cpu_ms_per_write for row in rows if row.server_cpu_ms_per_write is not None]
    clients = [
        row.client_cpu_ms_per_write for row in rows if row.client_cpu_ms_per_write is not None
    ]
    # Seconds chosen so that the row's writes/s is the median of the runs' writes/s.
    rate = statistics.median(row.writes_per_second for row in rows)
    acknowledged = int(statistics.median(row.acknowledged for row in rows))
    return RunResult(
        label="median",
        writes=rows[0].writes,
        acknowledged=acknowledged,
        refused=int(statistics.median(row.refused for row in rows)),
        transport_errors=int(statistics.median(row.transport_errors for row in rows)),
        seconds=acknowledged / rate if rate else 0.0,
        p50_ms=statistics.median(row.p50_ms for row in rows),
        p99_ms=statistics.median(row.p99_ms for row in rows),
        server_cpu_ms_per_write=statistics.median(cpus) if cpus else None,
        stored=int(statistics.median(row.stored for row in rows)),
        all_acknowledged_stored=all(row.all_acknowledged_stored for row in rows),
        after_restart=int(statistics.median(row.after_restart for row in rows)),
        restart_ok=all(row.nothing_lost for row in rows),
        client_cpu_ms_per_write=statistics.median(clients) if clients else None,
    )


def report(rows: Sequence[RunResult], crashed: Sequence[RunResult], setup: str) -> str:
    """The results as a Markdown table, with the setup and the durability guarantee.

    Args:
        rows: The graceful runs.
        crashed: The runs whose server was killed half-way.
        setup: How server and clients were run.

    Returns:
        The text to print.

    Example:
        ```python
        row = RunResult("load", 1, 1, 0, 0, 0.5, 1.0, 1.0, None, 1, True, 1, True)
        print(report([row], [], "test"))
        ```
    """
    header = (
        "| run    | writes |  acked | failed |  writes/s | p50 ms | p99 ms "
        "| srv CPU ms/w | cli CPU ms/w | stored | restart | nothing lost |"
    )
    lines = [
        f"Setup: {setup}",
        f"Durability: {DURABILITY}.",
        "",
        header,
        "|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|",
    ]
    lines += [_format_row(str(index), row) for index, row in enumerate(rows, 1)]
    if len(rows) > 1:
        lines.append(_format_row("median", _median_row(rows)))
    lines += [_format_row(f"crash{index}", row) for index, row in enumerate(crashed, 1)]
    lines += [
        "",
        "acked: 2xx replies; failed: other replies plus writes with no reply; stored: rows "
        "in the SQLite file after the server stopped; restart: rows the restarted server "
        "lists; srv/cli CPU: CPU time (user+system) of the server / the load generators "
        "per answered write during the load.",
    ]
    if crashed:
        lines.append(
            "crash runs: the server is SIGKILLed after half the writes; nothing lost means "
            "every acknowledged write was stored and listed after the restart (writes "
            "committed whose reply the kill cut off may be stored too)."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table.

    Args:
        argv: Command-line arguments without the program name.

    Returns:
        0 if every run kept every acknowledged write, else 1.

    Example:
        ```python
        main(["--writes", "1000", "--clients", "8", "--repeat", "1"])
        ```
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--writes", type=int, default=10_000, help="layer POSTs per run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    parser.add_argument("--processes", type=int, default=1, help="load-generator processes")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="generator")
    parser.add_argument("--repeat", type=int, default=3, help="runs to take the median of")
    parser.add_argument("--crash", action="store_true", help="add a run killed half-way")
    parser.add_argument(
        "--http", choices=get_args(HttpParser), default="auto", help="the server's HTTP parser"
    )
    options = parser.parse_args(argv)
    if min(options.writes, options.clients, options.processes, options.repeat) < 1:
        parser.error("--writes, --clients, --processes and --repeat must be positive")
    if options.processes > options.clients:
        parser.error("--processes must not exceed --clients")
    installed = available_http_parsers()  # h11 first, the faster one last
    http_parser = installed[-1] if options.http == "auto" else options.http
    if http_parser not in installed:
        parser.error(f"--http {http_parser}: not installed here (installed: {installed})")
    setup = (
        f"server: `python -m atomscale_sandbox` (uvicorn, 1 process, HTTP/1.1 "
        f"parser {http_parser}); load: "
        f"{options.processes} process(es), {options.clients} keep-alive connections "
        f"({options.client} client), each writing its own target material's layers one "
        f"at a time; {os.cpu_count()} CPUs shared by both"
    )
    rows: list[RunResult] = []
    crashed: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="sandbox-load-") as workdir:
        arguments: dict[str, Any] = {
            "writes": options.writes,
            "clients": options.clients,
            "processes": options.processes,
            "kind": options.client,
            "workdir": Path(workdir),
            "http_parser": options.http,
        }
        for _ in range(options.repeat):
            rows.append(run_once(crash=False, **arguments))
            print(_format_row(str(len(rows)), rows[-1]), file=sys.stderr, flush=True)
        if options.crash:
            crashed.append(run_once(crash=True, **arguments))
    print(report(rows, crashed, setup))
    return 0 if all(row.nothing_lost for row in [*rows, *crashed]) else 1


if __name__ == "__main__":
    sys.exit(main())
