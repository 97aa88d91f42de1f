"""The sandbox's physical-sample (growth run) routes over real HTTP: the documented contract.

POST, GET and the two PATCHes of `/physical_samples/` as the project's API notes
describe them (shared/atomscale-api.md, "Physical samples"): a UUID id, a name unique
in the organisation (trimmed, ignoring case) whose clash answers 409 in either of the
two documented shapes, the linked target material nested in the listing as it is now,
organisations kept apart, every write audited, one record from racing creates, and a
write that commits though its reply is lost.

Every test runs on the session's sandbox (tests/conftest.py) with names of its own, so
the tests depend neither on each other nor on their order.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from atomscale_sandbox import ApiKeyGrant, SandboxConfig, SandboxHandle, run_sandbox

from conftest import KEY_A, KEY_A2, KEY_B, KEY_READ_ONLY  # isort: skip

SAMPLES = "/physical_samples/"
MATERIALS = "/target-materials/"
TAKEN = "Physical sample name already exists"

REPLY_FIELDS = {
    "id",
    "name",
    "created_datetime",
    "last_updated",
    "version",
    "user_id",
    "growth_instrument_id",
    "sample_id",
    "detail_notes_id",
    "physical_sample_metadata",
}
LISTED_FIELDS = REPLY_FIELDS | {
    "owner_id",
    "owner_name",
    "num_data_items",
    "growth_instrument",
    "target_material",
    "projects",
    "detail_notes",
}


@pytest.fixture
def client_a(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_A}, timeout=10) as client:
        yield client


@pytest.fixture
def client_b(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_B}, timeout=10) as client:
        yield client


@pytest.fixture
def string_conflicts(sandbox: SandboxHandle) -> Iterator[None]:
    """The 409 in the plain-string shape for one test, restored whatever happens."""
    before = sandbox.physical_sample_conflict
    sandbox.physical_sample_conflict = "string"
    try:
        yield
    finally:
        sandbox.physical_sample_conflict = before


def create(client: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    reply = client.post(SAMPLES, json={"name": name, **fields})
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    return body


def create_material(client: httpx.Client, name: str, substrate: str = "SrTiO3") -> int:
    body = {"sample": {"sample_name": name, "substrate": substrate}}
    reply = client.post(MATERIALS, json=body)
    assert reply.status_code == 201, reply.text
    return int(reply.json()["sample_id"])


def listed(client: httpx.Client, sample_id: str) -> dict[str, Any]:
    (entry,) = [s for s in client.get(SAMPLES).json() if s["id"] == sample_id]
    assert isinstance(entry, dict)
    return entry


def stored_named(sandbox: SandboxHandle, organisation: str, name: str) -> list[dict[str, Any]]:
    return [s for s in sandbox.physical_samples(organisation=organisation) if s["name"] == name]


# --- create ------------------------------------------------------------------------------


def test_create_answers_the_documented_shape_with_a_uuid_and_the_trimmed_name(
    sandbox: SandboxHandle, client_a: httpx.Client, unique: str
) -> None:
    reply = client_a.post(SAMPLES, json={"name": f"  {unique} Run 7 \t", "unknown": 1})
    assert reply.status_code == 201, reply.text
    sample = reply.json()
    assert set(sample) == REPLY_FIELDS
    parsed = uuid.UUID(sample["id"])
    assert parsed.version == 4
    assert str(parsed) == sample["id"]  # canonical: lowercase, hyphenated
    assert sample["name"] == f"{unique} Run 7"
    assert sample["version"] == "0.269.1"
    assert sample["user_id"] == ApiKeyGrant("lab-a").user_id
    assert datetime.fromisoformat(sample["created_datetime"]).tzinfo is not None
    assert sample["last_updated"] == sample["created_datetime"]
    assert [sample[field] for field in ("growth_instrument_id", "sample_id")] == [None, None]
    assert [sample["detail_notes_id"], sample["physical_sample_metadata"]] == [None, None]
    (stored,) = stored_named(sandbox, "lab-a", f"{unique} Run 7")
    assert stored == sample | {"organisation": "lab-a"}


def test_create_keeps_the_optional_fields_as_given(
    client_a: httpx.Client, sandbox: SandboxHandle, unique: str
) -> None:
    material = create_material(client_a, f"{unique} BTO")
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_A2}) as colleague:
        by_number = create(
            colleague,
            f"{unique} a",
            growth_instrument_id=7,
            sample_id=material,
            detail_notes_id=12,
        )
    by_text = create(client_a, f"{unique} b", detail_notes_id="notes-12")
    assert (by_number["growth_instrument_id"], by_number["sample_id"]) == (7, material)
    assert by_number["detail_notes_id"] == 12
    assert by_text["detail_notes_id"] == "notes-12"  # a text id stays text
    assert by_number["user_id"] == ApiKeyGrant("lab-a", user="a-colleague").user_id


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": None},
        {"name": ""},
        {"name": "   "},
        {"name": "\t\n"},
        {"name": 7},
        {"name": ["run"]},
        {"name": "x" * 257},
        {"name": "run", "growth_instrument_id": "7"},
        {"name": "run", "growth_instrument_id": 2**64},
        {"name": "run", "sample_id": 0},
        {"name": "run", "detail_notes_id": True},
        {"name": "run", "detail_notes_id": 1.5},
    ],
    ids=lambda body: repr(body)[:40],
)
def test_a_missing_blank_too_long_or_mistyped_field_is_422(
    sandbox: SandboxHandle, client_a: httpx.Client, body: dict[str, Any]
) -> None:
    before = sandbox.physical_samples()
    reply = client_a.post(SAMPLES, json=body)
    assert reply.status_code == 422, reply.text
    errors = reply.json()["detail"]
    assert isinstance(errors, list) and errors
    assert all({"type", "loc", "msg"} <= set(error) for error in errors)
    assert errors[0]["loc"][0] == "body"
    assert sandbox.physical_samples() == before


def test_a_name_of_256_characters_is_accepted(client_a: httpx.Client, unique: str) -> None:
    name = unique + "x" * (256 - len(unique))
    assert create(client_a, name)["name"] == name


def test_a_lone_surrogate_or_nul_never_makes_it_answer_500(
    client_a: httpx.Client, unique: str
) -> None:
    surrogate = client_a.post(
        SAMPLES,
        content=b'{"name": "run \\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert surrogate.status_code == 422
    with_nul = create(client_a, f"{unique}\x00nul")
    assert with_nul["name"] == f"{unique}\x00nul"


# --- one name per organisation -----------------------------------------------------------


def test_a_taken_name_is_409_trimmed_and_ignoring_case_with_the_existing_id(
    sandbox: SandboxHandle, client_a: httpx.Client, unique: str
) -> None:
    first = create(client_a, f"{unique} Run 7")
    for clash in (f"{unique} Run 7", f"  {unique} run 7 ", f"{unique.upper()} RUN 7\n"):
        reply = client_a.post(SAMPLES, json={"name": clash})
        assert reply.status_code == 409, reply.text
        assert reply.json() == {"detail": {"message": TAKEN, "physical_sample_id": first["id"]}}
    assert len(stored_named(sandbox, "lab-a", f"{unique} Run 7")) == 1


@pytest.mark.usefixtures("string_conflicts")
def test_the_409_can_be_a_plain_string_as_some_deployments_answer(
    sandbox: SandboxHandle, client_a: httpx.Client, unique: str
) -> None:
    assert sandbox.physical_sample_conflict == "string"
    first = create(client_a, f"{unique} Run 8")
    reply = client_a.post(SAMPLES, json={"name": f" {unique} run 8"})
    assert reply.status_code == 409
    assert reply.json() == {"detail": TAKEN}
    renamed = create(client_a, f"{unique} other")
    patched = client_a.patch(f"{SAMPLES}{renamed['id']}", json={"name": f"{unique} RUN 8"})
    assert (patched.status_code, patched.json()) == (409, {"detail": TAKEN})
    assert [s["id"] for s in stored_named(sandbox, "lab-a", f"{unique} Run 8")] == [first["id"]]


def test_the_409_shape_setting_is_checked(sandbox: SandboxHandle) -> None:
    with pytest.raises(ValueError, match="physical_sample_conflict"):
        sandbox.physical_sample_conflict = "list"  # type: ignore[assignment]
    assert sandbox.physical_sample_conflict == "object"


def test_organisations_are_kept_apart(
    sandbox: SandboxHandle, client_a: httpx.Client, client_b: httpx.Client, unique: str
) -> None:
    mine = create(client_a, f"{unique} shared name")
    assert all(s["id"] != mine["id"] for s in client_b.get(SAMPLES).json())
    assert client_b.get(SAMPLES, params={"physical_sample_id": mine["id"]}).json() == []
    # The same name is free in another organisation: a 409 there would tell lab B that
    # lab A has a run of that name.
    theirs = create(client_b, f"{unique} Shared Name")
    assert theirs["id"] != mine["id"]
    assert theirs["user_id"] == ApiKeyGrant("lab-b").user_id
    assert [s["id"] for s in sandbox.physical_samples(organisation="lab-b")].count(
        theirs["id"]
    ) == 1
    # A colleague's key is the same organisation: the name is taken for it.
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_A2}) as colleague:
        reply = colleague.post(SAMPLES, json={"name": f"{unique} SHARED NAME"})
        assert reply.status_code == 409
        assert reply.json()["detail"]["physical_sample_id"] == mine["id"]
        assert listed(colleague, mine["id"])["name"] == f"{unique} shared name"


def test_read_only_key_may_list_but_every_write_is_403(
    sandbox: SandboxHandle, client_a: httpx.Client, unique: str
) -> None:
    sample = create(client_a, f"{unique} run")
    material = create_material(client_a, f"{unique} film")
    before = sandbox.physical_samples()
    headers = {"X-API-KEY": KEY_READ_ONLY}
    with httpx.Client(base_url=sandbox.url, headers=headers) as viewer:
        assert any(s["id"] == sample["id"] for s in viewer.get(SAMPLES).json())
        writes = [
            viewer.post(SAMPLES, json={"name": f"{unique} other"}),
            viewer.patch(f"{SAMPLES}{sample['id']}", json={"name": f"{unique} x"}),
            viewer.patch(
                f"{SAMPLES}{sample['id']}/target_material", json={"target_material_id": material}
            ),
        ]
    for reply in writes:
        assert reply.status_code == 403
        assert isinstance(reply.json()["detail"], str)
    assert sandbox.physical_samples() == before


def test_missing_key_is_401_on_every_route(sandbox: SandboxHandle) -> None:
    some_id = uuid.uuid4()
    replies = [
        httpx.get(f"{sandbox.url}{SAMPLES}"),
        httpx.post(f"{sandbox.url}{SAMPLES}", json={"name": "run"}),
        httpx.patch(f"{sandbox.url}{SAMPLES}{some_id}", json={"name": "run"}),
        httpx.patch(
            f"{sandbox.url}{SAMPLES}{some_id}/target_material", json={"target_material_id": None}
        ),
    ]
    assert [reply.status_code for reply in replies] == [401] * 4


def test_target_material_of_another_organisation_is_404_like_a_missing_one(
    sandbox: SandboxHandle, client_a: httpx.Client, client_b: httpx.Client, unique: str
) -> None:
    foreign = create_material(client_b, f"{unique} B's film")
    missing = 10**12
    replies = [
        client_a.post(SAMPLES, json={"name": f"{unique} run", "sample_id": material})
        for material in (foreign, missing)
    ]
    for reply, material in zip(replies, (foreign, missing), strict=True):
        assert reply.status_code == 404
        assert reply.json() == {"detail": f"Target material {material} not found"}
    assert stored_named(sandbox, "lab-a", f"{unique} run") == []


# --- the listing -------------------------------------------------------------------------


def test_listing_shows_every_field_and_the_target_material_as_it_is_now(
    client_a: httpx.Client, unique: str
) -> None:
    material = create_material(client_a, f"{unique} BTO on STO", substrate="SrTiO3")
    sample = create(client_a, f"{unique} run", sample_id=material, growth_instrument_id=3)
    bare = create(client_a, f"{unique} bare")

    entry = listed(client_a, sample["id"])
    assert set(entry) == LISTED_FIELDS
    assert {field: entry[field] for field in REPLY_FIELDS} == sample
    assert entry["owner_id"] == sample["user_id"]
    assert isinstance(entry["owner_name"], str) and entry["owner_name"]
    assert (entry["num_data_items"], entry["projects"], entry["detail_notes"]) == (0, [], None)
    assert entry["growth_instrument"] == {"id": 3}
    assert entry["target_material"] == {
        "sample_id": material,
        "sample_name": f"{unique} BTO on STO",
        "substrate": "SrTiO3",
    }
    unlinked = listed(client_a, bare["id"])
    assert (unlinked["target_material"], unlinked["growth_instrument"]) == (None, None)

    renamed = client_a.patch(
        f"{MATERIALS}{material}", json={"sample_name": f"{unique} BTO v2", "substrate": "MgO"}
    )
    assert renamed.status_code == 200, renamed.text
    nested = listed(client_a, sample["id"])["target_material"]
    assert (nested["sample_name"], nested["substrate"]) == (f"{unique} BTO v2", "MgO")


def test_listing_is_oldest_first(client_a: httpx.Client, unique: str) -> None:
    made = [create(client_a, f"{unique} {n}")["id"] for n in range(3)]
    order = [s["id"] for s in client_a.get(SAMPLES).json() if s["id"] in made]
    assert order == made


def test_listing_filters_by_physical_sample_id(
    client_a: httpx.Client, client_b: httpx.Client, unique: str
) -> None:
    sample = create(client_a, f"{unique} run")
    create(client_a, f"{unique} other")
    foreign = create(client_b, f"{unique} B's run")

    def ids(**params: Any) -> list[str]:
        reply = client_a.get(SAMPLES, params=params)
        assert reply.status_code == 200, reply.text
        return [s["id"] for s in reply.json()]

    assert ids(physical_sample_id=sample["id"]) == [sample["id"]]
    # Any spelling of the UUID finds it; the reply spells it canonically.
    assert ids(physical_sample_id=sample["id"].upper()) == [sample["id"]]
    assert ids(physical_sample_id=str(uuid.uuid4())) == []
    assert ids(physical_sample_id=foreign["id"]) == []
    for malformed in ("not-a-uuid", sample["id"][:-1], "1"):
        reply = client_a.get(SAMPLES, params={"physical_sample_id": malformed})
        assert reply.status_code == 422
        assert reply.json()["detail"][0]["loc"] == ["query", "physical_sample_id"]


def test_listing_filters_by_has_data_item(client_a: httpx.Client, unique: str) -> None:
    sample = create(client_a, f"{unique} run")
    assert client_a.get(SAMPLES, params={"has_data_item": "true"}).json() == []
    without = client_a.get(SAMPLES, params={"has_data_item": "false"}).json()
    assert sample["id"] in [s["id"] for s in without]
    assert client_a.get(SAMPLES, params={"has_data_item": "maybe"}).status_code == 422


# --- the target-material link ------------------------------------------------------------


def test_link_relink_and_clear_the_target_material(client_a: httpx.Client, unique: str) -> None:
    first = create_material(client_a, f"{unique} first", substrate="SrTiO3")
    second = create_material(client_a, f"{unique} second", substrate="MgO")
    sample = create(client_a, f"{unique} run")
    path = f"{SAMPLES}{sample['id']}/target_material"

    versions = [sample["version"]]
    for target, substrate in ((first, "SrTiO3"), (second, "MgO"), (None, None)):
        reply = client_a.patch(path, json={"target_material_id": target})
        assert reply.status_code == 200, reply.text
        linked = reply.json()
        assert set(linked) == REPLY_FIELDS
        assert (linked["id"], linked["sample_id"]) == (sample["id"], target)
        versions.append(linked["version"])
        nested = listed(client_a, sample["id"])["target_material"]
        if target is None:
            assert nested is None
        else:
            assert (nested["sample_id"], nested["substrate"]) == (target, substrate)
    # Every accepted link write is a new version, as every target-material PATCH is.
    assert versions == ["0.269.1", "0.269.2", "0.269.3", "0.269.4"]


@pytest.mark.parametrize("body", [{}, {"target_material_id": "1"}, {"target_material_id": 0}])
def test_link_body_needs_the_key_with_an_id_or_null(
    sandbox: SandboxHandle, client_a: httpx.Client, unique: str, body: dict[str, Any]
) -> None:
    sample = create(client_a, f"{unique} run")
    reply = client_a.patch(f"{SAMPLES}{sample['id']}/target_material", json=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"][0] == "body"
    assert listed(client_a, sample["id"])["version"] == "0.269.1"


def test_link_to_another_organisations_material_or_sample_is_404(
    sandbox: SandboxHandle, client_a: httpx.Client, client_b: httpx.Client, unique: str
) -> None:
    own_material = create_material(client_a, f"{unique} film")
    sample = create(client_a, f"{unique} run", sample_id=own_material)
    foreign_material = create_material(client_b, f"{unique} B's film")
    foreign_sample = create(client_b, f"{unique} B's run")
    before = (
        sandbox.physical_samples(organisation="lab-a"),
        sandbox.physical_samples(organisation="lab-b"),
    )

    to_foreign = client_a.patch(
        f"{SAMPLES}{sample['id']}/target_material", json={"target_material_id": foreign_material}
    )
    assert to_foreign.status_code == 404
    assert to_foreign.json() == {"detail": f"Target material {foreign_material} not found"}

    missing = str(uuid.uuid4())
    for absent in (foreign_sample["id"], missing):
        reply = client_a.patch(
            f"{SAMPLES}{absent}/target_material", json={"target_material_id": own_material}
        )
        assert reply.status_code == 404
        # A foreign sample is answered exactly like a missing one.
        assert reply.json() == {"detail": f"Physical sample {absent} not found"}
    after = (
        sandbox.physical_samples(organisation="lab-a"),
        sandbox.physical_samples(organisation="lab-b"),
    )
    assert after == before


def test_a_malformed_id_in_the_path_is_422(client_a: httpx.Client) -> None:
    for path in ("not-a-uuid/target_material", "123", "0/target_material"):
        reply = client_a.patch(f"{SAMPLES}{path}", json={"target_material_id": None})
        assert reply.status_code == 422, (path, reply.text)
        assert reply.json()["detail"][0]["loc"] == ["path", "physical_sample_id"]


# --- PATCH /physical_samples/{id} ----------------------------------------------------------


def test_patch_changes_only_the_given_fields_and_rechecks_the_name(
    sandbox: SandboxHandle, client_a: httpx.Client, unique: str
) -> None:
    material = create_material(client_a, f"{unique} film")
    sample = create(client_a, f"{unique} run", sample_id=material, detail_notes_id=4)
    other = create(client_a, f"{unique} other")
    path = f"{SAMPLES}{sample['id']}"

    changed = client_a.patch(
        path,
        json={
            "growth_instrument_id": 9,
            "physical_sample_metadata": {"temperature_c": 650, "gas": ["O2"]},
            "sample_id": 10**12,  # not a field of this route: ignored, not 404
        },
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert set(body) == REPLY_FIELDS
    assert body["growth_instrument_id"] == 9
    assert body["physical_sample_metadata"] == {"temperature_c": 650, "gas": ["O2"]}
    assert (body["name"], body["sample_id"], body["detail_notes_id"]) == (
        f"{unique} run",
        material,
        4,
    )
    assert body["version"] == "0.269.2"
    assert body["created_datetime"] == sample["created_datetime"]
    assert body["last_updated"] >= sample["last_updated"]

    # Its own name in another case is no clash; another sample's name is.
    recased = client_a.patch(path, json={"name": f"  {unique} RUN "})
    assert (recased.status_code, recased.json()["name"]) == (200, f"{unique} RUN")
    clash = client_a.patch(path, json={"name": f"{unique} OTHER"})
    assert clash.status_code == 409
    assert clash.json() == {"detail": {"message": TAKEN, "physical_sample_id": other["id"]}}

    cleared = client_a.patch(
        path,
        json={
            "growth_instrument_id": None,
            "detail_notes_id": None,
            "physical_sample_metadata": None,
        },
    )
    assert cleared.status_code == 200
    assert [cleared.json()[f] for f in ("growth_instrument_id", "detail_notes_id")] == [None, None]
    assert cleared.json()["physical_sample_metadata"] is None
    assert cleared.json()["name"] == f"{unique} RUN"

    for bad in ({"name": None}, {"name": "  "}, {"name": "x" * 257}, {"growth_instrument_id": -1}):
        assert client_a.patch(path, json=bad).status_code == 422, bad
    assert client_a.patch(f"{SAMPLES}{uuid.uuid4()}", json={"name": "x"}).status_code == 404
    (stored,) = [s for s in sandbox.physical_samples() if s["id"] == sample["id"]]
    assert stored["name"] == f"{unique} RUN"


# --- the audit -----------------------------------------------------------------------------


def test_every_physical_sample_write_is_in_the_audit(
    sandbox: SandboxHandle, client_a: httpx.Client, unique: str
) -> None:
    material = create_material(client_a, f"{unique} film")
    start = sandbox.app.store.last_history_seq()
    sample = create(client_a, f"{unique} run")
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_A2}) as colleague:
        reply = colleague.patch(
            f"{SAMPLES}{sample['id']}/target_material", json={"target_material_id": material}
        )
        assert reply.status_code == 200
    assert client_a.patch(f"{SAMPLES}{sample['id']}", json={"name": f"{unique} b"}).is_success
    # Refused writes change nothing, so they leave no entry.
    assert client_a.post(SAMPLES, json={"name": f"{unique} B"}).status_code == 409
    assert client_a.post(SAMPLES, json={"name": "x", "sample_id": 10**12}).status_code == 404

    entries = [e for e in sandbox.history(after=start) if e["record_id"] == sample["id"]]
    assert entries == sandbox.history(after=start, kind="physical_sample", organisation="lab-a")
    ann = ApiKeyGrant("lab-a").user_id
    colleague_id = ApiKeyGrant("lab-a", user="a-colleague").user_id
    assert [(e["action"], e["kind"], e["sample_id"], e["user_id"]) for e in entries] == [
        ("insert", "physical_sample", None, ann),
        ("update", "physical_sample", material, colleague_id),
        ("update", "physical_sample", material, ann),
    ]
    assert [e["row"]["name"] for e in entries] == [f"{unique} run", f"{unique} run", f"{unique} b"]
    assert [e["row"]["version"] for e in entries] == [1, 2, 3]
    assert entries[0]["row"]["id"] == sample["id"]
    assert all(e["organisation"] == "lab-a" and e["layer_id"] is None for e in entries)
    assert all(e["fault"] is None and e["gave_up_at"] is None for e in entries)
    # Filtering by target material finds the link too.
    by_material = sandbox.history(after=start, sample_id=material)
    assert [e["seq"] for e in by_material] == [e["seq"] for e in entries[1:]]


# --- concurrency and lost replies ------------------------------------------------------------


def test_concurrent_creates_of_one_name_give_one_record_and_seven_409s(
    sandbox: SandboxHandle, unique: str
) -> None:
    barrier = threading.Barrier(8)
    replies: list[httpx.Response] = []
    lock = threading.Lock()

    def create_once(index: int) -> None:
        # Spellings differ in case and padding: all one name.
        name = f" {unique} Race " if index % 2 else f"{unique} RACE"
        with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_A}, timeout=30) as c:
            barrier.wait()
            reply = c.post(SAMPLES, json={"name": name})
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=create_once, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(reply.status_code for reply in replies)
    assert statuses == [201] + [409] * 7, [r.text for r in replies]
    (created,) = [reply.json() for reply in replies if reply.status_code == 201]
    taken_ids = {
        reply.json()["detail"]["physical_sample_id"]
        for reply in replies
        if reply.status_code == 409
    }
    assert taken_ids == {created["id"]}
    stored = [
        s
        for s in sandbox.physical_samples(organisation="lab-a")
        if s["name"].lower() == f"{unique} race"
    ]
    assert [s["id"] for s in stored] == [created["id"]]


@pytest.mark.parametrize("fault", ["500_after_commit", "drop_after_commit"])
def test_a_reply_lost_after_commit_leaves_exactly_one_record(
    sandbox: SandboxHandle, client_a: httpx.Client, unique: str, fault: str
) -> None:
    start = sandbox.app.store.last_history_seq()
    sandbox.faults.queue([fault])
    try:
        reply = client_a.post(SAMPLES, json={"name": f"{unique} lost"})
    except httpx.TransportError:
        assert fault == "drop_after_commit"
    else:
        assert fault == "500_after_commit"
        assert reply.status_code == 500
    finally:
        sandbox.faults.clear()
    assert sandbox.stats.faults == {fault: 1}
    (stored,) = stored_named(sandbox, "lab-a", f"{unique} lost")
    # The retry a client makes finds the committed record by the 409.
    retry = client_a.post(SAMPLES, json={"name": f"{unique} lost"})
    assert retry.status_code == 409
    assert retry.json()["detail"]["physical_sample_id"] == stored["id"]
    assert len(stored_named(sandbox, "lab-a", f"{unique} lost")) == 1
    (entry,) = sandbox.history(after=start, kind="physical_sample")
    assert (entry["record_id"], entry["fault"]) == (stored["id"], fault)


# --- configuration and storage -------------------------------------------------------------


@pytest.mark.integration
def test_the_409_shape_is_configured_at_start_and_from_the_command_line(tmp_path: Path) -> None:
    from atomscale_sandbox.__main__ import _parser

    assert _parser().parse_args([]).physical_sample_conflict == "object"
    options = _parser().parse_args(["--physical-sample-conflict", "string"])
    assert options.physical_sample_conflict == "string"
    with pytest.raises(SystemExit):
        _parser().parse_args(["--physical-sample-conflict", "list"])
    with pytest.raises(ValueError, match="physical_sample_conflict"):
        SandboxConfig(physical_sample_conflict="list")  # type: ignore[arg-type]

    config = SandboxConfig(
        api_keys={"key": "lab"}, db_path=tmp_path / "s.db", physical_sample_conflict="string"
    )
    with run_sandbox(config) as server:
        assert server.physical_sample_conflict == "string"
        headers = {"X-API-KEY": "key"}
        first = httpx.post(f"{server.url}{SAMPLES}", headers=headers, json={"name": "Run 1"})
        assert first.status_code == 201
        again = httpx.post(f"{server.url}{SAMPLES}", headers=headers, json={"name": "run 1"})
        assert again.json() == {"detail": TAKEN}
    # The records and the name's uniqueness survive a restart on the same database.
    with run_sandbox(SandboxConfig(api_keys={"key": "lab"}, db_path=tmp_path / "s.db")) as server:
        assert server.physical_sample_conflict == "object"
        again = httpx.post(f"{server.url}{SAMPLES}", headers=headers, json={"name": " RUN 1"})
        assert again.status_code == 409
        assert again.json()["detail"]["physical_sample_id"] == first.json()["id"]
        assert [s["id"] for s in server.physical_samples()] == [first.json()["id"]]
