"""The coalescing transport of metricrec.serving.protocol: the writes of one event-loop turn leave as
one write, in order; close sends what is kept, abort drops it; and uvicorn's real httptools protocol
on it answers a request with one write holding the head and the body."""

import asyncio

import pytest

from metricrec.serving.protocol import CoalescingTransport, coalescing_protocol


class FakeTransport(asyncio.Transport):
    """Records the writes and the closing the way a socket transport would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data):
        assert not self.closing, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closing

    def close(self):
        self.events.append("close")
        self.closing = True

    def abort(self):
        self.events.append("abort")
        self.closing = True

    def get_write_buffer_size(self):
        return 0

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self):
        self.events.append("pause")

    def resume_reading(self):
        self.events.append("resume")


def test_writes_of_one_turn_leave_as_one_write_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        raw = FakeTransport()
        t = CoalescingTransport(raw, loop)
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"")  # nothing to send: no empty write either
        t.write(bytearray(b"body"))
        assert raw.writes == [] and t.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
        await asyncio.sleep(0)
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        t.write(b"next")  # a later turn: a write of its own
        await asyncio.sleep(0)
        assert raw.writes[1:] == [b"next"]
        t.pause_reading()  # everything else is the transport's
        assert raw.events == ["pause"] and t.get_extra_info("peername") == ("127.0.0.1", 5000)

    asyncio.run(main())


def test_close_sends_what_is_kept_first_and_abort_drops_it():
    async def main():
        loop = asyncio.get_running_loop()
        raw = FakeTransport()
        t = CoalescingTransport(raw, loop)
        t.write(b"a")
        t.write(b"b")
        t.close()
        assert raw.writes == [b"ab"] and raw.events == ["close"]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left (and never writes after close)
        assert raw.writes == [b"ab"]

        raw2 = FakeTransport()
        t2 = CoalescingTransport(raw2, loop)
        t2.write(b"lost")
        t2.abort()
        await asyncio.sleep(0)
        assert raw2.writes == [] and raw2.events == ["abort"]

    asyncio.run(main())


def test_uvicorns_protocol_on_it_answers_with_one_write():
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("httptools")
    from uvicorn.server import ServerState

    async def app(scope, receive, send):
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    async def main():
        cls = coalescing_protocol()
        assert cls is not None
        config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, lifespan="off")
        proto = cls(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
        raw = FakeTransport()
        proto.connection_made(raw)
        proto.data_received(b"GET /recommend?user=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(20):  # the request task, then the flush
            await asyncio.sleep(0)
        assert len(raw.writes) == 1, raw.writes
        head, _, body = raw.writes[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 11" in head.lower()
        assert body == b'{"ok":true}'
        proto.connection_lost(None)

    asyncio.run(main())
