"""`moor containers rm` as `ctr containers rm`: a container whose task has stopped goes with
that task (there is no other moor command to delete a task alone); one whose task runs is
refused, naming `moor rm -f`."""

from __future__ import annotations

import pytest

from .test_cli import Env, env  # noqa: F401 (env: the suite fixture)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_containers_rm_deletes_a_stopped_task_first(env: Env) -> None:  # noqa: F811
    assert env.moor("run", "-d", "--name", "crm-stopped", "busybox", "true").returncode == 0
    assert env.moor("wait", "crm-stopped").stdout.strip() == "0"
    r = env.moor("containers", "rm", "crm-stopped")
    assert r.returncode == 0, r.stderr
    assert "crm-stopped" not in env.moor("containers", "ls").stdout
    env.nothing_left()


def test_containers_rm_refuses_a_running_task(env: Env) -> None:  # noqa: F811
    assert env.moor("run", "-d", "--name", "crm-running", "busybox", "sleep", "1000").returncode == 0
    try:
        r = env.moor("containers", "rm", "crm-running")
        assert r.returncode == 6 and "rm -f" in r.stderr, r.stderr
        assert "running" in env.moor("ps").stdout
    finally:
        env.moor("rm", "-f", "crm-running")
    env.nothing_left()
