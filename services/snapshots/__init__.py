"""Snapshots and diff: containerd.services.snapshots.v1.Snapshots and diff.v1.Diff.

Snapshotters ``overlayfs`` (default) and ``native``, chosen per call by name, with their
metadata in SQLite and their directories in containerd 1.6's layout; Diff applies layers
from the content service onto mounts (confined, bounded extraction, see ``applier``) and
computes layers between mounts. One process owns a root: not replica-safe.

Modules: ``contract`` (types and protocols), ``metadata`` (SQLite), ``backend`` with
``overlay`` and ``native`` (on-disk snapshotters), ``store`` (the async contract over
them), ``layerstream``/``tarreader``/``applier`` (layer apply), ``changes`` (layer
diff), ``differ`` (Diff), ``mounts`` (performing mounts), ``api``/``client``/``wire``
(ttrpc), ``process``/``config`` (``moorage serve snapshots``), ``cli`` (``moor snapshots``).
"""
