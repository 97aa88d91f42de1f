"""Typed calls to the Atomscale target-material and physical-sample endpoints, sync and async.

`AtomscaleClient` and `AsyncAtomscaleClient` send checked requests (see `_payloads`) over
an httpx client that `AtomscaleCredentials` configured, and turn every reply into a
model or into one of the errors in `_exceptions`. Both twins share the request table and
the reply decoding below; each only adds how it sends. Nothing here retries: retrying is
the tasks' job, through Prefect.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import (
    AtomscaleAuthError,
    AtomscaleConfigurationError,
    AtomscaleConflictError,
    AtomscaleConnectionError,
    AtomscaleError,
    AtomscaleNotFoundError,
    AtomscaleProtocolError,
    AtomscaleRateLimitError,
    AtomscaleServerError,
    AtomscaleTimeoutError,
    AtomscaleValidationError,
)
from prefect_atomscale._growth_runs import (
    checked_create_inputs,
    checked_optional_id,
    checked_physical_sample_id,
    name_key,
)
from prefect_atomscale._listing import ListingReader
from prefect_atomscale._models import GrowthRun, Layer, TargetMaterial, TargetMaterialRow
from prefect_atomscale._payloads import (
    OWNER_KEY,
    LayerRequest,
    TargetMaterialRequest,
    _positive_int,
    _text,
)

__all__ = ["AsyncAtomscaleClient", "AtomscaleClient"]

T = TypeVar("T")

# Paths exactly as the API reference writes them: trailing slashes differ between routes.
TARGET_MATERIALS = "/target-materials/"
LAYERS = "/target-materials/layers/"
PHYSICAL_SAMPLES = "/physical_samples/"

_ROWS = TypeAdapter(list[TargetMaterialRow])
_MIN_SCRUBBED_KEY = 8


@dataclass(frozen=True)
class _Call:
    """One request and what it is for, so that every error can say both."""

    method: str
    path: str
    purpose: str
    body: Any = None
    params: dict[str, str] | None = None
    # What a 404 says may be missing, in "check that ... exists".
    missing: str = "the target material"

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _create_target_material(request: TargetMaterialRequest) -> _Call:
    return _Call("POST", TARGET_MATERIALS, f"creating {request.describe()}", request.body)


def _create_layer(request: LayerRequest) -> _Call:
    return _Call("POST", LAYERS, f"creating {request.describe()}", request.body)


def _update_layer(request: LayerRequest) -> _Call:
    # The API finds the layer to change by (sample_id, layer_id), both in the body.
    return _Call("PATCH", LAYERS, f"updating {request.describe()}", request.body)


def _replace_layers(sample_id: int, requests: Sequence[LayerRequest], purpose: str) -> _Call:
    path = f"/target-materials/{sample_id}/layers"
    return _Call("POST", path, purpose, [dict(request.body) for request in requests])


def _list_rows(purpose: str) -> _Call:
    return _Call("GET", TARGET_MATERIALS, purpose)


class _Keeps(Protocol[T]):
    """A look-up's filter: which listed items to decode, and how to read those kept."""

    @property
    def keep(self) -> Callable[[dict[str, Any]], bool]: ...

    def __call__(self, data: Any) -> list[T]: ...


@dataclass(frozen=True)
class _Rows:
    """The listed rows a look-up needs: those `keep` accepts.

    The list holds every layer of the organisation, and a look-up needs the few of one
    target material: only those are decoded (see `_listing`), which keeps a look-up's
    time and memory small in a large account. Items that are not objects are kept, so
    that a malformed reply still fails validation.
    """

    keep: Callable[[dict[str, Any]], bool]

    def __call__(self, data: Any) -> list[TargetMaterialRow]:
        if isinstance(data, list):
            data = [row for row in data if not isinstance(row, dict) or self.keep(row)]
        return _ROWS.validate_python(data)


def _is(value: Any, wanted: int | str) -> bool:
    # Lenient as validation is: an id sent as a string still matches.
    return value == wanted or (isinstance(value, str) and value.strip() == str(wanted))


def _of_material(sample_id: int) -> _Rows:
    return _Rows(lambda row: _is(row.get("sample_id"), sample_id))


def _at_position(request: LayerRequest) -> _Rows:
    return _Rows(
        lambda row: (
            _is(row.get("sample_id"), request.sample_id)
            and _is(row.get("layer_id"), request.layer_id)
        )
    )


def _named(request: TargetMaterialRequest) -> _Rows:
    return _Rows(lambda row: _is(row.get("sample_name"), request.sample_name))


def _update_target_material(sample_id: int, changes: dict[str, Any]) -> _Call:
    # A PATCH sets the given fields to the given values: sent twice, it leaves the same
    # record, so a retry after a reply that never came (a timeout, a dropped connection,
    # a 5xx after the write) is safe, unlike a retried POST.
    fields = ", ".join(sorted(changes))
    purpose = f"updating the {fields} of target material {sample_id}"
    return _Call("PATCH", f"/target-materials/{sample_id}", purpose, changes)


def _first_of_each(name: str | None) -> _Rows:
    """One listed row per target material (named `name`, if given): the first one seen.

    The listing has one row per layer, and a target material's fields are the same on
    each; keeping one row per material keeps a listing of the whole organisation small.
    `_Rows` filters twice (while streaming and again before validation) with the same
    row objects, so the first row of each material is remembered by identity.
    """
    first: dict[str, int] = {}

    def keep(row: dict[str, Any]) -> bool:
        if name is not None and not _is(row.get("sample_name"), name):
            return False
        value = row.get("sample_id")
        key = value.strip() if isinstance(value, str) else repr(value)
        return first.setdefault(key, id(row)) == id(row)

    return _Rows(keep)


_GROWTH_RUNS = TypeAdapter(list[GrowthRun])


def _create_physical_sample(
    name: str, sample_id: int | None, growth_instrument_id: int | None
) -> _Call:
    body: dict[str, Any] = {"name": name}
    if sample_id is not None:
        body["sample_id"] = sample_id
    if growth_instrument_id is not None:
        body["growth_instrument_id"] = growth_instrument_id
    linked = f" linked to target material {sample_id}" if sample_id is not None else ""
    return _Call(
        "POST",
        PHYSICAL_SAMPLES,
        f"creating growth run {name!r}{linked}",
        body,
        missing=f"target material {sample_id}",
    )


def _list_physical_samples(purpose: str, physical_sample_id: str | None = None) -> _Call:
    params = None if physical_sample_id is None else {"physical_sample_id": physical_sample_id}
    return _Call("GET", PHYSICAL_SAMPLES, purpose, params=params, missing="the growth run")


