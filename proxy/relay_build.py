"""Builds the C relay (proxy/relay.c) as the extension module ``moorage.proxy._relay``.

``make relay`` (run by ``make run``, ``test`` and ``bench``) runs this file: the module lands
next to it in proxy/, where the checkout's editable install finds it. Without it the proxy
serves with the Python splice alone.

``build(dest, sanitize=True)`` makes a copy with AddressSanitizer and UBSan for the tests
(tests/proxy/test_relay_sanitized.py); the proxy loads it from ``MOORAGE_RELAY_EXT``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent
FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]


def builder(sanitize: bool = False) -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef((HERE / "relay.h").read_text())
    ffi.set_source(
        "moorage.proxy._relay",
        '#include "relay.h"',
        sources=[str(HERE / "relay.c")],
        include_dirs=[str(HERE)],
        extra_compile_args=FLAGS + (SANITIZE if sanitize else []),
        extra_link_args=SANITIZE[:1] if sanitize else [],
    )
    return ffi


def build(dest: Path, sanitize: bool = False) -> Path:
    """Compile the module into ``dest`` (replacing an older build there); its path."""
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(builder(sanitize).compile(tmpdir=tmp, verbose=False))
        for old in dest.glob("_relay.*.so"):
            old.unlink()
        return Path(shutil.copy2(built, dest / built.name))


def main() -> int:
    print(f"built {build(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
