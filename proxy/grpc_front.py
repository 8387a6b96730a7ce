"""containerd's gRPC API at the front door: ``<state>/moorage.sock`` for ctr, nerdctl and
the containerd Go client.

Every gRPC call is forwarded, payload bytes unchanged, as a ttrpc call to the proxy's own
ttrpc front door (``moorage.sock.ttrpc``), so it reaches the same backends and the proxy's
own services (namespaces, events, leases, introspection, version) by the same routing.
grpc.aio serves on the proxy's event loop (uvloop included); the hop to the ttrpc side is
one multiplexed unix connection for unary calls, reconnected when it drops, and one
connection per streaming call (so a slow reader backs up its own stream only).

Per call:

- the method kind (unary, server, client or bidirectional stream) comes from the service's
  descriptor in ``moorage.api`` (containerd's protos and the CRI's ``runtime.v1``); a
  service or method nobody declared is UNIMPLEMENTED ``unknown service S`` /
  ``unknown method M for service S``, as grpc-go;
- gRPC metadata ``containerd-namespace`` becomes ttrpc ``containerd-namespace-ttrpc``;
  ``containerd-lease`` goes through as it is; the deadline becomes ``timeout_nano``;
- a ttrpc status comes back as the same gRPC status code and message;
- message sizes are containerd's defaults (16 MiB each way); gRPC refuses bigger with
  RESOURCE_EXHAUSTED, and a message over ttrpc's 4 MiB frame limit gets the ttrpc
  RESOURCE_EXHAUSTED from the front door.

The socket is bound inside the proxy's 0700 state folder, chmod 0660, then renamed into
place, so it is never reachable with looser permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import pkgutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pool

from moorage import errdefs
from moorage.namespaces import NAMESPACE_KEY
from moorage.registry import Listener
from moorage.rpc import Peer
from moorage.runner import claim_socket
from ttrpc.client import Client
from ttrpc.codes import Code
from ttrpc.errors import RpcError
from ttrpc.frame import FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN

log = logging.getLogger("moorage.proxy.grpc")

GRPC_NAMESPACE_KEY = "containerd-namespace"
LEASE_KEY = "containerd-lease"
DEFAULT_MAX_RECV_MESSAGE_SIZE = 16 << 20
DEFAULT_MAX_SEND_MESSAGE_SIZE = 16 << 20
STREAM_STALL = 300.0
"""Seconds a streaming call's gRPC peer may leave 64 messages unread before the call fails."""

_STATUS = {c.value[0]: c for c in grpc.StatusCode}

Kind = tuple[bool, bool]
"""(client_streaming, server_streaming) of a method."""


class MethodTable:
    """The kind of each method served at the front door, from the descriptors of
    ``moorage.api``'s protos: containerd's and the Kubernetes CRI's (``runtime.v1``),
    imported once, on the first lookup."""

    DEFAULT_PACKAGES = ("moorage.api.containerd", "moorage.api.k8s")

    def __init__(self, *packages: str) -> None:
        self.packages = packages or self.DEFAULT_PACKAGES
        self._loaded = False
        self._cache: dict[str, Kind | str] = {}

    def _load(self) -> None:
        for package in self.packages:
            root = importlib.import_module(package)
            for info in pkgutil.walk_packages(root.__path__, package + "."):
                if info.name.endswith("_pb2"):
                    importlib.import_module(info.name)
        self._loaded = True

    def lookup(self, service: str, method: str) -> Kind | str:
        """The method's kind, or the UNIMPLEMENTED message when it does not exist."""
        key = f"{service}/{method}"
        found = self._cache.get(key)
        if found is not None:
            return found
        if not self._loaded:
            self._load()
        pool = descriptor_pool.Default()
        try:
            svc = pool.FindServiceByName(service)
        except KeyError:
            result: Kind | str = f"unknown service {service}"
        else:
            m = svc.methods_by_name.get(method)
            result = (m.client_streaming, m.server_streaming) if m is not None else (
                f"unknown method {method} for service {service}"
            )
        self._cache[key] = result
        return result