def _link_physical_sample(physical_sample_id: str, sample_id: int | None) -> _Call:
    path = f"{PHYSICAL_SAMPLES}{quote(physical_sample_id, safe='')}/target_material"
    purpose = (
        f"linking growth run {physical_sample_id} to target material {sample_id}"
        if sample_id is not None
        else f"clearing the target material of growth run {physical_sample_id}"
    )
    missing = f"growth run {physical_sample_id}" + (
        f" and target material {sample_id}" if sample_id is not None else ""
    )
    return _Call("PATCH", path, purpose, {"target_material_id": sample_id}, missing=missing)


@dataclass(frozen=True)
class _Samples:
    """The physical samples a look-up needs: those `keep` accepts (see `_Rows`)."""

    keep: Callable[[dict[str, Any]], bool]

    def __call__(self, data: Any) -> list[GrowthRun]:
        if isinstance(data, dict):
            data = [data]  # one sample asked for by id may come back bare (the SDK allows it)
        if isinstance(data, list):
            data = [item for item in data if not isinstance(item, dict) or self.keep(item)]
        return _GROWTH_RUNS.validate_python(data)


def _named_run(name: str) -> _Samples:
    key = name_key(name)
    return _Samples(
        lambda item: isinstance(item.get("name"), str) and name_key(item["name"]) == key
    )


def _with_id(physical_sample_id: str) -> _Samples:
    # Compared as UUIDs would be: the service may write them in upper case.
    wanted = physical_sample_id.lower()
    return _Samples(lambda item: str(item.get("id", "")).strip().lower() == wanted)


def _every_run() -> _Samples:
    return _Samples(lambda item: True)


def _created_run(
    name: str, sample_id: int | None, growth_instrument_id: int | None
) -> Callable[[Any], GrowthRun]:
    """Read a create's reply, filling in from the request what it left out."""

    def parse(data: Any) -> GrowthRun:
        run = GrowthRun.model_validate(data)
        fill: dict[str, Any] = {}
        if run.name is None:
            fill["name"] = name
        if "sample_id" not in run.model_fields_set and "target_material" not in (
            run.model_fields_set
        ):
            fill["sample_id"] = sample_id
        if run.growth_instrument_id is None and growth_instrument_id is not None:
            fill["growth_instrument_id"] = growth_instrument_id
        return run.model_copy(update=fill) if fill else run

    return parse


def _linked_run(sample_id: int | None) -> Callable[[Any], GrowthRun]:
    """Read a link's reply; a reply that does not say the link is taken as done."""

    def parse(data: Any) -> GrowthRun:
        run = GrowthRun.model_validate(data)
        if run.target_material_id == sample_id:
            return run
        return run.model_copy(update={"sample_id": sample_id, "target_material": None})

    return parse


def _link_inputs(physical_sample_id: Any, sample_id: Any) -> tuple[str, int | None]:
    where = f"link_target_material({physical_sample_id!r:.40})"
    return (
        checked_physical_sample_id(physical_sample_id, where),
        checked_optional_id(
            "sample_id", sample_id, where, "the sample_id that create_target_material returned"
        ),
    )


def target_material_changes(
    sample_id: Any,
    *,
    sample_name: Any = None,
    substrate: Any = None,
    sample_metadata: Any = None,
    owner: Mapping[str, Any] | str | None = None,
) -> dict[str, Any]:
    """Check an update of a target material and return the PATCH body: given fields only.

    The same rules as creating one (`TargetMaterialRequest.build`): a non-empty name and
    substrate of at most 256 characters, metadata that is a JSON object without the
    reserved key `prefect_atomscale`; and at least one field. `owner`, with
    `sample_metadata`, is the ownership mark to keep under that key (a token alone, or
    the whole mark).

    Raises:
        AtomscaleValidationError: For anything that cannot be sent.
    """
    where = f"Update of target material {sample_id!r:.40}"
    material = _positive_int(
        "sample_id", sample_id, where, "the sample_id that create_target_material returned"
    )
    where = f"Update of target material {material}"
    changes: dict[str, Any] = {}
    if sample_name is not None:
        keep = "Give the new name, or leave sample_name out to keep the name"
        changes["sample_name"] = _text("sample_name", sample_name, where, required=keep)
    if substrate is not None:
        keep = "Give the new substrate, e.g. 'SrTiO3', or leave substrate out to keep it"
        changes["substrate"] = _text("substrate", substrate, where, required=keep)
    if sample_metadata is not None:
        changes["sample_metadata"] = _metadata(sample_metadata, where, owner)
    if not changes:
        raise AtomscaleValidationError(
            f"{where}: nothing to change. Give at least one of sample_name, substrate and "
            "sample_metadata (sample_metadata={} empties the metadata)."
        )
    return changes


