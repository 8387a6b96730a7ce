"""Bad input and faults (reliability.md §4 cases 6-9) against the local store and the service.

- wrong digest / wrong size / short of the declared size -> FailedPrecondition, nothing under
  blobs/, the ref resumes or aborts;
- malformed digests and refs -> InvalidArgument before any file is touched;
- two writers on one ref (two store instances, two processes) -> Unavailable for the second;
- committing an existing digest -> AlreadyExists, the stored blob byte-identical and unmoved;
- kill -9 mid-ingest (a store process, and the real service), restart, resume -> offset is
  what is on disk, the blob completes and verifies.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from moorage import errdefs
from moorage.namespaces import current_namespace
from moorage.services.content.store import LocalStore

from .conftest import using
from .test_conformance import BAD_DIGESTS, BAD_REFS, blob, read_all, write_blob

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def local(root: Path) -> AsyncIterator[LocalStore]:
    store = LocalStore(str(root))
    try:
        yield store
    finally:
        store.close()


def blobs_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "blobs").rglob("*") if p.is_file())


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("fault", ["wrong-digest", "wrong-size", "short-of-total"])
async def test_failed_commit_leaves_no_blob_and_ref_resumes_or_aborts(
    local: LocalStore, root: Path, fault: str
) -> None:
    data, d = blob(200_000, 1)
    _, other = blob(10, 2)
    w = await local.writer("bad", total=len(data) if fault == "short-of-total" else 0)
    await w.write(data[:150_000] if fault == "short-of-total" else data)
    with pytest.raises(errdefs.FailedPrecondition):
        if fault == "wrong-digest":
            await w.commit(len(data), other)
        elif fault == "wrong-size":
            await w.commit(len(data) + 1, d)
        else:
            await w.commit(0, d)
    assert blobs_under(root) == []
    st = await local.status("bad")
    assert st.offset == (150_000 if fault == "short-of-total" else len(data))
    w = await local.writer("bad")
    assert (await w.status()).offset == st.offset
    if fault == "short-of-total":
        await w.write(data[150_000:])
        assert await w.commit(len(data), d) == d
        assert blobs_under(root) == [f"blobs/sha256/{d[7:]}"]
        assert await read_all(local, d) == data
    else:
        await w.close()
        await local.abort("bad")
        with pytest.raises(errdefs.NotFound):
            await local.status("bad")
        assert blobs_under(root) == []
        assert os.listdir(root / "ingest") == []


async def test_malformed_input_is_refused_before_any_file_is_touched(
    local: LocalStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, d = blob(1000, 3)
    await write_blob(local, "keep", data, d)
    w = await local.writer("open-ingest")
    await w.write(b"x")
    await w.close()
    before = tree(root)
    calls: list[Any] = []
    for digest in BAD_DIGESTS:
        calls += [lambda g=digest: local.info(g), lambda g=digest: read_all(local, g),
                  lambda g=digest: local.delete(g)]
        if digest:
            calls.append(lambda g=digest: local.writer("fresh-ref", expected=g))
    for ref in BAD_REFS + ["sha256:../../x/../y", "a/../../b"]:
        calls += [lambda r=ref: local.writer(r), lambda r=ref: local.status(r),
                  lambda r=ref: local.abort(r)]
    with monkeypatch.context() as m:
        for name in ("open", "stat", "lstat", "mkdir", "makedirs", "rename", "replace",
                     "unlink", "listdir", "scandir", "ftruncate"):
            m.setattr(os, name, _refuse(f"os.{name}"))
        m.setattr(shutil, "rmtree", _refuse("shutil.rmtree"))
        for call in calls:
            with pytest.raises(errdefs.InvalidArgument):
                await call()
    assert tree(root) == before


def _refuse(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name}{args!r} touched the file system")

    return refuse


async def test_commit_of_existing_digest_leaves_blob_untouched(
    local: LocalStore, root: Path
) -> None:
    data, d = blob(50_000, 4)
    await write_blob(local, "first", data, d)
    path = root / "blobs" / "sha256" / d[7:]
    before = path.stat()
    for expected in (d, ""):
        w = await local.writer(f"second-{bool(expected)}")
        await w.write(data)
        with pytest.raises(errdefs.AlreadyExists):
            await w.commit(len(data), expected)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino, before.st_mtime_ns, before.st_size)
    assert path.read_bytes() == data
    assert oct(after.st_mode & 0o777) == "0o444"
    assert await local.list_statuses() == []


async def test_two_store_instances_on_one_root(root: Path) -> None:
    a, b = LocalStore(str(root)), LocalStore(str(root))
    try:
        w = await a.writer("shared-ref")
        await w.write(b"hello ")
        with pytest.raises(errdefs.Unavailable):
            await b.writer("shared-ref")
        with pytest.raises(errdefs.Unavailable):
            await b.abort("shared-ref")
        await w.close()
        w = await b.writer("shared-ref")
        assert (await w.status()).offset == 6
        await w.write(b"world")
        d = await w.commit()
        assert await read_all(a, d) == b"hello world"

        # the same digest committed through both at once: one wins, the other AlreadyExists
        data, d2 = blob(3 << 20, 5)
        wa, wb = await a.writer("race-a"), await b.writer("race-b")
        await asyncio.gather(wa.write(data), wb.write(data))
        results = await asyncio.gather(
            wa.commit(len(data), d2), wb.commit(len(data), d2), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "str"]
        assert await read_all(b, d2) == data
    finally:
        a.close()
        b.close()


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from moorage.namespaces import current_namespace
    from moorage.services.content.store import LocalStore

    async def main(root, ref, mode):
        current_namespace.set(sys.argv[4])
        store = LocalStore(root)
        w = await store.writer(ref)
        chunk = bytes(range(256)) * 4096
        if mode == "hold":
            await w.write(chunk)
            print("ready", flush=True)
            sys.stdin.readline()
        else:
            n = 0
            while True:
                await w.write(chunk)
                n += len(chunk)
                if n >= 8 * len(chunk):
                    print("ready", flush=True)

    asyncio.run(main(*sys.argv[1:4]))
    """
)


