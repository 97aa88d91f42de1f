"""Prefect events of the create tasks, read back from a real Prefect server, and a trigger.

The events go from the flow to the session's Prefect server (`prefect_test_harness`) and
are read back through its API (`POST /api/events/filter`). Each check waits for what it
expects with a deadline; a check that nothing arrived first waits for the run's own
`prefect.flow-run.Completed` event, which Prefect sends after the tasks' events.

The trigger test deploys `prefect.yaml`'s `on-stack-completed` deployment on that server
(whose ephemeral services include Prefect's triggers and actions), starts a process
worker, completes a stack, and waits for the triggered run to finish; then starts a run
by hand, as the UI's Custom run form does, and waits for that one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
)
from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventRelatedFilter,
    EventResourceFilter,
)
from prefect.events.schemas.events import ReceivedEvent
from prefect.events.worker import EventsWorker
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL

from atomscale_sandbox import SandboxConfig, SandboxHandle, run_sandbox
from prefect_atomscale import (
    AtomscaleCredentials,
    AtomscaleValidationError,
    acreate_layer,
    acreate_layers,
    acreate_target_material,
    create_layer,
    create_layers,
    create_target_material,
)

from conftest import KEY_A  # isort: skip
from helpers import LAYERS, ROOT, TARGET_MATERIALS, clean_environment  # isort: skip

OURS = [
    "atomscale.target-material.created",
    "atomscale.layer.created",
    "atomscale.layers.created",
    "atomscale.stack.completed",
]
STACK = [
    {"composition_string": "BaTiO3", "orientation": "001"},
    {"composition_string": "SrTiO3", "orientation": "001"},
    {"composition_string": "LaAlO3", "orientation": "001"},
]
WAIT_SECONDS = 60
# prefect.yaml's deployment that the trigger runs, and its work pool.
REPORT = "stack-report/on-stack-completed"
POOL = "atomscale-process"
RUN_SECONDS = 180


# --- reading events back ----------------------------------------------------------------


def _read(event_filter: EventFilter) -> list[ReceivedEvent]:
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=event_filter, limit=50)
    return sorted(page.events, key=lambda event: event.occurred)


def _of_run(flow_run_id: UUID) -> list[ReceivedEvent]:
    """Our events whose related flow run is this one."""
    return _read(
        EventFilter(
            event=EventNameFilter(name=OURS),
            related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
        )
    )


def _wait_until(
    what: str, read: Callable[[], list[ReceivedEvent]], ready: Callable[[Any], bool]
) -> list[ReceivedEvent]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = read()
        if ready(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not there within {WAIT_SECONDS} s; found {found}")
        time.sleep(0.5)


def _settled(flow_run_id: UUID) -> None:
    """Wait until the server stored the run's Completed event, sent after its tasks' events."""
    EventsWorker.drain_all(timeout=30)
    _wait_until(
        f"the Completed event of flow run {flow_run_id}",
        lambda: _read(
            EventFilter(
                event=EventNameFilter(name=["prefect.flow-run.Completed"]),
                resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
            )
        ),
        lambda found: len(found) == 1,
    )


def _run_id(state: State[Any]) -> UUID:
    assert state.is_completed(), state
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return flow_run_id


def _names(events: Sequence[ReceivedEvent]) -> list[str]:
    return [event.event for event in events]


def _host(credentials: AtomscaleCredentials) -> str:
    parts = urlsplit(str(credentials.base_url))
    return f"{parts.hostname}:{parts.port}"


def _check_resource(
    event: ReceivedEvent, credentials: AtomscaleCredentials, sample_id: int, name: str
) -> None:
    host = _host(credentials)
    assert dict(event.resource) == {
        "prefect.resource.id": f"atomscale.target-material.{host}.{sample_id}",
        "prefect.resource.name": name,
        "atomscale.sample-id": str(sample_id),
        "atomscale.host": host,
    }


def _page(credentials: AtomscaleCredentials, sample_id: int) -> str:
    """The "Open in Atomscale" link of a sandbox material: its host, the API's path."""
    return f"{str(credentials.base_url).rstrip('/')}/target-materials/{sample_id}"


