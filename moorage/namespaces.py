"""Namespaces on the wire and in the running call.

Every durable record in the suite is keyed by a namespace. A call carries it in ttrpc
metadata ``containerd-namespace-ttrpc``; the runner copies it into :data:`current_namespace`
for the handler, so servicers and stores call :func:`namespace` instead of passing it around.

Names follow containerd's identifier rules: runs of ``[A-Za-z0-9]`` joined by single ``.``,
``_`` or ``-``, 1 to 76 characters.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar

from moorage.errdefs import FailedPrecondition, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

NAMESPACE_KEY = "containerd-namespace-ttrpc"
GRPC_NAMESPACE_KEY = "containerd-namespace"
DEFAULT = "default"
MAX_LENGTH = 76

IDENTIFIER = r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*"

current_namespace: ContextVar[str | None] = ContextVar("moorage_namespace", default=None)


def namespace() -> str:
    """The namespace of the running call; FailedPrecondition when the caller sent none.

    Read from :data:`current_namespace` (the runner sets it for every call), else from the
    metadata of the running ttrpc handler.
    """
    ns = current_namespace.get()
    if ns is None:
        ns = _from_running_call()
    if not ns:
        raise FailedPrecondition("namespace is required")
    return ns


def _from_running_call() -> str | None:
    md = running_call_metadata()
    return None if md is None else from_metadata(md)


def running_call_metadata() -> Mapping[str, Sequence[str]] | None:
    """The metadata of the ttrpc call this task serves, or None (no server, no call)."""
    server = sys.modules.get("ttrpc.server")  # never imported here: no server, no call
    if server is None:
        return None
    try:
        ctx = server.current_context()
    except LookupError:
        return None
    if ctx is None:
        return None
    md: Mapping[str, Sequence[str]] = ctx.metadata
    return md


def validate_namespace(name: str) -> str:
    """Return ``name`` if it is a valid identifier, else raise InvalidArgument."""
    if not name:
        raise InvalidArgument("namespace: identifier must not be empty")
    if len(name) > MAX_LENGTH:
        raise InvalidArgument(f"namespace: identifier {name[:MAX_LENGTH]!r}... greater than maximum length ({MAX_LENGTH} characters)")
    import re  # here: `moor` imports this module, and needs no re

    if not re.fullmatch(IDENTIFIER, name):
        raise InvalidArgument(f"namespace: identifier {name!r} must match {IDENTIFIER}")
    return name


def from_metadata(metadata: Mapping[str, Sequence[str] | str]) -> str | None:
    """The namespace a call's metadata names (first value), or None."""
    return first_value(metadata, NAMESPACE_KEY)


def first_value(metadata: Mapping[str, Sequence[str] | str], key: str) -> str | None:
    """The first value of ``key`` in a call's metadata, or None."""
    values = metadata.get(key)
    if not values:
        return None
    if isinstance(values, str):
        return values
    return values[0]


def metadata(name: str) -> dict[str, str]:
    """Metadata that carries ``name`` on an outgoing call."""
    return {NAMESPACE_KEY: name}
