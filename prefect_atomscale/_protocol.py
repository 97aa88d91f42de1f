"""The write sections: every write of a create task happens inside one, in this order.

docs/design/write-protocol.md is the specification; the step names (L1 ... L7, M2 ...)
are its own. A section holds its locks (`_locks`), reads the material's version before
any listing (L2), trusts a view only at that version (L3, `_views`), fences and bumps the
version around each write (L5), and on a write whose outcome is unknown forgets the view
and lets the write settle *before* giving the locks back (L6), so whoever lists next,
the task's own retry included, sees a write that landed within `SETTLE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import AtomscaleError, AtomscaleRateLimitError
from prefect_atomscale._locks import IDENTITY, MATERIAL, POSITION, KeyLocks, domain, lost, slot_of
from prefect_atomscale._models import Layer
from prefect_atomscale._pool import account_of
from prefect_atomscale._views import StackView, material_views

__all__ = [
    "SETTLE_SECONDS",
    "Section",
    "acreated_empty",
    "aidentity_section",
    "alayer_section",
    "astack_section",
    "created_empty",
    "identity_key",
    "identity_section",
    "layer_section",
    "material_key",
    "may_land",
    "service_of",
    "stack_section",
]

T = TypeVar("T")

SETTLE_SECONDS = 3.0
"""How long a write whose reply never came settles, locks held, before anyone looks again.

Long enough for a service that commits a queued write a moment after the client's
timeout; a write committed later than this can still be doubled (see the protocol's
"What is not guaranteed")."""


def may_land(exc: AtomscaleError) -> bool:
    """Whether a failed write may still land at the service (a 429 was refused outright)."""
    return exc.transient and not isinstance(exc, AtomscaleRateLimitError)


def service_of(credentials: AtomscaleCredentials) -> str:
    """The service views belong to: its base URL, with loopback spellings merged.

    Why: a target material reached through `localhost` and through `127.0.0.1`, or with
    two keys of its organisation, is one stack; two views of it would each be advanced
    by the other's writes without holding them (step L5), and one of them would lie.
    """
    return account_of(credentials).service


def material_key(sample_id: int) -> str:
    """The lock key of a target material: its id, not how the service is reached."""
    return f"material/{sample_id}"


def identity_key(sample_name: str, substrate: str, metadata_json: str) -> str:
    """The lock key of a target material being created: what makes it the same one."""
    material = "\0".join([sample_name, substrate, metadata_json])
    return f"identity/{hashlib.sha256(material.encode()).hexdigest()[:32]}"


class Section:
    """A held write section: the version, the view, fencing and writes (L2-L6).

    Args:
        locks: The family whose lock the section holds (fencing goes through it).
        key: The lock key.
        view_key: The key of this process's view of the material, if it has one.
        what: Names what is locked, in errors.
        versioned: Whether writes bump the slot's version (a material's stack), or only
            fence (a create, whose material has no views yet).
    """

    def __init__(
        self,
        locks: KeyLocks,
        key: str,
        view_key: str | None,
        what: str,
        *,
        versioned: bool = True,
    ) -> None:
        self.locks, self.key, self.view_key, self.what = locks, key, view_key, what
        self.versioned = versioned
        # One lock domain for the whole section (read once: each look-up reads the
        # environment).
        self.domain = domain()
        self.slot = slot_of(key)
        self.version = -1
        self._before = -1

    # --- L2, L3: what the material holds -------------------------------------------------

    def view(self) -> StackView | None:
        """Read the version (before any listing); the view if it is complete at it."""
        self.version = self.domain.read_version(self.locks, self.key)
        return self._current()

    async def aview(self) -> StackView | None:
        """Async `view`."""
        self.version = self.domain.read_version(self.locks, self.key)  # no round trip
        return self._current()

    def _current(self) -> StackView | None:
        assert self.view_key is not None
        return material_views.current(self.view_key, self.version)

    def load(self, layers: Iterable[Layer], creator: str | None = None) -> StackView:
        """The view made from a listing sent after `view()` read the version."""
        assert self.view_key is not None
        return material_views.load(self.view_key, self.slot, self.version, layers, creator)

    # --- L5, L6: writing ----------------------------------------------------------------

    def fence(self) -> None:
        """L5: check the lease is still ours right before a write (no-op without a server).

        Raises:
            AtomscaleLockLostError: It ran out; nothing is written.
        """
        self.locks.fence(self.key, self.what)

    async def afence(self) -> None:
        """Async `fence`."""
        await self.domain.arun(self.locks.fence, self.key, self.what)

    def begin(self) -> None:
        """L5: fence, then bump the version: every other process's view goes stale."""
        if not self.versioned:
            self.fence()
            return
        locks = self.domain
        self._bumped(locks.run(locks.begin_write, self.locks, self.key, self.what))

    async def abegin(self) -> None:
        """Async `begin`."""
        if not self.versioned:
            await self.afence()
            return
        locks = self.domain
        self._bumped(await locks.abegin_write(self.locks, self.key, self.what))

    def _bumped(self, after: int) -> None:
        # Only this process bumps the slot while it holds it: the value before is one less.
        self._before = after
        material_views.advance(self.slot, after - 1, after)

    def end(self, created: Iterable[Layer] = (), updated: Iterable[Layer] = ()) -> None:
        """L5: bump again and put the written layers into this process's view."""
        after = self.domain.end_write(self.locks, self.key)
        self._record(after, created, updated)

    async def aend(self, created: Iterable[Layer] = (), updated: Iterable[Layer] = ()) -> None:
        """Async `end`."""
        after = self.domain.end_write(self.locks, self.key)  # no round trip
        self._record(after, created, updated)

    def _record(self, after: int, created: Iterable[Layer], updated: Iterable[Layer]) -> None:
        if self.view_key is None:
            return
        material_views.wrote(self.view_key, (self.slot, after - 1, after), created, updated)

    def failed(self, errors: Iterable[AtomscaleError]) -> bool:
        """L6: after failed writes, forget the view; whether one may still land (settle)."""
        if self.view_key is not None:
            material_views.forget(self.view_key)
        return any(may_land(error) for error in errors)

    def write(self, send: Callable[[], T]) -> T:
        """One write, begun and ended around `send`; on failure, L6 before it re-raises."""
        self.begin()
        try:
            return send()
        except AtomscaleError as exc:
            if self.failed([exc]):
                time.sleep(SETTLE_SECONDS)
            raise

    async def awrite(self, send: Callable[[], Awaitable[T]]) -> T:
        """Async `write`: settles without blocking the event loop."""
        await self.abegin()
        try:
            return await send()
        except AtomscaleError as exc:
            if self.failed([exc]):
                await asyncio.sleep(SETTLE_SECONDS)
            raise


