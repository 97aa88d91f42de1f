"""The plumbing the screenshot scripts share: a throwaway Prefect server, headless Chromium.

`prefect_server(work)` starts `prefect server start` on a free loopback port, with its
home under `work` and telemetry off, waits until it answers and stops it (with its
children) on the way out; `started()` does the same for any other process, such as a
worker. `screenshot()` saves one page as headless Chromium renders it, and
`artifacts_of()` finds the artifact pages of a flow run to point it at. Used by
`screenshot_artifacts.py` and `screenshot_ui.py`, beside this file.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFECT = [sys.executable, "-m", "prefect"]


def find_chromium() -> str:
    """The Chromium to take screenshots with; the script stops, saying how to install it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("Chromium is not installed; on Debian: apt-get install -y chromium")
    return chromium


@contextmanager
def work_folder() -> Iterator[Path]:
    """A temporary folder for the servers' homes, logs and stack files; removed at the end."""
    work = Path(tempfile.mkdtemp(prefix="atomscale-ui-work-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def without_prefect_settings() -> dict[str, str]:
    """This environment without `PREFECT_*`: a started process gets only the settings given."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and its children."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def started(
    command: list[str], *, env: dict[str, str], log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session, its output in `log`; stopped with its children at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        _stop(process)


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"prefect server start exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:  # noqa: S310 - loopback
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"The Prefect server at {url} did not start within 120 s; see {log}.")


@contextmanager
def prefect_server(work: Path) -> Iterator[str]:
    """A Prefect server on a free loopback port, home `work/server`; yields its base URL.

    The UI is served at the base URL (the newer one under `/v2`), the API under `/api`.
    """
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    (work / "server").mkdir(exist_ok=True)
    env = without_prefect_settings() | {
        "PREFECT_HOME": str(work / "server"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{base}/api",  # the UI calls the API here, not on port 4200
    }
    command = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log = work / "server.log"
    with started(command, env=env, log=log) as server:
        _wait_healthy(f"{base}/api", server, log)
        yield base


def screenshot(
    chromium: str, url: str, out: Path, profile: Path, flags: list[str] | None = None
) -> None:
    """One page, rendered with 10 s of virtual time so the app's requests finish."""
    shutil.rmtree(profile, ignore_errors=True)
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "--virtual-time-budget=10000",
            f"--screenshot={out}",
            *(flags or []),
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"Saved {out}  ({url})")


def artifacts_of(flow_run_id: object) -> dict[str, object]:
    """A flow run's artifacts by type (table, markdown): their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {str(artifact.type): artifact.id for artifact in artifacts}
