"""Shared fixtures: an isolated Prefect home and server, and a sandbox over real HTTP.

PREFECT_HOME must point at a fresh directory before Prefect is imported, so that cached
results and cache records of one test session never leak into another or into the
user's own ~/.prefect.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

PREFECT_HOME = Path(tempfile.mkdtemp(prefix="prefect-atomscale-tests-"))
atexit.register(shutil.rmtree, PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(PREFECT_HOME)
# This machine's lock directory, shared by every process the tests start on it (however
# they set PREFECT_HOME); set before the package is imported, in case it reads it then.
os.environ["PREFECT_ATOMSCALE_LOCK_DIR"] = str(PREFECT_HOME / "machine-locks")
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

from helpers import RedisServer, Started, finish, start_as_newcomer  # noqa: E402  # isort: skip

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
    """One sandbox for the session: lab A (a key, a colleague's key, a read-only key), lab B."""
    config = SandboxConfig(
        api_keys={
            KEY_A: "lab-a",
            KEY_A2: ApiKeyGrant("lab-a", user="a-colleague"),
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


# --- Scripts run as a newcomer runs them ------------------------------------------------
#
# Each such run starts Prefect's temporary server in an empty home, most of its 15-20 s.
# The runs are independent, so all the session needs are started together the first time
# one is asked for, and each test then checks the output of its own.

NEWCOMER_MARK = "newcomer_script"
NEWCOMER_SECONDS = 240


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{NEWCOMER_MARK}(path): the test checks `python <path>` run as a newcomer would; "
        "the `newcomer_run` fixture gives its finished run",
    )


class NewcomerRuns:
    """The newcomer runs of a session: started together on first use, each waited for once."""

    def __init__(self, scripts: list[str]) -> None:
        self._scripts = scripts
        self._running: dict[str, Started] = {}
        self._done: dict[str, subprocess.CompletedProcess[str]] = {}
        self._deadline = 0.0

    def result(self, script: str) -> subprocess.CompletedProcess[str]:
        """The finished run of `script`, started with the others if none has started yet."""
        if not self._running:
            self._deadline = time.monotonic() + NEWCOMER_SECONDS
            for name in self._scripts:
                self._running[name] = start_as_newcomer(name)
        if script not in self._done:
            timeout = max(1.0, self._deadline - time.monotonic())
            self._done[script] = finish(self._running[script], timeout=timeout)
        return self._done[script]

    def stop(self) -> None:
        """Kill the runs nobody waited for (the session ended before their tests ran)."""
        for name, started in self._running.items():
            if name not in self._done:
                started.process.kill()
                finish(started, timeout=30)


@pytest.fixture(scope="session")
def newcomer_runs(request: pytest.FixtureRequest) -> Iterator[NewcomerRuns]:
    """Every script that a selected test marks with `newcomer_script`, run at once."""
    scripts = {
        str(marker.args[0])
        for item in request.session.items
        for marker in item.iter_markers(NEWCOMER_MARK)
    }
    runs = NewcomerRuns(sorted(scripts))
    yield runs
    runs.stop()


@pytest.fixture
def newcomer_run(
    request: pytest.FixtureRequest, newcomer_runs: NewcomerRuns
) -> subprocess.CompletedProcess[str]:
    """The finished newcomer run of the script this test's `newcomer_script` mark names."""
    marker = request.node.get_closest_marker(NEWCOMER_MARK)
    assert marker is not None, f"mark the test with @pytest.mark.{NEWCOMER_MARK}(path)"
    return newcomer_runs.result(str(marker.args[0]))


@pytest.fixture(autouse=True)
def _lock_directory_of_its_own_with_redis(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A test on a lock server runs as a machine of its own: a lock directory of its own.

    A machine's processes must share one lock configuration (the configuration guard of
    `_locks` refuses a writer whose settings differ from a live process that wrote in
    the last lease): this test process wrote with local locks moments ago.
    """
    if "redis_server" in request.fixturenames:
        monkeypatch.setenv("PREFECT_ATOMSCALE_LOCK_DIR", str(tmp_path_factory.mktemp("locks")))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis server for the tests of locks shared by many machines."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
