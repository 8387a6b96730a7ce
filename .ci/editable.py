"""Turn this checkout's editable install into a plain path entry (no import hook).

`pip install -e .` with setup.py's package-dir mapping installs setuptools' import hook
(`__editable___moorage_*_finder`), whose .pth imports pathlib and importlib.util in every
Python start (15-20 ms, in every `moor` command). The checkout does not need it: moorage
finds its mapped folders itself (moorage/__init__.py), so the .pth can name `.layout/root`
(links to moorage/ and ttrpc/) instead. Run by `make venv` after the install; `pip install
-e .` alone keeps working, only slower to start. Idempotent.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
ROOT = TOP / ".layout" / "root"


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


if __name__ == "__main__":
    sys.exit(main())
