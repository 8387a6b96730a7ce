"""One connected NRI plugin, as the runtime side sees it: identity, connection, subscription.

Lifecycle: a trunk socket arrives (accepted on the NRI socket, or our end of a launched
plugin's socketpair) -> :meth:`PluginConn.open` builds the mux, serves the runtime service
on connection 2 and opens a ttrpc client on connection 1 -> the plugin's RegisterPlugin
resolves :attr:`registered` -> the adaptation configures and synchronizes it -> events ->
:meth:`close` (dropped by the adaptation, or the peer went away: :attr:`mux.closed`).
A launched plugin's process is killed when its connection closes (the adaptation may
launch it again).
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import TYPE_CHECKING

from moorage import errdefs
from moorage.api.nri.pkg.api import api_pb2 as api
from moorage.api.nri.pkg.api.api_ttrpc import PluginClient

from .mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux

if TYPE_CHECKING:
    from .launcher import Child, Preinstalled
    from ttrpc.client import Client
    from ttrpc.server import Server

NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
IDX_RE = re.compile(r"^[0-9]{2}$")

EVENT_NAMES: dict[int, str] = {
    v: k.lower() for k, v in api.Event.items() if k not in ("UNKNOWN", "LAST")
}
VALID_EVENTS = (1 << (api.Event.Value("LAST") - 1)) - 1


def event_bit(event: int) -> int:
    return 1 << (event - 1)


def event_names(mask: int) -> list[str]:
    return [name for ev, name in sorted(EVENT_NAMES.items()) if mask & event_bit(ev)]


def check_identity(name: str, idx: str) -> None:
    """Raise InvalidArgument unless ``name``/``idx`` are a valid NRI plugin identity."""
    if not name or not NAME_RE.match(name):
        raise errdefs.InvalidArgument(f"invalid plugin name {name!r}")
    if not IDX_RE.match(idx):
        raise errdefs.InvalidArgument(f"invalid plugin index {idx!r} (want two digits)")


class PluginConn:
    """A plugin connection; ``id`` is ``NN-name`` once registered."""

    def __init__(self, mux: Mux | None, launched: Child | None = None,
                 name: str = "", idx: str = "") -> None:
        self.mux: Mux = mux  # type: ignore[assignment]  # set by open() before use
        self.launched = launched
        self.name = name
        self.idx = idx
        self.nri_version = ""
        self.events = 0
        self.pid = launched.pid if launched is not None else 0
        self.was_launched = launched is not None
        self.registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready = False
        self.legacy: set[str] = set()
        """Event methods the plugin answered UNIMPLEMENTED to (StateChange is used instead)."""
        self.client: PluginClient | None = None
        self._ttrpc_client: Client | None = None
        self._server: Server | None = None
        self.close_reason = ""
        self.origin: Preinstalled | None = None
        """The plugin-folder entry a launched plugin came from (for restarts)."""
        self.restart_scheduled = False
        self.reaped: asyncio.Future[int] | None = None
        """A launched plugin's exit status, once closed (it is killed, then waited for)."""

    @property
    def id(self) -> str:
        return f"{self.idx}-{self.name}" if self.name else f"pid {self.pid}"

    def subscribed(self, event: int) -> bool:
        return self.ready and bool(self.events & event_bit(event))

    @classmethod
    async def open(cls, trunk: socket.socket, runtime_servicer_factory: object,
                   launched: Child | None = None,
                   name: str = "", idx: str = "") -> PluginConn:
        from ttrpc.client import Client
        from ttrpc.server import Server

        from moorage.rpc import status_of

        server = Server(status_of=status_of)
        conn = cls(None, launched, name, idx)
        server.register(runtime_servicer_factory(conn))  # type: ignore[operator]
        conn._server = server
        mux, client = await Mux.open(trunk, serve=(RUNTIME_SERVICE_CONN, server), connect=PLUGIN_SERVICE_CONN)
        conn.mux = mux
        if launched is None:
            conn.pid = mux.peer.pid
        conn._ttrpc_client = client
        conn.client = PluginClient(client)
        return conn

    def close(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason or "closed"
        self.ready = False
        if self.mux is not None:
            self.mux.close()
        if self._server is not None:
            self._server.close()
        if not self.registered.done():
            self.registered.set_exception(errdefs.Unavailable(f"plugin {self.id}: {self.close_reason}"))
            self.registered.exception()  # retrieved: nobody may be waiting
        proc, self.launched = self.launched, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            self.reaped = asyncio.get_running_loop().run_in_executor(None, proc.wait)
