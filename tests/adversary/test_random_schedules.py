"""Random adversary schedules until a time budget is spent; one failing seed fails the test.

Seeds: `--adversary-seed N` replays schedule N (and, unless ADVERSARY_BUDGET_SECONDS is
set, only it); else the run starts at ADVERSARY_SEED, else at a random seed, and goes
on with the next seeds while the budget (ADVERSARY_BUDGET_SECONDS, default 180 s)
lasts. The seeds run are printed. A failure prints the one command that replays its
seed, the violations, and the schedule.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from adversary._generator import generate
from adversary._report import REPLAY_RANDOM, explain, judge
from adversary._runner import Runner

pytestmark = pytest.mark.adversary

DEFAULT_BUDGET_SECONDS = 180.0
# Past the budget, the last schedule may still need its phases (a few minutes at most).
_TIMEOUT = float(os.environ.get("ADVERSARY_BUDGET_SECONDS") or DEFAULT_BUDGET_SECONDS) + 600


def _say(request: pytest.FixtureRequest, text: str) -> None:
    """Print past pytest's capture, so that the seeds show in every run."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)
    else:
        print(text)


@pytest.mark.timeout(_TIMEOUT)
def test_random_schedules_keep_the_promise(request: pytest.FixtureRequest, runner: Runner) -> None:
    given = request.config.getoption("--adversary-seed", default=None)
    budget_text = os.environ.get("ADVERSARY_BUDGET_SECONDS")
    if given is not None:
        seed = int(given)
        budget = float(budget_text) if budget_text else 0.0
    else:
        from_env = os.environ.get("ADVERSARY_SEED")
        # Not for secrets: which schedules to run.
        seed = int(from_env) if from_env else random.randrange(1, 1_000_000)
        budget = float(budget_text) if budget_text else DEFAULT_BUDGET_SECONDS
    first, started = seed, time.monotonic()
    _say(request, f"adversary: seeds from {first}, budget {budget:g} s")
    while True:
        record = runner.run(generate(seed))
        verdict = judge(runner, record)
        if not verdict.ok:
            _say(request, f"adversary: seed {seed} failed")
            pytest.fail(
                explain(runner.env, record, verdict, REPLAY_RANDOM.format(seed=seed)),
                pytrace=False,
            )
        elapsed = time.monotonic() - started
        if elapsed >= budget:
            break
        seed += 1
    count = seed - first + 1
    _say(
        request,
        f"adversary: {count} schedules kept the promise (seeds {first}..{seed}) in "
        f"{elapsed:.0f} s: {60 * count / max(elapsed, 1e-9):.1f} per minute",
    )
