"""Labels on content, snapshots, images and containers: containerd's one rule.

A key and its value together take at most 4096 bytes (UTF-8); a key is never empty.
"""

from __future__ import annotations

from collections.abc import Mapping

from moorage.errdefs import InvalidArgument

MAX_LABEL_BYTES = 4096


def validate(labels: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``labels``, or InvalidArgument naming the key that breaks the rule."""
    for key, value in labels.items():
        if not key:
            raise InvalidArgument("label key must not be empty")
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL_BYTES:
            raise InvalidArgument(
                f"label key and value length ({size} bytes) greater than maximum size "
                f"({MAX_LABEL_BYTES} bytes), key: {key[:64]}"
            )
    return dict(labels)
