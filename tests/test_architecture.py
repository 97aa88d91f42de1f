"""The layers of docs/architecture.md, and what each may import, read from the source.

credentials -> client -> tasks -> flows, on a base of pure request and reply code, with
`atomscale_sandbox` beside them and `atomscale_chemistry` below both. A module may import
its own layer and the layers below it, never one above; only the layers that need Prefect
import it. Imports inside functions count too: the source is read, not run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Layer of each integration module, bottom first (a package's modules share its layer).
LAYERS: dict[str, int] = {
    # 0 base: errors, models, request bodies, matching, stack files; no Prefect, no I/O
    "_exceptions": 0,
    "_models": 0,
    "_listing": 0,
    "_composition": 0,
    "_orientation": 0,
    "_payloads": 0,
    "_reconcile": 0,
    "_growth_runs": 0,
    "_stacks": 0,
    "_web_app": 0,
    # 1 credentials: the Prefect block
    "_credentials": 1,
    # 2 client: HTTP, no Prefect beyond the block it is built from
    "_client": 2,
    "_pool": 2,
    # 3 task support: retries, caching, the lock layer, views, ownership, the write protocol
    "_retries": 3,
    "_caching": 3,
    "_locks": 3,
    "_views": 3,
    "_ownership": 3,
    "_identities": 3,
    "_protocol": 3,
    "_events": 3,
    "_task_support": 3,
    # 4 tasks and artifacts
    "_tasks": 4,
    "_bulk": 4,
    "_artifacts": 4,
    "_read_tasks": 4,
    "_growth_run_tasks": 4,
    # 5 flows
    "flows": 5,
}
USES_PREFECT = {1, 3, 4, 5}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import _module` imports that module, not the package's names.
            modules = [a.name for a in node.names if a.name.startswith("_")]
            names.update(f"{node.module}.{name}" for name in modules)
            if len(modules) < len(node.names):
                names.add(node.module)
    return names


def _layer_of(module: str) -> int | None:
    """The layer of `prefect_atomscale.X...`, None for the package root."""
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None


MODULES = sorted(
    p
    for p in (ROOT / "prefect_atomscale").rglob("*.py")
    if p.name != "__init__.py" or p.parent.name != "prefect_atomscale"
)


def test_every_module_has_a_layer() -> None:
    top = {p.relative_to(ROOT / "prefect_atomscale").parts[0].removesuffix(".py") for p in MODULES}
    assert top == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_its_layer_and_those_below(path: Path) -> None:
    own = LAYERS[path.relative_to(ROOT / "prefect_atomscale").parts[0].removesuffix(".py")]
    for name in _imports(path):
        top = name.split(".")[0]
        assert top != "atomscale_sandbox", f"{path.name} imports the sandbox ({name})"
        if top == "prefect":
            assert own in USES_PREFECT, f"{path.name} (layer {own}) imports Prefect ({name})"
        if top == "prefect_atomscale":
            layer = _layer_of(name)
            assert layer is not None, (
                f"{path.name} imports the package root; import {name}'s module"
            )
            assert layer <= own, f"{path.name} (layer {own}) imports {name} (layer {layer})"


def test_the_chemistry_imports_nothing_of_ours_or_prefects() -> None:
    for path in (ROOT / "atomscale_chemistry").glob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in {"prefect", "prefect_atomscale", "atomscale_sandbox"}


@pytest.mark.parametrize("folder", ["flows", "scripts", "benchmarks"])
def test_the_repositorys_own_code_uses_only_public_names(folder: str) -> None:
    # What the examples, scripts and benchmarks need, a user can import too.
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] in {"prefect_atomscale", "atomscale_sandbox", "atomscale_chemistry"}:
                private = [part for part in parts[1:] if part.startswith("_")]
                assert not private, f"{path.relative_to(ROOT)} imports the private {name}"
