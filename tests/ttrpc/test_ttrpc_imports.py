"""The sans-IO core, the blocking client and generated stubs import no asyncio or uvloop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def modules_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=HERE
    ).stdout
    return set(out.split())


def test_core_and_blocking_client_import_no_asyncio() -> None:
    loaded = modules_after(
        "import ttrpc, ttrpc.frame, ttrpc.messages, ttrpc.protocol, ttrpc.service, ttrpc.creds, ttrpc.blocking"
    )
    assert "ttrpc.blocking" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("asyncio", "uvloop")}


def test_generated_stubs_import_no_asyncio() -> None:
    loaded = modules_after("import ttrpctest.echo_ttrpc")
    assert "ttrpctest.echo_ttrpc" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("asyncio", "uvloop")}
