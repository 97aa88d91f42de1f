"""A local stand-in for the Atomscale target-materials API, for demos and tests.

A real HTTP server (FastAPI served by uvicorn) that speaks the same routes, bodies and
error envelope as api.atomscale.ai, keeps its records in SQLite, and can inject the
faults a client must survive: 5xx and 429 replies, reset connections, and replies lost
after the write committed. It imports nothing from Prefect or from the integration
(`prefect_atomscale`), so a client bug cannot hide behind a sandbox that shares its
code; the only code it shares is the formula reader in `atomscale_chemistry`.

Example:
    ```python
    import httpx

    from atomscale_sandbox import SandboxConfig, run_sandbox

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

From a shell: `python -m atomscale_sandbox --help`.
"""

from atomscale_sandbox._app import SandboxApp, create_app
from atomscale_sandbox._config import DEFAULT_ORGANISATION, ApiKeyGrant, SandboxConfig
from atomscale_sandbox._connections import HttpParser, available_http_parsers
from atomscale_sandbox._faults import FaultConfig, FaultKind
from atomscale_sandbox._server import SandboxHandle, run_sandbox
from atomscale_sandbox._stats import StatsSnapshot

# Run (`run_sandbox`, `SandboxHandle`, `create_app`), configure (`SandboxConfig`,
# `ApiKeyGrant`, `HttpParser`) and inject faults (`FaultConfig`, `FaultKind`); the rest
# is the server's own business and stays in the private modules.
__all__ = [
    "DEFAULT_ORGANISATION",
    "ApiKeyGrant",
    "FaultConfig",
    "FaultKind",
    "HttpParser",
    "SandboxApp",
    "SandboxConfig",
    "SandboxHandle",
    "StatsSnapshot",
    "available_http_parsers",
    "create_app",
    "run_sandbox",
]
