"""create_layers / acreate_layers: whole stacks in one task, with create_layer's guarantees."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from helpers import LAYERS, TARGET_MATERIALS, requests_to
from prefect import flow

from atomscale_sandbox import SandboxHandle
from prefect_atomscale import (
    AtomscaleConflictError,
    AtomscaleCredentials,
    AtomscaleValidationError,
    InvalidCompositionError,
    Layer,
    acreate_layers,
    acreate_target_material,
    create_layer,
    create_layers,
    create_target_material,
)

REPLACE = "/target-materials/{sample_id}/layers"
PERIOD = [
    {"composition_string": "BaTiO3", "orientation": "(001)"},
    {"composition_string": "SrTiO3", "orientation": "(001)"},
]


def positions(sandbox: SandboxHandle, sample_id: int) -> Counter[int]:
    return Counter(row["layer_id"] for row in sandbox.layer_rows(sample_id=sample_id))


def new_stack(
    credentials: AtomscaleCredentials, name: str, layers: list[dict[str, Any]], **options: Any
) -> list[Layer]:
    task = create_layers.with_options(**options) if options else create_layers

    @flow
    def stack() -> list[Layer]:
        material = create_target_material(credentials, name, "SrTiO3")
        return task(credentials, material.sample_id, layers)

    return stack()


def test_a_new_target_material_gets_its_stack_without_a_listing_or_a_replace(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    """Created here, so known empty: no listing; and never the destructive replace-stack."""
    sandbox.reset_stats()
    layers = new_stack(credentials, unique, PERIOD * 20)
    assert [layer.layer_id for layer in layers] == list(range(1, 41))
    assert [layer.composition_string for layer in layers] == ["BaTiO3", "SrTiO3"] * 20
    assert all(layer.orientation == "001" for layer in layers)
    assert layers[0].element_dict == {"Ba": 1, "Ti": 1, "O": 3}
    assert requests_to(sandbox, "POST", REPLACE) == 0
    assert requests_to(sandbox, "POST", LAYERS) == 40
    assert requests_to(sandbox, "GET", "/target-materials/") == 1  # create_target_material's
    assert positions(sandbox, layers[0].sample_id) == Counter(range(1, 41))

    sandbox.reset_stats()
    assert new_stack(credentials, unique, PERIOD * 20) == layers  # cached: nothing sent
    assert sandbox.stats.requests == 0


def test_an_existing_stack_is_read_once_and_completed(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    def partly_then_whole() -> list[Layer]:
        material = create_target_material(credentials, unique, "SrTiO3")
        first = create_layer(credentials, 1, material.sample_id, "BaTiO3", "001")
        assert first.layer_id == 1
        return create_layers(credentials, material.sample_id, PERIOD * 5, max_concurrency=4)

    sandbox.reset_stats()
    layers = partly_then_whole()
    assert requests_to(sandbox, "POST", REPLACE) == 0
    assert requests_to(sandbox, "POST", LAYERS) == 1 + 9  # layer 1 by create_layer, 9 more
    assert positions(sandbox, layers[0].sample_id) == Counter(range(1, 11))


@pytest.mark.parametrize("fault", ["drop_after_commit", "500_after_commit", "503", "reset"])
def test_a_failed_layer_write_of_a_new_stack_is_retried_without_doubling(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str, fault: str
) -> None:
    sandbox.faults.set(paths=[LAYERS])
    sandbox.faults.queue([fault])
    layers = new_stack(credentials, unique, PERIOD * 3, retry_delay_seconds=0)
    assert sandbox.stats.faults == {fault: 1}
    assert positions(sandbox, layers[0].sample_id) == Counter(range(1, 7))


def test_a_fault_storm_on_the_post_path_ends_exactly_once(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    def storm() -> list[Layer]:
        material = create_target_material(credentials, unique, "SrTiO3")
        create_layer(credentials, 1, material.sample_id, "BaTiO3", "001")  # not new any more
        sandbox.faults.set(
            rate=0.2,
            kinds=["503", "reset", "drop_after_commit", "500_after_commit", "502_html"],
            seed=7,
        )
        return create_layers.with_options(retry_delay_seconds=0, retries=8)(
            credentials, material.sample_id, PERIOD * 20
        )

    layers = storm()
    assert sandbox.stats.faults, "no fault was injected"
    sandbox.faults.clear()
    assert positions(sandbox, layers[0].sample_id) == Counter(range(1, 41))


@pytest.mark.parametrize(
    ("layers", "error", "needle"),
    [
        ([], AtomscaleValidationError, "non-empty list"),
        ("BaTiO3", AtomscaleValidationError, "non-empty list"),
        ([{"composition_string": "BaTiO3"}, "SrTiO3"], AtomscaleValidationError, "Layer 2 of"),
        ([{"formula": "BaTiO3"}], AtomscaleValidationError, "unknown fields ['formula']"),
        ([{"composition_string": "Xx2O3"}], InvalidCompositionError, "Layer 1 of target"),
        (
            [{"composition_string": "GaN"}, {"composition_string": "AlN", "layer_id": 1}],
            AtomscaleValidationError,
            "two layers at position(s) [1]",
        ),
    ],
)
def test_a_bad_stack_fails_before_any_request(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    layers: Any,
    error: type[Exception],
    needle: str,
) -> None:
    @flow
    def bad() -> BaseException:
        state = create_layers(credentials, 1, layers, return_state=True)
        value = state.result(raise_on_failure=False)
        assert isinstance(value, BaseException)
        return value

    exc = bad()
    assert type(exc) is error and needle in str(exc)
    assert sandbox.stats.requests == 0


def test_conflicts_follow_if_exists(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    first = new_stack(credentials, unique, PERIOD)
    sample_id = first[0].sample_id
    changed = [PERIOD[0], {"composition_string": "PbTiO3", "orientation": "001"}]

    @flow
    def again(if_exists: str) -> list[Layer]:
        return create_layers(credentials, sample_id, changed, if_exists=if_exists)

    with pytest.raises(AtomscaleConflictError, match=r"record .* already sits at that position"):
        again("error")
    updated = again("update")
    assert [layer.composition_string for layer in updated] == ["BaTiO3", "PbTiO3"]
    assert updated[1].id == first[1].id
    assert positions(sandbox, sample_id) == Counter([1, 2])


@pytest.mark.anyio
async def test_async_twin_writes_a_new_stack_then_completes_it(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    async def stacks() -> tuple[list[Layer], list[Layer]]:
        material = await acreate_target_material(credentials, unique, "Al2O3")
        fresh = await acreate_layers(credentials, material.sample_id, PERIOD * 10)
        more = await acreate_layers(credentials, material.sample_id, PERIOD * 15)
        return fresh, more

    fresh, more = await stacks()
    assert [layer.layer_id for layer in more] == list(range(1, 31))
    assert [layer.id for layer in more[:20]] == [layer.id for layer in fresh]
    assert requests_to(sandbox, "POST", REPLACE) == 0
    assert requests_to(sandbox, "POST", LAYERS) == 30
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 1
    assert positions(sandbox, fresh[0].sample_id) == Counter(range(1, 31))


def test_a_failed_stack_carries_each_layers_outcome_in_a_declared_field(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    # Fine locally, longer than the service stores: L2 alone is refused, with a 422.
    refused = {"composition_string": "BaTiO3", "orientation": "001", "space_group": "P4mm" * 10}

    @flow
    def stack() -> BaseException:
        material = create_target_material(credentials, unique, "SrTiO3")
        layers = [PERIOD[1], refused, PERIOD[1]]
        state = create_layers(credentials, material.sample_id, layers, return_state=True)
        value = state.result(raise_on_failure=False)
        assert isinstance(value, BaseException)
        return value

    error = stack()
    assert isinstance(error, AtomscaleValidationError) and error.status_code == 422
    outcomes = error.layer_outcomes
    assert outcomes is not None and sorted(outcomes) == [1, 2, 3]
    assert isinstance(outcomes[1], Layer) and isinstance(outcomes[3], Layer)
    assert outcomes[2] == error.reason
    assert str(outcomes[2]).startswith("space_group: ") and str(outcomes[2]).endswith("(422)")
