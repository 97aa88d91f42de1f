"""A real Dask cluster, its workers sharing the locks in Redis (`PREFECT_ATOMSCALE_LOCK_URL`).

The test starts `dask scheduler` and two `dask worker` processes with the `dask` command
line, not an in-process `LocalCluster`. Each worker is a "machine" of its own: its own
`PREFECT_HOME` (so its own lock files and cache, were Redis not set) and
`PREFECT_ATOMSCALE_LOCK_URL` pointing at the session's real redis-server. The test
process, which runs the flows and `create_target_material`, points at the same Redis.

What the workers need, found out here: a task sent by `DaskTaskRunner` carries the
flow's Prefect settings (`PREFECT_API_URL`, `PREFECT_HOME`, the result storage path)
with it, and runs under them, whatever the worker's own environment says; the lock URL
is not a Prefect setting, so each worker reads it from its own environment. A flow
run *on* a worker (here `stack_from_file`, submitted to the cluster as a plain
function) uses the worker's own environment, so the workers also get the test's
`PREFECT_API_URL`.

Checked at the sandbox: every layer position holds exactly one record, both flows of a
pair return the same records, and the stack the example flow builds equals the stack
file's. Checked at Redis: the layer writes counted there, two per created layer.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import distributed
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL
from prefect_dask import DaskTaskRunner

from atomscale_sandbox import SandboxHandle
from flows.build_stack import LayerSpec, build_stack
from prefect_atomscale import AtomscaleCredentials
from prefect_atomscale.flows import stack_from_file

from conftest import KEY_A  # isort: skip
from helpers import ROOT, RedisServer  # isort: skip

LOCK_URL = "PREFECT_ATOMSCALE_LOCK_URL"
DASK = str(Path(sys.executable).with_name("dask"))
WORKERS = 2
START_TIMEOUT = 120.0

LAYERS = [
    LayerSpec(composition="SrRuO3", orientation="001"),
    LayerSpec(composition="BaTiO3", orientation="001"),
    LayerSpec(composition="SrTiO3", orientation="001"),
    LayerSpec(composition="BaTiO3", orientation="001"),
    LayerSpec(composition="SrTiO3", orientation="001"),
    LayerSpec(composition="(La0.7Sr0.3)MnO3", orientation="001"),
    LayerSpec(composition="GaN", orientation="0001"),
    LayerSpec(composition="Al0.25Ga0.75N", orientation="(11-20)"),
]


@dataclass
class Cluster:
    """The running cluster: its address, a client of it, and each worker's own home."""

    address: str
    client: distributed.Client
    homes: dict[str, Path]  # worker address -> its PREFECT_HOME
    logs: Path


def _logs(directory: Path) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(directory.glob("*.log"))
    )


