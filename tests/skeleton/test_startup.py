"""What keeps `moor` quick to start: the client path imports none of the costly stdlib
modules, the cheap stand-ins behave as what they replace (NamedTuple, IntEnum Code, json,
argparse), and the launcher `make venv` writes runs every command."""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple as TypingNamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moorage import jsoncodec
from moorage.cli.context import EXIT, Help, Usage
from moorage.cli.flags import Flags
from ttrpc.codes import Code
from ttrpc.frame import Frame, Oversized
from ttrpc.lighttyping import NamedTuple
from ttrpc.protocol import DataReceived

TOP = Path(__file__).resolve().parents[2]
COSTLY = {"typing", "enum", "re", "socket", "selectors", "collections", "contextlib", "json", "argparse",
          "threading", "signal", "copy", "dataclasses", "inspect", "google.protobuf", "asyncio", "hashlib"}
CLIENT_PATH = ("moorage.cli.main", "moorage.cli.context", "moorage.cli.flags", "moorage.cli.version",
               "moorage.cli.wire", "moorage.protowire", "moorage.errdefs", "moorage.namespaces",
               "moorage.jsoncodec", "ttrpc.blocking", "moorage.services.runtime.cli",
               "moorage.services.runtime.image", "moorage.services.runtime.spec",
               "moorage.services.runtime.rootfs", "moorage.services.runtime.runtimes",
               "moorage.services.runtime.logs")


def loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_the_client_path_imports_nothing_costly() -> None:
    bare = loaded_after("")
    loaded = loaded_after("\n".join(f"import {m}" for m in CLIENT_PATH)) - bare
    assert set(CLIENT_PATH) <= loaded
    assert not {m for m in loaded if m in COSTLY or m.split(".")[0] in COSTLY}


# The other commands' modules (images, pull, push, tag, rmi, import, export; content;
# snapshots; events; leases; namespaces; services; gc): messages through moorage.cli.wire,
# never protobuf, and nothing else costly until a command needs it (tests/content/test_cli.py
# runs them whole). `images ls` sizes images with transfer.oci's parser, `sandbox run` builds its
# options with sandbox.podconfig (both through moorage.frozen, not dataclasses).
COMMAND_MODULES = ("moorage.services.transfer.cli", "moorage.services.transfer.oci", "moorage.services.content.cli",
                   "moorage.services.content.writes", "moorage.services.snapshots.cli", "moorage.cli.events",
                   "moorage.cli.leases", "moorage.cli.namespaces", "moorage.cli.services", "moorage.cli.gc",
                   "moorage.services.sandbox.cli", "moorage.services.sandbox.podconfig", "moorage.frozen",
                   "moorage.nri.cli", "moorage.services.runtime.stats", "moorage.services.runtime.metrics",
                   "moorage.services.runtime.attach")


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_the_other_commands_import_no_protobuf_nor_anything_costly(module: str) -> None:
    bare = loaded_after("")
    loaded = loaded_after(f"import {module}") - bare
    assert module in loaded
    assert not {m for m in loaded if m.split(".")[0] in COSTLY | {"google", "uvloop"} or m.endswith("_pb2")}


def test_sandbox_run_builds_and_sends_its_options_loading_nothing_costly() -> None:
    """`moor sandbox run` whole, against a stand-in for the connection that answers every
    call with an empty message: its pod options built, encoded and sent without the sandbox
    contract (dataclasses, json, enum, ipaddress: ~65 ms) nor anything else costly."""
    probe = (
        "from moorage.cli.wire import Fields\n"
        "from moorage.services.sandbox import cli\n"
        "class Api:\n"
        "    sent = []\n"
        "    def call(self, service, method, fields):\n"
        "        self.sent.append((method, fields.get(3)))\n"
        "        return Fields(b'')\n"
        "    def status(self, sandbox_id, sandboxer, verbose=False):\n"
        "        return Fields(b'')\n"
        "class Ctx:\n"
        "    json = False\n"
        "args = cli._flags('run').parse(['-p', '8080:80/udp', '--dns', '1.1.1.1', '--hostname', 'h', 'pod'])\n"
        "assert cli._run(Api(), args, Ctx()) == 0\n"
        "assert [m for m, _ in Api.sent] == ['Create', 'Create', 'Start'], Api.sent\n"
        "opts = Fields(Api.sent[1][1].SerializeToString())\n"
        "assert opts.text(1) == 'moorage.sandbox.v1.PodConfig' and b'\"hostPort\": 8080' in opts.blob(2)\n"
    )
    loaded = loaded_after(probe) - loaded_after("import moorage.services.sandbox.cli")
    assert "moorage.services.sandbox.podconfig" in loaded
    assert not {m for m in loaded if m.split(".")[0] in COSTLY | {"google", "uvloop", "ipaddress"}
                or m.endswith(("_pb2", ".contract"))}


