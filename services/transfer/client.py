"""Async clients over ttrpc: `ImagesClient` implements contract.ImageStore; `TransferClient`
runs one transfer, opening the progress / auth / data streams it names
(containerd's core/transfer/proxy). The namespace of the calling context travels as
`containerd-namespace-ttrpc` metadata."""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2, field_mask_pb2

from moorage.api.containerd.services.images.v1 import images_pb2 as ipb
from moorage.api.containerd.services.streaming.v1 import streaming_pb2
from moorage.api.containerd.services.transfer.v1 import transfer_pb2 as tpb
from moorage.api.containerd.types import descriptor_pb2
from moorage.api.containerd.types.transfer import progress_pb2, registry_pb2
from moorage.api.containerd.types.transfer import streaming_pb2 as data_pb2
from moorage.leasing import call_metadata

from . import wire
from .contract import Image, ProgressEvent
from .streams import CHUNK

if TYPE_CHECKING:
    from ttrpc.client import Client


_metadata = call_metadata
"""The namespace and the lease of the calling context travel on every call."""


def stream_id(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}-{base64.urlsafe_b64encode(os.urandom(6)).decode()}"


class ImagesClient:
    def __init__(self, client: Client) -> None:
        self.client = client

    async def get(self, name: str) -> Image:
        r = await self.client.unary(wire.IMAGES, "Get", ipb.GetImageRequest(name=name), ipb.GetImageResponse,
                                    metadata=_metadata())
        return wire.image_from_pb(r.image)

    async def list(self, filters: Sequence[str] = ()) -> list[Image]:
        r = await self.client.unary(wire.IMAGES, "List", ipb.ListImagesRequest(filters=list(filters)),
                                    ipb.ListImagesResponse, metadata=_metadata())
        return [wire.image_from_pb(i) for i in r.images]

    async def create(self, image: Image) -> Image:
        r = await self.client.unary(wire.IMAGES, "Create", ipb.CreateImageRequest(image=wire.image_to_pb(image)),
                                    ipb.CreateImageResponse, metadata=_metadata())
        return wire.image_from_pb(r.image)

    async def update(self, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        req = ipb.UpdateImageRequest(image=wire.image_to_pb(image),
                                     update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)))
        r = await self.client.unary(wire.IMAGES, "Update", req, ipb.UpdateImageResponse, metadata=_metadata())
        return wire.image_from_pb(r.image)

    async def delete(self, name: str, target: str = "") -> None:
        req = ipb.DeleteImageRequest(name=name)
        if target:
            req.target.CopyFrom(descriptor_pb2.Descriptor(digest=target))
        await self.client.unary_raw(wire.IMAGES, "Delete", req.SerializeToString(), metadata=_metadata())


AuthFn = Callable[[str, str, Sequence[str]], Awaitable["registry_pb2.AuthResponse | None"]]


