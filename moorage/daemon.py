"""The ``moorage`` command: run the suite (``up``), one process (``serve``), or print config.

``moorage up [--config F] [--root DIR] [--state DIR]``
    Validates the whole config, renders deploy/supervisord.conf.template into
    ``<state>/supervisor/`` and runs supervisord in the foreground with one program per
    process replica (the proxy first). A process that dies is restarted. SIGINT/SIGTERM stop
    every process; afterwards no socket of the suite is left behind. Each process reports
    readiness over a NOTIFY_SOCKET that ``up`` owns; when all are serving it prints one line
    and, if it runs under systemd itself, tells it READY=1. Readiness of a restarted process
    is relayed as ``STATUS=ready <program>``.
``moorage serve NAME [--replica N] [--config F] [--root DIR] [--state DIR]``
    Runs one process (what each systemd unit runs); see moorage.runner.
``moorage config default``
    Prints the defaults of every installed process as TOML.
``moorage config check [--config F]``
    Validates a config file; exit 0 when it is usable, 2 naming the bad key when not.

The config is ``--config F``, else /etc/moorage/config.toml when it exists, else the defaults.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import string
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

from moorage.config import DEFAULT_PATH, Config, ConfigError, Loaded, load_suite, read, render_defaults

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moorage", description="moorage container runtime suite")
    sub = parser.add_subparsers(dest="command", required=True)

    def paths(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_PATH} if present)")
        p.add_argument("--root", type=Path, help="durable data root (overrides suite.root)")
        p.add_argument("--state", type=Path, help="state dir for sockets (overrides suite.state)")

    up = sub.add_parser("up", help="run every process under supervisord, in the foreground")
    paths(up)
    serve = sub.add_parser("serve", help="run one process")
    serve.add_argument("name")
    serve.add_argument("--replica", type=int, default=None)
    paths(serve)
    cfg = sub.add_parser("config", help="print or check the configuration")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    default = cfg_sub.add_parser("default", help="print the defaults of every installed process")
    default.add_argument("--config", type=Path, help="read [suite] plugins from this file, to include theirs")
    check = cfg_sub.add_parser("check", help="validate a config file")
    paths(check)

    args = parser.parse_args(argv)
    try:
        if args.command == "config":
            if args.action == "default":
                from moorage import registry

                plugins = []
                if args.config is not None:
                    plugins = list(read(args.config).get("suite", {}).get("plugins", []))
                records, _ = registry.load_records(plugins)
                loaded = Loaded(Config(), records, [])
                sys.stdout.write(render_defaults(loaded.records))
                return 0
            loaded = _load(args, None)
            _report_missing(loaded)
            print(f"moorage: config {loaded.config.source or '(defaults)'} is valid")
            return 0
        if args.command == "serve":
            loaded = _load(args, None if args.name == "proxy" else [args.name])
            record = loaded.record(args.name)
            from moorage import runner

            return runner.run(record, loaded.config, args.replica)
        loaded = _load(args, None)
        return up_suite(loaded)
    except ConfigError as exc:
        print(f"moorage: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _load(args: argparse.Namespace, only: list[str] | None) -> Loaded:
    path: Path | None = args.config
    if path is None and DEFAULT_PATH.exists():
        path = DEFAULT_PATH
    loaded = load_suite(path, only)
    cfg = loaded.config.with_paths(args.root, args.state)
    return Loaded(cfg, loaded.records, loaded.missing)


def _report_missing(loaded: Loaded) -> None:
    for m in loaded.missing:
        print(f"moorage: {m.message()}", file=sys.stderr)


# ---------------------------------------------------------------------------------------
# moorage up


def programs(loaded: Loaded) -> list[tuple[str, str, int | None]]:
    """(program name, process name, replica) for every process replica to start, proxy first."""
    out: list[tuple[str, str, int | None]] = []
    for record in loaded.records:
        sec = loaded.config.section(record.name)
        if not sec.enabled or sec.sockets:
            continue  # disabled, or served by processes this suite does not start
        if sec.replicas == 1:
            out.append((record.name, record.name, None))
        else:
            out += [(f"{record.name}-{n}", record.name, n) for n in range(1, sec.replicas + 1)]
    return out


def render_supervisor(loaded: Loaded, run_dir: Path, notify: Path) -> str:
    """The supervisord config for this suite (see deploy/supervisord.conf.template)."""
    cfg = loaded.config
    head = string.Template((DEPLOY / "supervisord.conf.template").read_text())
    prog = string.Template((DEPLOY / "supervisord.program.template").read_text())
    blocks = []
    names = []
    for program, name, replica in programs(loaded):
        cmd = [sys.executable, "-m", "moorage.daemon", "serve", name]
        if replica is not None:
            cmd += ["--replica", str(replica)]
        if cfg.source is not None:
            cmd += ["--config", str(cfg.source)]
        cmd += ["--root", str(cfg.suite.root), "--state", str(cfg.suite.state)]
        env = {"NOTIFY_SOCKET": str(notify), "PYTHONUNBUFFERED": "1"}
        blocks.append(
            prog.substitute(
                program=program,
                command=" ".join(_sv_quote(c) for c in cmd),
                environment=",".join(f'{k}="{v}"' for k, v in env.items()),
                stopwait=str(int(cfg.suite.shutdown_timeout) + 5),
                priority="10" if name == "proxy" else "20",
            )
        )
        names.append(program)
    user = "user=root" if os.geteuid() == 0 else ""  # as root, say so (else supervisord warns)
    # the control socket is 0600 in a 0700 folder; a password per run (in this 0600 file, for
    # supervisorctl -c) only keeps supervisord from logging CRIT about its absence at start
    password = os.urandom(16).hex()
    return head.substitute(run=str(run_dir), programs=",".join(names), user=user,
                           password=password) + "".join(blocks)


def _sv_quote(arg: str) -> str:
    """Quote one argument for supervisord's shlex-split command line; escape %."""
    arg = arg.replace("%", "%%")
    if arg and all(c.isalnum() or c in "/._-=:+," for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _suite_sockets(cfg: Config) -> list[Path]:
    found = [cfg.suite.proxy_address]
    services = cfg.suite.state / "services"
    if services.is_dir():
        found += sorted(services.glob("*.sock"))
    return found


def _stale(path: Path) -> bool:
    """True when ``path`` is a socket nobody serves (safe to remove)."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return True
    return False


def up_suite(loaded: Loaded) -> int:
    """``moorage up``: supervisord in the foreground; returns its exit status."""
    cfg = loaded.config
    _report_missing(loaded)
    progs = programs(loaded)
    if not progs:
        print("moorage: no process to run", file=sys.stderr)
        return 1
    state = cfg.suite.state
    if cfg.suite.proxy_address.exists() and not _stale(cfg.suite.proxy_address):
        print(f"moorage: a suite already serves {cfg.suite.proxy_address}", file=sys.stderr)
        return 1
    for stale in _suite_sockets(cfg):
        if _stale(stale):
            stale.unlink()
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o711)
    cfg.suite.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir = state / "supervisor"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    notify_path = run_dir / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    conf = run_dir / "supervisord.conf"
    conf.write_text(render_supervisor(loaded, run_dir, notify_path))
    conf.chmod(0o600)

    _append_output()
    env = dict(os.environ)
    outer_notify = env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
        env=env,
        start_new_session=True,
    )

    def forward(signum: int, frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    relay = threading.Thread(
        target=_relay_ready,
        args=(notify, [p for p, _, _ in progs], cfg, outer_notify),
        daemon=True,
    )
    relay.start()
    rc = proc.wait()
    notify.close()
    for leftover in _suite_sockets(cfg):
        if _stale(leftover):
            leftover.unlink()
    for f in ("notify.sock", "supervisor.sock", "supervisord.pid", "supervisord.conf"):
        (run_dir / f).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass
    print("moorage: stopped", file=sys.stderr)
    return 0 if rc in (0, -signal.SIGTERM) else rc


def _append_output() -> None:
    """Make stdout and stderr append when they are a regular file (``moorage up > log``).

    supervisord opens /dev/stdout anew, appending, for the processes' output; what ``up`` and
    supervisord print through the file description the shell opened would otherwise land at
    that description's own offset, over the processes' lines.
    """
    import fcntl
    import stat

    for fd in (1, 2):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        except OSError:
            pass


def _relay_ready(notify: socket.socket, expected: list[str], cfg: Config, outer: str | None) -> None:
    """Collect READY datagrams from the processes; say when the whole suite serves."""
    waiting = set(expected)
    while True:
        try:
            data = notify.recv(4096)
        except OSError:
            return
        fields = dict(line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line)
        status = fields.get("STATUS", "")
        if not status.startswith("ready "):
            continue
        program = status[len("ready ") :]
        if outer:
            _sd_send(outer, f"STATUS=ready {program}")
        if program in waiting:
            waiting.discard(program)
            if not waiting:
                print(
                    f"moorage: suite ready on {cfg.suite.proxy_address} ({len(expected)} processes)",
                    file=sys.stderr,
                    flush=True,
                )
                if outer:
                    _sd_send(outer, "READY=1\nSTATUS=suite ready")


def _sd_send(address: str, message: str) -> None:
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), address)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
