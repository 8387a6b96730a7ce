"""The CRI process's own pieces without a suite: container stdio copied into the CRI log
format (full and partial lines, both streams, EOF, rotation), attach subscribers, stdin;
name reservation; the JSON records surviving a restart."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from moorage.errdefs import AlreadyExists
from moorage.services.cri.cio import ContainerIO
from moorage.services.cri.contract import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    Pod,
    PodConfig,
    PodMetadata,
    PodState,
)
from moorage.services.cri.names import NameIndex
from moorage.services.cri.records import Records
from moorage.services.runtime.logs import MAX_LINE

LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) ([PF]) (.*)$")


def _parsed(path: Path) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    for raw in path.read_bytes().splitlines():
        m = LINE.match(raw)
        assert m, raw
        out.append((m.group(1), m.group(2), m.group(3)))
    return out


async def _eof(cio: ContainerIO) -> None:
    await asyncio.wait_for(asyncio.gather(*(asyncio.shield(r.done) for r in cio.readers)), 10)


async def test_fifos_to_cri_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "c" / "0.log"
    cio = ContainerIO.create(tmp_path / "io", str(log))
    _, out_path, err_path = cio.paths()
    out = os.open(out_path, os.O_WRONLY)
    err = os.open(err_path, os.O_WRONLY)
    cio.attached()
    async with cio.subscribe() as q:
        os.write(out, b"hello\nwor")
        os.write(err, b"oops\n")
        os.write(out, b"ld\n" + b"x" * (MAX_LINE + 5) + b"\ntail")
        os.close(out)
        os.close(err)
        await _eof(cio)
        raw = b""
        while not q.empty():
            item = q.get_nowait()
            if item is not None and item[0] == "stdout":
                raw += item[1]
    assert raw.startswith(b"hello\nworld\n") and raw.endswith(b"tail")
    lines = _parsed(log)
    stdout = [(tag, text) for stream, tag, text in lines if stream == b"stdout"]
    assert stdout == [(b"F", b"hello"), (b"F", b"world"), (b"P", b"x" * MAX_LINE), (b"F", b"xxxxx"), (b"F", b"tail")]
    assert [(s, t, x) for s, t, x in lines if s == b"stderr"] == [(b"stderr", b"F", b"oops")]
    cio.remove()
    assert not (tmp_path / "io").exists()


async def test_reopen_log_after_rotation_and_stdin(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    cio = ContainerIO.create(tmp_path / "io", str(log), stdin=True)
    stdin_path, out_path, _ = cio.paths()
    assert stdin_path.endswith("stdin")
    reader = os.open(stdin_path, os.O_RDONLY | os.O_NONBLOCK)
    out = os.open(out_path, os.O_WRONLY)
    cio.attached()
    os.write(out, b"one\n")
    await asyncio.wait_for(_until(lambda: log.exists() and b"one" in log.read_bytes()), 10)
    log.rename(tmp_path / "0.log.1")
    cio.reopen_log()
    os.write(out, b"two\n")
    await asyncio.wait_for(_until(lambda: log.exists() and b"two" in log.read_bytes()), 10)
    assert b"two" not in (tmp_path / "0.log.1").read_bytes()
    assert cio.write_stdin(b"input") == 5
    assert os.read(reader, 100) == b"input"
    os.close(out)
    os.close(reader)
    cio.remove()


async def _until(pred: object) -> None:
    while not pred():  # type: ignore[operator]
        await asyncio.sleep(0.01)


def test_names_are_reserved_until_released() -> None:
    names = NameIndex()
    names.reserve("web_default_uid_0", "a")
    names.reserve("web_default_uid_0", "a")  # the holder again: fine
    with pytest.raises(AlreadyExists, match='name "web_default_uid_0" is reserved for "a"'):
        names.reserve("web_default_uid_0", "b")
    names.release("web_default_uid_0")
    names.reserve("web_default_uid_0", "b")
    assert names.holder("web_default_uid_0") == "b"


def test_records_survive_a_restart(tmp_path: Path) -> None:
    pods: Records[Pod] = Records(tmp_path / "pods", Pod)
    pod = Pod("p1", PodConfig(PodMetadata("web", "u", "ns", 1), labels={"a": "b"}), PodState.READY, 5,
              ip="10.0.0.2", info={"netns_path": "/x"})
    pods.put(pod)
    ctrs: Records[Container] = Records(tmp_path / "containers", Container)
    c = Container("c1", "p1", ContainerConfig(ContainerMetadata("app", 2), "img", command=("sh",), envs=(("A", "1"),)),
                  "img", "sha256:x", ContainerState.EXITED, exit_code=3, reason="Error")
    ctrs.put(c)
    (tmp_path / "containers" / "bad.json").write_text("{not json")
    again_pods: Records[Pod] = Records(tmp_path / "pods", Pod)
    again: Records[Container] = Records(tmp_path / "containers", Container)
    assert again_pods.get("p1") == pod and again.get("c1") == c
    assert again.get("bad") is None and (tmp_path / "containers" / "bad.corrupt").exists()
    again.delete("c1")
    assert Records(tmp_path / "containers", Container).get("c1") is None
