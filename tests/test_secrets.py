"""The API key stays secret wherever Prefect and this package write.

`test_the_key_is_written_nowhere` runs flows at DEBUG level through everything that
writes: runs whose results and cache records are persisted (and a re-run served from
the cache), transient faults and retries, a wrong key (401), local and server-side
validation errors, an unreachable API, a flow that takes the credentials block as a
parameter, and a saved-then-loaded block used by the async task. Then it searches
everything written for the key, byte for byte:

- every log record (root and non-propagating loggers, formatted with tracebacks), all
  console output (Prefect's console handlers, stdout and stderr) and pytest's caplog;
- every file under PREFECT_HOME, including the base64-encoded pickles inside result
  and cache records;
- every column of every table of the Prefect test server's SQLite database, and the raw
  database, WAL and shared-memory files;
- flow-run parameters, task-run states and cache keys, logs and artifacts read back
  through the Prefect client; every event this process emitted;
- the errors' messages, reprs, details, pickles and formatted tracebacks; the reprs and
  dumps of the blocks and clients; the cache keys the tasks' policy computes;
- every request the sandbox received: path, query string, headers and body.

The one place the key may be is the saved block: Prefect stores block documents
Fernet-encrypted, with the Fernet key in the same database. The test checks that the
key is in no table in plain text, and that decrypting the block documents finds it in
the saved block and nowhere else: encryption at rest, not secrecy from whoever holds
the database file.

Every place searched has a positive control (a public marker or a count that must be
found), so a search that reads nothing cannot pass.

The other tests cover sending: plain http only to loopback unless the block allows it,
and no redirect followed to another host.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import pickle
import sqlite3
import traceback
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker, PrefectConsoleHandler
from prefect.runtime import flow_run as current_flow_run
from prefect.settings import (
    PREFECT_LOGGING_LEVEL,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
    temporary_settings,
)
from test_bad_inputs import (
    CannedServer,
    another_host,
    block_remote_connections,
    closed_port_url,
)

from atomscale_sandbox import SandboxConfig, SandboxHandle, run_sandbox
from prefect_atomscale import (
    AsyncAtomscaleClient,
    AtomscaleClient,
    AtomscaleConfigurationError,
    AtomscaleCredentials,
    AtomscaleError,
    AtomscaleProtocolError,
    acreate_layer,
    create_layer,
    create_target_material,
)
from prefect_atomscale._pool import client_for

from conftest import PREFECT_HOME  # isort: skip

CANARY = f"sk-secret-canary-{uuid.uuid4().hex}"
WRONG = f"sk-wrong-canary-{uuid.uuid4().hex}"
SECRETS = (CANARY, WRONG)
PUBLIC = f"public-marker-{uuid.uuid4().hex[:12]}"
BLOCK_NAME = f"secrets-canary-{uuid.uuid4().hex[:8]}"
MASKED = "*" * 10  # how pydantic shows a SecretStr

fast_layer = create_layer.with_options(retry_delay_seconds=0)
fast_alayer = acreate_layer.with_options(retry_delay_seconds=0)
fast_material = create_target_material.with_options(retry_delay_seconds=0)


# --- Where requests, events and logs are recorded ------------------------------------


@dataclass
class SeenRequest:
    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytearray = field(default_factory=bytearray)


class RequestRecorder:
    """ASGI wrapper around the sandbox's whole middleware stack: keeps every request."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[SeenRequest] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        seen = SeenRequest(
            scope["method"],
            scope["path"],
            scope.get("raw_path") or b"",
            scope.get("query_string") or b"",
            list(scope["headers"]),
        )
        self.seen.append(seen)

        async def recording_receive() -> Any:
            message = await receive()
            seen.body.extend(message.get("body", b""))
            return message

        await self.inner(scope, recording_receive, send)


