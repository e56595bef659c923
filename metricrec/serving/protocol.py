"""uvicorn's httptools protocol with the writes of one event-loop turn sent as one.

uvicorn writes a response as it receives the ASGI messages: the status line and headers when
``http.response.start`` arrives, the body when ``http.response.body`` does, each a
``transport.write`` and so, on an idle socket, a ``send`` system call and a TCP segment of its own.
A recommendation is a few hundred bytes: two calls and two segments where one does, and on the
service's hot path those two sends were 40% of a worker's CPU (py-spy, one client, loopback).

:class:`CoalescingTransport` stands between the protocol and the socket's transport: a write is kept
until the end of the current turn of the event loop (``loop.call_soon``), and every write made
until then goes out with it, in order, in one ``write``. A handler that sends its head and body
without waiting in between (FastAPI's responses, the fast path) becomes one send; one that streams
(awaits between chunks) still has each chunk sent on the turn it was written in. ``close`` sends
what is kept first; ``abort`` drops it, as the socket's own abort drops its buffer.
:class:`CoalescingHttpToolsProtocol` is uvicorn's ``HttpToolsProtocol`` on such a transport (pass it
as ``uvicorn.Config(http=...)``).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CoalescingTransport", "coalescing_protocol"]


class CoalescingTransport:
    """A proxy of ``transport`` whose writes of one event-loop turn are joined into one write.

    Parameters
    ----------
    transport : asyncio.Transport
    loop : asyncio.AbstractEventLoop
        The loop the transport's protocol runs on (the flush is scheduled there).
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._kept: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._kept:
            self._loop.call_soon(self.flush)
        self._kept.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what was kept (one write), unless the transport is closing."""
        if not self._kept:
            return
        data = self._kept[0] if len(self._kept) == 1 else b"".join(self._kept)
        self._kept = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._kept))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._kept = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


def coalescing_protocol() -> type | None:
    """uvicorn's ``HttpToolsProtocol`` on a :class:`CoalescingTransport`, or None when httptools (or
    that uvicorn module) is not installed (uvicorn then picks its own protocol)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's httptools protocol whose responses leave in one write per event-loop turn."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    return CoalescingHttpToolsProtocol