class TransferClient:
    """`await TransferClient(c).transfer(src, dst, progress=..., auth=..., data=..., sink=...)`.

    `src`/`dst` are containerd.types.transfer messages (OCIRegistry, ImageStore,
    ImageImportStream, ImageExportStream) whose stream ids are filled in here."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def _open(self, prefix: str) -> tuple[str, Any]:
        sid = stream_id(prefix)
        s = await self.client.stream(wire.STREAMING, "Stream", any_pb2.Any, None, _metadata())
        await s.send(wire.pack(streaming_pb2.StreamInit(id=sid)))
        ack = await s.recv()
        if ack is None:
            raise ConnectionError("stream closed before its ack")
        return sid, s

    async def transfer(self, src: Any, dst: Any,
                       progress: Callable[[ProgressEvent], None] | None = None,
                       auth: AuthFn | None = None,
                       data: AsyncIterator[bytes] | None = None,
                       sink: Callable[[bytes], Awaitable[None] | None] | None = None) -> None:
        tasks: list[asyncio.Future[None]] = []
        streams: list[Any] = []
        try:
            opts = tpb.TransferOptions()
            if progress is not None:
                sid, s = await self._open("progress")
                streams.append(s)
                opts.progress_stream = sid
                tasks.append(asyncio.ensure_future(_progress_loop(s, progress)))
            for msg in (src, dst):
                if msg.DESCRIPTOR.full_name == registry_pb2.OCIRegistry.DESCRIPTOR.full_name and auth is not None:
                    sid, s = await self._open("creds")
                    streams.append(s)
                    msg.resolver.auth_stream = sid
                    tasks.append(asyncio.ensure_future(_auth_loop(s, auth)))
                if msg.DESCRIPTOR.full_name.endswith("ImageImportStream") and data is not None:
                    sid, s = await self._open("import")
                    streams.append(s)
                    msg.stream = sid
                    tasks.append(asyncio.ensure_future(_send_loop(s, data)))
                if msg.DESCRIPTOR.full_name.endswith("ImageExportStream") and sink is not None:
                    sid, s = await self._open("export")
                    streams.append(s)
                    msg.stream = sid
                    tasks.append(asyncio.ensure_future(_recv_loop(s, sink)))
            req = tpb.TransferRequest(source=wire.pack(src), destination=wire.pack(dst), options=opts)
            call = asyncio.ensure_future(self.client.unary_raw(wire.TRANSFER, "Transfer", req.SerializeToString(),
                                                               metadata=_metadata()))
            tasks.append(call)  # type: ignore[arg-type]
            pending: set[asyncio.Future[Any]] = set(tasks)
            while not call.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is not call and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            call.result()
            for t in tasks:  # drain what the server sent before it closed each stream
                await asyncio.wait_for(asyncio.shield(t), 30)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in streams:
                try:
                    await s.close_send()
                except Exception:  # noqa: BLE001 - best effort on teardown
                    pass


async def _progress_loop(s: Any, fn: Callable[[ProgressEvent], None]) -> None:
    while (a := await s.recv()) is not None:
        if wire.type_name(a) == progress_pb2.Progress.DESCRIPTOR.full_name:
            fn(wire.progress_from_pb(wire.unpack(a, progress_pb2.Progress)))


async def _auth_loop(s: Any, fn: AuthFn) -> None:
    while (a := await s.recv()) is not None:
        req = wire.unpack(a, registry_pb2.AuthRequest)
        resp = await fn(req.host, req.reference, list(req.wwwauthenticate))
        await s.send(wire.pack(resp or registry_pb2.AuthResponse(authType=registry_pb2.NONE)))


async def _send_loop(s: Any, data: AsyncIterator[bytes]) -> None:
    window = 0
    pending = b""
    eof = False
    while True:
        a = await s.recv()
        if a is None:
            return
        if wire.type_name(a) != data_pb2.WindowUpdate.DESCRIPTOR.full_name:
            continue
        window += wire.unpack(a, data_pb2.WindowUpdate).update
        while window > 0 and not eof:
            if not pending:
                try:
                    pending = await data.__anext__()
                except StopAsyncIteration:
                    eof = True
                    await s.close_send()
                    break
            n = min(len(pending), CHUNK, window)
            await s.send(wire.pack(data_pb2.Data(data=pending[:n])))
            pending = pending[n:]
            window -= n


async def _recv_loop(s: Any, sink: Callable[[bytes], Awaitable[None] | None]) -> None:
    await s.send(wire.pack(data_pb2.WindowUpdate(update=64 << 10)))
    while (a := await s.recv()) is not None:
        if wire.type_name(a) != data_pb2.Data.DESCRIPTOR.full_name:
            continue
        d = wire.unpack(a, data_pb2.Data).data
        r = sink(d)
        if inspect.isawaitable(r):
            await r
        await s.send(wire.pack(data_pb2.WindowUpdate(update=len(d))))