@pytest.fixture(scope="module")
def canary() -> Iterator[tuple[SandboxHandle, RequestRecorder]]:
    """A sandbox of its own that knows only the canary key, recording every request."""
    with run_sandbox(SandboxConfig(api_keys={CANARY: "canary-lab"})) as sandbox:
        app = sandbox.app
        if app.middleware_stack is None:
            app.middleware_stack = app.build_middleware_stack()
        recorder = RequestRecorder(app.middleware_stack)
        app.middleware_stack = recorder
        sandbox.faults.set(retry_after_seconds=0)
        yield sandbox, recorder


class RecordCapture(logging.Handler):
    """Keeps every record as formatted text (with traceback) plus its attributes."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.texts: list[str] = []
        self.levels: Counter[tuple[str, int]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is still searched
            text = repr(record.msg)
        self.texts.append(f"{text}\n{vars(record)!r}")
        self.levels[(record.name.split(".")[0], record.levelno)] += 1


def _loggers_with_handlers() -> list[logging.Logger]:
    """The root logger and every logger that does not pass records on to it."""
    found = [logging.getLogger()]
    for logger in logging.root.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and not logger.propagate:
            found.append(logger)
    return found


@contextmanager
def everything_at_debug(console: io.StringIO) -> Iterator[RecordCapture]:
    """Log everything at DEBUG, capture each record, and send consoles to `console`."""
    capture = RecordCapture()
    saved_levels: dict[logging.Logger, int] = {}
    saved_files: list[tuple[PrefectConsoleHandler, Any]] = []
    saved_streams: list[tuple[logging.StreamHandler[Any], Any]] = []
    loggers = _loggers_with_handlers()
    noisy = ("prefect", "httpx", "httpcore", "prefect_atomscale", "uvicorn", "fastapi")
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and name.split(".")[0] in noisy:
            saved_levels[logger] = logger.level
    saved_levels[logging.getLogger()] = logging.getLogger().level
    for name in noisy:
        saved_levels.setdefault(logging.getLogger(name), logging.getLogger(name).level)
    try:
        for logger in saved_levels:
            logger.setLevel(logging.DEBUG)
        # Prefect's own console handlers, each once (pytest's handlers are left alone).
        handlers = {id(h): h for logger in loggers for h in logger.handlers}.values()
        for handler in handlers:
            if isinstance(handler, PrefectConsoleHandler):
                saved_files.append((handler, handler.console.file))
                handler.console.file = console
            elif isinstance(handler, logging.StreamHandler) and type(handler).__module__.startswith(
                "prefect"
            ):
                saved_streams.append((handler, handler.stream))
                handler.setStream(console)
        for logger in loggers:
            logger.addHandler(capture)
        with temporary_settings({PREFECT_LOGGING_LEVEL: "DEBUG"}):
            yield capture
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
        for handler, file in saved_files:
            handler.console.file = file
        for stream_handler, stream in saved_streams:
            stream_handler.setStream(stream)
        for logger, level in saved_levels.items():
            logger.setLevel(level)


# --- What the flows do ----------------------------------------------------------------


@dataclass
class Scenario:
    """What running the flows produced, for the searches."""

    sample_id: int
    flow_run_ids: list[Any] = field(default_factory=list)
    task_runs: int = 0
    errors: list[BaseException] = field(default_factory=list)
    loaded: AtomscaleCredentials | None = None


async def call(task: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a sync task in an async flow; return its result, or its error."""
    state = task(*args, **kwargs, return_state=True)
    return await state.aresult(raise_on_failure=False)


