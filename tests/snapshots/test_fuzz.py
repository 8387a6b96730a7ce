"""Property tests: random archives never write outside the root and never crash.

Archives are built from hostile parts (``..``, absolute names, the canary's path, links to
it, whiteouts, directories replaced by links) and also as random byte mutations of a valid
layer. Outcome: applied or a typed errdefs error; the canary tree byte-identical; the
root never replaced by a link.
"""

from __future__ import annotations

import atexit
import os
import stat
import shutil
import tempfile
from unittest import mock
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from moorage import errdefs
from moorage.services.snapshots.applier import apply_layer
from moorage.services.snapshots.layerstream import Limits

from .tarbuild import E, chunks, gz, snapshot_tree, tar

pytestmark = pytest.mark.root

_WORK = Path(tempfile.mkdtemp(prefix="snapfuzz-"))
atexit.register(shutil.rmtree, _WORK, True)  # also when the module is collected, not run
CANARY = _WORK / "canary"
(CANARY / "sub").mkdir(parents=True)
(CANARY / "secret").write_bytes(b"s3cret")
os.chmod(CANARY / "secret", 0o400)
os.symlink("secret", CANARY / "link")
BEFORE = snapshot_tree(str(CANARY))
LIMITS = Limits(max_entries=200, max_bytes=1 << 20, max_header_bytes=4096, max_name=512)

components = st.sampled_from(
    ["a", "b", "..", ".", "", "canary", "sub", "secret", ".wh.a", ".wh.secret", ".wh..wh..opq", ".wh..", "x" * 20]
)
names = st.one_of(
    st.lists(components, min_size=1, max_size=5).map("/".join),
    st.lists(components, min_size=1, max_size=4).map(lambda c: "/" + "/".join(c)),
    st.sampled_from([str(CANARY), str(CANARY / "secret"), str(CANARY / "sub" / "x"), "../canary/secret", "/", "."]),
)
entries = st.builds(
    E,
    name=names,
    type=st.sampled_from(["0", "5", "2", "1", "6", "0", "2"]),
    data=st.binary(max_size=64),
    link=names,
    mode=st.sampled_from([0o644, 0o755, 0o4777, 0o000, 0o777]),
)


def _check(data: bytes, overlay: bool, walk: bool = False) -> None:
    root = Path(tempfile.mkdtemp(prefix="root-", dir=_WORK))
    try:
        try:
            with mock.patch("moorage.services.snapshots.applier.syscalls.has_openat2", lambda: not walk):
                apply_layer(str(root), chunks(data, 4096), overlay=overlay, limits=LIMITS)
        except errdefs.Error:
            pass
        assert not os.path.islink(root)
        assert snapshot_tree(str(CANARY)) == BEFORE
    finally:
        shutil.rmtree(root)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entries, max_size=12), st.booleans(), st.booleans(), st.booleans())
def test_random_archives_stay_confined(es: list[E], overlay: bool, compress: bool, walk: bool) -> None:
    """``walk``: the user-space resolver used when the kernel lacks openat2."""
    data = tar(es)
    _check(gz(data) if compress else data, overlay, walk)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_archives_never_crash(data: st.DataObject) -> None:
    base = bytearray(
        tar(
            [
                E("d/", "5", mode=0o755),
                E("d/f", data=b"hello" * 40, pax={"SCHILY.xattr.user.a": b"1"}),
                E("l", "2", link=str(CANARY)),
                E("h", "1", link="d/f"),
                E("d/.wh.f"),
            ]
        )
    )
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    _check(bytes(base[:cut]), data.draw(st.booleans()))


def teardown_module() -> None:
    shutil.rmtree(_WORK, ignore_errors=True)


def _outcome(data: bytes, overlay: bool, workers: int) -> object:
    root = Path(tempfile.mkdtemp(prefix="root-", dir=_WORK))
    try:
        try:
            apply_layer(str(root), chunks(data, 4096), overlay=overlay, limits=LIMITS, workers=workers)
        except errdefs.Error as exc:
            return type(exc)
        tree = snapshot_tree(str(root))
        # implicit directories and overlay whiteouts get the current time: compare the rest
        return {k: v[:4] if stat.S_ISDIR(int(v[0])) or stat.S_ISCHR(int(v[0])) else v for k, v in tree.items() if k != "."}  # type: ignore[call-overload]
    finally:
        shutil.rmtree(root)


same_names = st.lists(st.sampled_from(["a", "b", "a/b", "a/c", "l/b", "l", "b/a", "l/c/d", ".wh.a", ".wh.b", "a/.wh.b", ".wh..wh..opq"]), min_size=1, max_size=3).map("/".join)
racy_entries = st.builds(
    E,
    name=same_names,
    type=st.sampled_from(["0", "0", "0", "5", "2", "1"]),
    data=st.binary(max_size=32),
    link=st.sampled_from(["a", "b", "a/b", "l", "/a", "../b"]),
    mode=st.sampled_from([0o644, 0o755, 0o600]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(racy_entries, max_size=16), st.booleans())
def test_parallel_writers_match_sequential(es: list[E], overlay: bool) -> None:
    """Files written by worker threads end exactly as a one-thread apply leaves them,
    whatever the archive does to the same paths (replacements, aliases through symlinks,
    links to in-flight files, whiteouts)."""
    data = tar(es)
    assert _outcome(data, overlay, 4) == _outcome(data, overlay, 0)
