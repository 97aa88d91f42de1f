"""Request counting: what clients asked the sandbox, what it answered, which faults it injected.

Tests and benchmarks read these counts to check client behaviour that no reply shows:
how many attempts a retry policy made, whether a write was sent twice, how many
connections a client opened (kept by `ConnectionRegistry`, reported here).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atomscale_sandbox._connections import ConnectionRegistry

__all__ = ["UNROUTED", "RequestStats", "RequestStatsMiddleware", "StatsSnapshot"]

UNROUTED = "(no route)"
"""The path template recorded for a request that matched no route (a 404)."""

_REMEMBERED_PATHS = 1024


@dataclass(frozen=True)
class StatsSnapshot:
    """The sandbox's counters at one moment.

    Attributes:
        requests: HTTP requests received.
        by_route: Requests per `(method, path template)`, e.g.
            `("POST", "/target-materials/{sample_id}/layers")`; `UNROUTED` for 404s.
        by_status: Requests per status code answered.
        unanswered: Requests that got no status at all: their connection was dropped,
            or the client hung up first. Counted when the server is done with the
            request, which can be a moment after the client saw the connection go.
        faults: Injected faults per kind, e.g. `{"503": 2}`.
        connections: TCP connections accepted.

    Example:
        ```python
        import httpx

        from atomscale_sandbox import run_sandbox

        with run_sandbox() as sandbox:
            httpx.get(f"{sandbox.url}/target-materials/", headers={"X-API-KEY": sandbox.api_key})
            print(sandbox.stats.by_route[("GET", "/target-materials/")])  # 1
        ```
    """

    requests: int
    by_route: Mapping[tuple[str, str], int]
    by_status: Mapping[int, int]
    unanswered: int
    faults: Mapping[str, int]
    connections: int


class RequestStats:
    """Thread-safe counters, written by the server and read by tests."""

    def __init__(self, connections: ConnectionRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self._connections = connections
        self._requests = 0
        self._by_route: Counter[tuple[str, str]] = Counter()
        self._by_status: Counter[int] = Counter()
        self._unanswered = 0
        self._faults: Counter[str] = Counter()

    def record_request(self, method: str, route: str) -> None:
        """Count one request, as it arrives.

        Args:
            method: The HTTP method.
            route: The path template of the route it is for, or `UNROUTED`.
        """
        with self._lock:
            self._requests += 1
            self._by_route[(method, route)] += 1

    def record_status(self, status: int) -> None:
        """Count one reply, as it starts.

        Args:
            status: Its status code.
        """
        with self._lock:
            self._by_status[status] += 1

    def record_unanswered(self) -> None:
        """Count one request that ended with no reply at all."""
        with self._lock:
            self._unanswered += 1

    def record_fault(self, kind: str) -> None:
        """Count one injected fault.

        Args:
            kind: The fault kind's name, e.g. `"503"`.
        """
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> StatsSnapshot:
        """The counters now, as an immutable copy."""
        with self._lock:
            return StatsSnapshot(
                requests=self._requests,
                by_route=MappingProxyType(Counter(self._by_route)),
                by_status=MappingProxyType(Counter(self._by_status)),
                unanswered=self._unanswered,
                faults=MappingProxyType(Counter(self._faults)),
                connections=self._connections.accepted if self._connections else 0,
            )

    def reset(self) -> None:
        """Set every counter, connections included, back to zero."""
        with self._lock:
            self._requests = 0
            self._by_route.clear()
            self._by_status.clear()
            self._unanswered = 0
            self._faults.clear()
            if self._connections is not None:
                self._connections.reset_count()


class RequestStatsMiddleware:
    """ASGI middleware that counts every HTTP request passing through it in `stats`.

    Place it outermost so that it also sees the replies of fault injection. Requests
    count under the path template of the route in `routes` that they are for, also
    those that never reach it (an injected fault, a 413).
    """

    def __init__(self, app: ASGIApp, stats: RequestStats, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.stats = stats
        self.routes = routes
        self._templates: dict[tuple[str, str, str], str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope, counting it if it is an HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Each count is taken before the client can see the outcome it counts, so a
        # test that reads the counters right after a reply never finds them behind.
        self.stats.record_request(scope["method"], self._template(scope))
        answered = False

        async def send_counting_status(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                self.stats.record_status(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counting_status)
        finally:
            if not answered:
                self.stats.record_unanswered()

    def _template(self, scope: Scope) -> str:
        # Matching every route again costs as much as the router's own matching, so
        # the answers are remembered; bounded, since paths carry ids without end.
        key = (scope["method"], scope.get("root_path", ""), scope["path"])
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= _REMEMBERED_PATHS:
                self._templates.clear()
            template = self._templates[key] = self._match(scope)
        return template

    def _match(self, scope: Scope) -> str:
        # The route the router will pick: the first full match, else the first match
        # of the path alone (a 405). A 404 counts as UNROUTED, not by its raw path,
        # which would let any client grow the counters without bound.
        chosen = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                chosen = route
                break
            if match is Match.PARTIAL and chosen is None:
                chosen = route
        return str(getattr(chosen, "path", UNROUTED))
