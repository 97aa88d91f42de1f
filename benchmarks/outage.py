"""An outage during a folder run: seconds from the start to the failed run, 9 files.

    python benchmarks/outage.py [--files 9] [--repeat 1]

Two ways the service is down, each with `--files` new stack files in one folder run
(`stacks_from_folder`), the sandbox in this process:

1. writes refused: the listing answers, every POST gets a 503 (the service went down
   after the listing, or its write path is down);
2. stopped: nothing listens at the service's address (connection refused).

For each: the seconds until the run ends (failed), the `stack-from-file` subflows it
ran, and the requests the sandbox received. The task retries (0.5, 1, 2 and 4 s) are
part of the time, as in production. Rerun on an older checkout to compare (the script
passes the block by name to flows that take `credentials_block`).
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import inspect
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

from atomscale_sandbox import SandboxConfig, SandboxHandle, run_sandbox
from prefect_atomscale import AtomscaleCredentials
from prefect_atomscale.flows import stacks_from_folder

KEY = "outage-benchmark-key-0123456789"


def _folder(root: Path, files: int) -> Path:
    folder = root / f"stacks-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    for index in range(files):
        (folder / f"stack_{index:02d}.yaml").write_text(
            f"name: outage {uuid.uuid4().hex[:8]}\nsubstrate: SrTiO3\nlayers:\n"
            "  - {composition: SrRuO3, orientation: '001'}\n"
            "  - {composition: BaTiO3, orientation: '001'}\n"
        )
    return folder


def _credentials_argument(url: str) -> Any:
    """The saved block itself, or its name for flows that still take `credentials_block`."""
    name = f"outage-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=KEY, base_url=url, timeout=5.0).save(name)
    if "credentials_block" in inspect.signature(stacks_from_folder.fn).parameters:
        return name
    return AtomscaleCredentials.load(name)


def _subflows(flow_run_id: Any) -> int:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
    return len(runs)


@contextmanager
def _writes_refused() -> Iterator[tuple[str, SandboxHandle | None]]:
    with run_sandbox(SandboxConfig(api_keys={KEY: "lab-outage"})) as sandbox:
        sandbox.faults.set(rate=1.0, kinds={"503"})  # every POST and PATCH
        sandbox.reset_stats()
        yield sandbox.url, sandbox


@contextmanager
def _stopped() -> Iterator[tuple[str, SandboxHandle | None]]:
    with run_sandbox(SandboxConfig(api_keys={KEY: "lab-outage"})) as sandbox:
        url = sandbox.url
    yield url, None  # the port is closed: connection refused


def _measure(files: int, scenario: Any) -> tuple[float, int, int, str]:
    with TemporaryDirectory() as root, scenario() as (url, sandbox):
        folder = _folder(Path(root), files)
        credentials = _credentials_argument(url)
        started = time.perf_counter()
        state = stacks_from_folder(str(folder), credentials, return_state=True)
        seconds = time.perf_counter() - started
        requests = sandbox.stats.requests if sandbox is not None else 0
        subflows = _subflows(state.state_details.flow_run_id)
        return seconds, subflows, requests, state.name or ""


def main() -> int:
    """Measure both scenarios and print one row each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=9, help="stack files in the folder")
    _common.add_repeat_argument(parser, 1)
    args = parser.parse_args()
    print(_common.machine_line())
    with _common.prefect_server() as server:
        print(f"Prefect server started in {server.startup_seconds:.1f} s (not counted).")
        rows = []
        for label, scenario in (("writes refused (503)", _writes_refused), ("stopped", _stopped)):
            samples = [_measure(args.files, scenario) for _ in range(args.repeat)]
            seconds = _common.median([sample[0] for sample in samples])
            _, subflows, requests, state = samples[-1]
            rows.append(
                [label, f"{args.files}", f"{seconds:.1f}", str(subflows), str(requests), state]
            )
        _common.print_table(
            f"Folder run of {args.files} new stack files with the service down "
            f"(median of {args.repeat})",
            ["service", "files", "seconds to failed run", "subflows run", "requests", "state"],
            rows,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
