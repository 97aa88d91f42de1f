"""Hardening of the sandbox, over real HTTP.

No organisation reaches another's records on any route; the API-key check compares in
constant time; oversized bodies get 413 and malformed JSON 422 on every route that
takes a body; schemathesis finds no input that makes it answer 500; each HTTP parser
the server can run on keeps counting and dropping connections; and under concurrent
writes every acknowledged write is stored, also across a restart and a crash.
`benchmarks/sandbox_load.py` runs the load part at full size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.util
import json
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import allow_header_conformance, positive_data_acceptance

from atomscale_sandbox import (
    DEFAULT_ORGANISATION,
    FaultConfig,
    HttpParser,
    SandboxConfig,
    SandboxHandle,
    available_http_parsers,
    create_app,
    run_sandbox,
)
from atomscale_sandbox._connections import _CoalescingTransport

KEY_A = "hardening-key-lab-a-0123456789"
KEY_B = "hardening-key-lab-b-0123456789"
# Lab A's records carry this marker, so that a reply to lab B that echoes any of them
# is caught whatever field it comes back in.
SECRET = "lab-a-secret"

MATERIALS = "/target-materials/"
LAYERS = "/target-materials/layers/"
SAMPLES = "/physical_samples/"
JSON_HEADERS = {"Content-Type": "application/json"}


def _config(**overrides: Any) -> SandboxConfig:
    return SandboxConfig(api_keys={KEY_A: "lab-a", KEY_B: "lab-b"}, **overrides)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    # Named like the conftest fixture, whose autouse companion then clears faults and
    # counters before each test here too.
    with run_sandbox(_config()) as server:
        yield server


@pytest.fixture
def client_a(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_A}, timeout=30) as client:
        yield client


@pytest.fixture
def client_b(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers={"X-API-KEY": KEY_B}, timeout=30) as client:
        yield client


def create_material(client: httpx.Client, name: str = "film", **extra: Any) -> int:
    body = {"sample": {"sample_name": name, "substrate": "SrTiO3"}} | extra
    reply = client.post(MATERIALS, json=body)
    assert reply.status_code == 201, reply.text
    return int(reply.json()["sample_id"])


def create_physical_sample(client: httpx.Client, **fields: Any) -> str:
    # Physical-sample names are unique per organisation, so each call makes one of its own.
    reply = client.post(SAMPLES, json={"name": f"run {uuid.uuid4()}"} | fields)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def _records(sandbox: SandboxHandle, organisation: str | None = None) -> tuple[Any, ...]:
    """Everything stored (of one organisation), to compare before and after a request."""
    return (
        sandbox.target_materials(organisation=organisation),
        sandbox.layer_rows(organisation=organisation),
        sandbox.physical_samples(organisation=organisation),
    )


# --- one organisation never reaches another's records, on any route ---------------------


@dataclass(frozen=True)
class Victim:
    """Lab A's records that lab B's requests aim at."""

    sample_id: int
    layer_record_id: int
    unattached_record_id: int
    physical_sample_id: str
    physical_sample_name: str
    layer_id: int = 1


@pytest.fixture
def victim(client_a: httpx.Client) -> Victim:
    body = {
        "sample": {
            "sample_name": f"{SECRET} name",
            "substrate": f"{SECRET} substrate",
            "sample_metadata": {"note": f"{SECRET} metadata"},
        },
        "layers": [{"layer_id": 1, "composition_string": "BaTiO3", "orientation": SECRET}],
    }
    reply = client_a.post(MATERIALS, json=body)
    assert reply.status_code == 201, reply.text
    sample_id = int(reply.json()["sample_id"])
    (row,) = [row for row in client_a.get(MATERIALS).json() if row["sample_id"] == sample_id]
    unattached = client_a.post(LAYERS, json={"layer_id": 1, "mp_id": SECRET})
    assert unattached.status_code == 200, unattached.text
    # The name carries no marker: lab B creating the same name must succeed, and its
    # reply then echoes the name it sent.
    run_name = f"run {uuid.uuid4()}"
    physical_sample_id = create_physical_sample(
        client_a, name=run_name, sample_id=sample_id, detail_notes_id=f"{SECRET} notes"
    )
    metadata = {"physical_sample_metadata": {"note": f"{SECRET} run metadata"}}
    assert client_a.patch(f"{SAMPLES}{physical_sample_id}", json=metadata).is_success
    return Victim(
        sample_id, int(row["id"]), int(unattached.json()["id"]), physical_sample_id, run_name
    )


Probe = Callable[[httpx.Client, Victim], list[tuple[httpx.Response, int]]]


def _list(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    reply = client.get(MATERIALS)
    assert all(row["sample_id"] != victim.sample_id for row in reply.json())
    assert all(
        row["id"] not in (victim.layer_record_id, victim.unattached_record_id)
        for row in reply.json()
    )
    return [(reply, 200)]


def _create(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    sample = {"sample_name": "b's", "substrate": "MgO"}
    # A layer's own sample_id is ignored on create: the layer joins B's new material.
    claims_sample = client.post(
        MATERIALS,
        json={"sample": sample, "layers": [{"layer_id": 1, "sample_id": victim.sample_id}]},
    )
    new_sample = claims_sample.json()["sample_id"]
    rows = [row for row in client.get(MATERIALS).json() if row["sample_id"] == new_sample]
    assert [row["layer_id"] for row in rows] == [1]
    claims_id = client.post(
        MATERIALS,
        json={"sample": sample, "layers": [{"layer_id": 1, "id": victim.layer_record_id}]},
    )
    return [(claims_sample, 201), (claims_id, 409)]


def _patch_material(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    path = f"/target-materials/{victim.sample_id}"
    return [
        (client.patch(path, json={"sample_name": "stolen"}), 404),
        (client.patch(path, json={}), 404),
    ]


def _add_layer(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    return [
        (client.post(LAYERS, json={"layer_id": 2, "sample_id": victim.sample_id}), 404),
        (client.post(LAYERS, json={"layer_id": 1, "id": victim.layer_record_id}), 409),
        (client.post(LAYERS, json={"layer_id": 1, "id": victim.unattached_record_id}), 409),
    ]


def _patch_layer(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    target = {"sample_id": victim.sample_id, "layer_id": victim.layer_id}
    return [
        (client.patch(LAYERS, json=target | {"orientation": "111"}), 404),
        (client.patch(LAYERS, json=target | {"composition_string": "MgO"}), 404),
    ]


def _replace_stack(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    own = create_material(client, "b's own")
    return [
        # An empty stack would delete every layer of the material.
        (client.post(f"/target-materials/{victim.sample_id}/layers", json=[]), 404),
        (client.post(f"/target-materials/{victim.sample_id}/layers", json=[{"layer_id": 1}]), 404),
        # Its own stack cannot take over A's layer by naming its record id.
        (
            client.post(
                f"/target-materials/{own}/layers",
                json=[{"layer_id": 1, "id": victim.layer_record_id}],
            ),
            409,
        ),
    ]


def _list_samples(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    everything = client.get(SAMPLES)
    assert all(s["id"] != victim.physical_sample_id for s in everything.json())
    assert all(s["sample_id"] != victim.sample_id for s in everything.json())
    one = client.get(SAMPLES, params={"physical_sample_id": victim.physical_sample_id})
    assert one.json() == []
    return [(everything, 200), (one, 200)]


def _create_sample(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    # A's name is free in B (a 409 would tell B that A has a run of that name), and
    # A's target material cannot be B's run's.
    same_name = client.post(SAMPLES, json={"name": victim.physical_sample_name.upper()})
    assert same_name.json()["id"] != victim.physical_sample_id
    claims_material = client.post(
        SAMPLES, json={"name": f"run {uuid.uuid4()}", "sample_id": victim.sample_id}
    )
    return [(same_name, 201), (claims_material, 404)]


def _patch_sample(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    path = f"{SAMPLES}{victim.physical_sample_id}"
    return [
        (client.patch(path, json={"name": "stolen"}), 404),
        (client.patch(path, json={"physical_sample_metadata": {}}), 404),
        (client.patch(path, json={}), 404),
    ]


def _link_sample(client: httpx.Client, victim: Victim) -> list[tuple[httpx.Response, int]]:
    own_material = create_material(client, "b's film")
    own_sample = create_physical_sample(client)
    return [
        (
            client.patch(
                f"{SAMPLES}{victim.physical_sample_id}/target_material",
                json={"target_material_id": own_material},
            ),
            404,
        ),
        (
            client.patch(
                f"{SAMPLES}{victim.physical_sample_id}/target_material",
                json={"target_material_id": None},
            ),
            404,
        ),
        (
            client.patch(
                f"{SAMPLES}{own_sample}/target_material",
                json={"target_material_id": victim.sample_id},
            ),
            404,
        ),
    ]


ISOLATION_PROBES: dict[tuple[str, str], Probe] = {
    ("GET", "/target-materials/"): _list,
    ("POST", "/target-materials/"): _create,
    ("PATCH", "/target-materials/{sample_id}"): _patch_material,
    ("POST", "/target-materials/layers/"): _add_layer,
    ("PATCH", "/target-materials/layers/"): _patch_layer,
    ("POST", "/target-materials/{sample_id}/layers"): _replace_stack,
    ("GET", SAMPLES): _list_samples,
    ("POST", SAMPLES): _create_sample,
    ("PATCH", "/physical_samples/{physical_sample_id}"): _patch_sample,
    ("PATCH", "/physical_samples/{physical_sample_id}/target_material"): _link_sample,
}


def test_every_api_route_has_an_isolation_probe(sandbox: SandboxHandle) -> None:
    # A route added later without a probe below fails here rather than going unchecked.
    document = httpx.get(f"{sandbox.url}/openapi.json").json()
    routes = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if path != "/health"
    }
    assert routes == set(ISOLATION_PROBES)


@pytest.mark.parametrize(
    "route", list(ISOLATION_PROBES), ids=[f"{m} {p}" for m, p in ISOLATION_PROBES]
)
def test_no_route_lets_one_organisation_read_or_write_anothers_records(
    sandbox: SandboxHandle, client_b: httpx.Client, victim: Victim, route: tuple[str, str]
) -> None:
    before = _records(sandbox, "lab-a")
    replies = ISOLATION_PROBES[route](client_b, victim)
    for reply, status in replies:
        assert reply.status_code == status, (reply.request.method, reply.request.url, reply.text)
        assert SECRET not in reply.text
    assert _records(sandbox, "lab-a") == before
    assert all(
        row["sample_id"] != victim.sample_id for row in sandbox.layer_rows(organisation="lab-b")
    )
    assert all(
        s["sample_id"] != victim.sample_id for s in sandbox.physical_samples(organisation="lab-b")
    )


# --- the key check is constant-time -------------------------------------------------


@pytest.mark.integration
def test_key_check_compares_every_key_in_full_whatever_is_presented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Timing itself is too noisy to assert on; what makes the check constant-time is
    # that every request compares the same number of equally long values with
    # hmac.compare_digest, whichever key (if any) it matches.
    keys = {"k": "lab-a", "a-much-longer-key-" + "x" * 40: "lab-b", "mid-length-key": "lab-c"}
    comparisons: list[tuple[int, int]] = []
    real_compare = hmac.compare_digest

    def counting_compare(a: Any, b: Any) -> bool:
        comparisons.append((len(a), len(b)))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting_compare)
    # As sent on the wire: the real keys, near misses, and bytes that are not ASCII.
    presented = [key.encode() for key in keys] + [b"kx", b"a-much-longer-key-", "\u00fc".encode()]
    with run_sandbox(SandboxConfig(api_keys=dict(keys))) as server:
        for key in presented:
            comparisons.clear()
            reply = httpx.get(f"{server.url}{MATERIALS}", headers={b"X-API-KEY": key})
            assert reply.status_code == (200 if key.decode("latin-1") in keys else 401)
            assert len(comparisons) == len(keys)
            assert set(comparisons) == {(32, 32)}


def test_every_refused_key_gets_the_same_reply(sandbox: SandboxHandle) -> None:
    # A reply that differed for a near miss (a prefix, one more character) would tell
    # a caller how close it got.
    replies = [
        httpx.get(f"{sandbox.url}{MATERIALS}", headers=headers)
        for headers in (
            {},
            {"X-API-KEY": ""},
            {"X-API-KEY": KEY_A[:-1]},
            {"X-API-KEY": KEY_A + "0"},
            {"X-API-KEY": KEY_A.upper()},
            {"X-API-KEY": "x" * 4000},
        )
    ]
    assert {reply.status_code for reply in replies} == {401}
    assert len({reply.content for reply in replies}) == 1
    assert len({tuple(sorted(reply.headers.keys())) for reply in replies}) == 1


# --- request bodies: 413 over the limit, 422 when malformed, on every route -------------

BODY_ROUTES = [
    ("POST", MATERIALS),
    ("PATCH", "/target-materials/{sample_id}"),
    ("POST", LAYERS),
    ("PATCH", LAYERS),
    ("POST", "/target-materials/{sample_id}/layers"),
    ("POST", SAMPLES),
    ("PATCH", "/physical_samples/{physical_sample_id}"),
    ("PATCH", "/physical_samples/{physical_sample_id}/target_material"),
]
BODY_ROUTE_IDS = [f"{method} {path}" for method, path in BODY_ROUTES]


def _valid_body(path: str, sample_id: int) -> Any:
    if path.endswith("/target_material"):
        return {"target_material_id": sample_id}
    if path.startswith(SAMPLES):
        return {"name": f"run {uuid.uuid4()}"}
    if path == MATERIALS:
        return {"sample": {"sample_name": "x", "substrate": "MgO"}}
    if path == LAYERS:
        return {"layer_id": 1, "sample_id": sample_id, "composition_string": "MgO"}
    if path.endswith("/layers"):
        return [{"layer_id": 1, "composition_string": "MgO"}]
    return {"sample_name": "renamed"}


def test_every_route_that_takes_a_body_is_listed_here(sandbox: SandboxHandle) -> None:
    document = httpx.get(f"{sandbox.url}/openapi.json").json()
    with_body = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    assert with_body == set(BODY_ROUTES)


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
def test_oversized_body_is_413_on_every_route_and_the_connection_stays_usable(
    sandbox: SandboxHandle, client_a: httpx.Client, method: str, path: str
) -> None:
    sample_id = create_material(client_a)
    assert client_a.post(LAYERS, json={"layer_id": 1, "sample_id": sample_id}).is_success
    physical_sample_id = create_physical_sample(client_a)
    url = path.format(sample_id=sample_id, physical_sample_id=physical_sample_id)
    body = json.dumps(_valid_body(path, sample_id)).encode()
    padded = body + b" " * (sandbox.config.max_body_bytes + 1 - len(body))
    before = _records(sandbox)
    sandbox.reset_stats()

    reply = client_a.request(method, url, content=padded, headers=JSON_HEADERS)
    assert reply.status_code == 413
    assert isinstance(reply.json()["detail"], str)
    assert _records(sandbox) == before
    # The body was read to its end, so the connection that sent it serves the next
    # request (at the limit, so accepted) and the client opens no new one.
    at_limit = client_a.request(method, url, content=padded[:-1], headers=JSON_HEADERS)
    assert at_limit.is_success, at_limit.text
    assert sandbox.stats.connections == 0
    assert sandbox.stats.requests == 2


@pytest.mark.integration
def test_body_limit_is_configurable() -> None:
    with (
        run_sandbox(_config(max_body_bytes=300)) as server,
        httpx.Client(base_url=server.url, headers={"X-API-KEY": KEY_A}) as client,
    ):
        body = json.dumps({"layer_id": 1, "composition_string": "MgO"}).encode()
        assert client.post(LAYERS, content=body.ljust(300), headers=JSON_HEADERS).status_code == 200
        assert client.post(LAYERS, content=body.ljust(301), headers=JSON_HEADERS).status_code == 413
        assert server.count_layers() == 1


MALFORMED_JSON = {
    "truncated": b'{"layer_id": 1,',
    "trailing garbage": b'{"layer_id": 1} x',
    "single quotes": b"{'layer_id': 1}",
    "bare word": b"layer_id",
    "NUL after the value": b'{"layer_id": 1}\x00',
    "not UTF-8": b'{"layer_id": 1, "mp_id": "\xff\xfe"}',
    "integer of 5000 digits": b'{"layer_id": ' + b"9" * 5000 + b"}",
    "nested 100000 deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=BODY_ROUTE_IDS)
@pytest.mark.parametrize("body", list(MALFORMED_JSON.values()), ids=list(MALFORMED_JSON))
def test_malformed_json_is_422_on_every_route(
    sandbox: SandboxHandle, client_a: httpx.Client, method: str, path: str, body: bytes
) -> None:
    sample_id = create_material(client_a)
    physical_sample_id = create_physical_sample(client_a)
    before = _records(sandbox)
    url = path.format(sample_id=sample_id, physical_sample_id=physical_sample_id)
    reply = client_a.request(method, url, content=body, headers=JSON_HEADERS)
    assert reply.status_code == 422, reply.text
    (error,) = reply.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["loc"][0] == "body"
    assert {"msg", "input"} <= set(error)
    assert _records(sandbox) == before


# --- no input makes it answer 500 ------------------------------------------------------

# Schemathesis builds one test per operation at collection, before any fixture runs, so
# the schema comes from an app built for the purpose (its lazy `from_fixture` loader
# fails on pytest 9); the fixture checks that the server under test serves the same.
_DOCUMENT_APP = create_app()
OPENAPI_DOCUMENT = _DOCUMENT_APP.openapi()
_DOCUMENT_APP.store.close()
API_SCHEMA = schemathesis.openapi.from_dict(OPENAPI_DOCUMENT)
# Unknown query parameters are ignored, as FastAPI (and so presumably the real service)
# ignores them, so a request is not invalid for having one. Without this, schemathesis
# counts a listing answered 200 despite an extra query parameter as a finding.
API_SCHEMA.config.generation.update(allow_extra_parameters=False)
FUZZ_KEY = "hardening-fuzz-key-0123456789"


@pytest.fixture(scope="module")
def fuzzed_sandbox() -> Iterator[SandboxHandle]:
    with run_sandbox(
        SandboxConfig(api_keys={FUZZ_KEY: "lab-fuzz"}, faults=FaultConfig())
    ) as server:
        served = httpx.get(f"{server.url}/openapi.json").json()
        assert served == OPENAPI_DOCUMENT
        yield server


@API_SCHEMA.parametrize()
@settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.integration
def test_no_input_makes_it_answer_500(case: Any, fuzzed_sandbox: SandboxHandle) -> None:
    # Fault injection must be off, or its deliberate 5xx replies would be findings.
    assert fuzzed_sandbox.faults.rate == 0.0
    assert not fuzzed_sandbox.faults.pending
    case.call_and_validate(
        base_url=fuzzed_sandbox.url,
        headers={"X-API-KEY": FUZZ_KEY},
        timeout=30,
        # Every check but two: a formula can be refused with 422 though its string fits
        # the schema, and a 405's Allow header names only the methods of the first
        # route of the path (Starlette's, and so presumably the real service's, way).
        excluded_checks=[positive_data_acceptance, allow_header_conformance],
    )
    assert not fuzzed_sandbox.stats.faults


# --- HTTP parsers: each one counts and drops connections, and replies in one write ------


@pytest.mark.parametrize("parser", available_http_parsers())
@pytest.mark.integration
def test_each_http_parser_counts_connections_and_drops_them_for_faults(parser: HttpParser) -> None:
    with run_sandbox(_config(http_parser=parser)) as server:
        with httpx.Client(base_url=server.url, headers={"X-API-KEY": KEY_A}) as client:
            sample_id = create_material(client)
            # The open connection's protocol shows which parser the server runs.
            (transport,) = server.app.connections._open.values()
            assert type(transport.get_protocol()).__name__.lower() == f"tracked{parser}protocol"
            for _ in range(5):
                assert client.post(LAYERS, json={"layer_id": 1, "sample_id": sample_id}).is_success
            assert server.stats.connections == 1
            for kind in ("reset", "drop_after_commit"):
                server.faults.queue([kind])
                with pytest.raises(httpx.TransportError):
                    client.post(LAYERS, json={"layer_id": 2, "sample_id": sample_id})
            # A dropped connection is replaced by a new one, which the count shows.
            assert client.get(MATERIALS).status_code == 200
            assert server.stats.connections == 3
        assert server.count_layers(sample_id=sample_id) == 6
        assert server.stats.faults == {"reset": 1, "drop_after_commit": 1}


@pytest.mark.integration
def test_http_parser_is_validated_and_auto_falls_back_to_h11(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="unknown HTTP parser"):
        _config(http_parser="zttp")
    real_find_spec = importlib.util.find_spec

    def without_httptools(name: str, package: str | None = None) -> Any:
        return None if name == "httptools" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_httptools)
    assert available_http_parsers() == ("h11",)
    with pytest.raises(ValueError, match="not installed"):
        _config(http_parser="httptools")
    with run_sandbox(_config()) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert server.app.connections.protocol("auto").__name__ == "TrackedH11Protocol"


class _RecordingTransport:
    """Just enough of an asyncio transport to see what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def test_what_one_turn_writes_leaves_as_one_write_and_close_or_abort_are_kept() -> None:
    async def scenario() -> list[_RecordingTransport]:
        sent, closed, aborted = _RecordingTransport(), _RecordingTransport(), _RecordingTransport()
        for transport in (sent, closed, aborted):
            wrapper = _CoalescingTransport(transport)  # type: ignore[arg-type]
            wrapper.write(b"HTTP/1.1 200 OK\r\n\r\n")
            wrapper.write(b"")
            wrapper.write(b'{"id": 1}')
            assert wrapper.get_extra_info("peername") == ("127.0.0.1", 1)
            if transport is closed:
                wrapper.close()
            elif transport is aborted:
                wrapper.abort()
        await asyncio.sleep(0)
        return [sent, closed, aborted]

    sent, closed, aborted = asyncio.run(scenario())
    assert sent.writes == closed.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"id": 1}']
    assert closed.closed
    assert aborted.writes == []
    assert aborted.aborted


