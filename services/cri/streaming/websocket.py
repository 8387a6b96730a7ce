"""WebSocket (RFC 6455) for the streaming server, server side, sans-IO, and Kubernetes'
channel protocol on top of it.

Handshake: ``accept_key(Sec-WebSocket-Key)`` for the 101's ``Sec-WebSocket-Accept``.
Framing: ``Decoder.feed(bytes) -> [(opcode, payload)]`` (whole messages: fragments joined;
control frames as they come; client frames must be masked) and ``frame(opcode, payload)``
(server frames, unmasked). Bad peer input raises :class:`WsProtocolError`.

Channels (k8s.io/apimachinery wsstream, binary subprotocols ``v4.channel.k8s.io``,
``v5.channel.k8s.io``, and for port forwarding ``v4.channel.k8s.io`` / ``portforward.k8s.io``):
every binary message is ``channel byte + data``. remotecommand: 0 stdin, 1 stdout,
2 stderr, 3 error, 4 resize; v5 adds 255 = close: ``[255, n]`` says the peer will send no
more on channel n (the client's stdin EOF). Port forwarding: port i has data channel 2i and
error channel 2i+1, and the server's first message on each is the port, uint16 little-endian.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass, field

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 16 << 20

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE_CHANNEL = 0, 1, 2, 3, 4, 255
V4 = "v4.channel.k8s.io"
V5 = "v5.channel.k8s.io"
REMOTECOMMAND = (V5, V4)
PORTFORWARD = (V4, "portforward.k8s.io")


class WsProtocolError(Exception):
    """The peer broke RFC 6455 framing."""


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key.strip() + GUID).encode()).digest()).decode()


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
    return head + payload


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    return frame(CLOSE, struct.pack(">H", code) + reason.encode()[:120])


@dataclass
class Decoder:
    _buf: bytearray = field(default_factory=bytearray)
    _parts: list[bytes] = field(default_factory=list)
    _opcode: int = -1

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while True:
            if len(self._buf) < 2:
                return out
            b0, b1 = self._buf[0], self._buf[1]
            fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            if b0 & 0x70:
                raise WsProtocolError("reserved bits set (no extension was negotiated)")
            if not masked:
                raise WsProtocolError("client frames must be masked")
            pos = 2
            if n == 126:
                if len(self._buf) < 4:
                    return out
                n, pos = struct.unpack_from(">H", self._buf, 2)[0], 4
            elif n == 127:
                if len(self._buf) < 10:
                    return out
                n, pos = struct.unpack_from(">Q", self._buf, 2)[0], 10
            if n > MAX_MESSAGE:
                raise WsProtocolError("frame too large")
            if len(self._buf) < pos + 4 + n:
                return out
            mask = bytes(self._buf[pos:pos + 4])
            payload = bytes(self._buf[pos + 4:pos + 4 + n])
            del self._buf[:pos + 4 + n]
            if n:
                m = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
                payload = (int.from_bytes(payload, "little") ^ m).to_bytes(n, "little")
            if opcode >= 0x8:
                if not fin or n > 125 or opcode not in (CLOSE, PING, PONG):
                    raise WsProtocolError(f"bad control frame {opcode}")
                out.append((opcode, payload))
                continue
            if opcode == CONT:
                if self._opcode < 0:
                    raise WsProtocolError("continuation without a message")
            elif opcode in (TEXT, BINARY):
                if self._opcode >= 0:
                    raise WsProtocolError("new message inside a fragmented one")
                self._opcode = opcode
            else:
                raise WsProtocolError(f"unknown opcode {opcode}")
            self._parts.append(payload)
            if sum(map(len, self._parts)) > MAX_MESSAGE:
                raise WsProtocolError("message too large")
            if fin:
                out.append((self._opcode, b"".join(self._parts)))
                self._parts, self._opcode = [], -1
