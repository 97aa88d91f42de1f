"""Run one stack flow in its own process, for the kill and double-start tests.

    python scripts/run_stack.py --block NAME --sample-name NAME --layers 40 [--pace 0.05]

With `--pace`, layers are created one at a time with that pause between them, so a
test can kill the process while the stack is half built; without it, all layers are
submitted at once, as the example flow does.
"""

from __future__ import annotations

import argparse
import time

from prefect import flow

from prefect_atomscale import (
    AtomscaleCredentials,
    Layer,
    create_layer,
    create_target_material,
)

FORMULAS = ("BaTiO3", "SrTiO3")


@flow(name="stack-driver")
def stack(block: str, sample_name: str, layers: int, pace: float) -> list[Layer]:
    """Create a target material and `layers` alternating BaTiO3/SrTiO3 layers."""
    credentials = AtomscaleCredentials.load(block)
    material = create_target_material(credentials, sample_name, "SrTiO3")
    arguments = [
        {
            "layer_id": position,
            "sample_id": material.sample_id,
            "composition_string": FORMULAS[position % 2],
            "orientation": "001",
        }
        for position in range(1, layers + 1)
    ]
    if pace:
        created = []
        for layer in arguments:
            created.append(create_layer(credentials, **layer))
            time.sleep(pace)
        return created
    futures = [create_layer.submit(credentials, **layer) for layer in arguments]
    return [future.result() for future in futures]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--block", required=True)
    parser.add_argument("--sample-name", required=True)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--pace", type=float, default=0.0)
    args = parser.parse_args()
    built = stack(args.block, args.sample_name, args.layers, args.pace)
    print(f"built {len(built)} layers on target material {built[0].sample_id}")
