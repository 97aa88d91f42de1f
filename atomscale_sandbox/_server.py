"""Running the sandbox: a real HTTP server on a free local port, in a background thread.

`run_sandbox` is a context manager for tests and scripts: it starts uvicorn in a thread
of this process, returns once the server accepts connections, and stops it on exit.
The `SandboxHandle` it yields has the URL and keys to call it with, the live fault
settings, the request counters and direct reads of the stored rows for assertions.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn

from atomscale_sandbox._app import SandboxApp, create_app
from atomscale_sandbox._config import SandboxConfig, check_physical_sample_conflict
from atomscale_sandbox._faults import FaultConfig
from atomscale_sandbox._stats import StatsSnapshot

__all__ = ["SandboxHandle", "run_sandbox"]

_START_TIMEOUT_SECONDS = 30.0
# On top of any slow_after_commit delay, how long a stop waits for requests in flight
# before cancelling them.
_GRACE_SECONDS = 5


class SandboxHandle:
    """A running sandbox server, as `run_sandbox` yields it.

    Attributes:
        url: Base URL to call, e.g. `http://127.0.0.1:54321`.
        config: The configuration it serves.
        app: The app it serves, for anything this handle does not cover.

    Example:
        ```python
        import httpx

        from atomscale_sandbox import run_sandbox

        with run_sandbox() as sandbox:
            reply = httpx.post(
                f"{sandbox.url}/target-materials/",
                headers={"X-API-KEY": sandbox.api_key},
                json={"sample": {"sample_name": "BTO on STO", "substrate": "SrTiO3"}},
            )
            print(reply.status_code, sandbox.target_materials())
        ```
    """

    def __init__(self, url: str, app: SandboxApp) -> None:
        self.url = url
        self.app = app
        self.config = app.sandbox_config

    def __repr__(self) -> str:
        # No keys here: a repr ends up in logs and test reports.
        return f"SandboxHandle(url={self.url!r})"

    @property
    def api_key(self) -> str:
        """The first configured API key.

        Example:
            ```python
            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                headers = {"X-API-KEY": sandbox.api_key}
            ```
        """
        return next(iter(self.config.api_keys))

    @property
    def api_keys(self) -> tuple[str, ...]:
        """Every configured API key, in configuration order.

        Example:
            ```python
            from atomscale_sandbox import SandboxConfig, run_sandbox

            with run_sandbox(SandboxConfig(api_keys={"a": "lab-a", "b": "lab-b"})) as sandbox:
                print(sandbox.api_keys)  # ('a', 'b')
            ```
        """
        return tuple(self.config.api_keys)

    def organisation_of(self, api_key: str) -> str:
        """The organisation an API key acts for.

        Args:
            api_key: One of the configured keys.

        Returns:
            Its organisation's name.

        Raises:
            KeyError: The key is not configured.

        Example:
            ```python
            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                print(sandbox.organisation_of(sandbox.api_key))  # sandbox
            ```
        """
        return self.config.grants[api_key].organisation

    @property
    def faults(self) -> FaultConfig:
        """The live fault settings; changes apply to the next request.

        Example:
            ```python
            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                sandbox.faults.queue(["503", "drop_after_commit"])
                sandbox.faults.set(rate=0.1, kinds={"429"}, seed=3)
            ```
        """
        return self.config.faults

    @property
    def stats(self) -> StatsSnapshot:
        """The request counters now (a snapshot; read it again for newer counts).

        Example:
            ```python
            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                print(sandbox.stats.requests, sandbox.stats.connections)  # 0 0
            ```
        """
        return self.app.stats.snapshot()

    def reset_stats(self) -> None:
        """Set every request, status, fault and connection counter back to zero.

        Example:
            ```python
            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                sandbox.reset_stats()
            ```
        """
        self.app.stats.reset()

    @property
    def physical_sample_conflict(self) -> Literal["object", "string"]:
        """The shape of the 409 for a taken physical-sample name; set it to switch live.

        `"object"`: `{"detail": {"message": ..., "physical_sample_id": "<uuid>"}}`;
        `"string"`: `{"detail": "Physical sample name already exists"}`. Starts as
        `SandboxConfig.physical_sample_conflict`; the next request after a change
        answers in the new shape. Setting anything else raises `ValueError`.

        Example:
            ```python
            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                sandbox.physical_sample_conflict = "string"
                print(sandbox.physical_sample_conflict)  # string
            ```
        """
        return self.app.physical_sample_conflict

    @physical_sample_conflict.setter
    def physical_sample_conflict(self, shape: Literal["object", "string"]) -> None:
        self.app.physical_sample_conflict = check_physical_sample_conflict(shape)

    def physical_samples(self, *, organisation: str | None = None) -> list[dict[str, Any]]:
        """The stored physical samples (growth runs), oldest first.

        Args:
            organisation: Only this organisation's; all if `None`.

        Returns:
            One dict per physical sample (the fields a create answers plus
            `organisation`).

        Example:
            ```python
            import httpx

            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                httpx.post(
                    f"{sandbox.url}/physical_samples/",
                    headers={"X-API-KEY": sandbox.api_key},
                    json={"name": "  Run 7 "},
                )
                print([sample["name"] for sample in sandbox.physical_samples()])  # ['Run 7']
            ```
        """
        return self.app.store.physical_samples(organisation=organisation)

    def layer_rows(
        self, *, organisation: str | None = None, sample_id: int | None = None
    ) -> list[dict[str, Any]]:
        """The stored layer rows, duplicates and unattached layers included.

        Args:
            organisation: Only this organisation's; all if `None`.
            sample_id: Only this target material's; all if `None`.

        Returns:
            One dict per row (the API's layer fields plus `organisation`), in `id` order.

        Example:
            ```python
            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                print(sandbox.layer_rows(organisation="sandbox"))  # []
            ```
        """
        return self.app.store.layer_rows(organisation=organisation, sample_id=sample_id)

    def count_layers(
        self,
        *,
        organisation: str | None = None,
        sample_id: int | None = None,
        layer_id: int | None = None,
    ) -> int:
        """How many layer rows are stored; more than one per position means duplicates.

        Args:
            organisation: Only this organisation's; all if `None`.
            sample_id: Only this target material's; all if `None`.
            layer_id: Only at this position; all if `None`.

        Returns:
            The number of rows.

        Example:
            ```python
            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                print(sandbox.count_layers(sample_id=1, layer_id=1))  # 0
            ```
        """
        return self.app.store.count_layers(
            organisation=organisation, sample_id=sample_id, layer_id=layer_id
        )

    def target_materials(self, *, organisation: str | None = None) -> list[dict[str, Any]]:
        """The stored target materials, with or without layers.

        Args:
            organisation: Only this organisation's; all if `None`.

        Returns:
            One dict per target material (the API's fields plus `organisation`).

        Example:
            ```python
            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                print(sandbox.target_materials())  # []
            ```
        """
        return self.app.store.target_materials(organisation=organisation)

    def history(
        self,
        *,
        after: int = 0,
        organisation: str | None = None,
        sample_id: int | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """The store's audit: every insert, update and delete of a stored record.

        The records are layers, target materials and physical samples (growth runs).
        Never shown by the API. Each entry says when it was written (this process's
        `time.monotonic()`), by whose key (`user_id`), what kind of record changed
        (`kind`: `layer`, `material` or `physical_sample`) and which (`record_id`: the
        layer's or material's integer id, or the physical sample's UUID text), what the
        record was afterwards (or before, for a delete), and what fault injection did to
        the request; see `SandboxStore.history` in the source for every field.

        Args:
            after: Only entries with a `seq` above this.
            organisation: Only this organisation's; all if `None`.
            sample_id: Only entries of this target material: its own, its layers' and
                those of physical samples linked to it by the change; all if `None`.
            kind: Only entries of this kind (`layer`, `material` or `physical_sample`);
                all if `None`.

        Returns:
            One dict per change, oldest first.

        Example:
            ```python
            import httpx

            from atomscale_sandbox import run_sandbox

            with run_sandbox() as sandbox:
                httpx.post(
                    f"{sandbox.url}/target-materials/",
                    headers={"X-API-KEY": sandbox.api_key},
                    json={"sample": {"sample_name": "MgO buffer", "substrate": "MgO"}},
                )
                print([(e["action"], e["kind"]) for e in sandbox.history()])
                # [('insert', 'material')]
            ```
        """
        return self.app.store.history(
            after=after, organisation=organisation, sample_id=sample_id, kind=kind
        )


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bind here rather than in uvicorn, so that a port-0 address is known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on
    # sockets that say they are TCP, and without it every reply waits ~40 ms for a
    # delayed ACK between its header and body segments.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # Lets a sandbox restarted on a fixed port bind while old connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextmanager
def run_sandbox(
    config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[SandboxHandle]:
    """Serve a sandbox over HTTP for the duration of a `with` block.

    Starts uvicorn (HTTP/1.1 with the configured `http_parser`; quiet: no access log,
    warnings only) in a background thread, returns once it accepts connections, and
    on exit stops it, waiting for requests in flight, and closes the store. Can be used
    any number of times in a process, also one after another on the same `db_path`.

    Args:
        config: What to serve; a default `SandboxConfig` (one random key, temporary
            storage) if `None`.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see the handle's `url`).

    Yields:
        The handle of the running server.

    Raises:
        OSError: The address cannot be bound (e.g. the port is in use).
        RuntimeError: The server did not start.

    Example:
        ```python
        import httpx

        from atomscale_sandbox import SandboxConfig, run_sandbox

        config = SandboxConfig(api_keys={"key-a": "lab-a"}, db_path="sandbox.db")
        with run_sandbox(config) as sandbox:
            print(httpx.get(f"{sandbox.url}/health").json())  # {'status': 'ok'}
        ```
    """
    app = create_app(config)
    try:
        sock = _listening_socket(host, port)
    except OSError:
        app.store.close()
        raise
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=app.connections.protocol(app.sandbox_config.http_parser),
            ws="none",
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            # Idle keep-alive connections stay open 60 s, as behind common load
            # balancers; uvicorn's own 5 s would close a client's pool at every lull.
            timeout_keep_alive=60,
            # Off so that scope["client"] is always the real peer: connection faults
            # find the connection to drop by it, whatever headers a client sends.
            proxy_headers=False,
        )
    )
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"atomscale-sandbox-{bound_port}",
        daemon=True,
    )
    thread.start()
    try:
        _wait_until_started(server, thread)
        yield SandboxHandle(_url(host, bound_port), app)
    finally:
        server.config.timeout_graceful_shutdown = (
            math.ceil(app.sandbox_config.faults.slow_seconds) + _GRACE_SECONDS
        )
        server.should_exit = True
        thread.join()
        sock.close()
        app.store.close()


def _wait_until_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the sandbox server stopped while starting; see the log above")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the sandbox server did not start within {_START_TIMEOUT_SECONDS:.0f} s"
            )
        time.sleep(0.005)
