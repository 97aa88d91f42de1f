"""Run one benchmark on an earlier commit and on the working tree, taking turns, in one run.

Why: a change to the write path must show that it does not make the figures worse, and
two runs hours apart on a shared 2-core machine differ by up to a quarter. This script
extracts the earlier commit into a temporary folder (`git archive`, nothing in the
repository changes), then runs the same benchmark script of each tree in turn, `--rounds`
times, each in a fresh process with that tree first on `PYTHONPATH`, and prints every
output under its label. The figures are read from those outputs.

    python benchmarks/before_after.py --before 9180dbc -- write_path.py --layers 100 --repeat 2
    python benchmarks/before_after.py --before 9180dbc -- bulk.py --layers 500 --repeat 3

The benchmark's own arguments follow `--`; it runs from its tree's root, with this
interpreter (the project's `.venv` has everything both trees need).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _extract(commit: str, into: Path) -> Path:
    """The tree of `commit`, written into `into` with `git archive`."""
    archive = into / "tree.tar"
    with archive.open("wb") as out:
        git = ["git", "archive", commit]  # git from PATH, as a developer runs it
        subprocess.run(git, cwd=ROOT, stdout=out, check=True)
    tree = into / commit
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    archive.unlink()
    return tree


def _run(label: str, tree: Path, script: str, arguments: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    print(f"===== {label}: {tree.name if label == 'before' else 'working tree'} =====", flush=True)
    code = subprocess.call(
        [sys.executable, str(tree / "benchmarks" / script), *arguments], cwd=tree, env=env
    )
    print(f"===== {label}: exit {code}, {time.monotonic() - started:.0f} s =====", flush=True)
    return code


def main() -> int:
    """Parse the arguments and run the benchmark on both trees, taking turns."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit, e.g. 9180dbc")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tree (default 2)")
    parser.add_argument("benchmark", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS]")
    options = parser.parse_args()
    command = [part for part in options.benchmark if part != "--"]
    if not command:
        parser.error("name the benchmark script after --, e.g. -- write_path.py")
    script, arguments = command[0], command[1:]
    with tempfile.TemporaryDirectory(prefix="before-after-") as folder:
        before = _extract(options.before, Path(folder))
        failures = 0
        for round_number in range(options.rounds):
            # Alternate which goes first, so neither always meets a warmer machine.
            order = [("before", before), ("after", ROOT)]
            for label, tree in order if round_number % 2 == 0 else order[::-1]:
                failures += _run(label, tree, script, arguments) != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
