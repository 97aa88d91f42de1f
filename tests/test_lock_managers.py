"""The locks, each shown to work rather than assumed: a second process waits, a dead holder frees.

Two kinds of test:

- each lock on its own (`CacheLockManager` and `KeyLocks`, on this machine's lock files
  and on Redis): a holder process takes a key, this process cannot take it, the holder
  is SIGKILLed, and the key is free again: at once with lock files (the OS drops them
  with the process), within the lease with Redis;
- two runs of one stack forced to overlap (on the session's Prefect server), with
  this machine's lock files and with Redis (a PREFECT_HOME and a lock directory each,
  as two machines have): run
  A's write is held back by the sandbox (`slow_before_commit`), and run B starts while
  A is provably inside it (A's write has not landed when B's flow begins). Without the
  lock, B would look, find nothing and write a second record. Two runs merely started
  together prove nothing: one usually finishes before the other looks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import prefect.settings
import pytest
from conftest import KEY_A, PREFECT_HOME
from helpers import (
    LAYERS,
    ROOT,
    TARGET_MATERIALS,
    RedisServer,
    Started,
    finish,
    materials_named,
    only_material,
    read_report,
    requests_to,
    run_stack_command,
    start_process,
)

from atomscale_sandbox import SandboxHandle
from prefect_atomscale import AtomscaleConflictError, AtomscaleCredentials
from prefect_atomscale._locks import (
    LEASE_ENV,
    LOCK_DIR_ENV,
    LOCK_URL_ENV,
    KeyLocks,
    domain,
    slot_of,
)
from prefect_atomscale._locks._prefect import CacheLockManager

FAMILY = "lock-manager-tests"
LEASE = 2.0

_HOLDER = """
import sys, time
from prefect_atomscale._locks import KeyLocks, domain
from prefect_atomscale._locks._prefect import CacheLockManager

kind, family, key = sys.argv[1:4]
if kind == "CacheLockManager":
    CacheLockManager().acquire_lock(key, "holder")
else:
    KeyLocks(family, lambda: domain().slot_stores(family)).acquire(key)
print("held", flush=True)
time.sleep(600)
"""


def _family(name: str) -> KeyLocks:
    return KeyLocks(name, lambda: domain().slot_stores(name))


class _Waiter:
    """This process's side of one lock: take it within a time, or fail; give it back."""

    def __init__(self, kind: str, key: str) -> None:
        self.key = key
        self.take: Callable[[float], object]
        self.give_back: Callable[[], None]
        if kind == "KeyLocks":
            locks = _family(FAMILY)
            self.take = lambda timeout: locks.acquire(key, timeout=timeout)
            self.give_back = lambda: locks.release(key)
            return
        manager = CacheLockManager()
        self.take = lambda timeout: manager.acquire_lock(key, "waiter", acquire_timeout=timeout)
        self.give_back = lambda: manager.release_lock(key, "waiter")


def _redis_name(kind: str, key: str) -> str:
    """The Redis key that holds the lock: the slot of the key in its family."""
    family = "cache" if kind == "CacheLockManager" else FAMILY
    return f"prefect-atomscale:{family}:{slot_of(key):04d}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kind", "backend"),
    [
        ("CacheLockManager", "files"),
        ("KeyLocks", "files"),
        pytest.param("CacheLockManager", "redis", marks=pytest.mark.redis),
        pytest.param("KeyLocks", "redis", marks=pytest.mark.redis),
    ],
)
@pytest.mark.processes
def test_a_second_process_waits_while_the_holder_lives_and_gets_the_lock_once_it_is_killed(
    kind: str,
    backend: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    key = f"lock-test-{uuid.uuid4().hex}"
    holder_env = {**os.environ, "PREFECT_HOME": str(PREFECT_HOME)}
    holder_env.pop(LOCK_URL_ENV, None)
    redis: RedisServer | None = None
    if backend == "redis":
        redis = request.getfixturevalue("redis_server")
        # A machine of its own: this process used local locks moments ago.
        directory = str(tmp_path / "locks")
        holder_env.update({LOCK_URL_ENV: redis.url, LEASE_ENV: f"{LEASE:g}"})
        holder_env[LOCK_DIR_ENV] = directory
        monkeypatch.setenv(LOCK_URL_ENV, redis.url)
        monkeypatch.setenv(LOCK_DIR_ENV, directory)
    else:
        monkeypatch.delenv(LOCK_URL_ENV, raising=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, kind, FAMILY, key],
        cwd=ROOT,
        env=holder_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiter = _Waiter(kind, key)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n", holder.communicate(timeout=10)
        with pytest.raises(AtomscaleConflictError):
            waiter.take(0.3)  # held by a live process: this one waits, then gives up
        assert holder.poll() is None
        if redis is not None:  # still inside the holder's lease
            assert redis.client().pttl(_redis_name(kind, key)) > 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=10)

    if redis is None:
        waiter.take(0)  # the OS dropped the file lock with the process: free at once
    else:
        # Redis keeps a dead holder's lock until its lease ends, and not beyond.
        assert redis.client().exists(_redis_name(kind, key))
        killed = time.monotonic()
        waiter.take(LEASE + 5)
        assert time.monotonic() - killed <= LEASE + 5
    waiter.give_back()


