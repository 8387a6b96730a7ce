"""`moor exec -t` from a terminal: the process's pty has our size from its first instruction.

runc makes an exec's pty only when the process starts, so a ResizePty before Start changes
nothing (the runc shim has no console to resize yet) and one after it races the process; the
exec's process spec carries ``consoleSize`` instead, which runc sets on the pty it creates (as
Docker does), and a ResizePty follows the start for runtimes that ignore it."""

from __future__ import annotations

import pytest

from .test_cli import Env, env, in_terminal  # noqa: F401 (env: the suite fixture)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_exec_tty_command_sees_the_terminal_size_at_once(env: Env) -> None:  # noqa: F811
    assert env.moor("run", "-d", "--name", "tty-size", "busybox", "sleep", "1000").returncode == 0
    try:
        for rows, cols in ((27, 91), (31, 77), (12, 140)):
            code, text = in_terminal(env, rows, cols, "exec", "-t", "tty-size", "stty", "size")
            assert (code, text.split()) == (0, [str(rows), str(cols)]), text
    finally:
        env.moor("rm", "-f", "tty-size")
    env.nothing_left()
