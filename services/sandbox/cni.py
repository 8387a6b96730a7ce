"""CNI: load a network configuration list and run its plugin chain (ADD, DEL, CHECK).

Behaviour follows the CNI SPEC and libcni:

- The configuration is the first valid file, in lexical order, among ``*.conflist``,
  ``*.conf`` and ``*.json`` in the configuration directory; a single-plugin ``.conf`` is
  wrapped as a list of one.
- Each plugin receives its own object with ``name`` and ``cniVersion`` of the list, the
  ``runtimeConfig`` entries it declared in ``capabilities`` (``portMappings`` ...) and, after
  the first, ``prevResult``. Environment: ``CNI_COMMAND``, ``CNI_CONTAINERID``,
  ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``.
- ADD runs the plugins in order, threading each result into the next; DEL runs them in
  reverse with the ADD result as ``prevResult``. DEL is best effort over the whole chain: a
  failing plugin does not stop the ones before it from releasing what they hold; the first
  error is raised at the end. DEL works without a namespace (``CNI_NETNS`` empty) and
  without a previous result: plugins then free what they can (IPAM) by container id.
- Every invocation runs under a deadline; a plugin still running at the deadline is killed
  with its whole process group and the call raises DeadlineExceeded.

Errors are errdefs kinds: a plugin's own error ``{code, msg, details}`` becomes
:class:`PluginError` (Unavailable), a missing plugin binary FailedPrecondition.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moorage import errdefs

log = logging.getLogger(__name__)

EXTENSIONS = (".conflist", ".conf", ".json")
MAX_OUTPUT = 1 << 20


class PluginError(errdefs.Unavailable):
    """A CNI plugin failed: its error code, message and details as it reported them."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        text = f"cni plugin {plugin} {command} failed (code {code}): {msg}"
        if details:
            text += f": {details}"
        super().__init__(text)
        self.plugin = plugin
        self.command = command
        self.cni_code = code


@dataclass(frozen=True)
class NetworkConfig:
    """A loaded network configuration list (the JSON document as read, and where from)."""

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"cniVersion": self.cni_version, "name": self.name, "plugins": [dict(p) for p in self.plugins]}


@dataclass(frozen=True)
class Attachment:
    """One interface of one container on one network: what identifies it to every plugin."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()
    capability_args: Mapping[str, Any] = field(default_factory=dict)


def parse_conflist(data: bytes | str, source: str = "") -> NetworkConfig:
    """Parse a ``.conflist`` or single-plugin ``.conf``; InvalidArgument when malformed."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise errdefs.InvalidArgument(f"cni config {source}: {exc}") from exc
    if not isinstance(doc, dict):
        raise errdefs.InvalidArgument(f"cni config {source}: not a JSON object")
    if "plugins" in doc:
        plugins = doc["plugins"]
    elif "type" in doc:
        plugins = [{k: v for k, v in doc.items() if k not in ("name", "cniVersion")}]
    else:
        raise errdefs.InvalidArgument(f"cni config {source}: neither plugins nor type")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise errdefs.InvalidArgument(f"cni config {source}: missing name")
    if not isinstance(plugins, list) or not plugins:
        raise errdefs.InvalidArgument(f"cni config {source}: no plugins")
    for plugin in plugins:
        kind = plugin.get("type") if isinstance(plugin, dict) else None
        if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
            raise errdefs.InvalidArgument(f"cni config {source}: bad plugin type {kind!r}")
    version = doc.get("cniVersion", "0.4.0")
    return NetworkConfig(name=name, cni_version=str(version), plugins=tuple(plugins), source=source)


