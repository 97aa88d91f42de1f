"""The sandbox server over real HTTP: API behaviour, isolation, storage, faults, counters."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atomscale_sandbox import ApiKeyGrant, FaultConfig, SandboxConfig, SandboxHandle, run_sandbox
from atomscale_sandbox._materials import match_material
from atomscale_sandbox._schemas import MAX_JSON_DEPTH
from atomscale_sandbox._stats import UNROUTED

KEY_A = "sandbox-test-key-a"
KEY_A2 = "sandbox-test-key-a-second"
KEY_B = "sandbox-test-key-b"
KEY_READ_ONLY = "sandbox-test-key-a-read-only"

MATERIALS = "/target-materials/"
LAYERS = "/target-materials/layers/"

LAYER_FIELDS = {
    "id",
    "layer_id",
    "sample_id",
    "composition_string",
    "element_dict",
    "orientation",
    "space_group",
    "mp_id",
}
MATERIAL_FIELDS = {
    "sample_id",
    "sample_name",
    "substrate",
    "sample_metadata",
    "detail_notes_id",
    "user_id",
    "version",
    "last_updated",
}
ROW_FIELDS = {
    "id",
    "sample_id",
    "sample_name",
    "substrate",
    "layer_id",
    "composition_string",
    "element_dict",
    "orientation",
    "space_group",
    "mp_id",
    "sample_metadata",
    "user_id",
    "version",
    "last_updated",
}


def _config(**overrides: Any) -> SandboxConfig:
    return SandboxConfig(
        api_keys={
            KEY_A: "lab-a",
            KEY_A2: "lab-a",
            KEY_B: "lab-b",
            KEY_READ_ONLY: ApiKeyGrant("lab-a", read_only=True),
        },
        **overrides,
    )


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with run_sandbox(_config()) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_faults_fresh_counts(sandbox: SandboxHandle) -> Iterator[None]:
    sandbox.faults.clear()
    sandbox.faults.set(methods={"POST", "PATCH"}, paths=None, slow_seconds=2.0)
    sandbox.reset_stats()
    yield
    sandbox.faults.clear()


@pytest.fixture
def client_a(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_A}, timeout=5) as client:
        yield client


@pytest.fixture
def client_b(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_B}, timeout=5) as client:
        yield client


def create_material(client: httpx.Client, name: str = "BTO on STO", **extra: Any) -> int:
    body = {"sample": {"sample_name": name, "substrate": "SrTiO3", "sample_metadata": {}}}
    reply = client.post(MATERIALS, json=body | extra)
    assert reply.status_code == 201, reply.text
    return int(reply.json()["sample_id"])


def add_layer(client: httpx.Client, sample_id: int | None, layer_id: int = 1, **fields: Any) -> Any:
    body = {"layer_id": layer_id, "sample_id": sample_id, "composition_string": "MgO"} | fields
    reply = client.post(LAYERS, json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def assert_validation_error(reply: httpx.Response) -> list[dict[str, Any]]:
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert isinstance(detail, list)
    assert detail
    for item in detail:
        assert {"type", "loc", "msg", "input"} <= set(item)
    return detail


# --- documentation and auth ------------------------------------------------------------


def test_docs_openapi_and_health_need_no_key(sandbox: SandboxHandle) -> None:
    schema = httpx.get(f"{sandbox.url}/openapi.json").json()
    assert schema["info"]["title"] == "Atomscale API sandbox"
    assert {
        "/target-materials/",
        "/target-materials/layers/",
        "/target-materials/{sample_id}",
        "/target-materials/{sample_id}/layers",
        "/physical_samples/",
        "/physical_samples/{physical_sample_id}",
        "/physical_samples/{physical_sample_id}/target_material",
    } <= set(schema["paths"])
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]
    assert httpx.get(f"{sandbox.url}/docs").status_code == 200
    assert httpx.get(f"{sandbox.url}/health").json() == {"status": "ok"}


ROUTES = [
    ("GET", MATERIALS, None),
    ("POST", MATERIALS, {"sample": {"sample_name": "x", "substrate": "y"}}),
    ("PATCH", "/target-materials/1", {"sample_name": "x"}),
    ("POST", LAYERS, {"layer_id": 1}),
    ("PATCH", LAYERS, {"layer_id": 1, "sample_id": 1}),
    ("POST", "/target-materials/1/layers", []),
    ("GET", "/physical_samples/", None),
    ("POST", "/physical_samples/", {"name": "run"}),
    ("PATCH", "/physical_samples/00000000-0000-4000-8000-000000000001", {"name": "run"}),
    (
        "PATCH",
        "/physical_samples/00000000-0000-4000-8000-000000000001/target_material",
        {"target_material_id": None},
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-KEY": ""}, {"X-API-KEY": "wrong"}, {"X-API-KEY": KEY_A[:-1]}],
    ids=["missing", "empty", "wrong", "prefix-of-real"],
)
def test_missing_or_unknown_key_is_401(
    sandbox: SandboxHandle, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    before = (sandbox.target_materials(), sandbox.layer_rows(), sandbox.physical_samples())
    reply = httpx.request(method, f"{sandbox.url}{path}", json=body, headers=headers)
    assert reply.status_code == 401
    assert isinstance(reply.json()["detail"], str)
    assert (sandbox.target_materials(), sandbox.layer_rows(), sandbox.physical_samples()) == before


def test_non_ascii_key_is_401_not_500(sandbox: SandboxHandle) -> None:
    reply = httpx.get(f"{sandbox.url}{MATERIALS}", headers={"X-API-KEY": b"\xff\xfekey"})
    assert reply.status_code == 401


def test_key_is_never_echoed(sandbox: SandboxHandle) -> None:
    assert KEY_A not in repr(sandbox)
    assert KEY_A not in repr(sandbox.config)
    near_miss = KEY_A + "x"
    reply = httpx.get(f"{sandbox.url}{MATERIALS}", headers={"X-API-KEY": near_miss})
    assert near_miss not in reply.text
    reply = httpx.post(
        f"{sandbox.url}{LAYERS}", headers={"X-API-KEY": KEY_A}, json={"layer_id": "bad"}
    )
    assert reply.status_code == 422
    assert KEY_A not in reply.text


@pytest.mark.parametrize(("method", "path", "body"), [r for r in ROUTES if r[0] != "GET"])
def test_read_only_key_may_read_but_every_write_is_403(
    sandbox: SandboxHandle, client_a: httpx.Client, method: str, path: str, body: Any
) -> None:
    create_material(client_a)
    headers = {"X-API-KEY": KEY_READ_ONLY}
    before = (sandbox.target_materials(), sandbox.layer_rows(), sandbox.physical_samples())
    assert httpx.get(f"{sandbox.url}{MATERIALS}", headers=headers).status_code == 200
    reply = httpx.request(method, f"{sandbox.url}{path}", json=body, headers=headers)
    assert reply.status_code == 403
    assert isinstance(reply.json()["detail"], str)
    assert (sandbox.target_materials(), sandbox.layer_rows(), sandbox.physical_samples()) == before


def test_keys_of_one_organisation_share_its_records(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a, "shared")
    add_layer(client_a, sample_id)
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_A2}) as second:
        rows = [row for row in second.get(MATERIALS).json() if row["sample_id"] == sample_id]
        assert len(rows) == 1
        assert add_layer(second, sample_id, layer_id=2)["sample_id"] == sample_id


def test_one_organisation_never_sees_or_changes_another(
    sandbox: SandboxHandle, client_a: httpx.Client, client_b: httpx.Client
) -> None:
    sample_a = create_material(client_a, "lab A's")
    add_layer(client_a, sample_a, composition_string="BaTiO3", orientation="001")
    before = (
        sandbox.target_materials(organisation="lab-a"),
        sandbox.layer_rows(organisation="lab-a"),
    )

    assert all(row["sample_id"] != sample_a for row in client_b.get(MATERIALS).json())
    # Every route answers a foreign sample_id exactly like a missing one.
    attempts = [
        client_b.patch(f"/target-materials/{sample_a}", json={"sample_name": "stolen"}),
        client_b.post(LAYERS, json={"layer_id": 2, "sample_id": sample_a}),
        client_b.patch(LAYERS, json={"layer_id": 1, "sample_id": sample_a, "orientation": "111"}),
        client_b.post(f"/target-materials/{sample_a}/layers", json=[{"layer_id": 1}]),
    ]
    missing = 10**12
    lookalikes = [
        client_b.patch(f"/target-materials/{missing}", json={"sample_name": "stolen"}),
        client_b.post(LAYERS, json={"layer_id": 2, "sample_id": missing}),
        client_b.patch(LAYERS, json={"layer_id": 1, "sample_id": missing, "orientation": "111"}),
        client_b.post(f"/target-materials/{missing}/layers", json=[{"layer_id": 1}]),
    ]
    for foreign, absent in zip(attempts, lookalikes, strict=True):
        assert foreign.status_code == absent.status_code == 404
        assert foreign.json()["detail"].replace(str(sample_a), "N") == absent.json()[
            "detail"
        ].replace(str(missing), "N")
    after = (
        sandbox.target_materials(organisation="lab-a"),
        sandbox.layer_rows(organisation="lab-a"),
    )
    assert after == before
    assert sandbox.layer_rows(organisation="lab-b") == []


# --- target materials ----------------------------------------------------------------


def test_create_target_material_with_layers_then_list_one_row_per_layer(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    body = {
        "sample": {
            "sample_name": "BTO/STO",
            "substrate": "SrTiO3",
            "sample_metadata": {"grower": "ann", "runs": [1, 2]},
        },
        "layers": [
            {"layer_id": 1, "composition_string": "SrTiO3", "orientation": "001"},
            {"layer_id": 2, "composition_string": "BaTiO3", "orientation": "001"},
        ],
        "ignored_extra_field": True,
    }
    reply = client_a.post(MATERIALS, json=body)
    assert reply.status_code == 201
    material = reply.json()
    assert set(material) == MATERIAL_FIELDS
    assert material["sample_name"] == "BTO/STO"
    assert material["sample_metadata"] == {"grower": "ann", "runs": [1, 2]}
    assert material["version"] == "0.269.1"
    assert material["detail_notes_id"] is None
    assert datetime.fromisoformat(material["last_updated"]).utcoffset().total_seconds() == 0

    rows = [
        row for row in client_a.get(MATERIALS).json() if row["sample_id"] == material["sample_id"]
    ]
    assert [row["layer_id"] for row in rows] == [1, 2]
    assert all(set(row) == ROW_FIELDS for row in rows)
    assert rows[1]["composition_string"] == "BaTiO3"
    assert rows[1]["element_dict"] == {"Ba": 1, "Ti": 1, "O": 3}
    assert rows[1]["space_group"] == "P4mm"
    assert all(row["user_id"] == material["user_id"] for row in rows)


def test_user_id_is_stable_per_organisation(
    client_a: httpx.Client, client_b: httpx.Client, sandbox: SandboxHandle
) -> None:
    body = {"sample": {"sample_name": "u", "substrate": "MgO"}}
    first, second = client_a.post(MATERIALS, json=body).json(), client_a.post(MATERIALS, json=body)
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_A2}) as same_org:
        third = same_org.post(MATERIALS, json=body).json()
    other = client_b.post(MATERIALS, json=body).json()
    assert first["user_id"] == second.json()["user_id"] == third["user_id"] != other["user_id"]
    assert second.json()["sample_id"] > first["sample_id"]


def test_material_without_layers_is_not_listed_by_default(client_a: httpx.Client) -> None:
    sample_id = create_material(client_a, "empty")
    assert all(row["sample_id"] != sample_id for row in client_a.get(MATERIALS).json())


def test_material_without_layers_can_be_listed_as_one_row() -> None:
    with (
        run_sandbox(_config(list_empty_materials=True)) as server,
        httpx.Client(base_url=server.url, headers={"X-API-KEY": KEY_A}) as client,
    ):
        sample_id = create_material(client, "empty")
        (row,) = client.get(MATERIALS).json()
        assert row["sample_id"] == sample_id
        assert row["sample_name"] == "empty"
        assert set(row) == ROW_FIELDS
        assert all(row[field] is None for field in LAYER_FIELDS - {"sample_id"})


def test_patch_target_material_changes_given_fields_and_bumps_version(
    client_a: httpx.Client,
) -> None:
    reply = client_a.post(MATERIALS, json={"sample": {"sample_name": "old", "substrate": "MgO"}})
    created = reply.json()
    path = f"/target-materials/{created['sample_id']}"

    reply = client_a.patch(path, json={"sample_name": "new", "sample_metadata": {"a": 1}})
    assert reply.status_code == 200
    patched = reply.json()
    assert set(patched) == MATERIAL_FIELDS
    assert patched["sample_name"] == "new"
    assert patched["substrate"] == "MgO"
    assert patched["sample_metadata"] == {"a": 1}
    assert patched["version"] == "0.269.2"
    assert patched["last_updated"] >= created["last_updated"]
    assert client_a.patch(path, json={}).json()["version"] == "0.269.3"

    assert_validation_error(client_a.patch(path, json={"sample_name": None}))
    assert client_a.patch("/target-materials/999999999", json={}).status_code == 404
    assert_validation_error(client_a.patch("/target-materials/abc", json={}))


# --- layers ----------------------------------------------------------------------------


def test_reference_example_reply(client_a: httpx.Client) -> None:
    sample_id = create_material(client_a)
    request = {
        "layer_id": 1,
        "sample_id": sample_id,
        "composition_string": "BaTiO3",
        "orientation": "001",
    }
    reply = client_a.post(LAYERS, json=request)
    assert reply.status_code == 200
    layer = reply.json()
    assert isinstance(layer["id"], int)
    assert layer == {
        "id": layer["id"],
        "layer_id": 1,
        "sample_id": sample_id,
        "composition_string": "BaTiO3",
        "element_dict": {"Ba": 1, "Ti": 1, "O": 3},
        "orientation": "001",
        "space_group": "P4mm",
        "mp_id": "mp-5020",
    }


def test_repeated_layer_post_silently_stores_a_second_row(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    first = add_layer(client_a, sample_id, layer_id=1)
    second = add_layer(client_a, sample_id, layer_id=1)
    assert first["id"] != second["id"]
    assert sandbox.count_layers(sample_id=sample_id, layer_id=1) == 2
    listed = [row for row in client_a.get(MATERIALS).json() if row["sample_id"] == sample_id]
    assert [row["id"] for row in listed] == [first["id"], second["id"]]


@pytest.mark.parametrize(
    ("fields", "element_dict", "space_group", "mp_id"),
    [
        ({"composition_string": "BaTiO3"}, {"Ba": 1, "Ti": 1, "O": 3}, "P4mm", "mp-5020"),
        ({"composition_string": "Ti1Sr1O3"}, {"Ti": 1, "Sr": 1, "O": 3}, "Pm-3m", "mp-5229"),
        ({"composition_string": "GaN"}, {"Ga": 1, "N": 1}, "P6_3mc", "mp-804"),
        ({"composition_string": "SrRuO3"}, {"Sr": 1, "Ru": 1, "O": 3}, "Pnma", None),
        (
            {"composition_string": "SrTi0.8Nb0.2O3"},
            {"Sr": 1, "Ti": 0.8, "Nb": 0.2, "O": 3},
            None,
            None,
        ),
        (
            {"composition_string": "(La0.7Sr0.3)MnO3"},
            {"La": 0.7, "Sr": 0.3, "Mn": 1, "O": 3},
            None,
            None,
        ),
        # Given fields are stored as given, and still drive the table look-up.
        (
            {"composition_string": "STO", "element_dict": {"Sr": 1, "Ti": 1, "O": 3}},
            {"Sr": 1, "Ti": 1, "O": 3},
            "Pm-3m",
            "mp-5229",
        ),
        (
            {"composition_string": "BaTiO3", "space_group": "P4/mmm", "mp_id": "mp-1"},
            {"Ba": 1, "Ti": 1, "O": 3},
            "P4/mmm",
            "mp-1",
        ),
        ({"composition_string": None}, None, None, None),
    ],
)
def test_element_dict_is_derived_and_known_materials_filled_in(
    client_a: httpx.Client,
    fields: dict[str, Any],
    element_dict: Any,
    space_group: str | None,
    mp_id: str | None,
) -> None:
    layer = add_layer(client_a, create_material(client_a), **fields)
    assert layer["element_dict"] == element_dict
    if element_dict is not None:
        # 1 and 1.0 compare equal in Python, so check that counts stay integers.
        assert [type(v) for v in layer["element_dict"].values()] == [
            type(v) for v in element_dict.values()
        ]
    assert (layer["space_group"], layer["mp_id"]) == (space_group, mp_id)


def test_materials_table_matches_multiples_but_not_other_compositions() -> None:
    strontium_titanate = match_material({"Sr": 1, "Ti": 1, "O": 3})
    assert strontium_titanate is not None
    assert match_material({"O": 6, "Sr": 2, "Ti": 2}) == strontium_titanate
    assert match_material({"Sr": 1.0, "Ti": 1.0, "O": 3.0}) == strontium_titanate
    assert match_material({"Sr": 1, "Ti": 1, "O": 2}) is None
    assert match_material({"Sr": 0, "Ti": 1, "O": 3}) is None
    assert match_material({}) is None


def test_unknown_formula_is_422_located_at_the_composition(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    detail = assert_validation_error(
        client_a.post(
            LAYERS, json={"layer_id": 1, "sample_id": sample_id, "composition_string": "Xx2O3"}
        )
    )
    assert detail[0]["loc"] == ["body", "composition_string"]
    assert detail[0]["input"] == "Xx2O3"
    assert "Xx" in detail[0]["msg"]

    body = {
        "sample": {"sample_name": "bad stack", "substrate": "MgO"},
        "layers": [
            {"layer_id": 1, "composition_string": "MgO"},
            {"layer_id": 2, "composition_string": "Qq"},
        ],
    }
    detail = assert_validation_error(client_a.post(MATERIALS, json=body))
    assert detail[0]["loc"] == ["body", "layers", 1, "composition_string"]

    stack = [{"layer_id": 1, "composition_string": "(BaTiO3"}]
    detail = assert_validation_error(
        client_a.post(f"/target-materials/{sample_id}/layers", json=stack)
    )
    assert detail[0]["loc"] == ["body", 0, "composition_string"]

    assert sandbox.count_layers(sample_id=sample_id) == 0
    assert all(m["sample_name"] != "bad stack" for m in sandbox.target_materials())
    # With element_dict given, the formula is stored as given, unchecked.
    assert add_layer(client_a, sample_id, composition_string="Xx2O3", element_dict={"O": 3})


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"layer_id": 1,', ["body", 15]),
        (b"[1, 2", ["body", 5]),
        (b'{"layer_id": 0}', ["body", "layer_id"]),
        (b'{"layer_id": -1}', ["body", "layer_id"]),
        (b'{"layer_id": "1"}', ["body", "layer_id"]),
        (b'{"layer_id": 1.5}', ["body", "layer_id"]),
        (b'{"layer_id": true}', ["body", "layer_id"]),
        (b'{"layer_id": 18446744073709551616}', ["body", "layer_id"]),
        (b'{"sample_id": 1}', ["body", "layer_id"]),
        (b'{"layer_id": 1, "sample_id": false}', ["body", "sample_id"]),
        (b'{"layer_id": 1, "id": 0}', ["body", "id"]),
        (b'{"layer_id": 1, "element_dict": {"O": true}}', ["body", "element_dict", "O"]),
        (b'{"layer_id": 1, "element_dict": {"O": NaN}}', ["body", "element_dict", "O"]),
        (b'{"layer_id": 1, "element_dict": {"O": Infinity}}', ["body", "element_dict", "O"]),
        (b'{"layer_id": 1, "element_dict": [["O", 3]]}', ["body", "element_dict"]),
        (b'{"layer_id": 1, "element_dict": {"": 3}}', ["body", "element_dict", ""]),
        (b'{"layer_id": 1, "orientation": "' + b"1" * 33 + b'"}', ["body", "orientation"]),
        (b'{"layer_id": 1, "orientation": 1}', ["body", "orientation"]),
        (
            b'{"layer_id": 1, "composition_string": "' + b"O" * 257 + b'"}',
            ["body", "composition_string"],
        ),
        (b'{"layer_id": 1, "mp_id": "\\ud800"}', ["body", "mp_id"]),
        (b"[]", ["body"]),
        (b'"text"', ["body"]),
    ],
)
def test_invalid_layer_bodies_get_fastapi_shaped_422(
    sandbox: SandboxHandle, client_a: httpx.Client, body: bytes, loc: list[Any]
) -> None:
    before = sandbox.count_layers()
    reply = client_a.post(LAYERS, content=body, headers={"Content-Type": "application/json"})
    detail = assert_validation_error(reply)
    assert loc in [item["loc"][: len(loc)] for item in detail]
    assert sandbox.count_layers() == before


@pytest.mark.parametrize(
    "body",
    [
        {"sample": {"sample_name": "x"}},
        {"sample": {"sample_name": "x" * 257, "substrate": "y"}},
        {"sample": {"sample_name": "x", "substrate": "y", "sample_metadata": [1]}},
        {"sample": "x"},
        {"layers": []},
    ],
)
def test_invalid_target_material_bodies_get_422(client_a: httpx.Client, body: Any) -> None:
    assert_validation_error(client_a.post(MATERIALS, json=body))


def test_nan_in_metadata_is_422_not_500(client_a: httpx.Client) -> None:
    body = b'{"sample": {"sample_name": "x", "substrate": "y", "sample_metadata": {"a": NaN}}}'
    reply = client_a.post(MATERIALS, content=body, headers={"Content-Type": "application/json"})
    detail = assert_validation_error(reply)
    assert detail[0]["loc"][:3] == ["body", "sample", "sample_metadata"]


def test_deeply_nested_json_is_422_not_500(client_a: httpx.Client) -> None:
    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = {"a": value}
        return value

    deepest = MAX_JSON_DEPTH
    sample = {"sample_name": "deep", "substrate": "MgO", "sample_metadata": nested(deepest)}
    reply = client_a.post(MATERIALS, json={"sample": sample})
    assert reply.status_code == 201
    assert reply.json()["sample_metadata"] == nested(deepest)

    sample["sample_metadata"] = nested(deepest + 1)
    assert_validation_error(client_a.post(MATERIALS, json={"sample": sample}))
    # A 422 echoes its input; a very deep one is cut short rather than failing.
    assert_validation_error(client_a.post(LAYERS, json=nested(500)))
    assert_validation_error(client_a.post(MATERIALS, json={"sample": nested(500)}))


def test_oversized_body_is_413_whether_declared_or_streamed(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    limit = sandbox.config.max_body_bytes
    layer = {"layer_id": 1, "sample_id": sample_id, "composition_string": "MgO"}
    exact = json.dumps(layer).encode()
    exact += b" " * (limit - len(exact))
    headers = {"Content-Type": "application/json"}
    assert client_a.post(LAYERS, content=exact, headers=headers).status_code == 200

    reply = client_a.post(LAYERS, content=exact + b" ", headers=headers)
    assert reply.status_code == 413
    assert isinstance(reply.json()["detail"], str)

    def chunks() -> Iterator[bytes]:
        yield exact
        yield b"    "

    assert client_a.post(LAYERS, content=chunks(), headers=headers).status_code == 413
    assert sandbox.count_layers(sample_id=sample_id) == 1


def test_layer_for_unknown_sample_is_404_and_without_sample_is_unattached(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    reply = client_a.post(LAYERS, json={"layer_id": 1, "sample_id": 987654321})
    assert reply.status_code == 404
    assert isinstance(reply.json()["detail"], str)

    unattached = add_layer(client_a, None, composition_string="AlN")
    assert unattached["sample_id"] is None
    assert all(row["id"] != unattached["id"] for row in client_a.get(MATERIALS).json())
    stored = [
        row for row in sandbox.layer_rows(organisation="lab-a") if row["id"] == unattached["id"]
    ]
    assert stored[0]["composition_string"] == "AlN"


def test_explicit_layer_id_is_kept_and_a_taken_one_is_409(
    sandbox: SandboxHandle, client_a: httpx.Client, client_b: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    explicit = 7_000_000_000
    assert add_layer(client_a, sample_id, id=explicit)["id"] == explicit
    reply = client_a.post(LAYERS, json={"layer_id": 2, "sample_id": sample_id, "id": explicit})
    assert reply.status_code == 409
    assert isinstance(reply.json()["detail"], str)
    # Record ids are global, like a database's primary key.
    assert client_b.post(LAYERS, json={"layer_id": 1, "id": explicit}).status_code == 409
    assert add_layer(client_a, sample_id)["id"] > explicit
    assert sandbox.count_layers(sample_id=sample_id) == 2


def test_patch_layer_changes_only_given_fields_and_rederives(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    add_layer(client_a, sample_id, composition_string="BaTiO3", orientation="001")

    reply = client_a.patch(
        LAYERS, json={"sample_id": sample_id, "layer_id": 1, "orientation": "110"}
    )
    assert reply.status_code == 200
    layer = reply.json()
    assert set(layer) == LAYER_FIELDS
    assert (layer["orientation"], layer["composition_string"], layer["mp_id"]) == (
        "110",
        "BaTiO3",
        "mp-5020",
    )

    reply = client_a.patch(
        LAYERS, json={"sample_id": sample_id, "layer_id": 1, "composition_string": "GaAs"}
    )
    layer = reply.json()
    assert layer["element_dict"] == {"Ga": 1, "As": 1}
    assert (layer["space_group"], layer["mp_id"], layer["orientation"]) == (
        "F-43m",
        "mp-2534",
        "110",
    )

    bad = client_a.patch(
        LAYERS, json={"sample_id": sample_id, "layer_id": 1, "composition_string": "Zz"}
    )
    assert assert_validation_error(bad)[0]["loc"] == ["body", "composition_string"]
    missing = client_a.patch(
        LAYERS, json={"sample_id": sample_id, "layer_id": 9, "orientation": "1"}
    )
    assert missing.status_code == 404
    assert_validation_error(client_a.patch(LAYERS, json={"layer_id": 1, "orientation": "1"}))


def test_patch_layer_with_duplicates_changes_only_the_oldest(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    first = add_layer(client_a, sample_id)
    second = add_layer(client_a, sample_id)
    client_a.patch(LAYERS, json={"sample_id": sample_id, "layer_id": 1, "orientation": "111"})
    orientations = {
        row["id"]: row["orientation"] for row in sandbox.layer_rows(sample_id=sample_id)
    }
    assert orientations == {first["id"]: "111", second["id"]: None}


def test_posting_a_stack_replaces_all_layers_atomically(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    for layer_id in (1, 2, 2):
        add_layer(client_a, sample_id, layer_id=layer_id)
    path = f"/target-materials/{sample_id}/layers"
    stack = [
        {"layer_id": 1, "composition_string": "SrTiO3", "sample_id": 123},
        {"layer_id": 2, "composition_string": "BaTiO3", "orientation": "001"},
    ]
    reply = client_a.post(path, json=stack)
    assert reply.status_code == 200
    assert reply.json() == {}
    rows = sandbox.layer_rows(sample_id=sample_id)
    assert [(row["layer_id"], row["composition_string"]) for row in rows] == [
        (1, "SrTiO3"),
        (2, "BaTiO3"),
    ]
    assert rows[1]["mp_id"] == "mp-5020"

    # A stack that fails part-way changes nothing.
    taken = add_layer(client_a, None)["id"]
    failing = [{"layer_id": 1, "composition_string": "MgO"}, {"layer_id": 2, "id": taken}]
    assert client_a.post(path, json=failing).status_code == 409
    assert sandbox.layer_rows(sample_id=sample_id) == rows
    assert (
        client_a.post(
            path, json=[{"layer_id": 1, "id": 10**10}, {"layer_id": 2, "id": 10**10}]
        ).status_code
        == 409
    )
    assert sandbox.layer_rows(sample_id=sample_id) == rows

    assert client_a.post(path, json=[]).json() == {}
    assert sandbox.count_layers(sample_id=sample_id) == 0
    assert_validation_error(client_a.post(path, json={"layer_id": 1}))


def test_records_survive_a_restart_on_the_same_database(tmp_path: Path) -> None:
    config = _config(db_path=tmp_path / "sandbox.db")
    with (
        run_sandbox(config) as first,
        httpx.Client(base_url=first.url, headers={"X-API-KEY": KEY_A}) as client,
    ):
        sample_id = create_material(client, "persisted")
        layer = add_layer(client, sample_id, composition_string="ZnO")
    with (
        run_sandbox(config) as second,
        httpx.Client(base_url=second.url, headers={"X-API-KEY": KEY_A}) as client,
    ):
        (row,) = client.get(MATERIALS).json()
        assert (row["sample_name"], row["id"], row["mp_id"]) == (
            "persisted",
            layer["id"],
            "mp-2133",
        )
        assert create_material(client, "after restart") > sample_id
        assert add_layer(client, sample_id)["id"] > layer["id"]


def test_temporary_database_is_deleted_on_stop() -> None:
    with run_sandbox() as server:
        database = server.app.store.path
        assert database.exists()
    assert not database.parent.exists()


# --- faults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "committed"),
    [
        ("503", 503, False),
        ("429", 429, False),
        ("502_html", 502, False),
        ("500_after_commit", 500, True),
        ("reset", None, False),
        ("drop_after_commit", None, True),
    ],
)
def test_each_fault_kind_fails_the_way_it_says(
    sandbox: SandboxHandle,
    client_a: httpx.Client,
    kind: str,
    status: int | None,
    committed: bool,
) -> None:
    sample_id = create_material(client_a)
    sandbox.faults.queue([kind])
    body = {"layer_id": 1, "sample_id": sample_id, "composition_string": "MgO"}
    if status is None:
        with pytest.raises(httpx.TransportError):
            client_a.post(LAYERS, json=body)
    else:
        reply = client_a.post(LAYERS, json=body)
        assert reply.status_code == status
        if kind == "502_html":
            assert reply.headers["content-type"].startswith("text/html")
            assert "<html>" in reply.text
        else:
            assert isinstance(reply.json()["detail"], str)
        if kind == "429":
            assert reply.headers["Retry-After"] == "1"
        if kind == "500_after_commit":
            assert reply.json() == {"detail": "Internal Server Error"}
    assert sandbox.count_layers(sample_id=sample_id) == (1 if committed else 0)
    assert sandbox.stats.faults == {kind: 1}
    # The server is fine afterwards, on the same client.
    assert add_layer(client_a, sample_id, layer_id=2)["layer_id"] == 2


def test_slow_after_commit_commits_then_outlasts_the_client_timeout(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    body = {"layer_id": 1, "sample_id": sample_id}
    sandbox.faults.queue(["slow_after_commit"])
    with pytest.raises(httpx.ReadTimeout):
        client_a.post(LAYERS, json=body, timeout=0.3)
    assert sandbox.count_layers(sample_id=sample_id) == 1

    # A patient client gets the held-back reply.
    sandbox.faults.set(slow_seconds=0.2)
    sandbox.faults.queue(["slow_after_commit"])
    assert client_a.post(LAYERS, json=body).status_code == 200
    assert sandbox.count_layers(sample_id=sample_id) == 2
    assert sandbox.stats.faults == {"slow_after_commit": 2}


def test_429_retry_after_is_configurable(sandbox: SandboxHandle, client_a: httpx.Client) -> None:
    sandbox.faults.retry_after_seconds = 7
    sandbox.faults.queue(["429"])
    assert client_a.post(MATERIALS, json={}).headers["Retry-After"] == "7"
    sandbox.faults.retry_after_seconds = 1


def test_fault_queue_is_exact_and_skips_requests_it_does_not_match(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    sandbox.faults.set(paths={"/target-materials/layers/"})
    sandbox.faults.queue(["503", "429", "500_after_commit"])
    body = {"layer_id": 1, "sample_id": sample_id}
    statuses = []
    for _ in range(4):
        assert client_a.get(MATERIALS).status_code == 200  # GET: not a write
        assert client_a.patch(f"/target-materials/{sample_id}", json={}).status_code == 200
        statuses.append(client_a.post(LAYERS, json=body).status_code)
    assert statuses == [503, 429, 500, 200]
    assert sandbox.faults.pending == ()
    assert sandbox.count_layers(sample_id=sample_id) == 2


def test_queued_faults_come_before_chance_and_can_include_reads(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sandbox.faults.set(rate=1.0, kinds={"503"}, methods={"GET"})
    sandbox.faults.queue(["429"])
    assert [client_a.get(MATERIALS).status_code for _ in range(3)] == [429, 503, 503]
    assert create_material(client_a)


def test_chance_faults_repeat_for_the_same_seed(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    body = {"sample": {"sample_name": "chance", "substrate": "MgO"}}

    def statuses() -> list[int]:
        return [client_a.post(MATERIALS, json=body).status_code for _ in range(30)]

    sandbox.faults.set(rate=0.5, kinds={"503", "429"}, seed=11)
    first = statuses()
    sandbox.faults.seed = 11
    assert statuses() == first
    assert {201, 503, 429} == set(first)
    assert sum(sandbox.stats.faults.values()) == 2 * (len(first) - first.count(201))


def test_fault_settings_are_validated() -> None:
    faults = FaultConfig()
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.queue(["503", "404"])
    assert faults.pending == ()
    with pytest.raises(ValueError, match="between 0 and 1"):
        faults.rate = 1.5
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.set(rate=0.5, kinds={"timeout"})
    assert faults.rate == 0.0


# --- counters ------------------------------------------------------------------------


def test_stats_count_requests_per_route_and_status(
    sandbox: SandboxHandle, client_a: httpx.Client
) -> None:
    sample_id = create_material(client_a)
    add_layer(client_a, sample_id)
    add_layer(client_a, sample_id)
    client_a.post(LAYERS, json={"layer_id": 0})
    client_a.get(MATERIALS)
    client_a.get("/no/such/route")
    sandbox.faults.queue(["503", "reset"])
    client_a.post(f"/target-materials/{sample_id}/layers", json=[])
    with pytest.raises(httpx.TransportError):
        client_a.post(f"/target-materials/{sample_id}/layers", json=[])

    stats = sandbox.stats
    assert stats.requests == 8
    assert stats.by_route == {
        ("POST", "/target-materials/"): 1,
        ("POST", "/target-materials/layers/"): 3,
        ("GET", "/target-materials/"): 1,
        ("GET", UNROUTED): 1,
        ("POST", "/target-materials/{sample_id}/layers"): 2,
    }
    assert stats.by_status == {201: 1, 200: 3, 422: 1, 404: 1, 503: 1}
    assert stats.faults == {"503": 1, "reset": 1}

    sandbox.reset_stats()
    assert sandbox.stats.requests == sandbox.stats.connections == 0


def test_connections_are_counted_at_the_server(sandbox: SandboxHandle) -> None:
    headers = {"X-API-KEY": KEY_A}
    with httpx.Client(base_url=sandbox.url, headers=headers) as pooled:
        for _ in range(10):
            assert pooled.get(MATERIALS).status_code == 200
    assert sandbox.stats.connections == 1

    sandbox.reset_stats()
    for _ in range(3):
        with httpx.Client(base_url=sandbox.url, headers=headers) as client:
            client.get(MATERIALS)
            client.get(MATERIALS)
    assert sandbox.stats.connections == 3
    assert sandbox.stats.requests == 6


# --- robustness and process hygiene --------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
LAYER_KEYS = sorted(LAYER_FIELDS)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(
        [
            ("POST", LAYERS),
            ("PATCH", LAYERS),
            ("POST", MATERIALS),
            ("PATCH", "/target-materials/1"),
            ("POST", "/target-materials/1/layers"),
        ]
    ),
    body=JSON_VALUES
    | st.dictionaries(st.sampled_from([*LAYER_KEYS, "sample", "layers"]), JSON_VALUES, max_size=6)
    | st.lists(st.dictionaries(st.sampled_from(LAYER_KEYS), JSON_VALUES, max_size=5), max_size=3),
)
def test_no_body_makes_it_answer_500(
    client_a: httpx.Client, route: tuple[str, str], body: Any
) -> None:
    method, path = route
    reply = client_a.request(method, path, json=body)
    assert reply.status_code < 500, reply.text
    assert "detail" in reply.json() or reply.status_code < 300


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(formula=st.text(max_size=40))
def test_no_formula_makes_it_answer_500(client_a: httpx.Client, formula: str) -> None:
    reply = client_a.post(LAYERS, json={"layer_id": 1, "composition_string": formula})
    assert reply.status_code in (200, 422), reply.text


def test_start_stop_twice_leaves_no_threads_and_prints_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    threads_before = set(threading.enumerate())
    for _ in range(2):
        with (
            run_sandbox(_config()) as server,
            httpx.Client(base_url=server.url, headers={"X-API-KEY": KEY_A}) as client,
        ):
            sample_id = create_material(client)
            for kind in ("reset", "drop_after_commit", "500_after_commit"):
                server.faults.queue([kind])
                with contextlib.suppress(httpx.TransportError):
                    client.post(LAYERS, json={"layer_id": 1, "sample_id": sample_id})
    assert set(threading.enumerate()) <= threads_before
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("started_in_background", [False, True])
@pytest.mark.processes
def test_command_line_serves_until_interrupted(tmp_path: Path, started_in_background: bool) -> None:
    # Without keys from the command line or the environment it makes one and prints it.
    # Started in the background by a shell, a process inherits SIGINT ignored: Ctrl-C
    # (SIGINT) must stop it all the same.
    environment = {k: v for k, v in os.environ.items() if k != "ATOMSCALE_SANDBOX_API_KEYS"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atomscale_sandbox",
            "--port",
            "0",
            "--db",
            str(tmp_path / "cli.db"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        preexec_fn=_ignore_sigint if started_in_background else None,
    )
    try:
        assert process.stdout is not None
        key_line = process.stdout.readline()
        listen_line = process.stdout.readline()
        key = key_line.rsplit(" ", 1)[-1].strip()
        url = listen_line.split(" listening on ", 1)[1].split(" ", 1)[0]
        assert f"{url}/docs" in listen_line
        reply = httpx.post(
            f"{url}{MATERIALS}",
            headers={"X-API-KEY": key},
            json={"sample": {"sample_name": "cli", "substrate": "MgO"}},
        )
        assert reply.status_code == 201
        process.send_signal(signal.SIGINT)
        # A hang guard, not a speed check: it stops in well under a second, but a CI
        # machine busy with other work once needed more than 15 s.
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0
    assert err == ""
    assert out.strip() == "Stopped."


@pytest.mark.processes
def test_sandbox_imports_nothing_from_prefect_or_the_integration() -> None:
    # Read from the source, so an import inside a function counts too ...
    package = Path(__file__).resolve().parents[2] / "atomscale_sandbox"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in {"prefect", "prefect_atomscale"}, f"{module.name} imports {name}"
    # ... and at run time, so nothing reaches them through a third package either.
    probe = (
        "import sys, atomscale_sandbox, atomscale_sandbox.__main__, atomscale_sandbox._app;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'prefect_atomscale'});"  # noqa: E501
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("include_empty", [False, True])
def test_the_listing_sqlite_encodes_equals_the_rows(include_empty: bool) -> None:
    # GET /target-materials/ sends the JSON SQLite builds; it must say exactly what the
    # rows say, with odd names, nested metadata, fractions, nulls and repeated positions.
    from atomscale_sandbox._store import LayerValues, SandboxStore

    store = SandboxStore()
    metadata = {"growth": "PLD", "steps": [1, 2.5, None, {"T": -3e-5}], "é": '√ 漢字 "q"\n'}
    material = store.create_target_material(
        "lab-a",
        'BTO "on" STO\\n ☃',
        "SrTiO3",
        metadata,
        [
            LayerValues(1, None, "(La0.7Sr0.3)MnO3", {"La": 0.7, "Sr": 0.3, "Mn": 1, "O": 3}),
            LayerValues(2, None, "BaTiO3", None, "001", "P4mm", "mp-5020"),
        ],
    )
    store.add_layer("lab-a", LayerValues(2, material["sample_id"], "SrTiO3", {"Sr": 1}))
    store.create_target_material("lab-a", "empty", "MgO", None, [])
    store.create_target_material("lab-b", "other lab", "MgO", None, [LayerValues(1, None)])

    for organisation in ("lab-a", "lab-b", "nobody"):
        rows = store.list_rows(organisation, include_empty=include_empty)
        assert json.loads(store.list_rows_json(organisation, include_empty=include_empty)) == rows
    assert len(store.list_rows("lab-a", include_empty=include_empty)) == 3 + include_empty
