"""The CRI's annotation keys (containerd's pkg/cri/annotations), read by more than one process.

The cri process writes them into the specs of a pod's pause and containers, and into the
sandbox controller's Create annotations; the runtime and sandbox services read them to tell
NRI plugins which pod and container an event is about.
"""

from __future__ import annotations

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
IMAGE_NAME = "io.kubernetes.cri.image-name"