@pytest.mark.timeout(30)
def test_a_cache_lock_held_past_its_lease_is_given_back_without_an_error(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache transaction that outlives the lease (a long `with transaction():`) still ends.

    Once the lease has run out the lock is free, and another run may hold it now: there
    is nothing left to release: the cache lock only makes runs of one request take
    turns, and every write was fenced by its own section. Prefect
    releases the lock as the transaction commits, after writing its records: an error
    here shows as "An error was encountered while committing transaction" with a
    traceback, in a run whose writes all landed.
    """
    monkeypatch.setenv(LOCK_URL_ENV, redis_server.url)
    monkeypatch.setenv(LEASE_ENV, "1")
    key = f"lock-test-{uuid.uuid4().hex}"
    manager = CacheLockManager()
    assert manager.acquire_lock(key, "holder")
    deadline = time.monotonic() + 10
    while redis_server.client().exists(_redis_name("CacheLockManager", key)):
        assert time.monotonic() < deadline, "the lease never ran out"
        time.sleep(0.05)

    manager.release_lock(key, "holder")

    assert manager.acquire_lock(key, "next", acquire_timeout=0)
    manager.release_lock(key, "next")


@pytest.mark.timeout(30)
def test_overlapping_holders_keep_a_busy_slot_leased_past_its_lease(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers of one target material that keep overlapping keep its slot: no gap, no expiry.

    The first reader takes the slot; later ones join it, and each one that leaves checks
    and extends the lease (as every write's fencing does). Were the lease only set by a
    first reader, a busy material held longer than the lease would lose its slot while
    this process still wrote, and another machine could take it.
    """
    monkeypatch.setenv(LOCK_URL_ENV, redis_server.url)
    monkeypatch.setenv(LEASE_ENV, "2")
    family = f"keep-alive-{uuid.uuid4().hex[:8]}"
    locks = _family(family)
    key = "material/1"
    name = f"prefect-atomscale:{family}:{slot_of(key):04d}"
    locks.acquire(key, shared=True, holder="first")
    started = time.monotonic()
    while time.monotonic() - started < 4.0:  # twice the lease, always one reader or more
        locks.acquire(key, shared=True, holder=f"joins-{time.monotonic()}")
        locks.release(key, shared=True)
        assert redis_server.client().exists(name), "the slot's lease ran out while held"
        time.sleep(0.1)
    locks.release(key, shared=True)
    assert not redis_server.client().exists(name)


# --------------------------------------------------------------- two runs forced to overlap

HELD_SECONDS = 5.0


def _run_env(
    sandbox: SandboxHandle, home: Path, storage: Path, lock_url: str | None
) -> dict[str, str]:
    """A run's environment: the session's Prefect server, `home` (and its own lock
    directory, as on a machine of its own), one result folder."""
    env = {
        **os.environ,
        "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value()),
        "PREFECT_HOME": str(home),
        LOCK_DIR_ENV: str(home / "atomscale-locks"),
        "PREFECT_LOCAL_STORAGE_PATH": str(storage),
        "AS_API_KEY": KEY_A,
        "AS_API_ENDPOINT": sandbox.url,
    }
    env.pop(LOCK_URL_ENV, None)
    if lock_url:
        env[LOCK_URL_ENV] = lock_url
    return env


def _wait_until(done: Callable[[], bool], runs: list[Started], what: str) -> None:
    deadline = time.monotonic() + 120
    while not done():
        for run in runs:
            assert run.process.poll() is None, finish(run, timeout=1)
        assert time.monotonic() < deadline, f"{what} did not happen in 120 s"
        time.sleep(0.01)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["files", "redis"])
