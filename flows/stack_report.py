"""Report a finished stack: the flow that `prefect.yaml`'s `on-stack-completed` deployment runs.

The Automation "Report each completed stack", which `prefect deploy` creates from the
deployment's trigger in `prefect.yaml`, starts it whenever a flow emits
`atomscale.stack.completed` (`create_layers` does, once every layer of a stack is in
place), with the event's `atomscale.sample-id` label as `sample_id`, the payload's
`sample_name` and `substrate`, and the saved `atomscale` credentials block. It reads the
stack back from the account and publishes the layer table and stack picture as
artifacts of its own run, named `stack-report-s<sample_id>`. Started by hand (or by an
event that did not know the name or substrate), it reads them from the listing too.
From a shell:

    python flows/stack_report.py --block atomscale 42
"""

from __future__ import annotations

import argparse
from typing import cast

from prefect import flow
from prefect.runtime import flow_run

from prefect_atomscale import (
    AtomscaleCredentials,
    TargetMaterial,
    find_target_materials,
    get_stack,
    publish_stack_artifacts,
)
from prefect_atomscale.flows import is_made_up_run_name

__all__ = ["main", "stack_report"]


def _layers(count: int) -> str:
    return f"{count} layer" if count == 1 else f"{count} layers"


def _run_name() -> str:
    """`stack-report-s<id>` instead of a made-up name; a name a person typed is kept."""
    current = flow_run.get_name()
    if not is_made_up_run_name(current):
        return str(current)
    return f"stack-report-s{flow_run.parameters.get('sample_id')}"


def _material(
    credentials: AtomscaleCredentials,
    sample_id: int,
    sample_name: str | None,
    substrate: str | None,
) -> TargetMaterial:
    """The name and substrate the picture is titled with: given, else read from the listing."""
    if sample_name and substrate:
        return TargetMaterial(sample_id=sample_id, sample_name=sample_name, substrate=substrate)
    listed = next(
        (found for found in find_target_materials(credentials) if found.sample_id == sample_id),
        None,
    )
    return TargetMaterial(
        sample_id=sample_id,
        sample_name=(listed.sample_name if listed else None) or sample_name,
        substrate=(listed.substrate if listed else None) or substrate,
    )


@flow(name="stack-report", flow_run_name=_run_name, log_prints=True)
def stack_report(
    credentials: AtomscaleCredentials,
    sample_id: int,
    sample_name: str | None = None,
    substrate: str | None = None,
    url: str | None = None,
) -> int:
    """Read one target material's stack and publish it as artifacts.

    Args:
        credentials: The account (a deployment passes a reference to a saved block).
        sample_id: The target material whose stack is complete.
        sample_name: Its name, as the event says; left out, read from the listing.
        substrate: Its substrate, as the event says; left out, read from the listing.
        url: Its "Open in Atomscale" link, as the event says (a guess from the base
            URL); left out, the artifacts have none.

    Returns:
        The number of layers in the stack.
    """
    layers = get_stack(credentials, sample_id)
    material = _material(credentials, sample_id, sample_name, substrate)
    # A template of a missing field renders as "None"; that is no link.
    link = url if url and url.startswith(("http://", "https://")) else None
    publish_stack_artifacts(material, layers, summary="read back from the account", url=link)
    name = material.sample_name or "(no name listed)"
    on = material.substrate or "(no substrate listed)"
    print(f"{name} (target material {sample_id}) on {on}: {_layers(len(layers))}.")
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
