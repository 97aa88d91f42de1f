"""Shared fixtures: an isolated Prefect home and server, and a sandbox over real HTTP.

PREFECT_HOME must point at a fresh directory before Prefect is imported, so that cached
results and cache records of one test session never leak into another or into the
user's own ~/.prefect.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

PREFECT_HOME = Path(tempfile.mkdtemp(prefix="prefect-atomscale-tests-"))
atexit.register(shutil.rmtree, PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
for _name in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from atomscale_sandbox import (  # noqa: E402
    ApiKeyGrant,
    FaultConfig,
    SandboxConfig,
    SandboxHandle,
    run_sandbox,
)
from prefect_atomscale import AtomscaleCredentials  # noqa: E402

KEY_A = "test-key-lab-a-0123456789"
KEY_A2 = "test-key-lab-a-second-key"
KEY_B = "test-key-lab-b-9876543210"
KEY_READ_ONLY = "test-key-lab-a-read-only"


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server and database for the whole session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxHandle]:
    """One sandbox for the session: lab A (two keys, one read-only extra) and lab B."""
    config = SandboxConfig(
        api_keys={
            KEY_A: "lab-a",
            KEY_A2: "lab-a",
            KEY_B: "lab-b",
            KEY_READ_ONLY: ApiKeyGrant("lab-a", read_only=True),
        }
    )
    with run_sandbox(config) as server:
        yield server


@pytest.fixture(autouse=True)
def _calm_sandbox(request: pytest.FixtureRequest) -> Iterator[None]:
    """Start every test that uses the sandbox with no faults and fresh counters."""
    if "sandbox" not in request.fixturenames:
        yield
        return
    server: SandboxHandle = request.getfixturevalue("sandbox")
    # Every setting a test may change, back to a new FaultConfig's value.
    default = FaultConfig()
    calm = {
        "kinds": default.kinds,
        "seed": default.seed,
        "paths": default.paths,
        "methods": default.methods,
        "retry_after_seconds": default.retry_after_seconds,
        "slow_seconds": default.slow_seconds,
        "late_commit_seconds": default.late_commit_seconds,
    }
    server.faults.clear()
    server.faults.set(**calm)
    server.reset_stats()
    yield
    server.faults.clear()
    server.faults.set(**calm)


@pytest.fixture
def credentials(sandbox: SandboxHandle) -> AtomscaleCredentials:
    """Credentials for lab A on the sandbox.

    The timeout is long enough that a slow answer on a busy machine is never an extra
    attempt; tests that need the client to give up make credentials of their own.
    """
    return AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=10.0)


@pytest.fixture
def unique() -> str:
    """A name no other test uses, so cache entries of other tests never apply."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the loop Prefect itself uses."""
    return "asyncio"
