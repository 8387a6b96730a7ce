"""Builds the C relay (proxy/relay.c) as the extension module ``moorage.proxy._relay``.

``make relay`` (run by ``make run``, ``test`` and ``bench``) runs this file: the module lands
next to it in proxy/, where the checkout's editable install finds it. Without it the proxy
serves with the Python splice alone.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent

ffibuilder = cffi.FFI()
ffibuilder.cdef((HERE / "relay.h").read_text())
ffibuilder.set_source(
    "moorage.proxy._relay",
    '#include "relay.h"',
    sources=[str(HERE / "relay.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp, verbose=False))
        for old in HERE.glob("_relay.*.so"):
            old.unlink()
        shutil.copy2(built, HERE / built.name)
    print(f"built {HERE / built.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
