"""Caching: re-runs send nothing, across processes too; accounts never share entries."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import prefect.settings
from conftest import KEY_A, KEY_A2, KEY_B, PREFECT_HOME
from helpers import LAYERS, TARGET_MATERIALS, layer_rows, requests_to
from prefect import flow

from prefect_atomscale import AtomscaleCredentials, Layer, create_layer, create_target_material
from prefect_atomscale.sandbox import SandboxHandle

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
    results = {}
    for key in (KEY_A, KEY_A2, KEY_B):
        credentials = AtomscaleCredentials(api_key=key, base_url=sandbox.url)
        results[key] = build(credentials, unique, ["ZnO"])
    # Three keys: three target materials and three layers, none taken from a cache.
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 3
    assert requests_to(sandbox, "POST", LAYERS) == 3
    assert len({layers[0].id for layers in results.values()}) == 3
    # Another base URL for the same key is another account too.
    other_host = AtomscaleCredentials(
        api_key=KEY_A, base_url=sandbox.url.replace("127.0.0.1", "localhost")
    )
    sandbox.reset_stats()
    build(other_host, unique, ["ZnO"])
    assert requests_to(sandbox, "POST", LAYERS) == 1


def test_refresh_cache_forces_a_write(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    first = build(credentials, unique, ["LaAlO3"])
    sandbox.reset_stats()
    second = build(credentials, unique, ["LaAlO3"], refresh_cache=True)
    assert requests_to(sandbox, "POST", LAYERS) == 1
    assert second[0].id != first[0].id


def test_cache_expiration_can_be_changed(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    assert create_layer.cache_expiration == timedelta(days=30)
    build(credentials, unique, ["MgO"], cache_expiration=timedelta(milliseconds=1))
    sandbox.reset_stats()
    build(credentials, unique, ["MgO"], cache_expiration=timedelta(milliseconds=1))
    assert requests_to(sandbox, "POST", LAYERS) == 1


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
