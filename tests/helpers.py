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
