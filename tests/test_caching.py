"""Caching: re-runs send nothing, across processes too; accounts never share entries."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import prefect.settings
import pytest
from conftest import KEY_A, KEY_A2, KEY_B, PREFECT_HOME
from helpers import LAYERS, TARGET_MATERIALS, layer_rows, requests_to
from prefect import flow

from atomscale_sandbox import SandboxHandle
from prefect_atomscale import AtomscaleCredentials, Layer, create_layer, create_target_material

ROOT = Path(__file__).resolve().parent.parent


def build(credentials: AtomscaleCredentials, name: str, formulas: list[str], **options: object):
    layer_task = create_layer.with_options(**options) if options else create_layer

    @flow
    def stack() -> list[Layer]:
        material = create_target_material(credentials, name, "SrTiO3")
        futures = [
            layer_task.submit(
                credentials, layer_id=i, sample_id=material.sample_id, composition_string=f
            )
            for i, f in enumerate(formulas, start=1)
        ]
        return [future.result() for future in futures]

    return stack()


def test_second_run_in_the_same_process_sends_no_post(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    first = build(credentials, unique, ["SrRuO3", "BaTiO3"])
    assert requests_to(sandbox, "POST", LAYERS) == 2
    sandbox.reset_stats()
    second = build(credentials, unique, ["SrRuO3", "BaTiO3"])
    assert second == first
    assert sandbox.stats.requests == 0


@pytest.mark.processes
def test_second_run_in_a_new_process_sends_no_post(sandbox: SandboxHandle, unique: str) -> None:
    block = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save(block)
    env = {
        **os.environ,
        "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value()),
        "PREFECT_HOME": str(PREFECT_HOME),
    }
    command = [sys.executable, "flows/build_stack.py", "--block", block, "--sample-name", unique]

    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    assert requests_to(sandbox, "POST", LAYERS) == 3
    assert "0 reused from cache" in first.stdout

    sandbox.reset_stats()
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stdout + second.stderr
    assert requests_to(sandbox, "POST", LAYERS) == 0
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 0
    assert "4 reused from cache" in second.stdout


def test_loaded_and_in_memory_blocks_share_entries(sandbox: SandboxHandle, unique: str) -> None:
    in_memory = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url)
    block = f"atomscale-{uuid.uuid4().hex[:8]}"
    in_memory.save(block)
    build(in_memory, unique, ["GaN"])
    sandbox.reset_stats()
    build(AtomscaleCredentials.load(block), unique, ["GaN"])
    assert sandbox.stats.requests == 0


def test_other_accounts_never_hit_each_others_entries(sandbox: SandboxHandle, unique: str) -> None:
    def run_as(key: str, base_url: str = sandbox.url) -> list[Layer]:
        sandbox.reset_stats()
        return build(AtomscaleCredentials(api_key=key, base_url=base_url), unique, ["ZnO"])

    first = run_as(KEY_A)
    assert requests_to(sandbox, "POST", LAYERS) == 1
    # Lab B: another organisation, so its own target material and layer.
    lab_b = run_as(KEY_B)
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 1
    assert requests_to(sandbox, "POST", LAYERS) == 1
    assert lab_b[0].id != first[0].id
    # The first key under another host name misses the cache (a hit would send nothing)
    # and asks the service, which already has the records: they are adopted, since the
    # ownership token comes from the key alone, not from how the host is spelled.
    again = run_as(KEY_A, sandbox.url.replace("127.0.0.1", "localhost"))
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) >= 1
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 0
    assert requests_to(sandbox, "POST", LAYERS) == 0
    assert again == first
    # A second key of lab A is a colleague: it misses the cache too, and its own run
    # never adopts the first key's target material; it creates its own.
    colleague = run_as(KEY_A2)
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 1
    assert colleague[0].sample_id != first[0].sample_id


def test_refresh_cache_runs_the_task_again_without_writing_twice(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    first = build(credentials, unique, ["LaAlO3"])
    sandbox.reset_stats()
    second = build(credentials, unique, ["LaAlO3"], refresh_cache=True)
    # The task ran (it asked the service) and found its record, so it did not post.
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) >= 1
    assert requests_to(sandbox, "POST", LAYERS) == 0
    assert second == first
    assert sandbox.count_layers(sample_id=first[0].sample_id) == 1


def test_cache_expiration_can_be_changed(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    assert create_layer.cache_expiration == timedelta(days=30)
    build(credentials, unique, ["MgO"], cache_expiration=timedelta(milliseconds=1))
    sandbox.reset_stats()
    build(credentials, unique, ["MgO"], cache_expiration=timedelta(milliseconds=1))
    # Expired: the layer task ran again and adopted what it had created. It knew that
    # from this process's view of the stack, so it needed no listing at all.
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 0
    assert requests_to(sandbox, "POST", LAYERS) == 0


def test_cache_keys_and_stored_results_never_contain_the_key(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    layers = build(credentials, unique, ["SrTiO3"])
    assert layer_rows(sandbox, KEY_A, layers[0].sample_id)
    stored = [path for path in PREFECT_HOME.rglob("*") if path.is_file()]
    assert stored, "results and cache records should have been written"
    for path in stored:
        assert KEY_A.encode() not in path.read_bytes(), path
        assert KEY_A not in path.name
