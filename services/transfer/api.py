"""ttrpc servicers: containerd.services.images.v1.Images, containerd.services.transfer.v1.Transfer
and containerd.services.streaming.v1.Streaming. Decode, call the image store / transferrer,
encode; errors cross as errdefs kinds.

Transfer decodes the source and destination Anys (containerd.types.transfer.OCIRegistry,
ImageStore, ImageImportStream, ImageExportStream) into the plain endpoints of
contract.py; the streams they name (progress, auth, data) are looked up in the
StreamManager that Streaming.Stream registers them in. The call's deadline reaches the
transfer as contract.request_deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2, empty_pb2

from moorage import errdefs
from moorage.api.containerd.services.images.v1 import images_pb2 as ipb
from moorage.api.containerd.services.images.v1.images_ttrpc import ImagesServicer
from moorage.api.containerd.services.streaming.v1.streaming_ttrpc import StreamingServicer
from moorage.api.containerd.services.transfer.v1 import transfer_pb2 as tpb
from moorage.api.containerd.services.transfer.v1.transfer_ttrpc import TransferServicer
from moorage.api.containerd.types.transfer import imagestore_pb2, importexport_pb2, registry_pb2
from moorage.namespaces import current_namespace

from . import wire
from .contract import (
    ExportTarget,
    ExtraReference,
    ImageStore,
    ImageTarget,
    ImportSource,
    ProgressEvent,
    RegistryEndpoint,
    UnpackRequest,
    request_deadline,
)
from .registry.auth import Credentials
from .service import Transferrer
from .streams import Stream, StreamManager

if TYPE_CHECKING:
    from moorage.leasing import Recorder
    from ttrpc.server import Context, ServerStream

EXPIRE_LABEL = "containerd.io/gc.expire"


class ImagesService(ImagesServicer):  # type: ignore[misc, unused-ignore]
    def __init__(
        self,
        store: ImageStore,
        recorder: Recorder | None = None,
        collect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.recorder = recorder
        """Holds an image created under a call's ``containerd-lease`` when the image carries
        ``containerd.io/gc.expire`` (containerd 2's rule: other images need no lease);
        Delete lets it go."""
        self.collect = collect
        """Runs a garbage collection now (the proxy's); ``Delete`` with ``sync`` waits for it,
        so what only that image held is gone when the call returns (``ctr rmi --sync``)."""

    async def Get(self, request: ipb.GetImageRequest, ctx: Context) -> ipb.GetImageResponse:
        return ipb.GetImageResponse(image=wire.image_to_pb(await self.store.get(request.name)))

    async def List(self, request: ipb.ListImagesRequest, ctx: Context) -> ipb.ListImagesResponse:
        imgs = await self.store.list(list(request.filters))
        return ipb.ListImagesResponse(images=[wire.image_to_pb(i) for i in imgs])

    async def Create(self, request: ipb.CreateImageRequest, ctx: Context) -> ipb.CreateImageResponse:
        new = wire.image_from_pb(request.image)
        if self.recorder is not None and EXPIRE_LABEL in new.labels:
            await self.recorder.add("images", new.name)
        img = await self.store.create(new)
        return ipb.CreateImageResponse(image=wire.image_to_pb(img))

    async def Update(self, request: ipb.UpdateImageRequest, ctx: Context) -> ipb.UpdateImageResponse:
        img = await self.store.update(wire.image_from_pb(request.image), list(request.update_mask.paths))
        return ipb.UpdateImageResponse(image=wire.image_to_pb(img))

    async def Delete(self, request: ipb.DeleteImageRequest, ctx: Context) -> empty_pb2.Empty:
        target = request.target.digest if request.HasField("target") else ""
        await self.store.delete(request.name, target)
        if self.recorder is not None:
            await self.recorder.remove("images", request.name)
        if request.sync and self.collect is not None:
            await self.collect()
        return empty_pb2.Empty()


class StreamingService(StreamingServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, streams: StreamManager) -> None:
        self.streams = streams

    async def Stream(self, stream: ServerStream[any_pb2.Any, any_pb2.Any], ctx: Context) -> None:
        await self.streams.serve(stream, current_namespace.get() or "")


AUTH_TIMEOUT = 60.0


def _auth_callback(stream: Stream) -> Any:
    lock = asyncio.Lock()

    async def ask(host: str, reference: str, challenge: str) -> Credentials | None:
        async with lock:
            await stream.send(registry_pb2.AuthRequest(host=host, reference=reference, wwwauthenticate=[challenge]))
            try:
                a = await asyncio.wait_for(stream.recv(), AUTH_TIMEOUT)
            except TimeoutError:
                raise errdefs.DeadlineExceeded(f"no answer on the auth stream for {host} within {AUTH_TIMEOUT:.0f}s") from None
            if a is None:
                return None
            r = wire.unpack(a, registry_pb2.AuthResponse)
            if r.authType == registry_pb2.CREDENTIALS:
                return Credentials(r.username, r.secret)
            if r.authType == registry_pb2.REFRESH:
                return Credentials(r.username, r.secret, "refresh")
            if r.authType == registry_pb2.HEADER:
                return Credentials("", r.secret, "header")
            return None
    return ask


class TransferService(TransferServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, transferrer: Transferrer, streams: StreamManager) -> None:
        self.transferrer = transferrer
        self.streams = streams

    async def _stream(self, sid: str) -> Stream:
        return await self.streams.get(current_namespace.get() or "", sid)

    async def _decode(self, a: any_pb2.Any, used: list[Stream]) -> object:
        name = wire.type_name(a)
        if name == registry_pb2.OCIRegistry.DESCRIPTOR.full_name:
            m = wire.unpack(a, registry_pb2.OCIRegistry)
            creds = None
            if m.resolver.auth_stream:
                s = await self._stream(m.resolver.auth_stream)
                used.append(s)
                creds = _auth_callback(s)
            return RegistryEndpoint(m.reference, m.resolver.host_dir, m.resolver.default_scheme,
                                    dict(m.resolver.headers), creds)
        if name == imagestore_pb2.ImageStore.DESCRIPTOR.full_name:
            s_ = wire.unpack(a, imagestore_pb2.ImageStore)
            return ImageTarget(s_.name, dict(s_.labels), tuple(wire.platform_from_pb(p) for p in s_.platforms),
                               s_.all_metadata,
                               tuple(UnpackRequest(wire.platform_from_pb(u.platform), u.snapshotter) for u in s_.unpacks),
                               tuple(ExtraReference(r.name, r.is_prefix, r.allow_overwrite, r.add_digest,
                                                    r.skip_named_digest) for r in s_.extra_references),
                               s_.manifest_limit)
        if name == importexport_pb2.ImageImportStream.DESCRIPTOR.full_name:
            i = wire.unpack(a, importexport_pb2.ImageImportStream)
            st = await self._stream(i.stream)
            used.append(st)
            return ImportSource(st.receive_data, i.media_type)
        if name == importexport_pb2.ImageExportStream.DESCRIPTOR.full_name:
            e = wire.unpack(a, importexport_pb2.ImageExportStream)
            st = await self._stream(e.stream)
            used.append(st)

            async def sink(chunks: AsyncIterator[bytes], st: Stream = st) -> None:
                await st.send_data(chunks)
            return ExportTarget(sink, tuple(wire.platform_from_pb(p) for p in e.platforms), e.all_platforms,
                                e.skip_non_distributable, e.skip_compatibility_manifest)
        raise errdefs.NotImplemented(f"transfer type {a.type_url[:100]} not supported")

    async def Transfer(self, request: tpb.TransferRequest, ctx: Context) -> empty_pb2.Empty:
        used: list[Stream] = []
        try:
            src = await self._decode(request.source, used)
            dst = await self._decode(request.destination, used)
            progress = None
            if request.options.progress_stream:
                ps = await self._stream(request.options.progress_stream)
                used.append(ps)

                async def progress(ev: ProgressEvent, ps: Stream = ps) -> None:
                    try:
                        await ps.send(wire.progress_to_pb(ev))
                    except errdefs.Error:
                        pass
            token = request_deadline.set(ctx.deadline)
            try:
                await self.transferrer.transfer(src, dst, progress)
            finally:
                request_deadline.reset(token)
        finally:
            for s in used:
                s.close()
        return empty_pb2.Empty()