def _metadata(value: Any, where: str, owner: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise AtomscaleValidationError(
            f"{where}: sample_metadata must be a mapping (a JSON object), got "
            f"{type(value).__name__}. Pass a dict such as {{'growth': 'PLD'}}, or leave it "
            "out to keep the metadata."
        )
    try:
        metadata: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    else:
        if OWNER_KEY in metadata:
            raise AtomscaleValidationError(
                f"{where}: sample_metadata may not have the key {OWNER_KEY!r}; "
                "prefect-atomscale keeps its ownership token there. Rename that key."
            )
        if owner is None:
            return metadata
        mark = {"owner": owner} if isinstance(owner, str) else dict(owner)
        return {**metadata, OWNER_KEY: mark}
    raise AtomscaleValidationError(
        f"{where}: sample_metadata cannot be sent as JSON ({problem}). Use only strings, "
        "numbers, booleans, None, lists and dicts."
    )


def _updated(material: TargetMaterial, changes: dict[str, Any]) -> TargetMaterial:
    """Fill in what an update's reply left out with the values sent."""
    missing = {field: value for field, value in changes.items() if getattr(material, field) is None}
    return material.model_copy(update=missing) if missing else material


class _Base:
    """What both clients share: the settings they report in errors, and reply decoding."""

    def __init__(self, http: httpx.Client | httpx.AsyncClient, *, secret: str | None = None):
        self._base_url = str(http.base_url).rstrip("/")
        # Kept only to scrub it from error text in case a proxy or server echoes it. A
        # key too short to be real would only mangle ordinary words, so it is not scrubbed.
        key = secret if secret is not None else http.headers.get("X-API-KEY")
        self._secret = key if key and len(key) >= _MIN_SCRUBBED_KEY else None
        # Where the settings came from, for errors that say what to fix: the block ("the
        # AtomscaleCredentials block 'lab-a'" or "an unsaved ..."), where its base URL
        # came from, and the environment variable the key was read from (None: from the
        # block). `from_credentials` sets them; a client on a bare httpx client has none.
        self._block: str | None = None
        self._url_from: str | None = None
        self._key_env: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    def _parse(self, call: _Call, response: httpx.Response, parse: Callable[[Any], T]) -> T:
        return self._validated(call, response.status_code, self._decode(call, response), parse)

    def _validated(self, call: _Call, status: int, data: Any, parse: Callable[[Any], T]) -> T:
        # Errors are raised outside the `except` blocks here and below: raised inside,
        # they would carry the original exception as `__context__`, and that one holds
        # the request (with its X-API-KEY header) or the reply text. `from None` only
        # hides it from tracebacks; pickling with tblib (Dask installs it) still keeps it.
        try:
            return parse(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                for err in exc.errors()[:3]
            )
        raise self._scrub(
            AtomscaleProtocolError(
                f"{call} while {call.purpose} answered {status} with JSON of "
                f"an unexpected shape ({problems}). Check that base_url "
                f"{self._base_url!r} is the Atomscale API; if it is, the API has changed "
                "and prefect-atomscale needs an update.",
                status_code=status,
                detail=data,
                request=str(call),
                reason=f"a reply of an unexpected shape ({problems})",
            )
        )

    def _decode(self, call: _Call, response: httpx.Response) -> Any:
        status = response.status_code
        if 200 <= status < 300:
            try:
                return response.json()
            except ValueError:
                pass
            raise self._scrub(self._not_json(call, status, _describe_body(response)))
        raise self._scrub(self._error_for(call, response))

    def _not_json(self, call: _Call, status: int, body: str) -> AtomscaleProtocolError:
        return AtomscaleProtocolError(
            f"{call} while {call.purpose} answered {status} but the body is not "
            f"JSON ({body}). Check that base_url "
            f"{self._base_url!r} is the Atomscale API and not a proxy or login page.",
            status_code=status,
            request=str(call),
            reason=f"a reply that is not JSON ({body})",
        )

    def _streamed_failure(
        self, call: _Call, response: httpx.Response | None, exc: Exception
    ) -> AtomscaleError:
        """The error for a look-up whose streamed reply could not be read."""
        if isinstance(exc, httpx.HTTPError):
            return self._transport_error(call, exc)
        status = response.status_code if response is not None else 0
        kind = response.headers.get("content-type", "no content type") if response else ""
        return self._not_json(call, status, f"a {kind.split(';')[0]} body")

    def _error_for(self, call: _Call, response: httpx.Response) -> AtomscaleError:
        status = response.status_code
        detail = _detail(response)
        said = _detail_text(detail) if detail is not None else _describe_body(response)
        head = f"Atomscale answered {status} to {call} while {call.purpose}: {said}."
        # What code needs of the answer, beside the message: see AtomscaleError.
        answer: dict[str, Any] = {
            "request": str(call),
            "service_said": said if detail is not None else None,
            "reason": f"{said.rstrip('.')} ({status})",
        }
        # The settings to fix, named as the user set them when the client came from a
        # block: "base_url 'http://...' (the base_url of the AtomscaleCredentials block
        # 'lab-a')", and the block (or the environment variable) that holds the key.
        base_url = f"base_url {self._base_url!r}"
        key_home = "the AtomscaleCredentials block (or AS_API_KEY / ATOMSCALE_API_KEY)"
        if self._block:
            base_url += f" ({self._url_from})"
            key_home = f"{self._block} (base URL {self._base_url})"
            if self._key_env:
                key_home = (
                    f"{self._key_env}, where the key was read from because {key_home} has "
                    "no api_key, or in that block"
                )
        if 300 <= status < 400:
            return AtomscaleProtocolError(
                f"{call} while {call.purpose} was redirected ({status}) to "
                f"{response.headers.get('location', 'an unnamed place')!r}. Redirects are not "
                "followed so the API key never leaves for another host: set base_url to the "
                f"API's real address; it is now {base_url}.",
                status_code=status,
                request=str(call),
                reason=f"redirected ({status})",
            )
        if status in (400, 413, 422):
            fix = (
                "Send a smaller request, e.g. fewer layers at once."
                if status == 413
                else "Fix the field named above and run again; retrying as is cannot succeed."
            )
            return AtomscaleValidationError(
                f"{head} {fix}", status_code=status, detail=detail, **answer
            )
        if status in (401, 403) and detail is None:
            return AtomscaleAuthError(
                f"{head} The reply is not the API's JSON: a proxy, firewall or login page "
                f"answered. Check that {base_url} reaches the Atomscale API directly from "
                "this machine.",
                status_code=status,
                **answer,
            )
        if status == 401:
            return AtomscaleAuthError(
                f"{head} The API key was refused: it may be mistyped, expired or revoked. "
                f"Put a current key from the Atomscale dashboard in {key_home}.",
                status_code=status,
                detail=detail,
                **answer,
            )
        if status == 403:
            return AtomscaleAuthError(
                f"{head} The key is valid but may not do this: use a key with write access "
                f"to this organisation, in {key_home}.",
                status_code=status,
                detail=detail,
                **answer,
            )
        if status == 404:
            return AtomscaleNotFoundError(
                f"{head} Check that {call.missing} exists and belongs to the "
                f"organisation of this API key, and that {base_url} is right.",
                status_code=status,
                detail=detail,
                **answer,
            )
        if status == 409:
            return AtomscaleConflictError(
                f"{head} A record with these identifiers already exists; look it up, or "
                "change the request.",
                status_code=status,
                detail=detail,
                **answer,
            )
        if status == 429:
            retry_after = _retry_after(response)
            return AtomscaleRateLimitError(
                f"{head} Too many requests; the task retries after "
                f"{'the backoff' if retry_after is None else f'{retry_after:g} s'}.",
                status_code=status,
                detail=detail,
                retry_after=retry_after,
                **answer,
            )
        if status == 408 or status >= 500:
            return AtomscaleServerError(
                f"{head} The service failed; the task retries with backoff. If it keeps "
                "failing, check the Atomscale status page or try later.",
                status_code=status,
                detail=detail,
                **answer,
            )
        return AtomscaleProtocolError(
            f"{head} This status is not part of the documented API; check that {base_url} "
            "is the Atomscale API.",
            status_code=status,
            detail=detail,
            **answer,
        )

    def _transport_error(self, call: _Call, exc: httpx.HTTPError) -> AtomscaleError:
        where = f"{self._base_url} ({call} while {call.purpose})"
        # Which setting holds that URL, when the client came from a block.
        source = f" (the URL is {self._url_from})" if self._block else ""
        request = str(call)
        error: AtomscaleError
        if isinstance(exc, httpx.ConnectTimeout):
            error = AtomscaleTimeoutError(
                f"Could not connect to {where} in time: {exc!s}. Check base_url and the "
                f"network{source}.",
                request=request,
                reason=f"Could not connect to {self._base_url} in time: {exc!s}",
            )
        elif isinstance(exc, httpx.TimeoutException):
            error = AtomscaleTimeoutError(
                f"No reply from {where} within the timeout ({type(exc).__name__}). The request "
                "may or may not have been applied; a retry or a re-run looks before writing "
                "again, so nothing is written twice. If this persists, check the service, or "
                f"raise the timeout of {self._block or 'the block'}.",
                request=request,
                reason=f"No reply from {self._base_url} within the timeout ({type(exc).__name__})",
            )
        elif isinstance(exc, httpx.ConnectError):
            error = AtomscaleConnectionError(
                f"Could not connect to {where}: {exc!s}. Check base_url and the network{source}.",
                request=request,
                reason=f"Could not connect to {self._base_url}: {exc!s}",
            )
        elif isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            error = AtomscaleConfigurationError(
                f"Cannot send {call} to {where}: {exc!s}. Check base_url{source}.",
                reason=f"Cannot send to {self._base_url}: {exc!s}",
            )
        else:
            error = AtomscaleConnectionError(
                f"The connection to {where} broke before a reply arrived "
                f"({type(exc).__name__}: {exc!s}). The request may or may not have been "
                "applied; a retry or a re-run looks before writing again, so nothing is "
                f"written twice. If this persists, check the network and base_url{source}.",
                request=request,
                reason=(
                    f"The connection to {self._base_url} broke before a reply arrived "
                    f"({type(exc).__name__}: {exc!s})"
                ),
            )
        return self._scrub(error)

    def _scrub(self, error: AtomscaleError) -> AtomscaleError:
        if self._secret and self._secret in error.message:
            error.message = error.message.replace(self._secret, "[API key]")
            error.args = (error.message,)
        if self._secret and self._secret in error.reason:
            error.reason = error.reason.replace(self._secret, "[API key]")
        if self._secret and error.service_said and self._secret in error.service_said:
            error.service_said = error.service_said.replace(self._secret, "[API key]")
        if self._secret and self._secret in repr(error.detail):
            error.detail = "[withheld: contained the API key]"
        return error


class AtomscaleClient(_Base):
    """A synchronous client for the Atomscale target-material endpoints.

    Args:
        http: An `httpx.Client` from `AtomscaleCredentials.get_client()`.

    Example:
        ```python
        from prefect_atomscale import AtomscaleClient, AtomscaleCredentials, TargetMaterialRequest

        credentials = AtomscaleCredentials.load("atomscale")
        with AtomscaleClient.from_credentials(credentials) as client:
            request = TargetMaterialRequest.build(sample_name="BTO/STO", substrate="SrTiO3")
            material = client.create_target_material(request)
            print(material.sample_name)  # BTO/STO
        ```
    """

    def __init__(self, http: httpx.Client):
        super().__init__(http)
        self._http = http

    @classmethod
    def from_credentials(cls, credentials: AtomscaleCredentials) -> Self:
        """Build a client with its own connection pool from a credentials block.

        Args:
            credentials: The account to talk to.

        Returns:
            A client; close it when done.

        Example:
            ```python
            from prefect_atomscale import AtomscaleClient, AtomscaleCredentials

            client = AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale"))
            try:
                print(type(client.list_rows()))  # <class 'list'>
            finally:
                client.close()
            ```
        """
        client = cls(credentials.get_client())
        client._block = credentials._block_label()
        client._url_from = credentials._base_url_source()
        client._key_env = credentials._key_env_var()
        return client

    def create_target_material(self, request: TargetMaterialRequest) -> TargetMaterial:
        """Create a target material (`POST /target-materials/`), with its layers if any.

        Args:
            request: The checked request.

        Returns:
            The created target material; what the reply left out is filled in from
            the request.

        Example:
            ```python
            from prefect_atomscale import (
                AtomscaleClient,
                AtomscaleCredentials,
                TargetMaterialRequest,
            )

            request = TargetMaterialRequest.build(
                sample_name="MgO test film", substrate="MgO", sample_metadata={"growth": "MBE"}
            )
            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                material = client.create_target_material(request)
                print(material.sample_metadata)  # {'growth': 'MBE'}
            ```
        """
        call = _create_target_material(request)
        return request.complete(self._parse(call, self._send(call), TargetMaterial.model_validate))

    def create_layer(self, request: LayerRequest) -> Layer:
        """Create one layer (`POST /target-materials/layers/`).

        Args:
            request: The checked request.

        Returns:
            The created layer.

        Example:
            ```python
            from prefect_atomscale import (
                AtomscaleClient,
                AtomscaleCredentials,
                LayerRequest,
                TargetMaterialRequest,
            )

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                material = client.create_target_material(
                    TargetMaterialRequest.build(sample_name="GaN film", substrate="Al2O3")
                )
                request = LayerRequest.build(
                    sample_id=material.sample_id,
                    layer_id=1,
                    composition_string="GaN",
                    orientation="0001",
                )
                layer = client.create_layer(request)
                print(layer.space_group, layer.mp_id)  # P6_3mc mp-804: filled in by the service
            ```
        """
        call = _create_layer(request)
        return self._parse(call, self._send(call), Layer.model_validate)

    def update_layer(self, request: LayerRequest) -> Layer:
        """Change the layer at the request's position (`PATCH /target-materials/layers/`).

        Args:
            request: The checked request; its `(sample_id, layer_id)` names the layer.

        Returns:
            The updated layer.

        Example:
            ```python
            from prefect_atomscale import (
                AtomscaleClient,
                AtomscaleCredentials,
                LayerRequest,
                TargetMaterialRequest,
            )

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                material = client.create_target_material(
                    TargetMaterialRequest.build(sample_name="AlN buffer", substrate="Al2O3")
                )
                first = LayerRequest.build(
                    sample_id=material.sample_id, layer_id=1, composition_string="GaN"
                )
                client.create_layer(first)
                fixed = LayerRequest.build(
                    sample_id=material.sample_id, layer_id=1, composition_string="AlN"
                )
                print(client.update_layer(fixed).composition_string)  # AlN
            ```
        """
        call = _update_layer(request)
        return self._parse(call, self._send(call), Layer.model_validate)

    def list_rows(self, purpose: str = "listing target materials") -> list[TargetMaterialRow]:
        """List every layer of the organisation, joined with its target material.

        Args:
            purpose: What the listing is for, quoted in errors.

        Returns:
            One row per layer (`GET /target-materials/`).

        Example:
            ```python
            from prefect_atomscale import AtomscaleClient, AtomscaleCredentials

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                rows = client.list_rows()
                names = {row.sample_name for row in rows}
                print(f"{len(rows)} layers in {len(names)} target materials")
            ```
        """
        call = _list_rows(purpose)
        return self._parse(call, self._send(call), _ROWS.validate_python)

    def find_layers(self, request: LayerRequest) -> list[Layer]:
        """Return the layers that already sit at the request's position, oldest first.

        Args:
            request: The layer whose `(sample_id, layer_id)` to look up.

        Returns:
            Existing layers at that position (normally none or one).

        Example:
            ```python
            from prefect_atomscale import (
                AtomscaleClient,
                AtomscaleCredentials,
                LayerRequest,
                TargetMaterialRequest,
            )

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                material = client.create_target_material(
                    TargetMaterialRequest.build(sample_name="TiO2 film", substrate="SrTiO3")
                )
                request = LayerRequest.build(
                    sample_id=material.sample_id, layer_id=1, composition_string="TiO2"
                )
                print(client.find_layers(request))  # []
                client.create_layer(request)
                print(len(client.find_layers(request)))  # 1
            ```
        """
        call = _list_rows(f"checking whether {request.describe()} already exists")
        return _layers_at(self._look_up(call, _at_position(request)), request)

    def find_target_materials(self, request: TargetMaterialRequest) -> list[TargetMaterial]:
        """Return listed target materials identical to the request, lowest `sample_id` first.

        Identical means same name, substrate and metadata. The list endpoint may omit
        target materials that have no layers yet, so an empty answer is not proof.

        Args:
            request: The target material to look for.

        Returns:
            Matching target materials.

        Example:
            ```python
            from prefect_atomscale import (
                AtomscaleClient,
                AtomscaleCredentials,
                LayerRequest,
                TargetMaterialRequest,
            )

            request = TargetMaterialRequest.build(sample_name="SRO electrode #9", substrate="MgO")
            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                if not client.find_target_materials(request):  # create it once
                    material = client.create_target_material(request)
                    client.create_layer(LayerRequest.build(
                        sample_id=material.sample_id, layer_id=1, composition_string="SrRuO3"
                    ))
                print(len(client.find_target_materials(request)))  # 1
            ```
        """
        call = _list_rows(f"checking whether {request.describe()} already exists")
        return _materials_like(self._look_up(call, _named(request)), request)

    def replace_layers(
        self, sample_id: int, requests: Sequence[LayerRequest], purpose: str
    ) -> None:
        """Replace a target material's whole stack (`POST /target-materials/{id}/layers`).

        Every existing layer of the target material is removed, in one transaction.

        Args:
            sample_id: The target material.
            requests: The new stack.
            purpose: What the call is for, quoted in errors.

        Example:
            ```python
            from prefect_atomscale import (
                AtomscaleClient,
                AtomscaleCredentials,
                LayerRequest,
                TargetMaterialRequest,
            )

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                material = client.create_target_material(
                    TargetMaterialRequest.build(sample_name="LSMO film", substrate="SrTiO3")
                )
                stack = [
                    LayerRequest.build(sample_id=material.sample_id, layer_id=position,
                                       composition_string=formula, orientation="001")
                    for position, formula in enumerate(["SrRuO3", "(La0.7Sr0.3)MnO3"], start=1)
                ]
                client.replace_layers(material.sample_id, stack, "writing the LSMO stack")
                layers = client.layers_of(material.sample_id, "reading the LSMO stack")
                print([layer.composition_string for layer in layers])
                # ['SrRuO3', '(La0.7Sr0.3)MnO3']
            ```
        """
        call = _replace_layers(sample_id, requests, purpose)
        self._decode(call, self._send(call))

    def layers_of(self, sample_id: int, purpose: str) -> list[Layer]:
        """Return the layers the service lists for one target material, oldest first.

        Args:
            sample_id: The target material.
            purpose: What the listing is for, quoted in errors.

        Returns:
            Its layers, in record-id order.

        Example:
            ```python
            from prefect_atomscale import (
                AtomscaleClient,
                AtomscaleCredentials,
                LayerRequest,
                TargetMaterialRequest,
            )

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                material = client.create_target_material(
                    TargetMaterialRequest.build(sample_name="STO buffer", substrate="SrTiO3")
                )
                client.create_layer(LayerRequest.build(
                    sample_id=material.sample_id, layer_id=1, composition_string="SrTiO3"
                ))
                layers = client.layers_of(material.sample_id, "reading the STO buffer")
                print([(layer.layer_id, layer.composition_string) for layer in layers])
                # [(1, 'SrTiO3')]
            ```
        """
        call = _list_rows(purpose)
        return _layers_of(self._look_up(call, _of_material(sample_id)), sample_id)

    def rows_of(self, sample_id: int, purpose: str) -> list[TargetMaterialRow]:
        """Return the rows the service lists for one target material, as listed.

        One row per layer, and rows without a layer where the service lists a target
        material that has none. No rows: the target material has no layers, or does
        not exist, or belongs to another organisation; the listing cannot tell which.

        Args:
            sample_id: The target material.
            purpose: What the listing is for, quoted in errors.

        Returns:
            Its rows, in the listing's order.
        """
        call = _list_rows(purpose)
        return self._look_up(call, _of_material(sample_id))

    def target_materials(
        self, name: str | None = None, purpose: str = "listing target materials"
    ) -> list[TargetMaterial]:
        """Return the listed target materials, all or those named `name`, by `sample_id`.

        Read from the listing (`GET /target-materials/`), which shows a target material
        through its layers: one without layers may be missing.

        Args:
            name: Only target materials of exactly this name; None for all.
            purpose: What the listing is for, quoted in errors.

        Returns:
            One per `sample_id`, lowest first.

        Example:
            ```python
            from prefect_atomscale import AtomscaleClient, AtomscaleCredentials

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                materials = client.target_materials()
                print(len({material.sample_id for material in materials}) == len(materials))
                # True
            ```
        """
        call = _list_rows(purpose)
        return _one_per_material(self._look_up(call, _first_of_each(name)))

    def update_target_material(
        self,
        sample_id: int,
        *,
        sample_name: str | None = None,
        substrate: str | None = None,
        sample_metadata: Mapping[str, Any] | None = None,
        owner: Mapping[str, Any] | str | None = None,
    ) -> TargetMaterial:
        """Change a target material's name, substrate or metadata (`PATCH /target-materials/{id}`).

        Only the fields given are sent; the others stay as they are. `sample_metadata`
        replaces the whole metadata. Checked as a create is checked, before anything is
        sent.

        Args:
            sample_id: The target material.
            sample_name: Its new name.
            substrate: Its new substrate.
            sample_metadata: Its new metadata, a JSON object.
            owner: With `sample_metadata`: the ownership mark to keep in the metadata
                (the tasks pass the one `create_target_material` writes); None for none.

        Returns:
            The target material as changed.

        Raises:
            AtomscaleValidationError: Nothing to change, or a field that cannot be sent.

        Example:
            ```python
            from prefect_atomscale import (
                AtomscaleClient,
                AtomscaleCredentials,
                TargetMaterialRequest,
            )

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                material = client.create_target_material(
                    TargetMaterialRequest.build(sample_name="ZnO draft", substrate="Al2O3")
                )
                renamed = client.update_target_material(material.sample_id, sample_name="ZnO #1")
                print(renamed.sample_name, renamed.substrate)  # ZnO #1 Al2O3
            ```
        """
        changes = target_material_changes(
            sample_id,
            sample_name=sample_name,
            substrate=substrate,
            sample_metadata=sample_metadata,
            owner=owner,
        )
        call = _update_target_material(sample_id, changes)
        return _updated(self._parse(call, self._send(call), TargetMaterial.model_validate), changes)

    def create_growth_run(
        self,
        name: str,
        *,
        sample_id: int | None = None,
        growth_instrument_id: int | None = None,
    ) -> GrowthRun:
        """Create a growth run (`POST /physical_samples/`), linked to a target material if given.

        One request, no look-up: a name that is taken answers 409. The
        `create_growth_run` task resolves that to the existing growth run.

        Args:
            name: Its name, unique in the organisation (ignoring case and surrounding
                whitespace); sent trimmed.
            sample_id: The target material it grows, if any.
            growth_instrument_id: The growth instrument's id, if any.

        Returns:
            The created growth run; what the reply left out is filled in from the request.

        Raises:
            AtomscaleValidationError: A blank or too long name, or an id that is not a
                whole number >= 1; nothing is sent.
            AtomscaleConflictError: The name is taken (409); its `detail` may hold the
                existing growth run's id (`physical_sample_id`).
            AtomscaleNotFoundError: No target material `sample_id` in this organisation.

        Example:
            ```python
            import uuid

            from prefect_atomscale import AtomscaleClient, AtomscaleCredentials

            name = f"Client example run {uuid.uuid4().hex[:8]}"
            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                run = client.create_growth_run(f"  {name} ")  # sent trimmed
                print(run.name == name, run.target_material_id)  # True None
            ```
        """
        name, sample_id, instrument = checked_create_inputs(name, sample_id, growth_instrument_id)
        call = _create_physical_sample(name, sample_id, instrument)
        return self._parse(call, self._send(call), _created_run(name, sample_id, instrument))

    def find_growth_runs(
        self, name: str | None = None, purpose: str = "listing growth runs"
    ) -> list[GrowthRun]:
        """List the organisation's growth runs (`GET /physical_samples/`), all or of one name.

        The listing is read as it arrives and only the growth runs asked for are decoded
        (see `_listing`), so memory does not grow with the organisation.

        Args:
            name: Only growth runs of this name (ignoring case and surrounding
                whitespace, as the service compares names); None for all.
            purpose: What the listing is for, quoted in errors.

        Returns:
            The growth runs, in the service's order.

        Example:
            ```python
            import uuid

            from prefect_atomscale import AtomscaleClient, AtomscaleCredentials

            name = f"Client example run {uuid.uuid4().hex[:8]}"
            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                client.create_growth_run(name)
                print(len(client.find_growth_runs(name.upper())))  # 1
            ```
        """
        call = _list_physical_samples(purpose)
        return self._look_up(call, _every_run() if name is None else _named_run(name))

    def get_growth_run(
        self, physical_sample_id: str, purpose: str = "reading a growth run"
    ) -> GrowthRun | None:
        """Read one growth run (`GET /physical_samples/?physical_sample_id=...`).

        Args:
            physical_sample_id: Its id, a UUID.
            purpose: What the read is for, quoted in errors.

        Returns:
            The growth run, or None when this organisation has none with that id.

        Raises:
            AtomscaleValidationError: `physical_sample_id` is not a UUID; nothing is sent.

        Example:
            ```python
            import uuid

            from prefect_atomscale import AtomscaleClient, AtomscaleCredentials

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                run = client.create_growth_run(f"Client example run {uuid.uuid4().hex[:8]}")
                print(client.get_growth_run(run.id).name == run.name)  # True
            ```
        """
        wanted, _ = _link_inputs(physical_sample_id, None)
        call = _list_physical_samples(purpose, wanted)
        try:
            found = self._parse(call, self._send(call), _with_id(wanted))
        except AtomscaleNotFoundError:
            return None
        return found[0] if found else None

    def link_target_material(self, physical_sample_id: str, sample_id: int | None) -> GrowthRun:
        """Link a growth run to a target material, or clear its link with None.

        `PATCH /physical_samples/{id}/target_material`. It sets the link to a given
        value, so sending it twice changes nothing more.

        Args:
            physical_sample_id: The growth run's id, a UUID.
            sample_id: The target material, or None to clear the link.

        Returns:
            The growth run as linked.

        Raises:
            AtomscaleValidationError: A malformed id; nothing is sent.
            AtomscaleNotFoundError: No such growth run or target material in this
                organisation.

        Example:
            ```python
            import uuid

            from prefect_atomscale import (
                AtomscaleClient,
                AtomscaleCredentials,
                TargetMaterialRequest,
            )

            with AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale")) as client:
                material = client.create_target_material(
                    TargetMaterialRequest.build(sample_name="STO homoepitaxy", substrate="SrTiO3")
                )
                run = client.create_growth_run(f"Client example run {uuid.uuid4().hex[:8]}")
                linked = client.link_target_material(run.id, material.sample_id)
                print(linked.target_material_id == material.sample_id)  # True
            ```
        """
        wanted, sample = _link_inputs(physical_sample_id, sample_id)
        call = _link_physical_sample(wanted, sample)
        return self._parse(call, self._send(call), _linked_run(sample))

    def close(self) -> None:
        """Close the underlying connection pool.

        Example:
            ```python
            from prefect_atomscale import AtomscaleClient, AtomscaleCredentials

            client = AtomscaleClient.from_credentials(AtomscaleCredentials.load("atomscale"))
            client.close()  # or use the client in a `with` block, which closes it
            ```
        """
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _Call) -> httpx.Response:
        try:
            return self._http.request(call.method, call.path, json=call.body, params=call.params)
        except httpx.HTTPError as exc:
            error = self._transport_error(call, exc)
        raise error  # outside the except block: see _parse

    def _look_up(self, call: _Call, rows: _Keeps[T]) -> list[T]:
        """Stream the listing and keep the rows `rows` needs (see `_listing`)."""
        reader, data, response = ListingReader(rows.keep), None, None
        failure: AtomscaleError | None = None
        try:
            with self._http.stream(call.method, call.path, params=call.params) as response:
                if not 200 <= response.status_code < 300:
                    response.read()
                    failure = self._error_for(call, response)
                else:
                    for chunk in response.iter_bytes():
                        reader.feed(chunk)
                    data = reader.result()
        except (httpx.HTTPError, ValueError) as exc:
            failure = self._streamed_failure(call, response, exc)
        if failure is not None or response is None:
            raise self._scrub(failure or self._not_json(call, 0, "no reply"))
        return self._validated(call, response.status_code, data, rows)


