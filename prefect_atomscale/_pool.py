"""One HTTP connection pool per process and account, shared by every task run.

A client per task run would pay a TCP (and TLS) handshake per layer; instead the tasks
ask here. Clients are built lazily on first use, keyed by the account fingerprint and
the connection settings, closed when the interpreter exits, and never pickled: they live
in this module, not on the credentials block, so each Dask worker or forked process
builds its own. Async clients are bound to the event loop they were made on, so there
is one per loop.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import weakref

from prefect_atomscale._client import AsyncAtomscaleClient, AtomscaleClient
from prefect_atomscale._credentials import AtomscaleCredentials

__all__ = ["async_client_for", "client_for", "close_all"]

_PoolKey = tuple[int, str, float, float, int, str, str, str | None]

_lock = threading.Lock()
_sync_clients: dict[_PoolKey, AtomscaleClient] = {}
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[_PoolKey, AsyncAtomscaleClient]
] = weakref.WeakKeyDictionary()


def _pool_key(credentials: AtomscaleCredentials) -> _PoolKey:
    settings = credentials.resolve()
    # The pid keeps a forked child from sharing its parent's sockets. The block's name and
    # where its key and base URL came from are part of the key because the client's error
    # messages name them: two blocks of one account must not tell the user to fix the
    # other one.
    return (
        os.getpid(),
        settings.fingerprint(),
        settings.timeout,
        settings.connect_timeout,
        settings.max_connections,
        credentials._block_label(),
        credentials._base_url_source(),
        credentials._key_env_var(),
    )


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
