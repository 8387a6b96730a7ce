"""A blocking ttrpc client for short-lived commands; it imports neither asyncio nor uvloop.

Same call shapes as ``ttrpc.client.Client``, synchronous. One thread drives the socket:
replies are read when some call waits for one and routed by stream id, so several
streams may be open at once. A timeout raises DEADLINE_EXCEEDED and abandons that call; a
dropped connection fails every waiting call with UNAVAILABLE.
"""

from __future__ import annotations

import time

import _socket  # socket.py imports selectors, enum and more: several ms of every `moor`

from .calls import CLOSED_MESSAGE, identity, serialize, timeout_nano
from .codes import Code
from .errors import RpcError
from .frame import FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN
from .lighttyping import Generic, TypeVar
from .messages import metadata_pairs
from .protocol import ClientConnection, DataReceived, ResponseReceived

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from .calls import ErrorFactory
    from .messages import Metadata
    from .protocol import ClientEvent

__all__ = ["BlockingStream", "Client"]

T = TypeVar("T")
SendT = TypeVar("SendT")
RecvT = TypeVar("RecvT")


class BlockingStream(Generic[SendT, RecvT]):
    """One streaming call: ``send``, ``close_send``, ``recv`` (None at the end), iteration."""

    def __init__(
        self,
        client: Client,
        stream_id: int,
        encode: Callable[[SendT], bytes],
        decode: Callable[[bytes], RecvT],
        deadline: float | None,
    ) -> None:
        self._client = client
        self.stream_id = stream_id
        self._encode = encode
        self._decode = decode
        self._deadline = deadline
        self._done = False
        self._send_closed = False
        self.last_was_response = False
        """True once ``recv`` returned the payload of a final OK Response, not a data frame."""

    def send(self, message: SendT) -> None:
        if self._send_closed:
            raise RpcError(Code.FAILED_PRECONDITION, "ttrpc: send side already closed")
        self._client._send(self._client._core.data(self.stream_id, self._encode(message)))

    def close_send(self) -> None:
        if not self._send_closed:
            self._send_closed = True
            self._client._send(self._client._core.close_send(self.stream_id))

    def recv(self) -> RecvT | None:
        if self._done:
            return None
        client = self._client
        event = client._next(self.stream_id, self._deadline)
        if isinstance(event, DataReceived):
            if event.end:
                self._finish()
            if event.payload is None:
                return self.recv() if not self._done else None
            return self._decode(event.payload)
        self._finish()
        if isinstance(event, ResponseReceived):
            response = event.response
            if response.code:
                raise client._error(response.code, response.message)
            self.last_was_response = True
            return self._decode(response.payload)
        raise client._error(event.code, event.message)

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for ``recv`` to have something to return without
        blocking (a message, the end, an error); True if it has. The call stays open either
        way, so a caller may do other work between waits."""
        if self._done:
            return True
        client = self._client
        queue = client._queues.get(self.stream_id)
        if queue is None:
            return True
        return client._fill(queue, time.monotonic() + timeout) or client._closed

    def _finish(self) -> None:
        self._done = True
        self._client._forget(self.stream_id)

    def close(self) -> None:
        """Abandon the call."""
        self._finish()

    def __iter__(self) -> Iterator[RecvT]:
        return self

    def __next__(self) -> RecvT:
        message = self.recv()
        if message is None:
            raise StopIteration
        return message


class Client:
    """A blocking connection to a ttrpc server at ``path``."""

    def __init__(self, path: str, error_factory: ErrorFactory | None = None, *, connect_timeout: float = 5.0) -> None:
        self._error = error_factory or RpcError
        self._core = ClientConnection()
        self._queues: dict[int, list[ClientEvent]] = {}
        self._closed = False
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(path)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise self._error(Code.UNAVAILABLE, f"connect {path}: {exc.strerror or exc}") from None
        self._sock = sock

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        if self._closed:
            raise self._error(Code.UNAVAILABLE, CLOSED_MESSAGE)
        try:
            self._sock.sendall(data)
        except OSError:
            self.close()
            raise self._error(Code.UNAVAILABLE, CLOSED_MESSAGE) from None

    def _open(
        self, service: str, method: str, payload: bytes, flags: int, timeout_nano: int, metadata: Metadata | None
    ) -> int:
        if self._closed:
            raise self._error(Code.UNAVAILABLE, CLOSED_MESSAGE)
        try:
            sid, frame = self._core.request(service, method, payload, flags, timeout_nano, metadata_pairs(metadata))
        except RpcError as exc:
            raise self._error(exc.code, exc.message) from None
        self._queues[sid] = []
        self._send(frame)
        return sid

    def _forget(self, sid: int) -> None:
        self._queues.pop(sid, None)
        self._core.forget(sid)

    def _next(self, sid: int, deadline: float | None) -> ClientEvent:
        queue = self._queues.get(sid)
        if queue is None:
            raise self._error(Code.UNAVAILABLE, CLOSED_MESSAGE)
        if not self._fill(queue, deadline):
            self._forget(sid)
            if self._closed:
                raise self._error(Code.UNAVAILABLE, CLOSED_MESSAGE)
            raise self._error(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
        return queue.pop(0)

    def _fill(self, queue: list[ClientEvent], deadline: float | None) -> bool:
        """Read replies, routing them, until ``queue`` has one (True); False once the
        connection is closed or ``deadline`` (``time.monotonic()``) has passed."""
        sock = self._sock
        core = self._core
        while not queue:
            if self._closed:
                return False
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                sock.settimeout(remaining)
            try:
                n = sock.recv_into(core.get_buffer())
            except TimeoutError:
                continue
            except OSError:
                n = 0
            finally:
                if deadline is not None and not self._closed:
                    sock.settimeout(None)
            if n == 0:
                self.close()
                continue
            for event in core.buffer_updated(n):
                target = self._queues.get(event.stream_id)
                if target is not None:
                    target.append(event)
        return True

    def unary_raw(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout_nano: int = 0,
        metadata: Metadata | None = None,
    ) -> bytes:
        deadline = time.monotonic() + timeout_nano / 1e9 if timeout_nano > 0 else None
        sid = self._open(service, method, payload, 0, timeout_nano, metadata)
        try:
            while True:
                event = self._next(sid, deadline)
                if isinstance(event, ResponseReceived):
                    response = event.response
                    if response.code:
                        raise self._error(response.code, response.message)
                    return response.payload
                if not isinstance(event, DataReceived):
                    raise self._error(event.code, event.message)
        finally:
            self._forget(sid)

    def unary(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: type[T],
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> T:
        payload = self.unary_raw(service, method, request.SerializeToString(), timeout_nano(timeout), metadata)
        return self._parser(service, method, response_type)(payload)

    def _parser(self, service: str, method: str, response_type: type[T]) -> Callable[[bytes], T]:
        """``response_type.FromString``, a reply it cannot parse an INTERNAL error naming the
        method (gRPC's client's code for "error parsing response proto") in place of the
        codec's own exception (protobuf's DecodeError, the wire codec's ValueError...)."""
        parse: Callable[[bytes], T] = response_type.FromString  # type: ignore[attr-defined]

        def checked(payload: bytes) -> T:
            try:
                return parse(payload)
            except Exception as exc:  # whatever the codec raises on bad bytes
                raise self._error(Code.INTERNAL, f"/{service}/{method}: cannot parse the reply: {exc}") from exc

        return checked

    def open_stream(
        self,
        service: str,
        method: str,
        payload: bytes | None,
        flags: int,
        timeout_nano: int = 0,
        metadata: Metadata | None = None,
    ) -> BlockingStream[bytes, bytes]:
        deadline = time.monotonic() + timeout_nano / 1e9 if timeout_nano > 0 else None
        sid = self._open(service, method, payload or b"", flags, timeout_nano, metadata)
        return BlockingStream(self, sid, identity, identity, deadline)

    def server_stream(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: type[T],
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Iterator[T]:
        nanos = timeout_nano(timeout)
        deadline = time.monotonic() + nanos / 1e9 if nanos else None
        sid = self._open(service, method, request.SerializeToString(), FLAG_REMOTE_CLOSED, nanos, metadata)
        stream: BlockingStream[Any, T] = BlockingStream(
            self, sid, serialize, self._parser(service, method, response_type), deadline
        )
        try:
            yield from stream
        finally:
            stream.close()

    def stream(
        self,
        service: str,
        method: str,
        response_type: type[T],
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> BlockingStream[Any, T]:
        nanos = timeout_nano(timeout)
        deadline = time.monotonic() + nanos / 1e9 if nanos else None
        sid = self._open(service, method, b"", FLAG_REMOTE_OPEN, nanos, metadata)
        return BlockingStream(self, sid, serialize, self._parser(service, method, response_type), deadline)
