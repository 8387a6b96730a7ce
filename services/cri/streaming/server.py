"""The CRI streaming server: kubelet's `/exec/{token}`, `/attach/{token}`,
`/portforward/{token}` over HTTP/1.1 on loopback, upgraded to SPDY/3.1 or WebSocket.

Lifecycle: ``StreamingServer(backend, host, port)``; ``await start()`` binds (port 0 = any
free port); ``exec_url``/``attach_url``/``port_forward_url`` store the request under a
single-use token that expires (tokens.TokenCache) and return its URL; a client then does
``GET|POST <url>`` with ``Connection: Upgrade``, ``Upgrade: SPDY/3.1`` and its
``X-Stream-Protocol-Version`` list. An unknown, used or expired token is a 404 (the token
is spent by its first request, whatever happens next); a request without the upgrade is a
400; no common protocol is a 403. ``await stop()`` closes the listener and every session.

After the 101 the session (session.py) accepts the client's streams (remotecommand.py
says which); exec and attach then run in the backend while a closed connection cancels
them; the outcome goes on the error stream, the output streams get their FIN, and the
session shuts down. Port forwarding serves stream pairs until the client closes.
With ``Upgrade: websocket`` the same requests run over channels.py (subprotocols
``v5``/``v4.channel.k8s.io``; port forwarding opens a channel pair per requested port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from moorage.errdefs import Error, InvalidArgument

from . import remotecommand as rc
from . import websocket as ws
from .channels import ChannelSession
from .contract import Backend, Duplex, InStream, OutStream, TermSize
from .session import Session, Stream
from .tokens import TokenCache

log = logging.getLogger(__name__)

STREAM_CREATION_TIMEOUT = 30.0
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class PortForwardRequest:
    pod_sandbox_id: str
    ports: tuple[int, ...]


Request = ExecRequest | AttachRequest | PortForwardRequest


def _check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true")


class StreamingServer:
    """kubelet's CRI streaming server on ``host:port``, backed by ``backend``."""

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0, *,
                 token_ttl: float = 60.0,
                 stream_timeout: float = STREAM_CREATION_TIMEOUT) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.stream_timeout = stream_timeout
        self.tokens: TokenCache[Request] = TokenCache(token_ttl)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port,
                                                  limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    @property
    def _grace(self) -> float:
        """How long a session's end waits for the client to close: none when stopping."""
        return 0.0 if self._stopping else 5.0

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---- URLs (what the CRI Exec/Attach/PortForward calls return) ------------------------

    def exec_url(self, container_id: str, cmd: Sequence[str], tty: bool, stdin: bool,
                 stdout: bool, stderr: bool) -> str:
        if not container_id:
            raise InvalidArgument("missing required container_id")
        if not cmd:
            raise InvalidArgument("missing required cmd")
        _check_streams(stdin, stdout, stderr, tty)
        token = self.tokens.put(ExecRequest(container_id, tuple(cmd), tty, stdin, stdout, stderr))
        return f"{self.base_url}/exec/{quote(token)}"

    def attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool,
                   stderr: bool) -> str:
        if not container_id:
            raise InvalidArgument("missing required container_id")
        _check_streams(stdin, stdout, stderr, tty)
        token = self.tokens.put(AttachRequest(container_id, tty, stdin, stdout, stderr))
        return f"{self.base_url}/attach/{quote(token)}"

    def port_forward_url(self, pod_sandbox_id: str, ports: Sequence[int] = ()) -> str:
        if not pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        for p in ports:
            if not 0 < p < 65536:
                raise InvalidArgument(f"invalid port {p}")
        token = self.tokens.put(PortForwardRequest(pod_sandbox_id, tuple(ports)))
        return f"{self.base_url}/portforward/{quote(token)}"

    # ---- HTTP ----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # stop(): the server is going away
            pass
        except Exception:
            log.exception("streaming connection")
        finally:
            self._conns.discard(task)
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: str, body: str) -> None:
        data = body.encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._reply(writer, "400 Bad Request", "bad request line")
            return
        method, target = parts[0], parts[1]
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                await self._reply(writer, "400 Bad Request", "bad header line")
                return
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        path = target.split("?", 1)[0]
        kind, _, token = path.strip("/").partition("/")
        if method not in ("GET", "POST") or kind not in ("exec", "attach", "portforward") \
                or not token or "/" in token:
            await self._reply(writer, "404 Not Found", "404 page not found\n")
            return
        req = self.tokens.take(token)
        if req is None or type(req) is not {"exec": ExecRequest, "attach": AttachRequest,
                                            "portforward": PortForwardRequest}[kind]:
            await self._reply(writer, "404 Not Found", "404 page not found\n")
            return
        upgrade = ",".join(headers.get("upgrade", [])).lower()
        connection = ",".join(headers.get("connection", [])).lower()
        if "upgrade" in connection and "websocket" in upgrade:
            await self._websocket(reader, writer, headers, req)
            return
        if "upgrade" not in connection or "spdy/3.1" not in upgrade:
            await self._reply(writer, "400 Bad Request",
                              "unable to upgrade: missing upgrade headers in request")
            return
        supported = (rc.PORTFORWARD,) if kind == "portforward" else rc.REMOTECOMMAND_SPDY
        try:
            protocol = rc.negotiate(headers.get("x-stream-protocol-version", []), supported)
        except rc.NoCommonProtocol as exc:
            await self._reply(writer, "403 Forbidden", str(exc))
            return
        if not protocol and kind == "portforward":
            protocol = rc.PORTFORWARD
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                     b"Upgrade: SPDY/3.1\r\n"
                     + (f"X-Stream-Protocol-Version: {protocol}\r\n".encode() if protocol else b"")
                     + b"\r\n")
        await writer.drain()
        session = Session(reader, writer)
        runner = asyncio.get_running_loop().create_task(session.run())
        try:
            if isinstance(req, PortForwardRequest):
                await self._port_forward(session, req)
            else:
                await self._remotecommand(session, protocol or rc.V1, req)
        finally:
            await session.shutdown(self._grace)
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    # ---- exec and attach -----------------------------------------------------------------

    async def _remotecommand(self, session: Session, protocol: str,
                             req: ExecRequest | AttachRequest) -> None:
        want = rc.expected_streams(protocol, req.stdin, req.stdout, req.stderr, req.tty)
        streams: dict[str, Stream] = {}
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancellation that
            # arrives as the accept completes (stop() would then wait on this session)
            async with asyncio.timeout(self.stream_timeout):
                while not want <= streams.keys():
                    s = await session.accept()
                    if s is None:
                        return
                    kind = s.header(rc.STREAM_TYPE)
                    if kind not in want or kind in streams:
                        await s.reset()
                        continue
                    streams[kind] = s
        except TimeoutError:
            log.warning("streaming: timed out waiting for client streams %s",
                        sorted(want - streams.keys()))
            return

        await self._execute(req, protocol == rc.V4, streams.get(rc.STDIN),
                            streams.get(rc.STDOUT), streams.get(rc.STDERR), streams[rc.ERROR],
                            streams.get(rc.RESIZE), session.closed)

    async def _execute(self, req: ExecRequest | AttachRequest, json_status: bool,
                       stdin: InStream | None, stdout: OutStream | None,
                       stderr: OutStream | None, err: OutStream, resize_in: InStream | None,
                       closed: asyncio.Event) -> None:
        """Run the request in the backend (cancelled if `closed` is set first) and write its
        outcome on `err`: a JSON status (v4, v5), or only a failure's message (v1-v3)."""
        loop = asyncio.get_running_loop()

        async def sizes(stream: InStream) -> AsyncIterator[TermSize]:
            decoder = rc.ResizeDecoder()
            while data := await stream.read():
                for size in decoder.feed(data):
                    yield size

        resize = sizes(resize_in) if resize_in is not None else None
        work: Coroutine[Any, Any, int | None]
        if isinstance(req, ExecRequest):
            work = self.backend.exec(req.container_id, req.cmd, req.tty, stdin, stdout, stderr,
                                     resize)
        else:
            work = self.backend.attach(req.container_id, req.tty, stdin, stdout, stderr, resize)
        job = loop.create_task(work)
        gone = loop.create_task(closed.wait())
        try:
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (stop): the backend's work goes too
            job.cancel()
            raise
        finally:
            gone.cancel()
        if not job.done():  # the client left
            job.cancel()
            with contextlib.suppress(BaseException):
                await job
            return
        try:
            result = job.result()
        except Error as exc:
            status = rc.internal_error(str(exc))
        except Exception as exc:
            log.exception("streaming %s %s", type(req).__name__, req.container_id)
            status = rc.internal_error(str(exc))
        else:
            code = result if isinstance(result, int) else 0
            status = rc.success() if code == 0 else rc.exit_failure(
                req.cmd if isinstance(req, ExecRequest) else (), code)
        for out in (stdout, stderr):
            if out is not None:
                await out.close()
        with contextlib.suppress(ConnectionError):
            await err.write(status if json_status else rc.v1_message(status))
        await err.close()

    # ---- port forwarding -----------------------------------------------------------------

    async def _port_forward(self, session: Session, req: PortForwardRequest) -> None:
        pairs: dict[str, dict[str, Stream]] = {}
        jobs: set[asyncio.Task[None]] = set()
        try:
            while (s := await session.accept()) is not None:
                kind = s.header(rc.STREAM_TYPE)
                rid = s.header(rc.REQUEST_ID) or str(s.id if kind == rc.ERROR else s.id - 2)
                port_text = s.header(rc.PORT)
                if kind not in (rc.ERROR, rc.DATA) or not port_text.isdigit() \
                        or not 0 < int(port_text) < 65536:
                    await s.reset()
                    continue
                pair = pairs.setdefault(rid, {})
                if kind in pair:
                    await s.reset()
                    continue
                pair[kind] = s
                if len(pair) == 2:
                    del pairs[rid]
                    job = asyncio.get_running_loop().create_task(
                        self._forward(req.pod_sandbox_id, int(port_text), pair[rc.DATA],
                                      pair[rc.ERROR]))
                    jobs.add(job)
                    job.add_done_callback(jobs.discard)
        finally:
            for j in list(jobs):
                j.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

    async def _forward(self, pod: str, port: int, data: Duplex, error: OutStream) -> None:
        try:
            await self.backend.port_forward(pod, port, data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            with contextlib.suppress(ConnectionError):
                await error.write(
                    f"error forwarding port {port} to pod {pod}, uid : {exc}".encode())
        finally:
            with contextlib.suppress(ConnectionError):
                await data.close()
                await error.close()

    # ---- WebSocket -----------------------------------------------------------------------

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         headers: dict[str, list[str]], req: Request) -> None:
        key = ",".join(headers.get("sec-websocket-key", [])).strip()
        if not key or ",".join(headers.get("sec-websocket-version", [])).strip() != "13":
            await self._reply(writer, "400 Bad Request", "websocket: version 13 and a key needed")
            return
        offered = [p.strip() for h in headers.get("sec-websocket-protocol", [])
                   for p in h.split(",") if p.strip()]
        supported = ws.PORTFORWARD if isinstance(req, PortForwardRequest) else ws.REMOTECOMMAND
        protocol = next((p for p in offered if p in supported), "")
        if offered and not protocol:
            await self._reply(writer, "403 Forbidden",
                              f"unable to upgrade: no common websocket protocol in {offered}, "
                              f"server supports {list(supported)}")
            return
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n"
                     + f"Sec-WebSocket-Accept: {ws.accept_key(key)}\r\n".encode()
                     + (f"Sec-WebSocket-Protocol: {protocol}\r\n".encode() if protocol else b"")
                     + b"\r\n")
        await writer.drain()
        session = ChannelSession(reader, writer, v5=protocol == ws.V5)
        try:
            if isinstance(req, PortForwardRequest):
                await self._ws_port_forward(session, req)
            else:
                await self._ws_remotecommand(session, req)
        finally:
            await session.shutdown(self._grace)

    async def _ws_remotecommand(self, session: ChannelSession,
                                req: ExecRequest | AttachRequest) -> None:
        stdin = session.channel(ws.STDIN) if req.stdin else None
        stdout = session.channel(ws.STDOUT) if req.stdout else None
        stderr = session.channel(ws.STDERR) if req.stderr and not req.tty else None
        err = session.channel(ws.ERROR)
        resize = session.channel(ws.RESIZE) if req.tty else None
        runner = asyncio.get_running_loop().create_task(session.run())
        try:
            # as kubelet: an empty message on the first channel we write tells the client
            # the streams are ready
            await (stdout or stderr or err).write(b"")
            await self._execute(req, True, stdin, stdout, stderr, err, resize, session.closed)
        finally:
            if not session.closed.is_set():
                await session.shutdown(self._grace)
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def _ws_port_forward(self, session: ChannelSession, req: PortForwardRequest) -> None:
        if not req.ports:
            return
        loop = asyncio.get_running_loop()
        pairs = [(port, session.channel(2 * i), session.channel(2 * i + 1))
                 for i, port in enumerate(req.ports)]
        runner = loop.create_task(session.run())
        try:
            for port, data, error in pairs:
                await data.write(struct.pack("<H", port))
                await error.write(struct.pack("<H", port))
            jobs = [loop.create_task(self._forward(req.pod_sandbox_id, port, data, error))
                    for port, data, error in pairs]
            gone = loop.create_task(session.closed.wait())
            try:
                await asyncio.wait([gone, loop.create_task(asyncio.wait(jobs))],
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                for j in jobs:
                    j.cancel()
                await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            if not session.closed.is_set():
                await session.shutdown(self._grace)
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
