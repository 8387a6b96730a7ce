"""Builds the C relay (proxy/relay.c) as the extension module ``moorage.proxy._relay``.

``make relay`` (run by ``make run``, ``test`` and ``bench``) runs this file: the module lands
next to it in proxy/, where the checkout's editable install finds it. Without it the proxy
serves with the Python splice alone.

``pip install .``, ``pip wheel .`` and ``pip install -e .`` build it too: setup.py names
:func:`ffibuilder` in ``cffi_modules``, and cffi's setuptools hook compiles it as one of the
project's extensions (into the wheel, or into proxy/ for an editable install).

``build(dest, sanitize=True)`` makes a copy with AddressSanitizer and UBSan for the tests
(tests/proxy/test_relay_sanitized.py); the proxy loads it from ``MOORAGE_RELAY_EXT``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent
FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]


def builder(sanitize: bool = False, where: Path = HERE, optional: bool = False) -> cffi.FFI:
    """The module's builder, its C sources named under ``where``: absolute for
    ``FFI.compile`` (it compiles in its own tmpdir), relative for setuptools. ``optional``:
    setuptools leaves the module out, with a warning, when it does not compile."""
    ffi = cffi.FFI()
    ffi.cdef((HERE / "relay.h").read_text())
    ffi.set_source(
        "moorage.proxy._relay",
        '#include "relay.h"',
        sources=[str(where / "relay.c")],
        depends=[str(where / "relay.h")],  # and so in the sdist
        include_dirs=[str(where)],
        extra_compile_args=FLAGS + (SANITIZE if sanitize else []),
        extra_link_args=SANITIZE[:1] if sanitize else [],
        optional=optional,
    )
    return ffi


def ffibuilder() -> cffi.FFI:
    """setup.py's builder (``cffi_modules``): setuptools takes only paths relative to the
    project, where pip runs setup.py (an absolute one broke wheel builds). The module is
    optional there, as it is to the proxy: without a C compiler the install goes on and the
    proxy serves with the splice alone."""
    return builder(where=Path(os.path.relpath(HERE)), optional=True)


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
