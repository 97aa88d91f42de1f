"""How long a deployment run takes to finish, from an event and from a "Run" click.

Sets up what `prefect.yaml` describes, on this machine: a `prefect server start`, the
`atomscale-process` work pool, `prefect deploy -n on-stack-completed` (the
`flows/stack_report.py` flow, triggered by `atomscale.stack.completed`), a process
worker, the sandbox in a child process and the `atomscale` block pointing at it. Then,
`--repeat` times each, alternating:

- (a) event: a flow here completes a 3-layer stack with `create_layers`; measured from
  the `atomscale.stack.completed` event's `occurred` time to the triggered run's
  Completed state;
- (b) run: `run_deployment(..., timeout=0)`, as the UI's "Run" button creates a run;
  measured from just before the call to the run's Completed state.

Each run's time is broken down from its state history: until the run exists (the
trigger and the action, or the API call), Scheduled -> Pending (the worker's next
poll: every `PREFECT_WORKER_QUERY_SECONDS`, runs due within `--prefetch-seconds`),
Pending -> Running (starting the flow-run process: Python, imports, the pull step,
loading the flow), Running -> Completed (the flow itself: `get_stack` and the artifacts,
and the engine's own finishing). Medians over the runs; all clocks are this machine's.
With `--query-seconds 10,1` the whole measurement runs with the worker polling every
10 s (Prefect's default) and then every 1 s.

    python benchmarks/trigger_latency.py --repeat 5 --query-seconds 10,1
"""

from __future__ import annotations

import _common  # first: isolates PREFECT_HOME before Prefect is imported

# isort: split

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

ROOT = _common.REPO_ROOT
DEPLOYMENT = "stack-report/on-stack-completed"
POOL = "atomscale-process"
STACK = [
    {"composition_string": "BaTiO3", "orientation": "001"},
    {"composition_string": "SrTiO3", "orientation": "001"},
    {"composition_string": "LaAlO3", "orientation": "001"},
]
RUN_SECONDS = 180.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment(home: Path, **extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_", "AS_", "ATOMSCALE_"))
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


@contextlib.contextmanager
def _process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _wait_healthy(api_url: str, process: subprocess.Popen[bytes], log: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < 180:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return time.perf_counter() - started
        time.sleep(0.2)
    raise RuntimeError("prefect server did not answer within 180 s")


def _breakdown(flow_run_id: UUID, start: float) -> dict[str, float]:
    """Seconds of each phase of one finished run, from its state history."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        states = client.read_flow_run_states(flow_run_id)
    first: dict[str, float] = {}
    for state in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(state.type.value, state.timestamp.timestamp())
    created = run.created.timestamp() if run.created else first["SCHEDULED"]
    return {
        "total": first["COMPLETED"] - start,
        "to run created": created - start,
        "scheduled -> pending (worker poll)": first["PENDING"] - created,
        "pending -> running (process start)": first["RUNNING"] - first["PENDING"],
        "running -> completed (flow)": first["COMPLETED"] - first["RUNNING"],
    }


def _wait_completed(find: Any) -> UUID:
    """Poll until `find()` gives a finished run; return its id (fail unless Completed)."""
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        run = find()
        if run is not None and run.state is not None and run.state.is_final():
            if not run.state.is_completed():
                raise RuntimeError(f"run {run.id} ended {run.state!r}")
            return UUID(str(run.id))
        time.sleep(0.2)
    raise RuntimeError(f"no completed run within {RUN_SECONDS} s")


def reported_material(credentials: Any) -> int:
    """A target material created with its layers in one request: no stack event, no run."""
    from prefect import flow

    from prefect_atomscale import create_target_material

    @flow(name="bench-trigger-material")
    def make() -> int:
        name = f"run-{uuid.uuid4().hex[:10]}"
        return create_target_material(credentials, name, "SrTiO3", layers=STACK).sample_id

    return make()


def measure(credentials: Any, deployment_id: UUID, kind: str, reported: int) -> dict[str, float]:
    """One run of kind "event" or "run" (of target material `reported`), broken down."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    from prefect_atomscale import create_layers, create_target_material

    @flow(name="bench-trigger-stack")
    def complete_stack(name: str) -> int:
        material = create_target_material(credentials, name, "SrTiO3")
        create_layers(credentials, material.sample_id, STACK)
        return material.sample_id

    if kind == "run":
        started = time.time()
        created = run_deployment(DEPLOYMENT, parameters={"sample_id": reported}, timeout=0)

        def find_run() -> Any:
            with get_client(sync_client=True) as client:
                return client.read_flow_run(created.id)

        return _breakdown(_wait_completed(find_run), started)

    sample_id = complete_stack(f"trigger-{uuid.uuid4().hex[:10]}")
    EventsWorker.drain_all(timeout=60)
    resource = f"atomscale.target-material.{_host(credentials)}.{sample_id}"

    def find_event() -> Any:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=["atomscale.stack.completed"]),
                    resource=EventResourceFilter(id=[resource]),
                ),
                limit=5,
            )
        return page.events[0] if page.events else None

    def find_triggered() -> Any:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
        ours = [run for run in runs if str(run.parameters.get("sample_id")) == str(sample_id)]
        return ours[0] if ours else None

    flow_run_id = _wait_completed(find_triggered)
    event = None
    deadline = time.monotonic() + 60
    while event is None and time.monotonic() < deadline:
        event = find_event()
        time.sleep(0.2)
    if event is None:
        raise RuntimeError(f"the stack.completed event of {resource} was not stored")
    return _breakdown(flow_run_id, event.occurred.timestamp())