def load_conflist(conf_dir: str) -> NetworkConfig:
    """The first valid configuration in ``conf_dir``; FailedPrecondition when there is none."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(EXTENSIONS))
    except FileNotFoundError:
        names = []
    for name in names:
        path = os.path.join(conf_dir, name)
        try:
            with open(path, "rb") as f:
                return parse_conflist(f.read(MAX_OUTPUT), path)
        except (OSError, errdefs.InvalidArgument) as exc:
            log.warning("skipping cni config %s: %s", path, exc)
    raise errdefs.FailedPrecondition(f"cni config uninitialized: no network config in {conf_dir}")


def result_ips(result: Mapping[str, Any] | None) -> list[str]:
    """Addresses (without prefix length) the result gives interfaces inside the sandbox."""
    if not result:
        return []
    interfaces = result.get("interfaces") or []
    ips: list[str] = []
    for entry in result.get("ips") or []:
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces) and not interfaces[index].get("sandbox"):
            continue
        address = str(entry.get("address", ""))
        if address:
            ips.append(address.split("/", 1)[0])
    return ips


class Cni:
    """Runs CNI plugins found in ``bin_dirs`` (searched in order)."""

    def __init__(self, bin_dirs: Sequence[str]) -> None:
        self.bin_dirs = tuple(bin_dirs)

    def find(self, kind: str) -> str:
        for directory in self.bin_dirs:
            path = os.path.join(directory, kind)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise errdefs.FailedPrecondition(f"cni plugin {kind!r} not found in {':'.join(self.bin_dirs)}")

    async def add(self, net: NetworkConfig, att: Attachment, timeout: float) -> dict[str, Any]:
        """ADD the whole chain; the final result. Nothing is undone here on failure: the
        caller has already registered its DEL (an ADD can allocate and still fail)."""
        deadline = _deadline(timeout)
        prev: dict[str, Any] | None = None
        for plugin in net.plugins:
            prev = await self._exec("ADD", net, plugin, att, prev, deadline)
        return prev or {}

    async def check(self, net: NetworkConfig, att: Attachment, prev: Mapping[str, Any] | None, timeout: float) -> None:
        deadline = _deadline(timeout)
        for plugin in net.plugins:
            await self._exec("CHECK", net, plugin, att, prev, deadline)

    async def delete(self, net: NetworkConfig, att: Attachment, prev: Mapping[str, Any] | None, timeout: float) -> None:
        """DEL every plugin in reverse; raises the first failure after trying them all."""
        deadline = _deadline(timeout)
        first: BaseException | None = None
        for plugin in reversed(net.plugins):
            try:
                await self._exec("DEL", net, plugin, att, prev, deadline)
            except errdefs.Error as exc:
                log.warning("cni DEL %s for %s: %s", plugin.get("type"), att.container_id, exc)
                first = first or exc
        if first is not None:
            raise first

    def plugin_config(
        self, net: NetworkConfig, plugin: Mapping[str, Any], att: Attachment, prev: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        conf = dict(plugin)
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        runtime = {
            cap: att.capability_args[cap]
            for cap, wanted in (plugin.get("capabilities") or {}).items()
            if wanted and cap in att.capability_args
        }
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    async def _exec(
        self,
        command: str,
        net: NetworkConfig,
        plugin: Mapping[str, Any],
        att: Attachment,
        prev: Mapping[str, Any] | None,
        deadline: float,
    ) -> dict[str, Any] | None:
        kind = str(plugin["type"])
        path = self.find(kind)
        stdin = json.dumps(self.plugin_config(net, plugin, att, prev)).encode()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=att.container_id,
            CNI_NETNS=att.netns,
            CNI_IFNAME=att.ifname,
            CNI_ARGS=";".join(f"{k}={v}" for k, v in att.args),
            CNI_PATH=":".join(self.bin_dirs),
        )
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise errdefs.DeadlineExceeded(f"cni {command} {kind}: deadline exceeded before start")
        proc = subprocess.Popen(
            [path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        done = _communicate_on_thread(proc, stdin, remaining, f"cni-{command}-{kind}")
        try:
            outcome = await asyncio.shield(done)
        except BaseException:
            _kill_group(proc.pid)
            await _reap(done)
            raise
        if outcome is None:
            raise errdefs.DeadlineExceeded(f"cni {command} {kind}: deadline exceeded, plugin killed")
        out, err = outcome
        if proc.returncode != 0:
            code, msg, details = _plugin_error(out, err, proc.returncode)
            raise PluginError(kind, command, code, msg, details)
        if command != "ADD":
            return None
        try:
            result = json.loads(out[:MAX_OUTPUT])
        except ValueError as exc:
            raise PluginError(kind, command, 999, f"unparsable result: {exc}") from exc
        if not isinstance(result, dict):
            raise PluginError(kind, command, 999, "result is not a JSON object")
        return result


def _deadline(timeout: float) -> float:
    return asyncio.get_running_loop().time() + timeout


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_Outcome = tuple[bytes, bytes] | None


def _communicate(proc: subprocess.Popen[bytes], stdin: bytes, timeout: float) -> _Outcome:
    """Feed stdin, read both pipes to EOF and reap, within ``timeout``; past it, kill the
    plugin's process group, reap it and answer None (blocking: runs on its own thread)."""
    try:
        return proc.communicate(stdin, timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        return None


def _communicate_on_thread(proc: subprocess.Popen[bytes], stdin: bytes, timeout: float, name: str) -> asyncio.Future[_Outcome]:
    """:func:`_communicate` on a thread of its own; its outcome as a future of the running loop.

    Plugins are not run through the event loop's subprocess support: under uvloop a Go
    plugin takes about twice as long to run (libuv's spawn and socketpair stdio), and a
    plugin that exits before reading its stdin breaks uvloop's stdin transport. Popen (as
    ``subprocess.run`` spawns it) plus a blocking ``communicate`` is what the plugins cost
    anywhere else; a dedicated thread per call means a hung plugin never queues another
    behind it in a shared executor.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_Outcome] = loop.create_future()

    def settle(outcome: _Outcome, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(outcome)

    def run() -> None:
        outcome: _Outcome = None
        error: BaseException | None = None
        try:
            outcome = _communicate(proc, stdin, timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop
            _kill_group(proc.pid)
            proc.wait()
            error = exc
        try:
            loop.call_soon_threadsafe(settle, outcome, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def _reap(done: asyncio.Future[_Outcome]) -> None:
    """Wait for a killed plugin's thread to have reaped it (even if cancelled again)."""
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        pass
    except Exception:  # noqa: BLE001 - the caller is already raising its own error
        pass


def _plugin_error(out: bytes, err: bytes, returncode: int | None) -> tuple[int, str, str]:
    try:
        doc = json.loads(out[:MAX_OUTPUT])
        if isinstance(doc, dict) and "msg" in doc:
            return int(doc.get("code", 0)), str(doc["msg"]), str(doc.get("details", ""))
    except ValueError:
        pass
    text = (err or out)[:4096].decode(errors="replace").strip()
    return 999, text or f"exit status {returncode}", ""
