"""How the CRI records a task's exit (store.py ``_watch``/``_exited``/``recover``) against a
fake Tasks service: a known exit is Completed/Error with its code; a task that is gone
(NotFound, its exit unknown) is code 255 reason "Unknown", as containerd's CRI
(unknownExitCode/unknownExitReason), live and after a restart."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from moorage.errdefs import NotFound
from moorage.services.cri.config import CriConfig
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
from moorage.services.cri.store import CriRuntime
from moorage.services.runtime.contract import Status


class FakeTasks:
    """``exits``: id -> exit code Wait returns (absent: NotFound); ``deleted``: id -> the code
    Delete reports (absent: NotFound); ``stopped``: id -> code Get shows as STOPPED."""

    def __init__(self, exits: dict[str, int] | None = None, deleted: dict[str, int] | None = None,
                 stopped: dict[str, int] | None = None) -> None:
        self.exits, self.deleted, self.stopped = exits or {}, deleted or {}, stopped or {}

    async def wait(self, id: str, exec_id: str = "") -> SimpleNamespace:
        if id not in self.exits:
            raise NotFound(f"task {id} not found")
        return SimpleNamespace(exit_status=self.exits[id], exited_at=123)

    async def delete(self, id: str) -> SimpleNamespace:
        if id not in self.deleted:
            raise NotFound(f"task {id} not found")
        return SimpleNamespace(exit_status=self.deleted[id], exited_at=456)

    async def get(self, id: str) -> SimpleNamespace:
        if id not in self.stopped:
            raise NotFound(f"task {id} not found")
        return SimpleNamespace(status=Status.STOPPED, exit_status=self.stopped[id], exited_at=789)


class FakePeers:
    def __init__(self, tasks: FakeTasks) -> None:
        self._tasks = tasks

    async def tasks(self) -> FakeTasks:
        return self._tasks


def _runtime(tmp_path: Path, tasks: FakeTasks) -> CriRuntime:
    return CriRuntime(CriConfig(restrict_oom_score_adj="off"), FakePeers(tasks), None,  # type: ignore[arg-type]
                      tmp_path / "root", tmp_path / "state", logging.getLogger("test"))


def _running(rt: CriRuntime, *ids: str) -> None:
    for id in ids:
        rt.ctrs.put(Container(id, "pod1", ContainerConfig(metadata=ContainerMetadata(name=id), image="busybox"),
                              "busybox", "sha256:x", ContainerState.RUNNING, cgroup_path=""))


def _exit(rt: CriRuntime, id: str) -> tuple[ContainerState, int, str]:
    c = rt.ctrs.get(id)
    assert c is not None
    return c.state, c.exit_code, c.reason


@pytest.mark.parametrize("exits,deleted,want", [
    ({}, {}, (ContainerState.EXITED, 255, "Unknown")),  # the task is gone: its exit is unknown
    ({"c": 3}, {}, (ContainerState.EXITED, 3, "Error")),
    ({"c": 0}, {}, (ContainerState.EXITED, 0, "Completed")),
    ({"c": 255}, {}, (ContainerState.EXITED, 255, "Error")),  # a real 255 is not unknown
    ({}, {"c": 0}, (ContainerState.EXITED, 0, "Completed")),  # Wait missed it, Delete still tells
])
async def test_watched_exit_code_and_reason(tmp_path: Path, exits: dict[str, int], deleted: dict[str, int],
                                            want: tuple[ContainerState, int, str]) -> None:
    rt = _runtime(tmp_path, FakeTasks(exits, deleted))
    _running(rt, "c")
    await rt._watch("c", "k8s.io")
    assert _exit(rt, "c") == want
    assert rt.exited["c"].is_set()


async def test_recover_records_a_vanished_task_as_unknown(tmp_path: Path) -> None:
    """After a restart, a RUNNING container whose task is NotFound exited with an unknown
    status (containerd's restart.go); one whose task is STOPPED keeps its real code."""
    before = _runtime(tmp_path, FakeTasks())
    _running(before, "gone", "stopped")
    before.pods.put(Pod("pod1", PodConfig(PodMetadata("web", "uid1", "default")), PodState.READY, 1))
    rt = _runtime(tmp_path, FakeTasks(stopped={"stopped": 2}))
    await rt.recover()
    assert _exit(rt, "gone") == (ContainerState.EXITED, 255, "Unknown")
    assert _exit(rt, "stopped") == (ContainerState.EXITED, 2, "Error")
    p = rt.pods.get("pod1")
    assert p is not None and p.state == PodState.NOTREADY
    again = _runtime(tmp_path, FakeTasks())
    assert _exit(again, "gone") == (ContainerState.EXITED, 255, "Unknown"), "the reason is recorded"