def _check_related(event: ReceivedEvent, flow_run_id: UUID) -> None:
    flow_runs = [r for r in event.related if r.role == "flow-run"]
    assert [r.id for r in flow_runs] == [f"prefect.flow-run.{flow_run_id}"]  # once, not twice
    assert [r.role for r in event.related].count("task-run") == 1


def _check_no_secret(events: Sequence[ReceivedEvent], credentials: AtomscaleCredentials) -> None:
    text = json.dumps([event.model_dump(mode="json") for event in events])
    key = credentials.resolve().api_key.get_secret_value()
    for secret in (key, credentials.account_fingerprint(), credentials.key_fingerprint()):
        assert secret not in text


# --- the flows ---------------------------------------------------------------------------


@flow
def _build(credentials: AtomscaleCredentials, name: str) -> int:
    material = create_target_material(credentials, name, "SrTiO3")
    # L1 on its own, then the whole stack: L1 is adopted there, L2 and L3 created and
    # listed in one event.
    create_layer(credentials, 1, material.sample_id, "BaTiO3", "001")
    create_layers(credentials, material.sample_id, STACK)
    return material.sample_id


@flow
def _adopt(credentials: AtomscaleCredentials, name: str) -> int:
    # Refreshed: the tasks run (no cache hit), find everything there, and adopt it.
    material = create_target_material.with_options(refresh_cache=True)(credentials, name, "SrTiO3")
    create_layers.with_options(refresh_cache=True)(credentials, material.sample_id, STACK)
    return material.sample_id


@flow
async def _abuild(credentials: AtomscaleCredentials, name: str) -> int:
    material = await acreate_target_material(credentials, name, "SrTiO3")
    # A target material created empty here: its stack needs no listing.
    await acreate_layers(credentials, material.sample_id, STACK)
    return material.sample_id


# --- the tests ---------------------------------------------------------------------------


