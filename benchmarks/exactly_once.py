"""Exactly-once under faults, kills and double starts, at full size, as a table.

    python benchmarks/exactly_once.py [--stacks 3] [--layers 40] [--rate 0.2] [--seed 2026]

Three scenarios against the sandbox (in this process, so its database can be counted
directly), each ending with the rows the sandbox stores:

1. fault storm: `--rate` of all writes faulted with every fault kind, `--stacks` target
   materials of `--layers` layers each through the example flow; a run that fails
   because a layer ran out of retries is simply run again, as a user would;
2. kill: a flow process creating `--layers` layers is SIGKILLed halfway, then re-run;
3. double start: the same flow started twice at the same moment.

"missing" and "duplicates" count layer positions with no row or with more than one.
The CI-sized versions of these are in tests/test_exactly_once.py.
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import prefect.settings

from atomscale_sandbox import SandboxConfig, SandboxHandle, run_sandbox
from flows.build_stack import LayerSpec, build_stack
from prefect_atomscale import AtomscaleCredentials, AtomscaleError

KEY = "exactly-once-benchmark-key-0123"
FAULTS = [
    "503",
    "429",
    "reset",
    "502_html",
    "drop_after_commit",
    "500_after_commit",
    "slow_after_commit",
]


def _damage(sandbox: SandboxHandle, sample_id: int, layers: int) -> tuple[int, int]:
    """(missing positions, duplicate rows) of one target material."""
    counts = Counter(row["layer_id"] for row in sandbox.layer_rows(sample_id=sample_id))
    missing = sum(1 for position in range(1, layers + 1) if counts[position] == 0)
    return missing, sum(n - 1 for n in counts.values() if n > 1)


def fault_storm(
    sandbox: SandboxHandle, stacks: int, layers: int, rate: float, seed: int
) -> dict[str, Any]:
    """Scenario 1: stacks through the example flow while writes fail at `rate`."""
    credentials = AtomscaleCredentials(api_key=KEY, base_url=sandbox.url, timeout=1.0)
    spec = [
        LayerSpec(composition=f, orientation="001") for f in ["BaTiO3", "SrTiO3"] * (layers // 2)
    ]
    sandbox.faults.set(rate=rate, kinds=FAULTS, seed=seed, slow_seconds=1.5, retry_after_seconds=1)
    runs, failures, sample_ids = 0, [], []
    started = time.perf_counter()
    for number in range(stacks):
        name = f"storm-{uuid.uuid4().hex[:8]}-{number}"
        for _ in range(10):
            runs += 1
            try:
                sample_ids.append(
                    build_stack(credentials, name, "SrTiO3", spec).target_material.sample_id
                )
                break
            except AtomscaleError as exc:
                failures.append(str(exc).split(":")[0])
    elapsed = time.perf_counter() - started
    injected = dict(sandbox.stats.faults)
    sandbox.faults.clear()
    missing = duplicates = 0
    for sample_id in sample_ids:
        m, d = _damage(sandbox, sample_id, len(spec))
        missing, duplicates = missing + m, duplicates + d
    names = Counter(row["sample_name"] for row in sandbox.target_materials())
    return {
        "scenario": f"fault storm {rate:.0%}: {stacks} x {len(spec)} layers",
        "runs": runs,
        "faults injected": sum(injected.values()),
        "missing": missing + (stacks - len(sample_ids)) * len(spec),
        "duplicates": duplicates,
        "notes": f"{len(failures)} run(s) ran out of retries and were re-run; "
        f"{sum(n - 1 for n in names.values() if n > 1)} extra empty target material(s); "
        f"{elapsed:.1f} s",
    }


def _driver(block: str, name: str, layers: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "scripts/run_stack.py",
        "--block",
        block,
        "--sample-name",
        name,
        "--layers",
        str(layers),
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value())}


def _sample_of(sandbox: SandboxHandle, name: str) -> list[int]:
    return [row["sample_id"] for row in sandbox.target_materials() if row["sample_name"] == name]


def kill_and_rerun(sandbox: SandboxHandle, block: str, layers: int) -> dict[str, Any]:
    """Scenario 2: SIGKILL a flow process halfway through a stack, then run it again."""
    name = f"kill-{uuid.uuid4().hex[:8]}"
    run = subprocess.Popen(
        _driver(block, name, layers, "--pace", "0.05"),
        cwd=_common.REPO_ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while (
        not (ids := _sample_of(sandbox, name))
        or sandbox.count_layers(sample_id=ids[0]) < layers // 2
    ):
        if run.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    at_kill = sandbox.count_layers(sample_id=ids[0]) if ids else 0
    rerun = subprocess.run(
        _driver(block, name, layers),
        cwd=_common.REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    ids = _sample_of(sandbox, name)
    missing, duplicates = _damage(sandbox, ids[0], layers)
    return {
        "scenario": f"SIGKILL halfway, then re-run: {layers} layers",
        "runs": 2,
        "faults injected": 0,
        "missing": missing,
        "duplicates": duplicates,
        "notes": f"killed with {at_kill}/{layers} layers written; re-run exit {rerun.returncode}; "
        f"{len(ids)} target material(s)",
    }


def double_start(sandbox: SandboxHandle, block: str, layers: int) -> dict[str, Any]:
    """Scenario 3: start the same flow twice at the same moment."""
    name = f"twice-{uuid.uuid4().hex[:8]}"
    runs = [
        subprocess.Popen(
            _driver(block, name, layers),
            cwd=_common.REPO_ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    codes = [run.wait(timeout=600) for run in runs]
    ids = _sample_of(sandbox, name)
    missing, duplicates = _damage(sandbox, ids[0], layers)
    return {
        "scenario": f"same flow started twice at once: {layers} layers",
        "runs": 2,
        "faults injected": 0,
        "missing": missing,
        "duplicates": duplicates,
        "notes": f"exit codes {codes}; {len(ids)} target material(s)",
    }


def main() -> int:
    """Run the three scenarios and print the table; exit 1 if any row lost or doubled."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stacks", type=int, default=3)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    with _common.prefect_server(), run_sandbox(SandboxConfig(api_keys={KEY: "bench"})) as sandbox:
        block = f"exactly-once-{uuid.uuid4().hex[:8]}"
        AtomscaleCredentials(api_key=KEY, base_url=sandbox.url).save(block)
        rows = [
            fault_storm(sandbox, args.stacks, args.layers, args.rate, args.seed),
            kill_and_rerun(sandbox, block, args.layers),
            double_start(sandbox, block, args.layers),
        ]
    columns = ["scenario", "runs", "faults injected", "missing", "duplicates", "notes"]
    _common.print_table(
        "Exactly once (rows counted in the sandbox's database)",
        columns,
        [[row[c] for c in columns] for row in rows],
        notes=[_common.machine_line()],
    )
    return 0 if all(row["missing"] == 0 and row["duplicates"] == 0 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
