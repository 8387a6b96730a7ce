"""What both clients (asyncio and blocking) share about a call; no I/O, no asyncio."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    ErrorFactory = Callable[[int, str], Exception]
    """Turns a status a call got back into the exception it raises."""

CLOSED_MESSAGE = "ttrpc: connection closed"


def identity(data: bytes) -> Any:
    """The codec of raw calls: payload bytes as they are."""
    return data


def serialize(message: Any) -> bytes:
    """The encoder of typed calls: a protobuf message's bytes."""
    return message.SerializeToString()  # type: ignore[no-any-return]


def timeout_nano(timeout: float | None) -> int:
    """A relative timeout in seconds as the Request's ``timeout_nano`` (0 = none)."""
    return int(timeout * 1e9) if timeout is not None and timeout > 0 else 0
