"""Read/write locks on string keys: in this process per key, across processes per slot.

Who else writes, and what orders them:

- **other tasks of this process** (threads, async tasks): every key has an in-process
  read/write lock, re-entrant for its holder; keys never wait for each other;
- **other processes** (of this machine, and with a lock server of every machine): a
  key's slot (one of `SLOTS`, by a hash of the key) is held by a process for all of its
  holders at once, first in the local lock store, then on the lock server. So two keys
  sharing a slot never wait for their own process, inside a Prefect transaction or not.

Every wait is bounded: past its timeout a lock fails loudly with
`AtomscaleConflictError`, naming what it waited for, instead of hanging a flow. An async
waiter sleeps with `asyncio.sleep` and reaches the lock server from a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from prefect_atomscale._exceptions import AtomscaleConflictError, AtomscaleLockLostError

__all__ = ["DEFAULT_LOCK_TIMEOUT", "SLOTS", "KeyLocks", "SlotStore", "lost", "slot_of"]

SLOTS = 1024
"""How many slots (lock files, leases, counters) the keys of one family are spread over."""

DEFAULT_LOCK_TIMEOUT = 600.0
"""Seconds a run waits for a lock before failing loudly; a write holds one for a round trip."""

_LOCAL_POLL = 0.002  # a lock is held for about one HTTP round trip
_REMOTE_POLL = 0.01  # a try costs a round trip to the lock server


def slot_of(key: str) -> int:
    """The slot (0 .. SLOTS-1) of a key: its lock file, lease and counter."""
    return zlib.crc32(key.encode()) % SLOTS


class SlotStore(Protocol):
    """Where a process holds slots: this machine's lock files, or the lock server."""

    remote: bool

    def try_take(self, index: int) -> bool: ...

    def fence(self, index: int) -> bool: ...

    def give_back(self, index: int) -> bool: ...


@dataclass
class _SlotHold:
    stores: list[SlotStore]
    holders: int = 1


@dataclass
class _KeyState:
    readers: int = 0
    writer: str | None = None  # the holder, for re-entry and for messages
    depth: int = 0
    thread: int | None = None


@dataclass
class _Waiter:
    key: str
    shared: bool
    holder: str
    what: str
    limit: float
    thread: int = field(default_factory=threading.get_ident)
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.limit


def _default_holder() -> str:
    # One holder per thread, and per asyncio task within a thread's loop.
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return f"{os.getpid()}:{threading.get_ident()}:{id(task) if task else 0}"


