"""Exactly once: under faults, after a SIGKILL, with two runs at once, after a change.

Each test counts rows in the sandbox's own database: every layer position present
once, never twice. `benchmarks/exactly_once.py` runs the same scenarios at full size.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import prefect.settings
import pytest
from conftest import KEY_A, PREFECT_HOME
from prefect import flow, task
from prefect.futures import wait
from prefect.transactions import transaction

from atomscale_sandbox import SandboxHandle
from flows.build_stack import LayerSpec, build_stack
from prefect_atomscale import (
    AtomscaleConflictError,
    AtomscaleCredentials,
    AtomscaleError,
    Layer,
    create_layer,
    create_layers,
    create_target_material,
)
from prefect_atomscale._locks import _keys as lock_keys

ROOT = Path(__file__).resolve().parent.parent
ALL_FAULTS = [
    "503",
    "429",
    "reset",
    "502_html",
    "drop_after_commit",
    "500_after_commit",
    "slow_after_commit",
]


def positions(sandbox: SandboxHandle, sample_id: int) -> Counter[int]:
    """How many rows the sandbox stores at each layer position of one target material."""
    return Counter(row["layer_id"] for row in sandbox.layer_rows(sample_id=sample_id))


def test_fault_storm_leaves_every_layer_exactly_once(sandbox: SandboxHandle, unique: str) -> None:
    """20% of writes faulted, every kind: 3 stacks x 40 layers, 0 missing, 0 duplicates."""
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=1.0)
    layers = [LayerSpec(composition=f, orientation="001") for f in ["BaTiO3", "SrTiO3"] * 20]
    sandbox.faults.set(
        rate=0.2, kinds=ALL_FAULTS, seed=2026, slow_seconds=1.5, retry_after_seconds=1
    )
    built, failures = [], []
    for number in range(3):
        for _run in range(4):  # a plain re-run finishes what ran out of retries
            try:
                built.append(build_stack(credentials, f"{unique}-{number}", "SrTiO3", layers))
                break
            except AtomscaleError as exc:
                failures.append(str(exc))
        else:
            pytest.fail(f"stack {number} did not complete in 4 runs: {failures}")
    injected = sandbox.stats.faults
    sandbox.faults.clear()

    assert sum(injected.values()) >= 20, injected  # the storm really happened
    for stack in built:
        assert positions(sandbox, stack.target_material.sample_id) == Counter(range(1, 41))
        assert [layer.layer_id for layer in stack.layers] == list(range(1, 41))
    for message in failures:  # a failed run names the layer that ran out of retries
        assert re.search(r"layer \d+ \(\w+ 001\) of target material \d+", message), message


def _save_block(sandbox: SandboxHandle) -> str:
    block = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save(block)
    return block


def _driver(block: str, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "scripts/run_stack.py",
        "--block",
        block,
        "--sample-name",
        name,
        "--layers",
        "40",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value()),
        "PREFECT_HOME": str(PREFECT_HOME),
    }


def _materials_named(sandbox: SandboxHandle, name: str) -> list[int]:
    return [
        row["sample_id"]
        for row in sandbox.target_materials(organisation="lab-a")
        if row["sample_name"] == name
    ]


@pytest.mark.processes
def test_a_run_killed_halfway_is_completed_by_a_rerun(sandbox: SandboxHandle, unique: str) -> None:
    block = _save_block(sandbox)
    run = subprocess.Popen(
        _driver(block, unique, "--pace", "0.1"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            sandbox.count_layers(organisation="lab-a") == 0
            or not _materials_named(sandbox, unique)
            or sum(positions(sandbox, _materials_named(sandbox, unique)[0]).values()) < 20
        ):
            assert run.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never got halfway"
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait(timeout=30)
    (sample_id,) = _materials_named(sandbox, unique)
    assert 20 <= sum(positions(sandbox, sample_id).values()) < 40

    rerun = subprocess.run(
        _driver(block, unique), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _materials_named(sandbox, unique) == [sample_id]
    assert positions(sandbox, sample_id) == Counter(range(1, 41))


@pytest.mark.processes
def test_the_same_flow_started_twice_at_once_writes_once(
    sandbox: SandboxHandle, unique: str
) -> None:
    block = _save_block(sandbox)
    runs = [
        subprocess.Popen(
            _driver(block, unique),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=180)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    (sample_id,) = _materials_named(sandbox, unique)
    assert positions(sandbox, sample_id) == Counter(range(1, 41))


def test_a_changed_layer_is_refused_or_updated_never_doubled(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    def two_layers(second: str, if_exists: str = "error") -> list[Layer]:
        material = create_target_material(credentials, unique, "SrTiO3")
        return [
            create_layer(credentials, 1, material.sample_id, "SrRuO3", "001"),
            create_layer(credentials, 2, material.sample_id, second, "001", if_exists=if_exists),
        ]

    first = two_layers("BaTiO3")
    sample_id = first[0].sample_id

    with pytest.raises(AtomscaleConflictError) as info:
        two_layers("PbTiO3")
    message = str(info.value)
    assert f"Cannot create layer 2 (PbTiO3 001) of target material {sample_id}" in message
    assert f"record {first[1].id} already sits at that position as BaTiO3" in message
    assert "if_exists='update'" in message

    updated = two_layers("PbTiO3", if_exists="update")
    assert updated[1].id == first[1].id and updated[1].composition_string == "PbTiO3"
    rows = sandbox.layer_rows(sample_id=sample_id)
    assert [(row["layer_id"], row["composition_string"]) for row in rows] == [
        (1, "SrRuO3"),
        (2, "PbTiO3"),
    ]

    kept = two_layers("LaAlO3", if_exists="reuse")
    assert kept[1].composition_string == "PbTiO3"
    assert positions(sandbox, sample_id) == Counter([1, 2])


def test_a_write_committed_after_the_client_gave_up_is_adopted_not_doubled(
    sandbox: SandboxHandle, unique: str
) -> None:
    """The service commits a queued write 1.5 s after the client saw its connection drop.

    The retry looks before writing, but the write has not landed yet when it first
    could look: it lets the write settle (`_protocol.SETTLE_SECONDS`) and adopts it.
    """
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=5.0)

    @flow
    def one_layer() -> tuple[int, Layer]:
        material = create_target_material(credentials, unique, "SrTiO3")
        sandbox.faults.set(slow_seconds=0.2, late_commit_seconds=1.5)
        sandbox.faults.queue(["commit_late"])
        layer = create_layer(
            credentials, layer_id=1, sample_id=material.sample_id, composition_string="GaN"
        )
        return material.sample_id, layer

    sample_id, layer = one_layer()
    time.sleep(2.0)  # past the late commit, in case it were still to come
    assert sandbox.stats.faults == {"commit_late": 1}
    assert positions(sandbox, sample_id) == Counter({1: 1})
    [stored] = sandbox.layer_rows(sample_id=sample_id)
    assert layer.id == stored["id"]


def test_a_target_material_committed_late_with_its_layers_is_adopted_not_doubled(
    sandbox: SandboxHandle, unique: str
) -> None:
    """Sent with its layers, a new target material is listed once it lands: found, not redone."""
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=5.0)
    sandbox.faults.set(slow_seconds=0.2, late_commit_seconds=1.5)
    sandbox.faults.queue(["commit_late"])

    @flow
    def with_layers() -> int:
        layers = [{"composition_string": "AlN"}, {"composition_string": "GaN"}]
        material = create_target_material(credentials, unique, "Al2O3", layers=layers)
        return material.sample_id

    sample_id = with_layers()
    time.sleep(2.0)
    assert sandbox.stats.faults == {"commit_late": 1}
    named = [
        m for m in sandbox.target_materials(organisation="lab-a") if m["sample_name"] == unique
    ]
    assert [m["sample_id"] for m in named] == [sample_id]
    assert positions(sandbox, sample_id) == Counter({1: 1, 2: 1})


def test_an_empty_target_material_lost_in_reply_is_created_again_as_documented(
    sandbox: SandboxHandle, unique: str
) -> None:
    """The case that cannot be closed: the listing hides materials without layers.

    docs/guides/exactly-once.md ("Against other writers") says so; pass `layers` to avoid it. This
    pins the documented behaviour: a second, empty target material.
    """
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=5.0)
    sandbox.faults.queue(["drop_after_commit"])

    @flow
    def empty() -> int:
        return create_target_material(credentials, unique, "MgO").sample_id

    sample_id = empty()
    named = [
        m for m in sandbox.target_materials(organisation="lab-a") if m["sample_name"] == unique
    ]
    assert len(named) == 2 and sample_id == named[-1]["sample_id"]


# --------------------------------------------------------------- other writers, one by one


@pytest.mark.timeout(120)
def test_a_stack_inside_one_transaction_never_waits_for_itself(
    sandbox: SandboxHandle, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside `with transaction():` a task's cache lock is held until the outer commit.

    Keys that share a lock slot must not wait for their own process. One slot for every
    key makes that certain (with 1,024, a 42-layer stack hit it about half the time).
    """
    monkeypatch.setattr(lock_keys, "SLOTS", 1)
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=5.0)

    @task
    def users_own_task(sample_id: int) -> Layer:
        # Called from a user's task, create_layer runs nested in its transaction.
        return create_layer(credentials, 42, sample_id, composition_string="SrRuO3")

    @flow
    def in_one_transaction() -> int:
        with transaction():
            material = create_target_material(credentials, unique, "SrTiO3")
            for position in range(1, 42):
                formula = ("BaTiO3", "SrTiO3")[position % 2]
                create_layer(credentials, position, material.sample_id, formula, "001")
            users_own_task(material.sample_id)
        return material.sample_id

    sample_id = in_one_transaction()
    assert positions(sandbox, sample_id) == Counter(range(1, 43))


