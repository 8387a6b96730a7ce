"""The protoc plugin: regenerating the committed test stubs gives the same bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def test_plugin_output_matches_committed_stub(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    plugin = tmp_path / "protoc-gen-ttrpc"
    plugin.write_text(f'#!/bin/sh\nexec {sys.executable} -m ttrpc.codegen "$@"\n')
    plugin.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(HERE),
            f"--plugin=protoc-gen-ttrpc={plugin}", f"--ttrpc_out={out}", "ttrpctest/echo.proto",
        ],
        check=True,
        env={**os.environ},
    )
    generated = (out / "ttrpctest" / "echo_ttrpc.py").read_text()
    assert generated == (HERE / "ttrpctest" / "echo_ttrpc.py").read_text()


def test_names_follow_protoc_python_out() -> None:
    from ttrpc.codegen import import_line, module_alias, output_name

    name = "containerd/services/content/v1/content.proto"
    assert import_line(name) == (
        "from containerd.services.content.v1 import content_pb2 "
        "as containerd_dot_services_dot_content_dot_v1_dot_content__pb2"
    )
    assert module_alias("google/protobuf/empty.proto") == "google_dot_protobuf_dot_empty__pb2"
    assert import_line("top.proto") == "import top_pb2 as top__pb2"
    assert output_name(name) == "containerd/services/content/v1/content_ttrpc.py"


def test_servicer_spec() -> None:
    from ttrpc.service import Kind
    from ttrpctest.echo_ttrpc import EchoServicer

    spec = EchoServicer.__ttrpc_service__
    assert spec.name == "moorage.test.v1.Echo"
    assert {n: m.kind for n, m in spec.methods.items()} == {
        "Echo": Kind.UNARY,
        "Sink": Kind.UNARY,
        "Count": Kind.SERVER_STREAM,
        "Collect": Kind.CLIENT_STREAM,
        "Chat": Kind.BIDI,
    }
