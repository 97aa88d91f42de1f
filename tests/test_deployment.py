"""Scheduled deployments end to end: a real Prefect server, `prefect.yaml`, a process worker,
and `flows/serve.py`, each running the stack-folder flow against the sandbox over HTTP.

Both store the credentials block by id, looked up when they deploy (the form the run
form's picker shows selected), so both refuse, saying so, a block that is not saved.

Every subprocess gets its own PREFECT_HOME (the worker's differs from the deployer's, as
on a real worker machine) and is stopped in `finally`; every wait has a deadline, so a
broken setup fails in minutes instead of hanging CI. The slow start-ups overlap: the
Prefect server is shared by the module, `flows/serve.py` starts as soon as the server
answers (while the worker test runs), and the worker starts while `prefect deploy` runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from helpers import LAYERS, TARGET_MATERIALS, posts, requests_to
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from atomscale_sandbox import SandboxConfig, SandboxHandle, run_sandbox
from prefect_atomscale import AtomscaleCredentials
from prefect_atomscale._stacks import STACK_FILE_SUFFIXES, load_stack_file

pytestmark = pytest.mark.processes  # every test starts servers or scripts

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "flows" / "examples"
EXAMPLE_FILES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in STACK_FILE_SUFFIXES)
# Target material name -> layers, for every example.
EXPECTED = {
    spec.name: len(spec.layer_specs()) for spec in (load_stack_file(p) for p in EXAMPLE_FILES)
}
POOL = "atomscale-process"  # as in prefect.yaml
BLOCK_TYPE = "atomscale-credentials"  # the slug of AtomscaleCredentials blocks
# Every deployment prefect.yaml defines, as <flow name>/<deployment name>.
YAML_DEPLOYMENTS = (
    "stacks-from-folder/nightly",
    "stack-from-file/on-demand",
    "growth-run-from-file/growth-run",
    "stack-report/on-stack-completed",
)
E2E_KEY = "test-key-e2e-deployments-0123"
SERVER_START_SECONDS = 120
RUN_SECONDS = 120
PREFECT = [sys.executable, "-m", "prefect"]
SERVE = [sys.executable, "flows/serve.py"]
T = TypeVar("T")


@dataclass
class PrefectServer:
    """A `prefect server start` subprocess."""

    api_url: str
    log: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _environment(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without Prefect or Atomscale settings, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "AS_", "ATOMSCALE_"))
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # A session of its own, so that stopping it also stops the processes it starts.
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _wait_for(what: str, check: Callable[[], T | None], seconds: float, log: Path) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {seconds} s. Log:\n{_tail(log)}")


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _run(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a command to its end; its exit status and its output (stdout, then stderr)."""
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


def _prefect(args: list[str], env: dict[str, str]) -> str:
    status, output = _run([*PREFECT, *args], env)
    assert status == 0, f"prefect {' '.join(args)} failed:\n{output}"
    return output


def _not_saved_message(block: str, server: PrefectServer) -> str:
    """How `credentials_block_reference` says that the block is not saved yet."""
    return (
        f"No AtomscaleCredentials block named {block!r} is saved on the Prefect server at "
        f"{server.api_url}. Save it first"
    )


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real Prefect server on a free loopback port, with its own home and database."""
    port = _free_port()
    home = tmp_path_factory.mktemp("prefect-server")
    api_url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    process = _start(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        _environment(home, PREFECT_UI_API_URL=api_url),
        log,
    )
    try:

        def healthy() -> bool | None:
            if process.poll() is not None:
                raise AssertionError(f"prefect server start exited:\n{_tail(log)}")
            try:
                return httpx.get(f"{api_url}/health", timeout=2).status_code == 200 or None
            except httpx.HTTPError:
                return None

        _wait_for("The Prefect server answering /api/health", healthy, SERVER_START_SECONDS, log)
        yield PrefectServer(api_url=api_url, log=log)
    finally:
        _stop(process)


@dataclass
class Served:
    """`flows/serve.py` serving the folder flow as deployment `stacks-from-folder/<name>`."""

    process: subprocess.Popen[bytes]
    log: Path
    folder: Path
    block: str
    block_id: str
    name: str


@pytest.fixture(scope="module")
def served(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`flows/serve.py`, started once the server answers and stopped with the module.

    Its start-up (a Prefect import, then registering the deployment) overlaps whatever
    test runs first. The block it names is saved first, without a base URL: the test
    that runs it saves it over with its sandbox's, as a user edits a block in the UI.
    A served run loads the block only when it starts.
    """
    home = tmp_path_factory.mktemp("served")
    folder = stack_folder(home)
    block = f"atomscale-{uuid.uuid4().hex[:8]}"
    name = f"served-{uuid.uuid4().hex[:6]}"
    log = home / "serve.log"
    with api(prefect_server), get_client(sync_client=True) as client:
        AtomscaleCredentials(api_key=E2E_KEY).save(block)
        block_id = str(client.read_block_document_by_name(block, BLOCK_TYPE).id)
    process = _start(
        [*SERVE, "--folder", str(folder), "--block", block, "--name", name, "--cron", "15 4 * * 1"],
        _environment(home / "serve", PREFECT_API_URL=prefect_server.api_url),
        log,
    )
    try:
        yield Served(
            process=process, log=log, folder=folder, block=block, block_id=block_id, name=name
        )
    finally:
        _stop(process)


