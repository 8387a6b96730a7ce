"""Per-stream inbound buffering, shared by both sides of the asyncio transport.

ttrpc has no flow control on the wire. Each stream buffers at most ``limit`` inbound
messages; past that the connection stops reading (the socket pushes back on the peer)
until the consumer drains the stream, for at most ``stall_timeout`` seconds, after which
that stream alone fails with RESOURCE_EXHAUSTED and reading resumes: a consumer that
never reads cannot hold the connection longer than that (containerd/ttrpc#229).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

STREAM_BUFFER = 64
STALL_TIMEOUT = 1.0


class Inbox:
    """Inbound messages of one stream; ``None`` from ``get`` means the sender closed."""

    __slots__ = ("_items", "_waiter", "_ended", "_error", "limit", "on_drain")

    def __init__(self, limit: int = STREAM_BUFFER) -> None:
        self._items: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self.limit = limit
        self.on_drain: Callable[[], None] | None = None

    @property
    def done(self) -> bool:
        return self._ended or self._error is not None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def put(self, item: bytes) -> bool:
        """Queue a message; False once the stream holds more than ``limit``."""
        if self.done:
            return True
        self._items.append(item)
        self._wake()
        return len(self._items) <= self.limit

    def end(self) -> None:
        self._ended = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """End the stream with an error; queued messages are dropped."""
        if self._error is None and not self._ended:
            self._error = error
            self._items.clear()
        self._wake()

    async def get(self) -> bytes | None:
        while True:
            items = self._items
            if items:
                item = items.popleft()
                if self.on_drain is not None and len(items) <= self.limit:
                    drained, self.on_drain = self.on_drain, None
                    drained()
                return item
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class Stalls:
    """Pauses a transport while any stream is over its limit, each for a bounded time."""

    __slots__ = ("_loop", "_pause", "_resume", "_timers", "timeout")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pause: Callable[[], None],
        resume: Callable[[], None],
        timeout: float = STALL_TIMEOUT,
    ) -> None:
        self._loop = loop
        self._pause = pause
        self._resume = resume
        self._timers: dict[Inbox, asyncio.TimerHandle] = {}
        self.timeout = timeout

    def overflowed(self, inbox: Inbox, expire: Callable[[], None]) -> None:
        """``inbox`` is over its limit: stop reading until it drains or ``expire`` runs."""
        if inbox in self._timers:
            return
        if not self._timers:
            self._pause()
        self._timers[inbox] = self._loop.call_later(self.timeout, self._expired, inbox, expire)
        inbox.on_drain = lambda: self.release(inbox)

    def release(self, inbox: Inbox) -> None:
        """``inbox`` drained or ended: it no longer holds the transport."""
        timer = self._timers.pop(inbox, None)
        if timer is not None:
            timer.cancel()
            if not self._timers:
                self._resume()

    def _expired(self, inbox: Inbox, expire: Callable[[], None]) -> None:
        inbox.on_drain = None
        self._timers.pop(inbox, None)
        expire()
        if not self._timers:
            self._resume()

    def clear(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class Outbox:
    """Coalesces frames into fewer writes without delaying a lone one.

    After the peer's last message, the first frame goes out at once (a sequential call pays
    no extra loop iteration); frames that follow it before the peer speaks again are
    gathered and written together at the end of the loop iteration. ``received()`` marks
    the peer speaking.
    """

    __slots__ = ("_call_soon", "_transport", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.WriteTransport) -> None:
        self._call_soon = loop.call_soon
        self._transport = transport
        self._pending: list[bytes] | None = None
        self._scheduled = False

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = []
            self._transport.write(data)
            return
        pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._flush)

    def received(self) -> None:
        if not self._pending:
            self._pending = None

    def flush(self) -> None:
        """Hand everything gathered to the transport now (before closing it)."""
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.writelines(pending)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        self._scheduled = False
        if pending and not self._transport.is_closing():
            if len(pending) == 1:
                self._transport.write(pending[0])
            else:
                self._transport.writelines(pending)
