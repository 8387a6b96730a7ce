"""Every bench in bench/ starts: ``make bench`` runs them one after another and stops at the
first that fails, so one that cannot import (bench/ttrpc.py shadowing the ttrpc package
did that to two of them) would leave the rest unmeasured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
LIBRARY = {"anchor.py"}  # what the benches import, not a bench


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name not in LIBRARY))
def test_the_bench_starts(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=BENCH.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout
