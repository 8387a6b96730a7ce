"""``moor``: the client. Global flags here, then one command module imported lazily.

    moor [--address A] [--namespace N] [--json] [--timeout S] COMMAND [ARGS...]

Each command module exposes ``main(cmd, argv, ctx) -> int`` (see moorage.cli.context);
only the module of the command typed is imported, and none imports asyncio, so ``moor``
starts in tens of milliseconds. Exit codes are in moorage.cli.context.EXIT.
"""

from __future__ import annotations

import os
import sys

from moorage.cli.context import DEFAULT_ADDRESS, EXIT, MAX_SECONDS, CliContext

COMMANDS: dict[str, str] = {
    "services": "moorage.cli.services",
    "namespaces": "moorage.cli.namespaces",
    "namespace": "moorage.cli.namespaces",
    "ns": "moorage.cli.namespaces",
    "events": "moorage.cli.events",
    "version": "moorage.cli.version",
    "content": "moorage.services.content.cli",
    "snapshots": "moorage.services.snapshots.cli",
    "snapshot": "moorage.services.snapshots.cli",
    **{c: "moorage.services.transfer.cli" for c in ("pull", "push", "images", "rmi", "tag", "import", "export")},
    **{
        c: "moorage.services.runtime.cli"
        for c in (
            "run", "ps", "exec", "kill", "stop", "rm", "logs", "wait", "pause", "unpause",
            "top", "update", "containers", "tasks", "attach",
        )
    },
    "stats": "moorage.services.runtime.stats",
    "sandbox": "moorage.services.sandbox.cli",
    "sandboxes": "moorage.services.sandbox.cli",
    "nri": "moorage.nri.cli",
    "leases": "moorage.cli.leases",
    "gc": "moorage.cli.gc",
}

USAGE = """\
usage: moor [--address A] [--namespace N] [--json] [--timeout S] COMMAND [ARGS...]

commands:
  services                      the suite's services: replicas, health, round-trip time
  namespaces ls|create|rm|label namespaces and their labels
  events [FILTER...]            stream events as they happen (containerd filter syntax)
  version                       client and server versions
  content, snapshots, pull, images, run, ps, ...   (as each service provides them)

global flags:
  -a, --address A     proxy socket (env MOORAGE_ADDRESS, default {address})
  -n, --namespace N   namespace (env MOORAGE_NAMESPACE / CONTAINERD_NAMESPACE, default "default")
      --json          machine-readable output
      --timeout S     per-call timeout in seconds (default 30; 0 = none)
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    address = os.environ.get("MOORAGE_ADDRESS", DEFAULT_ADDRESS)
    namespace = os.environ.get("MOORAGE_NAMESPACE") or os.environ.get("CONTAINERD_NAMESPACE") or "default"
    as_json = False
    timeout = 30.0
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        name, eq, inline = flag.partition("=")

        def value() -> str:
            if eq:
                return inline
            if not args:
                raise _Usage(f"{name} needs a value")
            return args.pop(0)

        try:
            if name in ("-a", "--address"):
                address = value()
            elif name in ("-n", "--namespace"):
                namespace = value()
            elif name == "--json":
                as_json = True
            elif name == "--timeout":
                text = value()
                timeout = float(text)
                if not 0 <= timeout < MAX_SECONDS:  # and NaN
                    raise _Usage(f"--timeout {text!r}: want seconds from 0 (none) to {MAX_SECONDS:.0f}")
            elif name in ("-h", "--help"):
                sys.stdout.write(USAGE.format(address=DEFAULT_ADDRESS))
                return 0
            elif name == "--":
                break
            else:
                raise _Usage(f"unknown flag {name}")
        except (_Usage, ValueError) as exc:
            print(f"moor: {exc}", file=sys.stderr)
            return EXIT["usage"]
    if not args:
        sys.stderr.write(USAGE.format(address=DEFAULT_ADDRESS))
        return EXIT["usage"]
    cmd, rest = args[0], args[1:]
    target = COMMANDS.get(cmd)
    if target is None:
        print(f"moor: unknown command {cmd!r} (moor --help lists them)", file=sys.stderr)
        return EXIT["usage"]
    ctx = CliContext(address=address, namespace=namespace, json=as_json, timeout=timeout or None)
    try:
        module = __import__(target, fromlist=["main"])
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):
            print(f"moor: {cmd}: not available in this build ({target} is not installed)", file=sys.stderr)
            return EXIT["unimplemented"]
        raise
    try:
        rc: int = module.main(cmd, rest, ctx)
    except KeyboardInterrupt:
        return EXIT["interrupted"]
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT["ok"]
    except Exception as exc:  # noqa: BLE001 - the one place an error becomes an exit code
        return ctx.fail(exc)
    finally:
        ctx.close()
    return rc


class _Usage(Exception):
    pass


if __name__ == "__main__":
    sys.exit(main())
