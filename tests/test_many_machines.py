"""Many machines: two machines share one Redis (the locks) and one result folder (the cache).

A "machine" here is a process with a PREFECT_HOME of its own and a Prefect API of its
own: each of the two machines gets a `prefect server start` on its own port, started
once for the module (a temporary server per flow process would cost every run 10-20 s,
and two started at the same moment on one host have been seen to fail). The machines
share only what real machines would share: the Atomscale API (the session's sandbox),
the lock server (`PREFECT_ATOMSCALE_LOCK_URL`, a real redis-server) and the result
storage (`PREFECT_LOCAL_STORAGE_PATH`, one folder). Prefect keeps persisted results and
the cache records next to them in that folder (`results.local_storage_path`, read from
`PREFECT_RESULTS_LOCAL_STORAGE_PATH` or `PREFECT_LOCAL_STORAGE_PATH`, else
`$PREFECT_HOME/storage`), so a cache hit on one machine of a task run on the other
shows the folder is shared. Credentials come from the environment (`AS_API_KEY`,
`AS_API_ENDPOINT`), as on a worker that has no saved block.

Each machine runs `scripts/run_stack.py` in a process of its own.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import KEY_A
from helpers import (
    LAYERS,
    TARGET_MATERIALS,
    PrefectServer,
    RedisServer,
    Started,
    clean_environment,
    finish,
    materials_named,
    only_material,
    posts,
    read_report,
    requests_to,
    run_stack_command,
    start_process,
)

from atomscale_sandbox import FaultKind, SandboxHandle

pytestmark = pytest.mark.processes  # every test starts servers or scripts

STACK = 40


@dataclass
class Machine:
    """One machine: its own Prefect home and server; the storage folder is shared."""

    name: str
    server: PrefectServer
    storage: Path

    @property
    def home(self) -> Path:
        return self.server.home

    def env(self, sandbox: SandboxHandle, lock_url: str, **extra: str) -> dict[str, str]:
        """The environment of a flow process on this machine."""
        env = clean_environment()
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_ATOMSCALE_LOCK_DIR=str(self.home / "atomscale-locks"),
            PREFECT_API_URL=self.server.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOCAL_STORAGE_PATH=str(self.storage),
            PREFECT_ATOMSCALE_LOCK_URL=lock_url,
            AS_API_KEY=KEY_A,
            AS_API_ENDPOINT=sandbox.url,
        )
        env.update(extra)
        return env

    def start(self, sandbox: SandboxHandle, lock_url: str, *options: str, **env: str) -> Started:
        """Start `run_stack.py` with these options on this machine."""
        return start_process(run_stack_command(*options), self.env(sandbox, lock_url, **env))


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Machine, Machine]]:
    """Machines A and B, each with its own Prefect server, sharing one storage folder."""
    root = tmp_path_factory.mktemp("machines")
    storage = root / "shared-storage"
    storage.mkdir()
    servers = [PrefectServer(root / f"home-{name}").start() for name in ("a", "b")]
    try:
        for server in servers:
            server.wait()
        yield Machine("A", servers[0], storage), Machine("B", servers[1], storage)
    finally:
        for server in servers:
            server.stop()


def _positions(sandbox: SandboxHandle, sample_id: int) -> Counter[int]:
    return Counter(row["layer_id"] for row in sandbox.layer_rows(sample_id=sample_id))


def _stored_ids(sandbox: SandboxHandle, sample_id: int) -> dict[int, int]:
    return {row["layer_id"]: row["id"] for row in sandbox.layer_rows(sample_id=sample_id)}


def _last_run(report: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task runs of the last flow run in a report (a failed run is run again)."""
    last = max(line["attempt"] for line in report)
    return [line for line in report if line["attempt"] == last]


