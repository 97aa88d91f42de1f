"""This machine's lock store: file locks, a shared table of counters, and small values.

Who else uses it: every process of this machine, whatever its `PREFECT_HOME`, since it
lives in one machine-wide directory (`LockSettings.directory`).

- `FileSlots`: a process's holds on the 1,024 lock files of a family: `flock` called
  directly on POSIX (a take is one `open` and one `flock`, a few microseconds, where
  `filelock`'s bookkeeping cost about 0.3 ms a layer), `filelock` elsewhere
  (`msvcrt.locking` on Windows); the OS releases either when the process dies, however
  it dies;
- `FileCounters`: a table of 1,024 counters in one memory-mapped file, whose first
  bytes are a random *incarnation*, made with the file: a table deleted and made again
  (a temporary-file cleaner, a new lock directory) is a new incarnation, so cache
  epochs made from the old one never match again;
- `FileValues`: small named values (the user ids learned for keys), one file each.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
import uuid
from pathlib import Path

from filelock import FileLock, SoftFileLock, Timeout

from prefect_atomscale._exceptions import AtomscaleConfigurationError
from prefect_atomscale._locks._keys import SLOTS

try:
    import fcntl
except ImportError:  # Windows: filelock's msvcrt locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["OS_FILE_LOCKS", "FileCounters", "FileSlots", "FileValues"]

OS_FILE_LOCKS = not issubclass(FileLock, SoftFileLock)
"""Whether this Python has OS file locks (fcntl or msvcrt), which die with their process."""

_HEADER = 16  # the incarnation's bytes, then 8 bytes per counter


def _directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class FileSlots:
    """A process's holds on the lock files of one family; the caller counts its holders.

    Args:
        directory: The family's folder.
    """

    remote = False

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._prefix = os.fspath(directory) + os.sep
        self._locks: dict[int, FileLock] = {}
        # Open descriptors of the files held with `flock`, by slot (POSIX).
        self._held: dict[int, int] = {}
        self._native = fcntl is not None
        self._mutex = threading.Lock()
        os.register_at_fork(after_in_child=self._reset_after_fork)

    def _reset_after_fork(self) -> None:
        # A forked child holds none of its parent's locks. Closing its copies of the
        # parent's descriptors leaves the parent's locks held (an `flock` ends with an
        # explicit unlock or with the last descriptor), and a killed parent's locks
        # are then not kept alive by its children.
        for fd in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held = {}
        self._locks = {}
        self._mutex = threading.Lock()

    def _refuse_without_os_locks(self) -> None:
        if not OS_FILE_LOCKS:
            # No OS file lock here (neither fcntl nor msvcrt): a lock file that merely
            # exists would outlive a killed holder, and silently in-process locks would
            # order nothing. Refuse, before any write.
            raise AtomscaleConfigurationError(
                "This Python has no cross-process file locks (neither fcntl nor msvcrt), "
                "so the processes of this machine cannot take turns. Set "
                "PREFECT_ATOMSCALE_LOCK_URL to a Redis server to use its locks instead. "
                "Nothing was written."
            )

    def _lock(self, index: int) -> FileLock:
        self._refuse_without_os_locks()
        with self._mutex:
            lock = self._locks.get(index)
            if lock is None:
                _directory(self._directory)
                # Not thread-local: the hold is the process's, shared by its holders.
                lock = FileLock(self._directory / f"{index:04d}.lock", thread_local=False)
                self._locks[index] = lock
            return lock

    def _open(self, index: int) -> int:
        path = f"{self._prefix}{index:04d}.lock"
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:
            _directory(self._directory)
            return os.open(path, flags, 0o644)

    def try_take(self, index: int) -> bool:
        """Take file `index` for this process if no other process holds it."""
        if not self._native:
            try:
                self._lock(index).acquire(timeout=0)
            except Timeout:
                return False
            return True
        fd = self._open(index)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            # A file system without flock: filelock's fallbacks from now on.
            self._native = False
            return self.try_take(index)
        with self._mutex:
            self._held[index] = fd
        return True

    def fence(self, index: int) -> bool:
        """Nothing to check: a file lock lasts as long as its process (True)."""
        return True

    def give_back(self, index: int) -> bool:
        """Release file `index`; always still held (True)."""
        with self._mutex:
            fd = self._held.pop(index, None)
        if fd is None:
            self._lock(index).release()
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return True


class FileCounters:
    """A table of counters shared by every process of this machine, with an incarnation.

    Args:
        path: The table's file.
        locked_bumps: Take a file lock around each bump. Needed when a counter's bumps
            are not already ordered by its slot's lock (the cache epochs).
    """

    def __init__(self, path: Path, *, locked_bumps: bool = False) -> None:
        self._path = path
        # Without OS file locks a lock file would outlive a killed holder (and never be
        # free where another process left an OS lock's file): writes then fail loudly in
        # `FileSlots`, and the counters go unlocked.
        bump_lock = locked_bumps and OS_FILE_LOCKS
        self._bump_lock = FileLock(path.with_suffix(".bump.lock")) if bump_lock else None
        self._map: mmap.mmap | None = None
        self._incarnation = ""
        self._mutex = threading.Lock()
        os.register_at_fork(after_in_child=self._reset_after_fork)

    def _reset_after_fork(self) -> None:
        self._mutex = threading.Lock()

    def _table(self) -> mmap.mmap:
        if self._map is None:
            _directory(self._path.parent)
            size = _HEADER + 8 * SLOTS
            # Made under a lock, so that two processes never both write a header.
            init = FileLock(self._path.with_suffix(".init.lock")) if OS_FILE_LOCKS else None
            with init or contextlib.nullcontext():
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    if os.fstat(fd).st_size < size:
                        os.ftruncate(fd, 0)
                        os.ftruncate(fd, size)
                        os.lseek(fd, 0, os.SEEK_SET)
                        os.write(fd, uuid.uuid4().bytes)
                    self._map = mmap.mmap(fd, size)
                finally:
                    os.close(fd)
            self._incarnation = self._map[:_HEADER].hex()
        return self._map

    def read(self, index: int) -> int:
        """The counter `index`."""
        at = _HEADER + 8 * (index % SLOTS)
        with self._mutex:
            return int.from_bytes(self._table()[at : at + 8], "little")

    def read_with_incarnation(self, index: int) -> tuple[str, int]:
        """The table's incarnation and the counter `index`, together."""
        at = _HEADER + 8 * (index % SLOTS)
        with self._mutex:
            table = self._table()
            return self._incarnation, int.from_bytes(table[at : at + 8], "little")

    def bump(self, index: int) -> int:
        """Add one to counter `index`; return it."""
        with self._mutex:
            self._table()  # makes the directory the bump lock lives in
        if self._bump_lock is None:
            return self._bump(index)
        with self._bump_lock:
            return self._bump(index)

    def _bump(self, index: int) -> int:
        at = _HEADER + 8 * (index % SLOTS)
        with self._mutex:
            table = self._table()
            value = int.from_bytes(table[at : at + 8], "little") + 1
            table[at : at + 8] = value.to_bytes(8, "little")
            return value


class FileValues:
    """Small named values in files, readable by every process of this machine.

    Args:
        directory: Where the values live.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def get(self, name: str) -> str | None:
        """The value of `name`, if set."""
        try:
            return (self._directory / name).read_text().strip() or None
        except OSError:
            return None

    def set(self, name: str, value: str) -> None:
        """Set `name` (written whole through a temporary file, then renamed)."""
        _directory(self._directory)
        temporary = self._directory / f".{name}.{uuid.uuid4().hex}"
        temporary.write_text(value)
        os.replace(temporary, self._directory / name)

    def add(self, name: str, member: str) -> None:
        """Add `member` to the set `name`: one appended line, one system call."""
        line = f"{member}\n".encode()
        try:
            fd = os.open(self._directory / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except FileNotFoundError:
            _directory(self._directory)
            fd = os.open(self._directory / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # O_APPEND: whole lines, whoever else appends
        finally:
            os.close(fd)

    def has(self, name: str, member: str) -> bool:
        """Whether the set `name` holds `member`."""
        try:
            return member in (self._directory / name).read_text().splitlines()
        except OSError:
            return False
