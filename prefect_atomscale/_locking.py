"""Locks that order the writes of one machine: keyed, re-entrant per process, and bounded.

Who else writes, and what this module does about each:

- **other tasks of this process** (threads, async tasks): every key has an in-process
  read/write lock; runs of one key take turns, runs of different keys never wait for
  each other;
- **other processes on this machine** sharing one `PREFECT_HOME` (a second flow run, a
  local Dask worker, a process worker): keys are spread over a fixed set of files
  (`LOCK_FILES`) and a process holds an advisory `flock` on a file while any of its
  keys on that file is held. The kernel drops it when the process dies, however it dies
  (Prefect's own `FileSystemLockManager` would keep a killed holder's lock for ever).
  Because the flock is the process's, not the key's, two keys that share a file never
  wait for their own process, inside a Prefect transaction or not;
- **other machines**: ordered only when `PREFECT_ATOMSCALE_LOCK_URL` names a Redis
  server: then the process-level holds and the counters live there (`_shared_locks`).

Every wait is bounded: past its timeout a lock fails loudly with
`AtomscaleConflictError`, naming what it waited for, instead of hanging a flow.

`KeyLocks` orders the create tasks' own look-then-write sections. `Generations` is a
small shared table, one counter per lock file, that a writer bumps before and after it
writes: a process that finds a counter changed knows another process wrote there, and
reads the service again (see `_views`). `FlockLockManager` is the same locking behind
Prefect's cache transactions, for `create_target_material`.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prefect.locking.protocol import LockManager
from prefect.settings import PREFECT_HOME

from prefect_atomscale._exceptions import AtomscaleConflictError
from prefect_atomscale._shared_locks import (
    LeasedSlots,
    SharedCounters,
    lease_seconds,
    lock_url,
    redacted,
)

try:
    import fcntl
except ImportError:  # Windows: in-process ordering only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "LOCK_FILES",
    "CacheLockManager",
    "FlockLockManager",
    "Generations",
    "KeyLocks",
    "lock_directory",
    "refuse_self_wait",
]

LOCK_FILES = 1024
"""How many files the keys of one lock family are spread over."""

# Counters in the shared generation table: fixed, whatever LOCK_FILES says, since every
# process maps the same file.
_SLOTS = 1024

DEFAULT_LOCK_TIMEOUT = 600.0
"""Seconds a run waits for a lock before failing loudly; a write holds one for a round trip."""

# How often a waiter looks again: short, a lock is held for about one HTTP round trip.
_POLL_SECONDS = 0.002


def lock_directory() -> Path:
    """Where the lock files live: `$PREFECT_HOME/locks/atomscale`, read at first use."""
    return Path(PREFECT_HOME.value()).expanduser() / "locks" / "atomscale"


def file_of(key: str) -> int:
    """The file (0 .. LOCK_FILES-1) a key's lock lives in."""
    return zlib.crc32(key.encode()) % LOCK_FILES


class _ProcessFiles:
    """Process-wide flocks on the files of one family, shared by the process's holders."""

    poll_seconds = _POLL_SECONDS

    # Descriptors kept open between holds, so a lock costs two flock calls, not an open
    # and a close as well (inside a flow every system call lets Prefect's threads in).
    _KEEP_OPEN = 64

    def __init__(self, family: str) -> None:
        self._family = family
        self._mutex = threading.Lock()
        self._held: dict[int, tuple[int, int]] = {}  # file -> (fd, holders in this process)
        self._idle: OrderedDict[int, int] = OrderedDict()  # file -> open fd, not locked
        self._directory: Path | None = None

    def reset_after_fork(self) -> None:
        # A forked child inherits the descriptors but none of the holders.
        self._mutex = threading.Lock()
        self._held = {}
        self._idle = OrderedDict()

    def _open(self, index: int) -> int:
        idle = self._idle.pop(index, None)
        if idle is not None:
            return idle
        if self._directory is None:
            self._directory = lock_directory() / self._family
        path = self._directory / f"{index:04d}.lock"
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # first use, or the directory was removed since
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def _park(self, index: int, fd: int) -> None:
        """Keep an unlocked descriptor for the next hold, closing the oldest past the limit."""
        self._idle[index] = fd
        while len(self._idle) > self._KEEP_OPEN:
            os.close(self._idle.popitem(last=False)[1])

    def try_take(self, index: int) -> bool:
        """Join this process's hold of file `index`, or take it if no other process has it."""
        with self._mutex:
            held = self._held.get(index)
            if held is not None:
                self._held[index] = (held[0], held[1] + 1)
                return True
            fd = self._open(index)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self._park(index, fd)
                    return False
            self._held[index] = (fd, 1)
            return True

    def give_back(self, index: int) -> None:
        """Leave this process's hold of file `index`; the last one out drops the flock."""
        with self._mutex:
            fd, holders = self._held[index]
            if holders > 1:
                self._held[index] = (fd, holders - 1)
                return
            del self._held[index]
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._park(index, fd)

    def keep_alive(self, index: int) -> None:
        """Nothing to do: a flock lasts as long as its process."""

    def holds(self, index: int) -> bool:
        """Whether this process holds file `index` now."""
        with self._mutex:
            return index in self._held


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
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.limit


