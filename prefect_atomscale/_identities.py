"""Which target material this lock domain made for an identity, for one the listing hides.

Why: the listing may not show a target material without layers, so after an update gives
such a material a new name or metadata, or when another Prefect home runs the same
create, nothing on the service says it exists. `create_target_material` (protocol step
M3) and `update_target_material` (step U) therefore record, in the lock store (`_locks`),
the identity (name, substrate, metadata) of each target material they made or changed,
per service and person: `made-...` maps an identity to its `sample_id`, `identity-of-...`
the way back, so an update moves the record from the old identity to the new one. The
listing is still asked first; this answers only when it finds nothing of the person's.
`refresh_cache=True` skips it, as it skips the cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._locks import domain
from prefect_atomscale._ownership import Owner
from prefect_atomscale._payloads import OWNER_KEY
from prefect_atomscale._protocol import service_of

__all__ = ["identity_of", "moved", "recall", "remember", "scope_of"]


def scope_of(credentials: AtomscaleCredentials, owner: Owner) -> str:
    """Whose records: the service and the person (their user id, else the key)."""
    who = f"user:{owner.person}" if owner.person is not None else f"key:{owner.key}"
    material = "\0".join([service_of(credentials), who])
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def identity_of(sample_name: Any, substrate: Any, metadata: Any) -> str:
    """The identity hash of a target material: name, substrate, metadata without the mark."""
    user_metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
    user_metadata.pop(OWNER_KEY, None)
    text = json.dumps(
        [str(sample_name or "").strip(), str(substrate or "").strip(), user_metadata],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def recall(scope: str, identity: str) -> int | None:
    """The `sample_id` recorded for an identity, if any."""
    locks = domain()
    value = locks.run(locks.values.get, f"made-{scope}-{identity}")
    return int(value) if value and value.isdigit() else None


def remember(scope: str, identity: str, sample_id: int) -> None:
    """Record that this identity is target material `sample_id`."""
    locks = domain()
    locks.run(locks.values.set, f"made-{scope}-{identity}", str(sample_id))
    locks.run(locks.values.set, f"identity-of-{scope}-{sample_id}", identity)


def moved(scope: str, sample_id: int, identity: str, *, known_mine: bool) -> None:
    """Target material `sample_id` has a new identity: move its record there.

    Only a material on record here, or one known to be the person's (`known_mine`), is
    recorded: a colleague's material is never made adoptable.
    """
    locks = domain()
    old = locks.run(locks.values.get, f"identity-of-{scope}-{sample_id}")
    if not (old or known_mine):
        return
    if old and old != identity:
        locks.run(locks.values.set, f"made-{scope}-{old}", "")
    remember(scope, identity, sample_id)
