"""Peer credentials of a unix socket connection (SO_PEERCRED)."""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

_UCRED = struct.Struct("3i")


class PeerCred(NamedTuple):
    pid: int
    uid: int
    gid: int


UNKNOWN_PEER = PeerCred(0, -1, -1)


def peer_cred(sock: socket.socket | None) -> PeerCred:
    """The credentials the kernel recorded for the peer at connect time."""
    if sock is None or sock.family != socket.AF_UNIX:
        return UNKNOWN_PEER
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return UNKNOWN_PEER
    return PeerCred(*_UCRED.unpack(raw))
