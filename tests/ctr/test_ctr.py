"""Debian's ctr (containerd 1.6) drives moorage through the gRPC front door, unchanged.

Each test runs the real ctr binary against a suite started by ``moorage up`` and checks what
it prints, as a containerd user would see it.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from .conftest import CTR, IMAGE, Ctr, ok


def _rows(out: str) -> list[list[str]]:
    """ctr's tables without the header, split on whitespace."""
    return [line.split() for line in out.splitlines()[1:] if line.strip()]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_version(ctr: Ctr) -> None:
    out = ok(ctr("version"))
    assert "Client:" in out and "Version:  1.6" in out
    server = out.split("Server:", 1)[1]
    from importlib.metadata import version

    assert re.search(r"Version:\s+" + re.escape(version("moorage")), server)
    assert re.search(r"UUID: [0-9a-f-]{36}", server)


def test_socket_permissions(grpc_address: str) -> None:
    mode = os.stat(grpc_address).st_mode
    assert mode & 0o777 == 0o660


def test_namespaces_ls_create_rm(ctr: Ctr) -> None:
    ns = _name("ctr-ns")
    ok(ctr("namespaces", "create", ns, "team=blue"))
    rows = {r[0]: r[1:] for r in _rows(ok(ctr("namespaces", "ls")))}
    assert rows[ns] == ["team=blue"]
    again = ctr("namespaces", "create", ns)
    assert again.returncode != 0 and "already exists" in again.stderr
    ok(ctr("namespaces", "rm", ns))
    assert ns not in {r[0] for r in _rows(ok(ctr("namespaces", "ls")))}
    assert ok(ctr("namespaces", "rm", ns)).split() == [ns]  # ctr 1.6 ignores NotFound here


