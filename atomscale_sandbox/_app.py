"""The sandbox's HTTP API: the Atomscale target-material and physical-sample routes.

Routes, bodies and errors follow what is known of api.atomscale.ai (see the project's
notes on the API); where the real behaviour is unknown the app does what is worst for a
client, e.g. a repeated layer POST silently stores a second row. One deliberate
difference from stock FastAPI (and so, presumably, from the real service): a body that
is not valid JSON for any reason gets 422, where FastAPI answers some (not UTF-8, huge
integer literals, very deep nesting) with a bare 400.

The endpoints and their dependencies are `async def` and call the store directly on the
event loop. A store call is a few tens of microseconds of SQLite under one lock; sync
endpoints would hand every request to the threadpool and back, which costs more than
the call and buys no parallelism, since the lock serialises the calls anyway. Measured
on 2 cores (`benchmarks/sandbox_load.py`): about 0.26 ms of server CPU per layer POST
served by h11, 0.2 ms by httptools; sync endpoints took 0.8 ms.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints'
# annotations at runtime, and those naming the closure's dependencies (`Reader`,
# `Writer`) must be real objects, not strings it cannot resolve.

import functools
import hashlib
import hmac
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atomscale_chemistry.formula import parse_formula
from atomscale_sandbox._config import ApiKeyGrant, SandboxConfig
from atomscale_sandbox._connections import ConnectionRegistry
from atomscale_sandbox._faults import FaultInjectionMiddleware
from atomscale_sandbox._materials import match_material
from atomscale_sandbox._schemas import (
    MAX_JSON_DEPTH,
    MAX_RECORD_ID,
    ErrorReply,
    Layer,
    LayerFields,
    LayerPatch,
    PhysicalSample,
    PhysicalSampleCreate,
    PhysicalSampleListed,
    PhysicalSamplePatch,
    TargetMaterial,
    TargetMaterialCreate,
    TargetMaterialLink,
    TargetMaterialPatch,
    TargetMaterialRow,
)
from atomscale_sandbox._stats import RequestStats, RequestStatsMiddleware
from atomscale_sandbox._store import (
    LayerIdTakenError,
    LayerValues,
    PhysicalSampleNameTakenError,
    PhysicalSampleNotFoundError,
    SampleNotFoundError,
    SandboxStore,
)

__all__ = ["SandboxApp", "create_app"]

_DESCRIPTION = """\
A local stand-in for the Atomscale target-materials and physical-samples API
(api.atomscale.ai), for demos and tests. It speaks the same routes and error envelope,
stores records in SQLite, and can inject faults (see the `atomscale_sandbox` package).

Every route except this documentation and `/health` needs an `X-API-KEY` header. Each
key belongs to one organisation, which sees only its own records.
"""


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorReply, "description": "Missing or unknown API key."},
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    403: {"model": ErrorReply, "description": "The API key is read-only."},
    413: {"model": ErrorReply, "description": "The request body is too large."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorReply, "description": "No such target material (or layer) here."},
}
_ID_TAKEN: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorReply, "description": "An explicit layer `id` is already taken."},
}

_PHYSICAL_SAMPLE_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorReply, "description": "No such physical sample here."},
}
_LINK_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorReply,
        "description": "No such physical sample here, or no such target material here; "
        "`detail` says which.",
    },
}
_NAME_TAKEN: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorReply,
        "description": "The organisation has a physical sample of this name (trimmed, "
        "ignoring case). `detail` is `{message, physical_sample_id}` with the existing "
        "sample's id, or only the message as a string (see `physical_sample_conflict`).",
    },
}

SampleIdPath = Annotated[
    int, Path(ge=1, le=MAX_RECORD_ID, description="ID of the target material.")
]
PhysicalSampleIdPath = Annotated[UUID, Path(description="UUID of the physical sample.")]


class _Keyring:
    """Finds the grant of a presented API key without leaking which key it resembled."""

    def __init__(self, grants: dict[str, ApiKeyGrant]) -> None:
        # Comparing fixed-length digests keeps even the key lengths out of the timing.
        self._digests = [
            (hashlib.sha256(key.encode()).digest(), grant) for key, grant in grants.items()
        ]

    def grant_for(self, presented: str | None) -> ApiKeyGrant | None:
        if not presented:
            return None
        # Starlette decodes header bytes as latin-1, so this gives back the bytes sent.
        digest = hashlib.sha256(presented.encode("latin-1")).digest()
        found = None
        for key_digest, grant in self._digests:
            # Every key is compared, with no early exit on a match.
            if hmac.compare_digest(digest, key_digest):
                found = grant
        return found


class _BodySizeLimit:
    """Refuses request bodies over `max_bytes` with 413.

    The bytes are counted as they arrive, which covers a declared Content-Length (the
    HTTP parser holds the client to it) and a chunked body alike; up to the limit they
    are kept and handed on to the app. An oversized body is still read to its end, and
    dropped, before the 413 goes out: a server that replies and closes while the client
    is still sending makes the client see a broken connection instead of the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks = []
        size = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_bytes:
                chunks.append(chunk)
            more_body = message.get("more_body", False)
        if size > self.max_bytes:
            reply = JSONResponse(
                {"detail": f"Request body is {size} bytes; the limit is {self.max_bytes} bytes"},
                status_code=413,
            )
            await reply(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def receive_read_body() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, receive_read_body, send)