def run_the_flows(sandbox: SandboxHandle, scenario_name: str) -> Scenario:
    credentials = AtomscaleCredentials(api_key=CANARY, base_url=sandbox.url, timeout=15.0)
    wrong = AtomscaleCredentials(api_key=WRONG, base_url=sandbox.url, timeout=15.0)

    @flow(name="secrets-build", persist_result=True)
    async def build() -> tuple[Any, int, int]:
        get_run_logger().debug("a public marker for the searches: %s", PUBLIC)
        material = fast_material(credentials, scenario_name, "SrTiO3", {"note": PUBLIC})
        for layer_id, formula in enumerate(["SrRuO3", "BaTiO3"], start=1):
            fast_layer(
                credentials,
                layer_id=layer_id,
                sample_id=material.sample_id,
                composition_string=formula,
                orientation="001",
            )
        return current_flow_run.id, material.sample_id, 3

    @flow(name="secrets-faults")
    async def faults(sample_id: int) -> tuple[Any, int, int]:
        sandbox.faults.queue(["503", "429", "reset", "drop_after_commit"])
        layer = fast_layer(credentials, layer_id=3, sample_id=sample_id, composition_string="GaN")
        return current_flow_run.id, layer.id, 1

    @flow(name="secrets-errors")
    async def errors(sample_id: int) -> tuple[Any, list[Any], int]:
        unreachable = AtomscaleCredentials(api_key=CANARY, base_url=closed_port_url(), timeout=0.5)
        outcomes = [
            await call(
                fast_layer, wrong, layer_id=4, sample_id=sample_id, composition_string="GaN"
            ),
            await call(
                fast_layer, credentials, layer_id=4, sample_id=sample_id, composition_string="Xx2O3"
            ),
            await call(
                fast_layer,
                credentials,
                layer_id=4,
                sample_id=sample_id,
                composition_string="GaN",
                space_group="P" * 40,
            ),
            await call(fast_material, credentials, "", "SrTiO3"),
            await call(fast_material, wrong, f"{scenario_name}-wrong", "SrTiO3"),
            await call(fast_layer, unreachable, layer_id=4, sample_id=sample_id),
        ]
        return current_flow_run.id, outcomes, len(outcomes)

    @flow(name="secrets-block-parameter")
    async def block_parameter(
        credentials: AtomscaleCredentials, sample_id: int, layer_id: int, marker: str
    ) -> tuple[Any, int, int]:
        layer = fast_layer(
            credentials, layer_id=layer_id, sample_id=sample_id, composition_string="SrTiO3"
        )
        return current_flow_run.id, layer.id, 1

    @flow(name="secrets-loaded-block")
    async def loaded_block(sample_id: int) -> tuple[Any, AtomscaleCredentials, int]:
        loaded = await AtomscaleCredentials.aload(BLOCK_NAME)
        await fast_alayer(loaded, layer_id=7, sample_id=sample_id, composition_string="MgO")
        return current_flow_run.id, loaded, 1

    async def run_all() -> Scenario:
        flow_run, sample_id, tasks = await build()
        scenario = Scenario(sample_id, [flow_run], tasks)
        requests_before = sandbox.stats.requests
        flow_run, _, tasks = await build()  # served from the cache: nothing sent
        scenario.flow_run_ids.append(flow_run)
        scenario.task_runs += tasks
        assert sandbox.stats.requests == requests_before, "the re-run was not cached"

        for flow_run, _, tasks in [
            await faults(sample_id),
            await block_parameter(credentials, sample_id, 5, PUBLIC),
        ]:
            scenario.flow_run_ids.append(flow_run)
            scenario.task_runs += tasks
        # Every fault was met and retried, and the lost reply did not duplicate the layer.
        assert set(sandbox.stats.faults) == {"503", "429", "reset", "drop_after_commit"}
        assert sandbox.count_layers(sample_id=sample_id, layer_id=3) == 1

        flow_run, outcomes, tasks = await errors(sample_id)
        scenario.flow_run_ids.append(flow_run)
        scenario.task_runs += tasks
        scenario.errors = [error for error in outcomes if isinstance(error, BaseException)]
        assert [type(error).__name__ for error in outcomes] == [
            "AtomscaleAuthError",
            "InvalidCompositionError",
            "AtomscaleValidationError",
            "AtomscaleValidationError",
            "AtomscaleAuthError",
            "AtomscaleConnectionError",
        ], outcomes

        await credentials.asave(BLOCK_NAME, overwrite=True)
        flow_run, loaded, tasks = await loaded_block(sample_id)
        scenario.loaded = loaded
        scenario.flow_run_ids.append(flow_run)
        scenario.task_runs += tasks
        flow_run, _, tasks = await block_parameter(loaded, sample_id, 6, PUBLIC)
        scenario.flow_run_ids.append(flow_run)
        scenario.task_runs += tasks
        return scenario

    return asyncio.run(run_all())


