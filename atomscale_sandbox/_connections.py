"""The sandbox server's open TCP connections: counted when accepted, droppable by peer.

An ASGI app never sees its socket, yet two things need the connection itself: counting
how many distinct connections clients opened (a pooling client opens one, a careless
one opens one per request), and dropping a connection with no reply at all for the
fault kinds that simulate a lost response. So the server speaks HTTP through a
subclass of one of uvicorn's HTTP/1.1 protocols (h11, or httptools when installed)
that reports each connection here, keyed by the peer address that uvicorn also puts in
the ASGI scope as `scope["client"]`, and the fault middleware finds the connection
again by that address.

The same subclass sends each reply in one piece: uvicorn writes a reply's head and its
body to the socket separately, two system calls and two TCP segments where one does,
which on loopback is a good part of a small request's cost on both ends.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import struct
import threading
from typing import Any, Literal

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "HTTP_PARSERS",
    "ConnectionRegistry",
    "HttpParser",
    "available_http_parsers",
    "resolve_http_parser",
]

HttpParser = Literal["auto", "h11", "httptools"]
"""Which HTTP/1.1 implementation serves: `auto` is httptools if installed, else h11.

Example:
    ```python
    import httpx

    from atomscale_sandbox import HttpParser, SandboxConfig, run_sandbox

    parser: HttpParser = "h11"  # the reference implementation, always installed
    with run_sandbox(SandboxConfig(http_parser=parser)) as sandbox:
        print(httpx.get(f"{sandbox.url}/health").json())  # {'status': 'ok'}
    ```
"""

HTTP_PARSERS: tuple[HttpParser, ...] = ("auto", "h11", "httptools")


def available_http_parsers() -> tuple[HttpParser, ...]:
    """The concrete HTTP parsers installed here, h11 (always) first.

    Returns:
        `("h11",)` or `("h11", "httptools")`.

    Example:
        ```python
        from atomscale_sandbox import available_http_parsers

        print(available_http_parsers())  # ('h11', 'httptools'): with httptools installed
        ```
    """
    if importlib.util.find_spec("httptools") is None:
        return ("h11",)
    return ("h11", "httptools")


def resolve_http_parser(parser: HttpParser) -> Literal["h11", "httptools"]:
    """The concrete parser `parser` stands for; `auto` picks the faster one installed.

    Args:
        parser: A name from `HTTP_PARSERS`.

    Returns:
        `h11` or `httptools`.

    Raises:
        ValueError: An unknown name, or `httptools` when it is not installed.
    """
    available = available_http_parsers()
    if parser == "auto":
        return "httptools" if "httptools" in available else "h11"
    if parser not in HTTP_PARSERS:
        raise ValueError(f"unknown HTTP parser {parser!r}; choose one of {HTTP_PARSERS}")
    if parser not in available:
        raise ValueError(f"the HTTP parser {parser!r} is not installed (pip install {parser})")
    return parser


Peer = tuple[str, int]

# l_onoff=1, l_linger=0: closing the socket then sends RST instead of FIN, the way a
# crashed proxy or a stateful firewall cuts a connection.
_LINGER_ZERO = struct.pack("ii", 1, 0)


def _peer_of(transport: asyncio.Transport) -> Peer | None:
    peername = transport.get_extra_info("peername")
    if not peername:
        return None
    return (str(peername[0]), int(peername[1]))


class ConnectionRegistry:
    """Counts accepted connections and keeps the open ones, to drop one on demand.

    The protocol from `h11_protocol` and the app's `drop` calls run on the server's
    event-loop thread; `accepted` and `reset_count` may be called from any thread.
    """

    def __init__(self) -> None:
        self._open: dict[Peer, asyncio.Transport] = {}
        self._count_lock = threading.Lock()
        self._accepted = 0

    @property
    def accepted(self) -> int:
        """How many TCP connections the server accepted since start or `reset_count`."""
        with self._count_lock:
            return self._accepted

    def reset_count(self) -> None:
        """Start counting accepted connections from zero again."""
        with self._count_lock:
            self._accepted = 0

    def h11_protocol(self) -> type[asyncio.Protocol]:
        """The h11 protocol class that reports connections here; see `protocol`."""
        return self.protocol("h11")

    def protocol(self, parser: HttpParser = "auto") -> type[asyncio.Protocol]:
        """The uvicorn protocol class to serve with: HTTP/1.1 that reports connections here.

        Pass it as `uvicorn.Config(http=...)`.

        Args:
            parser: `h11`, `httptools`, or `auto` for httptools if installed, else h11.

        Returns:
            A subclass of uvicorn's protocol for that parser.

        Raises:
            ValueError: An unknown parser, or httptools asked for but not installed.
        """
        base: type[Any] = H11Protocol
        if resolve_http_parser(parser) == "httptools":
            # Imported only when chosen: it fails without the httptools package.
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

            base = HttpToolsProtocol
        registry = self

        class TrackedProtocol(base):  # type: ignore[misc]
            def connection_made(self, transport: asyncio.Transport) -> None:
                registry._opened(transport)
                self.sandbox_transport = transport
                super().connection_made(_CoalescingTransport(transport))

            def connection_lost(self, exc: Exception | None) -> None:
                registry._closed(self.sandbox_transport)
                super().connection_lost(exc)

        TrackedProtocol.__name__ = TrackedProtocol.__qualname__ = f"Tracked{base.__name__}"
        return TrackedProtocol

    def _opened(self, transport: asyncio.Transport) -> None:
        with self._count_lock:
            self._accepted += 1
        peer = _peer_of(transport)
        if peer is not None:
            self._open[peer] = transport

    def _closed(self, transport: asyncio.Transport) -> None:
        peer = _peer_of(transport)
        if peer is not None and self._open.get(peer) is transport:
            del self._open[peer]

    def drop(self, peer: Peer | None, *, reset: bool) -> bool:
        """Close the connection from `peer` at once, discarding anything unsent.

        Args:
            peer: The client address, as in the ASGI scope's `client`.
            reset: Send a TCP reset (RST) rather than an orderly close (FIN).

        Returns:
            Whether there was such a connection to drop. There is none when the client
            already went away, or when the app is served by a server that does not
            report its connections here (anything but `run_sandbox`).
        """
        transport = self._open.get(peer) if peer is not None else None
        if transport is None:
            return False
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        transport.abort()
        return True


class _CoalescingTransport:
    """A transport that sends what is written in one event-loop turn as one write.

    uvicorn writes a reply's head and body in the same turn, so they leave together.
    Everything but `write`, `close` and `abort` is the wrapped transport's own.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        # A connection dropped meanwhile (an injected fault) gets nothing more.
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        # What was written before a close must still go out, as with any transport.
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
