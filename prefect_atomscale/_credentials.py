"""The `AtomscaleCredentials` block: an API key, where the API lives, and clients built from them.

Empty fields fall back, at the moment of use, to the environment variables the official
`atomscale` SDK reads, so a saved block never captures a key from whoever saved it. The
key is a `SecretStr`: masked in reprs, `model_dump()` and a saved block's pages in the
Prefect UI, and unwrapped only when an HTTP client is built.

Both fields are plain strings, empty by default, rather than optional ones: the Prefect
UI renders an optional field (`anyOf` with `null`) behind a "None" toggle, and a plain
string as a plain input. For the key (`format: password`, as pydantic writes every
`SecretStr`), the new UI (`/v2`) shows a password input; the classic UI has none for
any schema, and shows a one-line text box where the key is visible while typed. `None`,
from Python callers or from documents saved under the earlier schema, still means empty.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

import httpx
from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, field_validator

from prefect_atomscale._exceptions import AtomscaleConfigurationError

__all__ = ["DEFAULT_BASE_URL", "LOGO_URL", "AtomscaleCredentials", "ConnectionSettings"]

DEFAULT_BASE_URL = "https://api.atomscale.ai"

# The block type's logo in the Prefect UI: the SVG this package ships, as the repository
# serves it. Prefect keeps the logo as a pydantic `HttpUrl` (`BlockType.logo_url`), which
# refuses a `data:` URL ("URL scheme should be 'http' or 'https'"), so the picture cannot
# travel inside the package; tests check that this path is the shipped file's.
LOGO_URL = (
    "https://raw.githubusercontent.com/atomscale-ai/prefect-atomscale/main/"
    "prefect_atomscale/_assets/atomscale-logo.svg"
)

# The official SDK reads AS_API_KEY first, then ATOMSCALE_API_KEY; we keep its order so
# that one environment always means one account, whichever tool reads it.
API_KEY_ENV_VARS = ("AS_API_KEY", "ATOMSCALE_API_KEY")
BASE_URL_ENV_VAR = "AS_API_ENDPOINT"

try:
    _VERSION = version("prefect-atomscale")
except PackageNotFoundError:  # running from a source tree that was never installed
    _VERSION = "0+unknown"
USER_AGENT = f"prefect-atomscale/{_VERSION}"

# How long an idle pooled connection is kept for the next task. httpx's 5 s default
# closes connections during any lull of a long flow (a retry's back-off, a slow step),
# so each burst after it opens new ones. 30 s stays under the idle timeouts common in
# front of web APIs (60 s on AWS load balancers); a connection the server closed sooner
# is noticed before reuse, and the rare race with it is a transient, retried error.
KEEPALIVE_EXPIRY_SECONDS = 30.0


class ConnectionSettings(NamedTuple):
    """Everything needed to talk to one Atomscale account, resolved and checked.

    Attributes:
        base_url: The API root without a trailing slash.
        api_key: The key itself; keep it out of logs, messages and cache keys.
        timeout: Seconds allowed for reading, writing and waiting for a pooled connection.
        connect_timeout: Seconds allowed for opening a connection.
        max_connections: Size of the connection pool.

    Example:
        ```python
        from prefect_atomscale import AtomscaleCredentials

        settings = AtomscaleCredentials(api_key="k", base_url="https://api.atomscale.ai/").resolve()
        print(settings.base_url)  # https://api.atomscale.ai
        print(settings.api_key)  # **********
        ```
    """

    base_url: str
    api_key: SecretStr
    timeout: float
    connect_timeout: float
    max_connections: int = 20

    def httpx_timeout(self) -> httpx.Timeout:
        """Return the timeouts as an `httpx.Timeout`.

        Returns:
            Connect, read, write and pool timeouts for an httpx client.

        Example:
            ```python
            from prefect_atomscale import AtomscaleCredentials

            settings = AtomscaleCredentials(api_key="k", timeout=5, connect_timeout=2).resolve()
            print(settings.httpx_timeout())
            # Timeout(connect=2.0, read=5.0, write=5.0, pool=5.0)
            ```
        """
        return httpx.Timeout(self.timeout, connect=self.connect_timeout)

    def fingerprint(self) -> str:
        """Return a stable, non-reversible id of the account: a hash of base URL and key.

        Returns:
            A 32-character hex digest.

        Example:
            ```python
            from prefect_atomscale import AtomscaleCredentials

            lab_a = AtomscaleCredentials(api_key="key-of-lab-a").resolve()
            lab_b = AtomscaleCredentials(api_key="key-of-lab-b").resolve()
            print(len(lab_a.fingerprint()), lab_a.fingerprint() == lab_b.fingerprint())  # 32 False
            ```
        """
        return _fingerprint(self.base_url, self.api_key.get_secret_value())

    def client_options(self) -> dict[str, object]:
        """Return the keyword arguments shared by `httpx.Client` and `httpx.AsyncClient`.

        Returns:
            `base_url`, `headers` (key, User-Agent), `timeout`, and no redirect following.

        Example:
            ```python
            import httpx

            from prefect_atomscale import AtomscaleCredentials

            options = AtomscaleCredentials.load("atomscale").resolve().client_options()
            with httpx.Client(**options) as client:
                print(client.get("/target-materials/").status_code)  # 200
            ```
        """
        return {
            "base_url": self.base_url,
            "headers": {
                "X-API-KEY": self.api_key.get_secret_value(),
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
            "timeout": self.httpx_timeout(),
            # Keep-alive for every pooled connection, so concurrent tasks reuse rather
            # than reopen them.
            "limits": httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
            ),
            # A redirect would carry X-API-KEY to wherever it points; refuse to follow,
            # and let the client report it as a misconfigured base URL instead.
            "follow_redirects": False,
        }


class AtomscaleCredentials(CredentialsBlock):
    """Credentials and connection settings for the Atomscale API.

    Save one block per Atomscale account (organisation key); load it by name in flows.
    Fields left empty are read from the environment when a client is built: the key
    from `AS_API_KEY`, then `ATOMSCALE_API_KEY`; the base URL from `AS_API_ENDPOINT`,
    else https://api.atomscale.ai.

    Attributes:
        api_key: The Atomscale API key (sent as the `X-API-KEY` header).
        base_url: Root URL of the API.
        timeout: Seconds to wait for a reply, a write, or a free pooled connection.
        connect_timeout: Seconds to wait for a new connection.
        max_connections: Connections one process keeps open to the API.
        allow_insecure_http: Allow sending the key over plain http to a remote host.

    Example:
        Save a block once (or in the UI, under Blocks), then load it by name in flows:

        ```python
        from prefect_atomscale import AtomscaleCredentials

        AtomscaleCredentials(api_key="YOUR_API_KEY").save("lab-a", overwrite=True)
        credentials = AtomscaleCredentials.load("lab-a")
        ```

        A block with no key reads it from the environment when it is used, so one saved
        block serves every machine that sets `ATOMSCALE_API_KEY`:

        ```python
        from prefect_atomscale import AtomscaleCredentials

        # Here ATOMSCALE_API_KEY is set (and AS_API_ENDPOINT, for an API root of its own).
        with AtomscaleCredentials().get_client() as client:
            print(client.get("/target-materials/").status_code)  # 200
        ```
    """

    _block_type_name: ClassVar[str] = "Atomscale Credentials"
    _logo_url: ClassVar[str] = LOGO_URL  # type: ignore[assignment]
    # The summary on the block type's card and page in the UI, as first-party blocks
    # (MinIOCredentials, for one) set it; without it Prefect takes the docstring's first
    # paragraph, written for the API reference. Short, because the classic UI's block
    # form shows it in a side card six short lines high and cuts the rest; the form's
    # fields name the environment variables.
    _description: ClassVar[str] = (
        "An Atomscale API key and the API's address, for prefect-atomscale. Fields left "
        "empty are read from the environment when a flow runs."
    )
    # The UI shows this under "Example" with the block's name put in for BLOCK_NAME;
    # only a load belongs there (a save would get the same name put in). No `<`, `>` or
    # `&`, here or in the description: the server stores both HTML-escaped and the UIs
    # show that text as it is, so `-> None` would read `-&gt; None`.
    _code_example: ClassVar[str] = """\