def _wait_for_files(paths: list[Path], runs: list[Started], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        for run in runs:
            assert run.process.poll() is None, finish(run, timeout=1)
        assert time.monotonic() < deadline, f"not ready in {timeout} s: {paths}"
        time.sleep(0.01)


@pytest.mark.timeout(300)
def test_one_stack_started_on_two_machines_at_once_under_faults_is_written_once(
    machines: tuple[Machine, Machine],
    redis_server: RedisServer,
    sandbox: SandboxHandle,
    unique: str,
    tmp_path: Path,
) -> None:
    """Both machines build the same 40-layer stack from the same instant, 20 % of writes faulted.

    Every fault kind, the delayed commits included. The target material is sent with
    its first layer, so that it is listed (an empty one lost in reply is created again,
    on one machine as on two: see docs/guides/exactly-once.md). The first write, the
    target material of whichever machine is first, is held back 1.5 s, so the other
    machine's run of the same request surely comes while it is in flight. Each run is
    re-run up to 4 times by its driver, as a user re-runs a flow that ran out of retries.
    """
    sandbox.faults.set(
        rate=0.2,
        kinds=[kind.value for kind in FaultKind],
        seed=2027,
        slow_seconds=1.5,
        late_commit_seconds=0.5,
        retry_after_seconds=1,
    )
    sandbox.faults.queue(["slow_before_commit"])
    barrier = tmp_path / "go"
    runs, ready, reports = [], [], []
    for machine in machines:
        ready.append(tmp_path / f"ready-{machine.name}")
        reports.append(tmp_path / f"report-{machine.name}.jsonl")
        runs.append(
            machine.start(
                sandbox,
                redis_server.url,
                "--sample-name",
                unique,
                "--layers",
                str(STACK),
                "--with-layers",
                "1",
                "--attempts",
                "4",
                "--ready",
                str(ready[-1]),
                "--barrier",
                str(barrier),
                "--report",
                str(reports[-1]),
            )
        )
    _wait_for_files(ready, runs, timeout=120)
    barrier.write_text("go\n")
    done = [finish(run, timeout=240) for run in runs]
    injected = dict(sandbox.stats.faults)
    sandbox.faults.clear()
    sandbox.faults.set(rate=0.0)

    assert [run.returncode for run in done] == [0, 0], [run.stdout + run.stderr for run in done]
    assert sum(injected.values()) >= 10, injected  # the storm really happened
    sample_id = only_material(sandbox, unique)
    assert _positions(sandbox, sample_id) == Counter(range(1, STACK + 1))
    stored = _stored_ids(sandbox, sample_id)
    for report in reports:  # each machine returned the records the service holds
        layers = [line for line in _last_run(read_report(report)) if line["layer_id"]]
        assert {line["layer_id"]: line["id"] for line in layers} == stored


@pytest.mark.timeout(300)
def test_a_stack_killed_halfway_on_one_machine_is_finished_by_the_other_from_the_shared_cache(
    machines: tuple[Machine, Machine],
    redis_server: RedisServer,
    sandbox: SandboxHandle,
    unique: str,
    tmp_path: Path,
) -> None:
    """Machine A is SIGKILLed halfway; machine B's re-run writes only what is missing.

    What A finished, B takes from the cache records A left in the shared folder
    (state `Cached`: the task body never ran, so no request); a layer that landed
    but was not yet recorded is found by B's listing. The lease is 5 s, so if A died
    holding the lock of the target material, B waits at most that long.
    """
    machine_a, machine_b = machines
    lease = {"PREFECT_ATOMSCALE_LOCK_LEASE_SECONDS": "5"}
    options = ["--sample-name", unique, "--layers", str(STACK)]
    report_a, report_b = tmp_path / "report-a.jsonl", tmp_path / "report-b.jsonl"
    run_a = machine_a.start(
        sandbox,
        redis_server.url,
        *options,
        "--pace",
        "0.1",
        "--report",
        str(report_a),
        **lease,
    )
    deadline = time.monotonic() + 120
    while not materials_named(sandbox, unique) or (
        sum(_positions(sandbox, materials_named(sandbox, unique)[0]).values()) < STACK // 2
    ):
        assert run_a.process.poll() is None, finish(run_a, timeout=1)
        assert time.monotonic() < deadline, "machine A never got halfway"
        time.sleep(0.02)
    run_a.process.send_signal(signal.SIGKILL)
    killed = finish(run_a, timeout=30)
    assert killed.returncode == -signal.SIGKILL
    time.sleep(0.5)  # a write in flight when A died lands now, or never
    sample_id = only_material(sandbox, unique)
    at_kill = _positions(sandbox, sample_id)
    assert STACK // 2 <= sum(at_kill.values()) < STACK
    assert set(at_kill.values()) == {1}
    finished_by_a = {
        line["layer_id"]
        for line in read_report(report_a)
        if line["task"] == "create_layer" and line["state"] == "Completed"
    }
    assert len(finished_by_a) >= STACK // 2 - 1
    assert finished_by_a <= set(at_kill)

    sandbox.reset_stats()
    run_b = finish(
        machine_b.start(sandbox, redis_server.url, *options, "--report", str(report_b), **lease),
        timeout=180,
    )
    assert run_b.returncode == 0, run_b.stdout + run_b.stderr

    assert materials_named(sandbox, unique) == [sample_id]
    assert _positions(sandbox, sample_id) == Counter(range(1, STACK + 1))
    states = {line["layer_id"]: line["state"] for line in read_report(report_b)}
    assert states.pop(None) == "Cached"  # the target material, from A's record
    cached = {position for position, state in states.items() if state == "Cached"}
    # What A finished; at most one more if A died between its cache record and its report.
    assert finished_by_a <= cached <= set(at_kill)
    assert len(cached - finished_by_a) <= 1
    # B wrote each missing layer once and nothing else.
    assert requests_to(sandbox, "POST", LAYERS) == STACK - len(at_kill)
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 0
    stored = _stored_ids(sandbox, sample_id)
    layers = [line for line in read_report(report_b) if line["layer_id"]]
    assert {line["layer_id"]: line["id"] for line in layers} == stored
    # The cache records are in the shared folder, not in either machine's home.
    for machine in machines:
        assert not (machine.home / "storage").exists()


@pytest.mark.timeout(180)
@pytest.mark.redis
def test_a_lock_server_that_is_down_fails_the_run_clearly_and_nothing_is_written(
    machines: tuple[Machine, Machine], sandbox: SandboxHandle, unique: str
) -> None:
    """The error names the lock server's URL with the password hidden; no request writes."""
    password = f"pw-{uuid.uuid4().hex}"
    gone = RedisServer(password=password).start()
    assert gone.client().ping()
    gone.stop()

    run = finish(
        machines[0].start(sandbox, gone.url, "--sample-name", unique, "--layers", "3"),
        timeout=120,
    )

    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "AtomscaleConfigurationError" in output, output
    assert f"Cannot reach the lock server redis://:***@127.0.0.1:{gone.port}/0" in output, output
    assert password not in output
    assert posts(sandbox) == 0
    assert not materials_named(sandbox, unique)


@pytest.mark.timeout(180)
def test_a_write_that_lands_after_its_client_gave_up_is_not_doubled_by_the_other_machine(
    machines: tuple[Machine, Machine],
    redis_server: RedisServer,
    sandbox: SandboxHandle,
    unique: str,
    tmp_path: Path,
) -> None:
    """Machine A's layer write lands 2.5 s after A's client saw its connection drop.

    That is within `SETTLE_SECONDS` (3 s), the window docs/guides/exactly-once.md
    promises: "a write that lands within SETTLE_SECONDS (3 s) is adopted". Machine B
    runs the same request and waits for the lock while A's write is held; B must not
    look before A's write has had that time to land.
    """
    machine_a, machine_b = machines
    sandbox.faults.set(paths={LAYERS}, slow_seconds=2.0, late_commit_seconds=2.5)
    sandbox.faults.queue(["commit_late"])
    options = ["--sample-name", unique, "--layers", "1"]
    ready, barrier, started = tmp_path / "ready", tmp_path / "go", tmp_path / "started"
    run_a = machine_a.start(sandbox, redis_server.url, *options)
    run_b = machine_b.start(
        sandbox,
        redis_server.url,
        *options,
        "--ready",
        str(ready),
        "--barrier",
        str(barrier),
        "--started",
        str(started),
    )
    deadline = time.monotonic() + 120
    while sandbox.stats.faults.get("commit_late", 0) == 0:  # A's write is held now
        assert run_a.process.poll() is None, finish(run_a, timeout=1)
        assert time.monotonic() < deadline, "machine A never wrote its layer"
        time.sleep(0.01)
    _wait_for_files([ready], [run_b], timeout=60)
    barrier.write_text("go\n")
    _wait_for_files([started], [run_b], timeout=60)
    sample_id = only_material(sandbox, unique)
    assert not sandbox.layer_rows(sample_id=sample_id), "B started after A's write landed"
    done = [finish(run, timeout=120) for run in (run_a, run_b)]
    deadline = time.monotonic() + 30
    while sandbox.stats.unanswered == 0:  # counted once the late write is done
        assert time.monotonic() < deadline, "the late write never finished"
        time.sleep(0.05)

    assert [run.returncode for run in done] == [0, 0], [run.stdout + run.stderr for run in done]
    assert sandbox.stats.faults == {"commit_late": 1}
    assert _positions(sandbox, sample_id) == Counter({1: 1})
