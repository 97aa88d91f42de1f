"""Cache keys for the create tasks: which account, which request, which task version.

Prefect's stock policies hash the task inputs, and the credentials block is one of them.
That goes wrong twice: the block hashes with its secret masked, so two accounts would
share entries, and a block loaded by name hashes differently from the same block built
in memory. `AtomscaleRequestCache` therefore keys on the account fingerprint (a hash of
base URL and API key, never the key), the canonical request body, `if_exists`, a
version, and the *epoch* of the record's position. An update (PATCH) bumps that epoch,
so every entry that still holds the record as it was stops answering: the next run asks
the service instead of returning a layer that no longer exists as cached; an update of
a target material bumps the target-material epoch the same way.

Epochs are counters of the lock store (`_locks`: this machine's, or the lock server's),
keyed by what they describe on the service, not by how it is reached, and each carries
the store's incarnation: a lock server that restarted empty, or a lock URL switched on,
is a new incarnation, so no entry made before can answer. Prefect computes cache keys
synchronously, also for async tasks: with a lock server that is one round trip on the
event loop, the one sync call of an async task (Prefect's `CachePolicy` API is sync).
Task inputs that fail validation get no key: the task raises its own clear error,
without Prefect's "Error computing cache key" traceback first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import AtomscaleError
from prefect_atomscale._locks import domain, slot_of
from prefect_atomscale._pool import account_of

__all__ = [
    "DEFAULT_CACHE_EXPIRATION",
    "AtomscaleRequestCache",
    "ainvalidate_position",
    "invalidate_position",
    "invalidate_target_materials",
    "require_target_material_epoch",
]


def _position_key(sample_id: int, layer_id: int | None) -> str:
    return f"stack/{sample_id}" if layer_id is None else f"position/{sample_id}/{layer_id}"


_MATERIALS_KEY = "target-materials"


def _read_epoch(key: str) -> str:
    locks = domain()
    incarnation, count = locks.run(locks.epochs.read_with_incarnation, slot_of(key))
    return f"{incarnation}:{count}"


def invalidate_position(sample_id: int, layer_id: int) -> None:
    """Retire every cache entry of a layer position and of its target material's stack.

    Called after an update changed the record there: entries made before no longer
    describe it. (Positions share 1,024 epochs, so a few others miss once too and ask
    the service, which answers with what they cached.)
    """
    locks = domain()
    locks.run(locks.epochs.bump, slot_of(_position_key(sample_id, layer_id)))
    locks.run(locks.epochs.bump, slot_of(_position_key(sample_id, None)))


async def ainvalidate_position(sample_id: int, layer_id: int) -> None:
    """Async `invalidate_position`."""
    locks = domain()
    await locks.arun(locks.epochs.bump, slot_of(_position_key(sample_id, layer_id)))
    await locks.arun(locks.epochs.bump, slot_of(_position_key(sample_id, None)))


def invalidate_target_materials() -> None:
    """Retire every cache entry of `create_target_material` runs on this lock store.

    Called after an update changed a target material (its name, substrate or metadata):
    an entry made before may hold it as it was, or name it by a name it no longer has.
    The next run of each asks the service again, which costs one listing.
    """
    locks = domain()
    locks.run(locks.epochs.bump, slot_of(_MATERIALS_KEY))


def require_target_material_epoch() -> None:
    """Read the target-material epoch, raising if the lock server is down.

    Why: when the key cannot read its epoch, Prefect runs `create_target_material`
    without a key and so without its cache lock; the task body calls this first, so it
    fails before any request instead of writing.
    """
    _read_epoch(_MATERIALS_KEY)


def _epoch(request: Any) -> str:
    sample_id = getattr(request, "sample_id", None)
    if not isinstance(sample_id, int) or not sample_id:
        # A target material: changed only by `update_target_material`, which bumps this.
        return _read_epoch(_MATERIALS_KEY)
    return _read_epoch(_position_key(sample_id, getattr(request, "layer_id", None)))


# A re-run within this time reuses the record created before instead of posting again.
# Thirty days covers re-running a campaign after a fix; pass
# `create_layer.with_options(cache_expiration=...)` to change it, or `refresh_cache=True`
# to force a new write (e.g. after deleting the record on Atomscale).
DEFAULT_CACHE_EXPIRATION = timedelta(days=30)


class _CanonicalRequest(Protocol):
    def canonical_json(self) -> str: ...


@dataclass
class AtomscaleRequestCache(CachePolicy):
    """Cache key = task name + version + account + canonical request body + `if_exists`.

    Attributes:
        task_name: Keeps two tasks with equal bodies apart.
        version: Bump it when a task's request or reply changes meaning.
        build_request: Builds the checked request from the task's inputs.
    """

    task_name: str = ""
    version: str = "1"
    build_request: Callable[[dict[str, Any]], _CanonicalRequest] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """Compute the key, or None when the inputs are invalid (the task then raises).

        Args:
            task_ctx: The task run context (unused).
            inputs: The task's arguments by name; must hold `credentials`.
            flow_parameters: The flow's parameters (unused).
            **kwargs: Further arguments Prefect may pass (unused).

        Returns:
            A hex digest, or None.
        """
        credentials = inputs.get("credentials")
        if not isinstance(credentials, AtomscaleCredentials) or self.build_request is None:
            return None
        try:
            request = self.build_request(inputs)
            fingerprint = account_of(credentials).fingerprint
            # An unreachable lock server fails here too: the task body then says so.
            epoch = _epoch(request)
        except AtomscaleError:
            return None
        # What to do about a different record (`if_exists`) changes the outcome, so a
        # run with "update" must not be answered by the cache entry of one with "reuse".
        # Prefect passes defaults as inputs; left out, it is the tasks' default, "error".
        policy = str(inputs.get("if_exists", "error"))
        parts = [self.task_name, self.version, fingerprint, request.canonical_json(), policy, epoch]
        material = "\0".join(parts)
        return hashlib.sha256(material.encode()).hexdigest()
