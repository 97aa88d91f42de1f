"""Growth runs (physical samples) through the tasks, against the sandbox over HTTP.

`create_growth_run`, `link_target_material`, `get_growth_run`, `find_growth_runs` and
their async twins: exactly once by the service's unique name (a rerun, a lost reply,
a 409 of either shape, a growth run the SDK made first), the `if_linked` rule, local
refusals that send nothing, a 404 that is not retried, events, and the exactly-once bar
with faults and two concurrent runs of one name. Every check reads the sandbox's store
or its audit, not what the client believes.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import requests_to
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.worker import EventsWorker

from atomscale_sandbox import SandboxHandle
from prefect_atomscale import (
    AtomscaleCredentials,
    AtomscaleNotFoundError,
    AtomscaleValidationError,
    GrowthRun,
    GrowthRunLinkedError,
    acreate_growth_run,
    afind_growth_runs,
    aget_growth_run,
    alink_target_material,
    create_growth_run,
    create_target_material,
    find_growth_runs,
    get_growth_run,
    link_target_material,
)
from prefect_atomscale.flows import growth_run_from_file

from conftest import KEY_A, KEY_B  # isort: skip

SAMPLES = "/physical_samples/"
LINK = "/physical_samples/{physical_sample_id}/target_material"
LAYERS = [{"composition_string": "SrTiO3", "orientation": "001"}]

fast_create = create_growth_run.with_options(retry_delay_seconds=0)
fast_link = link_target_material.with_options(retry_delay_seconds=0)


def _material(credentials: AtomscaleCredentials, name: str) -> int:
    @flow
    def make() -> int:
        return create_target_material(credentials, name, "SrTiO3", layers=LAYERS).sample_id

    return make()


def _stored(sandbox: SandboxHandle, name: str, organisation: str = "lab-a") -> list[dict[str, Any]]:
    key = name.strip().lower()
    return [
        sample
        for sample in sandbox.physical_samples(organisation=organisation)
        if sample["name"].strip().lower() == key
    ]


def _audit(sandbox: SandboxHandle, after: int, physical_sample_id: str) -> list[dict[str, Any]]:
    return [
        entry
        for entry in sandbox.history(after=after)
        if entry["kind"] == "physical_sample" and str(entry["record_id"]) == physical_sample_id
    ]


def _links(entries: list[dict[str, Any]]) -> list[int | None]:
    """Each change of the linked target material in the audit, from none at the start."""
    changes, current = [], None
    for entry in entries:
        linked = entry["row"].get("sample_id")
        if linked != current:
            changes.append(linked)
            current = linked
    return changes


def _sdk_like_create(sandbox: SandboxHandle, name: str, key: str = KEY_A) -> dict[str, Any]:
    """A growth run made as the SDK's upload makes it: a bare POST with only the name."""
    reply = httpx.post(f"{sandbox.url}{SAMPLES}", json={"name": name}, headers={"X-API-KEY": key})
    assert reply.status_code in (200, 201), reply.text
    return dict(reply.json())


@contextmanager
def _conflict_shape(sandbox: SandboxHandle, shape: str) -> Iterator[None]:
    before = sandbox.physical_sample_conflict
    sandbox.physical_sample_conflict = shape  # type: ignore[assignment]
    try:
        yield
    finally:
        sandbox.physical_sample_conflict = before


# --- creating -----------------------------------------------------------------------------


