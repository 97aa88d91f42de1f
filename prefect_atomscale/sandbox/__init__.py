"""A local stand-in for the Atomscale target-materials API, for demos and tests.

A real HTTP server (FastAPI served by uvicorn) that speaks the same routes, bodies and
error envelope as api.atomscale.ai, keeps its records in SQLite, and can inject the
faults a client must survive: 5xx and 429 replies, reset connections, and replies lost
after the write committed. It imports nothing from the client side of this package, so
a client bug cannot hide behind a sandbox that shares its code.

Example:
    ```python
    import httpx

    from prefect_atomscale.sandbox import SandboxConfig, run_sandbox

    with run_sandbox(SandboxConfig(api_keys={"key-a": "lab-a"})) as sandbox:
        headers = {"X-API-KEY": "key-a"}
        material = httpx.post(
            f"{sandbox.url}/target-materials/",
            headers=headers,
            json={"sample": {"sample_name": "BTO on STO", "substrate": "SrTiO3"}},
        ).json()
        layer = {"layer_id": 1, "sample_id": material["sample_id"], "composition_string": "BaTiO3"}
        reply = httpx.post(f"{sandbox.url}/target-materials/layers/", headers=headers, json=layer)
        print(reply.json())
        sandbox.faults.queue(["drop_after_commit"])  # the next write commits, then no reply
    ```

From a shell: `python -m prefect_atomscale.sandbox --help`.
"""

from prefect_atomscale.sandbox.app import SandboxApp, create_app
from prefect_atomscale.sandbox.config import DEFAULT_ORGANISATION, ApiKeyGrant, SandboxConfig
from prefect_atomscale.sandbox.connections import (
    HTTP_PARSERS,
    ConnectionRegistry,
    HttpParser,
    available_http_parsers,
)
from prefect_atomscale.sandbox.faults import FaultConfig, FaultInjectionMiddleware, FaultKind
from prefect_atomscale.sandbox.materials import MATERIALS, KnownMaterial, match_material
from prefect_atomscale.sandbox.server import SandboxHandle, run_sandbox
from prefect_atomscale.sandbox.stats import (
    UNROUTED,
    RequestStats,
    RequestStatsMiddleware,
    StatsSnapshot,
)

__all__ = [
    "DEFAULT_ORGANISATION",
    "HTTP_PARSERS",
    "MATERIALS",
    "UNROUTED",
    "ApiKeyGrant",
    "ConnectionRegistry",
    "FaultConfig",
    "FaultInjectionMiddleware",
    "FaultKind",
    "HttpParser",
    "KnownMaterial",
    "RequestStats",
    "RequestStatsMiddleware",
    "SandboxApp",
    "SandboxConfig",
    "SandboxHandle",
    "StatsSnapshot",
    "available_http_parsers",
    "create_app",
    "match_material",
    "run_sandbox",
]
