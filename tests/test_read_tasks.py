"""The read and update tasks in flows, against the sandbox over HTTP.

`get_stack`, `find_target_materials` and `update_target_material` (and their async
twins): stack order, what another organisation sees, the name filter, what an update
sends and who sees it, local refusals, retries, no caching, and the create tasks'
cache and adoption after an update.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from helpers import TARGET_MATERIALS, requests_to
from prefect import flow, get_client

from atomscale_sandbox import SandboxHandle
from prefect_atomscale import (
    AtomscaleAuthError,
    AtomscaleClient,
    AtomscaleCredentials,
    AtomscaleError,
    AtomscaleNotFoundError,
    AtomscaleValidationError,
    LayerRequest,
    TargetMaterial,
    afind_target_materials,
    aget_stack,
    aupdate_target_material,
    create_target_material,
    find_target_materials,
    get_stack,
    update_target_material,
)

from conftest import KEY_A2, KEY_B, KEY_READ_ONLY  # isort: skip

OWNER_KEY = "prefect_atomscale"
PATCH_ROUTE = "/target-materials/{sample_id}"

# Tests of retry behaviour count attempts, not time: no backoff between them.
fast_get_stack = get_stack.with_options(retry_delay_seconds=0)
fast_update = update_target_material.with_options(retry_delay_seconds=0)
fast_find = find_target_materials.with_options(retry_delay_seconds=0)


@dataclass
class Outcome:
    """How one task run ended; a flow cannot return a failed state without failing."""

    value: Any
    error: BaseException | None
    task_run_id: Any

    def result(self) -> Any:
        assert self.error is None, self.error
        return self.value

    def attempts(self) -> int:
        """How many times Prefect ran the task: 1, plus one per retry."""
        with get_client(sync_client=True) as client:
            return client.read_task_run(self.task_run_id).run_count


def run(task: Any, *args: Any, **kwargs: Any) -> Outcome:
    """Run one task in a new flow run and report how it ended."""

    @flow
    def one_task() -> Outcome:
        state = task(*args, **kwargs, return_state=True)
        value = state.result(raise_on_failure=False)
        if isinstance(value, BaseException):
            return Outcome(None, value, state.state_details.task_run_id)
        return Outcome(value, None, state.state_details.task_run_id)

    return one_task()


def create(
    credentials: AtomscaleCredentials,
    name: str,
    formulas: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    substrate: str = "SrTiO3",
) -> TargetMaterial:
    """`create_target_material` in a flow run of its own, with layers if given."""
    layers = [{"composition_string": formula} for formula in formulas] if formulas else None
    outcome = run(create_target_material, credentials, name, substrate, metadata, layers)
    material: TargetMaterial = outcome.result()
    return material


def client_of(credentials: AtomscaleCredentials) -> AtomscaleClient:
    return AtomscaleClient.from_credentials(credentials)


def stored(sandbox: SandboxHandle, sample_id: int) -> dict[str, Any]:
    """The sandbox's own record of a target material (not through the client)."""
    found = [row for row in sandbox.target_materials() if row["sample_id"] == sample_id]
    assert len(found) == 1
    return found[0]


def user_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (metadata or {}).items() if key != OWNER_KEY}


# --------------------------------------------------------------------------- get_stack


def test_get_stack_is_in_stack_order_whatever_the_writing_order(
    credentials: AtomscaleCredentials, unique: str
) -> None:
    material = create(credentials, unique)
    with client_of(credentials) as client:
        for position, formula in [(3, "BaTiO3"), (1, "SrRuO3"), (2, "SrTiO3")]:
            client.create_layer(
                LayerRequest.build(
                    sample_id=material.sample_id, layer_id=position, composition_string=formula
                )
            )
    layers = run(get_stack, credentials, material.sample_id).result()
    assert [(layer.layer_id, layer.composition_string) for layer in layers] == [
        (1, "SrRuO3"),
        (2, "SrTiO3"),
        (3, "BaTiO3"),
    ]
    assert all(layer.sample_id == material.sample_id for layer in layers)


def test_get_stack_shows_a_second_record_at_one_position(
    credentials: AtomscaleCredentials, unique: str
) -> None:
    material = create(credentials, unique, ["SrRuO3", "BaTiO3"])
    with client_of(credentials) as client:  # the sandbox stores a repeated POST as a new row
        again = client.create_layer(
            LayerRequest.build(sample_id=material.sample_id, layer_id=1, composition_string="SrO")
        )
    layers = run(get_stack, credentials, material.sample_id).result()
    assert [(layer.layer_id, layer.composition_string) for layer in layers] == [
        (1, "SrRuO3"),
        (1, "SrO"),
        (2, "BaTiO3"),
    ]
    assert layers[1].id == again.id and layers[0].id < again.id  # the older record first


