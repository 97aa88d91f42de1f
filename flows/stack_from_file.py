"""Create target materials from stack files, from a shell: the sandbox by default.

The flows themselves are in the package (`prefect_atomscale.flows`); this script runs
them. With no block given it starts the bundled sandbox and creates every example in
`flows/examples/`:

    python flows/stack_from_file.py                      # all of flows/examples
    python flows/stack_from_file.py --block atomscale path/to/stack.yaml
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from prefect_atomscale import AtomscaleCredentials
from prefect_atomscale.flows import stack_from_file, stacks_from_folder

__all__ = ["main", "stack_from_file", "stacks_from_folder"]

EXAMPLES = Path(__file__).resolve().parent / "examples"


@contextmanager
def _credentials_for_demo(block: str | None) -> Iterator[str]:
    """A saved block's name: the one given, or a new one for a sandbox started here."""
    if block:
        yield block
        return
    from atomscale_sandbox import run_sandbox

    with run_sandbox() as sandbox:
        name = f"atomscale-sandbox-{uuid.uuid4().hex[:8]}"
        AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url).save(name)
        print(f"Started the Atomscale sandbox at {sandbox.url}; saved it as block {name!r}.")
        yield name


def main(argv: list[str] | None = None) -> int:
    """Create the stacks of a folder or of given files, against the sandbox by default."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="stack files or folders (default: the examples)")
    parser.add_argument("--block", metavar="NAME", help="use a saved AtomscaleCredentials block")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with _credentials_for_demo(args.block) as block:
        credentials = cast(AtomscaleCredentials, AtomscaleCredentials.load(block))
        for target in args.paths or [str(EXAMPLES)]:
            if Path(target).is_dir():
                for outcome in stacks_from_folder(target, credentials):
                    print(f"{Path(outcome.path).name}: {outcome.status} {outcome.message}")
            else:
                outcome = stack_from_file(target, credentials)
                print(f"{Path(outcome.path).name}: {outcome.status} {outcome.message}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
