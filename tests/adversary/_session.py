"""The environment schedules run in: a sandbox of two people, Redis, this machine's folders.

Import-order matters for whoever uses this outside pytest (the soak script): set
PREFECT_HOME before Prefect is imported. Inside pytest, tests/conftest.py has done so.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from helpers import RedisServer

from adversary._model import ORGANISATION, PERSON, ROLES
from atomscale_sandbox import ApiKeyGrant, SandboxConfig, SandboxHandle, run_sandbox

LOCK_DIR_ENV = "PREFECT_ATOMSCALE_LOCK_DIR"
LOCK_URL_ENV = "PREFECT_ATOMSCALE_LOCK_URL"
LEASE_ENV = "PREFECT_ATOMSCALE_LOCK_LEASE_SECONDS"


def machine_lock_dir() -> Path:
    """This machine's lock directory (machine 0), set once, before any lock is taken.

    `PREFECT_ATOMSCALE_LOCK_DIR` names a lock directory shared by every process of a
    machine, whatever its PREFECT_HOME; a tree that does not read it yet keeps its lock
    files under PREFECT_HOME, and setting it changes nothing there.
    """
    existing = os.environ.get(LOCK_DIR_ENV)
    if existing:
        return Path(existing)
    home = Path(os.environ.get("PREFECT_HOME") or tempfile.mkdtemp(prefix="adversary-"))
    path = home / "machine-0-locks"
    path.mkdir(parents=True, exist_ok=True)
    os.environ[LOCK_DIR_ENV] = str(path)
    return path


@dataclass
class Environment:
    """Where schedules run: a sandbox, its keys by role, Redis, this machine's folders.

    Attributes:
        sandbox: The sandbox (its keys are those in `keys`).
        keys: Role -> key. Never printed: `redact` replaces each with its role.
        root: A folder for the schedules' files (writer specs, outcomes, homes).
        home: This process's PREFECT_HOME (machine 0's shared one).
        lock_dir: Machine 0's lock directory.
        api_url: The Prefect API that writer processes report to.
    """

    sandbox: SandboxHandle
    keys: dict[str, str]
    root: Path
    home: Path
    lock_dir: Path
    api_url: str
    _redis: RedisServer | None = field(default=None, repr=False)

    def user_id(self, role: str) -> str:
        """The `user_id` the service shows for the person a key role belongs to."""
        return ApiKeyGrant(ORGANISATION, user=PERSON[role]).user_id

    def redact(self, text: str) -> str:
        """`text` with every key replaced by its role."""
        for role, key in self.keys.items():
            text = text.replace(key, f"<{role}>")
        return text

    def redis(self) -> RedisServer:
        """The session's Redis server, started on first use."""
        if self._redis is None:
            self._redis = RedisServer().start()
        return self._redis

    def close(self) -> None:
        """Stop Redis if it was started."""
        if self._redis is not None:
            self._redis.stop()
            self._redis = None


def sandbox_keys() -> dict[str, str]:
    """A fresh random key per role (never printed)."""
    return {role: f"adv-{secrets.token_urlsafe(18)}" for role in ROLES}


@contextmanager
def adversary_sandbox(keys: dict[str, str], fill: int = 0) -> Iterator[SandboxHandle]:
    """A sandbox where every role's key acts for its person in one organisation.

    Args:
        keys: Role -> key.
        fill: Rows to fill the organisation with first (a large shared account).
    """
    grants: dict[str, ApiKeyGrant | str] = {
        key: ApiKeyGrant(ORGANISATION, user=PERSON[role]) for role, key in keys.items()
    }
    with run_sandbox(SandboxConfig(api_keys=grants)) as sandbox:
        if fill:
            sandbox.app.store.fill(ORGANISATION, fill)
        yield sandbox


@contextmanager
def environment(api_url: str, fill: int = 0) -> Iterator[Environment]:
    """A whole environment on a new sandbox; Redis and the folders are cleaned up after."""
    keys = sandbox_keys()
    root = Path(tempfile.mkdtemp(prefix="adversary-runs-"))
    with adversary_sandbox(keys, fill=fill) as sandbox:
        env = Environment(
            sandbox=sandbox,
            keys=keys,
            root=root,
            home=Path(os.environ["PREFECT_HOME"]),
            lock_dir=machine_lock_dir(),
            api_url=api_url,
        )
        try:
            yield env
        finally:
            env.close()
            shutil.rmtree(root, ignore_errors=True)