class KeyLocks:
    """Read/write locks on the keys of one family.

    Args:
        family: Names the family, for messages.
        stores: Gives the slot stores to take a slot in, in order (local first), read
            when a process takes a slot; None for an in-process-only family (one always
            taken under another that already orders the processes).
        where: Says where the locks live, for the timeout message.
        remote: Says whether taking a slot reaches a lock server now (for waits and
            async callers), without preparing the stores.
    """

    def __init__(
        self,
        family: str,
        stores: Callable[[], list[SlotStore]] | None,
        where: Callable[[], str] = lambda: "this process",
        remote: Callable[[], bool] = lambda: False,
    ) -> None:
        self.family = family
        self._stores = stores
        self._where = where
        self._remote = remote
        self._mutex = threading.Lock()
        self._keys: dict[str, _KeyState] = {}
        self._slots: dict[int, _SlotHold] = {}
        os.register_at_fork(after_in_child=self._reset_after_fork)

    def _reset_after_fork(self) -> None:
        self._mutex = threading.Lock()
        self._keys = {}
        self._slots = {}

    # --- the process's hold on a slot ------------------------------------------------

    def _take_slot(self, index: int) -> bool:
        # With the mutex held.
        hold = self._slots.get(index)
        if hold is not None:
            hold.holders += 1
            return True
        if self._stores is None:
            return True
        taken: list[SlotStore] = []
        for store in self._stores():
            if not store.try_take(index):
                for done in reversed(taken):
                    done.give_back(index)
                return False
            taken.append(store)
        self._slots[index] = _SlotHold(taken)
        return True

    def _give_slot(self, index: int) -> bool:
        """Leave the process's hold; False if a lease ran out while it was held."""
        with self._mutex:
            hold = self._slots.get(index)
            if hold is None:
                return True
            hold.holders -= 1
            if hold.holders:
                stores, last = hold.stores, False
            else:
                del self._slots[index]
                stores, last = hold.stores, True
        kept, failed = True, None
        for store in reversed(stores):
            try:
                if last:
                    kept = store.give_back(index) and kept
                elif store.remote:
                    kept = store.fence(index) and kept
            except Exception as exc:  # a lock server that is gone: still free the files
                failed = failed or exc
        if failed is not None:
            raise failed
        return kept

    def fence(self, key: str, what: str) -> None:
        """Check that this process still holds `key`'s slot everywhere; extend its leases.

        Raises:
            AtomscaleLockLostError: A lease ran out: another run may hold the slot now.
        """
        index = slot_of(key)
        with self._mutex:
            hold = self._slots.get(index)
            stores = hold.stores if hold is not None else []
        for store in stores:
            if store.remote and not store.fence(index):
                raise lost(what)

    def held_remotely(self, key: str) -> list[SlotStore]:
        """The lock-server stores this process holds `key`'s slot in (none without one)."""
        with self._mutex:
            hold = self._slots.get(slot_of(key))
            return [store for store in hold.stores if store.remote] if hold is not None else []

    def remote(self) -> bool:
        """Whether taking a slot reaches the lock server (so an async caller uses a thread)."""
        return self._stores is not None and self._remote()

    # --- keys ------------------------------------------------------------------------

    def _try(self, waiter: _Waiter) -> bool:
        with self._mutex:
            state = self._keys.setdefault(waiter.key, _KeyState())
            if state.writer == waiter.holder:  # re-entry by the same holder
                state.depth += 1
                return True
            if state.writer is not None or (not waiter.shared and state.readers):
                return False
            if state.readers == 0 and not self._take_slot(slot_of(waiter.key)):
                if not state.readers and state.writer is None:
                    del self._keys[waiter.key]
                return False
            if waiter.shared:
                state.readers += 1
            else:
                state.writer, state.depth, state.thread = waiter.holder, 1, waiter.thread
            return True

    def _release(self, key: str, shared: bool) -> bool:
        with self._mutex:
            state = self._keys[key]
            if shared:
                state.readers -= 1
            else:
                state.depth -= 1
                if state.depth:
                    return True
                state.writer = state.thread = None
            last = not (state.readers or state.writer is not None)
            if last:
                del self._keys[key]
        if not last:
            # Other holders of this key in the process keep the slot; this one still
            # checks (and extends) the lease, as every holder's release does (L7).
            return self._fence_slot(slot_of(key))
        return self._give_slot(slot_of(key))

    def _fence_slot(self, index: int) -> bool:
        with self._mutex:
            hold = self._slots.get(index)
            stores = hold.stores if hold is not None else []
        return all(store.fence(index) for store in stores if store.remote)

    def _poll(self) -> float:
        return _REMOTE_POLL if self.remote() else _LOCAL_POLL

    def _timed_out(self, waiter: _Waiter) -> AtomscaleConflictError:
        return AtomscaleConflictError(
            f"Waited {waiter.limit:g} s for the lock of {waiter.what}: another run holds it "
            f"({self._where()}). If no other run is active, a process is stuck (end it), or "
            "a lease on the lock server has yet to run out; run again then. Nothing was "
            "written."
        )

    def _waiter(
        self, key: str, shared: bool, holder: str | None, what: str, timeout: float | None
    ) -> _Waiter:
        limit = DEFAULT_LOCK_TIMEOUT if timeout is None else timeout
        return _Waiter(key, shared, holder or _default_holder(), what or key, limit)

    def acquire(
        self,
        key: str,
        *,
        shared: bool = False,
        holder: str | None = None,
        what: str = "",
        timeout: float | None = None,
    ) -> str:
        """Take the lock on `key`; return the holder to release it with.

        Raises:
            AtomscaleConflictError: The timeout (`DEFAULT_LOCK_TIMEOUT`) passed first.
        """
        waiter = self._waiter(key, shared, holder, what, timeout)
        while not self._try(waiter):
            if time.monotonic() >= waiter.deadline:
                raise self._timed_out(waiter)
            time.sleep(self._poll())
        return waiter.holder

    async def aacquire(
        self,
        key: str,
        *,
        shared: bool = False,
        holder: str | None = None,
        what: str = "",
        timeout: float | None = None,
    ) -> str:
        """Async `acquire`: never blocks the event loop."""
        waiter = self._waiter(key, shared, holder, what, timeout)
        remote, poll = self.remote(), self._poll()
        while not (await asyncio.to_thread(self._try, waiter) if remote else self._try(waiter)):
            if time.monotonic() >= waiter.deadline:
                raise self._timed_out(waiter)
            await asyncio.sleep(poll)
        return waiter.holder

    def release(self, key: str, *, shared: bool = False) -> bool:
        """Release a lock; False if a lease ran out while it was held (see `fence`)."""
        return self._release(key, shared)

    async def arelease(self, key: str, *, shared: bool = False) -> bool:
        """Async `release`."""
        if self.remote():
            return await asyncio.to_thread(self._release, key, shared)
        return self._release(key, shared)

    def writer(self, key: str) -> tuple[str, int | None] | None:
        """The holder of `key`'s exclusive lock in this process and its thread, if any."""
        with self._mutex:
            state = self._keys.get(key)
            if state is None or state.writer is None:
                return None
            return state.writer, state.thread


def lost(what: str) -> AtomscaleLockLostError:
    """The error for a lease that ran out while `what` was held."""
    return AtomscaleLockLostError(
        f"The lock of {what} on the lock server ran out before this run was done with it "
        "(the run was paused, or cut off from the server, for longer than the lease): "
        "another run may have written meanwhile. Nothing more was written; the task lists "
        "the service again on its retry."
    )