# --- How to search ----------------------------------------------------------------------


def decoded_views(data: bytes) -> Iterator[bytes]:
    """The bytes as stored, and every base64 text in them decoded.

    Prefect stores a task's result record as JSON holding a base64-encoded pickle, and a
    flow's result as a bare base64-encoded pickle: a plain byte search of either file
    would miss a key inside the pickle. Prefect writes base64 with line breaks.
    """
    yield data
    texts: list[Any] = [data.decode("latin-1")]
    with suppress(ValueError, UnicodeDecodeError):
        texts.append(json.loads(data))
    while texts:
        value = texts.pop()
        if isinstance(value, dict):
            texts.extend(value.values())
        elif isinstance(value, list):
            texts.extend(value)
        elif isinstance(value, str) and len(value) >= 16:
            try:
                decoded = base64.b64decode("".join(value.split()), validate=True)
            except (binascii.Error, ValueError):
                continue
            yield decoded


@dataclass
class Hits:
    """Where the secrets were found, and where the public marker was (the controls)."""

    leaks: dict[str, list[str]] = field(default_factory=dict)
    markers: set[str] = field(default_factory=set)

    def search(self, place: str, data: str | bytes) -> None:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        for secret in SECRETS:
            at = raw.find(secret.encode())
            if at >= 0:
                context = raw[max(0, at - 80) : at + 80].decode("utf-8", "replace")
                self.leaks.setdefault(place, []).append(context)
        if PUBLIC.encode() in raw:
            self.markers.add(place.split(":")[0])

    def search_all(self, place: str, items: Iterable[str | bytes]) -> None:
        for item in items:
            self.search(place, item)


def prefect_database() -> Path:
    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    assert url.startswith("sqlite"), url
    return Path(url.split("///", 1)[1])


def search_database(hits: Hits, database: Path) -> list[str]:
    """Search every column of every table; return the decrypted block documents."""
    from cryptography.fernet import Fernet

    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        for (table,) in tables.fetchall():
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, str | bytes):
                        hits.search(f"database:{table}", value)
        (fernet_key,) = connection.execute(
            "SELECT value FROM configuration WHERE key = 'ENCRYPTION_KEY'"
        ).fetchone()
        fernet = Fernet(json.loads(fernet_key)["fernet_key"].encode())
        documents = []
        for (data,) in connection.execute("SELECT data FROM block_document"):
            documents.append(fernet.decrypt(json.loads(data).encode()).decode())
        return documents
    finally:
        connection.close()


async def read_back(scenario: Scenario) -> dict[str, list[str]]:
    """What the Prefect API gives back about the flow runs, once it has all task runs."""
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=scenario.flow_run_ids))
    async with get_client() as client:
        # Task runs reach the server as events, a moment after they finish.
        for _ in range(300):
            task_runs = await client.read_task_runs(flow_run_filter=flow_runs)
            done = [run for run in task_runs if run.state and run.state.is_final()]
            if len(done) >= scenario.task_runs:
                break
            await asyncio.sleep(0.1)
        assert len(done) == scenario.task_runs, "the server did not record every task run"
        runs = await client.read_flow_runs(flow_run_filter=flow_runs)
        logs: list[Any] = []
        while page := await client.read_logs(offset=len(logs), limit=200):
            logs.extend(page)
        artifacts = await client.read_artifacts()
    return {
        "flow run parameters": [json.dumps(run.parameters) for run in runs],
        "flow runs": [run.model_dump_json() for run in runs],
        "task runs": [run.model_dump_json() for run in task_runs],
        "task run states": [run.state.model_dump_json() for run in done if run.state],
        "logs": [log.model_dump_json() for log in logs],
        "artifacts": [artifact.model_dump_json() for artifact in artifacts],
    }