@pytest.fixture(scope="module")
def dask_cluster(prefect_server: None, redis_server: RedisServer) -> Iterator[Cluster]:
    """`dask scheduler` and two `dask worker` processes; always killed at the end."""
    directory = Path(tempfile.mkdtemp(prefix="dask-cluster-"))
    scheduler_file = directory / "scheduler.json"
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "AS_", "ATOMSCALE_"))
    }
    base["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    processes: list[subprocess.Popen[bytes]] = []
    client: distributed.Client | None = None

    def start(name: str, command: list[str], env: dict[str, str]) -> None:
        with (directory / f"{name}.log").open("wb") as log:
            # A session of its own: the whole group is killed at the end, whatever
            # the process started below it.
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    try:
        start(
            "scheduler",
            [
                *(DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"),
                *("--scheduler-file", str(scheduler_file)),
            ],
            base,
        )
        homes: list[Path] = []
        for index in range(WORKERS):
            home = directory / f"machine-{index}"
            home.mkdir()
            homes.append(home)
            env = dict(
                base,
                PREFECT_HOME=str(home),
                PREFECT_ATOMSCALE_LOCK_DIR=str(home / "atomscale-locks"),
                PREFECT_API_URL=str(PREFECT_API_URL.value()),
                PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
                PYTHONPATH=str(ROOT),
                **{LOCK_URL: redis_server.url},
            )
            start(
                f"worker-{index}",
                [
                    *(DASK, "worker", "--scheduler-file", str(scheduler_file)),
                    *("--name", f"m{index}", "--nthreads", "2", "--no-nanny", "--no-dashboard"),
                    *("--local-directory", str(directory), "--death-timeout", "60"),
                ],
                env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        address = ""
        while not address:
            if time.monotonic() > deadline or processes[0].poll() is not None:
                raise RuntimeError(f"dask scheduler did not start:\n{_logs(directory)}")
            time.sleep(0.1)
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                address = json.loads(scheduler_file.read_text())["address"]
        client = distributed.Client(address, timeout=START_TIMEOUT)
        try:
            client.wait_for_workers(WORKERS, timeout=START_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"dask workers did not join:\n{_logs(directory)}") from None
        # Which worker is which "machine": its environment says.
        home_of = client.run(lambda: os.environ["PREFECT_HOME"])
        yield Cluster(
            address=address,
            client=client,
            homes={worker: Path(home) for worker, home in home_of.items()},
            logs=directory,
        )
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in processes:
            process.wait(timeout=30)


def _stack(sandbox: SandboxHandle, sample_id: int) -> list[tuple[Any, ...]]:
    """The stored layers of one target material, by position, with their record ids."""
    return sorted(
        (row["layer_id"], row["composition_string"], row["orientation"], row["id"])
        for row in sandbox.layer_rows(sample_id=sample_id)
    )


def _assert_each_position_once(sandbox: SandboxHandle, sample_id: int) -> None:
    positions = [row[0] for row in _stack(sandbox, sample_id)]
    assert positions == list(range(1, len(LAYERS) + 1)), (
        f"target material {sample_id}: positions stored {positions}"
    )


def _layer_writes(redis_server: RedisServer) -> int:
    """All version counters of the target materials' slots: two per layer written."""
    client = redis_server.client()
    keys = list(client.scan_iter("prefect-atomscale:versions:*"))
    return sum(int(value or 0) for value in client.mget(keys)) if keys else 0


def _completed_task_runs(flow_run_id: Any, name_prefix: str, expected: int) -> int:
    """The task runs of a flow run the Prefect server knows as completed.

    Task runs reach the server as events, a moment after the flow returns, so this
    waits (up to a minute) for `expected` of them; it asserts nothing about time.
    """
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            done = [
                run
                for run in runs
                if run.name.startswith(name_prefix) and run.state and run.state.is_completed()
            ]
            if len(done) >= expected or time.monotonic() > deadline:
                return len(done)
            time.sleep(0.5)


@pytest.mark.timeout(240)
def test_two_example_flows_on_the_cluster_write_each_layer_once(
    dask_cluster: Cluster,
    redis_server: RedisServer,
    sandbox: SandboxHandle,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The flows run here and call create_target_material here: this process is one
    # more machine, on the same lock server.
    monkeypatch.setenv(LOCK_URL, redis_server.url)
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=10.0)
    on_cluster = build_stack.with_options(task_runner=DaskTaskRunner(address=dask_cluster.address))
    writes_before = _layer_writes(redis_server)

    # Two runs of the same stack at once: every position is asked for twice, by
    # layer tasks that the scheduler spreads over both worker processes.
    with (
        distributed.get_task_stream(client=dask_cluster.client) as stream,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        runs = [
            pool.submit(
                on_cluster,
                credentials,
                sample_name=f"{unique}-cluster",
                substrate="SrTiO3",
                layers=LAYERS,
                return_state=True,
            )
            for _ in range(2)
        ]
        states = [run.result() for run in runs]
    first, second = (state.result() for state in states)

    # Exactly once: one target material, each position written once.
    assert first.target_material.sample_id == second.target_material.sample_id
    sample_id = first.target_material.sample_id
    _assert_each_position_once(sandbox, sample_id)
    stored = _stack(sandbox, sample_id)
    # Both flows return the stored records, in stack order.
    for built in (first, second):
        assert [
            (layer.layer_id, layer.composition_string, layer.orientation, layer.id)
            for layer in built.layers
        ] == stored
    # Every layer write went through Redis: two counter bumps per layer created, none
    # for a layer the other run's task found there and adopted.
    assert _layer_writes(redis_server) - writes_before == 2 * len(LAYERS)

    # The layer tasks ran in the worker processes, on both of them.
    ran_on = {task["worker"] for task in stream.data if str(task["key"]).startswith("create_layer")}
    assert ran_on == set(dask_cluster.homes), f"layer tasks ran on {ran_on}"
    # And the workers reported them to this test's Prefect server.
    for state in states:
        flow_run_id = state.state_details.flow_run_id
        assert _completed_task_runs(flow_run_id, "create-layer", len(LAYERS)) == len(LAYERS)


@pytest.mark.timeout(240)
def test_a_stack_file_run_on_both_workers_at_once_is_created_once(
    dask_cluster: Cluster,
    redis_server: RedisServer,
    sandbox: SandboxHandle,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(LOCK_URL, redis_server.url)
    block = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=10.0).save(block)
    stack_file = tmp_path / "stack.json"
    stack_file.write_text(
        json.dumps(
            {
                "name": f"{unique}-file",
                "substrate": "SrTiO3",
                "layers": [
                    {"composition": spec.composition, "orientation": spec.orientation}
                    for spec in LAYERS
                ],
            }
        )
    )

    # The whole flow on each worker at once, each with its own PREFECT_HOME: two
    # machines with nothing in common but the Prefect server, the account and Redis.
    futures = [
        dask_cluster.client.submit(
            stack_from_file,
            str(stack_file),
            AtomscaleCredentials.load(block),
            workers=[worker],
            pure=False,
        )
        for worker in dask_cluster.homes
    ]
    outcomes = dask_cluster.client.gather(futures)

    sample_ids = {outcome.sample_id for outcome in outcomes}
    assert len(sample_ids) == 1, f"two target materials: {outcomes}"
    [sample_id] = sample_ids
    materials = [
        row
        for row in sandbox.target_materials(organisation="lab-a")
        if row["sample_name"] == f"{unique}-file"
    ]
    assert [row["sample_id"] for row in materials] == [sample_id]
    _assert_each_position_once(sandbox, sample_id)
    assert [outcome.layers for outcome in outcomes] == [len(LAYERS)] * WORKERS
    # No machine fell back to lock files of its own: its locks were all in Redis.
    for worker, home in dask_cluster.homes.items():
        assert not (home / "locks" / "atomscale").exists(), f"{worker} used lock files"

    # The same stack through the example flow on the cluster: the two flows' stacks match.
    on_cluster = build_stack.with_options(task_runner=DaskTaskRunner(address=dask_cluster.address))
    built = on_cluster(
        AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=10.0),
        sample_name=f"{unique}-flow",
        substrate="SrTiO3",
        layers=LAYERS,
    )
    _assert_each_position_once(sandbox, built.target_material.sample_id)
    assert [row[:3] for row in _stack(sandbox, built.target_material.sample_id)] == [
        row[:3] for row in _stack(sandbox, sample_id)
    ]
