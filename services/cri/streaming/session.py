"""One SPDY/3.1 connection on asyncio, server side: the peer opens streams, we answer.

Lifecycle: ``Session(reader, writer)`` after the HTTP upgrade; ``run()`` reads frames until
the peer closes or breaks the framing; every SYN_STREAM is answered with a SYN_REPLY and
queued for ``accept()`` (None once the connection is gone). PINGs are echoed. A
:class:`Stream` reads the peer's data until its FIN (or a RST, or the connection's end)
and writes DATA frames; ``close()`` sends our FIN. ``shutdown()`` sends GOAWAY, lets the
peer finish reading and close (bounded wait), then closes the socket: closing at once with
unread input in the kernel would reset the connection and lose our last frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from . import spdy

log = logging.getLogger(__name__)

MAX_QUEUED = 1 << 20
"""Bytes a stream may hold unread before the connection stops reading."""


class Stream:
    """One peer-initiated SPDY stream (contract.InStream and OutStream)."""

    def __init__(self, session: Session, id: int, headers: spdy.Headers) -> None:
        self.session = session
        self.id = id
        self.headers = headers
        self._data: asyncio.Queue[bytes] = asyncio.Queue()
        self.queued = 0
        self.remote_closed = False
        self.local_closed = False

    def header(self, name: str) -> str:
        return spdy.header(self.headers, name)

    def _feed(self, data: bytes, fin: bool) -> None:
        if self.remote_closed:
            return
        if data:
            self.queued += len(data)
            self._data.put_nowait(data)
        if fin:
            self.remote_closed = True
            self._data.put_nowait(b"")

    async def read(self) -> bytes:
        data = await self._data.get()
        if not data:
            self._data.put_nowait(b"")  # EOF stays EOF
        self.queued -= len(data)
        if self.queued <= MAX_QUEUED:
            self.session._drained.set()
        return data

    async def write(self, data: bytes) -> None:
        if self.local_closed or not data:
            return
        await self.session.send(spdy.DataFrame(self.id, data))

    async def close(self) -> None:
        if not self.local_closed:
            self.local_closed = True
            with contextlib.suppress(ConnectionError):
                await self.session.send(spdy.DataFrame(self.id, b"", spdy.FLAG_FIN))

    async def reset(self, status: int = spdy.CANCEL) -> None:
        self.local_closed = True
        self._feed(b"", True)
        with contextlib.suppress(ConnectionError):
            await self.session.send(spdy.RstStream(self.id, status))


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 buffered: bytes = b"") -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = spdy.Decoder()
        self._encoder = spdy.Encoder()
        self._buffered = buffered
        self.streams: dict[int, Stream] = {}
        self._incoming: asyncio.Queue[Stream | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._drained = asyncio.Event()
        self._last_id = 0

    async def send(self, frame: spdy.Frame) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("connection closed")
        self.writer.write(self._encoder.encode(frame))  # encode+write together: zlib order
        await self.writer.drain()

    async def accept(self) -> Stream | None:
        s = await self._incoming.get()
        if s is None:
            self._incoming.put_nowait(None)
        return s

    async def run(self) -> None:
        try:
            data = self._buffered
            while True:
                if data:
                    for frame in self._decoder.feed(data):
                        await self._handle(frame)
                # back-pressure (spdystream blocks the same way): a stream whose reader is
                # behind stops the connection's reading until it catches up
                while any(s.queued > MAX_QUEUED and not s.remote_closed
                          for s in self.streams.values()):
                    self._drained.clear()
                    await self._drained.wait()
                data = await self.reader.read(65536)
                if not data:
                    break
        except (spdy.ProtocolError, ConnectionError) as exc:
            log.debug("spdy connection: %s", exc)
        finally:
            self.closed.set()
            for s in self.streams.values():
                s._feed(b"", True)
            self._incoming.put_nowait(None)

    async def _handle(self, f: spdy.Frame) -> None:
        if isinstance(f, spdy.DataFrame):
            s = self.streams.get(f.stream_id)
            if s is None:
                await self.send(spdy.RstStream(f.stream_id, spdy.INVALID_STREAM))
                return
            s._feed(f.data, bool(f.flags & spdy.FLAG_FIN))
        elif isinstance(f, spdy.SynStream):
            if f.stream_id in self.streams or f.stream_id % 2 == 0 or f.stream_id <= self._last_id:
                await self.send(spdy.RstStream(f.stream_id, spdy.PROTOCOL_ERROR))
                return
            self._last_id = f.stream_id
            s = Stream(self, f.stream_id, f.headers)
            self.streams[f.stream_id] = s
            await self.send(spdy.SynReply(f.stream_id, {}))
            if f.flags & spdy.FLAG_FIN:
                s._feed(b"", True)
            self._incoming.put_nowait(s)
        elif isinstance(f, spdy.RstStream):
            s = self.streams.get(f.stream_id)
            if s is not None:
                s.local_closed = True
                s._feed(b"", True)
        elif isinstance(f, spdy.Ping):
            await self.send(f)
        elif isinstance(f, spdy.GoAway):
            self._incoming.put_nowait(None)
        # SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY: nothing to do (no flow control)

    async def shutdown(self, grace: float = 5.0) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.send(spdy.GoAway(self._last_id))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):  # (3.11's wait_for can swallow a cancel)
                await self.closed.wait()
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
