"""Shared fixtures: an isolated Prefect home and server, a sandbox over real HTTP, lanes.

PREFECT_HOME must point at a fresh directory before Prefect is imported, so that cached
results and cache records of one test session never leak into another or into the
user's own ~/.prefect.

Lanes: every test is marked by what it needs (`integration`, `processes`, `redis`, see
`pytest_collection_modifyitems`); the unit lane is what carries none of the lane marks
(`python scripts/dev.py test --fast`). Prefect's test server starts only for an
`integration` test; any other test runs with no Prefect API at all, so that one which
talks to Prefect fails at once ("No Prefect API URL provided") instead of starting a
server of its own.
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
os.environ.pop("PREFECT_API_URL", None)
for _name in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT"):
    os.environ.pop(_name, None)

import prefect.context  # noqa: E402
import pytest  # noqa: E402
from prefect.settings import (  # noqa: E402
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
    Settings,
)

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


# --- Lanes --------------------------------------------------------------------------------
#
# A test's lanes follow from the fixtures it uses (directly or through other fixtures);
# a module whose tests start something without such a fixture says so with `pytestmark`.

LANE_MARKS = ("integration", "processes", "redis", "sdk", "adversary")
LANE_FIXTURES = {
    "integration": {"sandbox", "credentials", "prefect_server", "adversary_env"},
    "processes": {"newcomer_run", "newcomer_runs", "redis_server", "adversary_env"},
    "redis": {"redis_server"},
}
# The sandbox's own tests (tests/sandbox) never need Prefect: the sandbox imports none of it.
NO_PREFECT_DIRECTORY = Path(__file__).resolve().parent / "sandbox"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with the lanes its fixtures imply.

    The order stays as collected, also on xdist workers (each runs its tests in that
    order): handing the process tests out first made tests/test_dask_cluster.py run
    before tests/test_caching.py and tests/test_dask.py on one worker, and its Dask
    workers' Redis lock settings, left in the machine's lock directory, failed them.
    """
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for mark, fixtures in LANE_FIXTURES.items():
            if used & fixtures:
                item.add_marker(mark)
        if item.get_closest_marker(NEWCOMER_MARK):
            item.add_marker("processes")


def _needs_prefect(item: pytest.Item) -> bool:
    return (
        item.get_closest_marker("integration") is not None
        and NO_PREFECT_DIRECTORY not in Path(str(item.path)).parents
    )


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server and database, started for the first test that needs it."""
    # Imported here: it costs seconds that a unit-lane run never needs to spend.
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _prefect_api(request: pytest.FixtureRequest) -> Iterator[None]:
    """An `integration` test gets the session's Prefect server; any other test no API at all.

    Without an API URL and with ephemeral servers off, Prefect's client raises "No
    Prefect API URL provided": a unit test that needs Prefect fails loudly, in a full
    run too, where the session's server is already up. Processes a test starts keep
    their environment as it was.
    """
    if _needs_prefect(request.node):
        request.getfixturevalue("prefect_server")
        yield
        return
    current = prefect.context.get_settings_context()
    with prefect.context.SettingsContext(profile=current.profile, settings=_without_api(current)):
        yield


_WITHOUT_API: dict[int, tuple[object, Settings]] = {}


def _without_api(context: prefect.context.SettingsContext) -> Settings:
    """These settings with no API URL and no ephemeral server, made once per settings object.

    Both are needed: a new PREFECT_HOME's default profile allows an ephemeral server,
    which Prefect's client would start (15 s) when it finds no API URL.

    `temporary_settings` would build them anew for every test: ~30 ms each, as much as
    a unit test itself takes.
    """
    key = id(context.settings)
    if key not in _WITHOUT_API:
        # The settings object is kept too, so that its id is never reused for another.
        derived = context.settings.copy_with_update(
            updates={PREFECT_SERVER_EPHEMERAL_ENABLED: False}, restore_defaults={PREFECT_API_URL}
        )
        _WITHOUT_API[key] = (context.settings, derived)
    return _WITHOUT_API[key][1]


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
        self._deadlines: dict[str, float] = {}
        self._done: dict[str, subprocess.CompletedProcess[str]] = {}

    def result(self, script: str) -> subprocess.CompletedProcess[str]:
        """The finished run of `script`, started with the others if none has started yet."""
        if not self._running:
            # Each xdist worker collects every test but runs only some: there, start
            # only the script asked for (other workers run theirs at the same time).
            wanted = [script] if os.environ.get("PYTEST_XDIST_WORKER") else self._scripts
            for name in wanted:
                self._start(name)
        if script not in self._running:
            self._start(script)
        if script not in self._done:
            timeout = max(1.0, self._deadlines[script] - time.monotonic())
            self._done[script] = finish(self._running[script], timeout=timeout)
        return self._done[script]

    def _start(self, script: str) -> None:
        self._deadlines[script] = time.monotonic() + NEWCOMER_SECONDS
        self._running[script] = start_as_newcomer(script)

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
