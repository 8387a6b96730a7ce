"""The one runner every moorage process uses (``moorage serve NAME``).

Lifecycle, the same in every process:

1. logging set up from ``[suite]``; ``<root>/<name>`` and ``<state>/<name>`` created 0700;
2. ``record.build(ctx)`` returns servicers (generated ``<Svc>Servicer`` instances),
   :class:`~moorage.registry.RawService` and at most one :class:`~moorage.registry.Fallback`;
3. the socket is bound: the folder holding it is 0700 (``<state>/services``) or 0711 (the
   state dir, for the proxy's front door); a stale socket nobody serves is removed first, a
   live one makes the process refuse to start; ttrpc chmods it 0660 before listening;
4. ``READY=1`` and ``STATUS=ready <program>`` go to ``$NOTIFY_SOCKET`` (systemd Type=notify,
   ``moorage up``, tests) once the socket accepts connections;
5. SIGTERM or SIGINT: stop accepting, drain in-flight calls for ``suite.shutdown_timeout``,
   cancel stragglers, run ``ctx.on_close`` callbacks (last first), remove the socket, exit 0.
   A second signal cancels the drain at once.

Every call runs with :data:`moorage.namespaces.current_namespace` set from its metadata.
Every process also serves :data:`INTERNAL_SERVICE` (raw msgpack, not part of containerd's
API) for the proxy: ``Health`` -> ``{"name", "replica", "pid", "uptime"}`` and
``NamespaceUsage`` (payload: the namespace, UTF-8) -> a list of strings naming what the
process still holds there (empty: nothing; the proxy refuses to delete a namespace otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from moorage import errdefs, log
from moorage.config import Config
from moorage.events import Publisher
from moorage.namespaces import current_namespace, from_metadata
from moorage.registry import BuildContext, Fallback, Listener, Process, RawService
from moorage.rpc import status_of

if TYPE_CHECKING:
    from ttrpc.server import Context, RawCall, Server

INTERNAL_SERVICE = "moorage.internal.v1.Process"
PROXY_SOCKET_DIR_MODE = 0o711
SOCKET_DIR_MODE = 0o700


def program_name(name: str, replica: int | None) -> str:
    return name if replica is None else f"{name}-{replica}"


def sd_notify(message: str, address: str | None = None) -> bool:
    """Send one datagram to $NOTIFY_SOCKET (or ``address``); False when there is none."""
    address = address or os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def run(record: Process, config: Config, replica: int | None = None) -> int:
    """Serve ``record`` until SIGTERM/SIGINT; the process's exit status."""
    logger = log.setup(program_name(record.name, replica), config.suite.log_level, config.suite.log_format)
    main = serve(record, config, replica, logger)
    try:
        if config.suite.event_loop == "uvloop":
            from ttrpc.loop import run as run_loop

            run_loop(main)
        else:
            asyncio.run(main)
    except errdefs.Error as exc:
        logger.error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _make_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def claim_socket(path: Path) -> None:
    """Remove a stale socket at ``path``; refuse when a live process serves it."""
    if not path.exists() and not path.is_symlink():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise errdefs.AlreadyExists(f"{path} is already being served")