def split_method(full: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (service, method); ("", "") when malformed."""
    parts = full.split("/")
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        return "", ""
    return parts[1], parts[2]


def ttrpc_metadata(md: Any) -> dict[str, list[str]]:
    """The ttrpc metadata for a call's gRPC metadata: the namespace and the lease."""
    out: dict[str, list[str]] = {}
    for key, value in md or ():
        if isinstance(value, bytes):
            continue
        if key == GRPC_NAMESPACE_KEY:
            out.setdefault(NAMESPACE_KEY, []).append(value)
        elif key == LEASE_KEY:
            out.setdefault(LEASE_KEY, []).append(value)
    return out


def _timeout_nano(context: grpc.aio.ServicerContext[Any, Any]) -> int:
    left = context.time_remaining()
    if left is None:
        return 0
    return max(1, int(left * 1e9))


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, RpcError):
        code, message = exc.code, exc.message
    elif isinstance(exc, errdefs.Error):
        code, message = errdefs.to_status(exc)
    elif isinstance(exc, OSError):
        code, message = Code.UNAVAILABLE, f"moorage front door is unavailable: {exc.strerror or exc}"
    else:
        raise exc
    await context.abort(_STATUS.get(int(code), grpc.StatusCode.UNKNOWN), message)


class Forwarder:
    """Forwards gRPC calls as ttrpc calls on one shared connection to ``ttrpc_address``."""

    def __init__(self, ttrpc_address: str, methods: MethodTable) -> None:
        self.address = ttrpc_address
        self.methods = methods
        self._shared = Peer(ttrpc_address, error_factory=RpcError)

    async def client(self) -> Client:
        return await self._shared.client()

    async def stream_client(self) -> Client:
        """A connection of its own for one streaming call: a gRPC peer that reads slowly
        holds only its own stream (never longer than :data:`STREAM_STALL` seconds), not the
        unary calls of every other client."""
        return await Client.connect(self.address, error_factory=RpcError, stall_timeout=STREAM_STALL)

    async def close(self) -> None:
        await self._shared.close()

    def handler(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        service, method = split_method(details.method)
        if not service:
            return _unimplemented(f"malformed method name {details.method!r}")
        kind = self.methods.lookup(service, method)
        if isinstance(kind, str):
            return _unimplemented(kind)
        client_streaming, server_streaming = kind
        if not client_streaming and not server_streaming:
            return grpc.unary_unary_rpc_method_handler(self._unary(service, method))
        if not client_streaming:
            return grpc.unary_stream_rpc_method_handler(self._server_stream(service, method))
        if not server_streaming:
            return grpc.stream_unary_rpc_method_handler(self._client_stream(service, method))
        return grpc.stream_stream_rpc_method_handler(self._bidi(service, method))

    def _unary(self, service: str, method: str) -> Callable[..., Any]:
        async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            try:
                client = await self.client()
                return await client.unary_raw(
                    service, method, request, _timeout_nano(context), ttrpc_metadata(context.invocation_metadata())
                )
            except (RpcError, errdefs.Error, OSError) as exc:
                await _abort(context, exc)
                raise AssertionError("unreachable") from exc

        return call

    def _server_stream(self, service: str, method: str) -> Callable[..., Any]:
        async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
            stream = None
            own: Client | None = None
            try:
                client = own = await self.stream_client()
                stream = await client.open_stream(
                    service,
                    method,
                    request,
                    FLAG_REMOTE_CLOSED,
                    _timeout_nano(context),
                    ttrpc_metadata(context.invocation_metadata()),
                )
                while (message := await stream.recv()) is not None:
                    yield message
            except (RpcError, errdefs.Error, OSError) as exc:
                await _abort(context, exc)
            finally:
                if stream is not None:
                    await stream.aclose()
                if own is not None:
                    await own.close()

        return call

    def _client_stream(self, service: str, method: str) -> Callable[..., Any]:
        async def call(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            stream = None
            own: Client | None = None
            try:
                client = own = await self.stream_client()
                stream = await client.open_stream(
                    service,
                    method,
                    None,
                    FLAG_REMOTE_OPEN,
                    _timeout_nano(context),
                    ttrpc_metadata(context.invocation_metadata()),
                )
                pump = asyncio.ensure_future(_pump(requests, stream))
                try:
                    reply = await stream.recv()
                finally:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
                if reply is None:
                    raise RpcError(Code.INTERNAL, f"{service}/{method}: no response")
                return reply
            except (RpcError, errdefs.Error, OSError) as exc:
                await _abort(context, exc)
                raise AssertionError("unreachable") from exc
            finally:
                if stream is not None:
                    await stream.aclose()
                if own is not None:
                    await own.close()

        return call

    def _bidi(self, service: str, method: str) -> Callable[..., Any]:
        async def call(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            stream = None
            own: Client | None = None
            pump: asyncio.Future[None] | None = None
            try:
                client = own = await self.stream_client()
                stream = await client.open_stream(
                    service,
                    method,
                    None,
                    FLAG_REMOTE_OPEN,
                    _timeout_nano(context),
                    ttrpc_metadata(context.invocation_metadata()),
                )
                pump = asyncio.ensure_future(_pump(requests, stream))
                while (message := await stream.recv()) is not None:
                    yield message
            except (RpcError, errdefs.Error, OSError) as exc:
                await _abort(context, exc)
            finally:
                if pump is not None:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
                if stream is not None:
                    await stream.aclose()
                if own is not None:
                    await own.close()

        return call


async def _pump(requests: AsyncIterator[bytes], stream: Any) -> None:
    """Client messages to the ttrpc stream, then its close."""
    async for message in requests:
        await stream.send(message)
    await stream.close_send()


def _unimplemented(message: str) -> grpc.RpcMethodHandler[bytes, bytes]:
    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        raise AssertionError("unreachable")

    return grpc.unary_unary_rpc_method_handler(call)


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        return self.forwarder.handler(handler_call_details)


class GrpcFront:
    """The gRPC listener: start after the ttrpc front door listens, stop before it drains."""

    def __init__(
        self,
        path: Path,
        ttrpc_address: str,
        private_dir: Path,
        max_recv: int = DEFAULT_MAX_RECV_MESSAGE_SIZE,
        max_send: int = DEFAULT_MAX_SEND_MESSAGE_SIZE,
        methods: MethodTable | None = None,
    ) -> None:
        self.path = path
        self.private_dir = private_dir
        self.max_recv = max_recv
        self.max_send = max_send
        self.forwarder = Forwarder(ttrpc_address, methods or MethodTable())
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        claim_socket(self.path)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_recv),
                ("grpc.max_send_message_length", self.max_send),
            ]
        )
        server.add_generic_rpc_handlers((_Generic(self.forwarder),))
        private = self.private_dir / "moorage.sock"
        with contextlib.suppress(FileNotFoundError):
            private.unlink()
        server.add_insecure_port(f"unix:{private}")
        await server.start()
        try:
            os.chmod(private, 0o660)
            os.rename(private, self.path)
        except BaseException:
            await server.stop(None)
            raise
        self.server = server

    def around(self, inner: Listener) -> Listener:
        """``inner`` (the ttrpc front door) with this listener started after it serves and
        stopped before it drains."""

        async def serve(server: Any, sock: Any) -> None:
            await inner.serve(server, sock)
            await self.start()

        async def drain(grace: float) -> None:
            # one grace for both: a stream that never ends (ctr events) holds the gRPC stop
            # for all of it, and the ttrpc door then gets only what is left
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            try:
                await self.stop(grace)
            finally:
                await inner.drain(max(0.0, deadline - loop.time()))

        return Listener(serve, drain)

    async def stop(self, grace: float) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop(grace)
        await self.forwarder.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