def _given_back(locks: KeyLocks, key: str, what: str, *, shared: bool) -> None:
    # L7: a lease lost while it was held fails the section, unless it already failed.
    if not locks.release(key, shared=shared):
        raise lost(what)


async def _agiven_back(locks: KeyLocks, key: str, what: str, *, shared: bool) -> None:
    if not await locks.arelease(key, shared=shared):
        raise lost(what)


def _creator(user_id: object) -> str | None:
    return None if user_id is None else str(user_id)


def _view_key(service: str, sample_id: int) -> str:
    return material_views.key(service, sample_id)


@contextmanager
def layer_section(service: str, sample_id: int, layer_id: int, what: str) -> Iterator[Section]:
    """L1: hold a target material (shared) and one of its positions (exclusive)."""
    key = material_key(sample_id)
    material = f"target material {sample_id}"
    MATERIAL.acquire(key, shared=True, what=material)
    try:
        POSITION.acquire(f"{key}/{layer_id}", what=what)
        try:
            yield Section(MATERIAL, key, _view_key(service, sample_id), material)
        finally:
            POSITION.release(f"{key}/{layer_id}")
    except BaseException:
        MATERIAL.release(key, shared=True)
        raise
    _given_back(MATERIAL, key, material, shared=True)


@asynccontextmanager
async def alayer_section(
    service: str, sample_id: int, layer_id: int, what: str
) -> AsyncIterator[Section]:
    """Async `layer_section`."""
    key = material_key(sample_id)
    material = f"target material {sample_id}"
    await MATERIAL.aacquire(key, shared=True, what=material)
    try:
        await POSITION.aacquire(f"{key}/{layer_id}", what=what)
        try:
            yield Section(MATERIAL, key, _view_key(service, sample_id), material)
        finally:
            POSITION.release(f"{key}/{layer_id}")
    except BaseException:
        await MATERIAL.arelease(key, shared=True)
        raise
    await _agiven_back(MATERIAL, key, material, shared=True)


@contextmanager
def stack_section(service: str | None, sample_id: int) -> Iterator[Section]:
    """L1: hold a target material exclusively (a whole stack, or an update of it)."""
    key = material_key(sample_id)
    what = f"the stack of target material {sample_id}"
    MATERIAL.acquire(key, what=what)
    view_key = None if service is None else _view_key(service, sample_id)
    try:
        yield Section(MATERIAL, key, view_key, what)
    except BaseException:
        MATERIAL.release(key)
        raise
    _given_back(MATERIAL, key, what, shared=False)


@asynccontextmanager
async def astack_section(service: str | None, sample_id: int) -> AsyncIterator[Section]:
    """Async `stack_section`."""
    key = material_key(sample_id)
    what = f"the stack of target material {sample_id}"
    await MATERIAL.aacquire(key, what=what)
    view_key = None if service is None else _view_key(service, sample_id)
    try:
        yield Section(MATERIAL, key, view_key, what)
    except BaseException:
        await MATERIAL.arelease(key)
        raise
    await _agiven_back(MATERIAL, key, what, shared=False)


@contextmanager
def identity_section(key: str, what: str) -> Iterator[Section]:
    """M2: hold the identity of a target material being created, exclusively."""
    IDENTITY.acquire(key, what=what)
    try:
        yield Section(IDENTITY, key, None, what, versioned=False)
    except BaseException:
        IDENTITY.release(key)
        raise
    _given_back(IDENTITY, key, what, shared=False)


@asynccontextmanager
async def aidentity_section(key: str, what: str) -> AsyncIterator[Section]:
    """Async `identity_section`."""
    await IDENTITY.aacquire(key, what=what)
    try:
        yield Section(IDENTITY, key, None, what, versioned=False)
    except BaseException:
        await IDENTITY.arelease(key)
        raise
    await _agiven_back(IDENTITY, key, what, shared=False)


def created_empty(service: str, sample_id: int, creator: object) -> None:
    """A material this process just created with no layers: its view is known (empty).

    Read without its lock: a version that moves after this read only makes the view
    stale (listed again), never wrong.
    """
    slot = slot_of(material_key(sample_id))
    version = domain().run(domain().versions.read, slot)
    material_views.created(_view_key(service, sample_id), slot, version, _creator(creator))


async def acreated_empty(service: str, sample_id: int, creator: object) -> None:
    """Async `created_empty`."""
    slot = slot_of(material_key(sample_id))
    version = await domain().arun(domain().versions.read, slot)
    material_views.created(_view_key(service, sample_id), slot, version, _creator(creator))
