"""One HTTP connection pool per process and account, shared by every task run.

A client per task run would pay a TCP (and TLS) handshake per layer; instead the tasks
ask here. Clients are built lazily on first use, keyed by the account fingerprint and
the connection settings, closed when the interpreter exits, and never pickled: they live
in this module, not on the credentials block, so each Dask worker or forked process
builds its own. Async clients are bound to the event loop they were made on, so there
is one per loop.

`account_of` is the account as a task needs it (settings, fingerprints, the service),
resolved once per distinct block contents and environment: a layer asked for it about
ten times, and each `resolve()` of a block re-reads its private name through pydantic's
slow path, which cost more than the rest of the cache key.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from prefect_atomscale._client import AsyncAtomscaleClient, AtomscaleClient
from prefect_atomscale._credentials import (
    API_KEY_ENV_VARS,
    BASE_URL_ENV_VAR,
    AtomscaleCredentials,
    ConnectionSettings,
)

__all__ = ["Account", "account_of", "async_client_for", "client_for", "close_all"]

_PoolKey = tuple[int, str, float, float, int, str, str, str | None]

# Accounts kept at most: a process talks to a handful; past this the memo starts over.
_ACCOUNT_LIMIT = 64


class Account(NamedTuple):
    """What the tasks need of one block's account, resolved and checked once.

    Attributes:
        settings: `credentials.resolve()`.
        fingerprint: `credentials.account_fingerprint()` (base URL and key).
        key_fingerprint: `credentials.key_fingerprint()` (the key alone).
        service: The service its views belong to (see `_protocol.service_of`).
        pool_key: Its connection pool's key, without the process id.
    """

    settings: ConnectionSettings
    fingerprint: str
    key_fingerprint: str
    service: str
    pool_key: tuple[str, float, float, int, str, str, str | None]


_accounts: dict[tuple[Any, ...], Account] = {}


def _service(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if host in ("localhost", "::1") or host.startswith("127."):
        host = "loopback"
    return f"{parts.scheme}://{host}:{parts.port or ''}{parts.path.rstrip('/')}"


def _resolution_inputs(credentials: AtomscaleCredentials) -> tuple[Any, ...]:
    # Everything `resolve()` and the block's labels read: its fields, the name it was
    # saved under, and the environment variables it falls back on (read only when a
    # field is blank, as `resolve()` reads them). The name is read from
    # `__pydantic_private__`: an attribute access to an unset private field goes
    # through pydantic's `__getattr__` and an AttributeError, several microseconds.
    private = credentials.__pydantic_private__ or {}
    key, url = credentials.api_key.get_secret_value(), credentials.base_url
    fallbacks: tuple[str | None, ...] = ()
    if not key.strip() or not url.strip():
        fallbacks = tuple(os.environ.get(name) for name in (*API_KEY_ENV_VARS, BASE_URL_ENV_VAR))
    return (
        type(credentials),
        key,
        url,
        credentials.timeout,
        credentials.connect_timeout,
        credentials.max_connections,
        credentials.allow_insecure_http,
        private.get("_block_document_name"),
        fallbacks,
    )


def account_of(credentials: AtomscaleCredentials) -> Account:
    """The account of `credentials`, resolved once for the same contents and environment.

    Raises:
        AtomscaleConfigurationError: As `credentials.resolve()` does (never remembered).
    """
    inputs = _resolution_inputs(credentials)
    account = _accounts.get(inputs)
    if account is None:
        settings = credentials.resolve()
        account = Account(
            settings=settings,
            fingerprint=settings.fingerprint(),
            key_fingerprint=credentials.key_fingerprint(),
            service=_service(settings.base_url),
            pool_key=(
                settings.fingerprint(),
                settings.timeout,
                settings.connect_timeout,
                settings.max_connections,
                credentials._block_label(),
                credentials._base_url_source(),
                credentials._key_env_var(),
            ),
        )
        with _lock:
            if len(_accounts) >= _ACCOUNT_LIMIT:
                _accounts.clear()
            _accounts[inputs] = account
    return account


_lock = threading.Lock()
_sync_clients: dict[_PoolKey, AtomscaleClient] = {}
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[_PoolKey, AsyncAtomscaleClient]
] = weakref.WeakKeyDictionary()


def _pool_key(credentials: AtomscaleCredentials) -> _PoolKey:
    # The pid keeps a forked child from sharing its parent's sockets. The block's name and
    # where its key and base URL came from are part of the key because the client's error
    # messages name them: two blocks of one account must not tell the user to fix the
    # other one.
    return (os.getpid(), *account_of(credentials).pool_key)


def client_for(credentials: AtomscaleCredentials) -> AtomscaleClient:
    """Return this process's shared sync client for the account of `credentials`.

    Args:
        credentials: The account to talk to.

    Returns:
        A client that must not be closed by the caller.

    Raises:
        AtomscaleConfigurationError: If the credentials cannot be used.
    """
    key = _pool_key(credentials)
    client = _sync_clients.get(key)
    if client is None:
        with _lock:
            client = _sync_clients.get(key)
            if client is None:
                client = AtomscaleClient.from_credentials(credentials)
                _sync_clients[key] = client
    return client


def async_client_for(credentials: AtomscaleCredentials) -> AsyncAtomscaleClient:
    """Return the shared async client for this account on the running event loop.

    Args:
        credentials: The account to talk to.

    Returns:
        A client that must not be closed by the caller.

    Raises:
        AtomscaleConfigurationError: If the credentials cannot be used.
        RuntimeError: If no event loop is running.
    """
    key = _pool_key(credentials)
    loop = asyncio.get_running_loop()
    with _lock:
        clients = _async_clients.setdefault(loop, {})
        client = clients.get(key)
        if client is None:
            client = AsyncAtomscaleClient.from_credentials(credentials)
            clients[key] = client
    return client


@atexit.register
def close_all() -> None:
    """Close every shared sync client of this process; later calls build new ones.

    Async clients are dropped with their event loop and cannot be closed from here.
    """
    with _lock:
        clients = list(_sync_clients.values())
        _sync_clients.clear()
    for client in clients:
        client.close()
