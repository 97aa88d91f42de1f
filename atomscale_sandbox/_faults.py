"""Fault injection: make chosen requests fail the ways a real service behind a proxy fails.

Two sources of faults, both limited to requests whose method is in `methods` (writes by
default) and, if `paths` is set, whose path matches one of its patterns:

- a queue (`FaultConfig.queue`): the next matching requests fail with exactly these
  kinds, in order; tests use it for exact control;
- chance (`rate`, `kinds`, `seed`): once the queue is empty, each matching request fails
  with probability `rate`, with a kind drawn from `kinds`, from a seeded generator so
  that the same sequence of requests meets the same faults.

The kinds (`FaultKind`) differ in what the client sees and, crucially for retries,
whether the write happened: `503`, `429`, `reset` and `502_html` fail before the request
is processed (nothing is written); the `*_after_commit` kinds let the write commit and
then lose, replace or delay the reply, the case where a blind retry duplicates data;
`commit_late` commits the write only after the client has given up on it (a busy service
still working through its queue), the case where even a retry that looks first finds
nothing yet; `slow_before_commit` holds a write back before it commits, so that other
writers look meanwhile. Neither is drawn by chance unless named: a write that may land
at any later time can defeat any client, and tests choose such delays on purpose.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from enum import Enum, StrEnum
from fnmatch import fnmatchcase

from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atomscale_sandbox._connections import ConnectionRegistry
from atomscale_sandbox._stats import RequestStats
from atomscale_sandbox._store import WRITE_NOTE, WriteNote

__all__ = ["CHANCE_KINDS", "FaultConfig", "FaultInjectionMiddleware", "FaultKind"]


class FaultKind(StrEnum):
    """The ways an injected fault can fail a request; the values are the names to use.

    Attributes:
        UNAVAILABLE: `503` with a JSON `detail`, before processing.
        RATE_LIMITED: `429` with a `Retry-After` header, before processing.
        RESET: The connection is reset (TCP RST) with no reply, before processing.
        BAD_GATEWAY_HTML: `502` with a proxy's HTML error page, before processing.
        DROP_AFTER_COMMIT: The write commits, then the connection closes with no reply.
        ERROR_AFTER_COMMIT: The write commits, then `500 {"detail": "Internal Server
            Error"}`.
        SLOW_AFTER_COMMIT: The write commits, then the reply waits `slow_seconds` (or
            until the client gives up and disconnects).
        COMMIT_LATE: No reply; the write commits `late_commit_seconds` after the client
            gave up (disconnected), or after `slow_seconds` if it waits that long (the
            connection is then closed first).
        SLOW_BEFORE_COMMIT: The write waits `slow_seconds` before it is processed, then
            commits and is answered as usual: a busy service.

    Example:
        ```python
        from atomscale_sandbox import FaultKind

        print(FaultKind("drop_after_commit").commits)  # True
        ```
    """

    UNAVAILABLE = "503"
    RATE_LIMITED = "429"
    RESET = "reset"
    BAD_GATEWAY_HTML = "502_html"
    DROP_AFTER_COMMIT = "drop_after_commit"
    ERROR_AFTER_COMMIT = "500_after_commit"
    SLOW_AFTER_COMMIT = "slow_after_commit"
    COMMIT_LATE = "commit_late"
    SLOW_BEFORE_COMMIT = "slow_before_commit"

    @property
    def commits(self) -> bool:
        """Whether a write still happens when this fault hits it.

        Example:
            ```python
            from atomscale_sandbox import FaultKind

            print(FaultKind.RESET.commits)  # False
            ```
        """
        return self.value.endswith("_after_commit") or self in _DELAYED_COMMITS


_DELAYED_COMMITS = frozenset({FaultKind.COMMIT_LATE, FaultKind.SLOW_BEFORE_COMMIT})

CHANCE_KINDS = tuple(kind for kind in FaultKind if kind not in _DELAYED_COMMITS)
"""The kinds drawn by chance unless `kinds` names others: all but the delayed commits."""


def _kind(name: str) -> FaultKind:
    try:
        return FaultKind(name)
    except ValueError:
        known = ", ".join(kind.value for kind in FaultKind)
        raise ValueError(f"unknown fault kind {name!r}; known kinds: {known}") from None


class _Unchanged(Enum):
    KEEP = "keep"


_UNCHANGED = _Unchanged.KEEP
DEFAULT_METHODS = frozenset({"POST", "PATCH"})


class FaultConfig:
    """Which requests fail and how; thread-safe, and changeable while the server runs.

    Args:
        rate: Probability in [0, 1] that a matching request fails (once the queue is
            empty).
        kinds: Kinds to draw from by chance; all kinds by default.
        seed: Seed of the generator that decides which requests fail, for repeatable
            runs.
        methods: HTTP methods that faults apply to; POST and PATCH by default.
        paths: Shell-style patterns (`fnmatch`, case-sensitive) of request paths that
            faults apply to, e.g. `"/target-materials/*/layers"`; `None` for all paths.
        retry_after_seconds: The `Retry-After` value of a `429`.
        slow_seconds: How long `slow_after_commit` holds the reply back.
        late_commit_seconds: How long after the client gave up `commit_late` commits.

    Example:
        ```python
        from atomscale_sandbox import FaultConfig

        faults = FaultConfig(rate=0.2, kinds={"503", "reset"}, seed=7)
        faults.queue(["500_after_commit"])  # the next write fails this way for sure
        print(faults.pick("POST", "/target-materials/layers/"))  # 500_after_commit
        ```
    """

    def __init__(
        self,
        *,
        rate: float = 0.0,
        kinds: Iterable[str] = CHANCE_KINDS,
        seed: int | None = 0,
        methods: Iterable[str] = DEFAULT_METHODS,
        paths: Iterable[str] | None = None,
        retry_after_seconds: int = 1,
        slow_seconds: float = 2.0,
        late_commit_seconds: float = 0.5,
    ) -> None:
        self._lock = threading.Lock()
        self._pending: deque[FaultKind] = deque()
        self._rate = 0.0
        self._kinds: tuple[FaultKind, ...] = ()
        self._seed = seed
        # Not for secrets: a seeded, repeatable choice of which requests fail.
        self._random = random.Random(seed)  # noqa: S311
        self._methods = DEFAULT_METHODS
        self._paths: frozenset[str] | None = None
        self._retry_after_seconds = 1
        self._slow_seconds = 2.0
        self._late_commit_seconds = 0.5
        self.set(
            rate=rate,
            kinds=kinds,
            methods=methods,
            paths=paths,
            retry_after_seconds=retry_after_seconds,
            slow_seconds=slow_seconds,
            late_commit_seconds=late_commit_seconds,
        )

    def set(
        self,
        *,
        rate: float | _Unchanged = _UNCHANGED,
        kinds: Iterable[str] | _Unchanged = _UNCHANGED,
        seed: int | _Unchanged | None = _UNCHANGED,
        methods: Iterable[str] | _Unchanged = _UNCHANGED,
        paths: Iterable[str] | _Unchanged | None = _UNCHANGED,
        retry_after_seconds: int | _Unchanged = _UNCHANGED,
        slow_seconds: float | _Unchanged = _UNCHANGED,
        late_commit_seconds: float | _Unchanged = _UNCHANGED,
    ) -> None:
        """Change several settings at once; arguments left out keep their value.

        Giving `seed` restarts the generator, so what follows repeats exactly.

        Args:
            rate: See the class.
            kinds: See the class.
            seed: See the class.
            methods: See the class.
            paths: See the class.
            retry_after_seconds: See the class.
            slow_seconds: See the class.
            late_commit_seconds: See the class.

        Raises:
            ValueError: A value out of range or an unknown fault kind; nothing changes.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig()
            faults.set(rate=0.5, kinds={"429"}, seed=1, methods={"POST", "PATCH", "GET"})
            ```
        """
        # Validate everything before changing anything, so a bad call changes nothing.
        if not isinstance(rate, _Unchanged) and not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be between 0 and 1, got {rate}")
        new_kinds = None if isinstance(kinds, _Unchanged) else {_kind(name) for name in kinds}
        new_methods = (
            None
            if isinstance(methods, _Unchanged)
            else frozenset(method.upper() for method in methods)
        )
        if not isinstance(retry_after_seconds, _Unchanged) and retry_after_seconds < 0:
            raise ValueError(f"retry_after_seconds must be >= 0, got {retry_after_seconds}")
        if not isinstance(slow_seconds, _Unchanged) and slow_seconds < 0:
            raise ValueError(f"slow_seconds must be >= 0, got {slow_seconds}")
        if not isinstance(late_commit_seconds, _Unchanged) and late_commit_seconds < 0:
            raise ValueError(f"late_commit_seconds must be >= 0, got {late_commit_seconds}")
        with self._lock:
            if not isinstance(rate, _Unchanged):
                self._rate = float(rate)
            if new_kinds is not None:
                # Sorted so that a seed picks the same kinds whatever the set's order.
                self._kinds = tuple(sorted(new_kinds))
            if not isinstance(seed, _Unchanged):
                self._seed = seed
                self._random = random.Random(seed)  # noqa: S311
            if new_methods is not None:
                self._methods = new_methods
            if not isinstance(paths, _Unchanged):
                self._paths = None if paths is None else frozenset(paths)
            if not isinstance(retry_after_seconds, _Unchanged):
                self._retry_after_seconds = retry_after_seconds
            if not isinstance(slow_seconds, _Unchanged):
                self._slow_seconds = float(slow_seconds)
            if not isinstance(late_commit_seconds, _Unchanged):
                self._late_commit_seconds = float(late_commit_seconds)

    @property
    def rate(self) -> float:
        """Probability that a matching request fails by chance.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig()
            faults.rate = 0.1
            ```
        """
        with self._lock:
            return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self.set(rate=value)

    @property
    def kinds(self) -> frozenset[FaultKind]:
        """Kinds drawn from by chance.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig()
            faults.kinds = {"503", "drop_after_commit"}
            ```
        """
        with self._lock:
            return frozenset(self._kinds)

    @kinds.setter
    def kinds(self, value: Iterable[str]) -> None:
        self.set(kinds=value)

    @property
    def seed(self) -> int | None:
        """Seed of the generator; setting it restarts the generator.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig()
            faults.seed = 42
            ```
        """
        with self._lock:
            return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        self.set(seed=value)

    @property
    def methods(self) -> frozenset[str]:
        """HTTP methods that faults apply to.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            print(sorted(FaultConfig().methods))  # ['PATCH', 'POST']
            ```
        """
        with self._lock:
            return self._methods

    @methods.setter
    def methods(self, value: Iterable[str]) -> None:
        self.set(methods=value)

    @property
    def paths(self) -> frozenset[str] | None:
        """Path patterns that faults apply to; `None` for all.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig()
            faults.paths = {"/target-materials/layers/"}
            ```
        """
        with self._lock:
            return self._paths

    @paths.setter
    def paths(self, value: Iterable[str] | None) -> None:
        self.set(paths=value)

    @property
    def retry_after_seconds(self) -> int:
        """The `Retry-After` value sent with an injected `429`.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig()
            faults.retry_after_seconds = 0
            ```
        """
        with self._lock:
            return self._retry_after_seconds

    @retry_after_seconds.setter
    def retry_after_seconds(self, value: int) -> None:
        self.set(retry_after_seconds=value)

    @property
    def slow_seconds(self) -> float:
        """How long `slow_after_commit` holds a reply back.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig()
            faults.slow_seconds = 0.5
            ```
        """
        with self._lock:
            return self._slow_seconds

    @slow_seconds.setter
    def slow_seconds(self, value: float) -> None:
        self.set(slow_seconds=value)

    @property
    def late_commit_seconds(self) -> float:
        """How long after the client gave up `commit_late` commits the write.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            print(FaultConfig().late_commit_seconds)  # 0.5
            ```
        """
        with self._lock:
            return self._late_commit_seconds

    def queue(self, kinds: Iterable[str]) -> None:
        """Make the next matching requests fail with exactly these kinds, in this order.

        Queued faults come before any chance fault and are added after those already
        queued.

        Args:
            kinds: Fault kind names, e.g. `["503", "503"]`.

        Raises:
            ValueError: An unknown kind; nothing is queued.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig()
            faults.queue(["503", "drop_after_commit"])
            print(faults.pending)
            ```
        """
        ordered = [_kind(name) for name in kinds]
        with self._lock:
            self._pending.extend(ordered)

    @property
    def pending(self) -> tuple[FaultKind, ...]:
        """The queued faults not yet used, next first.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            print(FaultConfig().pending)  # ()
            ```
        """
        with self._lock:
            return tuple(self._pending)

    def clear(self) -> None:
        """Stop all faults: empty the queue and set the rate to 0. Other settings stay.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig(rate=1.0)
            faults.clear()
            print(faults.pick("POST", "/target-materials/"))  # None
            ```
        """
        with self._lock:
            self._pending.clear()
            self._rate = 0.0

    def pick(self, method: str, path: str) -> FaultKind | None:
        """Decide the fault for one request, using up a queued one or a random draw.

        Args:
            method: The request's HTTP method.
            path: The request's path.

        Returns:
            The fault to inject, or `None` to serve the request normally.

        Example:
            ```python
            from atomscale_sandbox import FaultConfig

            faults = FaultConfig(rate=1.0, kinds={"503"})
            print(faults.pick("GET", "/target-materials/"))  # None: GET is not a write
            print(faults.pick("POST", "/target-materials/"))  # 503
            ```
        """
        with self._lock:
            if method not in self._methods:
                return None
            if self._paths is not None and not any(
                fnmatchcase(path, pattern) for pattern in self._paths
            ):
                return None
            if self._pending:
                return self._pending.popleft()
            if self._rate > 0.0 and self._kinds and self._random.random() < self._rate:
                return self._random.choice(self._kinds)
            return None


_BAD_GATEWAY_PAGE = """<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
</body>
</html>
"""


async def _discard(message: Message) -> None:
    """An ASGI `send` that loses the reply."""


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class FaultInjectionMiddleware:
    """ASGI middleware that fails the requests `faults` picks, the way `FaultKind` says.

    Dropping a connection needs the server's connections in `connections`, which
    `run_sandbox` arranges; served any other way, a dropped request just ends with no
    reply from the app.
    """

    def __init__(
        self,
        app: ASGIApp,
        faults: FaultConfig,
        stats: RequestStats,
        connections: ConnectionRegistry,
    ) -> None:
        self.app = app
        self.faults = faults
        self.stats = stats
        self.connections = connections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope, failing it if `faults` says so."""
        kind = None
        if scope["type"] == "http":
            kind = self.faults.pick(scope["method"], scope["path"])
        if kind is None:
            await self.app(scope, receive, send)
            return
        self.stats.record_fault(kind.value)
        if kind.commits and kind is not FaultKind.COMMIT_LATE:
            # The store's audit notes which writes a fault touched (see `WriteNote`).
            WRITE_NOTE.set(WriteNote(kind.value))
        if kind is FaultKind.UNAVAILABLE:
            reply = JSONResponse(
                {"detail": "Service temporarily unavailable; try again later"}, status_code=503
            )
            await reply(scope, receive, send)
        elif kind is FaultKind.RATE_LIMITED:
            seconds = self.faults.retry_after_seconds
            reply = JSONResponse(
                {"detail": f"Too many requests; retry after {seconds} s"},
                status_code=429,
                headers={"Retry-After": str(seconds)},
            )
            await reply(scope, receive, send)
        elif kind is FaultKind.BAD_GATEWAY_HTML:
            await HTMLResponse(_BAD_GATEWAY_PAGE, status_code=502)(scope, receive, send)
        elif kind is FaultKind.RESET:
            await self._drop(scope, receive, reset=True)
        elif kind is FaultKind.DROP_AFTER_COMMIT:
            await self.app(scope, receive, _discard)
            await self._drop(scope, receive, reset=False)
        elif kind is FaultKind.ERROR_AFTER_COMMIT:
            await self.app(scope, receive, _discard)
            reply = JSONResponse({"detail": "Internal Server Error"}, status_code=500)
            await reply(scope, receive, send)
        elif kind is FaultKind.COMMIT_LATE:
            await self._commit_late(scope, receive)
        elif kind is FaultKind.SLOW_BEFORE_COMMIT:
            await asyncio.sleep(self.faults.slow_seconds)
            await self.app(scope, receive, send)
        else:
            await self._reply_late(scope, receive, send)

    async def _drop(self, scope: Scope, receive: Receive, *, reset: bool) -> None:
        if self.connections.drop(scope.get("client"), reset=reset):
            # Returning before the server has noticed the close would make uvicorn
            # complain that the app sent no response and try to send a 500 itself.
            await _until_disconnected(receive)

    async def _commit_late(self, scope: Scope, receive: Receive) -> None:
        # The whole request is read first: once the client hangs up, it cannot be read.
        messages: list[Message] = []
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before the request was complete: nothing to commit
            messages.append(message)
            more_body = message.get("more_body", False)
        try:
            await asyncio.wait_for(_until_disconnected(receive), self.faults.slow_seconds)
        except TimeoutError:
            await self._drop(scope, receive, reset=False)
        WRITE_NOTE.set(WriteNote(FaultKind.COMMIT_LATE.value, gave_up_at=time.monotonic()))
        await asyncio.sleep(self.faults.late_commit_seconds)

        async def replay() -> Message:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        await self.app(scope, replay, _discard)

    async def _reply_late(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        try:
            # A client that times out and hangs up ends the wait: nobody is left to
            # answer, and the server need not keep the request open until it stops.
            await asyncio.wait_for(_until_disconnected(receive), self.faults.slow_seconds)
        except TimeoutError:
            for message in held:
                await send(message)
