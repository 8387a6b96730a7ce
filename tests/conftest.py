"""Fixtures shared by every test folder.

``suite``: a :class:`suite.Suite` under this test's tmp dir (real ``moorage serve``
processes, ready-by-notification), closed after the test. Tests pass config sections and
plugins with ``suite.configure(...)`` before starting processes, or build their own Suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from suite import Suite


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[Suite]:
    s = Suite(tmp_path, plugins=["skeleton.echo:PROCESS", "skeleton.echo:OTHER"])
    try:
        yield s
    finally:
        s.close()