def _host(credentials: Any) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(str(credentials.base_url))
    return f"{parts.hostname}:{parts.port}"


def main() -> int:
    """Set up server, pool, deployment and worker; measure (a) and (b); print medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--query-seconds",
        default="10",
        help="comma-separated PREFECT_WORKER_QUERY_SECONDS values to measure (default 10)",
    )
    parser.add_argument(
        "--prefetch-seconds", type=int, default=10, help="the worker's --prefetch-seconds"
    )
    _common.add_repeat_argument(parser, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="trigger-latency-"))
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_command = [sys.executable, "-m", "prefect", "server", "start"]
    server_command += ["--host", "127.0.0.1", "--port", str(port)]
    server_env = _environment(base / "server", PREFECT_UI_ENABLED="false")
    results: list[list[Any]] = []
    with (
        _process(server_command, server_env, base / "server.log") as server,
        _common.SandboxProcess() as sandbox,
    ):
        startup = _wait_healthy(api_url, server, base / "server.log")
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from prefect_atomscale import AtomscaleCredentials

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            credentials = AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url)
            credentials.save("atomscale", overwrite=True)
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
            deployer = _environment(base / "deployer", PREFECT_API_URL=api_url, PWD=str(ROOT))
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "--no-prompt",
                    "deploy",
                    "-n",
                    "on-stack-completed",
                ],
                cwd=ROOT,
                env=deployer,
                check=True,
                capture_output=True,
                timeout=300,
            )
            with get_client(sync_client=True) as client:
                deployment_id = client.read_deployment_by_name(DEPLOYMENT).id
            for query in [int(value) for value in args.query_seconds.split(",")]:
                worker_env = _environment(
                    base / f"worker-{query}",
                    PREFECT_API_URL=api_url,
                    PREFECT_WORKER_QUERY_SECONDS=str(query),
                )
                worker_command = [sys.executable, "-m", "prefect", "worker", "start"]
                worker_command += ["--pool", POOL, "--type", "process"]
                worker_command += ["--prefetch-seconds", str(args.prefetch_seconds)]
                log = base / f"worker-{query}.log"
                with _process(worker_command, worker_env, log):
                    samples = _common.Samples()
                    reported = reported_material(credentials)
                    measure(credentials, deployment_id, "run", reported)  # warm-up
                    for repetition in range(args.repeat):
                        kinds = ["event", "run"] if repetition % 2 == 0 else ["run", "event"]
                        for kind in kinds:
                            for phase, seconds in measure(
                                credentials, deployment_id, kind, reported
                            ).items():
                                samples.add(f"{kind}|{phase}", seconds)
                for kind, label in [
                    ("event", "(a) event -> Completed"),
                    ("run", "(b) run_deployment -> Completed"),
                ]:
                    phases = [
                        "total",
                        "to run created",
                        "scheduled -> pending (worker poll)",
                        "pending -> running (process start)",
                        "running -> completed (flow)",
                    ]
                    results.append(
                        [label, query, *[samples.median(f"{kind}|{phase}") for phase in phases]]
                    )
    _common.print_table(
        f"Trigger to done: medians of {args.repeat} runs each, a process worker, "
        f"--prefetch-seconds {args.prefetch_seconds}",
        [
            "path",
            "worker query s",
            "total s",
            "to run created",
            "scheduled->pending",
            "pending->running",
            "running->completed",
        ],
        results,
        notes=[
            f"prefect server start {startup:.1f} s (not counted); logs under {base}",
            _common.machine_line(),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
