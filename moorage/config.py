"""The suite's configuration: one TOML file, a section per process, checked once on load.

Layout of the file (every key optional; `moorage config default` prints them all)::

    [suite]                 # paths and habits shared by every process (SuiteConfig)
    root = "/var/lib/moorage"
    state = "/run/moorage"
    plugins = []            # extra process records, "module:attr" (tests, out-of-tree)

    [proxy]                 # one section per process: the common ProcessSection keys
    replicas = 1            # (enabled, replicas, sockets) plus the process's own keys,
    ...                     # declared by the frozen dataclass its record names

    [content]
    enabled = true
    replicas = 1
    sockets = []            # backend sockets the proxy routes to; [] = derived from state
    ...                     # services/content/config.py's dataclass fields

Validation: an unknown section or key, or a value of the wrong type, raises
:class:`ConfigError` naming the dotted key (``content.replicas``); a process refuses to start
on it. Section dataclasses may validate further in ``__post_init__`` by raising ValueError
(reported with the section's name). Types understood: bool, int, float, str, Path, Literal,
tuple[T, ...] / list[T], Mapping[str, T], nested frozen dataclasses, and ``X | None``.

This module imports no process module: the records come from :mod:`moorage.registry`.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if typing.TYPE_CHECKING:
    from moorage.registry import Missing, Process

DEFAULT_PATH = Path("/etc/moorage/config.toml")
PROXY_SOCKET = "moorage.sock.ttrpc"
COMMON_KEYS = ("enabled", "replicas", "sockets")


class ConfigError(ValueError):
    """A config that cannot be used; ``key`` is the dotted key at fault (or "")."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config: {key}: {message}" if key else f"config: {message}")
        self.key = key


@dataclass(frozen=True)
class SuiteConfig:
    """``[suite]``: what every process shares."""

    root: Path = Path("/var/lib/moorage")
    """Durable data; each process gets ``<root>/<process>/`` (0700)."""
    state: Path = Path("/run/moorage")
    """Sockets and runtime state: ``<state>/moorage.sock.ttrpc``, ``<state>/services/*.sock``."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    shutdown_timeout: float = 10.0
    """Seconds a process drains in-flight calls on SIGTERM before cancelling them."""
    plugins: tuple[str, ...] = ()
    """Extra process records, as ``"module:attr"`` strings."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The event loop every process runs on."""

    def __post_init__(self) -> None:
        if not self.root.is_absolute():
            raise ValueError(f"root must be an absolute path, not {str(self.root)!r}")
        if not self.state.is_absolute():
            raise ValueError(f"state must be an absolute path, not {str(self.state)!r}")
        if self.shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must be >= 0")

    @property
    def proxy_address(self) -> Path:
        return self.state / PROXY_SOCKET


@dataclass(frozen=True)
class ProcessSection:
    """``[<process>]``: the keys every process section has, and the process's own settings."""

    enabled: bool = True
    replicas: int = 1
    sockets: tuple[str, ...] = ()
    """Backend sockets for the proxy to route to; empty = the ones ``moorage up`` starts."""
    settings: Any = None
    """An instance of the record's ``config`` dataclass (None when it declares none)."""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")


@dataclass(frozen=True)
class Config:
    """The whole file, validated. ``processes`` holds a section for every known record."""

    suite: SuiteConfig = field(default_factory=SuiteConfig)
    processes: Mapping[str, ProcessSection] = field(default_factory=dict)
    source: Path | None = None

    def section(self, name: str) -> ProcessSection:
        """The section of process ``name`` (the defaults when the file has none)."""
        return self.processes.get(name) or ProcessSection()

    def settings(self, name: str) -> Any:
        return self.section(name).settings

    def socket_path(self, name: str, replica: int | None = None) -> Path:
        """Where replica ``replica`` of ``name`` listens (None: the single replica)."""
        if name == "proxy":
            return self.suite.proxy_address
        sock = f"{name}.sock" if replica is None else f"{name}-{replica}.sock"
        return self.suite.state / "services" / sock

    def backend_sockets(self, name: str) -> list[str]:
        """Every socket the proxy routes ``name``'s services to, in replica order."""
        sec = self.section(name)
        if sec.sockets:
            return list(sec.sockets)
        if sec.replicas == 1:
            return [str(self.socket_path(name))]
        return [str(self.socket_path(name, n)) for n in range(1, sec.replicas + 1)]

    def with_paths(self, root: Path | None = None, state: Path | None = None) -> Config:
        """The same config with root and/or state replaced (command-line overrides)."""
        suite = self.suite
        if root is not None:
            suite = dataclasses.replace(suite, root=root.absolute())
        if state is not None:
            suite = dataclasses.replace(suite, state=state.absolute())
        return dataclasses.replace(self, suite=suite)


# ---------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class Loaded:
    """A validated config with the records it was checked against and the skipped ones."""

    config: Config
    records: list[Process]
    missing: list[Missing]

    def record(self, name: str) -> Process:
        for r in self.records:
            if r.name == name:
                return r
        for m in self.missing:
            if m.name == name:
                raise ConfigError("", m.message())
        raise ConfigError("", f"no process named {name!r}")


