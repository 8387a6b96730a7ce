"""The two exceptions of ttrpc: a status from the peer, and a peer that broke the protocol."""

from __future__ import annotations

from .codes import Code


class RpcError(Exception):
    """A call ended with a non-OK status.

    Clients raise it (unless given an ``error_factory``); handlers may raise it to answer
    with that exact status.
    """

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        try:
            name = Code(self.code).name
        except ValueError:
            name = str(self.code)
        return f"{name}: {self.message}" if self.message else name

    def __repr__(self) -> str:
        return f"RpcError({self.code!r}, {self.message!r})"


class ProtocolError(Exception):
    """The peer sent bytes that are not valid ttrpc.

    This is the one error the sans-IO core raises on bad peer input; anything else escaping
    the decoders is a bug.
    """
