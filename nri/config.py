"""The ``[nri]`` config section (containerd's ``[plugins."io.containerd.nri.v1.nri"]`` keys)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NriConfig:
    """Where plugins connect and live, and how long they get.

    ``socket_path``: the NRI socket external plugins dial (its folder is made 0700, the
    socket 0600: it is root-equivalent). ``plugin_path``: pre-installed plugins, started at
    boot (``NN-name`` executables); ``plugin_config_path``: their ``NN-name.conf`` /
    ``name.conf``. Timeouts in seconds: ``registration_timeout`` from connect to
    RegisterPlugin, ``request_timeout`` per call (a plugin that misses it is skipped for
    that event only; ``request_timeout_strikes`` misses in a row drop it, 1 = at the first
    as containerd; any answer resets the count), ``sync_timeout`` for the whole (possibly
    split) Synchronize of a new plugin.
    ``disable_connections``: no socket, only pre-installed plugins. ``apply_updates``:
    updates and evictions plugins ask for go to the runtime's tasks (Tasks.Update / Kill
    through the proxy); off, they are logged and reported failed. ``required_plugins``:
    plugin names that must answer every CreateContainer; creation fails when one is
    absent, times out or crashes (fail closed, unlike every other plugin).
    ``restart_delay``: a pre-installed plugin that went away is started again after this
    many seconds, doubling to ``restart_max_delay`` while it keeps failing (0: never,
    as containerd).
    """

    socket_path: str = "/var/run/nri/nri.sock"
    plugin_path: str = "/opt/nri/plugins"
    plugin_config_path: str = "/etc/nri/conf.d"
    registration_timeout: float = 5.0
    request_timeout: float = 2.0
    sync_timeout: float = 10.0
    disable_connections: bool = False
    apply_updates: bool = True
    required_plugins: tuple[str, ...] = ()
    request_timeout_strikes: int = 3
    restart_delay: float = 1.0
    restart_max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.restart_delay < 0 or self.restart_max_delay < self.restart_delay:
            raise ValueError("restart_delay must be >= 0 and <= restart_max_delay")
        if min(self.registration_timeout, self.request_timeout, self.sync_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.request_timeout_strikes < 1:
            raise ValueError("request_timeout_strikes must be >= 1")
        if not self.socket_path.startswith("/"):
            raise ValueError("socket_path must be absolute")
