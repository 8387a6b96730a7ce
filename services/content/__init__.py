"""Content: containerd's content store, one process serving ``containerd.services.content.v1.Content``.

Blobs live once on disk under ``<root>/blobs/<alg>/<hex>``, written only by a verified commit;
which namespace sees which blob, and with which labels, lives in SQLite (``<root>/meta.db``).
Ingests are resumable, keyed by a namespaced ref and held under a file lock.

Replica-safe: two processes on one root coordinate through flock(2) locks on refs and digests
and through SQLite's own locking, so the proxy may spread calls over several replicas.

Modules: ``contract`` (types and protocols), ``digests`` (digest and ref validation),
``locks`` (file locks), ``ingest`` (one ingest on disk and its writer), ``metadata``
(the namespaced records), ``store`` (the local store), ``api`` (ttrpc servicer),
``client`` (the same contract over ttrpc), ``process`` (``moorage serve content``),
``cli`` (``moor content``).
"""
