"""Create a target material and its layer stack on Atomscale, one Prefect task per layer.

As a script, with no configuration, it starts the bundled sandbox on a free local port
and builds a demo heterostructure there:

    python flows/build_stack.py

Against a saved `AtomscaleCredentials` block (the real service, or any sandbox):

    python flows/build_stack.py --block atomscale

In your own code, call `build_stack(credentials, sample_name=..., substrate=...,
layers=[...])` from a flow or on its own. Layer 1 is the layer grown first, on the
substrate. Each run logs one line per layer and a summary, and publishes two artifacts
for the Prefect UI: a table of the layers and a picture of the stack.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import wait
from pydantic import BaseModel, Field

from prefect_atomscale import (
    AtomscaleCredentials,
    Layer,
    LayerSpec,
    TargetMaterial,
    create_layer,
    create_target_material,
    publish_stack_artifacts,
)

__all__ = ["BuiltStack", "LayerSpec", "build_stack", "create_layer_tasks", "format_stack"]


class BuiltStack(BaseModel):
    """What `build_stack` created: the target material and its layers, bottom first."""

    target_material: TargetMaterial
    layers: list[Layer]
    reused: int = Field(default=0, description="Records taken from the cache, not created.")
    existing: int = Field(
        default=0, description="Layers found already at the service, so not written again."
    )
    summary: str = Field(default="", description="What the run did, e.g. '40 created now'.")


DEMO_SAMPLE_NAME = "LSMO/BTO/SRO tunnel junction (demo)"
DEMO_SUBSTRATE = "SrTiO3"
DEMO_LAYERS = [
    LayerSpec(composition="SrRuO3", orientation="(001)"),
    LayerSpec(composition="BaTiO3", orientation="(001)"),
    LayerSpec(composition="(La0.7Sr0.3)MnO3", orientation="(001)"),
]


def create_layer_tasks(
    credentials: AtomscaleCredentials,
    material: TargetMaterial,
    layers: Sequence[LayerSpec],
    *,
    existing: Mapping[int, Layer] | None = None,
    material_cached: bool = False,
) -> BuiltStack:
    """Create every layer of `material` not in `existing`, one task each; call inside a flow.

    All layer tasks run concurrently and are all waited for, so one failure does not
    hide the others: each failed layer is logged with its reason, then the first
    failure is raised with its own type (e.g. `AtomscaleValidationError`).

    Args:
        credentials: The Atomscale account.
        material: The target material the layers belong to.
        layers: The whole stack, first-grown first; position = place in the list.
        existing: Layers already at the service, by position; not written again.
        material_cached: Whether `material` itself came from the cache (for the count).

    Returns:
        The target material and all its layers in stack order.
    """
    logger = get_run_logger()
    existing = dict(existing or {})
    # When part of the stack is already there, the service was just asked what is
    # missing; a cache entry saying otherwise (from another run of this worker) must
    # not stop the write.
    layer_task = create_layer.with_options(refresh_cache=True) if existing else create_layer
    futures = {
        position: layer_task.submit(
            credentials,
            layer_id=position,
            sample_id=material.sample_id,
            composition_string=spec.composition,
            orientation=spec.orientation,
            element_dict=spec.element_dict,
            space_group=spec.space_group,
            mp_id=spec.mp_id,
        )
        for position, spec in enumerate(layers, start=1)
        if position not in existing
    }
    wait(list(futures.values()))
    created: dict[int, Layer] = {}
    failed: list[tuple[int, Any]] = []
    from_cache = int(material_cached)
    for position, future in futures.items():
        state = future.state
        if state.is_completed():
            created[position] = state.result()
            from_cache += state.name == "Cached"
        else:
            failed.append((position, state))
    for position, spec in enumerate(layers, start=1):
        what = " ".join(filter(None, [spec.composition, spec.orientation]))
        if position in existing or position in created:
            layer = existing.get(position) or created[position]
            how = (
                "already there"
                if position in existing
                else "from the cache"
                if futures[position].state.name == "Cached"
                else "created"
            )
            logger.info(
                "L%s %s: record %s (space group %s, %s), %s.",
                position,
                what,
                layer.id,
                layer.space_group or "not matched",
                layer.mp_id or "no Materials Project id",
                how,
            )
    for position, state in failed:
        logger.error("L%s failed: %s", position, state.message)
    if failed:
        logger.error(
            "Target material %s %r: %s of %s layers failed (%s); the other %s are in place. "
            "Fix the cause and run again: layers already created are not written twice.",
            material.sample_id,
            material.sample_name,
            len(failed),
            len(layers),
            ", ".join(f"L{position}" for position, _ in failed),
            len(layers) - len(failed),
        )
        failed[0][1].result()  # raises the first failure, with its own type
    ordered = [
        existing.get(position) or created[position] for position in range(1, len(layers) + 1)
    ]
    layers_cached = from_cache - int(material_cached)
    done = [f"{len(created) - layers_cached} created now"]
    if layers_cached:
        done.append(f"{layers_cached} from the cache")
    if existing:
        done.append(f"{len(existing)} already there")
    built = BuiltStack(
        target_material=material,
        layers=ordered,
        reused=from_cache,
        existing=len(existing),
        summary=", ".join(done),
    )
    logger.info(
        "Target material %s %r on %s has %s layers: %s.",
        material.sample_id,
        material.sample_name,
        material.substrate,
        len(ordered),
        built.summary,
    )
    return built


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
    material_state = create_target_material(
        credentials, sample_name, substrate, sample_metadata, return_state=True
    )
    material: TargetMaterial = material_state.result()
    built = create_layer_tasks(
        credentials, material, layers, material_cached=material_state.name == "Cached"
    )
    publish_stack_artifacts(material, built.layers, summary=built.summary)
    return built


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
        f" ({len(stack.layers)} layer{'' if len(stack.layers) == 1 else 's'},"
        f" {stack.reused} reused from cache)",
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
    # Its default 20 s start-up limit is too short on a busy or small machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    with ExitStack() as stack:
        if args.block:
            credentials = AtomscaleCredentials.load(args.block)
            print(f"Using the AtomscaleCredentials block {args.block!r}.")
        else:
            from atomscale_sandbox import run_sandbox

            sandbox = stack.enter_context(run_sandbox())
            credentials = AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url)
            print(f"Started the Atomscale sandbox at {sandbox.url} (data kept until exit).")
        built = build_stack(credentials, sample_name=args.sample_name)
    print(format_stack(built))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