def spawn_holder(root: Path, ref: str, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), ref, mode, str(current_namespace.get())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


async def test_second_process_on_a_held_ref_is_unavailable(local: LocalStore, root: Path) -> None:
    proc = spawn_holder(root, "proc-ref", "hold")
    try:
        with pytest.raises(errdefs.Unavailable):
            await local.writer("proc-ref")
    finally:
        proc.kill()
        proc.wait()
    w = await local.writer("proc-ref")  # the kernel dropped the dead holder's lock
    assert (await w.status()).offset == 1 << 20
    await w.close()


async def test_store_killed_mid_ingest_resumes_from_disk(local: LocalStore, root: Path) -> None:
    proc = spawn_holder(root, "killed", "stream")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    on_disk = (await local.status("killed")).offset
    assert on_disk >= 8 << 20
    data_file = next((root / "ingest").glob("*/data"))
    assert data_file.stat().st_size == on_disk
    w = await local.writer("killed")
    st = await w.status()
    assert st.offset == on_disk
    have = data_file.read_bytes()
    tail = b"the end"
    await w.write(tail)
    d = "sha256:" + hashlib.sha256(have + tail).hexdigest()
    assert await w.commit(on_disk + len(tail), d) == d
    assert await read_all(local, d) == have + tail


async def test_service_killed_mid_ingest_resumes(tmp_path: Path) -> None:
    suite = pytest.importorskip("suite")
    from moorage.rpc import connect
    from moorage.services.content.client import ContentClient

    s = suite.Suite(tmp_path)
    try:
        s.start("content")
        data = random.Random(7).randbytes(24 << 20)
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        client = await connect(s.socket("content"))
        cs = ContentClient(client)
        w = await cs.writer("survivor", total=len(data), expected=d)
        await w.write(data[: 16 << 20])
        s.kill("content")
        with pytest.raises(errdefs.Error):
            await w.write(data[16 << 20 :])
        await client.close()

        s.start("content")
        client = await connect(s.socket("content"))
        cs = ContentClient(client)
        st = await cs.status("survivor")
        ingest = next((s.root / "content" / "ingest").glob("*/data"))
        assert st.offset == ingest.stat().st_size >= 16 << 20
        w = await cs.writer("survivor", total=len(data), expected=d)
        assert (await w.status()).offset == st.offset
        await w.write(data[st.offset :])
        assert await w.commit(len(data), d) == d
        assert hashlib.sha256(b"".join([c async for c in cs.read(d)])).hexdigest() == d[7:]
        await client.close()
    finally:
        s.close()


async def test_cross_namespace_commit_writes_nothing(local: LocalStore, root: Path) -> None:
    data, d = blob(100_000, 8)
    await write_blob(local, "x", data, d)
    path = root / "blobs" / "sha256" / d[7:]
    ino = path.stat().st_ino
    with using("another"):
        w = await local.writer("x", total=len(data), expected=d)
        assert (await w.status()).offset == len(data)
        assert await w.commit(len(data), d) == d
        assert os.listdir(root / "ingest") == []
        assert path.stat().st_ino == ino
        await local.delete(d)
    assert path.exists()
    await local.delete(d)
    assert not path.exists()


async def test_leftovers_of_dead_processes_are_swept(root: Path) -> None:
    store = LocalStore(str(root))
    try:
        w = await store.writer("live")  # a live session: its lock must survive the sweep
        (root / "ingest" / (".tmp-" + "ab" * 32)).mkdir()
        (root / "ingest" / (".tmp-" + "ab" * 32) / "ref").write_text("x")
        (root / "locks" / ("ref-" + "cd" * 32)).write_text("")
        other = LocalStore(str(root))  # a replica starting beside us sweeps
        try:
            assert other.sweep() == 0
            assert not any(p.name.startswith(".tmp-") for p in (root / "ingest").iterdir())
            assert [p.name for p in (root / "locks").iterdir()] == [
                "ref-" + store.layout.key(f"{current_namespace.get()}/live")]
            with pytest.raises(errdefs.Unavailable):
                await other.writer("live")
        finally:
            other.close()
        await w.close()
    finally:
        store.close()


async def test_shared_bytes_collected_before_commit_abort_the_commit(local: LocalStore, root: Path) -> None:
    """A writer that found its bytes in another namespace, whose blob is then deleted (and
    its file unlinked) before the commit: Aborted ("write it"), nothing recorded, so a pull
    fetches the blob again instead of failing."""
    data, d = blob(1000, 31)
    await write_blob(local, "gone", data, d)
    path = root / "blobs" / "sha256" / d.split(":", 1)[1]
    with using("other-ns"):
        w = await local.writer("gone", total=1000, expected=d)
        assert (await w.status()).offset == 1000
    await local.delete(d)
    for _ in range(200):  # the file is unlinked after the delete's transaction
        if not path.exists():
            break
        await asyncio.sleep(0.01)
    assert not path.exists()
    with using("other-ns"):
        with pytest.raises(errdefs.Aborted, match="removed meanwhile: write it"):
            await w.commit(1000, d)
        await w.close()
        with pytest.raises(errdefs.NotFound):
            await local.info(d)