class KeyLocks:
    """Read/write locks on string keys, ordered in-process per key, across processes per file.

    Args:
        family: Names the lock files' folder, so that two families never share a file
            (a run holds at most one lock of each family, always in the same order, so
            no two runs can wait for each other in a circle).
        across_processes: Also order the processes of this machine (flocks); False for
            a family always taken under another one that already does.
    """

    def __init__(self, family: str, *, across_processes: bool = True) -> None:
        self.family = family
        self._across_processes = across_processes
        self._slots: dict[str | None, _ProcessFiles | LeasedSlots] = {}  # by lock URL
        self._mutex = threading.Lock()
        self._keys: dict[str, _KeyState] = {}
        os.register_at_fork(after_in_child=self._reset_after_fork)

    def _reset_after_fork(self) -> None:
        self._mutex = threading.Lock()
        self._keys = {}
        for slots in self._slots.values():
            slots.reset_after_fork()

    @property
    def _files(self) -> _ProcessFiles | LeasedSlots | None:
        """What orders the processes: this machine's flocks, or leases on the lock server."""
        if not self._across_processes:
            return None
        url = lock_url()
        slots: _ProcessFiles | LeasedSlots | None = self._slots.get(url)
        if slots is None:
            slots = (
                LeasedSlots(self.family, url, lease_seconds())
                if url
                else _ProcessFiles(self.family)
            )
            self._slots[url] = slots
        return slots

    def _try(self, waiter: _Waiter) -> bool:
        with self._mutex:
            state = self._keys.setdefault(waiter.key, _KeyState())
            if state.writer == waiter.holder:  # re-entry by the same holder
                state.depth += 1
                return True
            if state.writer is not None or (not waiter.shared and state.readers):
                return False
            first = state.readers == 0
            files = self._files
            if first and files and not files.try_take(file_of(waiter.key)):
                return False
            if not first and files:
                # Joining readers keep a busy slot's lease from running out under them.
                files.keep_alive(file_of(waiter.key))
            if waiter.shared:
                state.readers += 1
            else:
                state.writer, state.depth = waiter.holder, 1
                state.thread = threading.get_ident()
            return True

    def _release(self, key: str, shared: bool) -> None:
        with self._mutex:
            state = self._keys[key]
            if shared:
                state.readers -= 1
            else:
                state.depth -= 1
                if state.depth:
                    return
                state.writer = state.thread = None
            if state.readers or state.writer is not None:
                return
            del self._keys[key]
            files = self._files
            if files is not None:
                files.give_back(file_of(key))

    def _poll_seconds(self) -> float:
        files = self._files
        return files.poll_seconds if files is not None else _POLL_SECONDS

    def _timed_out(self, waiter: _Waiter) -> AtomscaleConflictError:
        url = lock_url() if self._across_processes else None
        if url:
            where = f"another run holds it (lock server {redacted(url)}). If no other run is "
            where += f"active, its lease ends within {lease_seconds():g} s; run again then."
        else:
            where = (
                f"another run on this machine holds it (lock files in "
                f"{lock_directory() / self.family}). If no other run is active, a process "
                "is stuck: end it and run again."
            )
        return AtomscaleConflictError(
            f"Waited {waiter.limit:g} s for the lock of {waiter.what}: {where} Nothing was written."
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
            time.sleep(self._poll_seconds())
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
        """Async `acquire`: waits without blocking the event loop."""
        waiter = self._waiter(key, shared, holder, what, timeout)
        while not self._try(waiter):
            if time.monotonic() >= waiter.deadline:
                raise self._timed_out(waiter)
            await asyncio.sleep(self._poll_seconds())
        return waiter.holder

    def release(self, key: str, *, shared: bool = False) -> None:
        """Release a lock taken with `acquire` or `aacquire`."""
        self._release(key, shared)

    @contextmanager
    def hold(self, key: str, *, shared: bool = False, what: str = "") -> Iterator[None]:
        """Hold the lock on `key` for the block."""
        self.acquire(key, shared=shared, what=what)
        try:
            yield
        finally:
            self._release(key, shared)

    @asynccontextmanager
    async def ahold(self, key: str, *, shared: bool = False, what: str = "") -> AsyncIterator[None]:
        """Async `hold`."""
        await self.aacquire(key, shared=shared, what=what)
        try:
            yield
        finally:
            self._release(key, shared)

    def writer(self, key: str) -> tuple[str, int | None] | None:
        """The holder of `key`'s exclusive lock in this process and its thread, if any."""
        with self._mutex:
            state = self._keys.get(key)
            if state is None or state.writer is None:
                return None
            return state.writer, state.thread


def _default_holder() -> str:
    # One holder per thread, and per asyncio task within a thread's loop.
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return f"{os.getpid()}:{threading.get_ident()}:{id(task) if task else 0}"


class Generations:
    """One counter per lock file, shared by every process on this machine (an mmap'd file).

    A writer bumps the counter of its target material's file, while it holds that file,
    before and after it writes. A process that remembered the counter and finds it
    changed knows that another process wrote there since, even one that died before it
    could say so.
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._map: mmap.mmap | None = None
        self._mutex = threading.Lock()
        self._shared: dict[str, SharedCounters] = {}  # by lock URL
        os.register_at_fork(after_in_child=self._reset_after_fork)

    def _on_server(self) -> SharedCounters | None:
        """The lock server's counters when one is configured: every machine sees them."""
        url = lock_url()
        if url is None:
            return None
        counters = self._shared.get(url)
        if counters is None:
            counters = self._shared[url] = SharedCounters(self.family, url)
        return counters

    def _reset_after_fork(self) -> None:
        self._mutex = threading.Lock()

    def _table(self) -> mmap.mmap:
        if self._map is None:
            path = lock_directory() / self.family / "generations"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < 8 * _SLOTS:
                    os.ftruncate(fd, 8 * _SLOTS)
                self._map = mmap.mmap(fd, 8 * _SLOTS)
            finally:
                os.close(fd)
        return self._map

    def read(self, index: int) -> int:
        """The counter of file `index`."""
        shared = self._on_server()
        if shared is not None:
            return shared.read(index)
        at = 8 * (index % _SLOTS)
        with self._mutex:
            return int.from_bytes(self._table()[at : at + 8], "little")

    def bump(self, index: int) -> int:
        """Add one to the counter of file `index` (hold that file first); return it."""
        shared = self._on_server()
        if shared is not None:
            return shared.bump(index)
        at = 8 * (index % _SLOTS)
        with self._mutex:
            table = self._table()
            value = int.from_bytes(table[at : at + 8], "little") + 1
            table[at : at + 8] = value.to_bytes(8, "little")
            return value


def refuse_self_wait(held: tuple[str, int | None] | None, holder: str) -> None:
    """Fail at once if this thread already holds the lock for another holder.

    Args:
        held: Who holds the key in this process, and on which thread, if anyone.
        holder: Who asks for it now.

    Raises:
        AtomscaleConflictError: The same request twice in one transaction: the wait
            could never end.
    """
    if held is not None and held[0] != holder and held[1] == threading.get_ident():
        raise AtomscaleConflictError(
            "The same request runs twice inside one Prefect transaction: the first "
            "run's cache lock is held until the transaction commits, so the second "
            "would wait for ever. Call it once and reuse its result."
        )


class FlockLockManager(LockManager):
    """Prefect's `LockManager` on `KeyLocks`: for the cache transactions of target materials.

    Two runs of one request take turns, in one process or across the processes of one
    machine, and the second finds the first one's record in the cache instead of
    creating a second target material. A run that asks for a lock its own thread
    already holds for another transaction (the same target material twice inside one
    `with transaction():`) fails at once with `AtomscaleConflictError`, since waiting
    could never end.
    """

    def __init__(self, family: str = "cache") -> None:
        self._family = family
        self._locks = _family(family)

    def __reduce__(self) -> tuple[type[FlockLockManager], tuple[str]]:
        # Tasks carry their cache policy to Dask workers: a copy there holds nothing.
        return (type(self), (self._family,))

    def _refuse_self_wait(self, key: str, holder: str) -> None:
        refuse_self_wait(self._locks.writer(key), holder)

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
        self._refuse_self_wait(key, holder)
        self._locks.acquire(key, holder=holder, what="a cached request", timeout=acquire_timeout)
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
        await self._locks.aacquire(
            key, holder=holder, what="a cached request", timeout=acquire_timeout
        )
        return True

    def release_lock(self, key: str, holder: str) -> None:
        """Release the lock `holder` holds on `key`.

        Raises:
            ValueError: If `holder` does not hold it (as Prefect's managers do).
        """
        if not self.is_lock_holder(key, holder):
            raise ValueError(f"No lock held by {holder} for transaction with key {key}")
        self._locks.release(key)

    def is_locked(self, key: str) -> bool:
        """Whether a run of this process holds `key` (other processes: see `wait_for_lock`)."""
        return self._locks.writer(key) is not None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether `holder` holds `key`."""
        held = self._locks.writer(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until no run of this machine holds `key`.

        Returns:
            True once free; False if the timeout passed first.
        """
        try:
            self._locks.acquire(key, what="a cached request", timeout=timeout)
        except AtomscaleConflictError:
            return False
        self._locks.release(key)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async `wait_for_lock`.

        Returns:
            True once free; False if the timeout passed first.
        """
        try:
            await self._locks.aacquire(key, what="a cached request", timeout=timeout)
        except AtomscaleConflictError:
            return False
        self._locks.release(key)
        return True


_FAMILIES: dict[str, KeyLocks] = {}
_FAMILIES_MUTEX = threading.Lock()


def _family(name: str) -> KeyLocks:
    """The one `KeyLocks` of a family in this process: its holders must see each other."""
    with _FAMILIES_MUTEX:
        if name not in _FAMILIES:
            _FAMILIES[name] = KeyLocks(name)
        return _FAMILIES[name]


class CacheLockManager(LockManager):
    """The lock manager of the cache transactions: this machine's, or every machine's.

    Decided at each call from `PREFECT_ATOMSCALE_LOCK_URL`, in the process that runs
    the task (a Dask worker reads its own environment): unset, `FlockLockManager`;
    set, prefect-redis's `RedisLockManager` on that server, with a lease.
    """

    def __reduce__(self) -> tuple[type[CacheLockManager], tuple[()]]:
        return (type(self), ())

    def _delegate(self) -> LockManager:
        url = lock_url()
        if url is None:
            return _local_cache_manager()
        return _redis_cache_manager(url, lease_seconds())

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Take the lock on `key` for `holder`.

        Returns:
            True once held.
        """
        return self._delegate().acquire_lock(key, holder, acquire_timeout, hold_timeout)

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
        return await self._delegate().aacquire_lock(key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        """Release the lock `holder` holds on `key`."""
        self._delegate().release_lock(key, holder)

    def is_locked(self, key: str) -> bool:
        """Whether `key` is locked."""
        return self._delegate().is_locked(key)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Whether `holder` holds `key`."""
        return self._delegate().is_lock_holder(key, holder)

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until nobody holds `key`.

        Returns:
            True once free; False if the timeout passed first.
        """
        return self._delegate().wait_for_lock(key, timeout)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async `wait_for_lock`.

        Returns:
            True once free; False if the timeout passed first.
        """
        return await self._delegate().await_for_lock(key, timeout)


_LOCAL_CACHE_MANAGER: FlockLockManager | None = None
_REDIS_CACHE_MANAGERS: dict[tuple[str, float], LockManager] = {}


def _local_cache_manager() -> FlockLockManager:
    global _LOCAL_CACHE_MANAGER
    if _LOCAL_CACHE_MANAGER is None:
        _LOCAL_CACHE_MANAGER = FlockLockManager()
    return _LOCAL_CACHE_MANAGER


def _redis_cache_manager(url: str, lease: float) -> LockManager:
    # One per server and process: it remembers which run of this process holds what.
    with _FAMILIES_MUTEX:
        manager = _REDIS_CACHE_MANAGERS.get((url, lease))
        if manager is None:
            from prefect_atomscale._redis_cache_lock import LeasedRedisLockManager

            manager = LeasedRedisLockManager(url, lease, DEFAULT_LOCK_TIMEOUT)
            _REDIS_CACHE_MANAGERS[(url, lease)] = manager
        return manager