def error_texts(error: BaseException) -> list[str | bytes]:
    texts: list[str | bytes] = [
        str(error),
        repr(error),
        "".join(traceback.format_exception(error)),
        "".join(traceback.format_exception(error, chain=False)),
        pickle.dumps(error),
    ]
    if isinstance(error, AtomscaleError):
        texts.append(repr(error.detail))
    return texts


# --- The test -------------------------------------------------------------------------


@pytest.mark.integration
def test_the_key_is_written_nowhere(
    canary: tuple[SandboxHandle, RequestRecorder],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    unique: str,
) -> None:
    sandbox, recorder = canary
    events: list[str] = []
    send = EventsWorker.send

    def recording_send(self: EventsWorker, event: Any) -> Any:
        events.append(event.model_dump_json())
        return send(self, event)

    monkeypatch.setattr(EventsWorker, "send", recording_send)
    caplog.set_level(logging.DEBUG)
    console = io.StringIO()
    remote = block_remote_connections(monkeypatch)
    storage_before = {p for p in PREFECT_HOME.rglob("*") if p.is_file()}

    with everything_at_debug(console) as records:
        scenario = run_the_flows(sandbox, f"secrets-{PUBLIC}-{unique}")
        APILogWorker.drain_all(timeout=30, at_exit=False)
        EventsWorker.drain_all(timeout=30, at_exit=False)
        read = asyncio.run(read_back(scenario))
    out, err = capfd.readouterr()

    hits = Hits()
    # Logs and console output.
    hits.search_all("log records", records.texts)
    hits.search("console", console.getvalue())
    hits.search("stdout/stderr", out + err)
    hits.search("caplog", caplog.text)
    # Everything Prefect wrote under PREFECT_HOME: results, cache records, locks.
    written = [p for p in PREFECT_HOME.rglob("*") if p.is_file()]
    assert len(set(written) - storage_before) >= 3, "no result or cache record was written"
    for path in written:
        for view in decoded_views(path.read_bytes()):
            hits.search(f"PREFECT_HOME:{path.relative_to(PREFECT_HOME)}", view)
    # The Prefect database: each table, then the raw files.
    database = prefect_database()
    block_documents = search_database(hits, database)
    for path in database.parent.glob(database.name + "*"):
        hits.search(f"database file:{path.name}", path.read_bytes())
    # What the API gives back, and what this process emitted as events.
    for place, texts in read.items():
        hits.search_all(place, texts)
    hits.search_all("events", events)
    # Errors, blocks, clients and cache keys.
    for error in scenario.errors:
        hits.search_all(f"error:{type(error).__name__}", error_texts(error))
    credentials = AtomscaleCredentials(api_key=CANARY, base_url=sandbox.url, timeout=15.0)
    assert scenario.loaded is not None
    for block in (credentials, scenario.loaded):
        hits.search_all(
            "blocks",
            [
                repr(block),
                str(block),
                json.dumps(block.model_dump(), default=str),
                block.model_dump_json(),
                repr(block.resolve()),
                repr(client_for(block)),
            ],
        )
    with AtomscaleClient.from_credentials(credentials) as client:
        hits.search_all("clients", [repr(client), str(client._http.base_url)])
    async_client = AsyncAtomscaleClient.from_credentials(credentials)
    hits.search("clients", repr(async_client))
    asyncio.run(async_client.aclose())
    cache_keys = cache_keys_for(credentials, scenario.loaded, scenario.sample_id)
    hits.search_all("cache keys computed", cache_keys)

    # The requests the sandbox received: the key only ever in the X-API-KEY header.
    sent_keys = Counter()
    for seen in recorder.seen:
        for name, value in seen.headers:
            if name.lower() == b"x-api-key":
                sent_keys[value.decode("latin-1")] += 1
            else:
                hits.search(f"request header {name.decode('latin-1')}", value)
        hits.search_all("request line", [seen.path, seen.raw_path, seen.query])
        hits.search("request body", bytes(seen.body))

    # The one legitimate home of the key: the saved block, encrypted at rest.
    assert [CANARY in document for document in block_documents].count(True) == 1
    assert not any(WRONG in document for document in block_documents)

    assert hits.leaks == {}, "the API key leaked:\n" + json.dumps(hits.leaks, indent=1)

    # Positive controls: each search read what it claims to.
    assert sent_keys[CANARY] >= 10 and sent_keys[WRONG] >= 1, sent_keys
    assert {"log records", "console", "caplog", "PREFECT_HOME", "events"} <= hits.markers
    assert {"database", "logs", "flow run parameters", "task runs"} <= hits.markers
    assert records.levels[("prefect", logging.DEBUG)] > 0
    assert records.levels[("httpcore", logging.DEBUG)] > 0
    assert any(f'"api_key": "{MASKED}"' in text for text in read["flow run parameters"])
    assert any("AtomscaleAuthError" in text for text in read["task run states"])
    # The computed key is the one Prefect used: its cache record is named after it.
    assert (PREFECT_HOME / "storage" / cache_keys[0]).is_file()
    assert remote == []


