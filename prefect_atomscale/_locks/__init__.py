"""The one lock layer: which store orders the writers, chosen in one place.

Every lock is taken at two levels (see `_keys`): in this process, then for the process
in the stores of the current settings (`_settings`): this machine's lock files always
(`_files`), and the lock server's leases too when `PREFECT_ATOMSCALE_LOCK_URL` is set
(`_redis`). Version counters, cache epochs and learned values live in the lock server
when there is one, else in this machine's files. Before a process takes a slot, the
configuration guard (`_guard`) checks that no other live process of this machine writes
with other settings. The write sections built on it are in `_protocol`; the rules they
follow are in docs/design/write-protocol.md.

The families, always taken in this order (so no two runs wait for each other in a
circle): `cache` (Prefect's cache transactions, see `_prefect`), `identity` (a target
material being created), `material` (a target material's stack), `position` (one layer
position, in this process only, always under `material`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from prefect_atomscale._locks._files import OS_FILE_LOCKS, FileCounters, FileSlots, FileValues
from prefect_atomscale._locks._guard import ConfigurationGuard
from prefect_atomscale._locks._keys import DEFAULT_LOCK_TIMEOUT, KeyLocks, SlotStore, lost, slot_of
from prefect_atomscale._locks._settings import (
    DEFAULT_LEASE_SECONDS,
    LEASE_ENV,
    LOCK_DIR_ENV,
    LOCK_URL_ENV,
    LockSettings,
    redacted,
)

if TYPE_CHECKING:
    from prefect_atomscale._locks._redis import RedisSlots

__all__ = [
    "CACHE",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_LOCK_TIMEOUT",
    "IDENTITY",
    "LEASE_ENV",
    "LOCK_DIR_ENV",
    "LOCK_URL_ENV",
    "MATERIAL",
    "POSITION",
    "KeyLocks",
    "LockDomain",
    "LockSettings",
    "domain",
    "lost",
    "redacted",
    "slot_of",
]

T = TypeVar("T")


class LockDomain:
    """The stores of one lock configuration, made on first use.

    Args:
        settings: Where the locks live.
    """

    def __init__(self, settings: LockSettings) -> None:
        self.settings = settings
        self.remote = settings.url is not None
        directory = settings.directory
        self._slots: dict[str, list[SlotStore]] = {}
        self._mutex = threading.Lock()
        if settings.url is None:
            self.versions: Any = FileCounters(directory / "versions")
            self.epochs: Any = FileCounters(directory / "epochs", locked_bumps=True)
            self.values: Any = FileValues(directory / "values")
        else:
            from prefect_atomscale._locks._redis import (
                RedisCounters,
                RedisServer,
                RedisValues,
            )

            self._server = RedisServer(settings.url)
            self.versions = RedisCounters(self._server, "versions")
            self.epochs = RedisCounters(self._server, "epochs")
            # Values on the server for every machine, and in this machine's files too:
            # a server that restarted without its data still has this machine's copy.
            self.values = _ServerAndMachineValues(
                RedisValues(self._server), FileValues(directory / "values")
            )

    def slot_stores(self, family: str) -> list[SlotStore]:
        """Where a process takes a slot of `family`: local files, then the lock server.

        Without OS file locks (no fcntl, no msvcrt) the local files are left out when a
        lock server orders every process; without one, taking a file fails loudly.
        """
        if OS_FILE_LOCKS:
            _GUARD.check(self.settings)
        with self._mutex:
            stores = self._slots.get(family)
            if stores is None:
                local = OS_FILE_LOCKS or self.settings.url is None
                stores = [FileSlots(self.settings.directory / family)] if local else []
                if self.settings.url is not None:
                    from prefect_atomscale._locks._redis import RedisSlots

                    versions = self.versions if family == _VERSIONED else None
                    lease = self.settings.lease
                    stores.append(RedisSlots(self._server, family, lease, versions))
                self._slots[family] = stores
            return stores

    # --- the write protocol's version of a held slot (steps L2 and L5) ----------------
    # With a lock server the holder keeps it (`_redis`), so none of these needs a round
    # trip of its own but a fencing check that is not fresh.

    def read_version(self, locks: KeyLocks, key: str) -> int:
        """Protocol step L2: the version of `key`'s slot, which this process holds."""
        index = slot_of(key)
        remote = locks.held_remotely(key)
        if remote:
            return _versioned(remote[0]).version(index)
        return int(self.versions.read(index))

    def begin_write(self, locks: KeyLocks, key: str, what: str) -> int:
        """Protocol step L5: fence `key`'s slot, then bump its version; the new version.

        Raises:
            AtomscaleLockLostError: The lease ran out; nothing was bumped.
        """
        index = slot_of(key)
        remote = locks.held_remotely(key)
        if not remote:
            return int(self.versions.bump(index))
        held = _versioned(remote[0])
        if not held.fence(index):
            raise lost(what)
        return held.bump(index)

    async def abegin_write(self, locks: KeyLocks, key: str, what: str) -> int:
        """Async `begin_write`: a fencing check that asks the server runs in a thread."""
        remote = locks.held_remotely(key)
        if not remote:
            return int(self.versions.bump(slot_of(key)))
        index, held = slot_of(key), _versioned(remote[0])
        fresh = held.fresh(index)
        if not (held.fence(index) if fresh else await asyncio.to_thread(held.fence, index)):
            raise lost(what)
        return held.bump(index)

    def end_write(self, locks: KeyLocks, key: str) -> int:
        """Protocol step L5, after the write: bump the version of `key`'s slot again."""
        index = slot_of(key)
        remote = locks.held_remotely(key)
        if remote:
            return _versioned(remote[0]).bump(index)
        return int(self.versions.bump(index))

    def run(self, action: Callable[..., T], *args: Any) -> T:
        """Run a store call."""
        return action(*args)

    async def arun(self, action: Callable[..., T], *args: Any) -> T:
        """Run a store call from async code: in a worker thread when it reaches the server."""
        if self.remote:
            return await asyncio.to_thread(action, *args)
        return action(*args)