@pytest.mark.timeout(60)
def test_the_same_target_material_twice_in_one_transaction_fails_loudly_at_once(
    sandbox: SandboxHandle, unique: str
) -> None:
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=5.0)

    @flow
    def twice() -> None:
        with transaction():
            create_target_material(credentials, unique, "SrTiO3")
            create_target_material(credentials, unique, "SrTiO3", {"again": True})
            create_target_material(credentials, unique, "SrTiO3")

    started = time.monotonic()
    with pytest.raises(AtomscaleConflictError, match="twice inside one Prefect transaction"):
        twice()
    assert time.monotonic() - started < 30


def test_two_different_requests_for_one_position_never_both_land(
    sandbox: SandboxHandle, unique: str
) -> None:
    """A typo in `.map`, two formulas, `create_layer` beside `create_layers`: one wins."""
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=5.0)

    @flow
    def racing() -> tuple[int, list[Any]]:
        material = create_target_material(credentials, unique, "SrTiO3")
        # The first write to arrive takes a second to commit, so others look meanwhile.
        sandbox.faults.set(slow_seconds=1.0)
        sandbox.faults.queue(["slow_before_commit"])
        futures = [
            create_layer.submit(credentials, 1, material.sample_id, formula, "001")
            for formula in ("BaTiO3", "PbTiO3", "SrTiO3", "BaTiO3")
        ]
        futures.append(
            create_layers.submit(credentials, material.sample_id, [{"composition_string": "GaN"}])
        )
        wait(futures)
        return material.sample_id, [future.state for future in futures]

    sample_id, states = racing()
    assert sandbox.stats.faults == {"slow_before_commit": 1}
    assert positions(sandbox, sample_id) == Counter({1: 1})
    [stored] = sandbox.layer_rows(sample_id=sample_id)
    for state in states:
        if state.is_completed():
            result = state.result()
            layer = result[0] if isinstance(result, list) else result
            assert layer.composition_string == stored["composition_string"]
        else:
            with pytest.raises(AtomscaleConflictError):
                state.result()


