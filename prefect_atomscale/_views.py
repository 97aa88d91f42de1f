"""What this process knows of each target material's stack, so a write lists the account once.

The API's only read lists every layer of the organisation, so looking before every write
would make a layer's cost grow with the organisation. Instead each process keeps a view
of the target materials it writes: built from one listing (or known empty when this
process created the material), then kept up to date with the process's own writes.

A view is trusted only while nothing else on this machine can have written its target
material: every write bumps the shared counter of the material's lock file
(`_locking.Generations`) before and after it, while holding that file. A process that
finds the counter changed since its view was made lists the account again. That covers
other flow runs, local Dask workers and a worker that died after its write landed.
A write whose reply never came drops the view (the write may land late), and so do a
retry and `refresh_cache`. A view is also listed again once it is `VIEW_TTL_SECONDS`
old: colleagues, and writers on other machines that share no lock server
(`PREFECT_ATOMSCALE_LOCK_URL`), are seen at the next listing, within that time (see
docs/guides/exactly-once.md, "Against other writers").

Locks, always taken in this order: the target material's (shared by the layer writes
of one process, exclusive for a whole-stack write), then the layer position's.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect_atomscale._locking import Generations, KeyLocks, file_of
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
        generation: The material file's counter when the view was last known complete.
        created_here: This process created the material empty and nothing wrote it since.
        made_at: When the view was made (`time.monotonic()`).
    """

    at: dict[int, list[Layer]] = field(default_factory=dict)
    generation: int = -1
    created_here: bool = False
    made_at: float = field(default_factory=time.monotonic)

    def size(self) -> int:
        """How many layers the view holds."""
        return sum(len(found) for found in self.at.values())

    def add(self, layer: Layer, *, replaced: bool) -> int:
        """Put a written layer in; return how many layers the view gained (0 or 1)."""
        found = self.at.setdefault(layer.layer_id, [])
        if replaced:
            for index, old in enumerate(found):
                if old.id == layer.id:
                    found[index] = layer
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
    """The views of this process, with the locks and counters that keep them true."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # A task pickled by value (cloudpickle, for Dask) refers to this process-wide
        # object; on the other side it is that process's own, not a copy.
        return (_views, ())

    def __init__(self) -> None:
        self.materials = KeyLocks("materials")
        # In-process only: a writer holds its material's lock, which already keeps every
        # other process of this machine out of the whole material.
        self.positions = KeyLocks("positions", across_processes=False)
        self._generations = Generations("materials")
        self._views: OrderedDict[str, StackView] = OrderedDict()
        self._held = 0  # layers in all views, kept as they change (see _trim)
        self._mutex = threading.Lock()

    @staticmethod
    def key(account: str, sample_id: int) -> str:
        """The lock key of a target material."""
        return f"{account}/{sample_id}"

    # --- locks -------------------------------------------------------------------------

    @contextmanager
    def layer_write(self, account: str, sample_id: int, layer_id: int, what: str) -> Iterator[str]:
        """Hold a target material (shared) and one of its positions (exclusive)."""
        key = self.key(account, sample_id)
        with (
            self.materials.hold(key, shared=True, what=f"target material {sample_id}"),
            self.positions.hold(f"{key}/{layer_id}", what=what),
        ):
            yield key

    @asynccontextmanager
    async def alayer_write(
        self, account: str, sample_id: int, layer_id: int, what: str
    ) -> AsyncIterator[str]:
        """Async `layer_write`."""
        key = self.key(account, sample_id)
        async with (
            self.materials.ahold(key, shared=True, what=f"target material {sample_id}"),
            self.positions.ahold(f"{key}/{layer_id}", what=what),
        ):
            yield key

    @contextmanager
    def stack_write(self, account: str, sample_id: int) -> Iterator[str]:
        """Hold a target material exclusively, for a whole-stack write."""
        key = self.key(account, sample_id)
        with self.materials.hold(key, what=f"the stack of target material {sample_id}"):
            yield key

    @asynccontextmanager
    async def astack_write(self, account: str, sample_id: int) -> AsyncIterator[str]:
        """Async `stack_write`."""
        key = self.key(account, sample_id)
        async with self.materials.ahold(key, what=f"the stack of target material {sample_id}"):
            yield key

    # --- views, used while holding the material's lock ------------------------------------

    def current(self, key: str) -> StackView | None:
        """The view of a held material, or None if it must be listed (missing or stale)."""
        generation = self._generations.read(file_of(key))
        with self._mutex:
            view = self._views.get(key)
            if view is None or view.generation != generation:
                return None
            if time.monotonic() - view.made_at > VIEW_TTL_SECONDS:
                self._drop(key)
                return None
            self._views.move_to_end(key)
            return view

    def load(self, key: str, layers: Iterable[Layer]) -> StackView:
        """Make the view of a held material from a listing of its layers."""
        return self._store(key, StackView(at=_by_position(layers)))

    def created(self, key: str) -> None:
        """Remember that this process just created the material, with no layers."""
        with self.materials.hold(key, what="a new target material"):
            self._store(key, StackView(created_here=True))

    def _store(self, key: str, view: StackView) -> StackView:
        view.generation = self._generations.read(file_of(key))
        with self._mutex:
            self._drop(key)
            self._views[key] = view
            self._held += view.size()
            self._trim()
        return view

    def _drop(self, key: str) -> None:
        # With the mutex held.
        dropped = self._views.pop(key, None)
        if dropped is not None:
            self._held -= dropped.size()

    def _trim(self) -> None:
        # With the mutex held: drop the least recently used views (never the newest)
        # while the views hold more layers than the limit.
        while self._held > _LAYER_LIMIT and len(self._views) > 1:
            self._drop(next(iter(self._views)))

    def writing(self, key: str) -> None:
        """Announce a write to a held material: other processes' views of it go stale."""
        self._bump(key)

    def wrote(self, key: str, layers: Iterable[Layer], *, replaced: bool = False) -> None:
        """Record layers this process wrote to a held material (updated in place if `replaced`)."""
        self._bump(key)
        with self._mutex:
            view = self._views.get(key)
            if view is None:
                return
            view.created_here = False
            for layer in layers:
                self._held += view.add(layer, replaced=replaced)
            self._views.move_to_end(key)
            self._trim()

    def forget(self, key: str) -> None:
        """Drop a view: a write's outcome is unknown, so the next write lists again."""
        with self._mutex:
            self._drop(key)

    def _bump(self, key: str) -> None:
        # Only this process holds the file now; a view that was complete stays so.
        index = file_of(key)
        with self._mutex:
            # Nobody else bumps this file now (this process holds it, and the mutex keeps
            # this process's threads out), so the value before is one less: one round
            # trip fewer when the counters live on a lock server.
            after = self._generations.bump(index)
            before = after - 1
            for view_key, view in self._views.items():
                if view.generation == before and file_of(view_key) == index:
                    view.generation = after


material_views = _MaterialViews()
"""This process's views, with the locks that order its writes."""


def _views() -> _MaterialViews:
    return material_views
