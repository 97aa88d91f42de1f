"""The connection pool: one per process and account, shared by concurrent tasks, never pickled.

Connections are counted where they arrive, at the sandbox, so a client that opened one
connection per task (or reopened them during a run) would fail these tests whatever our
own bookkeeping says.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from atomscale_sandbox import SandboxHandle
from prefect_atomscale import AtomscaleCredentials, Layer, create_layer, create_target_material
from prefect_atomscale._pool import client_for, close_all

from conftest import KEY_A, KEY_B  # isort: skip

POOL_SIZE = 4


def test_concurrent_tasks_share_a_bounded_pool(sandbox: SandboxHandle, unique: str) -> None:
    credentials = AtomscaleCredentials(
        api_key=KEY_A, base_url=sandbox.url, timeout=60.0, max_connections=POOL_SIZE
    )
    materials, per_material = 3, 12

    # More task threads than connections: tasks must wait for a pooled connection,
    # not open their own.
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4 * POOL_SIZE))
    def concurrent_stacks() -> list[Layer]:
        samples = [
            create_target_material.submit(credentials, f"{unique}-{index}", "SrTiO3")
            for index in range(materials)
        ]
        futures = [
            create_layer.map(
                unmapped(credentials),
                layer_id=list(range(1, per_material + 1)),
                sample_id=sample.result().sample_id,
                composition_string="BaTiO3",
                orientation="001",
            )
            for sample in samples
        ]
        return [future.result() for batch in futures for future in batch]

    close_all()  # count only the connections this flow opens
    sandbox.reset_stats()
    layers = concurrent_stacks()

    assert len(layers) == materials * per_material
    assert sandbox.stats.requests >= materials * (per_material + 1)
    assert 1 <= sandbox.stats.connections <= POOL_SIZE


def test_one_client_per_account_and_settings() -> None:
    a = AtomscaleCredentials(api_key=KEY_A, base_url="http://127.0.0.1:9")
    same_account = AtomscaleCredentials(api_key=KEY_A, base_url="http://127.0.0.1:9/")
    other_account = AtomscaleCredentials(api_key=KEY_B, base_url="http://127.0.0.1:9")
    smaller_pool = AtomscaleCredentials(
        api_key=KEY_A, base_url="http://127.0.0.1:9", max_connections=2
    )

    assert client_for(a) is client_for(same_account)
    assert client_for(a) is not client_for(other_account)
    assert client_for(a) is not client_for(smaller_pool)


def test_close_all_closes_the_clients_and_later_calls_build_new_ones() -> None:
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url="http://127.0.0.1:9")
    first = client_for(credentials)
    close_all()
    assert first._http.is_closed
    assert client_for(credentials) is not first


def test_the_block_pickles_without_a_client(sandbox: SandboxHandle) -> None:
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url)
    client_for(credentials)  # a pool exists in this process
    data = pickle.dumps(credentials)
    assert b"httpx" not in data and b"httpcore" not in data
    assert pickle.loads(data).account_fingerprint() == credentials.account_fingerprint()


@pytest.mark.processes
def test_the_pool_is_closed_when_the_process_exits(sandbox: SandboxHandle) -> None:
    # Exit hooks run last-registered first: this one, registered before the pool module
    # is imported, runs after the pool's own hook and reports what that hook left.
    code = """
import atexit, sys
clients = []
atexit.register(lambda: print("closed" if clients[0]._http.is_closed else "open"))
from prefect_atomscale import AtomscaleCredentials
from prefect_atomscale._pool import client_for
clients.append(client_for(AtomscaleCredentials(api_key=sys.argv[1], base_url=sys.argv[2])))
clients[0]._http.get("/health").raise_for_status()
"""
    before = sandbox.stats.connections
    done = subprocess.run(
        [sys.executable, "-c", code, KEY_A, sandbox.url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert done.stdout.strip() == "closed"
    assert sandbox.stats.connections == before + 1
