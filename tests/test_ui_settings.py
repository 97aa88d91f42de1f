"""The Prefect UI as the README and the guides describe it.

The README's recipe for a Prefect server on another port gives a UI that reaches its
API: `prefect server start --port N` serves the UI on port N, but the UI's own settings
still point its browser requests at port 4200 unless `PREFECT_UI_API_URL` says
otherwise: the UI then shows "Oops. Something went wrong". The README gives the
setting; a test starts a real server (UI enabled) exactly as the README says and reads
the settings the UI loads first.

What the docs say each of Prefect's two UIs (the classic one at `/`, the new one at
`/v2`) does with our schemas, read from the UI code Prefect ships, so that a Prefect
whose UIs do otherwise fails here rather than leaving the docs wrong: only the new UI
has a password input for a field (`format: password`); both run forms select a block
default given by `block_document_id` and know no `block_document_slug`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import prefect
import pytest
from helpers import clean_environment, free_port

ROOT = Path(__file__).resolve().parent.parent
UI_CODE = Path(prefect.__file__).resolve().parent / "server"
CLASSIC_UI, NEW_UI = UI_CODE / "ui" / "assets", UI_CODE / "ui-v2" / "assets"
# An input of type password, as the bundled (minified) code writes one, fixed or
# toggled by a show button: type:`password`, or type:r?`text`:`password`.
PASSWORD_INPUT = re.compile(r"type:\s*(?:\w+\s*\?\s*[`'\"]text[`'\"]\s*:\s*)?[`'\"]password[`'\"]")


def _scripts(folder: Path) -> dict[str, str]:
    """Each JavaScript file of a bundled UI, by name."""
    scripts = {path.name: path.read_text(errors="replace") for path in folder.glob("*.js")}
    assert scripts, f"no UI code in {folder}"
    return scripts


def test_only_the_new_ui_shows_a_password_field_as_a_password_input() -> None:
    classic, new = _scripts(CLASSIC_UI), _scripts(NEW_UI)
    # The classic UI's one password input is its login page's.
    assert [name for name, code in classic.items() if PASSWORD_INPUT.search(code)] == [
        name for name in classic if name.startswith("Unauthenticated")
    ]
    # Its schema form's string field: dates, JSON, a choice, else a text area.
    string_field = re.search(
        r"__name:`SchemaFormPropertyString`.*?__name:", "".join(classic.values()), re.DOTALL
    )
    assert string_field is not None
    assert "json-string" in string_field.group() and "password" not in string_field.group()
    # The new UI's schema form gives a `format: password` string its password input.
    assert any(
        "format===`password`" in code and PASSWORD_INPUT.search(code) for code in new.values()
    )


def test_both_run_forms_know_a_block_default_by_id_only() -> None:
    for folder in (CLASSIC_UI, NEW_UI):
        code = "".join(_scripts(folder).values())
        assert "block_document_id" in code, folder
        assert "block_document_slug" not in code, folder


def _readme_recipe() -> tuple[str, str]:
    """The variable assignment and the server command in README's "another port" block."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"```bash\n(export PREFECT_UI_API_URL=[^\n]+)\n(prefect server start[^\n]*)\n```", readme
    )
    assert block is not None, "README lost its PREFECT_UI_API_URL recipe"
    return block.group(1), block.group(2)


@pytest.mark.processes
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
