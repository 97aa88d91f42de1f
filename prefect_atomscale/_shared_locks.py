"""Locks and counters shared by every machine, in Redis: the `PREFECT_ATOMSCALE_LOCK_URL` backend.

Who else writes: runs on other machines (the workers of a process or Kubernetes pool
spread over hosts, Dask workers). `_locking` orders the processes of one machine with
`flock` and an mmap'd table of counters, which other machines never see. With
`PREFECT_ATOMSCALE_LOCK_URL=redis://HOST:PORT/DB` (or `rediss://`, `redis+sentinel://`)
set, the same holds and counters live in Redis instead, through prefect-redis:

- a process's hold on one of a family's lock slots is a Redis lock with a lease
  (`LeasedSlots`, on redis-py's `Lock`, the primitive of prefect-redis's
  `RedisLockManager`): a holder killed with SIGKILL blocks the others for at most
  `lease_seconds()`, 60 s unless `PREFECT_ATOMSCALE_LOCK_LEASE_SECONDS` says otherwise.
  A process renews its lease while its holders keep joining;
- the generation counters that tell a process its view of a target material is stale
  are Redis counters (`SharedCounters`), so a write on one machine is seen on all;
- the cache transactions of `create_target_material` use prefect-redis's
  `RedisLockManager` itself (`_redis_cache_lock`), with the lease as hold timeout.

Nothing falls back: a lock server that cannot be reached is an
`AtomscaleConfigurationError` that names the URL without its password, since local
locks would silently stop ordering the other machines.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from prefect_atomscale._exceptions import AtomscaleConfigurationError, AtomscaleConflictError

if TYPE_CHECKING:
    from redis import Redis
    from redis.lock import Lock

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "LEASE_ENV",
    "LOCK_URL_ENV",
    "LeasedSlots",
    "SharedCounters",
    "lease_seconds",
    "lock_url",
    "redacted",
]

LOCK_URL_ENV = "PREFECT_ATOMSCALE_LOCK_URL"
"""Environment variable naming the Redis server every machine's locks live on."""

LEASE_ENV = "PREFECT_ATOMSCALE_LOCK_LEASE_SECONDS"
"""Environment variable with the lease in seconds (default `DEFAULT_LEASE_SECONDS`)."""

DEFAULT_LEASE_SECONDS = 60.0
"""How long a killed holder can keep a lock: longer than any one write section, whose
requests time out after 30 s (read) and 10 s (connect)."""

# Every key this package writes starts so, apart from Prefect's own `lock:` keys.
_PREFIX = "prefect-atomscale"
# Waiting for a slot held on another machine: a Redis round trip per try, so slower
# than the local flock's 2 ms.
POLL_SECONDS = 0.01

T = TypeVar("T")


def lock_url() -> str | None:
    """The lock server's URL, or None for this machine's own locks."""
    url = os.environ.get(LOCK_URL_ENV, "").strip()
    return url or None


def lease_seconds() -> float:
    """The lease from the environment, checked."""
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_SECONDS
    try:
        lease = float(text)
    except ValueError:
        lease = -1.0
    if not 1.0 <= lease <= 86_400.0:
        raise AtomscaleConfigurationError(
            f"{LEASE_ENV}={text!r} is not a lease in seconds between 1 and 86400; "
            f"unset it for the default of {DEFAULT_LEASE_SECONDS:g} s."
        )
    return lease


