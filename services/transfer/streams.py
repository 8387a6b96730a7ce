"""Server side of containerd.services.streaming.v1.Streaming: named bidi streams a transfer
uses for progress, credentials and archive data.

A client opens `Stream`, sends `Any(StreamInit{id})`, gets one `Any(google.protobuf.Empty)`
ack, then names the id in its transfer request. Streams are registered per namespace (the
call's, or none when the client sent no metadata, as Go's ttrpc NewStream does); a
duplicate id -> AlreadyExists. The handler keeps the stream open until the transfer using
it calls `close()` or the client goes away.

Data flow control as containerd: the sender sends `Any(Data)` chunks ≤ 32 KiB and stops
when its window (64 KiB) is used; the receiver grants credit with `Any(WindowUpdate)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import any_pb2, empty_pb2

from moorage import errdefs
from moorage.api.containerd.services.streaming.v1 import streaming_pb2
from moorage.api.containerd.types.transfer import streaming_pb2 as data_pb2

from .wire import pack, type_name, unpack

CHUNK = 32 << 10
WINDOW = 64 << 10
ACCEPT_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0  # a data stream whose peer neither sends nor grants credit for this long fails


class Stream:
    """One registered stream, used by one transfer at a time."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.closed = asyncio.Event()

    async def send(self, msg: Any) -> None:
        if self.closed.is_set():
            raise errdefs.Unavailable("stream closed")
        await self._raw.send(pack(msg))

    async def recv(self) -> any_pb2.Any | None:
        if self.closed.is_set():
            return None
        return await self._raw.recv()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.closed.set()

    async def receive_data(self) -> AsyncIterator[bytes]:
        """Data sent by the client (import), with window updates; ends when it closes."""
        await self.send(data_pb2.WindowUpdate(update=WINDOW))
        while True:
            try:
                a = await asyncio.wait_for(self.recv(), IDLE_TIMEOUT)
            except TimeoutError:
                raise errdefs.DeadlineExceeded(f"no data from the client for {IDLE_TIMEOUT:.0f}s") from None
            if a is None:
                return
            if type_name(a) != data_pb2.Data.DESCRIPTOR.full_name:
                continue
            d = unpack(a, data_pb2.Data)
            if d.data:
                yield d.data
                await self.send(data_pb2.WindowUpdate(update=len(d.data)))

    async def send_data(self, chunks: AsyncIterator[bytes]) -> None:
        """Send bytes to the client (export) respecting its window; close at the end."""
        window = 0
        credit: asyncio.Queue[int] = asyncio.Queue()
        ended = asyncio.Event()

        async def updates() -> None:
            while True:
                a = await self.recv()
                if a is None:
                    ended.set()
                    await credit.put(-1)
                    return
                if type_name(a) == data_pb2.WindowUpdate.DESCRIPTOR.full_name:
                    await credit.put(unpack(a, data_pb2.WindowUpdate).update)

        reader = asyncio.ensure_future(updates())
        try:
            async for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    while window <= 0:
                        try:
                            u = await asyncio.wait_for(credit.get(), IDLE_TIMEOUT)
                        except TimeoutError:
                            raise errdefs.DeadlineExceeded(
                                f"the client granted no window for {IDLE_TIMEOUT:.0f}s") from None
                        if u < 0:
                            raise errdefs.Canceled("export stream closed by the client")
                        window += u
                    n = min(len(view), CHUNK, window)
                    await self.send(data_pb2.Data(data=bytes(view[:n])))
                    window -= n
                    view = view[n:]
        finally:
            reader.cancel()
            self.close()


class StreamManager:
    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], Stream] = {}
        self._waiters: dict[tuple[str, str], asyncio.Event] = {}

    async def serve(self, raw: Any, namespace: str) -> None:
        """The body of Streaming.Stream."""
        first = await raw.recv()
        if first is None:
            return
        init = unpack(first, streaming_pb2.StreamInit)
        if not init.id:
            raise errdefs.InvalidArgument("stream id must not be empty")
        key = (namespace, init.id)
        if key in self._streams:
            raise errdefs.AlreadyExists(f"stream {init.id!r} already exists")
        s = Stream(raw)
        self._streams[key] = s
        self._waiters.setdefault(key, asyncio.Event()).set()
        try:
            await raw.send(pack(empty_pb2.Empty()))
            await s.closed.wait()
        finally:
            self._streams.pop(key, None)
            self._waiters.pop(key, None)
            s.close()

    async def get(self, namespace: str, stream_id: str, timeout: float = ACCEPT_TIMEOUT) -> Stream:
        for key in ((namespace, stream_id), ("", stream_id)):
            if key in self._streams:
                return self._streams[key]
        key = (namespace, stream_id)
        ev = self._waiters.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            if key not in self._streams:
                self._waiters.pop(key, None)
            raise errdefs.NotFound(f"stream {stream_id!r} not found") from None
        s = self._streams.get(key)
        if s is None:
            raise errdefs.NotFound(f"stream {stream_id!r} not found")
        return s
