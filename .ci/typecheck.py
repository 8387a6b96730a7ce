"""mypy over the installed layout.

setup.py maps folders (services/, proxy/, api/, nri/) under the `moorage` import root, which
mypy cannot follow. This builds a tree of symlinks in .build/typecheck laid out as the import
names are (moorage/services/content/store.py -> services/content/store.py) and runs mypy on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
TREE = TOP / ".build" / "typecheck"
ROOTS = {
    "moorage": "moorage",
    "moorage/api": "api",
    "moorage/services": "services",
    "moorage/proxy": "proxy",
    "moorage/nri": "nri",
    "ttrpc": "ttrpc",
}
MAPPED = {Path(dst).name for dst in ROOTS if dst.startswith("moorage/")}


def build() -> None:
    shutil.rmtree(TREE, ignore_errors=True)
    for dst, src in ROOTS.items():
        base = TOP / src
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = Path(folder).relative_to(base)
            if dst == "moorage" and rel.parts and rel.parts[0] in MAPPED:
                continue
            out = TREE / dst / rel
            out.mkdir(parents=True, exist_ok=True)
            for name in files:
                if name.endswith((".py", ".pyi")) or name == "py.typed":
                    (out / name).symlink_to(Path(folder) / name)


def main() -> int:
    build()
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(TOP / "pyproject.toml"),
           "-p", "moorage", "-p", "ttrpc", *sys.argv[1:]]
    return subprocess.call(cmd, cwd=TREE)


if __name__ == "__main__":
    sys.exit(main())
