"""The lease a call runs under, and recording what it creates to that lease.

containerd's clients name a lease in metadata ``containerd-lease`` (gRPC and ttrpc alike);
whatever the services create under it (ingests, blobs, snapshots, images with an expiry) is
then held by the lease, so a garbage collection running meanwhile leaves the work alone.

- :data:`current_lease` is the lease this process's own outgoing calls carry (a pull sets it
  for the work it does); :func:`lease` falls back to the lease of the ttrpc call being
  served, so a service that calls another while serving a leased call passes the lease on,
  as containerd's context does. :func:`call_metadata` is the metadata an outgoing call
  carries: the namespace and, when there is one, the lease.
- :class:`Recorder` is what a service uses to hold a resource it creates: ``await
  recorder.add(type, id)`` before creating it (so a collection can never see it unheld), and
  ``remove`` when it goes. Both are no-ops when the running call carries no lease, and
  ``add`` raises NotFound when the lease does not exist (the creation is then refused, as
  containerd refuses it). Records go to the proxy's Leases service (AddResource,
  DeleteResource). Resource types are containerd's: ``content`` (a digest), ``ingests`` (a
  ref), ``snapshots/<snapshotter>`` (a key), ``images`` (a name).
- :func:`hold` runs a block under a lease: the caller's when it has one, else a new one
  labelled ``containerd.io/gc.expire`` (24 h ahead, as containerd's clients) that is deleted
  when the block ends (the work is then held by what it made: an image, a container).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from moorage.namespaces import NAMESPACE_KEY, current_namespace, first_value, namespace, running_call_metadata

LEASE_KEY = "containerd-lease"
LEASES = "containerd.services.leases.v1.Leases"
GC_SERVICE = "moorage.internal.v1.GC"
"""The proxy's collector: ``Collect`` (msgpack map in and out) runs one now."""
EXPIRE_LABEL = "containerd.io/gc.expire"
DEFAULT_EXPIRY = 24 * 3600.0
"""Seconds a lease taken by :func:`hold` lives if its holder dies (containerd's 24 h)."""

current_lease: ContextVar[str | None] = ContextVar("moorage_lease", default=None)
log = logging.getLogger("moorage.leasing")


def from_metadata(metadata: Mapping[str, Sequence[str] | str]) -> str | None:
    """The lease a call's metadata names (first value), or None."""
    return first_value(metadata, LEASE_KEY) or None


def lease() -> str | None:
    """The lease of this context: :data:`current_lease`, else the served call's, else None."""
    own = current_lease.get()
    if own is not None:
        return own or None
    md = running_call_metadata()
    return None if md is None else from_metadata(md)


def call_metadata() -> dict[str, str] | None:
    """Metadata for an outgoing call: the context's namespace and lease (None: neither)."""
    md: dict[str, str] = {}
    ns = current_namespace.get()
    if ns:
        md[NAMESPACE_KEY] = ns
    held = lease()
    if held:
        md[LEASE_KEY] = held
    return md or None


def expire_at(seconds: float = DEFAULT_EXPIRY) -> str:
    """An RFC 3339 ``containerd.io/gc.expire`` value ``seconds`` from now."""
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Leases:
    """The proxy's Leases service over one lazily (re)connected client, for the namespace of
    the running context."""

    def __init__(self, address: Path | str) -> None:
        from moorage.rpc import Peer

        self._peer = Peer(address)

    async def _call(self, method: str, req: Any, resp: Any) -> Any:
        client = await self._peer.client()
        return await client.unary(LEASES, method, req, resp, metadata={NAMESPACE_KEY: namespace()})

    async def create(self, labels: Mapping[str, str], lease_id: str = "") -> str:
        from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb

        lease_id = lease_id or f"moorage-{time.time_ns()}-{secrets.token_hex(4)}"
        out = await self._call("Create", pb.CreateRequest(id=lease_id, labels=dict(labels)), pb.CreateResponse)
        return str(out.lease.id)

    async def delete(self, lease_id: str, sync: bool = False) -> None:
        from google.protobuf import empty_pb2

        from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb

        await self._call("Delete", pb.DeleteRequest(id=lease_id, sync=sync), empty_pb2.Empty)

    async def add_resource(self, lease_id: str, rtype: str, rid: str) -> None:
        from google.protobuf import empty_pb2

        from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb

        req = pb.AddResourceRequest(id=lease_id, resource=pb.Resource(id=rid, type=rtype))
        await self._call("AddResource", req, empty_pb2.Empty)

    async def delete_resource(self, lease_id: str, rtype: str, rid: str) -> None:
        from google.protobuf import empty_pb2

        from moorage.api.containerd.services.leases.v1 import leases_pb2 as pb

        req = pb.DeleteResourceRequest(id=lease_id, resource=pb.Resource(id=rid, type=rtype))
        await self._call("DeleteResource", req, empty_pb2.Empty)

    async def collect(self) -> None:
        """Run a garbage collection in the proxy now and wait for it (what a Delete with
        ``sync`` asks for)."""
        import msgpack

        client = await self._peer.client()
        await client.unary_raw(GC_SERVICE, "Collect", msgpack.packb({}), metadata={NAMESPACE_KEY: namespace()})

    async def close(self) -> None:
        await self._peer.close()


class Recorder:
    """Holds what a service creates under the running call's lease (see the module doc)."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases

    async def add(self, rtype: str, rid: str) -> None:
        held = lease()
        if held:
            await self.leases.add_resource(held, rtype, rid)

    async def remove(self, rtype: str, rid: str) -> None:
        """Let go of a resource (it is gone, or held by something else now); a lease that
        went meanwhile is not an error."""
        from moorage import errdefs

        held = lease()
        if held:
            try:
                await self.leases.delete_resource(held, rtype, rid)
            except errdefs.NotFound:
                pass

    async def close(self) -> None:
        await self.leases.close()


@asynccontextmanager
async def hold(leases: Leases, expiry: float = DEFAULT_EXPIRY) -> AsyncIterator[str]:
    """Run the block under the context's lease, or under a new one deleted at the end."""
    held = lease()
    if held:
        yield held
        return
    new = await leases.create({EXPIRE_LABEL: expire_at(expiry)})
    token = current_lease.set(new)
    try:
        yield new
    finally:
        current_lease.reset(token)
        try:
            await leases.delete(new)
        except Exception as exc:  # noqa: BLE001 - it expires by itself; the work succeeded
            log.warning("lease %s not deleted (it expires by itself): %s", new, exc)
