"""Bad layers against the confined applier (reliability.md §1a, §1b, §4 cases 15–18).

Every test applies a layer onto ``root`` next to a ``canary`` tree, and the fixture checks
the canary byte-identical afterwards (content, modes, owners, times, links). A layer is
either refused with a typed error or confined to the root.
"""

from __future__ import annotations

import io
import os
import stat
import zlib
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest
import zstandard

from moorage import errdefs
from moorage.services.snapshots.applier import apply_layer
from moorage.services.snapshots.layerstream import Limits

from .tarbuild import BLOCK, E, chunks, digest, entry_bytes, gz, header, pad, pax_record, snapshot_tree, tar

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True, params=["openat2", "walk", "workers"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every case runs with kernel confinement (openat2), with the user-space walk, and
    with worker threads writing the small files."""
    if request.param == "walk":
        monkeypatch.setattr("moorage.services.snapshots.applier.syscalls.has_openat2", lambda: False)
    if request.param == "workers":
        monkeypatch.setattr("moorage.services.snapshots.applier.WORKERS", 4)
    return str(request.param)


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    c = tmp_path / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "secret").write_bytes(b"s3cret")
    os.chmod(c / "secret", 0o400)
    (c / "sub" / "file").write_bytes(b"keep me")
    os.symlink("secret", c / "link")
    before = snapshot_tree(str(c))
    yield c
    assert snapshot_tree(str(c)) == before, "the canary tree outside the root changed"


@pytest.fixture
def root(tmp_path: Path, canary: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def apply(root: Path, data: bytes | Iterator[bytes], overlay: bool = False, limits: Limits | None = None, lowers: list[str] | None = None) -> Any:
    it = chunks(data) if isinstance(data, bytes) else data
    return apply_layer(str(root), it, overlay=overlay, limits=limits, lowers=lowers or [])


def inside(root: Path, rel: str) -> Path:
    return root / rel.lstrip("/")


# -- case 15: traversal, absolute names, links ----------------------------------------------


@pytest.mark.parametrize("name", ["../canary/x", "../../../../../canary/x", "a/../../canary/x", "./../canary/x"])
def test_dotdot_is_confined(root: Path, name: str) -> None:
    apply(root, tar([E(name, data=b"evil")]))
    assert (root / "canary" / "x").read_bytes() == b"evil"


def test_absolute_name_is_confined(root: Path, canary: Path) -> None:
    apply(root, tar([E(str(canary / "x"), data=b"evil"), E("/etc/passwd-moorage", data=b"p")]))
    assert inside(root, str(canary / "x")).read_bytes() == b"evil"
    assert (root / "etc" / "passwd-moorage").read_bytes() == b"p"
    assert not os.path.exists("/etc/passwd-moorage")


@pytest.mark.parametrize("target", ["ABS", "../../../../..", "/", "../canary", "sub/../../canary"])
def test_symlink_then_write_through_it(root: Path, canary: Path, target: str) -> None:
    link = str(canary) if target == "ABS" else target
    apply(root, tar([E("l", "2", link=link), E("l/x", data=b"through"), E("l/secret", data=b"over")]))
    assert os.readlink(root / "l") == link
    found = [p for p in root.rglob("x") if p.is_file()]
    assert found and all(str(p).startswith(str(root)) for p in found)


def test_symlink_to_root_then_deep_write(root: Path) -> None:
    apply(root, tar([E("l", "2", link="/"), E("l/l/l/tmp/f", data=b"x")]))
    assert (root / "tmp" / "f").read_bytes() == b"x"


@pytest.mark.parametrize("link", ["ABS_SECRET", "../canary/secret", "/etc/shadow", "../../etc/shadow"])
def test_hardlink_out_of_root_is_refused_or_confined(root: Path, canary: Path, link: str) -> None:
    target = str(canary / "secret") if link == "ABS_SECRET" else link
    with pytest.raises(errdefs.InvalidArgument):
        apply(root, tar([E("h", "1", link=target)]))


def test_hardlink_resolves_inside_root(root: Path) -> None:
    apply(root, tar([E("etc/shadow", data=b"inner"), E("h", "1", link="/../etc/shadow")]))
    assert os.stat(root / "h").st_ino == os.stat(root / "etc/shadow").st_ino


def test_hardlink_to_symlink_then_chmod(root: Path, canary: Path) -> None:
    # CVE-2021-32760 / containerd HardlinkSymlinkChmod: the mode must not reach the host file
    apply(root, tar([E("a", "2", link=str(canary / "secret")), E("b", "1", link="a", mode=0o777)]))
    assert os.path.islink(root / "b")
    assert stat.S_IMODE(os.stat(canary / "secret").st_mode) == 0o400


@pytest.mark.parametrize("name", [".", "./", "/", "", "a/.."])
def test_symlink_named_root_is_ignored(root: Path, canary: Path, name: str) -> None:
    # CVE-2021-29136: the rootfs itself must never become a symlink
    apply(root, tar([E(name, "2", link=str(canary))]))
    apply(root, tar([E("x", data=b"inside")]))
    assert not os.path.islink(root)
    assert (root / "x").read_bytes() == b"inside"


def test_parent_swapped_for_symlink_mid_archive(root: Path, canary: Path) -> None:
    # CVE-2025-47290: foo/sub/f, then foo -> canary, then foo/sub/f again
    apply(
        root,
        tar(
            [
                E("foo/sub/file", data=b"first"),
                E("foo", "2", link=str(canary)),
                E("foo/sub/file", data=b"second"),
                E("foo", "5", mode=0o755),
                E("foo/secret", data=b"third"),
            ]
        ),
    )
    assert os.path.isdir(root / "foo") and not os.path.islink(root / "foo")
    assert (root / "foo" / "secret").read_bytes() == b"third"
    assert inside(root, str(canary / "sub" / "file")).read_bytes() == b"second"


def test_dir_replaced_by_file_and_back(root: Path) -> None:
    apply(root, tar([E("d/x", data=b"1"), E("d", data=b"file now")]))
    assert (root / "d").read_bytes() == b"file now"
    with pytest.raises(errdefs.InvalidArgument):
        apply(root, tar([E("d/y", data=b"2")]))  # parent is a file (containerd errors too)


# -- case 16: whiteouts and overlay xattrs ---------------------------------------------------


@pytest.mark.parametrize("name", [".wh..", ".wh...", "dir/.wh..", ".wh.", "dir/.wh..."])
@pytest.mark.parametrize("overlay", [False, True])
def test_malformed_whiteouts_are_invalid(root: Path, name: str, overlay: bool) -> None:
    (root / "dir").mkdir()
    with pytest.raises(errdefs.InvalidArgument, match="whiteout"):
        apply(root, tar([E(name)]), overlay=overlay)
    assert (root / "dir").is_dir()


@pytest.mark.parametrize("overlay", [False, True])
def test_whiteout_under_symlinked_parent_stays_inside(root: Path, canary: Path, overlay: bool) -> None:
    apply(root, tar([E("l", "2", link=str(canary)), E("l/.wh.secret"), E("l/sub/.wh.file")]), overlay=overlay)
    assert os.readlink(root / "l") == str(canary)


@pytest.mark.parametrize("overlay", [False, True])
def test_whiteout_of_symlink_removes_only_the_link(root: Path, canary: Path, overlay: bool) -> None:
    apply(root, tar([E("s", "2", link=str(canary / "secret")), E("d", "2", link=str(canary / "sub"))]))
    apply(root, tar([E(".wh.s"), E(".wh.d")]), overlay=overlay)
    for n in ("s", "d"):
        if overlay:
            st = os.lstat(root / n)
            assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        else:
            assert not os.path.lexists(root / n)


def test_oci_whiteouts_and_opaque(root: Path) -> None:
    apply(root, tar([E("a/old", data=b"1"), E("a/keep/x", data=b"2"), E("b", data=b"3"), E("c/d", data=b"4")]))
    apply(root, tar([E("a/", "5", mode=0o755), E("a/new", data=b"5"), E("a/.wh..wh..opq"), E(".wh.b"), E("c/.wh.d")]))
    assert sorted(os.listdir(root / "a")) == ["new"]
    assert not (root / "b").exists() and os.listdir(root / "c") == []


def test_overlay_whiteouts_and_opaque(root: Path) -> None:
    apply(root, tar([E("a/", "5", mode=0o755), E("a/.wh..wh..opq"), E("a/new", data=b"5"), E(".wh.b", uid=7, gid=8)]), overlay=True)
    assert os.getxattr(root / "a", "trusted.overlay.opaque") == b"y"
    st = os.lstat(root / "b")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and (st.st_uid, st.st_gid) == (7, 8)
    assert not (root / "a" / ".wh..wh..opq").exists()


def test_overlay_xattrs_are_stripped(root: Path) -> None:
    pax: dict[str, bytes | str] = {
        "SCHILY.xattr.trusted.overlay.opaque": b"y",
        "SCHILY.xattr.trusted.overlay.redirect": b"/etc",
        "SCHILY.xattr.user.overlay.opaque": b"y",
        "SCHILY.xattr.user.keep": b"yes",
    }
    apply(root, tar([E("d", "5", mode=0o755, pax=pax), E("f", data=b"x", pax=pax)]), overlay=True)
    for n in ("d", "f"):
        names = os.listxattr(root / n)
        assert not [x for x in names if "overlay" in x]
        assert os.getxattr(root / n, "user.keep") == b"yes"


# -- case 17: bombs and caps ----------------------------------------------------------------


def _zero_stream(total: int, compress: str) -> Iterator[bytes]:
    """A layer: a header for one huge file, then zeros, compressed lazily."""
    head = header("big", b"0", total)
    block = b"\0" * (1 << 20)
    if compress == "gzip":
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        yield z.compress(head)
        for _ in range(total >> 20):
            out = z.compress(block)
            if out:
                yield out
        yield z.flush()
    else:
        c = zstandard.ZstdCompressor(level=3).compressobj()
        yield c.compress(head)
        for _ in range(total >> 20):
            out = c.compress(block)
            if out:
                yield out
        yield c.flush()


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_decompression_bomb_ratio(root: Path, compress: str) -> None:
    lim = Limits(max_ratio=100, ratio_floor=8 << 20)
    with pytest.raises(errdefs.ResourceExhausted, match="ratio"):
        apply(root, _zero_stream(100 << 30, compress), limits=lim)


def test_zstd_bomb_hits_default_caps(root: Path) -> None:
    with pytest.raises(errdefs.ResourceExhausted):
        apply_layer(str(root), _zero_stream(100 << 30, "zstd"))


def test_max_bytes(root: Path) -> None:
    with pytest.raises(errdefs.ResourceExhausted, match="max uncompressed size"):
        apply_layer(str(root), chunks(gz(tar([E("f", data=os.urandom(3 << 20))]))), limits=Limits(max_bytes=1 << 20))


def test_zstd_huge_window_refused(root: Path) -> None:
    params = zstandard.ZstdCompressionParameters(window_log=30, enable_ldm=True, write_content_size=False)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = c.compress(tar([E("f", data=b"x" * 1000)])) + c.flush()
    assert zstandard.get_frame_parameters(data).window_size == 1 << 30
    with pytest.raises(errdefs.InvalidArgument, match="zstd"):
        apply(root, data, limits=Limits(max_window=1 << 20))


def _many(n: int) -> Iterator[bytes]:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    buf = []
    for i in range(n):
        buf.append(header(f"f{i}", b"0", 0))
        if len(buf) == 2048:
            yield z.compress(b"".join(buf))
            buf = []
    yield z.compress(b"".join(buf) + b"\0" * 1024)
    yield z.flush()


def test_million_entries_capped(root: Path) -> None:
    with pytest.raises(errdefs.ResourceExhausted, match="entries"):
        apply_layer(str(root), _many(1_000_001), limits=Limits(max_entries=5000))
    assert len(os.listdir(root)) <= 5000


def test_huge_pax_header(root: Path) -> None:
    data = header("PaxHeader", b"x", 1 << 30) + b"9 a=b\n"
    with pytest.raises(errdefs.ResourceExhausted, match="header"):
        apply(root, data)


def test_huge_gnu_longname(root: Path) -> None:
    data = header("././@LongLink", b"L", 1 << 30)
    with pytest.raises(errdefs.ResourceExhausted):
        apply(root, data)


@pytest.mark.parametrize("how", ["pax", "gnu"])
def test_10k_name(root: Path, how: str) -> None:
    name = "a/" * 5120
    if how == "pax":
        data = tar([E(name + "f", data=b"x")])
    else:
        long = name.encode() + b"f\0"
        data = header("././@LongLink", b"L", len(long)) + pad(long) + header("x", b"0", 0) + b"\0" * 1024
    with pytest.raises(errdefs.InvalidArgument, match="name longer"):
        apply(root, data)


def test_long_component_is_invalid_not_a_crash(root: Path) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        apply(root, tar([E("x" * 300, data=b"x")]))


@pytest.mark.parametrize("key", [b"SCHILY.xattr.", b"SCHILY.xattr." + b"k" * 300, b"SCHILY.xat\0tr.user.a", b""])
def test_bad_xattr_names(root: Path, key: bytes) -> None:
    body = pax_record(key, b"v") if key else b"5 =v\n"
    data = header("PaxHeader", b"x", len(body)) + pad(body) + header("f", b"0", 0) + b"\0" * 1024
    with pytest.raises(errdefs.InvalidArgument):
        apply(root, data)


# -- case 18: truncated and non-tar layers ---------------------------------------------------


def test_truncated_tar(root: Path) -> None:
    data = tar([E("f", data=os.urandom(5000))])
    for cut in (100, 512, 700, 512 + 4096):
        with pytest.raises(errdefs.InvalidArgument):
            apply(root, data[:cut])


def test_truncated_gzip(root: Path) -> None:
    data = gz(tar([E("f", data=os.urandom(50000))]))
    with pytest.raises(errdefs.InvalidArgument):
        apply(root, data[: len(data) // 2])


def test_truncated_zstd(root: Path) -> None:
    data = zstandard.ZstdCompressor().compress(tar([E("f", data=os.urandom(50000))]))
    with pytest.raises(errdefs.InvalidArgument):
        apply(root, data[: len(data) // 2])


@pytest.mark.parametrize("data", [os.urandom(4096), b"\x1f\x8b" + os.urandom(4096), b"\x28\xb5\x2f\xfd" + os.urandom(4096), b"", b"hello"])
def test_non_tar(root: Path, data: bytes) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        apply(root, data)


def test_bad_checksum_and_negative_size(root: Path) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="checksum"):
        apply(root, header("f", checksum=1) + b"\0" * 1024)
    with pytest.raises(errdefs.InvalidArgument, match="negative"):
        apply(root, header("f", size_field=b"\xff" * 12) + b"\0" * 1024)


def test_unsupported_types(root: Path) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="unsupported"):
        apply(root, tar([E("s", "S")]))


# -- good layers -----------------------------------------------------------------------------


def test_regular_layer_metadata_and_digest(root: Path) -> None:
    entries = [
        E("bin/", "5", mode=0o755),
        E("bin/sh", data=b"#!", mode=0o4755, uid=0, gid=0),
        E("bin/ash", "1", link="bin/sh"),
        E("etc/motd", data=b"hi", mode=0o640, uid=1000, gid=1001),
        E("lnk", "2", link="etc/motd", uid=5, gid=6),
        E("dev/null", "3", mode=0o666, dev=(1, 3)),
        E("fifo", "6", mode=0o600),
        E("cap", data=b"c", pax={"SCHILY.xattr.security.capability": b"\x01\x00\x00\x02" + b"\0" * 16}),
    ]
    raw = tar(entries)
    res = apply(root, gz(raw))
    assert res.digest == digest(raw) and res.size == len(raw)
    st = os.stat(root / "bin/sh")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_nlink == 2 and st.st_mtime == 1_700_000_000
    st = os.stat(root / "etc/motd")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o640)
    assert os.lstat(root / "lnk").st_uid == 5 and os.readlink(root / "lnk") == "etc/motd"
    assert os.lstat(root / "dev/null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    assert os.stat(root / "bin").st_mtime == 1_700_000_000


def test_gzip_multistream_and_zstd_frames(root: Path) -> None:
    raw = tar([E("a", data=b"1"), E("b", data=b"2")])
    apply(root, gz(raw[:1024]) + gz(raw[1024:]))
    z = zstandard.ZstdCompressor()
    apply(root, z.compress(raw[:1024]) + z.compress(raw[1024:]))
    assert (root / "b").read_bytes() == b"2"


def test_overlay_hardlink_to_lower_copies_up(root: Path, tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    apply_layer(str(lower), chunks(tar([E("usr/", "5", mode=0o711), E("usr/bin/x", data=b"lowerdata", mode=0o755)])))
    apply(root, tar([E("y", "1", link="usr/bin/x")]), overlay=True, lowers=[str(lower)])
    assert (root / "y").read_bytes() == b"lowerdata"
    assert os.stat(root / "y").st_ino == os.stat(root / "usr/bin/x").st_ino
    assert stat.S_IMODE(os.stat(root / "usr").st_mode) == 0o711


def test_entry_bytes_roundtrip_via_tarfile() -> None:
    import tarfile

    raw = tar([E("x" * 150, data=b"abc"), E("l", "2", link="y" * 200)])
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        names = [(m.name, m.linkname) for m in t.getmembers()]
    assert names == [("x" * 150, ""), ("l", "y" * 200)]
    assert entry_bytes(E("a"))[:1] == b"a" and BLOCK == 512
