"""Replies shaped unlike our guesses: read tolerantly, refused only for what we use.

A small HTTP server answers each request with a reply the test chose, and the real
client reads it over HTTP. Hypothesis draws replies where every field the package does
not use is missing, null or any JSON value, where unknown fields appear, and where the
status is any 2xx: all must be read, unknown fields kept. A reply whose `sample_id` (or
a layer's `id`, `layer_id`, `sample_id`) is missing or unusable must be a clear
`AtomscaleProtocolError` naming the field.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_atomscale import AtomscaleClient, AtomscaleProtocolError
from prefect_atomscale._payloads import LayerRequest, TargetMaterialRequest

KEY = "tolerant-replies-test-key"


class _Scripted(BaseHTTPRequestHandler):
    """Answers every request with the next reply queued on the server."""

    server: _ScriptedServer

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        status, body = self.server.replies.popleft()
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True
    replies: deque[tuple[int, Any]]


@pytest.fixture(scope="module")
def scripted() -> Iterator[_ScriptedServer]:
    server = _ScriptedServer(("127.0.0.1", 0), _Scripted)
    server.replies = deque()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def client(scripted: _ScriptedServer) -> Iterator[AtomscaleClient]:
    host, port = scripted.server_address[:2]
    http = httpx.Client(base_url=f"http://{host}:{port}", headers={"X-API-KEY": KEY}, timeout=10)
    with AtomscaleClient(http) as atomscale:
        yield atomscale


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
MISSING = object()
SUCCESS = st.sampled_from([200, 201, 202, 203])
# Fields the reference documents but the package only shows, never decides on.
MATERIAL_UNUSED = (
    "sample_name",
    "substrate",
    "sample_metadata",
    "detail_notes_id",
    "user_id",
    "version",
    "last_updated",
)
LAYER_UNUSED = ("composition_string", "element_dict", "orientation", "space_group", "mp_id")
UNKNOWN = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(
        lambda name: name not in (*MATERIAL_UNUSED, *LAYER_UNUSED, "id", "layer_id", "sample_id")
    ),
    JSON,
    max_size=3,
)


def wild(fields: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """Each field missing, null or any JSON value at all."""
    return st.fixed_dictionaries(
        {field: st.just(MISSING) | st.none() | JSON for field in fields}
    ).map(lambda drawn: {k: v for k, v in drawn.items() if v is not MISSING})


def an_id() -> st.SearchStrategy[Any]:
    """A usable id: a number, or the same number as text, as lenient readers take it."""
    return st.integers(1, 2**53 - 1).flatmap(lambda n: st.sampled_from([n, str(n), float(n)]))


MATERIAL = TargetMaterialRequest.build(sample_name="BTO on STO", substrate="SrTiO3")
LAYER = LayerRequest.build(sample_id=42, layer_id=1, composition_string="BaTiO3")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(status=SUCCESS, sample_id=an_id(), others=wild(MATERIAL_UNUSED), unknown=UNKNOWN)
def test_any_target_material_reply_with_a_usable_sample_id_is_read(
    scripted: _ScriptedServer,
    client: AtomscaleClient,
    status: int,
    sample_id: Any,
    others: dict[str, Any],
    unknown: dict[str, Any],
) -> None:
    scripted.replies.append((status, {**unknown, **others, "sample_id": sample_id}))
    material = client.create_target_material(MATERIAL)
    assert material.sample_id == int(sample_id)
    assert material.model_extra == unknown  # kept, never an error
    # What the reply left out or could not carry is filled in from what was sent.
    assert material.sample_name is not None and material.substrate is not None


@FAST
@given(
    status=SUCCESS,
    ids=st.tuples(an_id(), an_id(), an_id()),
    others=wild(LAYER_UNUSED),
    unknown=UNKNOWN,
)
def test_any_layer_reply_with_usable_ids_is_read(
    scripted: _ScriptedServer,
    client: AtomscaleClient,
    status: int,
    ids: tuple[Any, Any, Any],
    others: dict[str, Any],
    unknown: dict[str, Any],
) -> None:
    record, position, parent = ids
    reply = {**unknown, **others, "id": record, "layer_id": position, "sample_id": parent}
    scripted.replies.append((status, reply))
    layer = client.create_layer(LAYER)
    assert (layer.id, layer.layer_id, layer.sample_id) == (int(record), int(position), int(parent))
    assert layer.model_extra == unknown


MANGLED = st.sampled_from([MISSING, None, "", "forty-two", [], {}, True, 1.5, "4 2"])


@FAST
@given(bad=MANGLED, others=wild(MATERIAL_UNUSED))
def test_a_target_material_reply_without_a_usable_sample_id_is_a_protocol_error(
    scripted: _ScriptedServer, client: AtomscaleClient, bad: Any, others: dict[str, Any]
) -> None:
    reply = dict(others)
    if bad is not MISSING:
        reply["sample_id"] = bad
    scripted.replies.append((200, reply))
    with pytest.raises(AtomscaleProtocolError) as caught:
        client.create_target_material(MATERIAL)
    assert "sample_id" in str(caught.value)
    assert "unexpected shape" in str(caught.value)


@FAST
@given(field=st.sampled_from(["id", "layer_id", "sample_id"]), bad=MANGLED)
def test_a_layer_reply_without_usable_ids_is_a_protocol_error(
    scripted: _ScriptedServer, client: AtomscaleClient, field: str, bad: Any
) -> None:
    reply: dict[str, Any] = {"id": 100, "layer_id": 1, "sample_id": 42}
    if bad is MISSING:
        del reply[field]
    else:
        reply[field] = bad
    scripted.replies.append((201, reply))
    with pytest.raises(AtomscaleProtocolError) as caught:
        client.create_layer(LAYER)
    assert field in str(caught.value)


def test_the_reference_examples_are_read_as_they_are(
    scripted: _ScriptedServer, client: AtomscaleClient
) -> None:
    """The shapes the API reference shows, including a dotted-string version."""
    row = {
        "id": 100,
        "sample_id": 42,
        "sample_name": "BTO on STO",
        "substrate": "SrTiO3",
        "layer_id": 1,
        "composition_string": "BaTiO3",
        "element_dict": {"Ba": 1.0, "Ti": 1.0, "O": 3.0},
        "orientation": "001",
        "space_group": "P4mm",
        "mp_id": "mp-5020",
        "sample_metadata": None,
        "user_id": 7,
        "version": "0.269.1",
        "last_updated": "2026-11-30T10:00:00Z",
        "detail_notes_id": "9b2f0d1e-1111-4c2d-8e3f-000000000000",
    }
    empty = {**row, "sample_id": 43, **dict.fromkeys(("id", "layer_id", "composition_string"))}
    scripted.replies.append((200, [row, empty]))
    [layer] = client.find_layers(LAYER)
    assert (layer.id, layer.composition_string, layer.element_dict) == (
        100,
        "BaTiO3",
        {"Ba": 1.0, "Ti": 1.0, "O": 3.0},
    )
    assert LAYER.matches(layer)
    # A target material without layers lists as one row with null layer fields.
    scripted.replies.append((200, [row, empty]))
    assert client.layers_of(43, "reading an empty target material") == []
    material_reply = {k: v for k, v in row.items() if k not in ("id", "layer_id")}
    scripted.replies.append((201, {**material_reply, "sample_metadata": None}))
    material = client.create_target_material(MATERIAL)
    assert (material.sample_id, material.version, material.user_id) == (42, "0.269.1", 7)
    assert material.sample_metadata == {}  # null read as "none", filled in as sent
