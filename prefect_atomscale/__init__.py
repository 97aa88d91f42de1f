"""prefect-atomscale: create Atomscale target materials and their layer stacks from Prefect.

The layers, from the bottom up:

- `AtomscaleCredentials` (a Prefect block) holds the API key and where the API lives;
- `AtomscaleClient` / `AsyncAtomscaleClient` send checked requests and map every reply
  to a model or a typed error (`AtomscaleError` and its subclasses);
- the tasks `create_target_material`, `create_layer` and `create_layers` (a whole
  stack in one task), each with an async twin, add local validation, retries of
  transient faults, caching, and exactly-once writes; `create_growth_run` and
  `link_target_material` do so for growth runs (physical samples), which the
  official `atomscale` SDK uploads instrument data into by name;
- `load_stack_file` reads stack files (YAML, JSON, CSV), `publish_stack_artifacts`
  draws stacks for the Prefect UI, and `prefect_atomscale.flows` creates the stacks of
  stack files.

The sandbox, a local stand-in for the API for demos and tests, is its own package:
`atomscale_sandbox`.

Only the credentials block and the errors are imported with the package; everything
else (tasks, clients, stack files, ...) is imported on first use of its name, so that
`import prefect_atomscale` (which Prefect itself does when it loads installed
integrations) stays cheap. `from prefect_atomscale import create_layer` works as usual.

Example:
    ```python
    from prefect import flow
    from prefect_atomscale import AtomscaleCredentials, create_layer, create_target_material

    @flow
    def bto_on_sto() -> int:
        credentials = AtomscaleCredentials.load("atomscale")
        sample = create_target_material(credentials, "BTO on STO #14", "SrTiO3")
        create_layer(credentials, layer_id=1, sample_id=sample.sample_id,
                     composition_string="BaTiO3", orientation="001")
        return sample.sample_id

    bto_on_sto()
    ```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Prefect's package first: reached first through a submodule (as `credentials` would,
# with `prefect.blocks.abstract`), Prefect's import costs about 50 ms more CPU time
# (`benchmarks/memory_startup.py`).
import prefect  # noqa: F401  # isort: skip

# Eager: Prefect finds the block class on the package when it registers integrations.
from prefect_atomscale._credentials import AtomscaleCredentials, ConnectionSettings
from prefect_atomscale._exceptions import (
    AtomscaleAuthError,
    AtomscaleConfigurationError,
    AtomscaleConflictError,
    AtomscaleConnectionError,
    AtomscaleError,
    AtomscaleLockLostError,
    AtomscaleNotFoundError,
    AtomscaleProtocolError,
    AtomscaleRateLimitError,
    AtomscaleServerError,
    AtomscaleTimeoutError,
    AtomscaleValidationError,
    GrowthRunLinkedError,
    InvalidCompositionError,
    InvalidOrientationError,
    InvalidStackFileError,
    LayerDifference,
    StackConflictError,
    StackFileProblem,
)

if TYPE_CHECKING:  # for type checkers and editors; at run time see __getattr__
    from prefect_atomscale._artifacts import (
        StackArtifacts,
        apublish_stack_artifacts,
        publish_stack_artifacts,
    )
    from prefect_atomscale._bulk import acreate_layers, create_layers
    from prefect_atomscale._client import AsyncAtomscaleClient, AtomscaleClient
    from prefect_atomscale._composition import parse_composition
    from prefect_atomscale._events import LayerEvents
    from prefect_atomscale._growth_run_tasks import (
        acreate_growth_run,
        afind_growth_runs,
        aget_growth_run,
        alink_target_material,
        create_growth_run,
        find_growth_runs,
        get_growth_run,
        link_target_material,
    )
    from prefect_atomscale._growth_runs import IfLinked
    from prefect_atomscale._models import GrowthRun, Layer, TargetMaterial, TargetMaterialRow
    from prefect_atomscale._orientation import normalize_orientation
    from prefect_atomscale._payloads import LayerRequest, TargetMaterialRequest
    from prefect_atomscale._read_tasks import (
        afind_target_materials,
        aget_stack,
        aupdate_target_material,
        find_target_materials,
        get_stack,
        update_target_material,
    )
    from prefect_atomscale._reconcile import IfExists
    from prefect_atomscale._stacks import (
        LayerSpec,
        RepeatBlock,
        StackLayer,
        StackSpec,
        load_stack_file,
        parse_stack,
    )
    from prefect_atomscale._tasks import (
        acreate_layer,
        acreate_target_material,
        create_layer,
        create_target_material,
    )

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "publish_stack_artifacts": "_artifacts",
    "apublish_stack_artifacts": "_artifacts",
    "StackArtifacts": "_artifacts",
    "acreate_layers": "_bulk",
    "create_layers": "_bulk",
    "AsyncAtomscaleClient": "_client",
    "AtomscaleClient": "_client",
    "parse_composition": "_composition",
    "acreate_growth_run": "_growth_run_tasks",
    "afind_growth_runs": "_growth_run_tasks",
    "aget_growth_run": "_growth_run_tasks",
    "alink_target_material": "_growth_run_tasks",
    "create_growth_run": "_growth_run_tasks",
    "find_growth_runs": "_growth_run_tasks",
    "get_growth_run": "_growth_run_tasks",
    "link_target_material": "_growth_run_tasks",
    "IfLinked": "_growth_runs",
    "GrowthRun": "_models",
    "Layer": "_models",
    "TargetMaterial": "_models",
    "TargetMaterialRow": "_models",
    "normalize_orientation": "_orientation",
    "LayerRequest": "_payloads",
    "TargetMaterialRequest": "_payloads",
    "afind_target_materials": "_read_tasks",
    "aget_stack": "_read_tasks",
    "aupdate_target_material": "_read_tasks",
    "find_target_materials": "_read_tasks",
    "get_stack": "_read_tasks",
    "update_target_material": "_read_tasks",
    "IfExists": "_reconcile",
    "LayerEvents": "_events",
    "LayerSpec": "_stacks",
    "StackLayer": "_stacks",
    "RepeatBlock": "_stacks",
    "StackSpec": "_stacks",
    "load_stack_file": "_stacks",
    "parse_stack": "_stacks",
    "acreate_layer": "_tasks",
    "acreate_target_material": "_tasks",
    "create_layer": "_tasks",
    "create_target_material": "_tasks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AsyncAtomscaleClient",
    "AtomscaleAuthError",
    "AtomscaleClient",
    "AtomscaleConfigurationError",
    "AtomscaleConflictError",
    "AtomscaleConnectionError",
    "AtomscaleCredentials",
    "AtomscaleError",
    "AtomscaleLockLostError",
    "AtomscaleNotFoundError",
    "AtomscaleProtocolError",
    "AtomscaleRateLimitError",
    "AtomscaleServerError",
    "AtomscaleTimeoutError",
    "AtomscaleValidationError",
    "ConnectionSettings",
    "GrowthRun",
    "GrowthRunLinkedError",
    "IfExists",
    "IfLinked",
    "InvalidCompositionError",
    "InvalidOrientationError",
    "InvalidStackFileError",
    "Layer",
    "LayerDifference",
    "LayerEvents",
    "LayerRequest",
    "LayerSpec",
    "RepeatBlock",
    "StackArtifacts",
    "StackConflictError",
    "StackFileProblem",
    "StackLayer",
    "StackSpec",
    "TargetMaterial",
    "TargetMaterialRequest",
    "TargetMaterialRow",
    "acreate_growth_run",
    "acreate_layer",
    "acreate_layers",
    "acreate_target_material",
    "afind_growth_runs",
    "afind_target_materials",
    "aget_growth_run",
    "aget_stack",
    "alink_target_material",
    "apublish_stack_artifacts",
    "aupdate_target_material",
    "create_growth_run",
    "create_layer",
    "create_layers",
    "create_target_material",
    "find_growth_runs",
    "find_target_materials",
    "get_growth_run",
    "get_stack",
    "link_target_material",
    "load_stack_file",
    "normalize_orientation",
    "parse_composition",
    "parse_stack",
    "publish_stack_artifacts",
    "update_target_material",
]