class SandboxApp(FastAPI):
    """The sandbox's FastAPI app, with the state its routes share.

    Fault injection and request counting wrap the whole app, outside FastAPI's own
    error handling, so that they also see the replies to requests that failed.

    Attributes:
        sandbox_config: The configuration it was created with.
        store: Where its records live; opened by `create_app`, closed when the app's
            lifespan ends.
        stats: Its request counters.
        connections: The serving connections, if served by `run_sandbox`.
        physical_sample_conflict: The live shape of the 409 for a taken physical-sample
            name, `"object"` or `"string"` (see `SandboxConfig.physical_sample_conflict`,
            its starting value); set it through `SandboxHandle.physical_sample_conflict`,
            which checks the value, and the next request answers in the new shape.

    Example:
        ```python
        from atomscale_sandbox import SandboxConfig, create_app

        app = create_app(SandboxConfig(api_keys={"key-a": "lab-a"}))
        for path in sorted(app.openapi()["paths"]):
            print(path)
        ```
    """

    sandbox_config: SandboxConfig
    store: SandboxStore
    stats: RequestStats
    connections: ConnectionRegistry
    physical_sample_conflict: Literal["object", "string"]

    def build_middleware_stack(self) -> ASGIApp:
        """Wrap FastAPI's middleware stack in fault injection and request counting."""
        inner = _BodySizeLimit(super().build_middleware_stack(), self.sandbox_config.max_body_bytes)
        faulty = FaultInjectionMiddleware(
            inner, self.sandbox_config.faults, self.stats, self.connections
        )
        return RequestStatsMiddleware(faulty, self.stats, self.routes)


def _json_safe(value: Any, depth: int = 0) -> Any:
    """`value` made fit for a JSON reply, as far as a 422 needs to echo it.

    Cut below `MAX_JSON_DEPTH` levels, and with what strict UTF-8 JSON cannot carry
    (NaN, Infinity, lone surrogates) spelled out as text.
    """
    if depth > MAX_JSON_DEPTH:
        return "..."
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list | tuple):
        return [_json_safe(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item, depth + 1) for key, item in value.items()}
    return value