# --- every acknowledged write is kept: under load, across a restart, through a crash ----

CLIENTS = 16
WRITES_PER_CLIENT = 60


@dataclass
class LoadOutcome:
    """What the clients of one load saw."""

    acknowledged: list[int] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)
    unanswered: int = 0


async def write_layers(
    url: str,
    api_key: str,
    sample_ids: list[int],
    writes_per_client: int,
    on_acknowledged: Callable[[LoadOutcome], Awaitable[None]] | None = None,
) -> LoadOutcome:
    """Each of `sample_ids` gets its own client writing its layers one at a time."""
    outcome = LoadOutcome()

    async def one_client(sample_id: int) -> None:
        async with httpx.AsyncClient(
            base_url=url, headers={"X-API-KEY": api_key}, timeout=30
        ) as client:
            for layer_id in range(1, writes_per_client + 1):
                body = {
                    "layer_id": layer_id,
                    "sample_id": sample_id,
                    "composition_string": "BaTiO3",
                }
                try:
                    reply = await client.post(LAYERS, json=body)
                except httpx.TransportError:
                    outcome.unanswered += 1
                    continue
                if reply.is_success:
                    outcome.acknowledged.append(int(reply.json()["id"]))
                    if on_acknowledged is not None:
                        await on_acknowledged(outcome)
                else:
                    outcome.refused[reply.status_code] += 1

    await asyncio.wait_for(asyncio.gather(*(one_client(s) for s in sample_ids)), 120)
    return outcome


