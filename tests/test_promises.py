"""Numbers and promises the docs make, each pinned so that changing it fails a test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from helpers import LAYERS, TARGET_MATERIALS, posts, requests_to
from prefect import flow, get_client
from prefect.states import Failed

from atomscale_sandbox import SandboxHandle
from prefect_atomscale import (
    AtomscaleClient,
    AtomscaleConfigurationError,
    AtomscaleCredentials,
    AtomscaleError,
    AtomscaleRateLimitError,
    AtomscaleServerError,
    InvalidStackFileError,
    Layer,
    TargetMaterial,
    _retries,
    _tasks,
    acreate_layer,
    acreate_layers,
    acreate_target_material,
    create_layer,
    create_layers,
    create_target_material,
    load_stack_file,
)
from prefect_atomscale._bulk import DEFAULT_MAX_CONCURRENCY
from prefect_atomscale._client import _Call
from prefect_atomscale._payloads import LayerRequest
from prefect_atomscale._pool import async_client_for, client_for, close_all

from conftest import KEY_A  # isort: skip

REPLACE = "/target-materials/{sample_id}/layers"
ALL_CREATE_TASKS = [
    create_target_material,
    acreate_target_material,
    create_layer,
    acreate_layer,
    create_layers,
    acreate_layers,
]


# --- A small HTTP proxy in front of the sandbox ---------------------------------------
#
# The sandbox cannot answer 408 and always sends `element_dict`; this proxy sits between
# the client and the sandbox and changes exactly that, forwarding everything else to the
# real sandbox over HTTP (whose counters still see every forwarded request). It also
# measures how many requests are in flight at once.


@dataclass
class ProxyRules:
    """What the proxy does besides forwarding; thread-safe through `lock`."""

    answer: deque[tuple[str, str, int]] = field(default_factory=deque)
    strip: frozenset[str] = frozenset()
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: list[int] = field(default_factory=list)
    stripped: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def status_for(self, method: str, path: str) -> int | None:
        """The status to answer without forwarding, used up, or None to forward."""
        with self.lock:
            if self.answer:
                wanted_method, pattern, status = self.answer[0]
                if method == wanted_method and fnmatchcase(path, pattern):
                    self.answer.popleft()
                    self.answered.append(status)
                    return status
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def _handle(self) -> None:
        rules = self.server.rules
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with rules.lock:
            rules.in_flight += 1
            rules.max_in_flight = max(rules.max_in_flight, rules.in_flight)
        try:
            path = self.path.split("?", 1)[0]
            status = rules.status_for(self.command, path)
            if status is not None:
                self._reply(status, {"detail": "Request Timeout"})
                return
            if rules.delay:
                time.sleep(rules.delay)
            headers = {
                name: value
                for name, value in self.headers.items()
                if name.lower() in ("x-api-key", "content-type", "accept", "user-agent")
            }
            upstream = self.server.upstream.request(
                self.command, self.path, content=body, headers=headers
            )
        finally:
            with rules.lock:
                rules.in_flight -= 1
        try:
            data = upstream.json()
        except ValueError:
            self._send(
                upstream.status_code, upstream.headers.get("content-type", ""), upstream.content
            )
            return
        self._reply(upstream.status_code, self._stripped(data))

    def _stripped(self, data: Any) -> Any:
        rules = self.server.rules
        items = data if isinstance(data, list) else [data]
        for item in items:
            if isinstance(item, dict):
                for name in rules.strip & item.keys():
                    del item[name]
                    with rules.lock:
                        rules.stripped += 1
        return data

    def _reply(self, status: int, data: Any) -> None:
        self._send(status, "application/json", json.dumps(data).encode())

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Proxy(ThreadingHTTPServer):
    """Forwards to the sandbox, applying `rules`."""

    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 would hold concurrent clients back

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = httpx.Client(base_url=upstream, timeout=60)
        self.rules = ProxyRules()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def proxy(sandbox: SandboxHandle) -> Iterator[Proxy]:
    server = Proxy(sandbox.url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    server.upstream.close()


def via(proxy: Proxy) -> AtomscaleCredentials:
    """Lab A's credentials, reaching the sandbox through the proxy."""
    return AtomscaleCredentials(api_key=KEY_A, base_url=proxy.url, timeout=10.0)


