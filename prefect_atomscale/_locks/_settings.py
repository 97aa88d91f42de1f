"""The lock settings, read from the environment in this one place.

`PREFECT_ATOMSCALE_LOCK_URL` names a Redis server shared by every machine (unset: this
machine's locks only); `PREFECT_ATOMSCALE_LOCK_LEASE_SECONDS` is how long a lease on it
lasts; `PREFECT_ATOMSCALE_LOCK_DIR` is the machine-wide directory of the local locks.
Read at each use, in the process that writes, so a Dask or pool worker follows its own
environment.
"""

from __future__ import annotations

import functools
import getpass
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from prefect_atomscale._exceptions import AtomscaleConfigurationError

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "LEASE_ENV",
    "LOCK_DIR_ENV",
    "LOCK_URL_ENV",
    "LockSettings",
    "redacted",
]

LOCK_URL_ENV = "PREFECT_ATOMSCALE_LOCK_URL"
"""Environment variable naming the Redis server every machine's locks live on."""

LEASE_ENV = "PREFECT_ATOMSCALE_LOCK_LEASE_SECONDS"
"""Environment variable with the lease in seconds (default `DEFAULT_LEASE_SECONDS`)."""

LOCK_DIR_ENV = "PREFECT_ATOMSCALE_LOCK_DIR"
"""Environment variable naming the machine-wide directory of the local locks."""

DEFAULT_LEASE_SECONDS = 60.0
"""How long a lease lasts unless renewed: above the 30 s request timeout, so a write
checked right before it is sent finishes inside the lease."""


def redacted(url: str) -> str:
    """`url` with any password replaced by `***`, for messages."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)


def _default_directory() -> Path:
    # Machine-wide, not under PREFECT_HOME: two Prefect homes on one machine must share
    # it. Per user, since another user's processes cannot open these files anyway.
    try:
        user = getpass.getuser()
    except Exception:  # no user name (some containers): one folder for all
        user = "any"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", user) or "any"
    return Path(tempfile.gettempdir()) / f"prefect-atomscale-locks-{safe}"


@dataclass(frozen=True)
class LockSettings:
    """Where the locks live.

    Attributes:
        url: The Redis URL, or None for this machine's locks only.
        lease: Seconds a lease on the lock server lasts.
        directory: The machine-wide directory of the local locks.
    """

    url: str | None
    lease: float
    directory: Path

    @classmethod
    def current(cls) -> LockSettings:
        """The settings as the environment says now."""
        return _settings(
            os.environ.get(LOCK_URL_ENV, "").strip(),
            os.environ.get(LEASE_ENV, "").strip(),
            os.environ.get(LOCK_DIR_ENV, "").strip(),
        )

    def describe(self) -> str:
        """Say where the locks live, with no password."""
        local = f"local locks in {self.directory}"
        return f"lock server {redacted(self.url)} and {local}" if self.url else local

    @functools.cached_property
    def signature(self) -> str:
        """What must be equal in every process of one machine: the lock server and db."""
        if self.url is None:
            return "local"
        parts = urlsplit(self.url)
        host = (parts.hostname or "").lower()
        if host in ("localhost", "::1") or host.startswith("127."):
            host = "loopback"
        return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path or '/0'}"


@functools.lru_cache(maxsize=16)
def _settings(url: str, lease_text: str, directory: str) -> LockSettings:
    return LockSettings(
        url=url or None,
        lease=_lease(lease_text),
        directory=Path(directory).expanduser() if directory else _default_directory(),
    )


def _lease(text: str) -> float:
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
