"""What this process knows of each target material's stack, so a write lists the account once.

The API's only read lists every layer of the organisation, so listing before every write
would make a layer's cost grow with the organisation. Instead each process keeps a view
of the target materials it writes: made from one listing (or known empty when this
process created the material), then kept up to date with the process's own writes.

A view is stamped with the version of its material's slot (`_locks`) read *before* the
listing was sent, and trusted only while the slot's version is still that number and the
view is younger than `VIEW_TTL_SECONDS`. Every write bumps the version before and after
it (see `_protocol`), so a view made before another writer's write, or while it was in
flight, is never trusted after it. Only this process's own writes move its views forward.
The rules are in docs/design/write-protocol.md (step L3).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prefect_atomscale._models import Layer

__all__ = ["VIEW_TTL_SECONDS", "StackView", "material_views"]

VIEW_TTL_SECONDS = 60.0
"""A view older than this is listed again: how long a colleague's write may go unseen."""

# Layers kept in all views of a process (oldest views go first), so a long-lived worker
# that writes many stacks stays bounded; forgetting a view only costs a listing.
_LAYER_LIMIT = 10_000


@dataclass
class StackView:
    """The layers of one target material as this process knows them.

    Attributes:
        at: Layers by position, oldest first.
        slot: The material's lock slot, whose version stamps the view.
        version: The slot's version the view is complete at.
        creator: The user id of the material's creator, if known (rule O).
        made_at: When the view was made (`time.monotonic()`).
    """

    at: dict[int, list[Layer]] = field(default_factory=dict)
    slot: int = -1
    version: int = -1
    creator: str | None = None
    made_at: float = field(default_factory=time.monotonic)

    def size(self) -> int:
        """How many layers the view holds."""
        return sum(len(found) for found in self.at.values())

    def add(self, layer: Layer, *, replaced: bool) -> int:
        """Put a written layer in; return how many layers the view gained (0 or 1)."""
        found = self.at.setdefault(layer.layer_id, [])
        for index, old in enumerate(found):
            if old.id == layer.id:  # already listed, or updated in place
                found[index] = layer
                return 0
        if replaced:
            found.clear()
            found.append(layer)
            return 0
        found.append(layer)
        return 1

    def layers(self) -> list[Layer]:
        """Every known layer, oldest record first."""
        return sorted((layer for found in self.at.values() for layer in found), key=_record_id)


def _record_id(layer: Layer) -> int:
    return layer.id


def _by_position(layers: Iterable[Layer]) -> dict[int, list[Layer]]:
    at: dict[int, list[Layer]] = {}
    for layer in sorted(layers, key=_record_id):
        at.setdefault(layer.layer_id, []).append(layer)
    return at


class _MaterialViews:
    """The views of this process, by account and target material."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # A task pickled by value (cloudpickle, for Dask) refers to this process-wide
        # object; on the other side it is that process's own, not a copy.
        return (_views, ())

    def __init__(self) -> None:
        self._views: OrderedDict[str, StackView] = OrderedDict()
        # The keys of the views in each slot: a write advances only its slot's views,
        # not every view of a worker that has written many materials.
        self._in_slot: dict[int, set[str]] = {}
        self._held = 0  # layers in all views, kept as they change (see _trim)
        self._mutex = threading.Lock()

    @staticmethod
    def key(service: str, sample_id: int) -> str:
        """The key of a view: the service (`_protocol.service_of`) and the target material."""
        return f"{service}/{sample_id}"

    def current(self, key: str, version: int) -> StackView | None:
        """The view if it is complete at `version` and young enough, else None (list)."""
        with self._mutex:
            view = self._views.get(key)
            if view is None or view.version != version:
                return None
            if time.monotonic() - view.made_at > VIEW_TTL_SECONDS:
                self._drop(key)
                return None
            self._views.move_to_end(key)
            return view

    def load(
        self, key: str, slot: int, version: int, layers: Iterable[Layer], creator: str | None
    ) -> StackView:
        """Make a view from a listing sent after `version` was read under the lock."""
        view = StackView(at=_by_position(layers), slot=slot, version=version, creator=creator)
        return self._store(key, view)

    def created(self, key: str, slot: int, version: int, creator: str | None) -> None:
        """Remember a material this process just created with no layers."""
        self._store(key, StackView(slot=slot, version=version, creator=creator))

    def _store(self, key: str, view: StackView) -> StackView:
        with self._mutex:
            self._drop(key)
            self._views[key] = view
            self._in_slot.setdefault(view.slot, set()).add(key)
            self._held += view.size()
            self._trim()
        return view

    def _drop(self, key: str) -> None:
        # With the mutex held.
        dropped = self._views.pop(key, None)
        if dropped is not None:
            self._held -= dropped.size()
            keys = self._in_slot.get(dropped.slot)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._in_slot[dropped.slot]

    def _trim(self) -> None:
        # With the mutex held: drop the least recently used views (never the newest)
        # while the views hold more layers than the limit.
        while self._held > _LAYER_LIMIT and len(self._views) > 1:
            self._drop(next(iter(self._views)))

    def advance(self, slot: int, before: int, after: int) -> None:
        """This process moved `slot` from `before` to `after`: its views there stay true."""
        with self._mutex:
            self._advance(slot, before, after)

    def _advance(self, slot: int, before: int, after: int) -> None:
        # With the mutex held.
        for key in self._in_slot.get(slot, ()):
            view = self._views[key]
            if view.version == before:
                view.version = after

    def wrote(
        self,
        key: str,
        moved: tuple[int, int, int],
        created: Iterable[Layer],
        updated: Iterable[Layer] = (),
    ) -> None:
        """This process wrote layers and moved its slot `(slot, before, after)`.

        One step under the mutex, so no other task of this process sees the new version
        on a view that lacks the layers.
        """
        with self._mutex:
            self._advance(*moved)
            view = self._views.get(key)
            if view is None:
                return
            for layer in created:
                self._held += view.add(layer, replaced=False)
            for layer in updated:
                self._held += view.add(layer, replaced=True)
            self._views.move_to_end(key)
            self._trim()

    def forget(self, key: str) -> None:
        """Drop a view: a write's outcome is unknown, so the next write lists again."""
        with self._mutex:
            self._drop(key)


material_views = _MaterialViews()
"""This process's views."""


def _views() -> _MaterialViews:
    return material_views