def material_made_elsewhere(sandbox: SandboxHandle, name: str) -> int:
    """A target material created with plain HTTP, as another process would: not by us."""
    reply = httpx.post(
        f"{sandbox.url}{TARGET_MATERIALS}",
        headers={"X-API-KEY": KEY_A},
        json={"sample": {"sample_name": name, "substrate": "SrTiO3", "sample_metadata": {}}},
    )
    reply.raise_for_status()
    sample_id: int = reply.json()["sample_id"]
    return sample_id


def write_stack(
    task: Any,
    credentials: AtomscaleCredentials,
    target: str | int,
    layers: list[dict[str, Any]],
    before_write: Callable[[], None] = lambda: None,
) -> tuple[int, Any]:
    """Run a stack task (sync or async twin) in a flow of its kind.

    `target` is a name to create a target material by (with the task's own twin), or the
    `sample_id` of one that exists. `before_write` runs between the two.

    Returns:
        The sample_id and what the stack task returned or raised.
    """
    if task.isasync:

        @flow
        async def async_stack() -> tuple[int, Any]:
            if isinstance(target, str):
                target_id = (await acreate_target_material(credentials, target, "SrTiO3")).sample_id
            else:
                target_id = target
            before_write()
            state = await task(credentials, target_id, layers, return_state=True)
            return target_id, await state.aresult(raise_on_failure=False)

        return asyncio.run(async_stack())

    @flow
    def sync_stack() -> tuple[int, Any]:
        if isinstance(target, str):
            target_id = create_target_material(credentials, target, "SrTiO3").sample_id
        else:
            target_id = target
        before_write()
        state = task(credentials, target_id, layers, return_state=True)
        return target_id, state.result(raise_on_failure=False)

    return sync_stack()


def new_material(credentials: AtomscaleCredentials, name: str) -> TargetMaterial:
    @flow
    def make() -> TargetMaterial:
        return create_target_material(credentials, name, "SrTiO3")

    return make()


# --- Retry-After is capped at 60 s ------------------------------------------------------


def error_for_reply(status: int, headers: dict[str, str] | None = None) -> AtomscaleError:
    """The error the client makes of a reply with this status and these headers."""
    http = httpx.Client(base_url="http://127.0.0.1:9", headers={"X-API-KEY": KEY_A})
    with AtomscaleClient(http) as client:
        reply = httpx.Response(
            status,
            headers=headers,
            json={"detail": "no"},
            request=httpx.Request("POST", f"http://127.0.0.1:9{LAYERS}"),
        )
        return client._error_for(_Call("POST", LAYERS, "creating layer 1"), reply)


def _rate_limited(retry_after: str) -> AtomscaleRateLimitError:
    error = error_for_reply(429, {"Retry-After": retry_after})
    assert isinstance(error, AtomscaleRateLimitError)
    return error


@pytest.mark.parametrize(
    ("header", "wait"),
    [("3600", 60.0), ("61", 60.0), ("60", 60.0), ("59", 59.0), ("2", 2.0)],
)
def test_a_retry_after_longer_than_60_s_waits_60_s(header: str, wait: float) -> None:
    error = _rate_limited(header)
    assert error.retry_after == float(header)  # the reply is read as it is...
    assert _retries.MAX_RETRY_AFTER == 60.0
    assert _retries._wait_before_retry(Failed(data=error)) == wait  # ...the wait is capped


def test_an_hour_as_an_http_date_also_waits_60_s() -> None:
    in_an_hour = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3600))
    error = _rate_limited(in_an_hour)
    assert error.retry_after is not None and error.retry_after > 3000
    assert _retries._wait_before_retry(Failed(data=error)) == 60.0


