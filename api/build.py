"""Regenerates the Python code in api/ from its .proto files (`make protos`).

    python -m moorage.api.build           # regenerate in place
    python -m moorage.api.build --check   # exit 1, listing stale files, if api/ is out of date

Every ``api/**/*.proto`` is compiled in one protoc run (grpc_tools' bundled protoc and
well-known types) with ``--python_out`` and ``--pyi_out``, plus ``--ttrpc_out`` through our
own plugin (``ttrpc.codegen``) once that module exists. Output always lands in a temporary
tree first; then imports of the proto roots (``containerd.``, ``nri.``) are rewritten to
``moorage.api.<root>.``, an empty ``__init__.py`` is added to every generated package folder,
and the tree is compared with (or copied over) the committed files. Generated files that no
proto produces any more are stale: ``--check`` reports them, a rebuild deletes them.
The output is a pure function of the .proto files and the pinned grpcio-tools version.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_ttrpc.py")
IMPORT_PREFIX = "moorage.api"


def proto_files(api_dir: Path = API_DIR) -> list[Path]:
    """Every .proto under ``api_dir``, relative to it, in a stable order."""
    return sorted(p.relative_to(api_dir) for p in api_dir.rglob("*.proto"))


def proto_roots(protos: list[Path]) -> list[str]:
    """Import roots to rewrite: top-level proto folders (``containerd``, ``nri``); under
    ``google`` only the folders we hold (``google.rpc``), never the protobuf runtime's."""
    roots = set()
    for p in protos:
        parts = p.parts[:-1]
        if not parts:
            continue
        roots.add(".".join(parts[:2]) if parts[0] == "google" and len(parts) > 1 else parts[0])
    return sorted(roots)


def ttrpc_plugin_available() -> bool:
    try:
        return importlib.util.find_spec("ttrpc.codegen") is not None
    except ImportError:
        return False


def _well_known_include() -> Path:
    import grpc_tools

    return Path(grpc_tools.__file__).resolve().parent / "_proto"


def _write_plugin_wrapper(directory: Path) -> Path:
    wrapper = directory / "protoc-gen-ttrpc"
    wrapper.write_text(
        f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ttrpc.codegen \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def run_protoc(out_dir: Path, api_dir: Path, protos: list[Path], with_ttrpc: bool) -> None:
    """Compile ``protos`` into ``out_dir``; raises SystemExit with protoc's message on failure."""
    with tempfile.TemporaryDirectory(prefix="moorage-protoc-") as tools:
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{api_dir}",
            f"-I{_well_known_include()}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
        ]
        if with_ttrpc:
            wrapper = _write_plugin_wrapper(Path(tools))
            args += [f"--plugin=protoc-gen-ttrpc={wrapper}", f"--ttrpc_out={out_dir}"]
        args += [str(api_dir / p) for p in protos]
        env = dict(os.environ)
        # the plugin must import ttrpc even when the project is not installed
        repo = str(api_dir.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        # not cwd=api_dir: `python -m` would put it first on sys.path, where api/google
        # shadows the protobuf runtime for the plugin
        done = subprocess.run(args, cwd=tools, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"protoc failed ({done.returncode}):\n{done.stderr}")


def rewrite_imports(text: str, roots: list[str]) -> str:
    """Point absolute imports of proto modules at their home under ``moorage.api``."""
    if not roots:
        return text
    alternatives = "|".join(re.escape(r) for r in roots)
    pattern = re.compile(rf"^(\s*)(from|import) ({alternatives})\b", re.MULTILINE)
    return pattern.sub(rf"\1\2 {IMPORT_PREFIX}.\3", text)


_KEYWORD_ANNOTATION = re.compile(
    rf"^(\s*)((?:{'|'.join(keyword.kwlist)}):)", re.MULTILINE
)


def fix_stub_keywords(text: str) -> str:
    """Comment out stub annotations named by a Python keyword (NRI's enum value ``None``),
    which protoc's pyi output writes as-is and no parser accepts; ``getattr`` reaches them."""
    return _KEYWORD_ANNOTATION.sub(r"\1# keyword, use getattr(): \2", text)


def generate(api_dir: Path = API_DIR) -> dict[Path, bytes]:
    """The full generated tree as ``{path relative to api_dir: content}``."""
    protos = proto_files(api_dir)
    if not protos:
        return {}
    with_ttrpc = ttrpc_plugin_available()
    if not with_ttrpc:
        print("notice: ttrpc/codegen.py not found; skipping *_ttrpc.py stubs", file=sys.stderr)
    roots = proto_roots(protos)
    files: dict[Path, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="moorage-api-") as tmp:
        out = Path(tmp)
        run_protoc(out, api_dir, protos, with_ttrpc)
        for path in sorted(out.rglob("*")):
            if path.is_file():
                rel = path.relative_to(out)
                text = rewrite_imports(path.read_text(), roots)
                if rel.suffix == ".pyi":
                    text = fix_stub_keywords(text)
                files[rel] = text.encode()
    for rel in list(files):
        for parent in rel.parents:
            if parent != Path("."):
                files.setdefault(parent / "__init__.py", b"")
    return dict(sorted(files.items()))


def committed_files(api_dir: Path = API_DIR) -> dict[Path, bytes]:
    """What api/ holds now that the generator owns: generated modules and sub-package inits."""
    found: dict[Path, bytes] = {}
    for path in sorted(api_dir.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(api_dir)
        generated = path.name.endswith(GENERATED_SUFFIXES)
        sub_init = path.name == "__init__.py" and len(rel.parts) > 1
        if generated or sub_init:
            found[rel] = path.read_bytes()
    return found


def stale(expected: dict[Path, bytes], actual: dict[Path, bytes]) -> list[tuple[str, Path]]:
    """``(reason, path)`` for every file that differs, is missing, or should not exist."""
    problems: list[tuple[str, Path]] = []
    for rel in sorted(expected.keys() | actual.keys()):
        if rel not in actual:
            problems.append(("missing", rel))
        elif rel not in expected:
            problems.append(("extra", rel))
        elif expected[rel] != actual[rel]:
            problems.append(("differs", rel))
    return problems


def write(expected: dict[Path, bytes], api_dir: Path = API_DIR) -> list[tuple[str, Path]]:
    """Bring api/ in line with ``expected``; returns what changed."""
    changes = stale(expected, committed_files(api_dir))
    for reason, rel in changes:
        target = api_dir / rel
        if reason == "extra":
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(expected[rel])
    for directory in sorted({api_dir / rel.parent for _, rel in changes}, reverse=True):
        while directory != api_dir and directory.is_dir() and not any(
            p for p in directory.iterdir() if p.name != "__pycache__"
        ):
            for cache in directory.glob("__pycache__"):
                for f in cache.iterdir():
                    f.unlink()
                cache.rmdir()
            directory.rmdir()
            directory = directory.parent
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moorage.api.build", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed code is stale; write nothing"
    )
    args = parser.parse_args(argv)
    expected = generate()
    if args.check:
        problems = stale(expected, committed_files())
        if problems:
            print("api/ is stale; run `make protos` and commit:", file=sys.stderr)
            for reason, rel in problems:
                print(f"  {reason}: api/{rel}", file=sys.stderr)
            return 1
        print(f"api/ is up to date ({len(expected)} generated files)")
        return 0
    changes = write(expected)
    for reason, rel in changes:
        verb = {"missing": "wrote", "differs": "updated", "extra": "removed"}[reason]
        print(f"{verb} api/{rel}")
    print(f"api/: {len(changes)} file(s) changed, {len(expected)} generated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
