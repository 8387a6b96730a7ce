"""Digest and ref validation, and the hashers behind them.

Every digest and ref that reaches the store passes through here first, so a malformed one
fails with InvalidArgument before any path is built or file touched. Digests follow
go-digest: ``<alg>:<hex>``, lower-case hex of the algorithm's exact length, algorithms
sha256 (canonical), sha384 and sha512.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

from moorage.errdefs import InvalidArgument

CANONICAL = "sha256"
_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX = re.compile(r"[a-f0-9]+")
MAX_REF = 4096


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...


def validate(digest: str) -> tuple[str, str]:
    """``(algorithm, hex)`` of a well-formed digest, else InvalidArgument."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: not <algorithm>:<encoded>")
    alg, _, enc = digest.partition(":")
    want = _HEX_LEN.get(alg)
    if want is None:
        raise InvalidArgument(f"invalid digest {digest!r}: unsupported algorithm {alg!r}")
    if len(enc) != want or not _HEX.fullmatch(enc):
        raise InvalidArgument(
            f"invalid digest {digest!r}: want {want} lower-case hex digits for {alg}"
        )
    return alg, enc


def validate_ref(ref: str) -> str:
    """A ref is any non-empty text without NUL and without ``..`` path components."""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("ref must not be empty")
    if len(ref.encode("utf-8", "surrogatepass")) > MAX_REF:
        raise InvalidArgument(f"ref longer than {MAX_REF} bytes")
    if "\x00" in ref:
        raise InvalidArgument(f"invalid ref {ref!r}: contains NUL")
    if ".." in ref.split("/"):
        raise InvalidArgument(f"invalid ref {ref!r}: contains a '..' component")
    return ref


def hasher(algorithm: str = CANONICAL) -> Hasher:
    if algorithm not in _HEX_LEN:
        raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}")
    h: Hasher = hashlib.new(algorithm)
    return h


def of(data: bytes, algorithm: str = CANONICAL) -> str:
    """The digest of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
