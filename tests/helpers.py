"""Small helpers shared by the test modules: counting at the sandbox, running scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from atomscale_sandbox import SandboxHandle

LAYERS = "/target-materials/layers/"
TARGET_MATERIALS = "/target-materials/"


def requests_to(sandbox: SandboxHandle, method: str, route: str) -> int:
    """How many requests the sandbox received for one route since the last reset."""
    return sandbox.stats.by_route.get((method, route), 0)


def layer_rows(sandbox: SandboxHandle, api_key: str, sample_id: int) -> list[dict[str, Any]]:
    """The stored layers of one target material, read back over HTTP as a client would."""
    reply = httpx.get(f"{sandbox.url}{TARGET_MATERIALS}", headers={"X-API-KEY": api_key})
    reply.raise_for_status()
    return [row for row in reply.json() if row["sample_id"] == sample_id]


ROOT = Path(__file__).resolve().parent.parent


def run_as_newcomer(script: str) -> subprocess.CompletedProcess[str]:
    """Run `python <script>` from the repository root as a newcomer would.

    The environment has no Prefect, Atomscale or key settings, and HOME and
    PREFECT_HOME are a new empty directory: no server, no block, no profile.

    Returns:
        The finished process, with its output as text.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "AS_", "ATOMSCALE_"))
    }
    env["HOME"] = env["PREFECT_HOME"] = tempfile.mkdtemp(prefix="newcomer-home-")
    return subprocess.run(
        [sys.executable, script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
