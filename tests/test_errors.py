"""Every reply maps to one error class, with a message that helps and holds no key.

The sandbox produces what the real service documents. For what only a broken proxy, a
wrong base URL or a changed API would send (a redirect, a 200 that is not JSON, a 409
the client cannot provoke), a tiny canned HTTP server stands in, over real HTTP too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prefect_atomscale import (
    AtomscaleAuthError,
    AtomscaleClient,
    AtomscaleConflictError,
    AtomscaleConnectionError,
    AtomscaleCredentials,
    AtomscaleError,
    AtomscaleNotFoundError,
    AtomscaleProtocolError,
    AtomscaleRateLimitError,
    AtomscaleServerError,
    AtomscaleTimeoutError,
    AtomscaleValidationError,
)
from prefect_atomscale._payloads import LayerRequest

SECRET = "canned-secret-key-123456"
Reply = tuple[int, dict[str, str], bytes]


def envelope(status: int, detail: object) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps({"detail": detail}).encode()


CANNED: dict[str, Reply] = {
    "401": envelope(401, "Invalid API key"),
    "403": envelope(403, "Key is read-only"),
    "404": envelope(404, "Target material 42 not found"),
    "409": envelope(409, "Layer record id 100 already exists"),
    "413": envelope(413, "Request body too large"),
    "422-string": envelope(422, "composition_string is not a formula"),
    "422-object": envelope(422, {"field": "orientation", "problem": "unsupported"}),
    "422-list": envelope(
        422,
        [
            {
                "type": "int_type",
                "loc": ["body", "layer_id"],
                "msg": "Input should be a valid integer",
                "input": "x",
            }
        ],
    ),
    "429": (429, {"Retry-After": "7", "Content-Type": "application/json"}, b'{"detail":"slow"}'),
    "502-html": (502, {"Content-Type": "text/html"}, b"<html><h1>502 Bad Gateway</h1></html>"),
    "504": envelope(504, "Gateway timeout"),
    "200-html": (200, {"Content-Type": "text/html"}, b"<html>Sign in to continue</html>"),
    "200-wrong-shape": (200, {"Content-Type": "application/json"}, b'{"ok": true}'),
    "302": (302, {"Location": "https://evil.example.net/steal"}, b""),
    "echo-key": envelope(400, f"bad key {SECRET}"),
    "418": envelope(418, "I'm a teapot"),
}


def _row(sample_id: object, layer_id: object, **fields: object) -> dict[str, object]:
    return {
        "id": 500 + int(str(layer_id)),
        "sample_id": sample_id,
        "layer_id": layer_id,
        "sample_name": "BTO on STO",
        "substrate": "SrTiO3",
        **fields,
    }


def _listing(rows: object) -> Reply:
    return 200, {"Content-Type": "application/json"}, json.dumps(rows).encode()


# Replies to `GET /target-materials/`, the organisation's whole list.
LISTINGS: dict[str, Reply] = {
    # Another target material's rows are malformed; the look-up of ours must not care.
    "list-others-malformed": _listing(
        [
            _row(7, 1, element_dict="not a dict"),
            {"sample_id": 7, "layer_id": "three"},
            _row(42, 3, composition_string="BaTiO3"),
            _row("42", 4, composition_string="SrTiO3"),  # an id sent as a string
        ]
    ),
    # A field the look-up uses (the record id) is unusable in a row of ours. (An
    # unusable field nobody decides on, such as element_dict, is read as null.)
    "list-ours-malformed": _listing([_row(42, 3, id="three")]),
    "list-not-a-list": _listing({"rows": []}),
    "list-not-objects": _listing(["BaTiO3"]),
}


class CannedHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._reply(LISTINGS)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply(CANNED)

    def _reply(self, replies: dict[str, Reply]) -> None:
        # The first path segment names the canned reply; the client appends the API path.
        status, headers, body = replies[self.path.strip("/").split("/")[0]]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def canned_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), CannedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def send(base_url: str) -> AtomscaleError:
    request = LayerRequest.build(sample_id=42, layer_id=3, composition_string="BaTiO3")
    credentials = AtomscaleCredentials(api_key=SECRET, base_url=base_url)
    with (
        AtomscaleClient.from_credentials(credentials) as client,
        pytest.raises(AtomscaleError) as info,
    ):
        client.create_layer(request)
    return info.value


@pytest.mark.parametrize(
    ("case", "error", "transient", "needles"),
    [
        ("401", AtomscaleAuthError, False, ["401", "Invalid API key", "dashboard"]),
        ("403", AtomscaleAuthError, False, ["403", "write access"]),
        ("404", AtomscaleNotFoundError, False, ["Target material 42 not found"]),
        ("409", AtomscaleConflictError, False, ["409", "already exists"]),
        ("413", AtomscaleValidationError, False, ["413", "smaller request"]),
        ("422-string", AtomscaleValidationError, False, ["is not a formula"]),
        ("422-object", AtomscaleValidationError, False, ['"field": "orientation"']),
        (
            "422-list",
            AtomscaleValidationError,
            False,
            ["layer_id: Input should be a valid integer"],
        ),
        ("429", AtomscaleRateLimitError, True, ["429", "7 s"]),
        ("502-html", AtomscaleServerError, True, ["502", "HTML page"]),
        ("504", AtomscaleServerError, True, ["Gateway timeout"]),
        ("200-html", AtomscaleProtocolError, False, ["not JSON", "HTML page"]),
        (
            "200-wrong-shape",
            AtomscaleProtocolError,
            False,
            ["unexpected shape", "id: Field required"],
        ),
        ("302", AtomscaleProtocolError, False, ["redirected", "evil.example.net", "not followed"]),
        ("418", AtomscaleProtocolError, False, ["not part of the documented API"]),
    ],
)
def test_each_reply_maps_to_its_error(
    canned_url: str, case: str, error: type[AtomscaleError], transient: bool, needles: list[str]
) -> None:
    exc = send(f"{canned_url}/{case}")
    assert type(exc) is error
    assert exc.transient is transient
    message = str(exc)
    assert "layer 3 (BaTiO3) of target material 42" in message
    for needle in needles:
        assert needle in message
    assert SECRET not in message and SECRET not in repr(exc)


def test_look_ups_read_only_the_rows_of_their_target_material(canned_url: str) -> None:
    # The list holds the whole organisation; a look-up decodes the rows it needs, so a
    # row elsewhere that this version cannot read does not stop it.
    credentials = AtomscaleCredentials(
        api_key=SECRET, base_url=f"{canned_url}/list-others-malformed"
    )
    with AtomscaleClient.from_credentials(credentials) as client:
        found = client.find_layers(LayerRequest.build(sample_id=42, layer_id=3))
        stack = client.layers_of(42, "reading target material 42")
    assert [(layer.layer_id, layer.composition_string) for layer in found] == [(3, "BaTiO3")]
    assert [(layer.layer_id, layer.composition_string) for layer in stack] == [
        (3, "BaTiO3"),
        (4, "SrTiO3"),
    ]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("list-ours-malformed", "id"),
        ("list-not-a-list", "valid list"),
        ("list-not-objects", "valid dictionary"),
    ],
)
def test_a_listing_that_cannot_be_read_is_a_protocol_error(
    canned_url: str, case: str, needle: str
) -> None:
    credentials = AtomscaleCredentials(api_key=SECRET, base_url=f"{canned_url}/{case}")
    with (
        AtomscaleClient.from_credentials(credentials) as client,
        pytest.raises(AtomscaleProtocolError) as info,
    ):
        client.find_layers(LayerRequest.build(sample_id=42, layer_id=3))
    assert "unexpected shape" in str(info.value) and needle in str(info.value)
    assert "layer 3 of target material 42" in str(info.value)


def test_detail_is_kept_as_sent(canned_url: str) -> None:
    exc = send(f"{canned_url}/422-list")
    assert exc.status_code == 422
    assert exc.detail[0]["loc"] == ["body", "layer_id"]
    assert isinstance(send(f"{canned_url}/429"), AtomscaleRateLimitError)
    assert send(f"{canned_url}/429").retry_after == 7.0  # type: ignore[attr-defined]


def test_a_key_echoed_by_the_server_is_scrubbed(canned_url: str) -> None:
    exc = send(f"{canned_url}/echo-key")
    assert SECRET not in str(exc) and SECRET not in repr(exc.detail)
    assert "[API key]" in str(exc)


def test_timeouts_are_their_own_transient_class() -> None:
    # A listening socket that never answers: the read times out.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        credentials = AtomscaleCredentials(api_key=SECRET, base_url=url, timeout=0.3)
        with (
            AtomscaleClient.from_credentials(credentials) as client,
            pytest.raises(AtomscaleTimeoutError) as info,
        ):
            client.create_layer(LayerRequest.build(sample_id=1, layer_id=1))
        assert info.value.transient
        assert "may or may not have been applied" in str(info.value)
    finally:
        listener.close()


def test_errors_survive_pickling() -> None:
    import pickle

    error = AtomscaleRateLimitError("slow down", status_code=429, detail="x", retry_after=3)
    clone = pickle.loads(pickle.dumps(error))
    assert (type(clone), str(clone), clone.retry_after, clone.detail) == (
        AtomscaleRateLimitError,
        "slow down",
        3,
        "x",
    )


def test_reply_models_keep_fields_the_server_adds_later() -> None:
    from prefect_atomscale import Layer, TargetMaterial

    layer = Layer.model_validate(
        {"id": 1, "layer_id": 1, "sample_id": 2, "thickness_nm": 12.5, "created_by": "x"}
    )
    # Kept, never an error: a field the reference does not list may matter to a user.
    assert layer.id == 1 and layer.model_extra == {"thickness_nm": 12.5, "created_by": "x"}
    material = TargetMaterial.model_validate(
        {"sample_id": 2, "sample_name": "a", "substrate": "MgO", "project": {"id": 9}}
    )
    assert material.sample_id == 2


def _error_with_every_field() -> AtomscaleError:
    from prefect_atomscale import Layer

    error = AtomscaleValidationError(
        "Atomscale answered 422 to POST /target-materials/layers/ while ...: ... Fix it.",
        status_code=422,
        detail=[{"loc": ["body", "space_group"], "msg": "too long"}],
        request="POST /target-materials/layers/",
        service_said="space_group: too long",
        reason="space_group: too long (422)",
    )
    error.layer_outcomes = {
        1: Layer(id=7, layer_id=1, sample_id=3, composition_string="SrTiO3"),
        2: "space_group: too long (422)",
    }
    error.sample_id = 3
    error.stack_summary = "1 of 2 layers failed (L2: space_group: too long (422))"
    return error


def _fields(error: AtomscaleError) -> tuple[object, ...]:
    return (
        type(error),
        error.message,
        error.status_code,
        error.detail,
        error.request,
        error.service_said,
        error.reason,
        error.layer_outcomes,
        error.sample_id,
        error.stack_summary,
    )


def test_every_declared_field_survives_pickling() -> None:
    import pickle

    error = _error_with_every_field()
    assert _fields(pickle.loads(pickle.dumps(error))) == _fields(error)
    # The defaults too: an error built without them reads None, and its message as reason.
    plain = pickle.loads(pickle.dumps(AtomscaleError("plain")))
    assert (plain.request, plain.service_said, plain.reason, plain.layer_outcomes) == (
        None,
        None,
        "plain",
        None,
    )
    assert (plain.sample_id, plain.stack_summary) == (None, None)


@pytest.mark.integration
def test_every_declared_field_survives_a_failed_prefect_state() -> None:
    from prefect import flow

    @flow
    def fails() -> None:
        raise _error_with_every_field()

    state = fails(return_state=True)
    assert state.is_failed()
    assert _fields(state.result(raise_on_failure=False)) == _fields(_error_with_every_field())


def test_a_refused_request_carries_what_the_service_said_and_which_request(
    credentials: AtomscaleCredentials,
) -> None:
    with (
        AtomscaleClient.from_credentials(credentials) as client,
        pytest.raises(AtomscaleNotFoundError) as info,
    ):
        client.create_layer(LayerRequest.build(sample_id=999_999, layer_id=1))
    error = info.value
    assert error.request is not None and error.request.startswith("POST /")
    assert error.service_said and error.service_said in error.message
    assert error.reason == f"{error.service_said.rstrip('.')} (404)"
    assert (error.layer_outcomes, error.sample_id, error.stack_summary) == (None, None, None)


def test_an_unreachable_service_says_what_became_of_the_request_in_its_reason() -> None:
    nowhere = AtomscaleCredentials(api_key="k" * 24, base_url="http://127.0.0.1:9")
    with (
        AtomscaleClient.from_credentials(nowhere) as client,
        pytest.raises(AtomscaleConnectionError) as info,
    ):
        client.list_rows()
    error = info.value
    assert error.reason.startswith("Could not connect to http://127.0.0.1:9: ")
    assert error.request == "GET /target-materials/" and error.service_said is None
