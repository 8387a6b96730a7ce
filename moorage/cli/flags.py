"""Command-line flags for ``moor`` commands: a small parser in place of argparse.

argparse (with gettext, locale, shutil...) costs a short command ~25 ms to import. This
parser covers what ``moor``'s commands use, with argparse's reading of the command line:

- switches (``-d``, ``--rm``) and flags with a value (``--name N``, ``--name=N``, ``-eK=V``,
  ``-e K=V``); short switches combine (``-it``, ``-dit``, ``-ti -e K=V``); a value may be
  converted (``kind=float``); a flag may repeat into a list (``repeat=True``);
- positionals: single ones in order, then one list (``many``, at least ``least`` items) or
  one ``rest`` that takes everything after the positionals before it verbatim (``moor run
  IMAGE CMD -x ...``: flags after IMAGE belong to the command); flags may come between
  positionals otherwise; ``--`` ends the flags;
- ``-h``/``--help`` prints the usage and every flag's help (:class:`~moorage.cli.context.Help`,
  exit 0); any misuse raises :class:`~moorage.cli.context.Usage` naming the command and
  pointing to ``--help`` (exit ``EXIT["usage"]``).

    p = Flags("moor run", "[FLAGS] IMAGE [COMMAND [ARG...]]", "Run a command in a new container.")
    p.switch("-d", "--detach", help="run in the background, print the container id")
    p.value("-e", "--env", metavar="KEY=VALUE", repeat=True, help="set an environment variable")
    p.arg("image")
    p.rest("command")
    a = p.parse(argv)            # a.detach, a.env, a.image, a.command
"""

from __future__ import annotations

from moorage.cli.context import Help, Usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any


class _Flag:
    __slots__ = ("names", "dest", "takes_value", "kind", "repeat", "default", "metavar", "help")

    def __init__(self, names: tuple[str, ...], dest: str, takes_value: bool, kind: Callable[[str], Any],
                 repeat: bool, default: Any, metavar: str, help: str) -> None:
        self.names = names
        self.dest = dest
        self.takes_value = takes_value
        self.kind = kind
        self.repeat = repeat
        self.default = default
        self.metavar = metavar
        self.help = help


