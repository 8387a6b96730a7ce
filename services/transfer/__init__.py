"""Transfer and images: pull, push, import, export and tag, and the image store.

Serves containerd.services.transfer.v1.Transfer, containerd.services.streaming.v1.Streaming
(progress, credentials, archive data) and containerd.services.images.v1.Images. Content,
snapshots and diff are reached through the proxy. Not replica-safe: a Transfer call and
the streams it names must reach the same process.

Modules, one concern each: contract (types and protocols), oci (documents, digests,
platforms), reference, registry/ (hosts.toml, auth, http, resolver), blobs (content
helpers, labels, progress), pull, push, archive (+ tarstream), images (SQLite image store),
service (the transferrer: source/destination pair -> operation), streams (Streaming server
side), wire (protobuf), api (servicers), client (async clients), peers (the proxy's
content/snapshots/diff), process, config, cli.
"""
