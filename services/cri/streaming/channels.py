"""One WebSocket connection on asyncio carrying Kubernetes' numbered channels.

``ChannelSession(reader, writer, v5)``: ``channel(n)`` gives channel n (contract.InStream
and OutStream: writes are binary messages ``n + data``); ``run()`` reads messages until
the peer closes, routing data to channels (unknown channels are dropped), answering PINGs
and, on v5, turning ``[255, n]`` into EOF on channel n. ``shutdown()`` sends a close frame,
waits (bounded) for the peer's, and closes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from . import websocket as ws

log = logging.getLogger(__name__)

MAX_QUEUED = 1 << 20
"""Bytes a channel may hold unread before the connection stops reading."""


class Channel:
    def __init__(self, session: ChannelSession, number: int) -> None:
        self.session = session
        self.number = number
        self._data: asyncio.Queue[bytes] = asyncio.Queue()
        self.queued = 0
        self.eof = False

    def _feed(self, data: bytes) -> None:
        if not self.eof and data:
            self.queued += len(data)
            self._data.put_nowait(data)

    def _end(self) -> None:
        if not self.eof:
            self.eof = True
            self._data.put_nowait(b"")

    async def read(self) -> bytes:
        data = await self._data.get()
        if not data:
            self._data.put_nowait(b"")
        self.queued -= len(data)
        if self.queued <= MAX_QUEUED:
            self.session._drained.set()
        return data

    async def write(self, data: bytes) -> None:
        await self.session.send(ws.BINARY, bytes([self.number]) + data)

    async def close(self) -> None:
        """Nothing to say on the wire: the session's end closes every channel."""


class ChannelSession:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 v5: bool = False) -> None:
        self.reader = reader
        self.writer = writer
        self.v5 = v5
        self.channels: dict[int, Channel] = {}
        self.closed = asyncio.Event()
        self._drained = asyncio.Event()
        self._decoder = ws.Decoder()
        self._close_sent = False

    def channel(self, number: int) -> Channel:
        return self.channels.setdefault(number, Channel(self, number))

    async def send(self, opcode: int, payload: bytes) -> None:
        if self.writer.is_closing() or self._close_sent:
            raise ConnectionResetError("connection closed")
        self.writer.write(ws.frame(opcode, payload))
        await self.writer.drain()

    async def run(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for opcode, payload in self._decoder.feed(data):
                    if opcode == ws.BINARY and payload:
                        n = payload[0]
                        if n == ws.CLOSE_CHANNEL and self.v5 and len(payload) > 1:
                            if payload[1] in self.channels:
                                self.channels[payload[1]]._end()
                        elif n in self.channels:
                            self.channels[n]._feed(payload[1:])
                    elif opcode == ws.PING:
                        await self.send(ws.PONG, payload)
                    elif opcode == ws.CLOSE:
                        if not self._close_sent:
                            self._close_sent = True
                            with contextlib.suppress(ConnectionError):
                                self.writer.write(ws.close_frame())
                        return
                # back-pressure: a channel whose reader is behind stops the reading
                while any(c.queued > MAX_QUEUED and not c.eof for c in self.channels.values()):
                    self._drained.clear()
                    await self._drained.wait()
        except (ws.WsProtocolError, ConnectionError) as exc:
            log.debug("websocket connection: %s", exc)
        finally:
            self.closed.set()
            for c in self.channels.values():
                c._end()

    async def shutdown(self, grace: float = 5.0) -> None:
        if not self._close_sent:
            self._close_sent = True
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.write(ws.close_frame())
                await self.writer.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):  # (3.11's wait_for can swallow a cancel)
                await self.closed.wait()
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
