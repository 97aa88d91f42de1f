"""The tasks in flows, against the sandbox over HTTP: results, validation, retries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import LAYERS, TARGET_MATERIALS, layer_rows, requests_to
from prefect import flow, get_client, unmapped

from atomscale_sandbox import SandboxHandle
from prefect_atomscale import (
    AtomscaleAuthError,
    AtomscaleConnectionError,
    AtomscaleCredentials,
    AtomscaleError,
    AtomscaleNotFoundError,
    AtomscaleServerError,
    AtomscaleValidationError,
    InvalidCompositionError,
    InvalidOrientationError,
    Layer,
    TargetMaterial,
    acreate_layer,
    acreate_target_material,
    create_layer,
    create_target_material,
)

from conftest import KEY_A, KEY_READ_ONLY  # isort: skip

# Tests of retry behaviour count attempts, not time: no backoff between them.
fast_layer = create_layer.with_options(retry_delay_seconds=0)


def make_material(credentials: AtomscaleCredentials, name: str) -> TargetMaterial:
    @flow
    def make() -> TargetMaterial:
        return create_target_material(credentials, name, "SrTiO3", {"growth": "PLD"})

    return make()


@dataclass
class Outcome:
    """What one task run ended with; a flow cannot return a failed state without failing."""

    layer: Layer | None
    error: BaseException | None
    task_run_id: Any

    def result(self) -> Layer:
        assert self.layer is not None, self.error
        return self.layer

    def is_completed(self) -> bool:
        return self.error is None


def run_layer(task: Any, credentials: AtomscaleCredentials, **arguments: Any) -> Outcome:
    """Run one layer task in a flow and report how it ended."""

    @flow
    def one_layer() -> Outcome:
        state = task(credentials, **arguments, return_state=True)
        value = state.result(raise_on_failure=False)
        if isinstance(value, BaseException):
            return Outcome(None, value, state.state_details.task_run_id)
        return Outcome(value, None, state.state_details.task_run_id)

    return one_layer()


def error_of(outcome: Outcome) -> BaseException:
    assert isinstance(outcome.error, AtomscaleError), outcome
    return outcome.error


def attempts(outcome: Outcome) -> int:
    """How many times Prefect ran the task: 1, plus one per retry it took."""
    with get_client(sync_client=True) as client:
        return client.read_task_run(outcome.task_run_id).run_count


def test_create_target_material_then_a_layer(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = make_material(credentials, unique)
    assert material.sample_name == unique and material.substrate == "SrTiO3"
    # The user's metadata, and the ownership mark the task adds under its own key: a
    # token of the key and name, and the creator's user id once the service told it.
    metadata = dict(material.sample_metadata or {})
    assert set(metadata.pop("prefect_atomscale")) <= {"owner", "user_id"}
    assert metadata == {"growth": "PLD"}

    state = run_layer(
        create_layer,
        credentials,
        layer_id=1,
        sample_id=material.sample_id,
        composition_string="BaTiO3",
        orientation="(001)",
    )
    layer = state.result()
    assert isinstance(layer, Layer)
    assert (layer.layer_id, layer.sample_id) == (1, material.sample_id)
    assert layer.orientation == "001"  # sent in the bare form the API uses
    assert layer.element_dict == {"Ba": 1, "Ti": 1, "O": 3}
    assert (layer.space_group, layer.mp_id) == ("P4mm", "mp-5020")
    assert [row["id"] for row in layer_rows(sandbox, KEY_A, material.sample_id)] == [layer.id]


def test_task_run_names_say_which_layer(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = make_material(credentials, unique)
    state = run_layer(
        create_layer,
        credentials,
        layer_id=3,
        sample_id=material.sample_id,
        composition_string="GaN",
    )
    assert state.is_completed()

    async def run_name() -> str:
        async with get_client() as client:
            task_run = await client.read_task_run(state.task_run_id)
            return task_run.name

    assert asyncio.run(run_name()) == f"create-layer-s{material.sample_id}-L3-GaN"


@pytest.mark.parametrize(
    ("arguments", "error", "needle"),
    [
        ({"layer_id": 0}, AtomscaleValidationError, "layer_id must be a whole number >= 1"),
        ({"layer_id": -1}, AtomscaleValidationError, "got -1"),
        ({"layer_id": True}, AtomscaleValidationError, "got True"),
        ({"layer_id": "one"}, AtomscaleValidationError, "got 'one'"),
        ({"sample_id": None}, AtomscaleValidationError, "sample_id must be a whole number"),
        ({"composition_string": "Xx2O3"}, InvalidCompositionError, "Xx"),
        ({"composition_string": "BaTiO3)"}, InvalidCompositionError, "position"),
        ({"orientation": "abc"}, InvalidOrientationError, "abc"),
        ({"orientation": "0 0 1 1 1"}, InvalidOrientationError, "0 0 1 1 1"),
        ({"mp_id": "5020"}, AtomscaleValidationError, "Materials Project id"),
        ({"element_dict": {"Qq": 1}}, AtomscaleValidationError, "not an element symbol"),
    ],
)
def test_bad_input_fails_before_any_request_and_is_not_retried(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    arguments: dict[str, Any],
    error: type[Exception],
    needle: str,
) -> None:
    layer = {"layer_id": 1, "sample_id": 1, "composition_string": "BaTiO3", **arguments}
    state = run_layer(fast_layer, credentials, **layer)
    exc = error_of(state)
    assert type(exc) is error
    assert needle in str(exc)
    assert sandbox.stats.requests == 0
    assert attempts(state) == 1  # not retried: fast_layer would retry it 4 times


def test_transient_faults_are_retried_until_the_write_lands(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = make_material(credentials, unique)
    sandbox.reset_stats()
    sandbox.faults.queue(["503", "502_html", "reset"])
    state = run_layer(
        fast_layer, credentials, layer_id=1, sample_id=material.sample_id, composition_string="GaN"
    )
    assert state.is_completed()
    assert requests_to(sandbox, "POST", LAYERS) == 4
    assert len(layer_rows(sandbox, KEY_A, material.sample_id)) == 1


def test_rate_limit_waits_for_retry_after(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    monkeypatch.setattr("prefect_atomscale._retries.sleep", waits.append)
    material = make_material(credentials, unique)
    sandbox.faults.set(retry_after_seconds=2)
    sandbox.faults.queue(["429"])
    state = run_layer(
        fast_layer, credentials, layer_id=1, sample_id=material.sample_id, composition_string="GaN"
    )
    assert state.is_completed()
    assert waits == [2.0]


@pytest.mark.parametrize("fault", ["drop_after_commit", "500_after_commit", "slow_after_commit"])
def test_a_lost_reply_is_not_written_twice(sandbox: SandboxHandle, unique: str, fault: str) -> None:
    # A 1 s timeout, so that the client gives up on the slow reply and retries.
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url, timeout=1.0)
    material = make_material(credentials, unique)
    sandbox.reset_stats()
    sandbox.faults.set(slow_seconds=3.0)  # longer than the credentials' 1 s timeout
    sandbox.faults.queue([fault])
    state = run_layer(
        fast_layer, credentials, layer_id=1, sample_id=material.sample_id, composition_string="GaN"
    )
    layer = state.result()
    assert sandbox.stats.faults == {fault: 1}
    assert attempts(state) >= 2  # the first attempt lost its reply; a retry adopted
    rows = layer_rows(sandbox, KEY_A, material.sample_id)
    assert [row["id"] for row in rows] == [layer.id]
    assert requests_to(sandbox, "POST", LAYERS) == 1  # the retry found it and adopted it
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) >= 1


def test_exhausted_retries_fail_naming_the_layer(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = make_material(credentials, unique)
    sandbox.reset_stats()
    sandbox.faults.queue(["503"] * 3)
    state = run_layer(
        fast_layer.with_options(retries=2),
        credentials,
        layer_id=2,
        sample_id=material.sample_id,
        composition_string="SrTiO3",
    )
    exc = error_of(state)
    assert isinstance(exc, AtomscaleServerError) and exc.status_code == 503
    assert f"layer 2 (SrTiO3) of target material {material.sample_id}" in str(exc)
    assert requests_to(sandbox, "POST", LAYERS) == 3


def test_unknown_target_material_is_a_404_attempted_once(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle
) -> None:
    state = run_layer(fast_layer, credentials, layer_id=1, sample_id=987654321)
    exc = error_of(state)
    assert isinstance(exc, AtomscaleNotFoundError)
    assert "987654321" in str(exc) and "belongs to the organisation" in str(exc)
    assert requests_to(sandbox, "POST", LAYERS) == 1


@pytest.mark.parametrize(("key", "status"), [("wrong-key", 401), (KEY_READ_ONLY, 403)])
def test_auth_errors_are_attempted_once_and_never_show_the_key(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, key: str, status: int, unique: str
) -> None:
    material = make_material(credentials, unique)
    sandbox.reset_stats()
    other = AtomscaleCredentials(api_key=key, base_url=sandbox.url)
    state = run_layer(
        fast_layer, other, layer_id=1, sample_id=material.sample_id, composition_string="GaN"
    )
    exc = error_of(state)
    assert isinstance(exc, AtomscaleAuthError) and exc.status_code == status
    assert key not in str(exc) and key not in repr(exc)
    # This process's view of the material (one per service, whichever key made it) says
    # the position is free, so the write is the first request: refused, never retried.
    assert sandbox.stats.requests == 1
    assert requests_to(sandbox, "POST", LAYERS) == 1


@pytest.mark.integration
def test_unreachable_service_is_a_connection_error(unique: str) -> None:
    # Port 9 (discard) is closed on loopback: the connection is refused at once.
    credentials = AtomscaleCredentials(api_key="k", base_url="http://127.0.0.1:9")
    state = run_layer(fast_layer.with_options(retries=1), credentials, layer_id=1, sample_id=1)
    exc = error_of(state)
    assert isinstance(exc, AtomscaleConnectionError)
    assert "Could not connect to http://127.0.0.1:9" in str(exc)


def test_submit_and_map_run_layers_concurrently_in_order(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    formulas = ["SrRuO3", "BaTiO3", "SrTiO3", "LaAlO3"]

    @flow
    def stack() -> list[Layer]:
        material = create_target_material(credentials, unique, "SrTiO3")
        futures = create_layer.map(
            unmapped(credentials),
            layer_id=list(range(1, len(formulas) + 1)),
            sample_id=material.sample_id,
            composition_string=formulas,
            orientation="001",
        )
        return [future.result() for future in futures]

    layers = stack()
    assert [layer.composition_string for layer in layers] == formulas
    assert [layer.layer_id for layer in layers] == [1, 2, 3, 4]
    assert len({layer.sample_id for layer in layers}) == 1


@pytest.mark.anyio
async def test_async_twins_in_an_async_flow(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    async def stack() -> list[Layer]:
        material = await acreate_target_material(credentials, unique, "Al2O3")
        return list(
            await asyncio.gather(
                *(
                    acreate_layer(
                        credentials,
                        layer_id=position,
                        sample_id=material.sample_id,
                        composition_string=formula,
                        orientation="0001",
                    )
                    for position, formula in enumerate(["AlN", "GaN", "Al0.3Ga0.7N"], start=1)
                )
            )
        )

    layers = await stack()
    assert [layer.composition_string for layer in layers] == ["AlN", "GaN", "Al0.3Ga0.7N"]
    assert layers[2].element_dict == {"Al": 0.3, "Ga": 0.7, "N": 1}
    assert requests_to(sandbox, "POST", LAYERS) == 3


@pytest.mark.anyio
async def test_async_layer_retries_and_adopts(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    async def one() -> tuple[int, Layer]:
        material = await acreate_target_material(credentials, unique, "MgO")
        sandbox.faults.queue(["drop_after_commit"])
        layer = await acreate_layer.with_options(retry_delay_seconds=0)(
            credentials, layer_id=1, sample_id=material.sample_id, composition_string="MgO"
        )
        return material.sample_id, layer

    sample_id, layer = await one()
    assert [row["id"] for row in layer_rows(sandbox, KEY_A, sample_id)] == [layer.id]
    assert sandbox.stats.faults == {"drop_after_commit": 1}
    assert requests_to(sandbox, "POST", LAYERS) == 1  # the retry adopted what the drop hid
