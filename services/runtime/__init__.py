"""The runtime service: containers and tasks on standard runtime v2 shims.

Serves containerd.services.containers.v1.Containers (container records in SQLite) and
containerd.services.tasks.v1.Tasks (tasks run by `containerd-shim-<name>-<version>` shims
over ttrpc, containerd.task.v2.Task). Owns container records, bundles, shim records and
per-container log files. Not replica-safe: one runtime process per root (it holds the shim
connections and the stdio copiers).

Modules: contract (the promises), containers (record store), spec (OCI spec builder),
rootfs (confined reads of an unmounted rootfs), bundle (bundle dirs), shim (binary, start
and delete protocol, records), cio (stdio fifos and log files), tasks (the task manager),
api (servicers), client (async client), process (`moorage serve runtime`), cli (`moor run`
and friends).
"""