class Args:
    """The parsed command line: one attribute per flag and positional."""

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...

    def __repr__(self) -> str:
        return f"Args({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class Flags:
    """The flags and positionals of one command (see the module docstring)."""

    def __init__(self, prog: str, usage: str = "[FLAGS]", description: str = "") -> None:
        self.prog = prog
        self.usage = usage
        self.description = description
        self._flags: list[_Flag] = []
        self._by_name: dict[str, _Flag] = {}
        self._singles: list[tuple[str, bool, str]] = []  # (name, required, shown as)
        self._many: tuple[str, int, str] | None = None
        self._rest: str | None = None
        self._help: list[tuple[str, str]] = []

    # declaring --------------------------------------------------------------------------

    def switch(self, *names: str, help: str = "") -> None:
        """A flag without a value: False unless given."""
        self._add(names, False, str, False, False, "", help)

    def value(self, *names: str, metavar: str = "VALUE", default: Any = "", kind: Callable[[str], Any] = str,
              repeat: bool = False, help: str = "") -> None:
        """A flag with a value (``kind`` converts it); ``repeat``: every use appends to a list."""
        self._add(names, True, kind, repeat, [] if repeat else default, metavar, help)

    def arg(self, name: str, help: str = "", optional: bool = False, metavar: str = "") -> None:
        """A single positional (``optional``: may be missing, then None)."""
        if self._many or self._rest or (self._singles and not self._singles[-1][1] and not optional):
            raise ValueError(f"{self.prog}: positional {name} cannot follow a list or an optional one")
        self._singles.append((name, not optional, metavar or name.upper()))
        self._help.append((metavar or name.upper(), help))

    def many(self, name: str, help: str = "", least: int = 1, metavar: str = "") -> None:
        """The remaining positionals as a list (at least ``least`` of them)."""
        self._many = (name, least, metavar or name.upper())
        self._help.append((f"{metavar or name.upper()}...", help))

    def rest(self, name: str, help: str = "") -> None:
        """Everything after the positionals before it, verbatim (flags included)."""
        self._rest = name
        self._help.append((f"{name.upper()}...", help))

    def _add(self, names: Sequence[str], takes_value: bool, kind: Callable[[str], Any], repeat: bool,
             default: Any, metavar: str, help: str) -> None:
        long = [n for n in names if n.startswith("--")]
        dest = (long[0] if long else names[0]).lstrip("-").replace("-", "_")
        flag = _Flag(tuple(names), dest, takes_value, kind, repeat, default, metavar, help)
        self._flags.append(flag)
        for n in names:
            if not n.startswith("-") or n in ("-", "--") or (not n.startswith("--") and len(n) != 2):
                raise ValueError(f"{self.prog}: bad flag name {n!r}")
            self._by_name[n] = flag

    # parsing ----------------------------------------------------------------------------

    def parse(self, argv: Sequence[str]) -> Args:
        """The command line as :class:`Args`; Usage on misuse, Help for -h/--help."""
        out = Args()
        for f in self._flags:
            setattr(out, f.dest, list(f.default) if f.repeat else f.default)
        positionals: list[str] = []
        before_rest = len(self._singles) if self._rest is not None else -1
        rest: list[str] = []
        i, n = 0, len(argv)
        while i < n:
            arg = argv[i]
            i += 1
            if len(positionals) == before_rest:
                rest = list(argv[i - 1:])
                break
            if arg == "--":
                tail = list(argv[i:])
                if before_rest >= 0:
                    k = before_rest - len(positionals)
                    positionals += tail[:k]
                    rest = tail[k:]
                else:
                    positionals += tail
                break
            if arg in ("-h", "--help"):
                raise Help(self.help_text())
            if arg.startswith("--"):
                name, eq, inline = arg.partition("=")
                flag = self._flag(name)
                if not flag.takes_value:
                    if eq:
                        raise self._usage(f"{name} takes no value")
                    setattr(out, flag.dest, True)
                    continue
                if not eq:
                    if i >= n:
                        raise self._usage(f"{name} needs a value ({flag.metavar})")
                    inline = argv[i]
                    i += 1
                self._store(out, flag, name, inline)
            elif arg.startswith("-") and len(arg) > 1:
                j = 1
                while j < len(arg):
                    name = "-" + arg[j]
                    flag = self._flag(name)
                    j += 1
                    if not flag.takes_value:
                        setattr(out, flag.dest, True)
                        continue
                    if j < len(arg):
                        inline = arg[j:]
                    elif i < n:
                        inline = argv[i]
                        i += 1
                    else:
                        raise self._usage(f"{name} needs a value ({flag.metavar})")
                    self._store(out, flag, name, inline)
                    break
            else:
                positionals.append(arg)
        self._assign(out, positionals, rest)
        return out

    def _flag(self, name: str) -> _Flag:
        flag = self._by_name.get(name)
        if flag is None:
            raise self._usage(f"unknown flag {name}")
        return flag

    def _store(self, out: Args, flag: _Flag, name: str, text: str) -> None:
        try:
            value = flag.kind(text)
        except ValueError:
            raise self._usage(f"{name}: invalid value {text!r}") from None
        if flag.repeat:
            getattr(out, flag.dest).append(value)
        else:
            setattr(out, flag.dest, value)

    def _assign(self, out: Args, positionals: list[str], rest: list[str]) -> None:
        given = iter(positionals)
        for name, required, shown in self._singles:
            value = next(given, None)
            if value is None and required:
                raise self._usage(f"missing {shown}")
            setattr(out, name, value)
        left = list(given)
        if self._many is not None:
            name, least, shown = self._many
            if len(left) < least:
                raise self._usage(f"missing {shown}")
            setattr(out, name, left)
        elif left:
            raise self._usage(f"unexpected argument {left[0]!r}")
        if self._rest is not None:
            setattr(out, self._rest, rest)

    def _usage(self, message: str) -> Usage:
        command = self.prog.removeprefix("moor ")
        return Usage(f"{command}: {message} (usage: {self.prog} {self.usage}; --help lists the flags)")

    def help_text(self) -> str:
        lines = [f"usage: {self.prog} {self.usage}"]
        if self.description:
            lines += ["", self.description]
        rows = [(name, text) for name, text in self._help if text]
        for f in self._flags:
            shown = ", ".join(f.names) + (f" {f.metavar}" if f.takes_value else "")
            text = f.help + (" (repeatable)" if f.repeat else "")
            if f.takes_value and not f.repeat and f.default not in ("", None, 0, 0.0):
                text += f" (default {f.default})"
            rows.append((shown, text))
        rows.append(("-h, --help", "show this help"))
        width = min(26, max(len(r[0]) for r in rows) + 2)
        lines += ["", "flags and arguments:"]
        for shown, text in rows:
            if len(shown) + 2 > width:
                lines.append(f"  {shown}")
                lines.append(f"  {'':{width}}{text}")
            else:
                lines.append(f"  {shown:{width}}{text}")
        return "\n".join(lines) + "\n"