class _ServerAndMachineValues:
    """Values written to the lock server and to this machine; read from either, server first."""

    def __init__(self, server: Any, machine: FileValues) -> None:
        self._server, self._machine = server, machine

    def get(self, name: str) -> str | None:
        value: str | None = self._server.get(name)
        return value if value is not None else self._machine.get(name)

    def set(self, name: str, value: str) -> None:
        self._server.set(name, value)
        self._machine.set(name, value)

    def add(self, name: str, member: str) -> None:
        self._server.add(name, member)
        self._machine.add(name, member)

    def has(self, name: str, member: str) -> bool:
        return bool(self._server.has(name, member)) or self._machine.has(name, member)


_GUARD = ConfigurationGuard()

_VERSIONED = "material"
"""The family whose slots carry the write protocol's versions (`MATERIAL`)."""


def _versioned(store: SlotStore) -> RedisSlots:
    # Only the lock server's slots of the versioned family are held remotely with one.
    return cast("RedisSlots", store)


@functools.lru_cache(maxsize=8)
def _domain(settings: LockSettings) -> LockDomain:
    return LockDomain(settings)


def domain() -> LockDomain:
    """The lock domain of the current settings (the environment, read now)."""
    return _domain(LockSettings.current())


def _family(name: str) -> KeyLocks:
    return KeyLocks(
        name,
        lambda: domain().slot_stores(name),
        lambda: domain().settings.describe(),
        lambda: domain().remote,
    )


CACHE = _family("cache")
"""Prefect's cache transactions of `create_target_material`."""

IDENTITY = _family("identity")
"""A target material being created, by name, substrate and metadata."""

MATERIAL = _family("material")
"""A target material's stack: shared by one-layer writes, exclusive for a stack."""

POSITION = KeyLocks("position", None)
"""One layer position; in this process only, always taken under `MATERIAL`."""
