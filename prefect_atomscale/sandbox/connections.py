"""The sandbox server's open TCP connections: counted when accepted, droppable by peer.

An ASGI app never sees its socket, yet two things need the connection itself: counting
how many distinct connections clients opened (a pooling client opens one, a careless
one opens one per request), and dropping a connection with no reply at all for the
fault kinds that simulate a lost response. So the server speaks HTTP through a
subclass of uvicorn's h11 protocol that reports each connection here, keyed by the
peer address that uvicorn also puts in the ASGI scope as `scope["client"]`, and the
fault middleware finds the connection again by that address.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ConnectionRegistry"]

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

    Example:
        ```python
        from prefect_atomscale.sandbox import ConnectionRegistry

        registry = ConnectionRegistry()
        print(registry.accepted)  # 0
        ```
    """

    def __init__(self) -> None:
        self._open: dict[Peer, asyncio.Transport] = {}
        self._count_lock = threading.Lock()
        self._accepted = 0

    @property
    def accepted(self) -> int:
        """How many TCP connections the server accepted since start or `reset_count`.

        Example:
            ```python
            from prefect_atomscale.sandbox import run_sandbox

            with run_sandbox() as sandbox:
                print(sandbox.stats.connections)  # reads this counter
            ```
        """
        with self._count_lock:
            return self._accepted

    def reset_count(self) -> None:
        """Start counting accepted connections from zero again.

        Example:
            ```python
            from prefect_atomscale.sandbox import ConnectionRegistry

            ConnectionRegistry().reset_count()
            ```
        """
        with self._count_lock:
            self._accepted = 0

    def h11_protocol(self) -> type[asyncio.Protocol]:
        """The uvicorn protocol class to serve with: HTTP/1.1 that reports connections here.

        Pass it as `uvicorn.Config(http=...)`.

        Example:
            ```python
            import uvicorn

            from prefect_atomscale.sandbox import create_app

            app = create_app()
            config = uvicorn.Config(app, http=app.connections.h11_protocol())
            ```
        """
        registry = self

        class TrackedH11Protocol(H11Protocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                registry._opened(transport)
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                registry._closed(self.transport)
                super().connection_lost(exc)

        return TrackedH11Protocol

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

        Example:
            ```python
            from prefect_atomscale.sandbox import ConnectionRegistry

            print(ConnectionRegistry().drop(("127.0.0.1", 50000), reset=True))  # False
            ```
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