# The runtime's, sandbox's and NRI's commands (run, exec, attach, update, top, stats, ...;
# sandbox; nri ls) build and read every message through moorage.cli.wire: no protobuf imported on use
# either (tests/runtime/test_cli.py runs them whole).
@pytest.mark.parametrize("path", ["services/runtime/cli.py", "services/runtime/stats.py", "services/runtime/metrics.py",
                                  "services/sandbox/cli.py", "nri/cli.py"])
def test_the_runtime_sandbox_and_nri_commands_import_no_protobuf_on_use(path: str) -> None:
    source = (TOP / path).read_text()
    assert "_pb2" not in source and "google.protobuf" not in source and "_ttrpc import" not in source


# ---- ttrpc.lighttyping.NamedTuple: as typing.NamedTuple ----------------------------------

class Light(NamedTuple):
    """A doc."""

    a: int
    b: str = "x"
    c: tuple[int, ...] = ()

    def twice(self) -> int:
        return self.a * 2


class Typed(TypingNamedTuple):
    a: int
    b: str = "x"
    c: tuple[int, ...] = ()


def test_named_tuple_behaves_as_typings() -> None:
    for cls in (Light, Typed):
        t = cls(1)
        assert t == (1, "x", ()) and t.a == 1 and t.b == "x" and isinstance(t, tuple)
        assert cls(a=2, c=(3,)) == (2, "x", (3,))
        assert repr(t) == f"{cls.__name__}(a=1, b='x', c=())"
        assert t._replace(b="y") == (1, "y", ())
        assert t._asdict() == {"a": 1, "b": "x", "c": ()}
        assert cls._make([4, "z", ()]).b == "z"
        assert cls._fields == ("a", "b", "c") and cls._field_defaults == {"b": "x", "c": ()}
        assert pickle.loads(pickle.dumps(t)) == t
        a, b, c = t
        assert (a, b, c) == (1, "x", ())
        match t:
            case cls(x, y):  # type: ignore[misc]
                assert (x, y) == (1, "x")
        with pytest.raises(TypeError):
            cls()  # type: ignore[call-arg]
        with pytest.raises(ValueError):
            t._replace(nope=1)
        with pytest.raises(AttributeError):
            t.a = 3  # type: ignore[misc]
    assert Light(3).twice() == 6 and Light.__doc__ == "A doc."


def test_named_tuple_refuses_a_required_field_after_a_default() -> None:
    with pytest.raises(TypeError):
        class Bad(NamedTuple):  # noqa: F841
            a: int = 0
            b: int  # type: ignore[misc]


def test_frames_and_events_stay_tuples_built_by_tuple_new() -> None:
    f = tuple.__new__(Frame, (1, 2, 3, b"x"))
    assert f.__class__ is Frame and f.body == b"x" and f == Frame(1, 2, 3, b"x")
    sid, mtype, flags, length = Oversized(1, 2, 3, 99)
    assert (sid, mtype, flags, length) == (1, 2, 3, 99)
    assert DataReceived(1, None, True).end is True


# ---- ttrpc.codes.Code: as the IntEnum it was ----------------------------------------------

def test_code_behaves_as_an_int_enum() -> None:
    assert Code.NOT_FOUND == 5 and isinstance(Code.NOT_FOUND, int)
    assert Code(5) is Code.NOT_FOUND and Code(5).name == "NOT_FOUND" and Code.NOT_FOUND.value == 5
    assert str(Code.ABORTED) == "10" and f"{Code.ABORTED}" == "10" and repr(Code.ABORTED) == "<Code.ABORTED: 10>"
    assert json.dumps({"code": Code.ABORTED}) == '{"code": 10}'
    assert pickle.loads(pickle.dumps(Code.INTERNAL)) is Code.INTERNAL
    assert [Code(n).name for n in range(17)][-1] == "UNAUTHENTICATED"
    for bad in (17, -1):
        with pytest.raises(ValueError):
            Code(bad)


# ---- moorage.jsoncodec: as json ------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_jsoncodec_writes_and_reads_as_json(value: object) -> None:
    assert jsoncodec.dumps(value) == json.dumps(value)
    compact = json.dumps(value, separators=(",", ":"), sort_keys=True)
    assert jsoncodec.dumps(value, separators=(",", ":"), sort_keys=True) == compact
    assert jsoncodec.loads(compact) == json.loads(compact)
    assert jsoncodec.loads(compact.encode()) == json.loads(compact.encode())


