"""Fixtures shared by every test folder.

``suite``: a :class:`suite.Suite` under this test's tmp dir (real ``moorage serve``
processes, ready-by-notification), closed after the test. Tests that need another config
build their own Suite (or use ``suite.running``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from suite import Suite


def skeleton_suite(tmp_path: Path, **proxy: Any) -> Suite:
    """The proxy and the test processes ``echo`` and ``other`` (tests/skeleton/echo.py)
    configured, every built-in service disabled; ``proxy``: more ``[proxy]`` keys."""
    from moorage.registry import builtin_names

    disabled = {name: {"enabled": False} for name in builtin_names() if name != "proxy"}
    config = {**disabled, "proxy": {"health_timeout": 5.0, **proxy}}  # a loaded CI machine is slow, not down
    return Suite(tmp_path, config=config, plugins=["skeleton.echo:PROCESS", "skeleton.echo:OTHER"])


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[Suite]:
    """:func:`skeleton_suite`; start what the test needs."""
    s = skeleton_suite(tmp_path)
    try:
        yield s
    finally:
        s.close()
