"""What a sandbox serves and to whom: API keys, storage location, limits and faults.

`SandboxConfig` is read by `create_app` and `run_sandbox`. Everything in it is fixed for
the life of a server except `faults`, which is a live object that tests change while the
server runs, and `physical_sample_conflict`, which is only the starting value of the
app's live setting of the same name (`SandboxHandle.physical_sample_conflict`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from atomscale_sandbox._connections import HttpParser, resolve_http_parser
from atomscale_sandbox._faults import FaultConfig
from atomscale_sandbox._store import organisation_user_id

__all__ = [
    "DEFAULT_ORGANISATION",
    "ApiKeyGrant",
    "SandboxConfig",
    "check_physical_sample_conflict",
]

DEFAULT_ORGANISATION = "sandbox"
"""The organisation of the API key a `SandboxConfig` generates when given none.

Example:
    ```python
    from atomscale_sandbox import DEFAULT_ORGANISATION, run_sandbox

    with run_sandbox() as sandbox:  # one generated key
        print(sandbox.organisation_of(sandbox.api_key) == DEFAULT_ORGANISATION)  # True
    ```
"""


@dataclass(frozen=True)
class ApiKeyGrant:
    """What one API key may do: act for a person of an organisation, possibly only reading.

    Attributes:
        organisation: The organisation whose records the key reads and writes.
        read_only: If true, every write with this key is refused with 403.
        user: The person the key belongs to, within the organisation. Two keys with the
            same user (a rotated key, a second key) are one person: the records they
            create carry the same `user_id`. `None` is the organisation's default user.

    Example:
        ```python
        from atomscale_sandbox import ApiKeyGrant, SandboxConfig

        config = SandboxConfig(api_keys={"viewer-key": ApiKeyGrant("lab-a", read_only=True)})
        print(config.grants["viewer-key"].read_only)  # True
        ```
    """

    organisation: str
    read_only: bool = False
    user: str | None = None

    @property
    def user_id(self) -> str:
        """The `user_id` the records this key creates carry (see `organisation_user_id`)."""
        return organisation_user_id(self.organisation, self.user)


def _one_generated_key() -> dict[str, ApiKeyGrant | str]:
    return {secrets.token_urlsafe(24): DEFAULT_ORGANISATION}


def check_physical_sample_conflict(shape: str) -> Literal["object", "string"]:
    """`shape` if it names a shape of the physical-sample 409, else a `ValueError`."""
    # Spelled out so that the type checker sees the literal come back.
    if shape == "object":
        return "object"
    if shape == "string":
        return "string"
    raise ValueError(f"physical_sample_conflict must be 'object' or 'string', got {shape!r}")


@dataclass
class SandboxConfig:
    """Settings of one sandbox server.

    Attributes:
        api_keys: Key -> organisation name (a plain string) or an `ApiKeyGrant`. Several
            keys may share an organisation. Defaults to one random key for the
            organisation "sandbox".
        db_path: SQLite file to keep the records in, so they survive a restart. `None`
            stores them in a temporary file that is deleted when the server stops.
        max_body_bytes: Request bodies larger than this are refused with 413.
        list_empty_materials: Whether `GET /target-materials/` lists a target material
            that has no layers (as one row with null layer fields). The real service's
            behaviour is unknown, so the default is the worst case for a client: it does
            not, and a material without layers is invisible.
        physical_sample_conflict: The shape of the 409 that refuses a physical sample
            whose name is taken. `"object"` (the default, what the official SDK
            reads first): `{"detail": {"message": "Physical sample name already
            exists", "physical_sample_id": "<uuid of the existing sample>"}}`.
            `"string"`, as some deployments answer: `{"detail": "Physical sample name
            already exists"}`, so a client must list the samples to find the existing
            one. Only the starting value: `SandboxHandle.physical_sample_conflict`
            (or `SandboxApp.physical_sample_conflict`) changes it while the server runs.
        faults: The live fault-injection settings; change them while the server runs.
        http_parser: The HTTP/1.1 implementation `run_sandbox` serves with: `h11`,
            `httptools` (about a third less server CPU per request; needs the
            `httptools` package), or `auto` for httptools if installed, else h11.

    Example:
        ```python
        from atomscale_sandbox import SandboxConfig

        config = SandboxConfig(api_keys={"key-a": "lab-a", "key-b": "lab-b"})
        print(sorted(config.grants))  # ['key-a', 'key-b']
        ```
    """

    # Kept out of repr, which ends up in logs and test reports.
    api_keys: dict[str, ApiKeyGrant | str] = field(default_factory=_one_generated_key, repr=False)
    db_path: str | Path | None = None
    max_body_bytes: int = 1024 * 1024
    list_empty_materials: bool = False
    physical_sample_conflict: Literal["object", "string"] = "object"
    faults: FaultConfig = field(default_factory=FaultConfig)
    http_parser: HttpParser = "auto"

    def __post_init__(self) -> None:
        if not self.api_keys:
            raise ValueError("SandboxConfig needs at least one API key")
        for key, grant in self.api_keys.items():
            if not key or not key.isascii() or not key.isprintable():
                raise ValueError("API keys must be non-empty printable ASCII strings")
            organisation = grant.organisation if isinstance(grant, ApiKeyGrant) else grant
            if not organisation:
                raise ValueError("every API key needs a non-empty organisation name")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        resolve_http_parser(self.http_parser)
        check_physical_sample_conflict(self.physical_sample_conflict)

    @property
    def grants(self) -> dict[str, ApiKeyGrant]:
        """Every API key with what it may do, plain organisation names expanded.

        Example:
            ```python
            from atomscale_sandbox import SandboxConfig

            print(SandboxConfig(api_keys={"k": "lab-a"}).grants)
            ```
        """
        return {
            key: grant if isinstance(grant, ApiKeyGrant) else ApiKeyGrant(grant)
            for key, grant in self.api_keys.items()
        }