@pytest.fixture
def e2e_sandbox() -> Iterator[SandboxHandle]:
    """A sandbox of its own: only this test's runs write to it."""
    with run_sandbox(SandboxConfig(api_keys={E2E_KEY: "lab-e2e"})) as server:
        yield server


@contextmanager
def api(server: PrefectServer) -> Iterator[None]:
    """Point this process's Prefect client at the test's server."""
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def stack_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "stacks"
    folder.mkdir()
    for example in EXAMPLE_FILES:
        shutil.copy(example, folder / example.name)
    return folder


def stacks_at(sandbox: SandboxHandle) -> dict[str, int]:
    """Target material name -> number of layers, as stored at the sandbox."""
    return {
        material["sample_name"]: sandbox.count_layers(sample_id=material["sample_id"])
        for material in sandbox.target_materials(organisation="lab-e2e")
    }


def assert_block_picker(schema: dict[str, Any] | None) -> None:
    """`credentials` is a block reference: the UI's run form shows a picker of saved blocks.

    The UI offers the picker for a property whose definition carries a block type slug
    (`blockTypeSlug` once the UI has read the schema); a `str` parameter would be a text box.
    """
    assert schema is not None
    credentials = schema["properties"]["credentials"]
    assert credentials["$ref"] == "#/definitions/AtomscaleCredentials", credentials
    assert schema["definitions"]["AtomscaleCredentials"]["block_type_slug"] == (
        "atomscale-credentials"
    )
    assert "credentials" in schema["required"]
    assert "credentials_block" not in schema["properties"]


def run_and_wait(name: str, parameters: dict[str, Any], log: Path) -> Any:
    flow_run = run_deployment(name, parameters=parameters, timeout=RUN_SECONDS, poll_interval=1)
    assert flow_run.state is not None
    assert flow_run.state.is_completed(), f"{flow_run.state!r}\n{_tail(log)}"
    return flow_run


