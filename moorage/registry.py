"""Process records: what each moorage process is, as data, and the explicit list of built-ins.

A process is a :class:`Process` record that its package defines in ``process.py`` as
``PROCESS``; :data:`BUILTINS` names each by dotted path so nothing is imported until a command
needs it (``moor`` never does). The runner (:mod:`moorage.runner`) serves whatever a record's
``build`` returns; the proxy routes the record's ``services`` to its sockets.

Lifecycle of one process (``moorage serve NAME``)::

    config loaded and validated  ->  record.build(ctx)  ->  socket bound (0660 in 0700 dir)
    ->  READY=1 to systemd  ->  serve  ->  SIGTERM: stop accepting, drain, cancel stragglers
    ->  ctx.on_close callbacks (reverse order)  ->  socket removed  ->  exit 0

``build`` must not serve or block: open stores, start background tasks, return servicers.
It may raise any errdefs kind or ConfigError; the process then exits non-zero with the message.

Extra records (tests, out-of-tree processes) come from ``[suite] plugins = ["module:attr"]``.

The proxy imports every record to learn its ``services`` (and ``moorage up`` to validate its
config), so ``process.py`` should import lightly: the record, its config dataclass, and the
heavy modules (stores, protobuf, clients) inside ``build``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ttrpc.server import Context, RawCall

    from moorage.config import Config
    from moorage.events import EventPublisher

    RawHandler = Callable[[Context, RawCall], Awaitable[None]]

__all__ = [
    "BUILTINS",
    "BuildContext",
    "Fallback",
    "Listener",
    "Missing",
    "Process",
    "RawService",
    "load_records",
]


@dataclass(frozen=True)
class Process:
    """One kind of process in the suite.

    ``name``: the config section, socket name and ``moorage serve NAME`` word.
    ``services``: the full ttrpc service names it serves; the proxy routes exactly these to it.
    ``build``: ``async (ctx) -> [servicer | RawService | Fallback | Listener, ...]``.
    ``replica_safe``: several replicas may share one root (the proxy spreads calls over them).
    ``config``: a frozen dataclass for its own keys of ``[name]`` (None: only the common ones).
    """

    name: str
    services: tuple[str, ...]
    build: Callable[[BuildContext], Awaitable[Sequence[object]]]
    replica_safe: bool = False
    config: type[Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class RawService:
    """Methods served from raw payload bytes (no generated servicer), e.g. internal calls."""

    service: str
    methods: Mapping[str, RawHandler]


@dataclass(frozen=True)
class Fallback:
    """Handler for every call whose service nothing registered (the proxy's router)."""

    handler: RawHandler


@dataclass(frozen=True)
class Listener:
    """Serve the process's socket with something else than its ttrpc server (the proxy's
    front door). The runner binds and listens (0660), then ``await serve(server, sock)``
    where ``server`` is the process's ttrpc server holding every service ``build`` returned;
    on SIGTERM it awaits ``drain(grace)`` (stop accepting, let calls end, drop the rest)
    before shutting the ttrpc server down."""

    serve: Callable[[Any, Any], Awaitable[None]]
    drain: Callable[[float], Awaitable[None]]


@dataclass
class BuildContext:
    """What ``Process.build`` gets: its config section, its dirs, its peers, its tools."""

    name: str
    replica: int | None
    config: Config
    settings: Any
    """The record's own config dataclass instance (None when it declares none)."""
    root: Path
    """``<suite.root>/<name>``, created 0700."""
    state: Path
    """``<suite.state>/<name>``, created 0700: per-process runtime state (not the socket)."""
    proxy_address: Path
    publisher: EventPublisher
    logger: logging.Logger
    closers: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    usage: list[Callable[[str], Awaitable[Sequence[str]]]] = field(default_factory=list)
    notes: list[Callable[[], Sequence[str]]] = field(default_factory=list)

    def on_close(self, fn: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``fn`` after the server drained, in reverse registration order."""
        self.closers.append(fn)

    def namespace_usage(self, fn: Callable[[str], Awaitable[Sequence[str]]]) -> None:
        """Report what this process holds in a namespace (``["image docker.io/x", ...]``).

        The proxy asks every process before deleting a namespace and refuses while any
        answers a non-empty list (see moorage.runner.USAGE_SERVICE).
        """
        self.usage.append(fn)

    def health_notes(self, fn: Callable[[], Sequence[str]]) -> None:
        """Add what ``fn`` returns to every Health answer: warnings for operators (the
        process still serves). They show in introspection (``exports["notes"]``) and in
        ``moor services``."""
        self.notes.append(fn)


# The built-in processes, in start order (the proxy first). name -> "module:attr".
BUILTINS: tuple[tuple[str, str], ...] = (
    ("proxy", "moorage.proxy.process:PROCESS"),
    ("content", "moorage.services.content.process:PROCESS"),
    ("snapshots", "moorage.services.snapshots.process:PROCESS"),
    ("transfer", "moorage.services.transfer.process:PROCESS"),
    ("sandbox", "moorage.services.sandbox.process:PROCESS"),
    ("runtime", "moorage.services.runtime.process:PROCESS"),
    ("nri", "moorage.nri.process:PROCESS"),
    ("cri", "moorage.services.cri.process:PROCESS"),
)


@dataclass(frozen=True)
class Missing:
    """A record that could not be loaded because its module does not exist (yet)."""

    name: str
    target: str
    reason: str

    def message(self) -> str:
        return f"{self.name}: skipped, {self.target} is not installed ({self.reason})"


def resolve(target: str) -> Any:
    """Import ``"module:attr"`` and return the attribute."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{target!r} is not of the form 'module:attr'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_records(
    plugins: Sequence[str] = (), only: Sequence[str] | None = None
) -> tuple[list[Process], list[Missing]]:
    """The built-in records whose module exists, then the plugins; and the skipped ones.

    ``only``: load just these built-ins (``moorage serve`` imports one process, not all);
    plugins are always loaded. A module that exists but fails to import raises: that is a bug, not a missing part.
    """
    records: list[Process] = []
    missing: list[Missing] = []
    seen: set[str] = set()
    for name, target in (*BUILTINS, *((None, p) for p in plugins)):
        if only is not None and name is not None and name not in only:
            continue
        module = target.partition(":")[0]
        try:
            record = resolve(target)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                missing.append(Missing(name or target, target, f"no module {exc.name}"))
                continue
            raise
        except AttributeError as exc:
            if name is None:
                raise ValueError(f"plugin {target}: {exc}") from exc
            missing.append(Missing(name, target, str(exc)))
            continue
        if not isinstance(record, Process):
            raise TypeError(f"{target} is not a moorage.registry.Process")
        if record.name in seen:
            raise ValueError(f"two process records are named {record.name!r}")
        seen.add(record.name)
        records.append(record)
    return records, missing


def builtin_names() -> list[str]:
    return [name for name, _ in BUILTINS]