@pytest.mark.parametrize(
    "held",
    [
        pytest.param(TARGET_MATERIALS, id="target-material-cache-lock"),
        pytest.param(LAYERS, id="layer-key-lock"),
    ],
)
@pytest.mark.processes
def test_a_run_started_while_another_is_inside_its_write_waits_and_writes_nothing(
    held: str,
    backend: str,
    sandbox: SandboxHandle,
    unique: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Run A's first write to `held` is held back 5 s; run B starts meanwhile.

    The target material's write is ordered by the cache lock (`CacheLockManager`): B
    waits, then finds A's cache record. A layer's write is ordered by the target
    material's lock (`KeyLocks`): B waits, then lists and adopts A's layer.

    With lock files both runs share the session's PREFECT_HOME and lock directory, as
    the processes of one machine do. With Redis each run has a PREFECT_HOME and a lock
    directory of its own, so no lock file can order them: only the lock server can.
    Both keep their results in one folder.
    """
    storage = tmp_path / "storage"
    if backend == "redis":
        lock_url = request.getfixturevalue("redis_server").url
        homes = [tmp_path / "home-a", tmp_path / "home-b"]
    else:
        lock_url, homes = None, [PREFECT_HOME, PREFECT_HOME]
    env_a, env_b = (_run_env(sandbox, home, storage, lock_url) for home in homes)
    sandbox.faults.set(paths={held}, slow_seconds=HELD_SECONDS)
    sandbox.faults.queue(["slow_before_commit"])
    options = ["--sample-name", unique, "--layers", "1"]
    ready, barrier, started = tmp_path / "ready-b", tmp_path / "go", tmp_path / "started-b"
    report_a, report_b = tmp_path / "report-a.jsonl", tmp_path / "report-b.jsonl"
    run_a = start_process(run_stack_command(*options, "--report", str(report_a)), env_a)
    run_b = start_process(
        run_stack_command(
            *options,
            "--report",
            str(report_b),
            "--ready",
            str(ready),
            "--barrier",
            str(barrier),
            "--started",
            str(started),
        ),
        env_b,
    )
    runs = [run_a, run_b]
    _wait_until(lambda: sandbox.stats.faults.get("slow_before_commit", 0) == 1, runs, "A's write")
    _wait_until(ready.exists, runs, "B's start-up")
    barrier.write_text("go\n")
    _wait_until(started.exists, runs, "B's flow")
    # A is still inside its write: nothing of it has landed.
    if held == TARGET_MATERIALS:
        assert not materials_named(sandbox, unique), "B started after A's write landed"
    else:
        sample_id = only_material(sandbox, unique)
        assert not sandbox.layer_rows(sample_id=sample_id), "B started after A's write landed"
    done = [finish(run, timeout=90) for run in runs]

    assert [run.returncode for run in done] == [0, 0], [run.stdout + run.stderr for run in done]
    assert sandbox.stats.faults == {"slow_before_commit": 1}
    sample_id = only_material(sandbox, unique)
    assert Counter(row["layer_id"] for row in sandbox.layer_rows(sample_id=sample_id)) == {1: 1}
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 1
    assert requests_to(sandbox, "POST", LAYERS) == 1
    a, b = read_report(report_a), read_report(report_b)
    assert [line["sample_id"] for line in b] == [sample_id, sample_id]
    assert [line["id"] for line in b] == [line["id"] for line in a]
    if held == TARGET_MATERIALS:
        assert b[0]["state"] == "Cached"  # B waited for A's cache record, then used it


@pytest.mark.timeout(30)
def test_a_lease_lost_before_a_write_fails_the_write_as_transient_and_writes_nothing(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fencing (protocol step L5): the holder was paused past its lease and another run
    took the slot; right before the write the holder finds out, and sends nothing."""
    from prefect_atomscale import AtomscaleLockLostError
    from prefect_atomscale._protocol import material_key, stack_section

    monkeypatch.setenv(LOCK_URL_ENV, redis_server.url)
    monkeypatch.setenv(LEASE_ENV, "1")
    sample_id = 900_000 + uuid.uuid4().int % 100_000
    name = f"prefect-atomscale:material:{slot_of(material_key(sample_id)):04d}"
    sent: list[str] = []
    with (
        pytest.raises(AtomscaleLockLostError) as caught,
        stack_section(None, sample_id) as held,
    ):
        deadline = time.monotonic() + 10
        while redis_server.client().exists(name):  # the pause: the lease runs out
            assert time.monotonic() < deadline, "the lease never ran out"
            time.sleep(0.05)
        redis_server.client().set(name, "another-run")  # and another run takes it
        held.write(lambda: sent.append("POST"))
    assert caught.value.transient  # retried: the retry lists again before it writes
    assert sent == []
    assert redis_server.client().get(name) == b"another-run"  # the other run's, untouched
    redis_server.client().delete(name)


@pytest.mark.timeout(30)
def test_a_lease_lost_while_a_write_was_in_flight_fails_the_task_when_given_back(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step L7: the write was fenced, but the lease ran out before the lock was given back:
    the section fails as transient instead of ending as success on a stale belief."""
    from prefect_atomscale import AtomscaleLockLostError
    from prefect_atomscale._protocol import material_key, stack_section

    monkeypatch.setenv(LOCK_URL_ENV, redis_server.url)
    monkeypatch.setenv(LEASE_ENV, "1")
    sample_id = 900_000 + uuid.uuid4().int % 100_000
    name = f"prefect-atomscale:material:{slot_of(material_key(sample_id)):04d}"
    with pytest.raises(AtomscaleLockLostError), stack_section(None, sample_id) as held:
        held.write(lambda: None)
        deadline = time.monotonic() + 10
        while redis_server.client().exists(name):
            assert time.monotonic() < deadline, "the lease never ran out"
            time.sleep(0.05)
        held.end()


# --------------------------------------------------------------- round trips to the lock server


class _RoundTrips:
    """Counts the requests this process writes to Redis: one per round trip.

    Counted where redis-py writes to the socket (`send_packed_command`), so a pipeline
    or one script is one, whatever it holds. No MONITOR: other tests' clients of the
    session's server are not counted.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.connection import AbstractConnection

        self.count = 0
        original = AbstractConnection.send_packed_command

        def counted(connection: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            original(connection, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)


MISS_ROUND_TRIPS = 3
"""A `create_layer` that writes (its material's stack known): cache key, take, give-back."""

HIT_ROUND_TRIPS = 1
"""A `create_layer` answered by its cache entry: the cache key's epoch only."""


@pytest.mark.timeout(120)
def test_a_create_layer_on_a_lock_server_makes_three_round_trips_and_a_cache_hit_one(
    redis_server: RedisServer,
    sandbox: SandboxHandle,
    credentials: AtomscaleCredentials,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Figure 24's count, as a test: a round trip more on either path fails it.

    The flow creates its target material (so it knows the stack is empty and writes
    without a listing), then three layers one task after another; run again, every
    layer is a cache hit. Each layer's round trips are counted around its call.
    """
    from prefect import flow

    from prefect_atomscale import create_layer, create_target_material

    monkeypatch.setenv(LOCK_URL_ENV, redis_server.url)
    trips = _RoundTrips(monkeypatch)

    @flow
    def three_layers() -> list[int]:
        sample = create_target_material(credentials, unique, "SrTiO3")
        counts = []
        for position, formula in enumerate(["SrTiO3", "BaTiO3", "SrRuO3"], start=1):
            before = trips.count
            create_layer(
                credentials,
                layer_id=position,
                sample_id=sample.sample_id,
                composition_string=formula,
                orientation="001",
            )
            counts.append(trips.count - before)
        return counts

    written = three_layers()
    cached = three_layers()

    assert written == [MISS_ROUND_TRIPS] * 3
    assert cached == [HIT_ROUND_TRIPS] * 3
    sample_id = only_material(sandbox, unique)
    assert Counter(row["layer_id"] for row in sandbox.layer_rows(sample_id=sample_id)) == {
        1: 1,
        2: 1,
        3: 1,
    }
    # The versions the holder kept reached the server with its give-backs: two bumps a
    # layer (before and after its write), and no holder left its mark.
    client = redis_server.client()
    slot = slot_of(f"material/{sample_id}")
    assert not client.exists(f"prefect-atomscale:material-holder:{slot:04d}")
    assert not client.exists(f"prefect-atomscale:material:{slot:04d}")