@pytest.mark.parametrize("text", ["", " ", "{", "[1,]", "1 2", '{"a":1}x', b"\xff", "\ufeff[1]", "NaN", " [1]\n",
                                  b"\xef\xbb\xbf[1]", "[1]".encode("utf-16")])
def test_jsoncodec_accepts_and_refuses_what_json_does(text: str | bytes) -> None:
    try:
        expected: object = ("ok", json.dumps(json.loads(text)))
    except ValueError as exc:
        expected = ("error", str(exc))
    try:
        got: object = ("ok", json.dumps(jsoncodec.loads(text)))
    except ValueError as exc:
        got = ("error", str(exc))
    assert got == expected


def test_jsoncodec_refuses_what_json_does_not_write() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        jsoncodec.dumps(loop)
    with pytest.raises(TypeError):
        jsoncodec.dumps({"a": object()})
    assert jsoncodec.dumps({1: {2}}, default=sorted) == '{"1": [2]}'


# ---- moorage.cli.flags ------------------------------------------------------------------------

def run_flags() -> Flags:
    p = Flags("moor run", "[FLAGS] IMAGE [COMMAND...]")
    p.switch("-d", "--detach")
    p.switch("-i", "--interactive")
    p.switch("-t", "--tty")
    p.value("--name")
    p.value("-e", "--env", repeat=True)
    p.value("--cpus", kind=float, default=0.0)
    p.arg("image")
    p.rest("command")
    return p


def test_flags_read_the_command_line_as_argparse_did() -> None:
    a = run_flags().parse(["-it", "-eA=1", "--env", "B=2", "--env=C=3", "--name=x", "--cpus", "1.5", "busybox",
                           "sh", "-c", "--name", "--"])
    assert (a.interactive, a.tty, a.detach) == (True, True, False)
    assert a.env == ["A=1", "B=2", "C=3"] and a.name == "x" and a.cpus == 1.5
    assert a.image == "busybox" and a.command == ["sh", "-c", "--name", "--"]
    b = run_flags().parse(["-ditebusy=1", "--", "-img", "x"])
    assert (b.detach, b.interactive, b.tty, b.env, b.image, b.command) == (True, True, True, ["busy=1"], "-img", ["x"])
    assert run_flags().parse(["img"]).command == [] and run_flags().parse(["img"]).env == []


def test_flags_lists_and_flags_between_positionals() -> None:
    p = Flags("moor rm", "[-f] CONTAINER...")
    p.switch("-f", "--force")
    p.many("containers")
    a = p.parse(["c1", "-f", "c2"])
    assert a.force and a.containers == ["c1", "c2"]


@pytest.mark.parametrize("argv", [[], ["--bogus", "img"], ["-x", "img"], ["--name"], ["--cpus", "many", "img"],
                                  ["--detach=yes", "img"]])
def test_flags_misuse_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(Usage) as exc:
        run_flags().parse(argv)
    assert str(exc.value).startswith("run: ") and "--help" in str(exc.value)


def test_flags_help_lists_every_flag() -> None:
    with pytest.raises(Help) as exc:
        run_flags().parse(["--name", "x", "--help"])
    text = str(exc.value)
    assert text.startswith("usage: moor run [FLAGS] IMAGE")
    for flag in ("-d, --detach", "-e, --env VALUE", "--cpus VALUE", "-h, --help"):
        assert flag in text


def test_moor_run_help_and_usage_exit_codes() -> None:
    def moor(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "moorage.cli.main", "--address", "/nonexistent", *argv],
                              capture_output=True, text=True, timeout=60)

    out = moor("run", "--help")
    assert out.returncode == 0 and "--snapshotter" in out.stdout
    out = moor("run", "--frob", "busybox")
    assert out.returncode == EXIT["usage"] and out.stderr.startswith("moor: run: unknown flag --frob")


# ---- the launcher -------------------------------------------------------------------------------

def test_launcher_runs_moor_without_site(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("editable", TOP / ".ci" / "editable.py")
    assert spec and spec.loader
    editable = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(editable)
    script = tmp_path / "moor"
    script.write_text(editable.launcher(sys.executable, [sysconfig.get_paths()["purelib"], str(editable.ROOT)]))
    script.chmod(0o755)
    assert script.read_text().startswith(f"#!{sys.executable} -S\n")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "commands:" in out.stdout
    out = subprocess.run([script, "--address", str(tmp_path / "none"), "version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == EXIT["unavailable"] and out.stderr.startswith("moor: cannot reach moorage")
    out = subprocess.run([script, "--address", str(tmp_path / "none"), "run", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "usage: moor run" in out.stdout
