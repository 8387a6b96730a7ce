"""Two logical connections over one stream socket: containerd/nri's ``pkg/net/multiplex``.

Wire (unchanged since NRI v0.2.0): every frame is an 8-byte header, connection id then
payload length (both uint32 big-endian), then the payload, opaque bytes of that
connection's byte stream. Connection 1 carries the plugin's ttrpc service (runtime calls
plugin), connection 2 the runtime's (plugin calls runtime). There is no handshake and no
open/close/flow-control frame: a connection is "open" locally, closing means closing the
trunk, frames for an id nobody opened are dropped.

Sending, for Go peers: the Go mux hands one whole frame to each ``Read`` and fails (ENOMEM,
the trunk dies) when the reader's buffer is smaller, and ttrpc reads through a 4096-byte
buffered reader. So a ttrpc message goes out as one frame only when it is at most 4096
bytes; a longer one as its 10-byte header in one frame and its payload in the next (ttrpc
then reads the payload straight into a buffer of its size). :func:`encode_message` is that
rule; :class:`MessageSplitter` finds ttrpc message boundaries in a byte stream so it can
be applied. Receiving: each connection is a byte stream (Go splits its own messages at
arbitrary points).

Layers: :class:`FrameDecoder`, :class:`MessageSplitter` and :func:`encode_message` are
sans-IO. :class:`Mux` is the asyncio shell: it owns the trunk and, for each logical
connection, an in-memory asyncio transport that ttrpc's own server connection or client
protocol runs on (no extra socket hop). Should this ttrpc lack those classes, each logical
connection rides a socketpair instead (``Server.serve_connection``, ``Client.from_socket``).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ttrpc.creds import PeerCred, peer_cred

if TYPE_CHECKING:
    from ttrpc.client import Client
    from ttrpc.server import Server

__all__ = [
    "PLUGIN_SERVICE_CONN",
    "RUNTIME_SERVICE_CONN",
    "FrameDecoder",
    "MessageSplitter",
    "Mux",
    "MuxError",
    "encode_frame",
    "encode_message",
]

HEADER = struct.Struct(">II")
HEADER_SIZE = HEADER.size
PLUGIN_SERVICE_CONN = 1
RUNTIME_SERVICE_CONN = 2
TTRPC_HEADER = struct.Struct(">IIBB")
TTRPC_HEADER_SIZE = TTRPC_HEADER.size
SINGLE_FRAME_LIMIT = 4096
"""A ttrpc message at most this long travels as one frame."""
MAX_WRITE_FRAME = 4 * 1024 * 1024 + TTRPC_HEADER_SIZE
"""The Go writer's largest frame (v0.7.0+); we never send larger."""
MAX_READ_FRAME = 16 * 1024 * 1024 + TTRPC_HEADER_SIZE
"""Largest frame accepted (pre-v0.7 Go writers sent writes up to 16 MiB in one frame)."""


class MuxError(Exception):
    """The peer broke the multiplexer framing; the trunk must be closed."""


def encode_frame(conn_id: int, payload: bytes) -> bytes:
    return HEADER.pack(conn_id, len(payload)) + payload


def encode_message(conn_id: int, message: bytes) -> bytes:
    """The frames carrying one whole ttrpc ``message`` (header + payload) on ``conn_id``."""
    if len(message) <= SINGLE_FRAME_LIMIT:
        return encode_frame(conn_id, message)
    out = [encode_frame(conn_id, message[:TTRPC_HEADER_SIZE])]
    view = memoryview(message)[TTRPC_HEADER_SIZE:]
    for start in range(0, len(view), MAX_WRITE_FRAME):
        out.append(encode_frame(conn_id, bytes(view[start : start + MAX_WRITE_FRAME])))
    return b"".join(out)


