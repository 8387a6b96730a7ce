"""The CRI process: Kubernetes' RuntimeService and ImageService (runtime.v1) on our services.

Built as containerd 1.7's CRI plugin is built on its sandbox API: a pod is a sandbox of the
sandbox service (network namespace, CNI, pod files) plus a pause container run by the
runtime service; a CRI container is a runtime container (containers.v1 + tasks.v1 over the
proxy) joined to its pod's namespaces; images are resolved through the images and content
services. NRI events come from the sandbox and runtime services as for any other client.

The process owns the CRI view: pod and container metadata and status (JSON records under
its root), name reservations, the containers' stdio (fifos copied into the CRI log file
kubelet names), and the streaming server for Exec/Attach/PortForward. Every peer record
lives in containerd namespace ``k8s.io``; CRI ids are the peers' ids. Not replica-safe:
the stdio copiers and exit watchers live in memory.

Modules: config (``[cri]``), contract (the RuntimeService's types and promises), store (the
runtime: pods and containers on the peers), ocispec (pause and container specs), seccomp
(the RuntimeDefault profile), cio (container stdio -> CRI log), execsync, stats (pod cgroups),
names (name reservation), records (the JSON records), peers (clients of the sandbox,
runtime and snapshots services), api (the RuntimeService servicer), images (the
ImageService), streaming (Exec/Attach/PortForward server), process (``moorage serve cri``).
"""
