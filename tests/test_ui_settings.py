"""The README's recipe for a Prefect server on another port gives a UI that reaches its API.

`prefect server start --port N` serves the UI on port N, but the UI's own settings
still point its browser requests at port 4200 unless `PREFECT_UI_API_URL` says
otherwise: the UI then shows "Oops. Something went wrong". The README gives the
setting; this test starts a real server (UI enabled) exactly as the README says and
reads the settings the UI loads first.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
from helpers import clean_environment, free_port

ROOT = Path(__file__).resolve().parent.parent


def _readme_recipe() -> tuple[str, str]:
    """The variable assignment and the server command in README's "another port" block."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"```bash\n(export PREFECT_UI_API_URL=[^\n]+)\n(prefect server start[^\n]*)\n```", readme
    )
    assert block is not None, "README lost its PREFECT_UI_API_URL recipe"
    return block.group(1), block.group(2)


def test_the_readme_recipe_points_the_ui_at_the_servers_own_port(tmp_path: Path) -> None:
    export, command = _readme_recipe()
    assert "4300" in export and "--port 4300" in command, (export, command)
    # The README's port, moved to a free one: the same recipe with another number.
    port = str(free_port())
    name, value = export.removeprefix("export ").split("=", 1)
    env = clean_environment() | {
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        name: value.replace("4300", port),
    }
    arguments = command.replace("4300", port).split()[1:]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", *arguments],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        settings = httpx.get(f"{base}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"{base}/api"
        # ... and the UI's API answers there, as the browser will ask it.
        assert httpx.get(f"{settings['api_url']}/health", timeout=5).status_code == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
