"""Turn this checkout's editable install into a plain path entry (no import hook).

`pip install -e .` with setup.py's package-dir mapping installs setuptools' import hook
(`__editable___moorage_*_finder`), whose .pth imports pathlib and importlib.util in every
Python start (15-20 ms, in every `moor` command). The checkout does not need it: moorage
finds its mapped folders itself (moorage/__init__.py), so the .pth can name `.layout/root`
(links to moorage/ and ttrpc/) instead. Run by `make venv` after the install; `pip install
-e .` alone keeps working, only slower to start. Idempotent.

It also replaces pip's `moor` console script with a launcher (:data:`LAUNCHER`) that starts
Python without `site` (-S: no .pth files to read, 5-9 ms), puts the two paths moor needs
on sys.path itself (the venv's site-packages, for protobuf; `.layout/root`), and ends the
process with os._exit once stdout and stderr are flushed: the interpreter's finalisation
(~13 ms) has nothing to do for a command that is done. Everything else about `moor` is
the same; `pip install` writes its own script back.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
ROOT = TOP / ".layout" / "root"

LAUNCHER = """\
#!{python} -S
# moor, written by {writer} (make venv) in place of pip's console script: Python without
# site (-S), the paths moor needs put here, and no interpreter finalisation at exit.
import os
import sys

sys.path += {paths!r}
from moorage.cli.main import main

rc = main()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:  # as Python's own exit: a failed flush is exit status 120
        rc = rc or 120
os._exit(rc)
"""


def launcher(python: str, paths: list[str]) -> str:
    """The launcher's text: ``python`` runs it, ``paths`` are added to sys.path."""
    return LAUNCHER.format(python=python, writer=Path(__file__).relative_to(TOP), paths=paths)


def write_launcher() -> Path | None:
    """Write ``moor`` in the venv's scripts folder (atomically, mode 0755); None (pip's
    script kept) when no ``#!`` line can name this Python (a space, or over 127 bytes)."""
    if " " in sys.executable or len(f"#!{sys.executable} -S") > 127:
        return None
    paths = sysconfig.get_paths()
    site = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    target = Path(paths["scripts"]) / "moor"
    text = launcher(sys.executable, [*site, str(ROOT)])
    tmp = target.with_name(f".moor.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(target)
    return target


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    done = 0
    for pth in sorted(site.glob("__editable__.moorage-*.pth")):
        finders = list(site.glob("__editable___moorage_*_finder.py"))
        ours = any(repr(str(TOP / "moorage")) in f.read_text() for f in finders)
        if ours or pth.read_text().strip() == str(ROOT):
            pth.write_text(f"{ROOT}\n")
            done += 1
    if not done:
        print(f"{sys.argv[0]}: no editable install of {TOP} in {site}; nothing changed", file=sys.stderr)
        return 0
    write_launcher()
    return 0


if __name__ == "__main__":
    sys.exit(main())
