"""What this lock domain made for a person: materials by identity, and layer records.

Why: the listing may not show a target material without layers, so after an update gives
such a material a new name or metadata, or when another Prefect home runs the same
create, nothing on the service says it exists. `create_target_material` (protocol step
M3) and `update_target_material` (step U) therefore record, in the lock store (`_locks`),
the identity (name, substrate, metadata) of each target material they made or changed,
per service and person: `made-...` maps an identity to its `sample_id`, `identity-of-...`
the way back, so an update moves the record from the old identity to the new one. The
listing is still asked first; this answers only when it finds nothing of the person's.
`refresh_cache=True` skips it, as it skips the cache. The layer records this domain
created for the person are recorded too (`layers_written`, `stack_created`): an update
changes only those (rule O), since the listing does not say who wrote a layer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._locks import domain
from prefect_atomscale._models import Layer
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


def layers_written(scope: str, layers: Iterable[Layer]) -> None:
    """Record layer records this lock domain created for the person (rule O for updates).

    Why: the listing tells a target material's creator, not a layer's, so a colleague's
    layer inside the person's material looks like any other; only what was written
    here is known to be the person's.
    """
    locks = domain()
    for layer in layers:
        locks.run(locks.values.add, f"layers-{scope}", f"{layer.sample_id}:{layer.id}")


def stack_created(scope: str, sample_id: int, positions: Iterable[int]) -> None:
    """Record the positions a target material was created with (their ids are unknown)."""
    locks = domain()
    text = ",".join(str(position) for position in positions)
    locks.run(locks.values.set, f"stack-{scope}-{sample_id}", text)


def written_here(scope: str, layer: Layer, at_position: list[Layer]) -> bool:
    """Whether `layer` was written for the person: on record, or created with its material.

    A layer created together with its material is the oldest record at its position
    (a colleague's at that position came later).
    """
    locks = domain()
    if locks.run(locks.values.has, f"layers-{scope}", f"{layer.sample_id}:{layer.id}"):
        return True
    created = locks.run(locks.values.get, f"stack-{scope}-{layer.sample_id}") or ""
    positions = {int(part) for part in created.split(",") if part.isdigit()}
    oldest = min((found.id for found in at_position), default=layer.id)
    return layer.layer_id in positions and layer.id == oldest
