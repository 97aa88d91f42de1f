"""Report a finished stack: the flow that `prefect.yaml`'s `on-stack-completed` deployment runs.

An Automation-style trigger in `prefect.yaml` starts it whenever a flow emits
`atomscale.stack.completed` (`create_layers` does, once every layer of a stack is in
place), with the event's `atomscale.sample-id` label as `sample_id` and the saved
`atomscale` credentials block. It reads the stack back from the account and publishes
the layer table and stack picture as artifacts of its own run. From a shell:

    python flows/stack_report.py --block atomscale 42
"""

from __future__ import annotations

import argparse
from typing import cast

from prefect import flow

from prefect_atomscale import (
    AtomscaleCredentials,
    TargetMaterial,
    get_stack,
    publish_stack_artifacts,
)

__all__ = ["main", "stack_report"]


def _layers(count: int) -> str:
    return f"{count} layer" if count == 1 else f"{count} layers"


@flow(name="stack-report", log_prints=True)
def stack_report(credentials: AtomscaleCredentials, sample_id: int) -> int:
    """Read one target material's stack and publish it as artifacts.

    Args:
        credentials: The account (a deployment passes a reference to a saved block).
        sample_id: The target material whose stack is complete.

    Returns:
        The number of layers in the stack.
    """
    layers = get_stack(credentials, sample_id)
    publish_stack_artifacts(
        TargetMaterial(sample_id=sample_id),
        layers,
        summary=f"{_layers(len(layers))}, reported when the stack was completed",
    )
    print(f"Target material {sample_id}: {_layers(len(layers))}.")
    return len(layers)


def main(argv: list[str] | None = None) -> int:
    """Report one target material's stack, with a saved credentials block."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sample_id", type=int)
    parser.add_argument("--block", default="atomscale", help="AtomscaleCredentials block name")
    args = parser.parse_args(argv)
    credentials = cast(AtomscaleCredentials, AtomscaleCredentials.load(args.block))
    stack_report(credentials, args.sample_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