def redacted(url: str) -> str:
    """`url` with any password replaced by `***`, for messages."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)


class _Server:
    """This process's client of one lock server, built on first use (and after a fork)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Redis | None = None
        self._pid = 0
        self._mutex = threading.Lock()

    def client(self) -> Redis:
        with self._mutex:
            if self._client is None or self._pid != os.getpid():
                from prefect_redis.connection import redis_from_url

                try:
                    client = redis_from_url(
                        self.url, socket_connect_timeout=5.0, socket_timeout=10.0
                    )
                except ValueError:  # prefect-redis's message never echoes the URL
                    raise AtomscaleConfigurationError(
                        f"{LOCK_URL_ENV}={redacted(self.url)} is not a Redis URL; write "
                        "redis://HOST:PORT/DB, rediss://... or redis+sentinel://..."
                    ) from None
                self._client, self._pid = client, os.getpid()
            assert self._client is not None
            return self._client

    def call(self, what: str, action: Callable[[Redis], T]) -> T:
        """Run `action` on the server; an unreachable server is a configuration error."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return action(self.client())
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise unreachable(self.url, what, exc) from None


def unreachable(url: str, what: str, exc: BaseException) -> AtomscaleConfigurationError:
    """The error for a lock server that does not answer; names the URL, never a password."""
    return AtomscaleConfigurationError(
        f"Cannot reach the lock server {redacted(url)} ({LOCK_URL_ENV}) while {what} "
        f"({type(exc).__name__}). Start it or fix the URL; to use this machine's own "
        f"locks instead, unset {LOCK_URL_ENV}. Runs never fall back to local locks on "
        "their own, since those would not keep other machines out. Nothing was written."
    )


_SERVERS: dict[str, _Server] = {}
_SERVERS_MUTEX = threading.Lock()


def server_for(url: str) -> _Server:
    """The one client of `url` in this process."""
    with _SERVERS_MUTEX:
        if url not in _SERVERS:
            _SERVERS[url] = _Server(url)
        return _SERVERS[url]


class LeasedSlots:
    """A process's holds on a family's lock slots, as leased Redis locks (see `_locking`).

    The same contract as the local flock files: `try_take` joins this process's hold of
    a slot or takes it if no other process (on any machine) has it; the last
    `give_back` releases it.
    """

    poll_seconds = POLL_SECONDS

    def __init__(self, family: str, url: str, lease: float) -> None:
        self._family = family
        self._server = server_for(url)
        self._lease = lease
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._mutex = threading.Lock()
        # slot -> (lock, holders in this process, when the lease was last set)
        self._held: dict[int, tuple[Lock, int, float]] = {}

    def reset_after_fork(self) -> None:
        # A forked child holds nothing, and must not use its parent's token.
        self._mutex = threading.Lock()
        self._held = {}
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"

    def _name(self, index: int) -> str:
        return f"{_PREFIX}:{self._family}:{index:04d}"

    def try_take(self, index: int) -> bool:
        """Join this process's hold of slot `index`, or take it if nobody holds it."""
        with self._mutex:
            held = self._held.get(index)
            if held is not None:
                lock, holders, since = held
                if time.monotonic() - since > self._lease / 3:
                    # Still busy: renew the lease before it can run out under us.
                    self._renew(lock)
                    since = time.monotonic()
                self._held[index] = (lock, holders + 1, since)
                return True
            from redis.lock import Lock

            def take(client: Redis) -> tuple[Lock, bool]:
                lock = Lock(client, self._name(index), timeout=self._lease, thread_local=False)
                return lock, bool(lock.acquire(blocking=False, token=self._token))

            lock, taken = self._server.call("taking a lock", take)
            if taken:
                self._held[index] = (lock, 1, time.monotonic())
            return taken

    def keep_alive(self, index: int) -> None:
        """Renew this process's lease on slot `index` if a third of it has passed."""
        with self._mutex:
            held = self._held.get(index)
            if held is None:
                return
            lock, holders, since = held
            if time.monotonic() - since > self._lease / 3:
                self._renew(lock)
                self._held[index] = (lock, holders, time.monotonic())

    def _renew(self, lock: Lock) -> None:
        from redis.exceptions import LockError

        try:
            self._server.call("renewing a lock", lambda _: lock.reacquire())
        except LockError:
            raise AtomscaleConflictError(
                f"This process held a lock on {redacted(self._server.url)} longer than its "
                f"{self._lease:g} s lease without a pause, and another run may have taken "
                f"it since. Raise {LEASE_ENV} above the longest write; run again."
            ) from None

    def give_back(self, index: int) -> None:
        """Leave this process's hold of slot `index`; the last one out releases it."""
        with self._mutex:
            lock, holders, since = self._held[index]
            if holders > 1:
                self._held[index] = (lock, holders - 1, since)
                return
            del self._held[index]
        from redis.exceptions import LockError

        # LockError: the lease ran out first and someone else may hold the slot now;
        # there is nothing to undo.
        with contextlib.suppress(LockError):
            self._server.call("releasing a lock", lambda _: lock.release())

    def holds(self, index: int) -> bool:
        """Whether this process holds slot `index` now."""
        with self._mutex:
            return index in self._held


class SharedCounters:
    """The generation counters of a family, as Redis counters (see `_locking.Generations`)."""

    def __init__(self, family: str, url: str) -> None:
        self._family = family
        self._server = server_for(url)

    def _name(self, index: int) -> str:
        return f"{_PREFIX}:{self._family}:generation:{index:04d}"

    def read(self, index: int) -> int:
        """The counter of slot `index`."""
        value: Any = self._server.call(
            "reading a counter", lambda client: client.get(self._name(index))
        )
        return int(value or 0)

    def bump(self, index: int) -> int:
        """Add one to the counter of slot `index`; return it."""
        return int(
            self._server.call("writing a counter", lambda client: client.incr(self._name(index)))
        )
