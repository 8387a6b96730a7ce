"""Fixtures shared by every test folder.

``suite``: a :class:`suite.Suite` under this test's tmp dir (real ``moorage serve``
processes, ready-by-notification), closed after the test. Tests that need another config
build their own Suite (or use ``suite.running``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from suite import Suite


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[Suite]:
    """The proxy and the test processes ``echo`` and ``other`` (tests/skeleton/echo.py)
    configured, every built-in service disabled; start what the test needs."""
    from moorage.registry import builtin_names

    disabled = {name: {"enabled": False} for name in builtin_names() if name != "proxy"}
    config = {**disabled, "proxy": {"health_timeout": 5.0}}  # a loaded CI machine is slow, not down
    s = Suite(tmp_path, config=config, plugins=["skeleton.echo:PROCESS", "skeleton.echo:OTHER"])
    try:
        yield s
    finally:
        s.close()
