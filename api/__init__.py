"""containerd's APIs as protobuf and ttrpc code: our .proto files and what protoc makes of them.

Layout mirrors containerd's proto paths: ``moorage.api.containerd.services.content.v1``
holds ``content_pb2`` (messages), ``content_pb2.pyi`` (types) and ``content_ttrpc``
(servicer base, async and blocking clients). Everything but the .proto files and
``build.py`` is generated; regenerate with ``make protos`` (``python -m moorage.api.build``),
never by hand.
"""
