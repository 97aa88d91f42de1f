"""One lock configuration per machine: a process that differs fails before it writes.

Why: a process with `PREFECT_ATOMSCALE_LOCK_URL` and one without (a worker beside a
shell run), or two pointing at different Redis databases, keep their version counters
in different places, so neither sees the other's writes. The lock files are shared by
both (they are always taken), but the counters are not.

How: each writing process keeps a marker file `<token>.<signature hash>` in the lock
directory, touched at most once a second while it writes, and holds `<token>.alive` (a
file lock the OS drops when the process dies). A process that finds a fresh marker
(touched within the lease) of a live process with another signature refuses to write.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

from filelock import FileLock, Timeout

from prefect_atomscale._exceptions import AtomscaleConfigurationError
from prefect_atomscale._locks._settings import LOCK_URL_ENV, LockSettings

__all__ = ["ConfigurationGuard"]

_CHECK_EVERY = 1.0  # seconds between two checks of one process


def _hash(signature: str) -> str:
    return hashlib.sha256(signature.encode()).hexdigest()[:16]


class ConfigurationGuard:
    """Checks that every process writing on this machine uses one lock configuration."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._token = uuid.uuid4().hex
        self._alive: FileLock | None = None
        self._checked: dict[LockSettings, float] = {}

    def check(self, settings: LockSettings) -> None:
        """Refuse to go on if a live process of this machine writes with other settings.

        Raises:
            AtomscaleConfigurationError: Naming both configurations, without passwords.
        """
        now = time.monotonic()
        if now - self._checked.get(settings, -_CHECK_EVERY) < _CHECK_EVERY:
            return  # checked within the last second (read without the mutex: a hint)
        signature = settings.signature
        directory = settings.directory / "configurations"
        with self._mutex:
            self._checked[settings] = now
            directory.mkdir(parents=True, exist_ok=True)
            if self._alive is None:
                self._alive = FileLock(directory / f"{self._token}.alive", thread_local=False)
                self._alive.acquire()
            mine = directory / f"{self._token}.{_hash(signature)}"
            mine.write_text(signature)
            self._refuse_others(directory, signature, settings.lease)

    def _refuse_others(self, directory: Path, signature: str, window: float) -> None:
        for entry in os.scandir(directory):
            token, _, kind = entry.name.partition(".")
            if token == self._token or kind in ("alive", "alive.lock", "") or kind.endswith("lock"):
                continue
            try:
                age = time.time() - entry.stat().st_mtime
                theirs = Path(entry.path).read_text()
            except OSError:
                continue  # removed meanwhile
            if theirs == signature:
                continue
            if age > window or not _alive(directory, token):
                with contextlib.suppress(OSError):
                    os.remove(entry.path)
                continue
            raise AtomscaleConfigurationError(
                f"Another process on this machine writes with other lock settings "
                f"({_shown(theirs)}) than this one ({_shown(signature)}): neither would see "
                f"the other's writes. Give every process the same {LOCK_URL_ENV} (or none), "
                "then run again. Nothing was written."
            )


def _alive(directory: Path, token: str) -> bool:
    """Whether the process that holds `<token>.alive` is still running."""
    lock = FileLock(directory / f"{token}.alive", thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    with contextlib.suppress(OSError):
        os.remove(directory / f"{token}.alive")
    return False


def _shown(signature: str) -> str:
    return "this machine's locks only" if signature == "local" else f"lock server {signature}"
