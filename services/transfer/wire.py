"""Protobuf <-> transfer types: Any with containerd's bare type URLs, descriptors, platforms,
images, progress."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TypeVar

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from moorage import errdefs
from moorage.api.containerd.services.images.v1 import images_pb2 as ipb
from moorage.api.containerd.types import descriptor_pb2, platform_pb2
from moorage.api.containerd.types.transfer import progress_pb2

from .contract import Image, ProgressEvent
from .oci import Descriptor, Platform

IMAGES = "containerd.services.images.v1.Images"
TRANSFER = "containerd.services.transfer.v1.Transfer"
STREAMING = "containerd.services.streaming.v1.Streaming"

M = TypeVar("M", bound=Message)


def pack(msg: Message) -> any_pb2.Any:
    return any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())


def type_name(a: any_pb2.Any) -> str:
    return a.type_url.rsplit("/", 1)[-1]


def unpack(a: any_pb2.Any, cls: type[M]) -> M:
    if type_name(a) != cls.DESCRIPTOR.full_name:
        raise errdefs.InvalidArgument(f"expected {cls.DESCRIPTOR.full_name}, got {a.type_url[:100]}")
    msg = cls()
    try:
        msg.ParseFromString(a.value)
    except DecodeError:
        raise errdefs.InvalidArgument(f"invalid {cls.DESCRIPTOR.full_name}") from None
    return msg


def desc_to_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size,
                                     annotations=dict(d.annotations))


def desc_from_pb(d: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))


def platform_to_pb(p: Platform) -> platform_pb2.Platform:
    return platform_pb2.Platform(os=p.os, architecture=p.architecture, variant=p.variant, os_version=p.os_version)


def platform_from_pb(p: platform_pb2.Platform) -> Platform:
    return Platform(p.os, p.architecture, p.variant, p.os_version)


def _ts(t: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def image_to_pb(i: Image) -> ipb.Image:
    m = ipb.Image(name=i.name, labels=dict(i.labels), target=desc_to_pb(i.target))
    if i.created_at:
        m.created_at.CopyFrom(_ts(i.created_at))
    if i.updated_at:
        m.updated_at.CopyFrom(_ts(i.updated_at))
    return m


def image_from_pb(m: ipb.Image) -> Image:
    def t(field: str) -> datetime | None:
        return getattr(m, field).ToDatetime(timezone.utc) if m.HasField(field) else None
    return Image(m.name, desc_from_pb(m.target), dict(m.labels), t("created_at"), t("updated_at"))


def progress_to_pb(p: ProgressEvent) -> progress_pb2.Progress:
    m = progress_pb2.Progress(event=p.event, name=p.name, parents=list(p.parents), progress=p.progress,
                              total=p.total)
    if p.desc is not None:
        m.desc.CopyFrom(desc_to_pb(p.desc))
    return m


def progress_from_pb(m: progress_pb2.Progress) -> ProgressEvent:
    return ProgressEvent(m.event, m.name, tuple(m.parents), m.progress, m.total,
                         desc_from_pb(m.desc) if m.HasField("desc") else None)