def cache_keys_for(
    credentials: AtomscaleCredentials, loaded: AtomscaleCredentials, sample_id: int
) -> list[str]:
    """The cache keys of the first layer of `build`, for the in-memory and loaded block.

    They must be equal (same account), differ for another key, and hold no key.
    """
    inputs = {
        "layer_id": 1,
        "sample_id": sample_id,
        "composition_string": "SrRuO3",
        "orientation": "001",
    }
    policy = create_layer.cache_policy
    assert policy is not None
    keys = [
        policy.compute_key(None, {"credentials": block, **inputs}, {})  # type: ignore[arg-type]
        for block in (
            credentials,
            loaded,
            AtomscaleCredentials(api_key=WRONG, base_url=credentials.base_url, timeout=15.0),
        )
    ]
    assert all(isinstance(key, str) for key in keys)
    assert keys[0] == keys[1] != keys[2]
    return [str(key) for key in keys]


# --- Sending: plain http and redirects ----------------------------------------------------


REMOTE_PLAIN_HTTP = [
    "http://192.0.2.1",
    "http://192.0.2.1:8080/",
    "http://api.atomscale.ai",
    "http://10.1.2.3",
    "http://[2001:db8::1]:8080",
    "http://localhost.example.com",
    "http://127.0.0.1.nip.io",
]


@pytest.mark.parametrize("base_url", REMOTE_PLAIN_HTTP)
def test_plain_http_to_another_host_is_refused_before_connecting(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = block_remote_connections(monkeypatch)
    # A connection attempt would time out at once and raise AtomscaleTimeoutError.
    credentials = AtomscaleCredentials(api_key=CANARY, base_url=base_url, connect_timeout=0.001)
    for build in (
        credentials.get_client,
        credentials.get_async_client,
        lambda: AtomscaleClient.from_credentials(credentials),
        lambda: client_for(credentials),
    ):
        with pytest.raises(AtomscaleConfigurationError) as info:
            build()
        assert "Use https://" in str(info.value)
        assert CANARY not in str(info.value) and CANARY not in repr(info.value)
    assert remote == []


@pytest.mark.integration
def test_the_task_refuses_plain_http_to_another_host(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = block_remote_connections(monkeypatch)
    credentials = AtomscaleCredentials(
        api_key=CANARY, base_url="http://192.0.2.1", connect_timeout=0.001
    )
    error = run_layer_task(credentials)
    assert type(error) is AtomscaleConfigurationError
    assert "Refusing to send the API key over plain http to 192.0.2.1" in str(error)
    assert remote == []


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "http://127.8.9.10"]
)
def test_plain_http_to_this_machine_is_allowed(base_url: str) -> None:
    credentials = AtomscaleCredentials(api_key=CANARY, base_url=base_url)
    with credentials.get_client() as client:
        assert str(client.base_url).rstrip("/") == base_url


