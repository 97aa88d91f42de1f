"""Scale-out: the example flow, unchanged, on prefect-dask's `DaskTaskRunner`.

Two Dask worker processes run the layer tasks. For that the credentials block must
pickle, and each worker must build its own connection pool (the pool is per process and
never pickled). The stack at the sandbox must be exactly what the default thread-pool
runner creates.
"""

from __future__ import annotations

from typing import Any

import pytest
from prefect_dask import DaskTaskRunner

import prefect_atomscale._tasks
from atomscale_sandbox import SandboxHandle
from flows.build_stack import LayerSpec, build_stack
from prefect_atomscale import AtomscaleCredentials

LAYERS = [
    LayerSpec(composition="SrRuO3", orientation="(001)"),
    LayerSpec(composition="BaTiO3", orientation="001"),
    LayerSpec(composition="(La0.7Sr0.3)MnO3", orientation="[001]"),
    LayerSpec(composition="SrTiO3", orientation="(1 1 0)"),
    LayerSpec(composition="GaN", orientation="0001"),
    LayerSpec(composition="Al0.25Ga0.75N", orientation="(11-20)"),
]


def _stack_at_sandbox(sandbox: SandboxHandle, sample_id: int) -> list[tuple[Any, ...]]:
    rows = sandbox.layer_rows(sample_id=sample_id)
    return sorted(
        (
            row["layer_id"],
            row["composition_string"],
            row["orientation"],
            row["space_group"],
            row["mp_id"],
        )
        for row in rows
    )


@pytest.mark.timeout(180)
@pytest.mark.processes
def test_example_flow_on_dask_builds_the_same_stack(
    sandbox: SandboxHandle,
    credentials: AtomscaleCredentials,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_threads = build_stack(
        credentials, sample_name=f"{unique}-threads", substrate="SrTiO3", layers=LAYERS
    )

    # Count the pool look-ups made in this (the flow's) process: the layer tasks run in
    # the Dask workers, which import the package afresh and so are not counted.
    in_flow_process: list[str] = []
    pooled = prefect_atomscale._tasks.client_for

    def counted(credentials: AtomscaleCredentials) -> Any:
        in_flow_process.append("client_for")
        return pooled(credentials)

    monkeypatch.setattr(prefect_atomscale._tasks, "client_for", counted)
    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 2, "processes": True}
    )
    on_dask = build_stack.with_options(task_runner=runner)(
        credentials, sample_name=f"{unique}-dask", substrate="SrTiO3", layers=LAYERS
    )

    # Only create_target_material, called directly in the flow, ran in this process.
    assert in_flow_process == ["client_for"]
    expected = _stack_at_sandbox(sandbox, on_threads.target_material.sample_id)
    assert [row[0] for row in expected] == list(range(1, len(LAYERS) + 1))
    assert _stack_at_sandbox(sandbox, on_dask.target_material.sample_id) == expected
    assert [
        (layer.layer_id, layer.composition_string, layer.orientation) for layer in on_dask.layers
    ] == [row[:3] for row in expected]
    assert on_dask.target_material.substrate == on_threads.target_material.substrate
