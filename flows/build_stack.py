"""Create a target material and its layer stack on Atomscale, one Prefect task per layer.

As a script, with no configuration, it starts the bundled sandbox on a free local port
and builds a demo heterostructure there:

    python flows/build_stack.py

Against a saved `AtomscaleCredentials` block (the real service, or any sandbox):

    python flows/build_stack.py --block atomscale

In your own code, call `build_stack(credentials, sample_name=..., substrate=...,
layers=[...])` from a flow or on its own. Layer 1 is the layer grown first, on the
substrate.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

if __package__ in (None, ""):
    # Run as `python flows/build_stack.py`: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect_atomscale import (
    AtomscaleCredentials,
    Layer,
    TargetMaterial,
    create_layer,
    create_target_material,
)

__all__ = ["BuiltStack", "LayerSpec", "build_stack", "format_stack"]


class LayerSpec(BaseModel):
    """One layer of a stack to create; its position is its place in the list."""

    composition: str = Field(description="Chemical formula, e.g. BaTiO3 or (La0.7Sr0.3)MnO3.")
    orientation: str | None = Field(default=None, description="Miller indices, e.g. 001.")
    space_group: str | None = Field(default=None, description="Hermann-Mauguin symbol.")
    mp_id: str | None = Field(default=None, description="Materials Project id, e.g. mp-5020.")


class BuiltStack(BaseModel):
    """What `build_stack` created: the target material and its layers, bottom first."""

    target_material: TargetMaterial
    layers: list[Layer]
    reused: int = Field(default=0, description="Records taken from the cache, not created.")


DEMO_SAMPLE_NAME = "LSMO/BTO/SRO tunnel junction (demo)"
DEMO_SUBSTRATE = "SrTiO3"
DEMO_LAYERS = [
    LayerSpec(composition="SrRuO3", orientation="(001)"),
    LayerSpec(composition="BaTiO3", orientation="(001)"),
    LayerSpec(composition="(La0.7Sr0.3)MnO3", orientation="(001)"),
]


@flow(name="build-stack")
def build_stack(
    credentials: AtomscaleCredentials,
    sample_name: str = DEMO_SAMPLE_NAME,
    substrate: str = DEMO_SUBSTRATE,
    layers: list[LayerSpec] = DEMO_LAYERS,
    sample_metadata: dict[str, Any] | None = None,
) -> BuiltStack:
    """Create a target material, then one `create_layer` task per layer, run concurrently.

    Args:
        credentials: The Atomscale account.
        sample_name: Name of the target material.
        substrate: Its substrate.
        layers: The stack, first-grown layer first.
        sample_metadata: Free-form JSON metadata for the target material.

    Returns:
        The target material and its layers in stack order.
    """
    logger = get_run_logger()
    material_state = create_target_material(
        credentials, sample_name, substrate, sample_metadata, return_state=True
    )
    material: TargetMaterial = material_state.result()
    futures = [
        create_layer.submit(
            credentials,
            layer_id=position,
            sample_id=material.sample_id,
            composition_string=spec.composition,
            orientation=spec.orientation,
            space_group=spec.space_group,
            mp_id=spec.mp_id,
        )
        for position, spec in enumerate(layers, start=1)
    ]
    created = [future.result() for future in futures]
    reused = sum(state.name == "Cached" for state in [material_state, *(f.state for f in futures)])
    for layer in created:
        logger.info(
            "Layer %s: %s %s (record %s)",
            layer.layer_id,
            layer.composition_string,
            layer.orientation or "",
            layer.id,
        )
    logger.info(
        "Target material %s %r on %s has %s layers (%s records reused from the cache).",
        material.sample_id,
        material.sample_name,
        material.substrate,
        len(created),
        reused,
    )
    return BuiltStack(target_material=material, layers=created, reused=reused)


def format_stack(stack: BuiltStack) -> str:
    """Render a stack as text, top layer first and the substrate at the bottom.

    Args:
        stack: What `build_stack` returned.

    Returns:
        A few lines of text for a terminal.
    """
    material = stack.target_material
    rows = [
        (
            f"L{layer.layer_id}",
            layer.composition_string or "?",
            layer.orientation or "-",
            layer.space_group or "-",
            layer.mp_id or "-",
            f"record {layer.id}",
        )
        for layer in reversed(stack.layers)
    ]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(6)]
    lines = [
        f"Target material {material.sample_id}: {material.sample_name!r} on {material.substrate}"
        f" ({len(stack.layers)} layers, {stack.reused} reused from cache)",
    ]
    lines += [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(f"  {'=' * max(sum(widths) + 10, 20)}  substrate {material.substrate}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the demo: against the sandbox by default, or a saved block with `--block`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", metavar="NAME", help="use a saved AtomscaleCredentials block")
    parser.add_argument(
        "--sample-name", default=DEMO_SAMPLE_NAME, help="name of the target material to create"
    )
    args = parser.parse_args(argv)
    # With no PREFECT_API_URL, Prefect starts a temporary server in a subprocess; offline
    # (as in the demo) its telemetry heartbeat fails and logs a traceback. It inherits
    # this environment, so switch telemetry off unless the user chose otherwise.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with ExitStack() as stack:
        if args.block:
            credentials = AtomscaleCredentials.load(args.block)
            print(f"Using the AtomscaleCredentials block {args.block!r}.")
        else:
            from prefect_atomscale.sandbox import run_sandbox

            sandbox = stack.enter_context(run_sandbox())
            credentials = AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url)
            print(f"Started the Atomscale sandbox at {sandbox.url} (data kept until exit).")
        built = build_stack(credentials, sample_name=args.sample_name)
    print(format_stack(built))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