# `served` only so that serve.py starts now and is ready when its own test comes.
@pytest.mark.usefixtures("served")
def test_prefect_yaml_deploys_and_a_process_worker_runs_it(
    prefect_server: PrefectServer, e2e_sandbox: SandboxHandle, tmp_path: Path
) -> None:
    folder = stack_folder(tmp_path)
    # `{{ $PWD }}` in prefect.yaml is the folder `prefect deploy` runs in, as in a shell.
    deployer = _environment(
        tmp_path / "deployer", PREFECT_API_URL=prefect_server.api_url, PWD=str(ROOT)
    )
    _prefect(["work-pool", "create", POOL, "--type", "process"], deployer)
    # The worker starts while `prefect deploy` runs; it polls the pool until runs come.
    worker_log = tmp_path / "worker.log"
    worker = _start(
        [*PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
        _environment(
            tmp_path / "worker",
            PREFECT_API_URL=prefect_server.api_url,
            PREFECT_WORKER_QUERY_SECONDS="1",
        ),
        worker_log,
    )
    try:
        _deploy_and_run(prefect_server, e2e_sandbox, folder, deployer, worker_log)
    finally:
        _stop(worker)


def _deploy_and_run(
    prefect_server: PrefectServer,
    e2e_sandbox: SandboxHandle,
    folder: Path,
    deployer: dict[str, str],
    worker_log: Path,
) -> None:
    # The block is not saved yet: the build step stops `prefect deploy` before any
    # deployment is created, and says what to do.
    status, output = _run([*PREFECT, "--no-prompt", "deploy", "--all"], deployer)
    assert status != 0, output
    assert _not_saved_message("atomscale", prefect_server) in output, output
    with api(prefect_server), get_client(sync_client=True) as client:
        for name in YAML_DEPLOYMENTS:
            with pytest.raises(ObjectNotFound):
                client.read_deployment_by_name(name)

    with api(prefect_server), get_client(sync_client=True) as client:
        AtomscaleCredentials(api_key=E2E_KEY, base_url=e2e_sandbox.url).save("atomscale")
        block_id = str(client.read_block_document_by_name("atomscale", BLOCK_TYPE).id)
    output = _prefect(["--no-prompt", "deploy", "--all"], deployer)
    assert all(name in output for name in YAML_DEPLOYMENTS), output

    # By id, as the server stores it: the form the run form's picker shows selected.
    by_id = {"$ref": {"block_document_id": block_id}}
    with api(prefect_server), get_client(sync_client=True) as client:
        for name in YAML_DEPLOYMENTS:
            stored = client.read_deployment_by_name(name).parameters["credentials"]
            assert stored == by_id, (name, stored)
        deployment = client.read_deployment_by_name("stacks-from-folder/nightly")
        assert [s.schedule.model_dump(exclude_none=True) for s in deployment.schedules] == [
            {"cron": "0 6 * * *", "timezone": "UTC", "day_or": True}
        ]
        assert deployment.parameters == {"folder": "flows/examples", "credentials": by_id}
        assert_block_picker(deployment.parameter_openapi_schema)
        assert deployment.enforce_parameter_schema is False
        on_demand = client.read_deployment_by_name("stack-from-file/on-demand")
        assert_block_picker(on_demand.parameter_openapi_schema)
        assert deployment.work_pool_name == POOL
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]
        # So that a 06:00 run cannot start in the middle of this test.
        client.pause_deployment(deployment.id)

    with api(prefect_server):
        first = run_and_wait("stacks-from-folder/nightly", {"folder": str(folder)}, worker_log)
        assert stacks_at(e2e_sandbox) == EXPECTED
        # Each new stack goes with its target material, in one request.
        assert requests_to(e2e_sandbox, "POST", TARGET_MATERIALS) == len(EXPECTED)
        assert requests_to(e2e_sandbox, "POST", LAYERS) == 0

        # Nothing new in the folder: the next run creates nothing.
        e2e_sandbox.reset_stats()
        run_and_wait("stacks-from-folder/nightly", {"folder": str(folder)}, worker_log)
        assert requests_to(e2e_sandbox, "POST", TARGET_MATERIALS) == 0
        assert requests_to(e2e_sandbox, "POST", LAYERS) == 0
        assert posts(e2e_sandbox) == 0
        assert stacks_at(e2e_sandbox) == EXPECTED

        with get_client(sync_client=True) as client:
            subflows = client.read_flow_runs()
            pictures = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="stack-bto-sto"))
            )
    names = {run.name for run in subflows if run.parent_task_run_id}
    # Named after the file, then after its target material once it exists: `...-s<id>`.
    for path in EXAMPLE_FILES:
        assert any(name.startswith(f"stack-from-file-{path.name}-s") for name in names), names
    # The subflow's picture; the on-stack-completed automation's `stack-report-s<id>`
    # runs, not subflows, publish it again under the same key once they have run.
    subflow_ids = {run.id for run in subflows if run.parent_task_run_id}
    assert [p.type for p in pictures if p.flow_run_id in subflow_ids] == ["markdown"]
    assert "Traceback" not in _tail(worker_log, 400)
    _typed_names_are_kept(prefect_server, folder, first.id, worker_log)
    _growth_run_deployment(prefect_server, e2e_sandbox, folder, worker_log)


def _growth_run_deployment(
    prefect_server: PrefectServer, e2e_sandbox: SandboxHandle, folder: Path, worker_log: Path
) -> None:
    """prefect.yaml's growth-run deployment: the file's growth run, linked to its stack."""
    example = folder / "bto_sto_superlattice.yaml"
    spec = load_stack_file(example)
    assert spec.growth_run is not None
    with api(prefect_server), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("growth-run-from-file/growth-run")
        assert_block_picker(deployment.parameter_openapi_schema)
        run = run_and_wait("growth-run-from-file/growth-run", {"path": str(example)}, worker_log)
        assert client.read_flow_run(run.id).name == f"growth-run-from-{example.name}"
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="growth-run-mbe-2024-031"))
        )
    [material] = [
        m
        for m in e2e_sandbox.target_materials(organisation="lab-e2e")
        if m["sample_name"] == spec.name
    ]
    [sample] = e2e_sandbox.physical_samples(organisation="lab-e2e")
    assert (sample["name"], sample["sample_id"]) == (spec.growth_run, material["sample_id"])
    assert [table.type for table in tables] == ["table"]