def test_each_creation_is_one_event_with_the_material_and_the_flow_run(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    state = _build(credentials, unique, return_state=True)
    flow_run_id, sample_id = _run_id(state), state.result()

    events = _wait_until(
        "the events of the first run",
        lambda: _of_run(flow_run_id),
        lambda found: len(found) >= 4,
    )
    _settled(flow_run_id)
    events = _of_run(flow_run_id)
    assert sorted(_names(events)) == sorted(
        [
            "atomscale.target-material.created",
            "atomscale.layer.created",  # L1, by create_layer
            "atomscale.layers.created",  # L2 and L3, by create_layers
            "atomscale.stack.completed",
        ]
    )
    for event in events:
        _check_resource(event, credentials, sample_id, unique)
        _check_related(event, flow_run_id)
    _check_no_secret(events, credentials)

    by_name = {event.event: event for event in events}
    assert by_name["atomscale.target-material.created"].payload == {
        "sample_id": sample_id,
        "sample_name": unique,
        "substrate": "SrTiO3",
        "layers": 0,
        "url": _page(credentials, sample_id),
    }
    one = by_name["atomscale.layer.created"].payload
    assert (one["layer_id"], one["composition_string"], one["orientation"]) == (1, "BaTiO3", "001")
    assert isinstance(one["record_id"], int)
    listed = by_name["atomscale.layers.created"].payload
    assert {key: value for key, value in listed.items() if key != "layers"} == {
        "sample_id": sample_id,
        "part": 1,
        "parts": 1,
    }
    # The same shape per layer as atomscale.layer.created, in stack order.
    assert [sorted(layer) for layer in listed["layers"]] == [sorted(one)] * 2
    assert [(p["layer_id"], p["composition_string"]) for p in listed["layers"]] == [
        (2, "SrTiO3"),
        (3, "LaAlO3"),
    ]
    records = [p["record_id"] for p in [one, *listed["layers"]]]
    assert all(isinstance(record, int) for record in records) and len(set(records)) == 3
    assert all(p["orientation"] == "001" for p in listed["layers"])
    assert by_name["atomscale.stack.completed"].payload == {
        "sample_id": sample_id,
        "sample_name": unique,
        "substrate": "SrTiO3",
        "layers": 3,
        "created": 2,
        "already_there": 1,
        "updated": 0,
        "url": _page(credentials, sample_id),
    }

    # The same flow again: every task is a cache hit and sends nothing.
    rerun = _run_id(_build(credentials, unique, return_state=True))
    _settled(rerun)
    assert _names(_of_run(rerun)) == []

    # Refreshed: the tasks run, adopt the target material and every layer, and only the
    # completed stack is an event.
    adopted = _run_id(_adopt(credentials, unique, return_state=True))
    _settled(adopted)
    events = _of_run(adopted)
    assert _names(events) == ["atomscale.stack.completed"]
    assert events[0].payload == {
        "sample_id": sample_id,
        "sample_name": unique,
        "substrate": "SrTiO3",
        "layers": 3,
        "created": 0,
        "already_there": 3,
        "updated": 0,
        "url": _page(credentials, sample_id),
    }
    _check_resource(events[0], credentials, sample_id, unique)


def test_a_new_stack_written_by_the_async_twin_is_one_event_listing_its_layers(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    async def run() -> State[int]:
        return await _abuild(credentials, unique, return_state=True)

    state = asyncio.run(run())
    flow_run_id = _run_id(state)
    sample_id = state.result()
    assert sandbox.stats.by_route.get(("POST", "/target-materials/{sample_id}/layers"), 0) == 0
    assert sandbox.stats.by_route.get(("POST", "/target-materials/layers/"), 0) == 3

    _settled(flow_run_id)
    events = _of_run(flow_run_id)
    assert sorted(_names(events)) == sorted(
        [
            "atomscale.target-material.created",
            "atomscale.layers.created",
            "atomscale.stack.completed",
        ]
    )
    for event in events:
        _check_resource(event, credentials, sample_id, unique)
        _check_related(event, flow_run_id)
    completed = [event for event in events if event.event == "atomscale.stack.completed"]
    assert completed[0].payload == {
        "sample_id": sample_id,
        "sample_name": unique,
        "substrate": "SrTiO3",
        "layers": 3,
        "created": 3,
        "already_there": 0,
        "updated": 0,
        "url": _page(credentials, sample_id),
    }
    [listed] = [event for event in events if event.event == "atomscale.layers.created"]
    assert [layer["layer_id"] for layer in listed.payload["layers"]] == [1, 2, 3]
    assert (listed.payload["part"], listed.payload["parts"]) == (1, 1)


def _made_elsewhere(sandbox: SandboxHandle, name: str, substrate: str) -> int:
    """A target material with L1, made over HTTP as the web app or another worker would."""
    headers = {"X-API-KEY": KEY_A}
    body = {"sample": {"sample_name": name, "substrate": substrate, "sample_metadata": {}}}
    reply = httpx.post(f"{sandbox.url}{TARGET_MATERIALS}", headers=headers, json=body)
    reply.raise_for_status()
    sample_id: int = reply.json()["sample_id"]
    layer = {"layer_id": 1, "sample_id": sample_id, **STACK[0]}
    httpx.post(f"{sandbox.url}{LAYERS}", headers=headers, json=layer).raise_for_status()
    return sample_id


@flow
def _extend(credentials: AtomscaleCredentials, one: int, whole: int) -> None:
    create_layer(credentials, 2, one, "SrTiO3", "001")
    create_layers(credentials, whole, STACK)


@flow
async def _aextend(credentials: AtomscaleCredentials, one: int, whole: int) -> None:
    await acreate_layer(credentials, 2, one, "SrTiO3", "001")
    await acreate_layers(credentials, whole, STACK)


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_layers_added_to_a_material_made_elsewhere_carry_its_name(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str, twin: str
) -> None:
    # This process never saw these materials: their names come from the listing the
    # tasks read before writing (one layer with create_layer, the stack with create_layers).
    one = _made_elsewhere(sandbox, f"{unique}-one", "DyScO3")
    whole = _made_elsewhere(sandbox, f"{unique}-whole", "GdScO3")
    if twin == "sync":
        state = _extend(credentials, one, whole, return_state=True)
    else:

        async def run() -> State[None]:
            return await _aextend(credentials, one, whole, return_state=True)

        state = asyncio.run(run())
    flow_run_id = _run_id(state)
    _settled(flow_run_id)
    events = _of_run(flow_run_id)

    of_one = [event for event in events if event.resource["atomscale.sample-id"] == str(one)]
    assert _names(of_one) == ["atomscale.layer.created"]
    _check_resource(of_one[0], credentials, one, f"{unique}-one")
    of_whole = [event for event in events if event.resource["atomscale.sample-id"] == str(whole)]
    assert sorted(_names(of_whole)) == ["atomscale.layers.created", "atomscale.stack.completed"]
    for event in of_whole:
        _check_resource(event, credentials, whole, f"{unique}-whole")
    completed = [event for event in of_whole if event.event == "atomscale.stack.completed"]
    assert completed[0].payload == {
        "sample_id": whole,
        "sample_name": f"{unique}-whole",
        "substrate": "GdScO3",
        "layers": 3,
        "created": 2,
        "already_there": 1,
        "updated": 0,
        "url": _page(credentials, whole),
    }
    assert len(events) == len(of_one) + len(of_whole)
    for event in events:
        _check_related(event, flow_run_id)
    _check_no_secret(events, credentials)


@flow
def _one_each(accounts: list[AtomscaleCredentials], name: str) -> list[int]:
    return [create_target_material(each, name, "SrTiO3").sample_id for each in accounts]


@pytest.mark.integration
def test_the_same_sample_id_on_two_services_is_two_resources(unique: str) -> None:
    config = SandboxConfig(api_keys={KEY_A: "lab-a"})
    with run_sandbox(config) as first, run_sandbox(config) as second:
        accounts = [AtomscaleCredentials(api_key=KEY_A, base_url=s.url) for s in (first, second)]
        state = _one_each(accounts, unique, return_state=True)
        flow_run_id = _run_id(state)
        ids = state.result()
    assert ids[0] == ids[1]  # two new services: the same first sample_id
    _settled(flow_run_id)
    events = _of_run(flow_run_id)
    assert _names(events) == ["atomscale.target-material.created"] * 2
    assert sorted(e.resource.id for e in events) == sorted(
        f"atomscale.target-material.{_host(each)}.{ids[0]}" for each in accounts
    )
    assert {e.resource["atomscale.sample-id"] for e in events} == {str(ids[0])}


def test_an_event_that_cannot_be_sent_never_fails_the_flow(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect_atomscale import _events

    def refuse(**_: Any) -> None:
        raise RuntimeError("the events client is down")

    # Prefect's emit_event, as the integration calls it, fails every time.
    monkeypatch.setattr(_events, "emit_event", refuse)
    with caplog.at_level(logging.DEBUG, logger="prefect_atomscale._events"):
        state = _build(credentials, unique, return_state=True)
    assert state.is_completed(), state
    failures = [r for r in caplog.records if r.name == "prefect_atomscale._events"]
    assert {r.levelno for r in failures} == {logging.DEBUG}
    assert len(failures) == 4  # the material, L1, the layers of the stack, the stack
    assert "the events client is down" in failures[0].getMessage()


@flow
def _stack_with(credentials: AtomscaleCredentials, name: str, layer_events: Any) -> int:
    material = create_target_material(credentials, name, "SrTiO3")
    create_layers(credentials, material.sample_id, STACK, layer_events=layer_events)
    return material.sample_id


def _events_of_stack(credentials: AtomscaleCredentials, name: str, layer_events: Any) -> Any:
    """Our events of one new stack written with `layer_events`, and its sample_id."""
    state = _stack_with(credentials, name, layer_events, return_state=True)
    flow_run_id = _run_id(state)
    _settled(flow_run_id)
    events = _of_run(flow_run_id)
    for event in events:
        _check_resource(event, credentials, state.result(), name)
        _check_related(event, flow_run_id)
    return events, state.result()


def test_layer_events_each_sends_one_per_layer_and_none_sends_only_the_completed_stack(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    each, _ = _events_of_stack(credentials, f"{unique}-each", "each")
    assert sorted(_names(each)) == sorted(
        ["atomscale.target-material.created", "atomscale.stack.completed"]
        + ["atomscale.layer.created"] * 3
    )
    created = [e.payload for e in each if e.event == "atomscale.layer.created"]
    assert sorted((p["layer_id"], p["composition_string"]) for p in created) == [
        (1, "BaTiO3"),
        (2, "SrTiO3"),
        (3, "LaAlO3"),
    ]

    # For very large stacks: nothing about the layers; the completed stack still counts them.
    quiet, sample_id = _events_of_stack(credentials, f"{unique}-none", "none")
    assert sorted(_names(quiet)) == [
        "atomscale.stack.completed",
        "atomscale.target-material.created",
    ]
    [completed] = [e for e in quiet if e.event == "atomscale.stack.completed"]
    assert (completed.payload["sample_id"], completed.payload["created"]) == (sample_id, 3)


def test_a_stack_longer_than_one_event_holds_is_listed_in_parts(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_atomscale import _events

    # 2 layers an event instead of 1,000, so that three layers make two parts.
    monkeypatch.setattr(_events, "LAYERS_PER_EVENT", 2)
    events, sample_id = _events_of_stack(credentials, unique, "batch")
    parts = [e.payload for e in events if e.event == "atomscale.layers.created"]
    assert len(parts) == 2
    assert sorted(
        (p["part"], p["parts"], p["sample_id"], [layer["layer_id"] for layer in p["layers"]])
        for p in parts
    ) == [(1, 2, sample_id, [1, 2]), (2, 2, sample_id, [3])]
    assert _names(events).count("atomscale.stack.completed") == 1


def test_an_unknown_layer_events_value_is_refused_before_any_request(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    def refused() -> None:
        create_layers(credentials, 424242, STACK, layer_events="all")

    sandbox.reset_stats()
    state = refused(return_state=True)
    assert state.is_failed()
    with pytest.raises(AtomscaleValidationError, match="layer_events must be one of 'batch'"):
        state.result()
    assert sandbox.stats.requests == 0


# --- the trigger: prefect.yaml's stack-report deployment ---------------------------------


def _environment(home: Path, **extra: str) -> dict[str, str]:
    env = clean_environment()
    home.mkdir(parents=True, exist_ok=True)
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


@contextmanager
def _worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process worker on the pool, stopped (with the runs it started) on the way out."""
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--type", "process"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that stopping it also stops its flow runs
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


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log.exists() else ""


def _report_trigger() -> dict[str, Any]:
    """prefect.yaml's trigger of the on-stack-completed deployment, as written there."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [deployment] = [d for d in config["deployments"] if d["name"] == "on-stack-completed"]
    [trigger] = deployment["triggers"]
    assert isinstance(trigger, dict)
    return trigger


@pytest.mark.processes
def test_a_completed_stack_runs_the_stack_report_deployment(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str, tmp_path: Path
) -> None:
    api_url = str(PREFECT_API_URL.value())
    # The block prefect.yaml's trigger names, as the docstring examples save it.
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save("atomscale", overwrite=True)
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    deployer = _environment(tmp_path / "deployer", PREFECT_API_URL=api_url, PWD=str(ROOT))
    worker_env = _environment(
        tmp_path / "worker", PREFECT_API_URL=api_url, PREFECT_WORKER_QUERY_SECONDS="1"
    )
    log = tmp_path / "worker.log"
    with _worker(worker_env, log) as worker:
        deployed = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "-n", "on-stack-completed"],
            cwd=ROOT,
            env=deployer,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(REPORT)
            automations = client.read_resource_related_automations(
                f"prefect.deployment.{deployment.id}"
            )
        try:
            sample_id = _run_id_and_result(_build(credentials, unique, return_state=True))
            triggered = _finished_run(
                deployment.id,
                f"the triggered run for sample_id {sample_id}",
                lambda run: str(run.parameters.get("sample_id")) == str(sample_id),
                worker,
                log,
            )
            # A run started by hand, as the UI's Custom run form starts one: a typed name
            # and only the sample_id; the name and substrate come from the listing.
            started = run_deployment(
                REPORT,
                parameters={"sample_id": sample_id},
                flow_run_name="Lab check of the BTO stack",
                timeout=0,
            )
            assert isinstance(started, FlowRun)
            by_hand = _finished_run(
                deployment.id,
                "the run started by hand",
                lambda run: run.id == started.id,
                worker,
                log,
            )
            triggered_artifacts = _artifacts_of(triggered.id)
            by_hand_artifacts = _artifacts_of(by_hand.id)
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
                )
        finally:
            with get_client(sync_client=True) as client:
                # Later tests complete stacks too: no run of this deployment for them.
                client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
                client.delete_deployment(deployment.id)

    # The Automation the UI lists: prefect.yaml's name and description, not Prefect's
    # `on-stack-completed__automation_1` with an empty description.
    trigger = _report_trigger()
    assert [(a.name, a.description) for a in automations] == [
        ("Report each completed stack", trigger["description"])
    ]
    assert "stack-report-s<sample_id>" in automations[0].description
    assert "atomscale.stack.completed" in automations[0].description
    key = credentials.resolve().api_key.get_secret_value()
    assert key not in automations[0].model_dump_json()

    # The triggered run: named for its material, with the event's name and substrate.
    assert triggered.name == f"stack-report-s{sample_id}"
    assert triggered.parameters["sample_name"] == unique
    assert triggered.parameters["substrate"] == "SrTiO3"
    _check_report(triggered_artifacts, unique, sample_id)
    # The run by hand keeps its typed name and titles the picture the same way.
    assert by_hand.name == "Lab check of the BTO stack"
    assert "sample_name" not in by_hand.parameters
    _check_report(by_hand_artifacts, unique, sample_id)
    # One run for the completed stack and one by hand; the reports send no event.
    assert sorted(run.id for run in runs) == sorted([triggered.id, by_hand.id])


def _artifacts_of(flow_run_id: UUID) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def _check_report(artifacts: Sequence[Any], name: str, sample_id: int) -> None:
    """get_stack read the three layers back; the table and picture name the material."""
    by_type = {artifact.type: artifact for artifact in artifacts}
    assert sorted(by_type) == ["markdown", "table"], artifacts
    table, picture = by_type["table"], by_type["markdown"]
    assert table.key == f"layers-{name}-s{sample_id}"
    assert picture.key == f"stack-{name}-s{sample_id}"
    what = f"{name} (target material {sample_id}) on SrTiO3"
    assert what in str(table.description) and "3 layers" in str(table.description)
    assert what in str(picture.description)
    assert f"### {name}" in str(picture.data) and "**SrTiO3**" in str(picture.data)
    assert "unnamed substrate" not in str(picture.data)


def _run_id_and_result(state: State[int]) -> int:
    _run_id(state)
    return state.result()


def _finished_run(
    deployment_id: UUID,
    what: str,
    wanted: Callable[[FlowRun], bool],
    worker: subprocess.Popen[bytes],
    log: Path,
) -> FlowRun:
    """Wait for the deployment's one run that is `wanted` to finish; fail if it did not complete."""
    deadline = time.monotonic() + RUN_SECONDS
    while True:
        assert worker.poll() is None, f"the worker exited:\n{_tail(log)}"
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(),
            )
        ours = [run for run in runs if wanted(run)]
        assert len(ours) <= 1, f"{len(ours)} runs, {what}"
        if ours and ours[0].state is not None and ours[0].state.is_final():
            assert ours[0].state.is_completed(), f"{ours[0].state!r}\n{_tail(log)}"
            return ours[0]
        if time.monotonic() > deadline:
            found = [(run.name, run.parameters, run.state_name) for run in runs]
            raise AssertionError(
                f"{what} of {REPORT} did not complete within {RUN_SECONDS} s; runs: {found}"
                f"\n{_tail(log)}"
            )
        time.sleep(1)
