"""The sandbox service: pod sandboxes with network namespaces and CNI.

Serves containerd.services.sandbox.v1.Store (metadata records) and Controller (instances,
chosen per call by sandboxer name: ``podsandbox`` sets up a network namespace with CNI in
this process; ``shim`` forwards to a runtime shim's containerd.runtime.sandbox.v1.Sandbox).
Not replica-safe: instances own kernel state (namespaces, veths, IPAM) and waiters live in
memory, so one process per root.
"""
