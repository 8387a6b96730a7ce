"""Service descriptors: what generated code tells the server and clients about a service.

A generated ``<Svc>Servicer`` class carries ``__ttrpc_service__``, a ``ServiceSpec`` naming
the service and, per method, its ``Kind`` and message classes. No asyncio here: generated
modules import this at import time and must stay cheap.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .frame import FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN


class Kind(enum.Enum):
    """A method's call pattern, and the Request flags a 1.2 client opens it with."""

    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    CLIENT_STREAM = "client_stream"
    BIDI = "bidi"

    @property
    def flags(self) -> int:
        return _FLAGS[self]


_FLAGS = {
    Kind.UNARY: 0,
    Kind.SERVER_STREAM: FLAG_REMOTE_CLOSED,
    Kind.CLIENT_STREAM: FLAG_REMOTE_OPEN,
    Kind.BIDI: FLAG_REMOTE_OPEN,
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: Kind
    request_type: Any
    response_type: Any


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    methods: Mapping[str, MethodSpec]