class FrameDecoder:
    """Bytes from the trunk in, ``(conn_id, payload)`` out. Raises only MuxError."""

    def __init__(self, max_frame: int = MAX_READ_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            conn_id, length = HEADER.unpack_from(buf, pos)
            if length > self.max_frame:
                raise MuxError(f"mux: frame of {length} bytes on connection {conn_id} exceeds {self.max_frame}")
            end = pos + HEADER_SIZE + length
            if len(buf) < end:
                break
            out.append((conn_id, bytes(buf[pos + HEADER_SIZE : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out


class MessageSplitter:
    """A ttrpc byte stream in, whole messages (10-byte header + payload) out.

    The length is the ttrpc header's; nothing is validated beyond it (our own ttrpc wrote
    these bytes). A message is held until complete, so memory is bounded by one message.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= TTRPC_HEADER_SIZE:
            length = TTRPC_HEADER.unpack_from(buf, pos)[0]
            end = pos + TTRPC_HEADER_SIZE + length
            if len(buf) < end:
                break
            out.append(bytes(buf[pos:end]))
            pos = end
        if pos:
            del buf[:pos]
        return out


# ---------------------------------------------------------------------------------------
# asyncio shell


class _Trunk(asyncio.Protocol):
    def __init__(self, mux: Mux) -> None:
        self.mux = mux
        self.decoder = FrameDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.mux._trunk = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except MuxError as exc:
            self.mux._fail(exc)
            return
        ends = self.mux._ends
        for conn_id, payload in frames:
            end = ends.get(conn_id)
            if end is not None and payload:
                end.deliver(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.mux._lost(exc)


class _End:
    """What the mux needs of one logical connection's local end."""

    def deliver(self, data: bytes) -> None:
        raise NotImplementedError

    def lost(self) -> None:
        raise NotImplementedError


class _Virtual(asyncio.Transport, _End):
    """An in-memory transport for one logical connection: ttrpc's protocol reads what the
    trunk delivers for ``conn_id`` and its writes go out as frames (no extra socket hop)."""

    def __init__(self, mux: Mux, conn_id: int, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self.mux = mux
        self.conn_id = conn_id
        self.splitter = MessageSplitter()
        self._protocol = protocol
        self._paused = False
        self._backlog: list[bytes] = []
        self._closing = False

    # trunk -> protocol
    def deliver(self, data: bytes) -> None:
        if self._closing:
            return
        if self._paused:
            self._backlog.append(data)
            return
        proto = self._protocol
        if isinstance(proto, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(proto.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                view = view[n:]
                proto.buffer_updated(n)
        else:
            proto.data_received(data)  # type: ignore[attr-defined]

    def lost(self) -> None:
        if self._closing and self._protocol is None:
            return
        self._closing = True
        proto, self._protocol = self._protocol, None  # type: ignore[assignment]
        if proto is not None:
            proto.connection_lost(None)

    # protocol -> trunk
    def write(self, data: bytes | bytearray | memoryview) -> None:
        trunk = self.mux._trunk
        if self._closing or trunk is None or trunk.is_closing():
            return
        for message in self.splitter.feed(bytes(data)):
            trunk.write(encode_message(self.conn_id, message))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self.mux.close()

    def abort(self) -> None:
        self.mux.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        backlog, self._backlog = self._backlog, []
        for data in backlog:
            self.deliver(data)

    def is_reading(self) -> bool:
        return not self._paused

    def get_write_buffer_size(self) -> int:
        trunk = self.mux._trunk
        return trunk.get_write_buffer_size() if trunk is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class _Pair(asyncio.Protocol, _End):
    """Fallback local end: our side of a socketpair whose other side ttrpc uses."""

    def __init__(self, mux: Mux, conn_id: int) -> None:
        self.mux = mux
        self.conn_id = conn_id
        self.splitter = MessageSplitter()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def deliver(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def lost(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        trunk = self.mux._trunk
        if trunk is None or trunk.is_closing():
            return
        for message in self.splitter.feed(data):
            trunk.write(encode_message(self.conn_id, message))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.mux.close()


def _private_protocols() -> tuple[Any, Any] | None:
    """ttrpc's server connection and client protocol classes, for in-memory transports;
    None when this ttrpc does not have them (then socketpairs carry each connection)."""
    try:
        from ttrpc.client import _Protocol
        from ttrpc.server import _Connection
    except ImportError:
        return None
    return _Connection, _Protocol


class Mux:
    """One trunk socket carrying logical connections 1 and 2, each with our ttrpc on it.

    ``mux, client = await Mux.open(sock, serve=(conn_id, server), connect=other_id)``
    takes ownership of a connected stream socket, serves ``server`` on one logical
    connection and returns a ttrpc client on the other. Closing the client, the mux, or
    the peer closing the trunk closes everything; :attr:`closed` is done then.
    """

    def __init__(self, peer: PeerCred) -> None:
        self.peer = peer
        self._trunk: asyncio.Transport | None = None
        self._ends: dict[int, _End] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: BaseException | None = None
        self._on_close: list[Callable[[], None]] = []

    @classmethod
    async def open(
        cls,
        trunk: socket.socket,
        *,
        serve: tuple[int, Server],
        connect: int,
        error_factory: Callable[[int, str], Exception] | None = None,
        in_memory: bool = True,
    ) -> tuple[Mux, Client]:
        from ttrpc.client import Client
        from ttrpc.errors import RpcError

        loop = asyncio.get_running_loop()
        mux = cls(peer_cred(trunk))
        classes = _private_protocols() if in_memory else None
        try:
            conn_id, server = serve
            client = None
            if classes is not None:
                try:
                    client = mux._attach_in_memory(classes, conn_id, server, connect, error_factory or RpcError)
                except (TypeError, AttributeError):  # ttrpc's internals changed: use socketpairs
                    mux._ends.clear()
                    client = None
            if client is None:
                theirs = await mux._pair(conn_id)
                await server.serve_connection(theirs)
                client = await Client.from_socket(await mux._pair(connect), error_factory)
            await loop.connect_accepted_socket(lambda: _Trunk(mux), trunk)
        except BaseException:
            mux.close()
            trunk.close()
            raise
        return mux, client

    def _attach_in_memory(self, classes: tuple[Any, Any], conn_id: int, server: Server, connect: int,
                          error_factory: Callable[[int, str], Exception]) -> Client:
        from ttrpc.client import Client

        server_cls, client_cls = classes
        sproto = server_cls(server)
        sside = _Virtual(self, conn_id, sproto)
        self._ends[conn_id] = sside
        cproto = client_cls(error_factory, 64, 1.0)
        cside = _Virtual(self, connect, cproto)
        self._ends[connect] = cside
        sproto.connection_made(sside)
        cproto.connection_made(cside)
        return Client(cproto)

    async def _pair(self, conn_id: int) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        end = _Pair(self, conn_id)
        self._ends[conn_id] = end
        await asyncio.get_running_loop().connect_accepted_socket(lambda: end, ours)
        return theirs

    def on_close(self, fn: Callable[[], None]) -> None:
        self._on_close.append(fn)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.close()

    def _lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = exc
        self.close()

    def close(self) -> None:
        if self.closed.done():
            return
        self.closed.set_result(None)
        if self._trunk is not None:
            self._trunk.close()
        for end in self._ends.values():
            end.lost()
        for fn in self._on_close:
            fn()