def test_an_update_retires_the_cache_entries_of_what_was_there(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    """After an update, the old request is not answered by its 30-day cache entry."""

    @flow
    def layer(formula: str, if_exists: str = "error") -> Layer:
        material = create_target_material(credentials, unique, "SrTiO3")
        return create_layer(credentials, 1, material.sample_id, formula, "001", if_exists=if_exists)

    first = layer("BaTiO3")
    kept = layer("PbTiO3", if_exists="reuse")
    assert kept.composition_string == "BaTiO3"
    # "update" after "reuse" is another request: it runs, it PATCHes.
    updated = layer("PbTiO3", if_exists="update")
    assert (updated.id, updated.composition_string) == (first.id, "PbTiO3")
    [stored] = sandbox.layer_rows(sample_id=first.sample_id)
    assert stored["composition_string"] == "PbTiO3"
    # The first request's entry no longer answers: the service holds PbTiO3 now.
    with pytest.raises(AtomscaleConflictError, match="already sits at that position as PbTiO3"):
        layer("BaTiO3")


_DIES_AFTER_ITS_WRITE = """
import os, signal, sys
from prefect import flow
from prefect_atomscale import AtomscaleClient, AtomscaleCredentials, create_layer

post = AtomscaleClient.create_layer

def post_then_die(self, request):
    post(self, request)  # the write lands ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and the worker dies before it can say so

AtomscaleClient.create_layer = post_then_die

@flow
def write_then_die() -> None:
    credentials = AtomscaleCredentials.load(sys.argv[1])
    create_layer(credentials, 5, int(sys.argv[2]), "GaN", "0001")

write_then_die()
"""


@pytest.mark.processes
def test_a_layer_written_by_a_worker_that_died_is_seen_by_the_creator(
    sandbox: SandboxHandle, unique: str
) -> None:
    """A Dask worker dies after its POST landed; its task is re-run as a fresh first
    attempt on the worker that created the target material. That worker must look."""
    block = _save_block(sandbox)
    credentials = AtomscaleCredentials.load(block)

    @flow
    def create() -> int:
        return create_target_material(credentials, unique, "Al2O3").sample_id

    @flow
    def rerun(sample_id: int) -> Layer:
        return create_layer(credentials, 5, sample_id, "GaN", "0001")

    sample_id = create()
    worker = subprocess.run(
        [sys.executable, "-c", _DIES_AFTER_ITS_WRITE, block, str(sample_id)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stdout + worker.stderr
    assert positions(sandbox, sample_id) == Counter({5: 1})
    adopted = rerun(sample_id)
    assert positions(sandbox, sample_id) == Counter({5: 1})
    assert adopted.id == sandbox.layer_rows(sample_id=sample_id)[0]["id"]


def test_a_stack_write_committed_after_the_client_gave_up_is_adopted_not_rewritten(
    sandbox: SandboxHandle, unique: str
) -> None:
    """One layer write of `create_layers` lands 1.5 s after the client gave up.

    The write settles under the lock, the retry lists and finds it: the layers it
    returns are the ones stored, each position once.
    """
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=5.0)

    @flow
    def whole_stack() -> tuple[int, list[Layer]]:
        material = create_target_material(credentials, unique, "SrTiO3")
        sandbox.faults.set(slow_seconds=0.2, late_commit_seconds=1.5)
        sandbox.faults.queue(["commit_late"])
        stack = [{"composition_string": f, "orientation": "001"} for f in ("SrRuO3", "BaTiO3")]
        return material.sample_id, create_layers(credentials, material.sample_id, stack)

    sample_id, layers = whole_stack()
    time.sleep(2.0)  # past the late commit, in case it were still to come
    assert sandbox.stats.faults == {"commit_late": 1}
    assert positions(sandbox, sample_id) == Counter({1: 1, 2: 1})
    stored = {row["layer_id"]: row["id"] for row in sandbox.layer_rows(sample_id=sample_id)}
    assert {layer.layer_id: layer.id for layer in layers} == stored
