"""Fixtures of the adversary tests: one environment per session, and `--adversary-seed`.

The machine-wide lock directory (`PREFECT_ATOMSCALE_LOCK_DIR`) is set by tests/conftest.py
before the package is imported (here again, should it not be): every process of
"machine 0" (this one and the writer processes it starts) gets it, whatever its
PREFECT_HOME.
"""

from __future__ import annotations

from collections.abc import Iterator

import prefect.settings
import pytest

from adversary._runner import Runner
from adversary._session import Environment, environment, machine_lock_dir

machine_lock_dir()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--adversary-seed",
        type=int,
        default=None,
        help="replay the random adversary schedule of this seed "
        "(tests/adversary/test_random_schedules.py)",
    )


@pytest.fixture(scope="session")
def adversary_env(prefect_server: None) -> Iterator[Environment]:
    """A sandbox where Ann (three keys) and Bob (one) work in one organisation."""
    with environment(api_url=str(prefect.settings.PREFECT_API_URL.value())) as env:
        yield env


@pytest.fixture(scope="session")
def runner(adversary_env: Environment) -> Runner:
    """Runs schedules in the session's environment."""
    return Runner(adversary_env)