def _typed_names_are_kept(
    prefect_server: PrefectServer, folder: Path, generated: Any, worker_log: Path
) -> None:
    """A run named by Prefect gets ours; a name typed for the run (the UI's run form,
    `run_deployment(flow_run_name=...)`) is kept. The block goes by id here."""
    typed = "Custom run: HEMT #8 for Ada"
    with api(prefect_server), get_client(sync_client=True) as client:
        assert client.read_flow_run(generated).name == f"stacks-from-folder-{folder.name}"
        block_id = client.read_block_document_by_name("atomscale", "atomscale-credentials").id
        example = folder / "gan_hemt_on_sapphire.json"  # created already: nothing to write
        run = run_deployment(
            "stack-from-file/on-demand",
            parameters={
                "path": str(example),
                "credentials": {"$ref": {"block_document_id": str(block_id)}},
            },
            flow_run_name=typed,
            timeout=RUN_SECONDS,
            poll_interval=1,
        )
        assert run.state is not None and run.state.is_completed(), _tail(worker_log)
        assert client.read_flow_run(run.id).name == typed


def test_serve_py_serves_the_same_flow(
    prefect_server: PrefectServer, served: Served, e2e_sandbox: SandboxHandle
) -> None:
    log, name = served.log, served.name
    with api(prefect_server), get_client(sync_client=True) as client:
        # Saved over, as a user edits the block in the UI: its id stays, so the served
        # deployment's runs read the new base URL.
        AtomscaleCredentials(api_key=E2E_KEY, base_url=e2e_sandbox.url).save(
            served.block, overwrite=True
        )
        assert str(client.read_block_document_by_name(served.block, BLOCK_TYPE).id) == (
            served.block_id
        )

    with api(prefect_server), get_client(sync_client=True) as client:

        def registered() -> Any:
            if served.process.poll() is not None:
                raise AssertionError(f"flows/serve.py exited:\n{_tail(log)}")
            try:
                return client.read_deployment_by_name(f"stacks-from-folder/{name}")
            except Exception:  # not registered yet
                return None

        deployment = _wait_for("serve.py registering its deployment", registered, 120, log)
        assert [s.schedule.model_dump(exclude_none=True) for s in deployment.schedules] == [
            # No timezone given to flow.serve(cron=...): the server reads it as UTC.
            {"cron": "15 4 * * 1", "day_or": True}
        ]
        assert deployment.parameters == {
            "folder": str(served.folder),
            "credentials": {"$ref": {"block_document_id": served.block_id}},
        }
        assert_block_picker(deployment.parameter_openapi_schema)
        run_and_wait(f"stacks-from-folder/{name}", {}, log)
        assert stacks_at(e2e_sandbox) == EXPECTED
        assert posts(e2e_sandbox) == len(EXPECTED)  # one per stack, layers included

        # The second run of the served deployment finds every stack created: no POST.
        e2e_sandbox.reset_stats()
        run_and_wait(f"stacks-from-folder/{name}", {}, log)
    assert posts(e2e_sandbox) == 0
    assert requests_to(e2e_sandbox, "GET", TARGET_MATERIALS) >= 1  # it did look
    assert stacks_at(e2e_sandbox) == EXPECTED


def test_serve_py_refuses_a_block_that_is_not_saved(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    block, name = f"never-saved-{uuid.uuid4().hex[:8]}", f"served-{uuid.uuid4().hex[:6]}"
    env = _environment(tmp_path / "serve", PREFECT_API_URL=prefect_server.api_url)
    status, output = _run([*SERVE, "--block", block, "--name", name], env)
    assert status == 2, output
    assert f"flows/serve.py: {_not_saved_message(block, prefect_server)}" in output
    assert "Traceback" not in output
    with (
        api(prefect_server),
        get_client(sync_client=True) as client,
        pytest.raises(ObjectNotFound),
    ):
        client.read_deployment_by_name(f"stacks-from-folder/{name}")