def load_suite(path: Path | None, only: Sequence[str] | None = None) -> Loaded:
    """Read ``path`` (None: defaults), load the records it needs, validate it.

    ``only``: import just these built-in processes; the sections of the others are
    accepted unchecked (``moorage up`` loads all, so every section is checked once).
    """
    from moorage import registry

    data = read(path)
    suite = _table(data.get("suite", {}), "suite")
    plugins = _convert(tuple[str, ...], suite.get("plugins", []), "suite.plugins")
    try:
        records, missing = registry.load_records(plugins, only)
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError("suite.plugins", str(exc)) from exc
    skipped = {m.name for m in missing} | (set(registry.builtin_names()) - {r.name for r in records})
    return Loaded(parse(data, records, source=path, skipped=skipped), records, missing)


def read(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError("", f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path}: {exc}") from exc


def load(path: Path | None, records: Sequence[Process]) -> Config:
    """Read and validate ``path`` (None: the defaults) against the process ``records``."""
    return parse(read(path), records, source=path)


def loads(text: str, records: Sequence[Process]) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", str(exc)) from exc
    return parse(data, records)


def parse(
    data: Mapping[str, Any],
    records: Sequence[Process],
    source: Path | None = None,
    skipped: Collection[str] = (),
) -> Config:
    """Validate a decoded TOML document; raises ConfigError naming the first bad key.

    Sections named in ``skipped`` (processes not loaded here) are accepted unchecked.
    """
    by_name = {r.name: r for r in records}
    for key in data:
        if key != "suite" and key not in by_name and key not in skipped:
            raise ConfigError(key, f"unknown section (known: suite, {', '.join(by_name)})")
    suite = _build(SuiteConfig, _table(data.get("suite", {}), "suite"), "suite")
    processes: dict[str, ProcessSection] = {}
    for name, record in by_name.items():
        raw = _table(data.get(name, {}), name)
        common = {k: v for k, v in raw.items() if k in COMMON_KEYS}
        own = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
        settings: Any = None
        if record.config is not None:
            settings = _build(record.config, own, name)
        elif own:
            raise ConfigError(f"{name}.{next(iter(own))}", "unknown key")
        sec = _build(ProcessSection, common, name)
        if sec.replicas > 1 and not record.replica_safe:
            raise ConfigError(f"{name}.replicas", f"{name} is not safe to replicate on one root")
        processes[name] = dataclasses.replace(sec, settings=settings)
    return Config(suite=suite, processes=processes, source=source)


def _table(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a table, not {_tname(value)}")
    return value


def _build(cls: type[Any], raw: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "settings"}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}"
        if key not in names:
            raise ConfigError(dotted, "unknown key")
        kwargs[key] = _convert(hints[key], value, dotted)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(prefix, str(exc)) from exc


def _convert(tp: Any, value: Any, key: str) -> Any:  # noqa: C901 - one branch per type form
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(key, "bad value")
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {', '.join(repr(a) for a in args)}, not {value!r}")
        return value
    if origin in (tuple, list, Sequence, typing.Sequence):
        if not isinstance(value, list):
            raise ConfigError(key, f"must be an array, not {_tname(value)}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return list(items) if origin is list else tuple(items)
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a table, not {_tname(value)}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, _table(value, key), key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be a boolean, not {_tname(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, not {_tname(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, not {_tname(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, not {_tname(value)}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a path string, not {_tname(value)}")
        return Path(value)
    raise ConfigError(key, f"unsupported type {tp!r} in the section's dataclass")


def _tname(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------
# rendering the defaults


def render_defaults(records: Sequence[Process]) -> str:
    """The defaults of every section, as a TOML document that :func:`load` accepts."""
    out = [
        "# moorage configuration: the defaults. Every key is optional.",
        "# A section per process; unknown keys are refused.",
        "",
        "[suite]",
    ]
    out += _render_fields(SuiteConfig())
    for r in records:
        out += ["", f"[{r.name}]"]
        if r.description:
            out.insert(len(out) - 1, f"# {r.description}")
        common = ProcessSection()
        out += _render_fields(common)
        if r.config is not None:
            out += _render_fields(r.config())
    return "\n".join(out) + "\n"


def _render_fields(obj: Any) -> list[str]:
    lines = []
    tables = []
    for f in dataclasses.fields(obj):
        if not f.init or f.name == "settings":
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
            continue
        if value is None:
            lines.append(f"# {f.name} = (unset)")
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    for name, value in tables:
        lines.append(f"{name} = {{ {', '.join(_render_inline(value))} }}")
    return lines


def _render_inline(obj: Any) -> list[str]:
    return [
        f"{f.name} = {_toml_value(getattr(obj, f.name))}"
        for f in dataclasses.fields(obj)
        if f.init
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        s = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if dataclasses.is_dataclass(value):
        return "{ " + ", ".join(_render_inline(value)) + " }"
    if value is None:
        raise ConfigError("", "None has no TOML form; use a default value")
    return repr(value)
