"""A Prefect lock manager whose locks die with the process that holds them.

The create tasks run their cache transactions at SERIALIZABLE isolation, so two runs of
the same request (two threads, or two flow processes started at once) take turns: the
second finds the first one's cached record instead of writing again. Prefect's own
`FileSystemLockManager` would do across processes, but a lock taken by a process that is
then killed (SIGKILL, OOM, a power cut) stays held for ever on the path Prefect's
transactions use, and the re-run that should repair the stack would wait on it. This
manager holds an advisory `flock` on a lock file instead: the kernel releases it when
the holder's process dies, whatever the way.

Keys share a fixed set of lock files (a key's file is chosen by its hash), so a
campaign of 100,000 layers leaves 1,024 small files behind, not 100,000, and taking a
lock costs three system calls (open, flock, close). Two keys that share a file take
turns although they need not: a short wait, about one HTTP round trip, for 1 pair in
1,024.

POSIX only; elsewhere `lock_manager()` falls back to Prefect's in-process
`MemoryLockManager`, which still serialises runs within one process.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import anyio
from prefect.locking.memory import MemoryLockManager
from prefect.locking.protocol import LockManager
from prefect.settings import PREFECT_HOME

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FlockLockManager", "lock_manager"]

# How often a waiter looks again; short, since a create task holds its lock for about
# one HTTP round trip.
_POLL_SECONDS = 0.005

# How many lock files keys are spread over; see the module docstring.
LOCK_FILES = 1024


@dataclass
class _Held:
    fd: int
    holder: str


class FlockLockManager(LockManager):
    """Locks as `flock`s on files in a directory; released by the kernel if the holder dies.

    Lock files are left in place after release (removing them would race with waiters
    that already opened them); they are empty, at most `LOCK_FILES` of them.

    Args:
        directory: Where the lock files live. Defaults to `$PREFECT_HOME/locks/atomscale`,
            read when the first lock is taken, so every process sharing a Prefect home
            shares the locks.

    Example:
        ```python
        from prefect_atomscale.locking import FlockLockManager

        locks = FlockLockManager()
        assert locks.acquire_lock("key", holder="me")
        locks.release_lock("key", holder="me")
        ```
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._given_directory = directory
        self._directory: Path | None = None  # created on first use
        self._held: dict[str, _Held] = {}
        self._mutex = threading.Lock()

    def __reduce__(self) -> tuple[type[FlockLockManager], tuple[Path | None]]:
        # Tasks carry their cache policy and so this manager to Dask workers: a copy
        # there starts holding nothing, since a flock belongs to the process that took it.
        return (type(self), (self._given_directory,))

    def _path(self, key: str) -> Path:
        directory = self._directory
        if directory is None:
            directory = self._given_directory
            if directory is None:
                directory = Path(PREFECT_HOME.value()).expanduser() / "locks" / "atomscale"
            directory.mkdir(parents=True, exist_ok=True)
            self._directory = directory
        return directory / f"{zlib.crc32(key.encode()) % LOCK_FILES:04d}.lock"

    def _open(self, key: str) -> int:
        path = self._path(key)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the directory was removed since first use
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def _try_lock(self, fd: int, mode: int) -> bool:
        assert fcntl is not None
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _take(self, key: str, holder: str, fd: int) -> bool:
        assert fcntl is not None
        if not self._try_lock(fd, fcntl.LOCK_EX):
            return False
        with self._mutex:
            self._held[key] = _Held(fd, holder)
        return True

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Take the lock on `key`, waiting up to `acquire_timeout` seconds (None: forever).

        `hold_timeout` is ignored: the lock lasts until released or the process ends.

        Returns:
            True once held; False if the timeout passed first.

        Example:
            ```python
            from prefect_atomscale.locking import FlockLockManager

            print(FlockLockManager().acquire_lock("k", holder="me", acquire_timeout=1))
            ```
        """
        if self.is_lock_holder(key, holder):
            return True
        fd = self._open(key)
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while not self._take(key, holder, fd):
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(_POLL_SECONDS)
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Async `acquire_lock`: waits without blocking the event loop.

        Returns:
            True once held; False if the timeout passed first.

        Example:
            ```python
            import asyncio
            from prefect_atomscale.locking import FlockLockManager

            print(asyncio.run(FlockLockManager().aacquire_lock("k", holder="me")))
            ```
        """
        if self.is_lock_holder(key, holder):
            return True
        fd = self._open(key)
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while not self._take(key, holder, fd):
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                return False
            await anyio.sleep(_POLL_SECONDS)
        return True

    def release_lock(self, key: str, holder: str) -> None:
        """Release the lock `holder` holds on `key`.

        Raises:
            ValueError: If `holder` does not hold it (as Prefect's managers do).

        Example:
            ```python
            from prefect_atomscale.locking import FlockLockManager

            locks = FlockLockManager()
            locks.acquire_lock("k", holder="me")
            locks.release_lock("k", holder="me")
            ```
        """
        with self._mutex:
            held = self._held.get(key)
            if held is None or held.holder != holder:
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")
            del self._held[key]
        # Closing the descriptor drops the flock.
        os.close(held.fd)

    def is_locked(self, key: str) -> bool:
        """Tell whether anyone, in this process or another, holds the lock on `key`.

        Example:
            ```python
            from prefect_atomscale.locking import FlockLockManager

            print(FlockLockManager().is_locked("nobody-holds-this"))  # False
            ```
        """
        assert fcntl is not None
        if key in self._held:
            return True
        path = self._path(key)
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            return not self._try_lock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)  # also drops the probe's shared lock

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """Tell whether `holder` holds the lock on `key` in this process.

        Example:
            ```python
            from prefect_atomscale.locking import FlockLockManager

            print(FlockLockManager().is_lock_holder("k", "me"))  # False
            ```
        """
        held = self._held.get(key)
        return held is not None and held.holder == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until nobody holds `key`.

        Returns:
            True once free; False if the timeout passed first.

        Example:
            ```python
            from prefect_atomscale.locking import FlockLockManager

            print(FlockLockManager().wait_for_lock("k", timeout=1))  # True
            ```
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async `wait_for_lock`.

        Returns:
            True once free; False if the timeout passed first.

        Example:
            ```python
            import asyncio
            from prefect_atomscale.locking import FlockLockManager

            print(asyncio.run(FlockLockManager().await_for_lock("k", timeout=1)))
            ```
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await anyio.sleep(_POLL_SECONDS)
        return True


def lock_manager() -> LockManager:
    """Return the lock manager the create tasks use on this platform.

    Returns:
        A `FlockLockManager` on POSIX, else Prefect's in-process `MemoryLockManager`.

    Example:
        ```python
        from prefect_atomscale.locking import lock_manager

        print(type(lock_manager()).__name__)
        ```
    """
    return FlockLockManager() if fcntl is not None else MemoryLockManager()
