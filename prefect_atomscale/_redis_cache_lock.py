"""prefect-redis's `RedisLockManager` for the cache transactions, with a lease and bounded waits.

Imported only when `PREFECT_ATOMSCALE_LOCK_URL` is set (see `_shared_locks`), so that
prefect-redis stays an optional extra. Prefect's transactions ask for their lock with
no hold timeout, which in Redis would keep a killed holder's lock for ever: here it
defaults to the lease. Waits are bounded like the local ones, the same request twice
in one transaction fails at once instead of waiting for itself, and a server that does
not answer raises `AtomscaleConfigurationError`.
"""

from __future__ import annotations

import threading
from typing import Any

try:
    from prefect_redis.locking import RedisLockManager
except ImportError as exc:  # pragma: no cover - the message is the point
    from prefect_atomscale._exceptions import AtomscaleConfigurationError

    raise AtomscaleConfigurationError(
        "PREFECT_ATOMSCALE_LOCK_URL is set but prefect-redis is not installed: "
        "pip install 'prefect-atomscale[redis]'."
    ) from exc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

from prefect_atomscale._exceptions import AtomscaleConflictError
from prefect_atomscale._locking import refuse_self_wait
from prefect_atomscale._shared_locks import redacted, unreachable

__all__ = ["LeasedRedisLockManager"]

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class LeasedRedisLockManager(RedisLockManager):
    """`RedisLockManager` whose locks expire after `lease` seconds unless released."""

    def __init__(self, url: str, lease: float, wait_limit: float) -> None:
        super().__init__(connection_url=url)
        self._url, self._lease, self._wait_limit = url, lease, wait_limit
        self._mine: dict[str, tuple[str, int]] = {}  # key -> (holder, thread), this process

    def __reduce__(self) -> tuple[Any, tuple[str, float, float]]:
        # A copy on a Dask worker connects from there and holds nothing yet.
        return (type(self), (self._url, self._lease, self._wait_limit))

    def _refuse_self_wait(self, key: str, holder: str) -> None:
        refuse_self_wait(self._mine.get(key), holder)

    def _waited(self, limit: float) -> AtomscaleConflictError:
        return AtomscaleConflictError(
            f"Waited {limit:g} s for the cache lock of a request: another run holds it "
            f"(lock server {redacted(self._url)}). If no other run is active, its lease "
            f"ends within {self._lease:g} s; run again then. Nothing was written."
        )

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Take the lock, waiting at most the wait limit; it expires after the lease.

        Returns:
            True once held.

        Raises:
            AtomscaleConflictError: The wait passed its limit, or could never end.
        """
        self._refuse_self_wait(key, holder)
        limit = self._wait_limit if acquire_timeout is None else acquire_timeout
        try:
            taken = super().acquire_lock(key, holder, limit, hold_timeout or self._lease)
        except _UNREACHABLE as exc:
            raise unreachable(self._url, "taking a cache lock", exc) from None
        if not taken:
            raise self._waited(limit)
        self._mine[key] = (holder, threading.get_ident())
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Async `acquire_lock`.

        Returns:
            True once held.
        """
        self._refuse_self_wait(key, holder)
        limit = self._wait_limit if acquire_timeout is None else acquire_timeout
        try:
            taken = await super().aacquire_lock(key, holder, limit, hold_timeout or self._lease)
        except _UNREACHABLE as exc:
            raise unreachable(self._url, "taking a cache lock", exc) from None
        if not taken:
            raise self._waited(limit)
        self._mine[key] = (holder, threading.get_ident())
        return True

    def release_lock(self, key: str, holder: str) -> None:
        """Release `holder`'s lock on `key`."""
        was_mine = self._mine.pop(key, None) is not None
        try:
            super().release_lock(key, holder)
        except (LockError, ValueError):
            if not was_mine:
                raise
            # The lease ran out first (a transaction longer than the lease): the lock is
            # gone, or another run's now; there is nothing left to give back.
            self._locks.pop(self._lock_name_for_key(key), None)
        except _UNREACHABLE as exc:
            raise unreachable(self._url, "releasing a cache lock", exc) from None

    def is_locked(self, key: str) -> bool:
        """Whether any run holds `key`."""
        try:
            return bool(super().is_locked(key))
        except _UNREACHABLE as exc:
            raise unreachable(self._url, "reading a cache lock", exc) from None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether `holder` holds `key`."""
        try:
            return bool(super().is_lock_holder(key, holder))
        except _UNREACHABLE as exc:
            raise unreachable(self._url, "reading a cache lock", exc) from None

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait, at most the wait limit, until nobody holds `key`.

        Returns:
            True once free; False if the limit passed first.
        """
        limit = self._wait_limit if timeout is None else timeout
        try:
            return bool(super().wait_for_lock(key, limit))
        except _UNREACHABLE as exc:
            raise unreachable(self._url, "waiting for a cache lock", exc) from None

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async `wait_for_lock`.

        Returns:
            True once free; False if the limit passed first.
        """
        limit = self._wait_limit if timeout is None else timeout
        try:
            return bool(await super().await_for_lock(key, limit))
        except _UNREACHABLE as exc:
            raise unreachable(self._url, "waiting for a cache lock", exc) from None
