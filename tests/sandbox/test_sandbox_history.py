"""The store's audit (`SandboxHandle.history`): every change, when, by whom, never in a reply.

The adversary tests (tests/adversary) judge the package from this audit alone, so its
contract is pinned here: one entry per inserted, updated and deleted row, in commit
order, with the server's monotonic clock, the writing key's `user_id`, the row as it
became, and what fault injection did to the request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from atomscale_sandbox import ApiKeyGrant, SandboxConfig, SandboxHandle, run_sandbox

ANN = "history-key-ann-0123456789"
ANN_2 = "history-key-ann-second-key"
BOB = "history-key-bob-9876543210"
MATERIALS = "/target-materials/"
LAYERS = "/target-materials/layers/"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    keys: dict[str, ApiKeyGrant | str] = {
        ANN: ApiKeyGrant("lab-a", user="ann"),
        ANN_2: ApiKeyGrant("lab-a", user="ann"),
        BOB: ApiKeyGrant("lab-a", user="bob"),
    }
    with run_sandbox(SandboxConfig(api_keys=keys)) as server:
        yield server


def _post(sandbox: SandboxHandle, key: str, path: str, body: object) -> httpx.Response:
    reply = httpx.post(f"{sandbox.url}{path}", headers={"X-API-KEY": key}, json=body)
    reply.raise_for_status()
    return reply


def _material(sandbox: SandboxHandle, key: str, name: str, layers: int = 0) -> int:
    body = {
        "sample": {"sample_name": name, "substrate": "SrTiO3", "sample_metadata": {"n": 1}},
        "layers": [{"layer_id": i, "composition_string": "BaTiO3"} for i in range(1, layers + 1)],
    }
    return int(_post(sandbox, key, MATERIALS, body).json()["sample_id"])


def test_every_write_is_recorded_in_order_with_its_writer_and_row(sandbox: SandboxHandle) -> None:
    start = sandbox.app.store.last_history_seq()
    before = time.monotonic()
    sample_id = _material(sandbox, ANN, "history-1", layers=2)
    layer = _post(
        sandbox, BOB, LAYERS, {"layer_id": 3, "sample_id": sample_id, "composition_string": "GaN"}
    ).json()
    httpx.patch(
        f"{sandbox.url}{LAYERS}",
        headers={"X-API-KEY": ANN_2},
        json={"layer_id": 3, "sample_id": sample_id, "composition_string": "AlN"},
    ).raise_for_status()
    httpx.patch(
        f"{sandbox.url}{MATERIALS}{sample_id}",
        headers={"X-API-KEY": ANN},
        json={"sample_name": "history-1b"},
    ).raise_for_status()
    _post(sandbox, ANN, f"{MATERIALS}{sample_id}/layers", [{"layer_id": 1, "orientation": "001"}])
    after = time.monotonic()

    entries = sandbox.history(after=start)
    ann = ApiKeyGrant("lab-a", user="ann").user_id
    bob = ApiKeyGrant("lab-a", user="bob").user_id
    summary = [(e["action"], e["kind"], e["layer_id"], e["user_id"]) for e in entries]
    assert summary == [
        ("insert", "material", None, ann),
        ("insert", "layer", 1, ann),
        ("insert", "layer", 2, ann),
        ("insert", "layer", 3, bob),
        ("update", "layer", 3, ann),  # the second key of the same person
        ("update", "material", None, ann),
        ("delete", "layer", 1, ann),
        ("delete", "layer", 2, ann),
        ("delete", "layer", 3, ann),
        ("insert", "layer", 1, ann),
    ]
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    assert all(before <= e["at"] <= after for e in entries)
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    assert all(e["sample_id"] == sample_id and e["organisation"] == "lab-a" for e in entries)
    # One store call, one txn: the material and its two layers; the replace's five rows.
    assert len({e["txn"] for e in entries[:3]}) == 1 and len({e["txn"] for e in entries[6:]}) == 1
    assert entries[3]["record_id"] == layer["id"]
    assert entries[3]["row"]["composition_string"] == "GaN"
    assert entries[4]["row"]["composition_string"] == "AlN"  # the row after the update
    assert entries[5]["row"]["sample_name"] == "history-1b"
    assert entries[5]["row"]["sample_metadata"] == {"n": 1}
    assert entries[8]["row"]["composition_string"] == "AlN"  # a delete shows the row before
    assert entries[9]["row"]["orientation"] == "001"
    assert all(e["fault"] is None and e["gave_up_at"] is None for e in entries)
    assert sandbox.history(after=start, sample_id=sample_id + 10_000) == []
    assert sandbox.history(after=entries[-1]["seq"]) == []


def test_the_audit_never_shows_in_a_reply(sandbox: SandboxHandle) -> None:
    sample_id = _material(sandbox, ANN, "history-2", layers=1)
    listing = httpx.get(f"{sandbox.url}{MATERIALS}", headers={"X-API-KEY": ANN}).json()
    fields = {name for row in listing for name in row}
    assert not fields & {"seq", "txn", "action", "kind", "record_id", "fault", "gave_up_at"}
    assert any(row["sample_id"] == sample_id for row in listing)
    paths = sandbox.app.openapi()["paths"]
    assert not [path for path in paths if "history" in path or "audit" in path]


def test_faulted_writes_are_noted_and_a_late_commit_says_when_the_client_gave_up(
    sandbox: SandboxHandle,
) -> None:
    sample_id = _material(sandbox, ANN, "history-3")
    start = sandbox.app.store.last_history_seq()
    sandbox.faults.set(slow_seconds=0.2, late_commit_seconds=0.5)
    sandbox.faults.queue(["500_after_commit", "commit_late"])
    try:
        for layer_id in (1, 2):
            with pytest.raises(httpx.HTTPError):
                _post(sandbox, ANN, LAYERS, {"layer_id": layer_id, "sample_id": sample_id})
        deadline = time.monotonic() + 10
        while len(sandbox.history(after=start)) < 2:
            assert time.monotonic() < deadline, "the late write never landed"
            time.sleep(0.05)
    finally:
        sandbox.faults.clear()
    _post(sandbox, ANN, LAYERS, {"layer_id": 3, "sample_id": sample_id})
    first, late, plain = sandbox.history(after=start)
    assert (first["fault"], first["gave_up_at"]) == ("500_after_commit", None)
    assert late["fault"] == "commit_late" and late["layer_id"] == 2
    assert late["gave_up_at"] is not None
    assert late["at"] - late["gave_up_at"] >= 0.4  # late_commit_seconds after it gave up
    assert (plain["fault"], plain["gave_up_at"]) == (None, None)


def test_fill_is_recorded_as_the_organisations_default_user(sandbox: SandboxHandle) -> None:
    start = sandbox.app.store.last_history_seq()
    sandbox.app.store.fill("lab-fill", 25, layers_per_material=10)
    entries = sandbox.history(after=start, organisation="lab-fill")
    assert [e["kind"] for e in entries].count("material") == 3
    assert [e["kind"] for e in entries].count("layer") == 25
    assert {e["user_id"] for e in entries} == {ApiKeyGrant("lab-fill").user_id}
