"""Serve the stack-folder flow from this process on a cron schedule: no work pool needed.

The same flow `prefect.yaml` deploys (`prefect_atomscale.flows.stacks_from_folder`),
served with `flow.serve`: this process registers the deployment with the Prefect
server, then waits and runs its scheduled runs, and runs started from the UI, in
subprocesses until Ctrl-C (which pauses the schedule). Needs PREFECT_API_URL pointing
at a Prefect server, and the AtomscaleCredentials block saved there first (README,
"Save your credentials once"): the deployment refers to it by its id.

    python flows/serve.py                                  # flows/examples, 06:00 UTC daily
    python flows/serve.py --folder /data/stacks --block atomscale --cron "30 5 * * 1-5"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect_atomscale import AtomscaleConfigurationError
from prefect_atomscale.flows import credentials_block_reference, stacks_from_folder

DEFAULT_BLOCK = "atomscale"
DEFAULT_CRON = "0 6 * * *"
DEFAULT_NAME = "served"


def main(argv: list[str] | None = None) -> int:
    """Serve `stacks_from_folder` until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--folder",
        default=str(Path(__file__).resolve().parent / "examples"),
        help="folder of stack files (default: flows/examples)",
    )
    parser.add_argument(
        "--block", default=DEFAULT_BLOCK, help="AtomscaleCredentials block name (saved first)"
    )
    parser.add_argument("--cron", default=DEFAULT_CRON, help="cron schedule, in UTC")
    parser.add_argument("--name", default=DEFAULT_NAME, help="deployment name")
    args = parser.parse_args(argv)
    try:
        # The block by id, as the run form's picker shows it selected (by name, the
        # picker starts empty). Its fields are read when each run starts, so editing
        # the block later needs no new deployment.
        credentials = credentials_block_reference(args.block)["credentials"]
    except AtomscaleConfigurationError as exc:
        print(f"flows/serve.py: {exc}", file=sys.stderr)
        return 2
    stacks_from_folder.serve(
        name=args.name,
        cron=args.cron,
        # Absolute, so the runs find the folder whatever directory they start in.
        parameters={"folder": str(Path(args.folder).resolve()), "credentials": credentials},
        description="Create the target material of each new stack file in the folder.",
        tags=["atomscale"],
        # The server cannot check a `$ref` to this block (prefect.yaml says why); the
        # flow checks its parameters when each run starts.
        enforce_parameter_schema=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
