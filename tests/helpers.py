"""Small helpers shared by the test modules: counting requests and rows at the sandbox."""

from __future__ import annotations

from typing import Any

import httpx

from prefect_atomscale.sandbox import SandboxHandle

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
