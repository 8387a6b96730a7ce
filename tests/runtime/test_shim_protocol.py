"""The shim start/delete protocol pieces that need no shim."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moorage.database import open_database
from moorage.errdefs import InvalidArgument, NotFound, Unavailable
from moorage.services.runtime import shim


def test_binary_names() -> None:
    found = shim.binary_for("io.containerd.runc.v2")
    assert os.path.basename(found) == "containerd-shim-runc-v2"
    with pytest.raises(NotFound, match="containerd-shim-nope-v9"):
        shim.binary_for("io.containerd.nope.v9")
    with pytest.raises(InvalidArgument):
        shim.binary_for("runc")
    with pytest.raises(NotFound):
        shim.binary_for("/nonexistent/containerd-shim-x-v2")


def test_binary_absolute_path(tmp_path: Path) -> None:
    b = tmp_path / "containerd-shim-x-v2"
    b.write_text("#!/bin/sh\n")
    b.chmod(0o755)
    assert shim.binary_for(str(b)) == str(b)


def test_start_output_forms() -> None:
    assert shim.parse_start_output(b"unix:///run/containerd/s/abc") == "/run/containerd/s/abc"
    assert shim.parse_start_output(
        b'{"version":2,"address":"unix:///run/x.sock","protocol":"ttrpc"}') == "/run/x.sock"
    with pytest.raises(Unavailable):
        shim.parse_start_output(b'{"version":2,"address":"unix:///x","protocol":"grpc"}')
    with pytest.raises(Unavailable):
        shim.parse_start_output(b"")


def test_delete_response_decoding() -> None:
    from moorage.api.containerd.runtime.task.v2 import shim_pb2

    m = shim_pb2.DeleteResponse(pid=1234, exit_status=137)
    m.exited_at.seconds, m.exited_at.nanos = 1700000000, 5
    info = shim.parse_delete_response(m.SerializeToString())
    assert (info.pid, info.exit_status, info.exited_at) == (1234, 137, 1700000000_000000005)
    with pytest.raises(ValueError):
        shim.parse_delete_response(b"\x08")


def test_grouping() -> None:
    assert shim.group_of({}, "c1") == "c1"
    assert shim.group_of({"io.containerd.runc.v2.group": "g"}, "c1") == "g"
    assert shim.group_of({"io.kubernetes.cri.sandbox-id": "s"}, "c1") == "s"


def test_flags_env() -> None:
    f = shim.ShimFlags(address="/run/m.sock", ttrpc_address="/run/m.sock")
    assert f.args("/b", "ns", "id")[:3] == ["/b", "-namespace", "ns"]
    assert f.env()["TTRPC_ADDRESS"] == "/run/m.sock"


def test_records(tmp_path: Path) -> None:
    r = shim.ShimRecords(open_database(tmp_path / "r.db", shim.SCHEMA, version=1, what="test"))
    rec = shim.ShimRecord("ns", "c1", "io.containerd.runc.v2", "/b", "/bundle")
    r.put(rec)
    rec.phase = "created"
    rec.address = "/s"
    r.put(rec)
    (got,) = r.all()
    assert got.phase == "created" and got.address == "/s"
    r.delete("ns", "c1")
    assert r.all() == []