async def serve(
    record: Process,
    config: Config,
    replica: int | None = None,
    logger: logging.Logger | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Build, bind, notify (and set ``ready``), serve until ``stop`` or a signal, drain,
    clean up."""
    from ttrpc.server import Server

    program = program_name(record.name, replica)
    logger = logger or logging.getLogger(f"moorage.{program}")
    suite = config.suite
    _make_dir(suite.state, PROXY_SOCKET_DIR_MODE)
    sock = config.socket_path(record.name, replica)
    _make_dir(sock.parent, PROXY_SOCKET_DIR_MODE if sock.parent == suite.state else SOCKET_DIR_MODE)
    root = suite.root / record.name
    state = suite.state / record.name
    _make_dir(root, 0o700)
    _make_dir(state, 0o700)

    publisher = Publisher(suite.proxy_address, logger)
    ctx = BuildContext(
        name=record.name,
        replica=replica,
        config=config,
        settings=config.settings(record.name),
        root=root,
        state=state,
        proxy_address=suite.proxy_address,
        publisher=publisher,
        logger=logger,
    )
    ctx.on_close(publisher.close)
    started = time.monotonic()
    server: Server = Server(status_of=status_of)
    listener: Listener | None = None
    try:
        items = await record.build(ctx)
        listener = _register(server, items)
        server.register_raw(INTERNAL_SERVICE, "Health", _health(record.name, replica, started, ctx.notes))
        server.register_raw(INTERNAL_SERVICE, "NamespaceUsage", _usage(ctx.usage))
        claim_socket(sock)
        listening = _listen(sock)
        if listener is not None:
            await listener.serve(server, listening)
        else:
            await server.listen_socket(listening)
    except BaseException:
        await _close(ctx, logger)
        raise
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()
        if signals > 1:
            server.close()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)
    logger.info("serving", extra={"socket": str(sock), "services": list(record.services), "pid": os.getpid()})
    sd_notify(f"READY=1\nSTATUS=ready {program}\nMAINPID={os.getpid()}")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        sd_notify("STOPPING=1")
        try:
            if listener is not None:
                await listener.drain(suite.shutdown_timeout)
            await server.shutdown(suite.shutdown_timeout)
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            await _close(ctx, logger)
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signum)
            logger.info("stopped")


async def _close(ctx: BuildContext, logger: logging.Logger) -> None:
    for fn in reversed(ctx.closers):
        try:
            result = fn()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("close callback failed")


def _listen(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, 0660 before it accepts anyone."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o660)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


def _register(server: Server, items: Sequence[object]) -> Listener | None:
    listener = None
    for item in items:
        if isinstance(item, Listener):
            listener = item
        elif isinstance(item, RawService):
            for method, handler in item.methods.items():
                server.register_raw(item.service, method, with_namespace_raw(handler))
        elif isinstance(item, Fallback):
            server.set_fallback(item.handler)  # the router sets namespaces itself
        else:
            server.register(with_namespace(item))
    return listener


# ---------------------------------------------------------------------------------------
# the namespace contextvar, per call


def _bind(ctx: Any) -> None:
    current_namespace.set(from_metadata(ctx.metadata))


def with_namespace(servicer: Any) -> Any:
    """Wrap each method of a generated servicer so it runs with current_namespace set."""
    spec = getattr(type(servicer), "__ttrpc_service__", None)
    if spec is None:
        return servicer
    for name in spec.methods:
        method = getattr(servicer, name, None)
        if method is None:
            continue
        setattr(servicer, name, _wrap(method))
    return servicer


def _wrap(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def agen(request: Any, ctx: Any) -> AsyncIterator[Any]:
            _bind(ctx)
            async for item in method(request, ctx):
                yield item

        return agen

    @functools.wraps(method)
    async def call(request: Any, ctx: Any) -> Any:
        _bind(ctx)
        return await method(request, ctx)

    return call


def with_namespace_raw(handler: Callable[[Context, RawCall], Awaitable[None]]) -> Callable[[Context, RawCall], Awaitable[None]]:
    async def call(ctx: Context, raw: RawCall) -> None:
        _bind(ctx)
        await handler(ctx, raw)

    return call


# ---------------------------------------------------------------------------------------
# the internal service


def _health(
    name: str, replica: int | None, started: float, notes: Sequence[Callable[[], Sequence[str]]] = ()
) -> Callable[[Context, RawCall], Awaitable[None]]:
    async def handler(ctx: Context, call: RawCall) -> None:
        body = {"name": name, "replica": replica, "pid": os.getpid(), "uptime": time.monotonic() - started,
                "notes": [n for fn in notes for n in fn()]}
        await call.respond(msgpack.packb(body))

    return handler


def _usage(
    reporters: Sequence[Callable[[str], Awaitable[Sequence[str]]]],
) -> Callable[[Context, RawCall], Awaitable[None]]:
    async def handler(ctx: Context, call: RawCall) -> None:
        ns = call.payload.decode()
        held: list[str] = []
        for report in reporters:
            held.extend(await report(ns))
        await call.respond(msgpack.packb(held))

    return handler
