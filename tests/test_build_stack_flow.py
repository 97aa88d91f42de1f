"""The example flow end to end: in a flow run, and as the README's demo command runs it."""

from __future__ import annotations

import subprocess

import pytest
from conftest import KEY_A
from helpers import layer_rows

from atomscale_sandbox import SandboxHandle
from flows.build_stack import BuiltStack, LayerSpec, build_stack, format_stack
from prefect_atomscale import AtomscaleCredentials


def test_build_stack_creates_every_layer_in_order(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    superlattice = [
        LayerSpec(composition=formula, orientation="(001)")
        for _ in range(5)
        for formula in ("BaTiO3", "SrTiO3")
    ]
    built = build_stack(credentials, sample_name=unique, substrate="SrTiO3", layers=superlattice)
    assert isinstance(built, BuiltStack)
    assert [layer.layer_id for layer in built.layers] == list(range(1, 11))
    assert [layer.composition_string for layer in built.layers] == ["BaTiO3", "SrTiO3"] * 5
    rows = layer_rows(sandbox, KEY_A, built.target_material.sample_id)
    assert sorted(row["id"] for row in rows) == sorted(layer.id for layer in built.layers)
    text = format_stack(built)
    assert text.splitlines()[1].startswith("  L10  SrTiO3")
    assert text.splitlines()[-1].endswith("substrate SrTiO3")


@pytest.mark.newcomer_script("flows/build_stack.py")
def test_demo_command_runs_clean_with_no_configuration(
    newcomer_run: subprocess.CompletedProcess[str],
) -> None:
    """`python flows/build_stack.py` as a newcomer runs it: fresh home, no Prefect server."""
    result = newcomer_run
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Started the Atomscale sandbox at http://127.0.0.1:" in result.stdout
    assert "Target material 1: 'LSMO/BTO/SRO tunnel junction (demo)' on SrTiO3" in result.stdout
    assert "L3  (La0.7Sr0.3)MnO3  001" in result.stdout
    assert "Traceback" not in output
    assert "ERROR" not in output