def test_creates_one_linked_growth_run_and_a_rerun_finds_it(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    sample_id = _material(credentials, unique)
    name = f"PLD {unique}"

    @flow
    def start() -> GrowthRun:
        return create_growth_run(credentials, name, sample_id=sample_id)

    first = start()
    assert first.name == name and first.target_material_id == sample_id
    sandbox.reset_stats()
    again = start()
    assert again.id == first.id and again.target_material_id == sample_id
    [stored] = _stored(sandbox, name)
    assert stored["id"] == first.id and stored["sample_id"] == sample_id
    assert requests_to(sandbox, "PATCH", LINK) == 0  # already linked: nothing sent


@pytest.mark.parametrize("shape", ["object", "string"])
def test_a_taken_name_in_any_spelling_resolves_to_the_existing_run(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str, shape: str
) -> None:
    """Both documented 409 shapes: with the existing id, or a bare message (then by name)."""
    sample_id = _material(credentials, unique)
    made = _sdk_like_create(sandbox, f"MBE {unique}")  # the SDK's upload got there first
    after = sandbox.app.store.last_history_seq()
    with _conflict_shape(sandbox, shape):

        @flow
        def start() -> GrowthRun:
            return create_growth_run(credentials, f"  mbe {unique.upper()} ", sample_id=sample_id)

        run = start()
    assert run.id == made["id"]
    assert run.target_material_id == sample_id
    [stored] = _stored(sandbox, f"MBE {unique}")
    assert stored["sample_id"] == sample_id
    assert _links(_audit(sandbox, after, made["id"])) == [sample_id]  # linked once


@pytest.mark.parametrize(("if_linked", "ends_linked_to"), [("relink", "new"), ("keep", "old")])
def test_if_linked_relink_and_keep(
    sandbox: SandboxHandle,
    credentials: AtomscaleCredentials,
    unique: str,
    if_linked: str,
    ends_linked_to: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = _material(credentials, f"{unique} old")
    new = _material(credentials, f"{unique} new")

    @flow
    def start(sample_id: int, choice: str) -> GrowthRun:
        return create_growth_run(credentials, unique, sample_id=sample_id, if_linked=choice)

    start(old, "error")
    run = start(new, if_linked)
    expected = new if ends_linked_to == "new" else old
    assert run.target_material_id == expected
    [stored] = _stored(sandbox, unique)
    assert stored["sample_id"] == expected
    if if_linked == "keep":
        assert "kept (if_linked='keep')" in caplog.text


def test_linked_elsewhere_fails_without_changing_anything_or_retrying(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    old = _material(credentials, f"{unique} old")
    new = _material(credentials, f"{unique} new")

    @flow
    def start(sample_id: int) -> GrowthRun:
        return fast_create(credentials, unique, sample_id=sample_id)

    first = start(old)
    sandbox.reset_stats()
    with pytest.raises(GrowthRunLinkedError) as raised:
        start(new)
    error = raised.value
    assert (error.physical_sample_id, error.linked_to, error.wanted) == (first.id, old, new)
    assert "if_linked='relink'" in str(error)
    assert requests_to(sandbox, "POST", SAMPLES) == 1  # not retried
    assert requests_to(sandbox, "PATCH", LINK) == 0
    [stored] = _stored(sandbox, unique)
    assert stored["sample_id"] == old


@pytest.mark.parametrize("fault", ["500_after_commit", "drop_after_commit", "503", "reset"])
def test_a_lost_or_refused_create_is_retried_into_one_linked_run(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str, fault: str
) -> None:
    sample_id = _material(credentials, unique)
    sandbox.faults.queue([fault])

    @flow
    def start() -> GrowthRun:
        return fast_create(credentials, unique, sample_id=sample_id)

    run = start()
    [stored] = _stored(sandbox, unique)
    assert stored["id"] == run.id and stored["sample_id"] == sample_id
    assert requests_to(sandbox, "POST", SAMPLES) == 2


def test_the_created_event_is_sent_once_also_after_a_lost_reply(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    sample_id = _material(credentials, unique)
    sandbox.faults.queue(["500_after_commit"])

    @flow
    def start() -> GrowthRun:
        return fast_create(credentials, unique, sample_id=sample_id)

    run = start()
    start()  # a rerun finds it: no second event
    EventsWorker.drain_all(timeout=30)
    resource = f"atomscale.growth-run.{sandbox.url.split('//')[1]}.{run.id}"
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(prefix=["atomscale.growth-run."]),
                    resource=EventResourceFilter(id=[resource]),
                ),
                limit=10,
            ).events
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(1)  # a second event, if there were one, would be stored by now
    with get_client(sync_client=True) as client:
        events = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(prefix=["atomscale.growth-run."]),
                resource=EventResourceFilter(id=[resource]),
            ),
            limit=10,
        ).events
    assert [event.event for event in events] == ["atomscale.growth-run.created"]
    [event] = events
    assert event.resource.get("prefect.resource.name") == unique
    related = [r for r in event.related if r.role == "target-material"]
    assert [r.id for r in related] == [
        f"atomscale.target-material.{sandbox.url.split('//')[1]}.{sample_id}"
    ]
    assert event.payload["sample_id"] == sample_id
    assert KEY_A not in json.dumps(event.model_dump(mode="json"))


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 257}, "limit is 256"),
        ({"name": 12}, "name"),
        ({"name": "ok", "sample_id": 0}, "sample_id"),
        ({"name": "ok", "sample_id": "7"}, "sample_id"),
        ({"name": "ok", "growth_instrument_id": -1}, "growth_instrument_id"),
        ({"name": "ok", "if_linked": "replace"}, "if_linked"),
    ],
)
def test_bad_create_input_is_refused_before_any_request(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, arguments: dict[str, Any], says: str
) -> None:
    @flow
    def start() -> GrowthRun:
        return create_growth_run(credentials, **arguments)

    with pytest.raises(AtomscaleValidationError, match=says):
        start()
    assert sandbox.stats.requests == 0


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "0b7c6a4e-3f7e-4c57-9d0e", "", 42])
def test_a_malformed_uuid_is_refused_before_any_request(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, bad_id: Any
) -> None:
    @flow
    def link() -> GrowthRun:
        return link_target_material(credentials, bad_id, 1)

    @flow
    def read() -> GrowthRun:
        return get_growth_run(credentials, bad_id)

    for run in (link, read):
        with pytest.raises(AtomscaleValidationError, match="not a UUID"):
            run()
    assert sandbox.stats.requests == 0