async def _validation_error_reply(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own handler, except that it cannot fail. A 422 echoes the offending
    # input, which can be NaN or a lone surrogate (Python's JSON parser lets both
    # through, JSON rendering does not) or nested deeper than the encoders recurse.
    assert isinstance(exc, RequestValidationError)
    detail = _json_safe(jsonable_encoder(_json_safe(exc.errors())))
    return JSONResponse({"detail": detail}, status_code=422)


async def _http_error_reply(request: Request, exc: Exception) -> Response:
    # FastAPI answers a body that Python's JSON parser refuses for a reason other than
    # syntax with a bare 400 "There was an error parsing the body": bytes that are not
    # UTF-8 (which JSON must be), an integer literal of more than 4,300 digits, arrays
    # nested deeper than the parser recurses. Such a body is malformed JSON all the
    # same, so it gets the 422 that FastAPI gives a syntax error, in the same shape.
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    if exc.status_code != 400 or not isinstance(cause, ValueError | RecursionError):
        return await http_exception_handler(request, exc)
    loc: tuple[str | int, ...] = ("body",)
    if isinstance(cause, UnicodeDecodeError):
        loc, reason = ("body", cause.start), "Invalid UTF-8"
    elif isinstance(cause, RecursionError):
        reason = "Nested too deeply"
    else:
        reason = str(cause).split(";", 1)[0]
    error = {
        "type": "json_invalid",
        "loc": loc,
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": reason},
    }
    return await _validation_error_reply(request, RequestValidationError([error]))


@functools.lru_cache(maxsize=4096)
def _derived_element_dict(formula: str) -> tuple[tuple[str, int | float], ...]:
    # Cached as a tuple so that no caller can change the cached value.
    return tuple(parse_formula(formula).items())


def _resolve(layer: LayerFields | LayerPatch, loc: tuple[str | int, ...]) -> dict[str, Any]:
    """The layer's chemistry fields with the omitted ones filled in as the service does.

    `element_dict` is derived from `composition_string` when left out, and
    `space_group` and `mp_id` come from the built-in materials table when left out
    and the composition is a known material.
    """
    element_dict = layer.element_dict
    if element_dict is None and layer.composition_string is not None:
        try:
            element_dict = dict(_derived_element_dict(layer.composition_string))
        except ValueError as exc:
            message = str(exc).splitlines()[0]
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": (*loc, "composition_string"),
                        "msg": f"Value error, {message}",
                        "input": layer.composition_string,
                        "ctx": {"error": message},
                    }
                ]
            ) from exc
    known = match_material(element_dict) if element_dict else None
    return {
        "composition_string": layer.composition_string,
        "element_dict": element_dict,
        "space_group": layer.space_group
        if layer.space_group is not None or known is None
        else known.space_group,
        "mp_id": layer.mp_id if layer.mp_id is not None or known is None else known.mp_id,
    }


def _layer_values(
    layer: LayerFields, loc: tuple[str | int, ...], sample_id: int | None
) -> LayerValues:
    return LayerValues(
        layer_id=layer.layer_id,
        sample_id=sample_id,
        orientation=layer.orientation,
        id=layer.id,
        **_resolve(layer, loc),
    )


def _stack(
    layers: Sequence[LayerFields], loc: tuple[str | int, ...], sample_id: int | None
) -> list[LayerValues]:
    return [_layer_values(layer, (*loc, index), sample_id) for index, layer in enumerate(layers)]


