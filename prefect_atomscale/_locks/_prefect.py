"""Prefect's `LockManager` on the one lock layer, for the cache transactions.

`create_target_material` runs with `isolation_level="SERIALIZABLE"`: two runs of one
request take turns through this manager, and the second finds the first one's record in
the cache, also for a target material without layers, which the listing cannot show.
The locks are the `CACHE` family's, so they order the processes of this machine and,
with a lock server, every machine, like every other lock of this package.
"""

from __future__ import annotations

import threading

from prefect.locking.protocol import LockManager

from prefect_atomscale._exceptions import AtomscaleConflictError
from prefect_atomscale._locks import CACHE

__all__ = ["CacheLockManager"]

_WHAT = "a cached request"


def _refuse_self_wait(key: str, holder: str) -> None:
    """Fail at once if this thread already holds `key` for another holder: a wait for ever."""
    held = CACHE.writer(key)
    if held is not None and held[0] != holder and held[1] == threading.get_ident():
        raise AtomscaleConflictError(
            "The same request runs twice inside one Prefect transaction: the first "
            "run's cache lock is held until the transaction commits, so the second "
            "would wait for ever. Call it once and reuse its result."
        )


class CacheLockManager(LockManager):
    """The cache transactions' lock manager: the `CACHE` family of `_locks`.

    A run that asks for a lock its own thread already holds for another transaction
    (the same target material twice inside one `with transaction():`) fails at once
    with `AtomscaleConflictError`, since waiting could never end.
    """

    def __reduce__(self) -> tuple[type[CacheLockManager], tuple[()]]:
        # Tasks carry their cache policy to Dask workers: a copy there holds nothing.
        return (type(self), ())

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Take the lock on `key` for `holder`; fail loudly rather than wait for ever.

        Returns:
            True once held.

        Raises:
            AtomscaleConflictError: The wait would never end, or passed its timeout.
        """
        _refuse_self_wait(key, holder)
        CACHE.acquire(key, holder=holder, what=_WHAT, timeout=acquire_timeout)
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
        _refuse_self_wait(key, holder)
        await CACHE.aacquire(key, holder=holder, what=_WHAT, timeout=acquire_timeout)
        return True

    def release_lock(self, key: str, holder: str) -> None:
        """Release the lock `holder` holds on `key`.

        A lease that ran out meanwhile is not an error here: the cache lock only makes
        runs of one request take turns; the write itself was fenced by its own locks.

        Raises:
            ValueError: If `holder` does not hold it (as Prefect's managers do).
        """
        if not self.is_lock_holder(key, holder):
            raise ValueError(f"No lock held by {holder} for transaction with key {key}")
        CACHE.release(key)

    def is_locked(self, key: str) -> bool:
        """Whether a run of this process holds `key` (other processes: see `wait_for_lock`)."""
        return CACHE.writer(key) is not None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether `holder` holds `key`."""
        held = CACHE.writer(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until no run holds `key`.

        Returns:
            True once free; False if the timeout passed first.
        """
        try:
            CACHE.acquire(key, what=_WHAT, timeout=timeout)
        except AtomscaleConflictError:
            return False
        CACHE.release(key)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async `wait_for_lock`.

        Returns:
            True once free; False if the timeout passed first.
        """
        try:
            await CACHE.aacquire(key, what=_WHAT, timeout=timeout)
        except AtomscaleConflictError:
            return False
        await CACHE.arelease(key)
        return True