def test_a_sync_task_told_to_wait_an_hour_waits_60_s(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(_retries, "sleep", waits.append)
    material = new_material(credentials, unique)
    sandbox.faults.set(retry_after_seconds=3600)
    sandbox.faults.queue(["429"])

    @flow
    def one() -> Layer:
        return create_layer.with_options(retry_delay_seconds=0)(
            credentials, layer_id=1, sample_id=material.sample_id, composition_string="GaN"
        )

    assert one().layer_id == 1
    assert sandbox.stats.faults == {"429": 1}
    assert waits == [60.0]


def _recording_async_sleep(waits: list[float]) -> SimpleNamespace:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return SimpleNamespace(sleep=sleep)


@pytest.mark.anyio
async def test_an_async_task_told_to_wait_an_hour_waits_60_s_then_succeeds(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    # Only the retry module's asyncio: Prefect's own sleeps stay real.
    monkeypatch.setattr(_retries, "asyncio", _recording_async_sleep(waits))

    @flow
    async def one() -> Layer:
        material = await acreate_target_material(credentials, unique, "MgO")
        sandbox.reset_stats()
        sandbox.faults.set(retry_after_seconds=3600)
        sandbox.faults.queue(["429"])
        return await acreate_layer.with_options(retry_delay_seconds=0)(
            credentials, layer_id=1, sample_id=material.sample_id, composition_string="MgO"
        )

    layer = await one()
    assert layer.layer_id == 1 and layer.composition_string == "MgO"
    assert sandbox.stats.faults == {"429": 1}
    assert requests_to(sandbox, "POST", LAYERS) == 2
    assert waits == [60.0]


# --- The async retry path ---------------------------------------------------------------


@pytest.mark.anyio
async def test_async_tasks_retry_a_503_and_succeed(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    async def stack() -> tuple[Layer, list[Layer]]:
        material = await acreate_target_material(credentials, unique, "Al2O3")
        sandbox.reset_stats()
        sandbox.faults.queue(["503"])
        first = await acreate_layer.with_options(retry_delay_seconds=0)(
            credentials, layer_id=1, sample_id=material.sample_id, composition_string="AlN"
        )
        sandbox.faults.queue(["503"])
        rest = await acreate_layers.with_options(retry_delay_seconds=0)(
            credentials,
            material.sample_id,
            [{"composition_string": "AlN"}, {"composition_string": "GaN"}],
        )
        return first, rest

    first, rest = await stack()
    assert sandbox.stats.faults == {"503": 2}
    assert [layer.layer_id for layer in rest] == [1, 2]
    assert rest[0].id == first.id  # layer 1 adopted, not written again
    # One 503 and one retry for the layer; then one 503 and one retry for layer 2.
    assert requests_to(sandbox, "POST", LAYERS) == 4
    assert sandbox.count_layers(sample_id=first.sample_id) == 2


# --- 408 is transient -------------------------------------------------------------------


def test_408_is_classified_as_a_transient_server_error() -> None:
    error = error_for_reply(408)
    assert isinstance(error, AtomscaleServerError) and error.status_code == 408
    assert error.transient
    assert _retries._wait_before_retry(Failed(data=error)) == 0.0  # retried, no extra wait
    # Its neighbours are not transient: they fail on the first attempt.
    for status in (404, 409, 418):
        assert _retries._wait_before_retry(Failed(data=error_for_reply(status))) is None


def test_a_408_reply_is_retried_and_the_write_lands_once(
    proxy: Proxy, sandbox: SandboxHandle, unique: str
) -> None:
    # The sandbox has no 408 fault: the proxy answers the first layer POST with 408.
    credentials = via(proxy)
    material = new_material(credentials, unique)
    sandbox.reset_stats()
    proxy.rules.answer.append(("POST", LAYERS, 408))

    @flow
    def one() -> Layer:
        return create_layer.with_options(retry_delay_seconds=0)(
            credentials, layer_id=1, sample_id=material.sample_id, composition_string="GaN"
        )

    layer = one()
    assert proxy.rules.answered == [408]
    assert requests_to(sandbox, "POST", LAYERS) == 1  # the retry, forwarded
    assert [row["id"] for row in sandbox.layer_rows(sample_id=material.sample_id)] == [layer.id]


# --- element_dict filled in locally when the service sends none -------------------------


def test_a_layer_reply_without_element_dict_is_filled_in_from_the_formula(
    proxy: Proxy, sandbox: SandboxHandle, unique: str
) -> None:
    proxy.rules.strip = frozenset({"element_dict"})
    credentials = via(proxy)

    @flow
    def stacks() -> tuple[Layer, list[Layer]]:
        one = create_target_material(credentials, f"{unique}-one", "SrTiO3")
        single = create_layer(
            credentials, layer_id=1, sample_id=one.sample_id, composition_string="BaTiO3"
        )
        many = create_target_material(credentials, f"{unique}-many", "Al2O3")
        whole = create_layers(
            credentials,
            many.sample_id,
            [{"composition_string": "Al0.3Ga0.7N"}, {"composition_string": "GaN"}],
        )
        return single, whole

    single, whole = stacks()
    assert proxy.rules.stripped >= 3  # the replies really came without it
    assert single.element_dict == {"Ba": 1, "Ti": 1, "O": 3}
    assert [layer.element_dict for layer in whole] == [
        {"Al": 0.3, "Ga": 0.7, "N": 1},
        {"Ga": 1, "N": 1},
    ]


@pytest.mark.anyio
async def test_an_async_layer_reply_without_element_dict_is_filled_in(
    proxy: Proxy, sandbox: SandboxHandle, unique: str
) -> None:
    proxy.rules.strip = frozenset({"element_dict"})
    credentials = via(proxy)

    @flow
    async def one() -> Layer:
        material = await acreate_target_material(credentials, unique, "SrTiO3")
        return await acreate_layer(
            credentials, layer_id=1, sample_id=material.sample_id, composition_string="SrRuO3"
        )

    layer = await one()
    assert proxy.rules.stripped >= 1
    assert layer.element_dict == {"Sr": 1, "Ru": 1, "O": 3}


def test_a_reply_element_dict_is_kept_over_the_local_parse() -> None:
    request = LayerRequest.build(sample_id=1, layer_id=1, composition_string="GaN")
    sent = Layer(id=7, layer_id=1, sample_id=1, element_dict={"Ga": 1, "N": 1.0})
    assert request.complete(sent).element_dict == {"Ga": 1, "N": 1.0}
    assert request.complete(Layer(id=7, layer_id=1, sample_id=1)).element_dict == {"Ga": 1, "N": 1}


# --- No look before writing a new stack -------------------------------------------------


def test_layers_of_a_target_material_this_process_created_are_written_without_a_look(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    def stack() -> list[Layer]:
        material = create_target_material(credentials, unique, "SrTiO3")
        sandbox.reset_stats()  # the material's own look-up is not a layer's
        first = create_layer(credentials, 1, material.sample_id, "SrRuO3", "001")
        second = create_layer.submit(credentials, 2, material.sample_id, "BaTiO3", "001")
        return [first, second.result()]

    layers = stack()
    assert [layer.layer_id for layer in layers] == [1, 2]
    assert requests_to(sandbox, "POST", LAYERS) == 2
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 0


@pytest.mark.anyio
async def test_async_layers_of_a_new_target_material_are_written_without_a_look(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str
) -> None:
    @flow
    async def stack() -> list[Layer]:
        material = await acreate_target_material(credentials, unique, "Al2O3")
        sandbox.reset_stats()
        return list(
            await asyncio.gather(
                *(
                    acreate_layer(credentials, position, material.sample_id, formula, "0001")
                    for position, formula in enumerate(["AlN", "GaN"], start=1)
                )
            )
        )

    layers = await stack()
    assert [layer.layer_id for layer in layers] == [1, 2]
    assert requests_to(sandbox, "POST", LAYERS) == 2
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 0


@pytest.mark.parametrize("task", [create_layers, acreate_layers], ids=["sync", "async"])
def test_a_whole_new_stack_is_written_without_a_look_first(
    credentials: AtomscaleCredentials, sandbox: SandboxHandle, unique: str, task: Any
) -> None:
    layers = [{"composition_string": "BaTiO3"}, {"composition_string": "SrTiO3"}]
    writer = task.with_options(retries=0)

    def refuse_the_write() -> None:
        sandbox.reset_stats()  # the material's own look-up is not the stack's
        sandbox.faults.set(paths=[LAYERS])
        sandbox.faults.queue(["503", "503"])

    # The writes are the first requests: they fail, and nothing was read before them.
    _, error = write_stack(writer, credentials, f"{unique}-refused", layers, refuse_the_write)
    assert isinstance(error, AtomscaleServerError), error
    assert sandbox.stats.faults == {"503": 2}
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 0

    sandbox.faults.clear()
    _, stack = write_stack(writer, credentials, f"{unique}-written", layers, sandbox.reset_stats)
    assert [layer.layer_id for layer in stack] == [1, 2]
    assert requests_to(sandbox, "POST", LAYERS) == 2
    # The destructive replace-stack request is never sent, and nothing is read back.
    assert requests_to(sandbox, "POST", REPLACE) == 0
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 0


# --- Numbers: retries, timeouts, pool, concurrency --------------------------------------


@pytest.mark.parametrize("task", ALL_CREATE_TASKS, ids=lambda task: task.name)
def test_create_tasks_retry_4_times_after_half_1_2_4_s_with_jitter_half(task: Any) -> None:
    assert task.retries == 4
    assert task.retry_delay_seconds == [0.5, 1, 2, 4]
    assert task.retry_jitter_factor == 0.5
    expected = _retries.aretry_if_transient if task.isasync else _retries.retry_if_transient
    assert task.retry_condition_fn is expected


def test_timeouts_are_30_s_and_10_s_to_connect() -> None:
    credentials = AtomscaleCredentials(api_key="k")
    assert (credentials.timeout, credentials.connect_timeout) == (30.0, 10.0)
    with credentials.get_client() as client:
        assert client.timeout == httpx.Timeout(30.0, connect=10.0)


@pytest.mark.anyio
async def test_the_async_client_has_the_same_timeouts() -> None:
    async with AtomscaleCredentials(api_key="k").get_async_client() as client:
        assert client.timeout == httpx.Timeout(30.0, connect=10.0)


def test_the_shared_pool_sends_at_most_20_requests_at_once(proxy: Proxy) -> None:
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=proxy.url)
    assert credentials.max_connections == 20
    proxy.rules.delay = 0.5  # long enough that every request waits for a connection
    close_all()
    client = client_for(credentials)
    with ThreadPoolExecutor(max_workers=30) as threads:
        replies = list(threads.map(lambda _: client._http.get("/health"), range(30)))
    assert [reply.status_code for reply in replies] == [200] * 30
    assert proxy.rules.max_in_flight == 20


@pytest.mark.anyio
async def test_the_shared_async_pool_sends_at_most_20_requests_at_once(proxy: Proxy) -> None:
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url=proxy.url)
    proxy.rules.delay = 0.5
    client = async_client_for(credentials)  # one per event loop: this test's is new
    replies = await asyncio.gather(*(client._http.get("/health") for _ in range(30)))
    assert [reply.status_code for reply in replies] == [200] * 30
    assert proxy.rules.max_in_flight == 20


@pytest.mark.parametrize("task", [create_layers, acreate_layers], ids=["sync", "async"])
def test_create_layers_writes_at_most_16_layers_at_once(
    proxy: Proxy, sandbox: SandboxHandle, unique: str, task: Any
) -> None:
    assert DEFAULT_MAX_CONCURRENCY == 16
    # Made elsewhere, so layers are posted one by one, not replaced in one request.
    sample_id = material_made_elsewhere(sandbox, unique)
    layers = [{"composition_string": "BaTiO3"}, {"composition_string": "SrTiO3"}] * 15
    proxy.rules.delay = 0.3  # long enough that every write waits for a slot

    _, written = write_stack(task, via(proxy), sample_id, layers)
    assert [layer.layer_id for layer in written] == list(range(1, 31))
    assert requests_to(sandbox, "POST", LAYERS) == 30
    assert proxy.rules.max_in_flight == 16


# --- A bumped task version misses the cache ---------------------------------------------


def test_a_bumped_task_version_misses_the_cache(
    credentials: AtomscaleCredentials,
    sandbox: SandboxHandle,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run(task: Any) -> Any:
        @flow
        def make() -> Any:
            # With a layer: an empty target material is invisible to the listing.
            layers = [{"composition_string": "GaN"}]
            return task(credentials, unique, "Al2O3", layers=layers, return_state=True)

        return make()

    first = run(create_target_material)
    assert first.is_completed() and first.name == "Completed"
    sandbox.reset_stats()
    again = run(create_target_material)
    assert again.name == "Cached" and sandbox.stats.requests == 0

    # What bumping TASK_VERSION in the source does: the tasks are built with the new one.
    monkeypatch.setattr(_tasks, "TASK_VERSION", str(int(_tasks.TASK_VERSION) + 1))
    options = _tasks.task_options(
        "create_target_material",
        _tasks._target_material_request,
        _retries.retry_if_transient,
        _tasks._target_material_run_name,
        serializable=True,
    )
    bumped = run(create_target_material.with_options(cache_policy=options["cache_policy"]))
    assert bumped.name == "Completed"
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) >= 1  # the service was asked
    assert posts(sandbox) == 0  # and the existing material adopted, not made again
    assert bumped.result().sample_id == first.result().sample_id


# --- A saved block never holds a key read from the environment --------------------------


def test_a_key_read_from_the_environment_is_never_saved_with_the_block(
    sandbox: SandboxHandle, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AS_API_KEY", KEY_A)
    credentials = AtomscaleCredentials(base_url=sandbox.url)

    @flow
    def make() -> TargetMaterial:
        return create_target_material(credentials, unique, "SrTiO3")

    assert make().sample_name == unique  # the key from the environment was used
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 1
    name = f"env-key-{uuid.uuid4().hex[:8]}"
    credentials.save(name)

    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(
            name, block_type_slug="atomscale-credentials", include_secrets=True
        )
    assert not document.data.get("api_key")  # empty: read from the environment when used
    assert KEY_A not in json.dumps(document.data, default=str)
    loaded = AtomscaleCredentials.load(name)
    assert loaded.api_key.get_secret_value() == ""
    monkeypatch.delenv("AS_API_KEY")
    with pytest.raises(AtomscaleConfigurationError, match="no api_key"):
        loaded.resolve()


# --- Stack files: at most 1000 periods ---------------------------------------------------


def _repeat_file(folder: Path, periods: int) -> Path:
    path = folder / f"repeat-{periods}.yaml"
    path.write_text(
        f"name: x\nsubstrate: SrTiO3\nlayers:\n"
        f"  - repeat: {periods}\n    layers: [{{composition: BaTiO3}}]\n"
    )
    return path


def test_a_repeat_of_1000_is_allowed_and_1001_refused_naming_the_limit(tmp_path: Path) -> None:
    assert len(load_stack_file(_repeat_file(tmp_path, 1000)).layer_specs()) == 1000
    with pytest.raises(InvalidStackFileError) as refused:
        load_stack_file(_repeat_file(tmp_path, 1001))
    message = str(refused.value)
    assert "field 'repeat'" in message
    assert "less than or equal to 1000" in message and "1001" in message
