"""Soak prefect-atomscale with random adversary schedules: `--seed START --count N`.

Runs the random schedules of seeds START..START+N-1 (the same generator, runner and
checker as `tests/adversary/test_random_schedules.py`) against one sandbox and one
temporary Prefect server, and prints one line per violation, each with the seed to
replay it with (`python -m pytest tests/adversary/test_random_schedules.py
--adversary-seed SEED` prints the whole schedule), then a timing line and the summary
line `N schedules, V violations (seeds START..END)`. Exits 1 on any violation (a
harness error, e.g. a writer process that crashed, counts as one).

```bash
python benchmarks/adversary_soak.py --seed 1 --count 50
```
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _isolate() -> None:
    """A throw-away PREFECT_HOME, and quiet logs; before Prefect is imported."""
    home = tempfile.mkdtemp(prefix="prefect-atomscale-soak-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["PREFECT_HOME"] = home
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # Task failures (conflicts the schedules provoke) log at ERROR: not what a soak shows.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    for name in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT", "PREFECT_API_URL"):
        os.environ.pop(name, None)
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]


def main(argv: list[str] | None = None) -> int:
    """Run the soak; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--count", type=int, default=20, help="schedules to run (default 20)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    _isolate()

    import prefect.settings
    from adversary._generator import generate
    from adversary._report import REPLAY_RANDOM, judge
    from adversary._runner import Runner
    from adversary._session import environment, machine_lock_dir
    from prefect.testing.utilities import prefect_test_harness

    machine_lock_dir()
    first, last = args.seed, args.seed + args.count - 1
    violations = failed = 0
    started = time.monotonic()
    with prefect_test_harness(server_startup_timeout=180):
        api_url = str(prefect.settings.PREFECT_API_URL.value())
        with environment(api_url=api_url) as env:
            runner = Runner(env)
            for seed in range(first, last + 1):
                record = runner.run(generate(seed))
                verdict = judge(runner, record)
                problems = verdict.violations + [f"harness: {h}" for h in verdict.harness]
                for problem in problems:
                    line = f"seed {seed}: {problem} [replay: {REPLAY_RANDOM.format(seed=seed)}]"
                    print(env.redact(line), flush=True)
                violations += len(problems)
                failed += bool(problems)
    elapsed = time.monotonic() - started
    print(
        f"{args.count} schedules in {elapsed:.0f} s ({60 * args.count / elapsed:.1f} per "
        f"minute, Prefect server start-up included); {failed} seeds failed"
    )
    print(f"{args.count} schedules, {violations} violations (seeds {first}..{last})")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