def test_another_organisations_target_material_is_not_found_and_not_retried(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    theirs = _material(AtomscaleCredentials(api_key=KEY_B, base_url=sandbox.url), unique)
    sandbox.reset_stats()

    @flow
    def start() -> GrowthRun:
        return fast_create(credentials, unique, sample_id=theirs)

    with pytest.raises(AtomscaleNotFoundError, match=f"target material {theirs}"):
        start()
    assert requests_to(sandbox, "POST", SAMPLES) == 1
    assert _stored(sandbox, unique) == []


# --- linking, reading ---------------------------------------------------------------------


def test_link_target_material_is_idempotent_and_follows_if_linked(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    first = _material(credentials, f"{unique} 1")
    second = _material(credentials, f"{unique} 2")
    made = _sdk_like_create(sandbox, unique)

    @flow
    def link(sample_id: int, choice: str = "error") -> GrowthRun:
        return fast_link(credentials, made["id"], sample_id, if_linked=choice)

    after = sandbox.app.store.last_history_seq()
    assert link(first).target_material_id == first
    assert link(first).target_material_id == first  # nothing sent the second time
    with pytest.raises(GrowthRunLinkedError):
        link(second)
    assert link(second, "relink").target_material_id == second
    assert _links(_audit(sandbox, after, made["id"])) == [first, second]


def test_link_to_unknown_run_or_another_organisations_material_is_not_found(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    theirs = _material(AtomscaleCredentials(api_key=KEY_B, base_url=sandbox.url), unique)
    made = _sdk_like_create(sandbox, unique)

    @flow
    def link(physical_sample_id: str, sample_id: int) -> GrowthRun:
        return fast_link(credentials, physical_sample_id, sample_id)

    with pytest.raises(AtomscaleNotFoundError, match="not among"):
        link(str(uuid.uuid4()), 1)
    sandbox.reset_stats()
    with pytest.raises(AtomscaleNotFoundError):
        link(made["id"], theirs)
    assert requests_to(sandbox, "PATCH", LINK) == 1  # not retried
    [stored] = _stored(sandbox, unique)
    assert stored["sample_id"] is None


def test_get_and_find_read_the_link_as_the_listing_nests_it(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    sample_id = _material(credentials, f"{unique} material")
    _sdk_like_create(sandbox, f"{unique} other")
    _sdk_like_create(sandbox, f"{unique} other", KEY_B)  # another organisation's

    @flow
    def read() -> tuple[GrowthRun, list[GrowthRun], list[GrowthRun]]:
        run = create_growth_run(credentials, unique, sample_id=sample_id)
        return (
            get_growth_run(credentials, run.id),
            find_growth_runs(credentials, name=f" {unique.upper()}"),
            find_growth_runs(credentials),
        )

    got, named, every = read()
    assert got.target_material_name == f"{unique} material"
    assert got.target_material == {**(got.target_material or {}), "substrate": "SrTiO3"}
    assert [run.id for run in named] == [got.id]
    mine = [run.name for run in every if run.name and run.name.startswith(unique)]
    assert sorted(mine) == sorted([unique, f"{unique} other"])


def test_get_growth_run_of_an_unknown_id_is_not_found(credentials: AtomscaleCredentials) -> None:
    @flow
    def read() -> GrowthRun:
        return get_growth_run(credentials, str(uuid.uuid4()))

    with pytest.raises(AtomscaleNotFoundError, match="not among"):
        read()


def test_async_twins_do_what_the_sync_tasks_do(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    first = _material(credentials, f"{unique} 1")
    second = _material(credentials, f"{unique} 2")

    @flow
    async def steps() -> list[Any]:
        run = await acreate_growth_run(credentials, unique, sample_id=first)
        again = await acreate_growth_run(credentials, unique.upper(), sample_id=first)
        try:
            await acreate_growth_run(credentials, unique, sample_id=second)
        except GrowthRunLinkedError as exc:
            refused: Any = exc.linked_to
        moved = await alink_target_material(credentials, run.id, second, if_linked="relink")
        got = await aget_growth_run(credentials, run.id)
        found = await afind_growth_runs(credentials, name=unique)
        return [
            run.id == again.id,
            refused,
            moved.target_material_id,
            got.target_material_id,
            [r.id for r in found] == [run.id],
        ]

    assert asyncio.run(steps()) == [True, first, second, second, True]
    [stored] = _stored(sandbox, unique)
    assert stored["sample_id"] == second


# --- the exactly-once bar -----------------------------------------------------------------


def test_two_concurrent_runs_of_one_name_under_faults_make_one_run_linked_once(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str
) -> None:
    """The bar: 20 % of writes fail (some after committing), two runs start each name at
    once, one of them sometimes as the SDK would (a bare create by name, no lock of ours):
    each name ends with one physical sample, linked to its target material exactly once."""
    names = [f"{unique} run {index}" for index in range(8)]
    materials = {name: _material(credentials, f"{name} material") for name in names}
    after = sandbox.app.store.last_history_seq()
    sandbox.faults.set(
        rate=0.2,
        kinds={"503", "reset", "500_after_commit", "drop_after_commit", "429"},
        # Another seed for a soak: GROWTH_RUN_FAULT_SEED=7 pytest -k concurrent_runs
        seed=int(os.environ.get("GROWTH_RUN_FAULT_SEED", "18")),
        retry_after_seconds=0,
        paths=["/physical_samples/*"],
    )
    failures: list[BaseException] = []

    @flow
    def start(name: str) -> GrowthRun:
        return fast_create(credentials, name, sample_id=materials[name])

    def racer(name: str) -> None:
        try:
            start(name)
        except BaseException as exc:  # collected, asserted below
            failures.append(exc)

    for index, name in enumerate(names):
        threads = [threading.Thread(target=racer, args=(name,)) for _ in range(2)]
        if index % 2:  # the SDK's upload racing our flow, then our flow links it
            threads[1] = threading.Thread(target=_sdk_racer, args=(sandbox, name, failures))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    sandbox.faults.set(rate=0.0)
    ours = [failure for failure in failures if not isinstance(failure, _SdkFault)]
    assert ours == [], ours  # every flow of ours completed
    for name in names:
        [stored] = _stored(sandbox, name)  # one physical sample, whoever came first
        assert stored["sample_id"] == materials[name], name
        # An insert linked at once, or unlinked (the SDK's) and then one link: never twice.
        assert _links(_audit(sandbox, after, stored["id"])) == [materials[name]], name


class _SdkFault(Exception):
    """The SDK-like racer met an injected fault; it does not retry (neither does a POST)."""


def _sdk_racer(sandbox: SandboxHandle, name: str, failures: list[BaseException]) -> None:
    try:
        reply = httpx.post(
            f"{sandbox.url}{SAMPLES}", json={"name": name}, headers={"X-API-KEY": KEY_A}
        )
        if reply.status_code not in (200, 201, 409):
            failures.append(_SdkFault(reply.status_code))
    except httpx.HTTPError as exc:
        failures.append(_SdkFault(repr(exc)))


# --- the flow: a stack file to its growth run ---------------------------------------------


def _yaml(folder: Path, name: str, run: str | None) -> Path:
    path = folder / "stack.yaml"
    line = f"growth_run: {run}\n" if run is not None else ""
    path.write_text(
        f"name: {name}\nsubstrate: SrTiO3\n{line}layers:\n"
        "  - composition: SrRuO3\n    orientation: '001'\n"
        "  - composition: BaTiO3\n    orientation: '001'\n"
    )
    return path


def test_the_flow_makes_the_stack_and_its_growth_run_linked_and_a_rerun_adds_nothing(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str, tmp_path: Path
) -> None:
    path = _yaml(tmp_path, f"{unique} stack", f"PLD {unique}")
    outcome = growth_run_from_file(str(path), credentials)
    assert outcome.stack.status == "created" and outcome.stack.layers == 2
    assert outcome.growth_run == f"PLD {unique}"
    [stored] = _stored(sandbox, f"PLD {unique}")
    assert (stored["id"], stored["sample_id"]) == (
        outcome.physical_sample_id,
        outcome.stack.sample_id,
    )
    sandbox.reset_stats()
    again = growth_run_from_file(str(path), credentials)
    assert again.stack.status == "already created"
    assert again.physical_sample_id == outcome.physical_sample_id
    assert requests_to(sandbox, "PATCH", LINK) == 0
    assert len(_stored(sandbox, f"PLD {unique}")) == 1
    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"growth-run-pld-{unique}"])
            ),
            limit=1,
        )
    assert table.type == "table"
    assert outcome.physical_sample_id in str(table.data)
    assert f"physical_sample='PLD {unique}'" in str(table.data)


def test_run_name_wins_over_the_files_and_a_csv_may_name_its_run(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str, tmp_path: Path
) -> None:
    given = growth_run_from_file(
        str(_yaml(tmp_path, f"{unique} yaml", f"from file {unique}")),
        credentials,
        run_name=f"typed {unique}",
    )
    assert given.growth_run == f"typed {unique}"
    assert _stored(sandbox, f"from file {unique}") == []
    csv = tmp_path / "film.csv"
    csv.write_text(
        f"# name: {unique} csv\n# substrate: MgO\n# growth_run: csv run {unique}\n"
        "layer,composition,orientation\n1,TiN,001\n"
    )
    outcome = growth_run_from_file(str(csv), credentials)
    [stored] = _stored(sandbox, f"csv run {unique}")
    assert stored["sample_id"] == outcome.stack.sample_id


@pytest.mark.parametrize(
    ("run", "run_name", "says"),
    [
        (None, None, "names no growth run"),
        (None, "   ", "name is empty"),
        (None, "x" * 300, "limit is 256"),
        ("' '", None, "growth_run"),
    ],
)
def test_the_flow_refuses_a_missing_or_bad_run_name_before_any_request(
    sandbox: SandboxHandle,
    credentials: AtomscaleCredentials,
    unique: str,
    tmp_path: Path,
    run: str | None,
    run_name: str | None,
    says: str,
) -> None:
    path = _yaml(tmp_path, unique, run)
    with pytest.raises(AtomscaleValidationError, match=says):
        growth_run_from_file(str(path), credentials, run_name=run_name)
    assert sandbox.stats.requests == 0
