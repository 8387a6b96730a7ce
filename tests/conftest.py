"""Fixtures shared by every test folder.

``suite``: a :class:`suite.Suite` under this test's tmp dir (real ``moorage serve``
processes, ready-by-notification), closed after the test. Tests that need another config
build their own Suite (or use ``suite.running``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from suite import Suite, skeleton_suite


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[Suite]:
    """:func:`skeleton_suite`; start what the test needs."""
    s = skeleton_suite(tmp_path)
    try:
        yield s
    finally:
        s.close()
