"""The CRI streaming server (kubelet's `/exec`, `/attach`, `/portforward` on loopback).

CRI Exec, Attach and PortForward return a URL of this server; crictl, critest and kubelet
connect to it and speak SPDY/3.1 (remotecommand v1-v4, portforward.k8s.io) or WebSocket
(remotecommand v4/v5 channels, port forwarding v4.channel.k8s.io).

Modules: spdy (framing, sans-IO), session (one SPDY connection on asyncio), websocket
(RFC 6455 framing, sans-IO), channels (one WebSocket connection of numbered channels on
asyncio), remotecommand (Kubernetes' stream conventions and statuses), tokens
(single-use expiring request tokens), server (HTTP upgrade, routing, the
exec/attach/port-forward sessions), contract (what a backend does), backend (the backend
on the runtime and sandbox services).
"""

from __future__ import annotations

from .backend import RuntimeBackend, build_backend
from .server import StreamingServer

__all__ = ["RuntimeBackend", "StreamingServer", "build_backend"]