def _stored_layer_ids(db_path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [row[0] for row in db.execute("SELECT id FROM layers ORDER BY id")]


@pytest.mark.integration
def test_concurrent_writes_are_all_kept_and_survive_a_restart(tmp_path: Path) -> None:
    db_path = tmp_path / "load.db"
    config = _config(db_path=db_path)
    with run_sandbox(config) as server:
        with httpx.Client(base_url=server.url, headers={"X-API-KEY": KEY_A}) as client:
            sample_ids = [create_material(client, f"load {index}") for index in range(CLIENTS)]
        outcome = asyncio.run(write_layers(server.url, KEY_A, sample_ids, WRITES_PER_CLIENT))
        assert sorted(outcome.acknowledged) == sorted(set(outcome.acknowledged))
        assert server.count_layers() == len(outcome.acknowledged)
    assert len(outcome.acknowledged) == CLIENTS * WRITES_PER_CLIENT
    assert (outcome.refused, outcome.unanswered) == (Counter(), 0)
    assert _stored_layer_ids(db_path) == sorted(outcome.acknowledged)

    with run_sandbox(config) as restarted:
        listed = httpx.get(f"{restarted.url}{MATERIALS}", headers={"X-API-KEY": KEY_A}).json()
        assert sorted(row["id"] for row in listed) == sorted(outcome.acknowledged)
        for sample_id in sample_ids:
            positions = [row["layer_id"] for row in listed if row["sample_id"] == sample_id]
            assert positions == list(range(1, WRITES_PER_CLIENT + 1))


@pytest.mark.integration
def test_under_faults_stored_writes_are_exactly_the_acknowledged_plus_committed_faults(
    tmp_path: Path,
) -> None:
    # Faults that fail a write before it is processed store nothing; the *_after_commit
    # ones store it and lose the reply. So the rows must be the acknowledged writes
    # plus exactly one per committing fault, however the requests interleave.
    kinds = {"503", "429", "reset", "500_after_commit", "drop_after_commit"}
    faults = FaultConfig(rate=0.2, kinds=kinds, seed=11, retry_after_seconds=0)
    db_path = tmp_path / "faults.db"
    config = _config(db_path=db_path, faults=faults)
    with run_sandbox(config) as server:
        faults.clear()
        with httpx.Client(base_url=server.url, headers={"X-API-KEY": KEY_A}) as client:
            sample_ids = [create_material(client, f"load {index}") for index in range(CLIENTS)]
        faults.set(rate=0.2)
        outcome = asyncio.run(write_layers(server.url, KEY_A, sample_ids, 20))
        injected = server.stats.faults
    committed_unacknowledged = injected["500_after_commit"] + injected["drop_after_commit"]
    assert committed_unacknowledged > 0
    assert outcome.refused[503] + outcome.refused[429] + outcome.unanswered > 0
    stored = _stored_layer_ids(db_path)
    assert set(outcome.acknowledged) <= set(stored)
    assert len(stored) == len(outcome.acknowledged) + committed_unacknowledged


@pytest.mark.processes
@pytest.mark.integration
def test_acknowledged_writes_survive_the_server_being_killed(tmp_path: Path) -> None:
    db_path = tmp_path / "crash.db"
    command = [
        sys.executable,
        "-m",
        "atomscale_sandbox",
        "--port",
        "0",
        "--db",
        str(db_path),
        "--api-key",
        KEY_A,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split(" listening on ", 1)[1].split(" ", 1)[0]
        with httpx.Client(base_url=url, headers={"X-API-KEY": KEY_A}) as client:
            sample_ids = [create_material(client, f"crash {index}") for index in range(CLIENTS)]
        half = CLIENTS * WRITES_PER_CLIENT // 2

        async def kill_at_half(outcome: LoadOutcome) -> None:
            # SIGKILL: no shutdown code runs, as when the machine's OOM killer strikes.
            if len(outcome.acknowledged) == half:
                process.kill()

        outcome = asyncio.run(write_layers(url, KEY_A, sample_ids, WRITES_PER_CLIENT, kill_at_half))
    finally:
        process.kill()
        process.communicate(timeout=30)
    assert process.returncode == -9
    assert len(outcome.acknowledged) >= half
    assert outcome.unanswered > 0

    stored = _stored_layer_ids(db_path)
    assert set(outcome.acknowledged) <= set(stored)
    # A write can commit and then lose its reply to the kill: at most one per client.
    assert len(stored) - len(outcome.acknowledged) <= CLIENTS
    config = SandboxConfig(api_keys={KEY_A: DEFAULT_ORGANISATION}, db_path=db_path)
    with run_sandbox(config) as restarted:
        listed = httpx.get(f"{restarted.url}{MATERIALS}", headers={"X-API-KEY": KEY_A}).json()
        assert sorted(row["id"] for row in listed) == stored
        assert restarted.count_layers() == len(stored)