```python
from prefect import flow
from prefect_atomscale import AtomscaleCredentials, create_layer, create_target_material

@flow
def grow_film():
    credentials = AtomscaleCredentials.load("BLOCK_NAME")
    material = create_target_material(credentials, "BTO on STO #12", "SrTiO3")
    create_layer(
        credentials,
        layer_id=1,
        sample_id=material.sample_id,
        composition_string="BaTiO3",
        orientation="001",
    )

grow_film()
```"""
    # The package's own page; it renders this README, which documents the block.
    _documentation_url: ClassVar[str] = "https://pypi.org/project/prefect-atomscale/"  # type: ignore[assignment]

    api_key: SecretStr = Field(
        default=SecretStr(""),
        title="API key",
        description=(
            "Atomscale API key from the web dashboard, sent as the X-API-KEY header. "
            "Leave empty to read AS_API_KEY or ATOMSCALE_API_KEY at run time."
        ),
    )
    base_url: str = Field(
        default="",
        title="Base URL",
        description=(
            "Root URL of the Atomscale API. Leave empty to read AS_API_ENDPOINT at run "
            f"time, else {DEFAULT_BASE_URL}."
        ),
        examples=[DEFAULT_BASE_URL],
    )
    user_id: str = Field(
        default="",
        title="Your Atomscale user id",
        description=(
            "The user id Atomscale shows on the records you create. Names you, not the "
            "key, as their owner: a rotated key or your second key then finds and reuses "
            "what you made. Leave empty to learn it from the service's replies."
        ),
    )
    timeout: float = Field(
        default=30.0,
        gt=0,
        title="Timeout (seconds)",
        description="Seconds to wait for a reply, to send a request, or for a free connection.",
    )
    connect_timeout: float = Field(
        default=10.0,
        gt=0,
        title="Connect timeout (seconds)",
        description="Seconds to wait when opening a new connection to the API.",
    )
    max_connections: int = Field(
        default=20,
        ge=1,
        le=1000,
        title="Max connections",
        description=(
            "Most connections one process keeps open to the API for this account; tasks "
            "running concurrently share them."
        ),
    )
    allow_insecure_http: bool = Field(
        default=False,
        title="Allow insecure HTTP",
        description=(
            "Allow sending the API key over plain http:// to a host other than this "
            "machine. Leave off unless a trusted proxy terminates TLS for you."
        ),
    )

    @field_validator("api_key", "base_url", "user_id", mode="before")
    @classmethod
    def _none_means_empty(cls, value: Any) -> Any:
        # Documents saved under the earlier schema hold nulls, and callers may pass None.
        return "" if value is None else value

    def resolve(self) -> ConnectionSettings:
        """Resolve empty fields from the environment and check the result.

        Returns:
            The settings a client is built from.

        Raises:
            AtomscaleConfigurationError: No API key in the block or the environment, a
                base URL that is not an absolute http(s) URL, or plain http to a remote
                host without `allow_insecure_http`. The message names the block.

        Example:
            ```python
            from prefect_atomscale import AtomscaleConfigurationError, AtomscaleCredentials

            print(AtomscaleCredentials(api_key="k", base_url="http://127.0.0.1:8000").resolve().base_url)
            # http://127.0.0.1:8000
            try:
                AtomscaleCredentials(api_key="k", base_url="http://lab-proxy:8000").resolve()
            except AtomscaleConfigurationError as exc:
                print(exc)  # Refusing to send the API key over plain http to lab-proxy ...
            ```
        """
        return ConnectionSettings(
            base_url=self._resolve_base_url(),
            api_key=self._resolve_api_key(),
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            max_connections=self.max_connections,
        )

    def key_fingerprint(self) -> str:
        """A hash of the API key alone, whatever the base URL is spelled as.

        The ownership token of the target materials the tasks create is made from it:
        the same key owns the same materials whether the block says `127.0.0.1` or
        `localhost`. It reveals nothing of the key.

        Returns:
            32 hex digits.

        Raises:
            AtomscaleConfigurationError: No API key is set or found in the environment.

        Example:
            ```python
            from prefect_atomscale import AtomscaleCredentials

            here = AtomscaleCredentials(api_key="k", base_url="http://127.0.0.1:8000")
            there = AtomscaleCredentials(api_key="k", base_url="http://localhost:8000")
            print(here.key_fingerprint() == there.key_fingerprint())  # True
            ```
        """
        # "owner" stands where a base URL would: no real base URL is spelled that way.
        return _fingerprint("owner", self.resolve().api_key.get_secret_value())

    def account_fingerprint(self) -> str:
        """Return a stable, non-reversible id of the account these credentials reach.

        Two blocks with the same key and base URL (saved, loaded or built in memory)
        share it; different keys never do. Cache keys use it instead of the key.

        Returns:
            A 32-character hex digest of the base URL and the API key.

        Raises:
            AtomscaleConfigurationError: As `resolve` does.

        Example:
            ```python
            from prefect_atomscale import AtomscaleCredentials

            saved = AtomscaleCredentials.load("atomscale")
            in_memory = AtomscaleCredentials(
                api_key=saved.api_key, base_url=saved.base_url, timeout=saved.timeout
            )
            print(saved.account_fingerprint() == in_memory.account_fingerprint())  # True
            ```
        """
        return self.resolve().fingerprint()

    def get_client(self) -> httpx.Client:
        """Return a new `httpx.Client` that authenticates to the Atomscale API.

        The caller owns the client; close it (or use it in a `with` block). Tasks in this
        package share pooled clients instead of calling this per request.

        Returns:
            A client with the base URL, `X-API-KEY` and User-Agent headers and timeouts.

        Raises:
            AtomscaleConfigurationError: As `resolve` does.

        Example:
            ```python
            from prefect_atomscale import AtomscaleCredentials

            with AtomscaleCredentials.load("atomscale").get_client() as client:
                reply = client.get("/target-materials/")
                print(reply.status_code, type(reply.json()))  # 200 <class 'list'>
            ```
        """
        return httpx.Client(**self.resolve().client_options())  # type: ignore[arg-type]

    def get_async_client(self) -> httpx.AsyncClient:
        """Return a new `httpx.AsyncClient` that authenticates to the Atomscale API.

        Returns:
            An async client configured as `get_client` configures the sync one.

        Raises:
            AtomscaleConfigurationError: As `resolve` does.

        Example:
            ```python
            import asyncio

            from prefect_atomscale import AtomscaleCredentials

            async def main() -> None:
                credentials = await AtomscaleCredentials.aload("atomscale")
                async with credentials.get_async_client() as client:
                    reply = await client.get("/target-materials/")
                    print(reply.status_code)  # 200

            asyncio.run(main())
            ```
        """
        return httpx.AsyncClient(**self.resolve().client_options())  # type: ignore[arg-type]

    def _block_label(self) -> str:
        """How messages name this block: by the name it was saved or loaded under."""
        name = self._block_document_name
        if name:
            return f"the AtomscaleCredentials block {name!r}"
        return "an unsaved AtomscaleCredentials block"

    def _key_env_var(self) -> str | None:
        """The environment variable the key is read from, or None if the block holds it."""
        if self.api_key.get_secret_value().strip():
            return None
        return next((name for name in API_KEY_ENV_VARS if os.environ.get(name, "").strip()), None)

    def _resolve_api_key(self) -> SecretStr:
        # Blank counts as empty: a key is never only spaces, and an input cleared in the
        # UI may keep some.
        if self.api_key.get_secret_value().strip():
            return self.api_key
        for name in API_KEY_ENV_VARS:
            value = os.environ.get(name, "").strip()
            if value:
                return SecretStr(value)
        if self._block_document_name:
            where = f"the block {self._block_document_name!r} (Prefect UI, Blocks)"
        else:
            where = "a block (AtomscaleCredentials(api_key=...).save('atomscale'))"
        raise AtomscaleConfigurationError(
            f"No Atomscale API key: {self._block_label()} has no api_key and neither "
            f"{' nor '.join(API_KEY_ENV_VARS)} is set. Paste the key from the Atomscale "
            f"dashboard into {where}, or export ATOMSCALE_API_KEY where the flow runs."
        )

    def _base_url_source(self) -> str:
        """Where the base URL comes from, naming the block, for messages about it."""
        label = self._block_label()
        if self.base_url.strip():
            return f"the base_url of {label}"
        if os.environ.get(BASE_URL_ENV_VAR, "").strip():
            return f"{BASE_URL_ENV_VAR}, read because {label} has no base_url"
        return f"the default, as {label} has no base_url and {BASE_URL_ENV_VAR} is not set"

    def _resolve_base_url(self) -> str:
        raw = (
            self.base_url.strip()
            or os.environ.get(BASE_URL_ENV_VAR, "").strip()
            or DEFAULT_BASE_URL
        )
        return _checked_base_url(raw, self._base_url_source(), self.allow_insecure_http)


# Tasks resolve their credentials on every run; remembering the checks of the few URLs a
# process uses saves two URL parses per task (errors are raised, never remembered).
@functools.lru_cache(maxsize=64)
def _checked_base_url(raw: str, source: str, allow_insecure_http: bool) -> str:
    # `source` says where the URL came from, naming the block ("the base_url of the
    # AtomscaleCredentials block 'lab-a'"), so that every message says what to fix.
    try:
        parts = urlsplit(raw.strip())
        _ = parts.port  # raises ValueError for a port that is not a port
        # The URL as httpx will use it: the host checked below must be the one it
        # connects to, whatever the two parsers make of an odd URL.
        host_httpx_uses = httpx.URL(raw.strip()).host
    except (ValueError, httpx.InvalidURL) as exc:
        raise AtomscaleConfigurationError(
            f"The base URL {raw!r} ({source}) is not a valid URL ({exc}). Write it with "
            f"its scheme and host, for example {DEFAULT_BASE_URL!r}."
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AtomscaleConfigurationError(
            f"The base URL {raw!r} ({source}) is not an absolute http(s) URL. Write it "
            f"with its scheme and host, for example {DEFAULT_BASE_URL!r}."
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        # The URL itself is not repeated: it may hold a password.
        raise AtomscaleConfigurationError(
            f"The base URL ({source}) must be a plain API root such as "
            f"{DEFAULT_BASE_URL!r}, without credentials, a query or a fragment; put the "
            "key in api_key instead."
        )
    loopback = _is_loopback(parts.hostname) and _is_loopback(host_httpx_uses)
    insecure = parts.scheme == "http" and not loopback
    if insecure and not allow_insecure_http:
        raise AtomscaleConfigurationError(
            f"Refusing to send the API key over plain http to {parts.hostname} ({source}): "
            "anyone on the network could read it. Use https://, or set "
            "allow_insecure_http=True on the block if a trusted proxy handles TLS."
        )
    return raw.strip().rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=64)
def _fingerprint(base_url: str, api_key: str) -> str:
    material = "\0".join(["prefect-atomscale account v1", base_url, api_key])
    return hashlib.sha256(material.encode()).hexdigest()[:32]
