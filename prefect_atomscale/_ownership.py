"""Whose is a target material: rule O of docs/design/write-protocol.md.

Ownership follows the person, as the service names them: a listed target material is
the caller's when its `user_id` is the caller's. The caller's user id is the block's
`user_id` when set, else the one the service gave in the reply to a create with this
key, remembered in the lock store (`_locks`) under a hash of the base URL and key, so
every process of the lock domain knows it. Until it is known, a material counts as the caller's only
if its mark names this key and, where the mark records its creator's user id, that id
is the material's own (a mark copied onto a colleague's material fails that).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import AtomscaleConfigurationError
from prefect_atomscale._locks import domain
from prefect_atomscale._models import TargetMaterial
from prefect_atomscale._payloads import OWNER_KEY, owner_token
from prefect_atomscale._pool import account_of

__all__ = ["Owner", "alearn", "aowner_of", "learn", "owner_of"]

_known: dict[str, str] = {}  # account fingerprint -> user id, this process's copy
_unknown: dict[str, float] = {}  # account fingerprint -> when the store had none
_known_mutex = threading.Lock()
# How long "not known yet" is believed before the store is read again: every layer
# write asks, and another process may learn the id meanwhile.
_UNKNOWN_SECONDS = 5.0


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class Owner:
    """The caller, as rule O sees them.

    Attributes:
        key: The key's fingerprint (`AtomscaleCredentials.key_fingerprint()`).
        person: The caller's user id, if known.
    """

    key: str
    person: str | None

    def mark(self, sample_name: str) -> dict[str, Any]:
        """The mark a target material of this name gets in its metadata."""
        mark: dict[str, Any] = {"owner": owner_token(self.key, sample_name)}
        if self.person is not None:
            mark["user_id"] = self.person
        return mark

    def owns(self, sample_name: Any, metadata: Any, user_id: Any) -> bool:
        """Whether a listed target material (its name, metadata, `user_id`) is the caller's."""
        mark = metadata.get(OWNER_KEY) if isinstance(metadata, Mapping) else None
        if not isinstance(mark, Mapping):
            return False  # not made by prefect-atomscale: never adopted
        creator = _text(user_id)
        if self.person is not None and creator is not None:
            return creator == self.person
        name = sample_name.strip() if isinstance(sample_name, str) else ""
        marked_by = _text(mark.get("user_id"))
        return mark.get("owner") == owner_token(self.key, name) and (
            marked_by is None or creator is None or marked_by == creator
        )

    def owns_material(self, material: TargetMaterial) -> bool:
        """`owns` for a target material read from the service."""
        return self.owns(material.sample_name, material.sample_metadata, material.user_id)


def _value_name(account: str) -> str:
    return f"user-{account}"


def _explicit(credentials: AtomscaleCredentials) -> str | None:
    return _text(credentials.user_id)


def _from_store(key: str, stored: str | None) -> str | None:
    with _known_mutex:
        if stored is not None:
            _known[key] = stored
        else:
            _unknown[key] = time.monotonic()
    return stored


def _believed_unknown(account: str) -> bool:
    with _known_mutex:
        since = _unknown.get(account)
    return since is not None and time.monotonic() - since < _UNKNOWN_SECONDS


def _checked(credentials: AtomscaleCredentials, key: str, learned: str | None) -> Owner:
    explicit = _explicit(credentials)
    if explicit is not None and learned is not None and explicit != learned:
        raise _mismatch(explicit, learned)
    return Owner(key=key, person=explicit or learned)


def owner_of(credentials: AtomscaleCredentials) -> Owner:
    """The caller: the block's user id, else the one learned for this key, if any.

    Raises:
        AtomscaleConfigurationError: The block's user id is not the key's (checked
            against what the service said before), or the key cannot be read.
    """
    resolved = account_of(credentials)
    account = resolved.fingerprint
    with _known_mutex:
        learned = _known.get(account)
    if learned is None and not _believed_unknown(account):
        stored = domain().run(domain().values.get, _value_name(account))
        learned = _from_store(account, stored)
    return _checked(credentials, resolved.key_fingerprint, learned)


async def aowner_of(credentials: AtomscaleCredentials) -> Owner:
    """Async `owner_of`."""
    resolved = account_of(credentials)
    account = resolved.fingerprint
    with _known_mutex:
        learned = _known.get(account)
    if learned is None and not _believed_unknown(account):
        stored = await domain().arun(domain().values.get, _value_name(account))
        learned = _from_store(account, stored)
    return _checked(credentials, resolved.key_fingerprint, learned)


def _learned(credentials: AtomscaleCredentials, material: TargetMaterial) -> str | None:
    """The user id to remember from a create's reply, or None if nothing new."""
    person = _text(material.user_id)
    if person is None:
        return None
    account = credentials.account_fingerprint()
    with _known_mutex:
        if _known.get(account) == person:
            return None
        _known[account] = person
    return person


def _after_learning(credentials: AtomscaleCredentials, material: TargetMaterial) -> None:
    explicit, person = _explicit(credentials), _text(material.user_id)
    if explicit is not None and person is not None and explicit != person:
        raise AtomscaleConfigurationError(
            f"{_mismatch(explicit, person)} The target material was created as sample_id "
            f"{material.sample_id}; it is yours under the key's user id."
        )


def learn(credentials: AtomscaleCredentials, material: TargetMaterial) -> None:
    """Remember the user id the service gave in the reply to a create with this key.

    Raises:
        AtomscaleConfigurationError: The block names another user id than the service.
    """
    person = _learned(credentials, material)
    if person is not None:
        domain().run(domain().values.set, _value_name(credentials.account_fingerprint()), person)
    _after_learning(credentials, material)


async def alearn(credentials: AtomscaleCredentials, material: TargetMaterial) -> None:
    """Async `learn`."""
    person = _learned(credentials, material)
    if person is not None:
        name = _value_name(credentials.account_fingerprint())
        await domain().arun(domain().values.set, name, person)
    _after_learning(credentials, material)


def _mismatch(explicit: str, person: str) -> AtomscaleConfigurationError:
    return AtomscaleConfigurationError(
        f"The credentials block says user_id {explicit!r}, but the service creates this "
        f"key's records as user {person!r}. Set the block's user_id to the key owner's "
        "user id (or leave it empty to learn it from the service), then run again."
    )
