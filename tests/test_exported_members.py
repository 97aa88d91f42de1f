"""The public surface: exactly the documented names, and every type they use is one of them."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import atomscale_sandbox
import prefect_atomscale
import prefect_atomscale.flows

# The documented API (README "The tasks", docs/reference). A name added to or dropped
# from `__all__` must be added or dropped here too, on purpose.
DOCUMENTED = {
    prefect_atomscale: [
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
        "GrowthRun",
        "GrowthRunLinkedError",
        "IfLinked",
        "acreate_growth_run",
        "afind_growth_runs",
        "aget_growth_run",
        "alink_target_material",
        "create_growth_run",
        "find_growth_runs",
        "get_growth_run",
        "link_target_material",
        "ConnectionSettings",
        "IfExists",
        "LayerEvents",
        "InvalidCompositionError",
        "InvalidOrientationError",
        "InvalidStackFileError",
        "Layer",
        "LayerDifference",
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
        "acreate_layer",
        "acreate_layers",
        "acreate_target_material",
        "afind_target_materials",
        "aget_stack",
        "apublish_stack_artifacts",
        "aupdate_target_material",
        "create_layer",
        "create_layers",
        "create_target_material",
        "find_target_materials",
        "get_stack",
        "load_stack_file",
        "normalize_orientation",
        "parse_composition",
        "parse_stack",
        "publish_stack_artifacts",
        "update_target_material",
    ],
    prefect_atomscale.flows: [
        "GrowthRunOutcome",
        "StackFolderError",
        "StackOutcome",
        "credentials_block_reference",
        "growth_run_from_file",
        "is_made_up_run_name",
        "stack_from_file",
        "stacks_from_folder",
    ],
    atomscale_sandbox: [
        "DEFAULT_ORGANISATION",
        "ApiKeyGrant",
        "FaultConfig",
        "FaultKind",
        "HttpParser",
        "SandboxApp",
        "SandboxConfig",
        "SandboxHandle",
        "StatsSnapshot",
        "available_http_parsers",
        "create_app",
        "run_sandbox",
    ],
}
PACKAGES = list(DOCUMENTED)
OURS = ("prefect_atomscale", "atomscale_sandbox")


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_all_is_exactly_the_documented_names(package: types.ModuleType) -> None:
    assert sorted(package.__all__) == sorted(DOCUMENTED[package])
    assert len(set(package.__all__)) == len(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_no_public_name_outside_all(package: types.ModuleType) -> None:
    # As httpx's test_exported_members: whatever a user can reach without an underscore
    # is in __all__; modules (the private ones, `flows`) and `annotations` aside.
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in {"annotations", "TYPE_CHECKING", "Any"}
    }
    assert public <= set(package.__all__)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_implementation_modules_are_private(package: types.ModuleType) -> None:
    folder = Path(inspect.getfile(package)).parent
    children = [p.stem for p in folder.iterdir() if p.suffix == ".py" or p.is_dir()]
    public = {c for c in children if not c.startswith("_") and c != "__pycache__"}
    assert public <= {"flows"}, f"public implementation modules in {package.__name__}: {public}"


def _classes_in(hint: Any) -> Iterator[type]:
    """Every class a type hint names, through unions, generics and Literal."""
    if isinstance(hint, type):
        yield hint
    for argument in typing.get_args(hint):
        yield from _classes_in(argument)
    origin = typing.get_origin(hint)
    if isinstance(origin, type):
        yield origin


def _signatures(value: Any) -> Iterator[tuple[str, Any]]:
    """The callables a public name offers: itself, or a class's public methods."""
    function = getattr(value, "fn", value)  # a Prefect task or flow wraps its function
    if inspect.isclass(value):
        for name, member in vars(value).items():
            if name == "__init__" or not name.startswith("_"):
                member = getattr(member, "__func__", member)
                if inspect.isfunction(member) and member.__module__.startswith(OURS):
                    yield f"{value.__name__}.{name}", member
    elif inspect.isfunction(function):
        yield getattr(value, "__name__", str(value)), function


@pytest.mark.parametrize("package", [prefect_atomscale, prefect_atomscale.flows])
def test_every_type_a_public_signature_uses_is_exported(package: types.ModuleType) -> None:
    exported = {id(getattr(module, name)) for module in PACKAGES for name in module.__all__}
    missing = set()
    for name in package.__all__:
        for where, function in _signatures(getattr(package, name)):
            hints = typing.get_type_hints(function, include_extras=False)
            for hint in hints.values():
                for cls in _classes_in(hint):
                    if cls.__module__.startswith(OURS) and id(cls) not in exported:
                        missing.add(f"{where} uses {cls.__module__}.{cls.__qualname__}")
    assert not missing, "\n".join(sorted(missing))