def test_allow_insecure_http_builds_a_client_for_a_remote_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = block_remote_connections(monkeypatch)
    credentials = AtomscaleCredentials(
        api_key=CANARY, base_url="http://192.0.2.1", allow_insecure_http=True
    )
    with credentials.get_client() as client:  # built, never used: nothing is sent there
        assert str(client.base_url) == "http://192.0.2.1"
        assert client.headers["X-API-KEY"] == CANARY
        assert client.follow_redirects is False
    asyncio.run(credentials.get_async_client().aclose())
    assert remote == []


TRICKY_URLS = [
    "http://127.0.0.1@evil.example",
    "http://evil.example#@127.0.0.1",
    "http://evil.example\\@127.0.0.1",
    "http://evil.example:80@127.0.0.1",
    "http://evil.example?@127.0.0.1",
    "http://127.0.0.1:80\\@evil.example",
    "http://127.0.0.1%2f@evil.example",
    "http://127.0.0.1.evil.example",
    "http://127.0.0.1\t.evil.example",
    "http://127.0.0.1;evil.example",
    "http://0x7f.0.0.1",
    "http://2130706433",
    "http://127.1",
    "http://[::ffff:127.0.0.1]",
    "http://127\u30020\u30020\u30021",
    "http://[::1",
    "http://[::1]evil.example",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:port",
    "HTTP://LOCALHOST:8000",
    "http:///127.0.0.1",
    " http://evil.example ",
]


def _is_loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.mark.parametrize("base_url", TRICKY_URLS)
def test_the_loopback_check_decides_on_the_host_httpx_connects_to(base_url: str) -> None:
    """A base URL is refused, or httpx sends to a loopback address; nothing else."""
    credentials = AtomscaleCredentials(api_key=CANARY, base_url=base_url)
    try:
        with credentials.get_client() as client:
            url = client.build_request("POST", "/target-materials/layers/").url
    except AtomscaleConfigurationError as exc:
        assert CANARY not in str(exc)
        return
    assert url.scheme == "http" and _is_loopback_host(url.host), url


def run_layer_task(credentials: AtomscaleCredentials) -> BaseException | None:
    @flow(name="secrets-send")
    async def send() -> BaseException | None:
        outcome = await call(
            fast_layer, credentials, layer_id=1, sample_id=1, composition_string="GaN"
        )
        return outcome if isinstance(outcome, BaseException) else None

    return asyncio.run(send())


@pytest.mark.integration
def test_a_redirect_to_another_host_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = block_remote_connections(monkeypatch)
    with another_host() as other, CannedServer() as api:
        api.replies = {"api": (307, {"Location": f"{other.url}/collect"}, b"")}
        # The other host answers: a request that were sent there would be counted.
        assert httpx.get(f"{other.url}/probe").status_code == 200
        other.reset()
        credentials = AtomscaleCredentials(api_key=CANARY, base_url=f"{api.url}/api")
        error = run_layer_task(credentials)
        assert type(error) is AtomscaleProtocolError
        assert "not followed" in str(error) and CANARY not in str(error)
        assert api.count("api", "POST") == 1
        assert set(api.api_keys) == {CANARY}
        assert other.count() == 0 and other.api_keys == []
    assert remote == []