def test_get_stack_of_an_unlisted_material_says_why_it_cannot_tell(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    empty = create(credentials, unique)  # no layers: the listing does not show it
    for sample_id in (empty.sample_id, 10**9):
        outcome = run(fast_get_stack, credentials, sample_id)
        assert isinstance(outcome.error, AtomscaleNotFoundError), outcome.error
        message = str(outcome.error)
        assert f"Target material {sample_id} is not in the listing" in message
        assert "cannot tell an empty one from one that does not exist" in message
        assert outcome.attempts() == 1  # not transient: not retried


def test_another_organisations_materials_are_invisible(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    lab_b = AtomscaleCredentials(api_key=KEY_B, base_url=sandbox.url, timeout=10.0)
    theirs = create(lab_b, unique, ["GaN"])
    ours = create(credentials, unique, ["GaN"])
    assert isinstance(run(get_stack, credentials, theirs.sample_id).error, AtomscaleNotFoundError)
    assert [m.sample_id for m in run(find_target_materials, credentials, unique).result()] == [
        ours.sample_id
    ]
    everything = run(find_target_materials, credentials).result()
    assert ours.sample_id in {m.sample_id for m in everything}
    assert theirs.sample_id not in {m.sample_id for m in everything}


# --------------------------------------------------------------------------- find_target_materials


def test_find_target_materials_one_per_sample_id_filtered_by_exact_name(
    credentials: AtomscaleCredentials, unique: str
) -> None:
    first = create(credentials, unique, ["SrRuO3", "BaTiO3", "SrTiO3"])
    second = create(credentials, unique, ["GaN"], metadata={"run": 2})
    other = create(credentials, f"{unique} b", ["GaN"])
    named = run(find_target_materials, credentials, name=f"  {unique} ").result()
    assert [m.sample_id for m in named] == [first.sample_id, second.sample_id]
    assert [user_metadata(m.sample_metadata) for m in named] == [{}, {"run": 2}]
    everything = run(find_target_materials, credentials).result()
    ids = [m.sample_id for m in everything]
    assert ids == sorted(set(ids))  # one per sample_id, lowest first
    assert {first.sample_id, second.sample_id, other.sample_id} <= set(ids)
    assert run(find_target_materials, credentials, name=f"{unique} c").result() == []


# --------------------------------------------------------------------------- update


def test_update_sends_only_the_given_fields_and_every_read_sees_it(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = create(credentials, unique, ["ZnO"], metadata={"growth": "PLD"}, substrate="Al2O3")
    before = stored(sandbox, material.sample_id)
    sandbox.reset_stats()
    updated = run(update_target_material, credentials, material.sample_id, substrate="MgO")
    assert updated.result().substrate == "MgO"
    # A substrate alone needs no look at the ownership mark: one PATCH, no listing.
    assert requests_to(sandbox, "PATCH", PATCH_ROUTE) == 1
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 0
    after = stored(sandbox, material.sample_id)
    assert after["substrate"] == "MgO"
    assert after["sample_name"] == before["sample_name"]
    assert after["sample_metadata"] == before["sample_metadata"]

    renamed = f"{unique} renamed"
    run(update_target_material, credentials, material.sample_id, sample_name=renamed).result()
    after = stored(sandbox, material.sample_id)
    assert (after["sample_name"], after["substrate"]) == (renamed, "MgO")
    assert user_metadata(after["sample_metadata"]) == {"growth": "PLD"}
    found = run(find_target_materials, credentials, name=renamed).result()
    assert [(m.sample_id, m.substrate) for m in found] == [(material.sample_id, "MgO")]
    assert run(find_target_materials, credentials, name=unique).result() == []
    layers = run(get_stack, credentials, material.sample_id).result()
    assert [layer.composition_string for layer in layers] == ["ZnO"]


def test_an_update_of_a_colleagues_material_keeps_its_mark_and_other_fields(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    colleague = AtomscaleCredentials(api_key=KEY_A2, base_url=sandbox.url, timeout=10.0)
    material = create(colleague, unique, ["GaN"], metadata={"growth": "MBE"})
    before = stored(sandbox, material.sample_id)
    run(update_target_material, credentials, material.sample_id, sample_name=f"{unique} x").result()
    after = stored(sandbox, material.sample_id)
    assert after["sample_metadata"] == before["sample_metadata"]  # their mark, as it was
    run(
        update_target_material, credentials, material.sample_id, sample_metadata={"growth": "PLD"}
    ).result()
    after = stored(sandbox, material.sample_id)
    assert after["sample_metadata"] == {
        "growth": "PLD",
        OWNER_KEY: before["sample_metadata"][OWNER_KEY],
    }


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        ({}, "nothing to change"),
        ({"sample_name": "  "}, "sample_name is empty"),
        ({"substrate": 7}, "substrate must be text"),
        ({"sample_name": "x" * 300}, "the limit is 256"),
        ({"sample_metadata": ["growth"]}, "sample_metadata must be a mapping"),
        ({"sample_metadata": {"t": float("nan")}}, "cannot be sent as JSON"),
        ({"sample_metadata": {OWNER_KEY: 1}}, "may not have the key 'prefect_atomscale'"),
        ({"sample_id": 0, "substrate": "MgO"}, "sample_id must be a whole number >= 1"),
        ({"sample_id": True, "substrate": "MgO"}, "sample_id must be a whole number >= 1"),
    ],
)
def test_bad_updates_are_refused_before_any_request(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    arguments: dict[str, Any],
    needle: str,
) -> None:
    arguments = {"sample_id": 1, **arguments}
    outcome = run(fast_update, credentials, **arguments)
    assert type(outcome.error) is AtomscaleValidationError, outcome.error
    assert needle in str(outcome.error)
    assert sandbox.stats.requests == 0
    assert outcome.attempts() == 1  # fast_update would retry a transient error 4 times


@pytest.mark.parametrize(
    ("task", "arguments", "needle"),
    [
        (fast_get_stack, {"sample_id": "42"}, "sample_id must be a whole number >= 1"),
        (fast_get_stack, {"sample_id": -1}, "sample_id must be a whole number >= 1"),
        (fast_find, {"name": ""}, "name is empty"),
        (fast_find, {"name": 12}, "name must be text"),
    ],
)
def test_bad_reads_are_refused_before_any_request(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    task: Any,
    arguments: dict[str, Any],
    needle: str,
) -> None:
    outcome = run(task, credentials, **arguments)
    assert type(outcome.error) is AtomscaleValidationError, outcome.error
    assert needle in str(outcome.error)
    assert sandbox.stats.requests == 0
    assert outcome.attempts() == 1


# --------------------------------------------------------------------------- retries, caching


def test_transient_faults_of_a_read_are_retried(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = create(credentials, unique, ["SrTiO3"])
    sandbox.reset_stats()
    sandbox.faults.set(methods={"GET"})
    sandbox.faults.queue(["503", "reset", "429"])
    outcome = run(fast_get_stack, credentials, material.sample_id)
    assert [layer.composition_string for layer in outcome.result()] == ["SrTiO3"]
    assert outcome.attempts() == 4
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 4
    sandbox.faults.queue(["502_html"])
    outcome = run(fast_find, credentials, unique)
    assert [m.sample_id for m in outcome.result()] == [material.sample_id]
    assert outcome.attempts() == 2


def test_an_update_whose_reply_was_lost_is_retried_and_lands_once(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = create(credentials, unique, ["SrTiO3"])
    sandbox.reset_stats()
    sandbox.faults.queue(["503", "drop_after_commit"])  # PATCH is faulted by default
    outcome = run(fast_update, credentials, material.sample_id, sample_name=f"{unique} 2")
    assert outcome.result().sample_name == f"{unique} 2"
    assert outcome.attempts() == 3
    assert sandbox.stats.faults == {"503": 1, "drop_after_commit": 1}
    assert requests_to(sandbox, "PATCH", PATCH_ROUTE) == 3
    assert stored(sandbox, material.sample_id)["sample_name"] == f"{unique} 2"


def test_reads_are_not_cached(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = create(credentials, unique, ["SrTiO3"])
    assert len(run(get_stack, credentials, material.sample_id).result()) == 1
    assert len(run(find_target_materials, credentials, unique).result()) == 1
    with client_of(credentials) as client:  # a change between two flow runs
        client.create_layer(
            LayerRequest.build(sample_id=material.sample_id, layer_id=2, composition_string="GaN")
        )
        client.update_target_material(material.sample_id, sample_name=f"{unique} b")
    sandbox.reset_stats()
    assert len(run(get_stack, credentials, material.sample_id).result()) == 2
    assert run(find_target_materials, credentials, unique).result() == []
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 2


# --------------------------------------------------------------------------- create after update


def test_after_a_rename_create_adopts_by_the_new_name_only(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = create(credentials, unique, ["SrTiO3"], metadata={"growth": "PLD"})
    assert create(credentials, unique, ["SrTiO3"], {"growth": "PLD"}) == material  # cached
    renamed = f"{unique} renamed"
    run(update_target_material, credentials, material.sample_id, sample_name=renamed).result()
    # The cached result held the material under its old name: retired, so a create of
    # the old name asks the service, finds no such material and creates one.
    again = create(credentials, unique, ["SrTiO3"], metadata={"growth": "PLD"})
    assert again.sample_id != material.sample_id
    # The mark moved with the name: a create of the new name adopts the material.
    adopted = create(credentials, renamed, ["SrTiO3"], metadata={"growth": "PLD"})
    assert adopted.sample_id == material.sample_id
    names = [row["sample_name"] for row in sandbox.target_materials(organisation="lab-a")]
    assert names.count(renamed) == 1


def test_after_a_metadata_update_create_adopts_with_the_new_metadata(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = create(credentials, unique, ["GaN"], metadata={"growth": "PLD"})
    metadata = {"growth": "MBE", "chamber": 2}
    updated = run(
        update_target_material, credentials, material.sample_id, sample_metadata=metadata
    ).result()
    assert user_metadata(updated.sample_metadata) == metadata
    assert OWNER_KEY in (updated.sample_metadata or {})  # the ownership mark is kept
    assert create(credentials, unique, ["GaN"], metadata).sample_id == material.sample_id
    assert create(credentials, unique, ["GaN"], {"growth": "PLD"}).sample_id != material.sample_id


# --------------------------------------------------------------------------- keys, async


def test_a_read_only_key_reads_but_may_not_update(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    material = create(credentials, unique, ["SrTiO3"])
    reader = AtomscaleCredentials(api_key=KEY_READ_ONLY, base_url=sandbox.url, timeout=10.0)
    assert len(run(get_stack, reader, material.sample_id).result()) == 1
    assert [m.sample_id for m in run(find_target_materials, reader, unique).result()] == [
        material.sample_id
    ]
    sandbox.reset_stats()
    outcome = run(fast_update, reader, material.sample_id, substrate="MgO")
    assert isinstance(outcome.error, AtomscaleAuthError), outcome.error
    assert outcome.error.status_code == 403
    assert "use a key with write access" in str(outcome.error)
    assert outcome.attempts() == 1
    assert requests_to(sandbox, "PATCH", PATCH_ROUTE) == 1
    assert stored(sandbox, material.sample_id)["substrate"] == "SrTiO3"


def test_async_twins(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    material = create(credentials, unique, ["SrRuO3", "BaTiO3"])

    @flow
    async def read_and_change() -> tuple[list[str | None], list[int], str | None]:
        layers = await aget_stack(credentials, material.sample_id)
        updated = await aupdate_target_material(
            credentials, material.sample_id, sample_name=f"{unique} a", substrate="MgO"
        )
        found = await afind_target_materials(credentials, name=f"{unique} a")
        return (
            [layer.composition_string for layer in layers],
            [m.sample_id for m in found],
            updated.substrate,
        )

    formulas, found, substrate = asyncio.run(read_and_change())
    assert formulas == ["SrRuO3", "BaTiO3"]
    assert found == [material.sample_id]
    assert substrate == "MgO"

    @flow
    async def refused() -> BaseException | None:
        state = await aget_stack(credentials, 10**9, return_state=True)
        error = await state.aresult(raise_on_failure=False)
        return error if isinstance(error, AtomscaleError) else None

    assert isinstance(asyncio.run(refused()), AtomscaleNotFoundError)


def test_the_update_body_holds_only_the_given_fields() -> None:
    # What goes over the wire, as the client builds it (the sandbox keeps no bodies).
    from prefect_atomscale._client import target_material_changes

    assert target_material_changes(5, substrate=" MgO ") == {"substrate": "MgO"}
    assert target_material_changes(5, sample_metadata={}) == {"sample_metadata": {}}
    assert target_material_changes(5, sample_name="a", sample_metadata={"x": 1}, owner="t") == {
        "sample_name": "a",
        "sample_metadata": {"x": 1, OWNER_KEY: {"owner": "t"}},
    }


def test_the_sandbox_patch_route_is_the_one_counted(sandbox: SandboxHandle) -> None:
    # Guards PATCH_ROUTE above: a wrong route name would make the counts trivially 0.
    httpx.patch(
        f"{sandbox.url}/target-materials/999999",
        headers={"X-API-KEY": "nobody"},
        json={"substrate": "MgO"},
    )
    assert requests_to(sandbox, "PATCH", PATCH_ROUTE) == 1