def create_app(config: SandboxConfig | None = None) -> SandboxApp:
    """Build the sandbox API app for `config`, opening its store.

    Serve it with `run_sandbox`, which also makes the connection-dropping faults work;
    any ASGI server will do for the rest.

    Args:
        config: What to serve; a default `SandboxConfig` (one random key) if `None`.

    Returns:
        The app; its store is open until its lifespan ends.

    Example:
        ```python
        from fastapi.testclient import TestClient

        from atomscale_sandbox import SandboxConfig, create_app

        app = create_app(SandboxConfig(api_keys={"key-a": "lab-a"}))
        with TestClient(app) as client:
            reply = client.get("/target-materials/", headers={"X-API-KEY": "key-a"})
            print(reply.json())  # []
        ```
    """
    config = config or SandboxConfig()
    store = SandboxStore(config.db_path)

    @asynccontextmanager
    async def close_store(app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = SandboxApp(
        title="Atomscale API sandbox",
        version="1.0",
        description=_DESCRIPTION,
        lifespan=close_store,
        exception_handlers={
            RequestValidationError: _validation_error_reply,
            StarletteHTTPException: _http_error_reply,
        },
    )
    app.sandbox_config = config
    app.store = store
    app.connections = ConnectionRegistry()
    app.stats = RequestStats(app.connections)
    app.physical_sample_conflict = config.physical_sample_conflict

    keyring = _Keyring(config.grants)
    api_key_header = APIKeyHeader(
        name="X-API-KEY",
        auto_error=False,
        description="An API key of this sandbox; each key acts for one organisation.",
    )

    def authenticate(key: str | None) -> ApiKeyGrant:
        grant = keyring.grant_for(key)
        if grant is None:
            raise HTTPException(
                status_code=401,
                detail="Missing or unknown API key: send a valid key in the X-API-KEY header",
            )
        return grant

    async def reader(key: Annotated[str | None, Security(api_key_header)]) -> ApiKeyGrant:
        return authenticate(key)

    # Not a dependency on `reader`: each level of dependencies costs FastAPI more per
    # request than the check itself.
    async def writer(key: Annotated[str | None, Security(api_key_header)]) -> ApiKeyGrant:
        grant = authenticate(key)
        if grant.read_only:
            raise HTTPException(
                status_code=403, detail="This API key is read-only; use a key that may write"
            )
        return grant

    Reader = Annotated[ApiKeyGrant, Depends(reader)]
    Writer = Annotated[ApiKeyGrant, Depends(writer)]

    def not_found(exc: SampleNotFoundError) -> HTTPException:
        return HTTPException(status_code=404, detail=str(exc))

    def id_taken(exc: LayerIdTakenError) -> HTTPException:
        return HTTPException(status_code=409, detail=str(exc))

    def name_taken(exc: PhysicalSampleNameTakenError) -> HTTPException:
        # Read per request: the shape is a live setting that tests switch.
        if app.physical_sample_conflict == "string":
            return HTTPException(status_code=409, detail=str(exc))
        return HTTPException(
            status_code=409,
            detail={"message": str(exc), "physical_sample_id": exc.physical_sample_id},
        )

    def owner_name(grant: ApiKeyGrant) -> str:
        # The sandbox knows people only by the `user` of their key.
        return grant.organisation if grant.user is None else grant.user

    @app.get("/health", tags=["sandbox"], summary="Liveness check (no API key needed)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/target-materials/",
        response_model=TargetMaterial,
        status_code=201,
        tags=["target materials"],
        summary="Create a target material, optionally with its layers",
        responses={**_WRITE_ERRORS, **_ID_TAKEN},
    )
    async def create_target_material(body: TargetMaterialCreate, grant: Writer) -> dict[str, Any]:
        layers = _stack(body.layers or [], ("body", "layers"), None)
        try:
            return store.create_target_material(
                grant.organisation,
                body.sample.sample_name,
                body.sample.substrate,
                body.sample.sample_metadata,
                layers,
                user_id=grant.user_id,
            )
        except LayerIdTakenError as exc:
            raise id_taken(exc) from exc

    @app.get(
        "/target-materials/",
        response_model=list[TargetMaterialRow],
        tags=["target materials"],
        summary="List the organisation's target materials, one row per layer",
        responses=_AUTH_ERRORS,
    )
    async def list_target_materials(grant: Reader) -> Response:
        # The rows come from our own tables, already in the documented shape: SQLite
        # encodes them, and FastAPI does not validate each one again against the
        # response model (that took most of the time of a 10,000-row listing).
        body = store.list_rows_json(grant.organisation, include_empty=config.list_empty_materials)
        return Response(body, media_type="application/json")

    @app.patch(
        "/target-materials/{sample_id}",
        response_model=TargetMaterial,
        tags=["target materials"],
        summary="Change a target material's name, substrate or metadata",
        responses={**_WRITE_ERRORS, **_NOT_FOUND},
    )
    async def update_target_material(
        sample_id: SampleIdPath, body: TargetMaterialPatch, grant: Writer
    ) -> dict[str, Any]:
        changes = body.model_dump(include=body.model_fields_set)
        updated = store.update_target_material(
            grant.organisation, sample_id, changes, user_id=grant.user_id
        )
        if updated is None:
            raise not_found(SampleNotFoundError(sample_id))
        return updated

    @app.post(
        "/target-materials/layers/",
        response_model=Layer,
        tags=["layers"],
        summary="Add one layer to a target material's stack",
        description="A second layer at the same `(sample_id, layer_id)` is stored as "
        "another row, not merged.",
        responses={**_WRITE_ERRORS, **_NOT_FOUND, **_ID_TAKEN},
    )
    async def create_layer(body: LayerFields, grant: Writer) -> dict[str, Any]:
        layer = _layer_values(body, ("body",), body.sample_id)
        try:
            return store.add_layer(grant.organisation, layer, user_id=grant.user_id)
        except SampleNotFoundError as exc:
            raise not_found(exc) from exc
        except LayerIdTakenError as exc:
            raise id_taken(exc) from exc

    @app.patch(
        "/target-materials/layers/",
        response_model=Layer,
        tags=["layers"],
        summary="Change a layer, found by (sample_id, layer_id)",
        responses={**_WRITE_ERRORS, **_NOT_FOUND},
    )
    async def update_layer(body: LayerPatch, grant: Writer) -> dict[str, Any]:
        changes = body.model_dump(include=body.model_fields_set - {"sample_id", "layer_id"})
        if body.model_fields_set & {"composition_string", "element_dict"}:
            derived = _resolve(body, ("body",))
            changes |= {
                field: derived[field]
                for field in ("element_dict", "space_group", "mp_id")
                if field not in body.model_fields_set
            }
        updated = store.update_layer(
            grant.organisation, body.sample_id, body.layer_id, changes, user_id=grant.user_id
        )
        if updated is None:
            raise HTTPException(
                status_code=404,
                detail=f"No layer {body.layer_id} in target material {body.sample_id}",
            )
        return updated

    @app.post(
        "/target-materials/{sample_id}/layers",
        response_model=dict[str, Any],
        tags=["layers"],
        summary="Replace the whole layer stack of a target material",
        description="Deletes the target material's layers and stores these, in one "
        "transaction. The layers' own `sample_id` is ignored. Replies `{}`.",
        responses={**_WRITE_ERRORS, **_NOT_FOUND, **_ID_TAKEN},
    )
    async def replace_layers(
        sample_id: SampleIdPath, body: list[LayerFields], grant: Writer
    ) -> dict[str, Any]:
        layers = _stack(body, ("body",), sample_id)
        try:
            store.replace_layers(grant.organisation, sample_id, layers, user_id=grant.user_id)
        except SampleNotFoundError as exc:
            raise not_found(exc) from exc
        except LayerIdTakenError as exc:
            raise id_taken(exc) from exc
        return {}

    @app.post(
        "/physical_samples/",
        response_model=PhysicalSample,
        status_code=201,
        tags=["physical samples"],
        summary="Create a physical sample (growth run) with a name new to the organisation",
        responses={**_WRITE_ERRORS, **_NOT_FOUND, **_NAME_TAKEN},
    )
    async def create_physical_sample(body: PhysicalSampleCreate, grant: Writer) -> dict[str, Any]:
        try:
            return store.create_physical_sample(
                grant.organisation,
                body.name,
                growth_instrument_id=body.growth_instrument_id,
                sample_id=body.sample_id,
                detail_notes_id=body.detail_notes_id,
                user_id=grant.user_id,
                owner_name=owner_name(grant),
            )
        except SampleNotFoundError as exc:
            raise not_found(exc) from exc
        except PhysicalSampleNameTakenError as exc:
            raise name_taken(exc) from exc

    @app.get(
        "/physical_samples/",
        response_model=list[PhysicalSampleListed],
        tags=["physical samples"],
        summary="List the organisation's physical samples, oldest first",
        responses=_AUTH_ERRORS,
    )
    async def list_physical_samples(
        grant: Reader,
        physical_sample_id: Annotated[
            UUID | None,
            Query(description="Only this physical sample: a list of one, or empty."),
        ] = None,
        has_data_item: Annotated[
            bool | None,
            Query(
                description="Only samples with (true) or without (false) data items. The "
                "sandbox stores no data items, so true lists none."
            ),
        ] = None,
    ) -> list[dict[str, Any]]:
        return store.list_physical_samples(
            grant.organisation,
            physical_sample_id=None if physical_sample_id is None else str(physical_sample_id),
            has_data_item=has_data_item,
        )

    @app.patch(
        "/physical_samples/{physical_sample_id}/target_material",
        response_model=PhysicalSample,
        tags=["physical samples"],
        summary="Link a physical sample to a target material, or unlink it (null)",
        responses={**_WRITE_ERRORS, **_LINK_NOT_FOUND},
    )
    async def link_target_material(
        physical_sample_id: PhysicalSampleIdPath, body: TargetMaterialLink, grant: Writer
    ) -> dict[str, Any]:
        try:
            return store.link_target_material(
                grant.organisation,
                str(physical_sample_id),
                body.target_material_id,
                user_id=grant.user_id,
            )
        except (PhysicalSampleNotFoundError, SampleNotFoundError) as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc

    @app.patch(
        "/physical_samples/{physical_sample_id}",
        response_model=PhysicalSample,
        tags=["physical samples"],
        summary="Change a physical sample's name, instrument, notes or metadata",
        responses={**_WRITE_ERRORS, **_PHYSICAL_SAMPLE_NOT_FOUND, **_NAME_TAKEN},
    )
    async def update_physical_sample(
        physical_sample_id: PhysicalSampleIdPath, body: PhysicalSamplePatch, grant: Writer
    ) -> dict[str, Any]:
        changes = body.model_dump(include=body.model_fields_set)
        try:
            return store.update_physical_sample(
                grant.organisation, str(physical_sample_id), changes, user_id=grant.user_id
            )
        except PhysicalSampleNotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except PhysicalSampleNameTakenError as exc:
            raise name_taken(exc) from exc

    return app
