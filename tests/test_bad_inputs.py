"""The bad-input table: every mistake and unusable reply, one row each.

Each row runs `create_layer` or `create_target_material` in a Prefect flow and checks
the whole contract of the error it ends in:

- its exact class, and whether it is transient;
- its message names the layer or target material and says what to do (a needle per row);
- how many requests met the failing answer, counted at the server: none at all for a
  mistake knowable locally, exactly one for a non-transient answer, one per attempt for
  a transient one; at most one write per attempt; and how many times Prefect ran the
  task (`run_count`, read in a failure hook), which shows what the retry condition
  decided. (A task may look for an existing record, a GET, before it writes; reads
  that succeed are not the answer and are not counted.)
- the service's `detail` is kept, on the error and in its message;
- no API key in `str`, `repr`, `detail` or the pickled error (Prefect pickles errors
  into result storage), nor in the task run's state message.

Rows that need a reply the sandbox cannot give (a redirect, a 200 that is not JSON, a
409, an HTML page with a 4xx status, a 422 with an object `detail`, ...) use a canned
stdlib HTTP server that counts what it receives. A second canned server on another
loopback address stands in for the "other host" that redirects point to: it must see
nothing. Every row also runs with outgoing connections to non-loopback addresses
blocked and recorded, so a check that regressed could never reach the network.

The flows are async (they call the sync tasks): a sync flow spends about a second at its
end joining its heartbeat thread, which over 80 rows would be most of the run time.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import math
import pickle
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import LAYERS, TARGET_MATERIALS, requests_to
from prefect import flow

import prefect_atomscale
from atomscale_sandbox import SandboxHandle
from prefect_atomscale import (
    AtomscaleAuthError,
    AtomscaleConfigurationError,
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
    InvalidCompositionError,
    InvalidOrientationError,
    create_layer,
    create_target_material,
)
from prefect_atomscale._payloads import LayerRequest, TargetMaterialRequest
from prefect_atomscale._retries import DEFAULT_RETRIES

from conftest import KEY_A, KEY_READ_ONLY  # isort: skip

# A target material id no sandbox of a test session reaches, so it never exists there.
SAMPLE = 424242
LAYER: dict[str, Any] = {
    "layer_id": 3,
    "sample_id": SAMPLE,
    "composition_string": "BaTiO3",
    "orientation": "001",
}
MATERIAL: dict[str, Any] = {"sample_name": "BTO on STO #7", "substrate": "SrTiO3"}
CANNED_KEY = "canned-secret-key-bad-inputs-0123"
WRONG_KEY = "wrong-key-never-issued-4567890"
ALL_KEYS = (KEY_A, KEY_READ_ONLY, CANNED_KEY, WRONG_KEY)
ATTEMPTS = DEFAULT_RETRIES + 1

# How each task run ended, by task run id: attempts and the final state's message. Read
# in a failure hook, since the server learns of task runs through events, a bit later.
FINISHED: dict[Any, tuple[int, str]] = {}


def remember(task: Any, task_run: Any, state: Any) -> None:
    FINISHED[task_run.id] = (task_run.run_count, state.message or "")


# Retries are counted, not waited for.
TASKS = {
    "layer": create_layer.with_options(retry_delay_seconds=0, on_failure=[remember]),
    "material": create_target_material.with_options(retry_delay_seconds=0, on_failure=[remember]),
}

Reply = tuple[int | None, dict[str, str], bytes]  # status None: read the request, never answer
JSON = {"Content-Type": "application/json"}
HTML = {"Content-Type": "text/html; charset=utf-8"}


def envelope(status: int, detail: Any) -> Reply:
    return status, JSON, json.dumps({"detail": detail}).encode()


def canned_replies(other_host: str) -> dict[str, Reply]:
    """Replies by first path segment; redirects point at the other host."""
    fastapi_list = [
        {
            "type": "int_type",
            "loc": ["body", "layer_id"],
            "msg": "Input should be a valid integer",
            "input": "x",
        }
    ]
    return {
        "conflict-409": envelope(409, "Layer record id 100 already exists"),
        "revoked-401": envelope(401, "API key revoked on 2025-01-31"),
        "wrong-org-403": envelope(403, "Key belongs to another organisation"),
        "422-string": envelope(422, "composition_string is not a formula"),
        "422-object": envelope(422, {"field": "orientation", "problem": "unsupported"}),
        "422-list": envelope(422, fastapi_list),
        "400": envelope(400, "Unknown field 'thickness'"),
        "413": envelope(413, "Request body too large"),
        "403-html": (403, HTML, b"<html><title>Access denied</title><h1>WAF</h1></html>"),
        "404-html": (404, HTML, b"<html><h1>404 Not Found</h1><hr>nginx</html>"),
        "200-html": (200, HTML, b"<html>Sign in to continue</html>"),
        "200-text": (200, {"Content-Type": "text/plain"}, b"OK"),
        "201-empty": (201, {}, b""),
        "200-wrong-shape": (200, JSON, b'{"ok": true}'),
        "200-list": (200, JSON, b"[]"),
        "200-wrong-types": (200, JSON, b'{"id": "abc", "layer_id": 3, "sample_id": 424242}'),
        "200-echo-key": (200, JSON, json.dumps({"api_key": CANNED_KEY}).encode()),
        "302": (302, {"Location": f"{other_host}/steal"}, b""),
        "307": (307, {"Location": f"{other_host}/steal"}, b""),
        "308": (308, {"Location": f"{other_host}/steal"}, b""),
        "302-echo-key": (302, {"Location": f"{other_host}/steal?key={CANNED_KEY}"}, b""),
        "400-echo-key": envelope(400, f"bad key {CANNED_KEY}"),
        "418": envelope(418, "I'm a teapot"),
        "silent": (None, {}, b""),
    }


class CannedServer:
    """A stdlib HTTP server answering writes with a canned reply per first path segment.

    Reads (GET) get `200 []`, an organisation with no records, so a task that looks
    before it writes goes on to the write; a reply with status None is never sent, to
    any method. Unknown segments get `200 {}`. Requests are counted per method and
    segment, with the `X-API-KEY` each carried.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.replies: dict[str, Reply] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.api_keys: list[str | None] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                case = self.path.strip("/").split("/")[0].split("?")[0]
                with owner._lock:
                    owner.requests[(self.command, case)] += 1
                    owner.api_keys.append(self.headers.get("X-API-KEY"))
                status, headers, body = owner.replies.get(case, (200, JSON, b"{}"))
                if status is None:
                    owner.closing.wait(30)
                    return
                if self.command == "GET":
                    status, headers, body = 200, JSON, b"[]"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://{host}:{self._httpd.server_address[1]}"

    def count(self, case: str | None = None, method: str | None = None) -> int:
        """Requests received, all or those for one segment and/or method."""
        with self._lock:
            return sum(
                n
                for (m, c), n in self.requests.items()
                if (case is None or c == case) and (method is None or m == method)
            )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.api_keys.clear()

    def __enter__(self) -> CannedServer:
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def another_host() -> CannedServer:
    """A canned server on 127.0.0.2 (another address of this machine), else 127.0.0.1."""
    try:
        return CannedServer("127.0.0.2")
    except OSError:
        return CannedServer("127.0.0.1")


