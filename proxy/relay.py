"""The front door's C data plane (proxy/relay.c), with the Python splice behind it.

One thread runs the relay: it owns the listening socket and every client connection, and
carries the calls it can route on its own (a routed service, namespaces the proxy already
knows, a replica it reaches) straight to the least busy replica, over the client's own
connection to it (a client that stops reading holds back only itself), stream ids rewritten,
nothing decoded but the Request envelope. No Python runs for those calls.

Everything else a client sends (the proxy's own services, unknown services, a namespace seen
for the first time, a Request it cannot read, a backend it cannot reach, any call once the
proxy drains) goes unchanged to the Python splice (proxy/splice.py) over a socketpair per
client: the splice serves that end as one more client connection (``Front``), so every
answer and error is the splice's own, byte for byte as when it serves alone.

The relay learns which namespaces are known from the splice (``Splice.mirror``): a
namespace is routed in C only after the splice has validated and recorded it, and not once
it is deleted.

Built by ``make relay`` (proxy/relay_build.py). When the module is missing the proxy serves
with the splice alone (``available()`` is False) and logs it.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import socket
import sys
import threading
from typing import Any

from .splice import Front, Splice

log = logging.getLogger("moorage.proxy.relay")

def _load() -> tuple[Any, Any]:
    """The built module's (ffi, lib); ``MOORAGE_RELAY_EXT`` names another build of it (the
    sanitizer build the tests use); (None, None) when there is none."""
    path = os.environ.get("MOORAGE_RELAY_EXT")
    module: Any
    try:
        if path:
            spec = importlib.util.spec_from_file_location(f"{__package__}._relay", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(f"{__package__}._relay")
    except ImportError:  # not built: the splice serves alone
        return None, None
    return module.ffi, module.lib


ffi, lib = _load()

_FD = 4  # bytes of one word on the notify pipe (a native int: an fd, or RELAY_DRAINED)


def available() -> bool:
    """Whether the C relay is built."""
    return lib is not None


class Relay:
    """The C relay serving ``listener`` in front of ``splice``; ``start()`` runs it."""

    def __init__(self, listener: socket.socket, splice: Splice) -> None:
        if lib is None:
            raise RuntimeError("the C relay is not built (make relay)")
        self.splice = splice
        self._notify_r, self._notify_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending = b""
        listener.setblocking(False)
        fd = listener.detach()  # the relay owns it from here
        self._r: Any = lib.relay_new(fd, self._notify_w)
        if self._r == ffi.NULL:
            os.close(fd)
            raise OSError("cannot start the C relay")
        self._routes(splice)
        for ns in splice.known_namespaces:
            self.know(ns)
        splice.mirror = self
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained: asyncio.Future[None] | None = None

    def _routes(self, splice: Splice) -> None:
        index: dict[int, int] = {}
        for svc in splice.services():
            proc = lib.relay_add_process(self._r, svc.process.encode())
            if proc < 0:
                raise MemoryError("relay: process table")
            index[id(svc)] = proc
            for replica in svc.replicas:
                if lib.relay_add_replica(self._r, proc, os.fsencode(replica.path)) < 0:
                    raise ValueError(f"relay: bad backend socket path {replica.path!r}")
        for name, svc in splice.routes.items():
            if lib.relay_add_route(self._r, name.encode(), index[id(svc)]) < 0:
                raise MemoryError("relay: route table")

    # the splice's namespace mirror -------------------------------------------------------

    def know(self, ns: str) -> None:
        data = ns.encode()
        lib.relay_know(self._r, data, len(data))

    def forget(self, ns: str) -> None:
        data = ns.encode()
        lib.relay_forget(self._r, data, len(data))

    # running -----------------------------------------------------------------------------

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(self._notify_r, self._take)
        self._thread = threading.Thread(target=self._run, name="moorage-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rc = lib.relay_run(self._r)  # the GIL is released for the relay's whole life
        if rc:
            log.error("the C relay stopped: %s", os.strerror(rc))

    def _take(self) -> None:
        """Serve the splice's end of each socketpair the relay announced; note the word
        that says it is drained."""
        try:
            data = self._pending + os.read(self._notify_r, 4096 * _FD)
        except BlockingIOError:
            return
        whole = len(data) - len(data) % _FD
        self._pending = data[whole:]
        for i in range(0, whole, _FD):
            fd = int.from_bytes(data[i : i + _FD], sys.byteorder, signed=True)
            if fd == lib.RELAY_DRAINED:
                if self._drained is not None and not self._drained.done():
                    self._drained.set_result(None)
                continue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
            self.splice.spawn(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: Front(self.splice), sock)
        except OSError:
            sock.close()

    @property
    def open_streams(self) -> int:
        """Calls the relay carries now (not those handed to the splice)."""
        return int(lib.relay_open_streams(self._r))

    async def drain(self, grace: float) -> None:
        """Stop accepting, hand every new call to the splice (which refuses it), and wait up
        to ``grace`` seconds for the relay's open calls to end."""
        drained = self._drained = asyncio.get_running_loop().create_future()
        lib.relay_set_closing(self._r)  # the relay answers RELAY_DRAINED when none is left
        try:
            await asyncio.wait_for(drained, grace)
        except TimeoutError:
            pass

    async def stop(self) -> None:
        """Drop every connection and end the thread."""
        if self._thread is None:
            return
        lib.relay_stop(self._r)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        self.close()

    def close(self) -> None:
        if self._thread is not None:  # still running: stop() first
            return
        if self._loop is not None:
            self._loop.remove_reader(self._notify_r)
            self._loop = None
        if self._r is not None:
            lib.relay_free(self._r)
            self._r = None
            os.close(self._notify_r)
            os.close(self._notify_w)
        if self.splice.mirror is self:
            self.splice.mirror = None