class AsyncAtomscaleClient(_Base):
    """An asynchronous client for the Atomscale target-material endpoints.

    The twin of `AtomscaleClient`: the same methods, awaited, and `aclose` for `close`.
    Use it in `async with`, or close it with `await client.aclose()`.

    Args:
        http: An `httpx.AsyncClient` from `AtomscaleCredentials.get_async_client()`.
        max_in_flight: Most requests sent at once (the rest wait in order); None for no
            limit beyond the pool's own. `from_credentials` sets it to the block's
            `max_connections`.

    Example:
        ```python
        import asyncio

        from prefect_atomscale import (
            AsyncAtomscaleClient,
            AtomscaleCredentials,
            TargetMaterialRequest,
        )

        async def main() -> None:
            credentials = await AtomscaleCredentials.aload("atomscale")
            async with AsyncAtomscaleClient.from_credentials(credentials) as client:
                requests = [
                    TargetMaterialRequest.build(sample_name=f"ZnO film {n}", substrate="Al2O3")
                    for n in (1, 2, 3)
                ]
                created = await asyncio.gather(*map(client.create_target_material, requests))
                print(sorted(material.sample_name for material in created))
                # ['ZnO film 1', 'ZnO film 2', 'ZnO film 3']

        asyncio.run(main())
        ```
    """

    def __init__(self, http: httpx.AsyncClient, *, max_in_flight: int | None = None):
        super().__init__(http)
        self._http = http
        # Requests beyond the pool's size wait here, in order, rather than in httpcore's
        # pool, which rescans every waiting request whenever a connection frees up: 200
        # gathered layers on 20 connections spent more time there than in the requests.
        self._in_flight = asyncio.Semaphore(max_in_flight) if max_in_flight else None

    @classmethod
    def from_credentials(cls, credentials: AtomscaleCredentials) -> Self:
        """Async twin of `AtomscaleClient.from_credentials`: same arguments, result and errors."""
        client = cls(credentials.get_async_client(), max_in_flight=credentials.max_connections)
        client._block = credentials._block_label()
        client._url_from = credentials._base_url_source()
        client._key_env = credentials._key_env_var()
        return client

    async def create_target_material(self, request: TargetMaterialRequest) -> TargetMaterial:
        """Async twin of `AtomscaleClient.create_target_material`: same arguments, result and errors."""  # noqa: E501
        call = _create_target_material(request)
        material = self._parse(call, await self._send(call), TargetMaterial.model_validate)
        return request.complete(material)

    async def create_layer(self, request: LayerRequest) -> Layer:
        """Async twin of `AtomscaleClient.create_layer`: same arguments, result and errors."""
        call = _create_layer(request)
        return self._parse(call, await self._send(call), Layer.model_validate)

    async def update_layer(self, request: LayerRequest) -> Layer:
        """Async twin of `AtomscaleClient.update_layer`: same arguments, result and errors."""
        call = _update_layer(request)
        return self._parse(call, await self._send(call), Layer.model_validate)

    async def list_rows(self, purpose: str = "listing target materials") -> list[TargetMaterialRow]:
        """Async twin of `AtomscaleClient.list_rows`: same arguments, result and errors."""
        call = _list_rows(purpose)
        return self._parse(call, await self._send(call), _ROWS.validate_python)

    async def find_layers(self, request: LayerRequest) -> list[Layer]:
        """Async twin of `AtomscaleClient.find_layers`: same arguments, result and errors."""
        call = _list_rows(f"checking whether {request.describe()} already exists")
        return _layers_at(await self._look_up(call, _at_position(request)), request)

    async def find_target_materials(self, request: TargetMaterialRequest) -> list[TargetMaterial]:
        """Async twin of `AtomscaleClient.find_target_materials`: same arguments, result and errors."""  # noqa: E501
        call = _list_rows(f"checking whether {request.describe()} already exists")
        return _materials_like(await self._look_up(call, _named(request)), request)

    async def replace_layers(
        self, sample_id: int, requests: Sequence[LayerRequest], purpose: str
    ) -> None:
        """Async twin of `AtomscaleClient.replace_layers`: same arguments, result and errors."""
        call = _replace_layers(sample_id, requests, purpose)
        self._decode(call, await self._send(call))

    async def layers_of(self, sample_id: int, purpose: str) -> list[Layer]:
        """Async twin of `AtomscaleClient.layers_of`: same arguments, result and errors."""
        call = _list_rows(purpose)
        return _layers_of(await self._look_up(call, _of_material(sample_id)), sample_id)

    async def rows_of(self, sample_id: int, purpose: str) -> list[TargetMaterialRow]:
        """Async twin of `AtomscaleClient.rows_of`: same arguments, result and errors."""
        call = _list_rows(purpose)
        return await self._look_up(call, _of_material(sample_id))

    async def target_materials(
        self, name: str | None = None, purpose: str = "listing target materials"
    ) -> list[TargetMaterial]:
        """Async twin of `AtomscaleClient.target_materials`: same arguments, result and errors."""
        call = _list_rows(purpose)
        return _one_per_material(await self._look_up(call, _first_of_each(name)))

    async def update_target_material(
        self,
        sample_id: int,
        *,
        sample_name: str | None = None,
        substrate: str | None = None,
        sample_metadata: Mapping[str, Any] | None = None,
        owner: Mapping[str, Any] | str | None = None,
    ) -> TargetMaterial:
        """Async twin of `AtomscaleClient.update_target_material`: same arguments, result and errors."""  # noqa: E501
        changes = target_material_changes(
            sample_id,
            sample_name=sample_name,
            substrate=substrate,
            sample_metadata=sample_metadata,
            owner=owner,
        )
        call = _update_target_material(sample_id, changes)
        reply = await self._send(call)
        return _updated(self._parse(call, reply, TargetMaterial.model_validate), changes)

    async def create_growth_run(
        self,
        name: str,
        *,
        sample_id: int | None = None,
        growth_instrument_id: int | None = None,
    ) -> GrowthRun:
        """Async twin of `AtomscaleClient.create_growth_run`: same arguments, result and errors."""
        name, sample_id, instrument = checked_create_inputs(name, sample_id, growth_instrument_id)
        call = _create_physical_sample(name, sample_id, instrument)
        reply = await self._send(call)
        return self._parse(call, reply, _created_run(name, sample_id, instrument))

    async def find_growth_runs(
        self, name: str | None = None, purpose: str = "listing growth runs"
    ) -> list[GrowthRun]:
        """Async twin of `AtomscaleClient.find_growth_runs`: same arguments, result and errors."""
        call = _list_physical_samples(purpose)
        return await self._look_up(call, _every_run() if name is None else _named_run(name))

    async def get_growth_run(
        self, physical_sample_id: str, purpose: str = "reading a growth run"
    ) -> GrowthRun | None:
        """Async twin of `AtomscaleClient.get_growth_run`: same arguments, result and errors."""
        wanted, _ = _link_inputs(physical_sample_id, None)
        call = _list_physical_samples(purpose, wanted)
        try:
            found = self._parse(call, await self._send(call), _with_id(wanted))
        except AtomscaleNotFoundError:
            return None
        return found[0] if found else None

    async def link_target_material(
        self, physical_sample_id: str, sample_id: int | None
    ) -> GrowthRun:
        """Async twin of `AtomscaleClient.link_target_material`: same arguments, result and errors."""  # noqa: E501
        wanted, sample = _link_inputs(physical_sample_id, sample_id)
        call = _link_physical_sample(wanted, sample)
        return self._parse(call, await self._send(call), _linked_run(sample))

    async def aclose(self) -> None:
        """Async twin of `AtomscaleClient.close`: same arguments, result and errors."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        if self._in_flight is None:
            return await self._request(call)
        async with self._in_flight:
            return await self._request(call)

    async def _request(self, call: _Call) -> httpx.Response:
        try:
            return await self._http.request(
                call.method, call.path, json=call.body, params=call.params
            )
        except httpx.HTTPError as exc:
            error = self._transport_error(call, exc)
        raise error  # outside the except block: see _parse

    async def _look_up(self, call: _Call, rows: _Keeps[T]) -> list[T]:
        """Async twin of the sync client's `_look_up`."""
        if self._in_flight is None:
            return await self._stream(call, rows)
        async with self._in_flight:
            return await self._stream(call, rows)

    async def _stream(self, call: _Call, rows: _Keeps[T]) -> list[T]:
        reader, data, response = ListingReader(rows.keep), None, None
        failure: AtomscaleError | None = None
        try:
            async with self._http.stream(call.method, call.path, params=call.params) as response:
                if not 200 <= response.status_code < 300:
                    await response.aread()
                    failure = self._error_for(call, response)
                else:
                    async for chunk in response.aiter_bytes():
                        reader.feed(chunk)
                    data = reader.result()
        except (httpx.HTTPError, ValueError) as exc:
            failure = self._streamed_failure(call, response, exc)
        if failure is not None or response is None:
            raise self._scrub(failure or self._not_json(call, 0, "no reply"))
        return self._validated(call, response.status_code, data, rows)