@dataclass
class Canned:
    api: CannedServer
    other: CannedServer


@pytest.fixture(scope="module")
def canned() -> Iterator[Canned]:
    with another_host() as other, CannedServer() as api:
        api.replies = canned_replies(other.url)
        # The other host is reachable: a redirect that were followed would be counted.
        assert httpx.get(f"{other.url}/probe").status_code == 200
        assert other.count("probe") == 1
        other.reset()
        yield Canned(api, other)


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = str(address[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def block_remote_connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Block and record every outgoing connection to an address that is not loopback.

    Returns:
        The blocked addresses, in order; empty if nothing tried to leave this machine.
    """
    attempts: list[Any] = []
    real_create_connection = socket.create_connection
    real_connect = socket.socket.connect

    def refuse(address: Any) -> None:
        attempts.append(address)
        raise OSError(errno.ENETUNREACH, f"test blocked a connection to {address!r}")

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        if not _is_loopback(address):
            refuse(address)
        return real_create_connection(address, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        if not _is_loopback(address):
            refuse(address)
        real_connect(self, address)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.fixture
def remote_connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Connections to non-loopback addresses, blocked and recorded."""
    return block_remote_connections(monkeypatch)


@pytest.fixture
def restore_faults(sandbox: SandboxHandle) -> Iterator[None]:
    """Put back the session sandbox's fault settings that a row changes."""
    faults = sandbox.faults
    saved = (faults.kinds, faults.methods, faults.paths, faults.retry_after_seconds)
    yield
    faults.clear()
    faults.set(kinds=saved[0], methods=saved[1], paths=saved[2], retry_after_seconds=saved[3])


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Contains(str):
    """An expected `detail` known only in part: its text must contain this."""


NO_DETAIL = object()
WITHHELD = "[withheld: contained the API key]"  # what the client keeps of a detail with the key
DEFAULT = object()


@dataclass(frozen=True)
class Row:
    """One line of the table.

    Attributes:
        error: The exact class the task must fail with.
        hint: Text of the "what to do" part of the message.
        task: "layer" (`create_layer`) or "material" (`create_target_material`).
        args: Task arguments replacing those of `LAYER` / `MATERIAL`.
        server: "local" (the sandbox, which must see nothing), "sandbox",
            "canned:<case>", or "closed" (a loopback port nobody listens on).
        attempts: Times Prefect must have run the task.
        status: The status code the error must carry.
        detail: The `detail` the error must keep: a value, `Contains(text)`, or
            `NO_DETAIL` for none.
        names: Text naming the layer or target material; derived if None.
        api_key: The key to use; `DEFAULT` for the server's usual one.
        base_url: The base URL; `DEFAULT` for the server's. `{sandbox}` and
            `{sandbox_host}` are filled in.
        fault: A sandbox fault kind injected into every POST.
        timeout: The credentials' timeout in seconds.
        also: Extra needles for the message.
    """

    error: type[AtomscaleError]
    hint: str
    task: str = "layer"
    args: Mapping[str, Any] = field(default_factory=dict)
    server: str = "local"
    attempts: int = 1
    status: int | None = None
    detail: Any = NO_DETAIL
    names: str | None = None
    api_key: Any = DEFAULT
    base_url: Any = DEFAULT
    fault: str | None = None
    timeout: float = 15.0  # generous: a loaded CI machine must not turn answers into timeouts
    also: tuple[str, ...] = ()


class MissingTargetName(AssertionError):
    """The message does not say which layer or target material failed."""


# Configuration errors come from `AtomscaleCredentials.resolve()`, which does not know
# the request; the task would have to add it.


def row(id: str, *args: Any, marks: Any = (), **kwargs: Any) -> Any:
    return pytest.param(Row(*args, **kwargs), id=id, marks=marks)


def sandbox_fault(kind: str, error: type[AtomscaleError], hint: str, **kwargs: Any) -> Row:
    """A row whose every POST meets the sandbox fault `kind`: retried until none are left."""
    return Row(error, hint, server="sandbox", fault=kind, attempts=ATTEMPTS, **kwargs)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


# Hints (the "what to do" of a message) that several rows share.
NEW_KEY = "Put a current key from the Atomscale dashboard"
PASTE_KEY = "Paste the key from the Atomscale dashboard"
WHICH_SAMPLE = "the sample_id that create_target_material returned"
REAL_ADDRESS = "set base_url to the API's real address"
CHECKS_FIRST = "looks before writing again, so nothing is written twice"
FIX_FIELD = "Fix the field named above"
STATUS_PAGE = "check the Atomscale status page"


# fmt: off
ROWS = [
    # --- formulas: found locally, nothing sent -------------------------------------
    row("formula-unknown-element", InvalidCompositionError, "use a symbol from the periodic table",
        args={"composition_string": "Xx2O3"}, also=("'Xx' at position 0",)),
    row("formula-unbalanced-bracket", InvalidCompositionError, "add the opening bracket",
        args={"composition_string": "BaTiO3)"}, also=("position 6",)),
    row("formula-empty", InvalidCompositionError, "give one such as 'BaTiO3'",
        args={"composition_string": ""}),
    row("formula-only-spaces", InvalidCompositionError, "give one such as 'BaTiO3'",
        args={"composition_string": "   "}),
    row("formula-hyphen", InvalidCompositionError, "only element symbols, counts and brackets",
        args={"composition_string": "Ba-TiO3"}, also=("'-' at position 2",)),
    row("formula-10000-characters", InvalidCompositionError, "pass a single formula",
        args={"composition_string": ("BaTiO3" * 1667)[:10_000]}, also=("10000 characters",)),
    row("formula-cyrillic-lookalikes", InvalidCompositionError, "did you mean 'BaTiO3'?",
        args={"composition_string": "\u0412\u0430TiO3"}, also=("CYRILLIC CAPITAL LETTER VE",)),
    row("formula-greek-omicron", InvalidCompositionError, "retype the formula in plain ASCII",
        args={"composition_string": "BaTi\u039f3"}, also=("GREEK CAPITAL LETTER OMICRON",)),
    row("formula-subscript-digit", InvalidCompositionError, "did you mean 'BaTiO3'?",
        args={"composition_string": "BaTiO\u2083"}),
    row("formula-fullwidth", InvalidCompositionError, "retype the formula in plain ASCII",
        args={"composition_string": "\uff22\uff41\uff34\uff49\uff2f\uff13"}),
    row("formula-lowercase", InvalidCompositionError, "write 'Ba'",
        args={"composition_string": "batio3"}),
    row("formula-zero-count", InvalidCompositionError, "leave the element out instead",
        args={"composition_string": "BaTi0O3"}),
    row("formula-charge", InvalidCompositionError, "only element symbols, counts and brackets",
        args={"composition_string": "Ba2+TiO3"}),
    row("formula-not-text", InvalidCompositionError, "as a string such as 'BaTiO3'",
        args={"composition_string": 123}),
    # --- orientations ---------------------------------------------------------------
    row("orientation-letters", InvalidOrientationError, "write 3 (hkl) or 4 (hkil) Miller",
        args={"orientation": "abc"}),
    row("orientation-five-indices", InvalidOrientationError, "write 3 (hkl) or 4 (hkil) Miller",
        args={"orientation": "0 0 1 1 1"}, also=("found 5 indices",)),
    row("orientation-hexagonal-i-wrong", InvalidOrientationError, "i must be -2",
        args={"orientation": "1120"}),
    row("orientation-empty", InvalidOrientationError, "write 3 (hkl) or 4 (hkil) Miller",
        args={"orientation": ""}),
    # --- positions and other fields ---------------------------------------------------
    row("layer-id-zero", AtomscaleValidationError, "1 for the first",
        args={"layer_id": 0}, also=("got 0",)),
    row("layer-id-negative", AtomscaleValidationError, "1 for the first",
        args={"layer_id": -1}, also=("got -1",)),
    row("layer-id-text", AtomscaleValidationError, "1 for the first",
        args={"layer_id": "one"}, also=("got 'one'",)),
    row("layer-id-bool", AtomscaleValidationError, "1 for the first",
        args={"layer_id": True}, also=("got True",)),
    row("layer-id-float", AtomscaleValidationError, "whole number >= 1",
        args={"layer_id": 2.5}),
    row("layer-id-huge-text", AtomscaleValidationError, "1 for the first",
        args={"layer_id": "7" * 10_000}, names="of target material 424242"),
    row("sample-id-missing", AtomscaleValidationError, WHICH_SAMPLE,
        args={"sample_id": None}, also=("got nothing",)),
    row("sample-id-text", AtomscaleValidationError, WHICH_SAMPLE,
        args={"sample_id": "42"}),
    row("sample-id-zero", AtomscaleValidationError, WHICH_SAMPLE,
        args={"sample_id": 0}),
    row("mp-id-malformed", AtomscaleValidationError, "e.g. 'mp-5020'",
        args={"mp_id": "5020"}),
    row("element-dict-unknown-symbol", AtomscaleValidationError, "as in the periodic table",
        args={"element_dict": {"Qq": 1}}),
    row("element-dict-zero-amount", AtomscaleValidationError, "must be a positive number",
        args={"element_dict": {"Ba": 0}}),
    row("space-group-blank", AtomscaleValidationError, "leave the argument out",
        args={"space_group": "  "}),
    row("space-group-300-characters", AtomscaleValidationError, "the limit is 256",
        args={"space_group": "P" * 300}),
    # --- target materials -----------------------------------------------------------
    row("material-name-empty", AtomscaleValidationError, "Give the target material a name",
        task="material", args={"sample_name": ""}),
    row("material-substrate-blank", AtomscaleValidationError, "Give the substrate, e.g. 'SrTiO3'",
        task="material", args={"substrate": "   "}),
    row("material-name-10000-characters", AtomscaleValidationError, "the limit is 256",
        task="material", args={"sample_name": "BTO" * 3333 + "X"}, names="arget material 'BTOBTO"),
    row("material-metadata-not-mapping", AtomscaleValidationError, "Pass a dict such as",
        task="material", args={"sample_metadata": ["growth", "PLD"]}),
    row("material-metadata-nan", AtomscaleValidationError, "Use only strings, numbers",
        task="material", args={"sample_metadata": {"thickness": math.nan}}),
    # --- credentials and base URL: nothing sent ---------------------------------------
    row("api-key-empty", AtomscaleConfigurationError, PASTE_KEY,
        api_key=""),
    row("api-key-only-spaces", AtomscaleConfigurationError, PASTE_KEY,
        api_key="   "),
    row("api-key-missing-everywhere", AtomscaleConfigurationError, "export ATOMSCALE_API_KEY",
        api_key=None),
    row("material-api-key-empty", AtomscaleConfigurationError, PASTE_KEY,
        task="material", api_key=""),
    row("base-url-without-scheme", AtomscaleConfigurationError, "Write it with its scheme and host",
        base_url="{sandbox_host}"),
    row("base-url-bare-hostname", AtomscaleConfigurationError, "Write it with its scheme and host",
        base_url="api.atomscale.ai"),
    row("base-url-ftp", AtomscaleConfigurationError, "Write it with its scheme and host",
        base_url="ftp://api.atomscale.ai"),
    row("base-url-plain-http-remote", AtomscaleConfigurationError, "Use https://",
        base_url="http://192.0.2.1"),
    row("base-url-with-password", AtomscaleConfigurationError, "put the key in api_key instead",
        base_url="https://user:pw@api.atomscale.ai"),
    # --- the sandbox's own answers: sent once ------------------------------------------
    row("sample-id-not-found-404", AtomscaleNotFoundError, "Check that the target material exists",
        server="sandbox", status=404, detail=f"Target material {SAMPLE} not found"),
    row("key-wrong-401", AtomscaleAuthError, NEW_KEY,
        server="sandbox", status=401, api_key=WRONG_KEY,
        detail="Missing or unknown API key: send a valid key in the X-API-KEY header"),
    row("key-read-only-403", AtomscaleAuthError, "use a key with write access",
        server="sandbox", status=403, api_key=KEY_READ_ONLY,
        detail="This API key is read-only; use a key that may write"),
    row("material-key-wrong-401", AtomscaleAuthError, NEW_KEY,
        task="material", server="sandbox", status=401, api_key=WRONG_KEY,
        detail="Missing or unknown API key: send a valid key in the X-API-KEY header"),
    row("space-group-too-long-422-list", AtomscaleValidationError, FIX_FIELD,
        server="sandbox", status=422, args={"space_group": "P" * 40},
        detail=Contains("String should have at most 32 characters"), also=("space_group:",)),
    row("material-metadata-too-deep-422", AtomscaleValidationError, FIX_FIELD,
        task="material", server="sandbox", status=422,
        args={"sample_metadata": nested(40)}, detail=Contains("more than 32 deep")),
    row("material-body-too-large-413", AtomscaleValidationError, "Send a smaller request",
        task="material", server="sandbox", status=413,
        args={"sample_metadata": {"blob": "x" * 1_100_000}}, detail=Contains("the limit is")),
    # --- transient answers: retried, one POST per attempt --------------------------------
    pytest.param(sandbox_fault("503", AtomscaleServerError, STATUS_PAGE,
        status=503, detail="Service temporarily unavailable; try again later"),
        id="server-503-every-time"),
    pytest.param(sandbox_fault("502_html", AtomscaleServerError, STATUS_PAGE,
        status=502, also=("HTML page",)), id="proxy-502-html-every-time"),
    pytest.param(sandbox_fault("429", AtomscaleRateLimitError, "the task retries after",
        status=429, detail=Contains("Too many requests")), id="rate-limited-429-every-time"),
    pytest.param(sandbox_fault("reset", AtomscaleConnectionError, CHECKS_FIRST,
        also=("broke before a reply arrived",)), id="connection-reset-every-time"),
    row("material-server-503-every-time", AtomscaleServerError, STATUS_PAGE,
        task="material", server="sandbox", fault="503", status=503, attempts=ATTEMPTS,
        detail="Service temporarily unavailable; try again later"),
    row("base-url-unreachable", AtomscaleConnectionError, "Check base_url and the network",
        server="closed", attempts=ATTEMPTS, also=("Could not connect",)),
    row("server-never-answers", AtomscaleTimeoutError, CHECKS_FIRST,
        server="canned:silent", attempts=ATTEMPTS, timeout=0.2),
    # --- canned answers the sandbox cannot give: sent once -------------------------------
    row("conflict-409", AtomscaleConflictError, "look it up, or change the request",
        server="canned:conflict-409", status=409,
        detail="Layer record id 100 already exists"),
    row("material-conflict-409", AtomscaleConflictError, "look it up, or change the request",
        task="material", server="canned:conflict-409", status=409,
        detail="Layer record id 100 already exists"),
    row("key-revoked-401", AtomscaleAuthError, NEW_KEY,
        server="canned:revoked-401", status=401,
        detail="API key revoked on 2025-01-31"),
    row("key-wrong-organisation-403", AtomscaleAuthError, "use a key with write access",
        server="canned:wrong-org-403", status=403,
        detail="Key belongs to another organisation"),
    row("validation-422-string-detail", AtomscaleValidationError, FIX_FIELD,
        server="canned:422-string", status=422,
        detail="composition_string is not a formula"),
    row("validation-422-object-detail", AtomscaleValidationError, FIX_FIELD,
        server="canned:422-object", status=422,
        detail={"field": "orientation", "problem": "unsupported"},
        also=('"problem": "unsupported"',)),
    row("validation-422-list-detail", AtomscaleValidationError, FIX_FIELD,
        server="canned:422-list", status=422,
        detail=[{"type": "int_type", "loc": ["body", "layer_id"],
                 "msg": "Input should be a valid integer", "input": "x"}],
        also=("layer_id: Input should be a valid integer",)),
    row("bad-request-400", AtomscaleValidationError, FIX_FIELD,
        server="canned:400", status=400, detail="Unknown field 'thickness'"),
    row("too-large-413", AtomscaleValidationError, "Send a smaller request",
        server="canned:413", status=413, detail="Request body too large"),
    row("html-403-page-from-a-firewall", AtomscaleAuthError, "reaches the Atomscale API directly",
        server="canned:403-html", status=403, also=("an HTML page of",)),
    row("html-404-page-wrong-base-url", AtomscaleNotFoundError, "that base_url",
        server="canned:404-html", status=404, also=("an HTML page of",)),
    row("ok-200-html-login-page", AtomscaleProtocolError, "not a proxy or login page",
        server="canned:200-html", status=200, also=("not JSON", "HTML page")),
    row("ok-200-plain-text", AtomscaleProtocolError, "not a proxy or login page",
        server="canned:200-text", status=200, also=("text/plain",)),
    row("ok-201-empty-body", AtomscaleProtocolError, "not a proxy or login page",
        server="canned:201-empty", status=201, also=("an empty body",)),
    row("ok-200-wrong-shape", AtomscaleProtocolError, "needs an update",
        server="canned:200-wrong-shape", status=200, detail={"ok": True},
        also=("unexpected shape", "id: Field required")),
    row("ok-200-list-not-object", AtomscaleProtocolError, "needs an update",
        server="canned:200-list", status=200, detail=[], also=("unexpected shape",)),
    row("ok-200-wrong-types", AtomscaleProtocolError, "needs an update",
        server="canned:200-wrong-types", status=200,
        detail={"id": "abc", "layer_id": 3, "sample_id": SAMPLE}, also=("id: Input should be",)),
    row("material-ok-200-wrong-shape", AtomscaleProtocolError, "needs an update",
        task="material", server="canned:200-wrong-shape", status=200,
        detail={"ok": True}, also=("sample_id: Field required",)),
    row("ok-200-echoes-the-key", AtomscaleProtocolError, "needs an update",
        server="canned:200-echo-key", status=200,
        detail=WITHHELD),
    row("redirect-302-to-another-host", AtomscaleProtocolError, REAL_ADDRESS,
        server="canned:302", status=302, also=("not followed", "/steal")),
    row("redirect-307-to-another-host", AtomscaleProtocolError, REAL_ADDRESS,
        server="canned:307", status=307, also=("not followed",)),
    row("material-redirect-308-to-another-host", AtomscaleProtocolError,
        REAL_ADDRESS,
        task="material", server="canned:308", status=308, also=("not followed",)),
    row("redirect-with-the-key-in-location", AtomscaleProtocolError,
        REAL_ADDRESS,
        server="canned:302-echo-key", status=302, also=("[API key]",)),
    row("error-echoes-the-key-400", AtomscaleValidationError, FIX_FIELD,
        server="canned:400-echo-key", status=400,
        detail=WITHHELD, also=("bad key [API key]",)),
    row("undocumented-status-418", AtomscaleProtocolError, "is the Atomscale API",
        server="canned:418", status=418, detail="I'm a teapot"),
]
# fmt: on


@dataclass
class Ran:
    error: BaseException | None
    run_count: int
    state_message: str


def run_in_flow(task: Any, credentials: AtomscaleCredentials, arguments: dict[str, Any]) -> Ran:
    """Run one task call in a flow; report its error, attempts and final state message."""

    @flow(name="bad-input-row")
    async def one_call() -> tuple[BaseException | None, Any]:
        state = task(credentials, **arguments, return_state=True)
        value = await state.aresult(raise_on_failure=False)
        error = value if isinstance(value, BaseException) else None
        return error, state.state_details.task_run_id

    error, task_run_id = asyncio.run(one_call())
    run_count, message = FINISHED.pop(task_run_id)
    return Ran(error, run_count, message)


def default_names(row: Row, arguments: dict[str, Any]) -> str:
    """How the message must name what failed (without its first letter's case)."""
    if row.names is not None:
        return row.names
    build: Callable[..., Any] = (
        LayerRequest.build if row.task == "layer" else TargetMaterialRequest.build
    )
    try:
        return str(build(**arguments).describe())[1:]
    except AtomscaleError:
        if row.task == "layer":
            return f"ayer {arguments['layer_id']!r} of target material {arguments['sample_id']!r}"
        return f"arget material {arguments['sample_name']!r}"


@pytest.mark.usefixtures("restore_faults")
@pytest.mark.parametrize("row", ROWS)
def test_bad_input(
    row: Row,
    sandbox: SandboxHandle,
    canned: Canned,
    remote_connections: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    kind, _, case = row.server.partition(":")
    base_url, api_key = {
        "local": (sandbox.url, KEY_A),
        "sandbox": (sandbox.url, KEY_A),
        "canned": (f"{canned.api.url}/{case}", CANNED_KEY),
        "closed": (closed_port_url(), CANNED_KEY),
    }[kind]
    if row.base_url is not DEFAULT:
        base_url = row.base_url.format(
            sandbox=sandbox.url, sandbox_host=sandbox.url.removeprefix("http://")
        )
    if row.api_key is not DEFAULT:
        api_key = row.api_key
    credentials = AtomscaleCredentials(api_key=api_key, base_url=base_url, timeout=row.timeout)
    arguments = {**(LAYER if row.task == "layer" else MATERIAL), **row.args}
    if row.fault:
        sandbox.faults.set(
            rate=1.0,
            kinds={row.fault},
            seed=0,
            methods={"POST"},
            paths=None,
            retry_after_seconds=0,
        )
    canned.api.reset()
    canned.other.reset()
    sandbox.reset_stats()

    ran = run_in_flow(TASKS[row.task], credentials, arguments)

    exc = ran.error
    assert isinstance(exc, AtomscaleError), f"expected {row.error.__name__}, got {exc!r}"
    assert type(exc) is row.error, f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert row.hint in message, message
    for needle in row.also:
        assert needle in message, message
    assert len(message) < 2000, "the message copies a huge input"
    assert exc.transient is (row.attempts > 1)
    assert ran.run_count == row.attempts, "attempts"

    # The server side. Each attempt met the answer once: no request for a local
    # mistake, one for a non-transient answer. A task may look (GET) before it writes;
    # such reads are not the answer and are not counted here.
    expected = 0 if kind == "local" else row.attempts
    write_route = LAYERS if row.task == "layer" else TARGET_MATERIALS
    if kind == "local":
        assert sandbox.stats.requests == 0
    elif kind == "sandbox":
        stats = sandbox.stats
        answered = stats.faults.get(row.fault, 0) if row.fault else stats.by_status[row.status]
        assert answered == expected, stats
        assert requests_to(sandbox, "POST", write_route) <= row.attempts, stats
        assert all(200 <= status < 300 for status in stats.by_status if status != row.status)
    elif case == "silent":
        assert canned.api.count(case) == expected
    elif kind == "canned":
        assert canned.api.count(case, "POST") == expected
        assert canned.api.count(case, "GET") <= row.attempts
        assert canned.api.count() == canned.api.count(case)
        assert set(canned.api.api_keys) == {api_key}
    assert canned.other.count() == 0, "a redirect was followed"
    assert remote_connections == []

    # The service's answer is kept.
    assert exc.status_code == row.status
    if row.detail is NO_DETAIL:
        assert exc.detail is None
    elif isinstance(row.detail, Contains):
        assert row.detail in json.dumps(exc.detail) and row.detail in message
    else:
        assert exc.detail == row.detail
        if isinstance(row.detail, str) and row.detail != WITHHELD:
            assert row.detail in message

    # No key anywhere in the error, or in what Prefect recorded of it.
    pickled = pickle.dumps(exc)
    for key in ALL_KEYS:
        for text in (message, repr(exc), repr(exc.detail), ran.state_message):
            assert key not in text
        assert key.encode() not in pickled

    # Last, so that the rows waiting for a fix still check everything else.
    names = default_names(row, arguments)
    if names not in message and names[:1].upper() + names[1:] not in message:
        raise MissingTargetName(f"{names!r} not in {message!r}")


def exported_errors() -> dict[str, type[AtomscaleError]]:
    found = {}
    for name in prefect_atomscale.__all__:
        value = getattr(prefect_atomscale, name)
        if isinstance(value, type) and issubclass(value, AtomscaleError):
            found[name] = value
    del found["AtomscaleError"]
    return found


def test_the_table_covers_every_error_class() -> None:
    rows = [param.values[0] for param in ROWS]
    # Stack files are not task inputs: tests/test_stack_files.py covers their two errors.
    # A lost lease is no input either: tests/test_lock_managers.py and the adversary's
    # paused-holder schedule cover AtomscaleLockLostError. A growth run linked elsewhere
    # is no input of these tasks: tests/test_growth_runs.py covers GrowthRunLinkedError.
    stack_file_errors = {
        prefect_atomscale.InvalidStackFileError,
        prefect_atomscale.StackConflictError,
        prefect_atomscale.AtomscaleLockLostError,
        prefect_atomscale.GrowthRunLinkedError,
    }
    assert {r.error for r in rows} == set(exported_errors().values()) - stack_file_errors
    assert len(rows) >= 40


def test_readme_errors_table_lists_the_exported_hierarchy() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "\n## Errors\n" in readme
    section = readme.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    assert "`AtomscaleError`" in section
    table = {
        match["name"]: match["retried"].strip()
        for match in re.finditer(
            r"^\| `(?P<name>\w+)` \|[^\n]*\| (?P<retried>[^|\n]*) \|$", section, re.MULTILINE
        )
    }
    exported = exported_errors()
    assert sorted(set(exported) - set(table)) == [], "exported but missing from the README"
    assert sorted(set(table) - set(exported)) == [], "in the README but not exported"
    for name, retried in table.items():
        assert retried.startswith("yes") is exported[name].transient, name