def test_content_ingest_ls_get_rm(ctr: Ctr) -> None:
    ns = _name("ctr-content")
    data = os.urandom(3 << 20)  # several Write messages
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert ctr("content", "ls", namespace=ns).stdout.splitlines()[1:] == []
    r = subprocess.run(
        [CTR or "ctr", *ctr("version").args[1:5], "-n", ns, "content", "ingest", "ref-1"],
        input=data, capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rows = _rows(ok(ctr("content", "ls", namespace=ns)))
    assert [row[0] for row in rows] == [digest]
    assert rows[0][1] == "3.146MB"  # ctr's decimal units
    got = ctr("content", "get", digest, namespace=ns, text=False)
    assert got.returncode == 0 and got.stdout == data
    assert ok(ctr("content", "rm", digest, namespace=ns)).split() == [digest]
    assert _rows(ok(ctr("content", "ls", namespace=ns))) == []


def test_images_import_ls(ctr: Ctr, image: str) -> None:
    rows = _rows(ok(ctr("images", "ls")))
    mine = [r for r in rows if r[0] == image]
    assert mine, rows
    assert mine[0][1] == "application/vnd.oci.image.manifest.v1+json"
    assert mine[0][2].startswith("sha256:")
    assert "linux/amd64" in mine[0]
    assert ok(ctr("images", "ls", "-q")).split().count(image) == 1


def test_images_export(ctr: Ctr, image: str, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    ok(ctr("images", "export", str(out), image))
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert "index.json" in names and "oci-layout" in names
    digest = _rows(ok(ctr("images", "ls")))
    manifest = next(r[2] for r in digest if r[0] == image)
    assert f"blobs/sha256/{manifest.split(':')[1]}" in names


def test_images_rm(ctr: Ctr, archive: Path) -> None:
    ns = _name("ctr-rmi")
    ok(ctr("images", "import", str(archive), namespace=ns))
    assert IMAGE in ok(ctr("images", "ls", "-q", namespace=ns)).split()
    assert ok(ctr("images", "rm", IMAGE, namespace=ns)).split() == [IMAGE]
    assert ok(ctr("images", "ls", "-q", namespace=ns)).split() == []


def test_snapshots_prepare_commit_ls_tree_rm(ctr: Ctr) -> None:
    ns = _name("ctr-snap")
    ok(ctr("snapshots", "prepare", "base-active", namespace=ns))
    ok(ctr("snapshots", "commit", "base", "base-active", namespace=ns))
    ok(ctr("snapshots", "prepare", "child", "base", namespace=ns))
    rows = {r[0]: r[1:] for r in _rows(ok(ctr("snapshots", "ls", namespace=ns)))}
    assert rows["base"] == ["Committed"]
    assert rows["child"] == ["base", "Active"]
    tree = ok(ctr("snapshots", "tree", namespace=ns)).splitlines()
    assert tree == [" base", "  \\_ child"]
    busy = ctr("snapshots", "rm", "base", namespace=ns)
    assert busy.returncode != 0
    ok(ctr("snapshots", "rm", "child", namespace=ns))
    ok(ctr("snapshots", "rm", "base", namespace=ns))
    assert _rows(ok(ctr("snapshots", "ls", namespace=ns))) == []


def test_containers_create_ls_info_rm(ctr: Ctr, image: str) -> None:
    cid = _name("c")
    ok(ctr("containers", "create", image, cid, "sh"))
    rows = {r[0]: r[1:] for r in _rows(ok(ctr("containers", "ls")))}
    assert rows[cid] == [image, "io.containerd.runc.v2"]
    import json

    info = json.loads(ok(ctr("containers", "info", cid)))
    assert info["ID"] == cid and info["Image"] == image
    assert info["SnapshotKey"] == cid and info["Snapshotter"] == "overlayfs"
    assert info["Spec"]["process"]["args"] == ["sh"]
    ok(ctr("containers", "rm", cid))
    assert cid not in {r[0] for r in _rows(ok(ctr("containers", "ls")))}
    assert cid not in {r[0] for r in _rows(ok(ctr("snapshots", "ls")))}


def test_run_rm_echo(ctr: Ctr, image: str) -> None:
    cid = _name("run")
    out = ok(ctr("run", "--rm", image, cid, "echo", "hi"))
    assert out == "hi\n"
    assert cid not in {r[0] for r in _rows(ok(ctr("containers", "ls")))}


def test_run_detached_tasks_ls_ps_kill_delete(ctr: Ctr, image: str) -> None:
    cid = _name("bg")
    ok(ctr("run", "-d", image, cid, "sleep", "300"))
    try:
        tasks = {r[0]: r[1:] for r in _rows(ok(ctr("tasks", "ls")))}
        pid, status = tasks[cid]
        assert status == "RUNNING" and int(pid) > 0
        ps = _rows(ok(ctr("tasks", "ps", cid)))
        assert [row[0] for row in ps] == [pid]
        ok(ctr("tasks", "kill", "-s", "SIGKILL", cid))
        deadline = time.monotonic() + 20
        while True:
            tasks = {r[0]: r[1:] for r in _rows(ok(ctr("tasks", "ls")))}
            if tasks[cid][1] == "STOPPED" or time.monotonic() > deadline:
                break
            select.select([], [], [], 0.05)  # polling ctr's view, not synchronising with it
        assert tasks[cid][1] == "STOPPED"
        ok(ctr("tasks", "delete", cid))
        assert cid not in {r[0] for r in _rows(ok(ctr("tasks", "ls")))}
    finally:
        ctr("tasks", "delete", "-f", cid)
        ok(ctr("containers", "rm", cid))


def test_events(ctr: Ctr, grpc_address: str) -> None:
    """``ctr events`` prints namespace creations as they happen. ctr gives no sign once it
    has subscribed, so a new namespace is created every half second until one shows."""
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERD_NAMESPACE"}
    proc = subprocess.Popen(
        [CTR or "ctr", "-a", grpc_address, "events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    created: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        line = b""
        while time.monotonic() < deadline:
            created.append(_name("ctr-ev"))
            ok(ctr("namespaces", "create", created[-1]))
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                break
        fields = line.decode().split()
        assert len(fields) == 7, (line, proc.stderr.read() if proc.poll() is not None else "")
        ns = fields[4]  # after "DATE TIME +0000 UTC"
        assert ns in created and fields[5] == "/namespaces/create", line
        assert fields[6] == '{"name":"%s"}' % ns
    finally:
        proc.terminate()
        proc.wait(10)
        for ns in created:
            ctr("namespaces", "rm", ns)


def test_leases_ls_create_rm(ctr: Ctr) -> None:
    ns = _name("ctr-lease")
    assert ok(ctr("leases", "ls", namespace=ns)).split() == ["ID", "CREATED", "AT", "LABELS"]
    ok(ctr("leases", "create", "--id", "l1", "purpose=test", namespace=ns))
    generated = ok(ctr("leases", "create", namespace=ns)).strip()
    assert generated
    rows = {r[0]: r[1:] for r in _rows(ok(ctr("leases", "ls", namespace=ns)))}
    assert set(rows) == {"l1", generated}
    assert "purpose=test" in rows["l1"][1] and "containerd.io/gc.expire=" in rows["l1"][1]
    assert ok(ctr("leases", "ls", "-q", "id==l1", namespace=ns)).split() == ["l1"]
    assert ok(ctr("leases", "rm", "l1", generated, namespace=ns)).split() == ["l1", generated]
    assert _rows(ok(ctr("leases", "ls", namespace=ns))) == []
    dup = ctr("leases", "rm", "l1", namespace=ns)
    assert dup.returncode != 0 and "not found" in dup.stderr


def test_images_pull_then_run(ctr: Ctr, tmp_path_factory: pytest.TempPathFactory) -> None:
    """ctr 1.6 pulls by itself (resolve, fetch into content, images, unpack with diff and
    snapshots under a lease), from Debian's docker-registry."""
    from transfer.registry import build_image, push, running

    work = tmp_path_factory.mktemp("registry")
    ns = _name("ctr-pull")
    with running(work, "plain") as reg:
        ref = push(build_image(work), reg, "moorage/busybox")
        out = ok(ctr("images", "pull", "--plain-http", ref, namespace=ns))
    assert "unpacking linux/amd64" in out and "done" in out
    assert ok(ctr("images", "ls", "-q", namespace=ns)).split() == [ref]
    assert ok(ctr("leases", "ls", "-q", namespace=ns)).split() == []  # the pull's lease is gone
    assert ok(ctr("run", "--rm", ref, "p1", "sh", "-c", "echo pulled", namespace=ns)) == "pulled\n"