def _layers_at(rows: list[TargetMaterialRow], request: LayerRequest) -> list[Layer]:
    found = [
        layer
        for row in rows
        if row.sample_id == request.sample_id and row.layer_id == request.layer_id
        for layer in [row.as_layer()]
        if layer is not None
    ]
    return sorted(found, key=lambda layer: layer.id)


def _layers_of(rows: list[TargetMaterialRow], sample_id: int) -> list[Layer]:
    found = [
        layer
        for row in rows
        if row.sample_id == sample_id
        for layer in [row.as_layer()]
        if layer is not None
    ]
    return sorted(found, key=lambda layer: layer.id)


def _materials_like(
    rows: list[TargetMaterialRow], request: TargetMaterialRequest
) -> list[TargetMaterial]:
    found = {
        material.sample_id: material
        for row in rows
        for material in [row.as_target_material()]
        if material is not None and request.matches(material)
    }
    return [found[sample_id] for sample_id in sorted(found)]


def _one_per_material(rows: list[TargetMaterialRow]) -> list[TargetMaterial]:
    found = {
        material.sample_id: material
        for row in reversed(rows)  # the first row of each material wins
        for material in [row.as_target_material()]
        if material is not None
    }
    return [found[sample_id] for sample_id in sorted(found)]


def _detail(response: httpx.Response) -> Any:
    """Return the `detail` of a FastAPI error envelope, or None if there is none."""
    try:
        data = response.json()
    except ValueError:
        return None
    if isinstance(data, dict) and "detail" in data:
        return data["detail"]
    return data


def _detail_text(detail: Any) -> str:
    """Render a `detail` (string, object, or FastAPI's list of errors) as one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
        parts = []
        for item in detail:
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            msg = item.get("msg", json.dumps(item))
            parts.append(f"{loc}: {msg}" if loc else str(msg))
        return "; ".join(parts)
    text = json.dumps(detail, default=str)
    return text if len(text) <= 500 else text[:500] + "..."


def _describe_body(response: httpx.Response) -> str:
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    if kind == "text/html":
        return f"an HTML page of {len(response.content)} bytes, likely from a proxy or gateway"
    if not response.content:
        return "an empty body"
    return f"a {kind} body of {len(response.content)} bytes"


def _retry_after(response: httpx.Response) -> float | None:
    """Read `Retry-After` as seconds: a number, or an HTTP date (RFC 9110 allows both)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
