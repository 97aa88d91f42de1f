"""Time the unit test lane, `python scripts/dev.py test --fast`, as a developer runs it.

Each run is a new process from the shell's point of view: interpreter start, the
virtual environment check, pytest's start, collection and the tests themselves. The
load average is printed beside each run, since the machine may be shared.

    python benchmarks/test_lanes.py            # 3 runs
    python benchmarks/test_lanes.py --repeat 5

The whole suite's time (figure 26's second half) comes from CI's own command on a
clean clone, which also creates the virtual environment:
`git clone -q . /tmp/ci && cd /tmp/ci && HOME=$(mktemp -d) bash -c 'time .ci/run'`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run() -> tuple[float, str]:
    """Wall seconds of one `dev.py test --fast -q`, and pytest's closing line."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "scripts/dev.py", "test", "--fast", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    closing = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    if done.returncode != 0:
        sys.exit(f"the unit lane failed (exit {done.returncode}): {closing}")
    return seconds, closing


def main() -> int:
    """Time `--repeat` runs after one that is not counted; print each and the median."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    args = parser.parse_args()
    one_run()  # a first run may set up .venv or write bytecode: not counted
    walls: list[float] = []
    for index in range(args.repeat):
        load = os.getloadavg()[0]
        seconds, closing = one_run()
        walls.append(seconds)
        pytest_seconds = re.search(r"in ([0-9.]+)s", closing)
        print(
            f"run {index + 1}: {seconds:.1f} s wall, pytest "
            f"{pytest_seconds.group(1) if pytest_seconds else '?'} s, load before {load:.1f}: "
            f"{closing.strip('= ')}"
        )
    print(f"median {statistics.median(walls):.1f} s wall ({min(walls):.1f}-{max(walls):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
