"""A small runtime shim serving containerd.runtime.sandbox.v1.Sandbox over our ttrpc (tests).

Installed by the tests as an executable (``#!<python>`` prepended) and named as the sandbox's
runtime by absolute path. Speaks the runtime v2 shim protocol: ``start`` (cwd = bundle)
spawns ``serve`` in its own session, waits until it listens (a pipe, no polling) and prints
``unix://<socket>``; ``delete`` appends a line to ``$MOORTEST_SHIM_LOG`` and prints an
empty DeleteResponse. The server records CreateSandbox in ``<bundle>/create.json``; StopSandbox
makes WaitSandbox return 0; ShutdownSandbox makes the server drain and exit, removing its
socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time


def flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and arg.lstrip("-") in ("namespace", "address", "publish-binary", "id", "bundle", "socket", "ready-fd"):
            opts[arg.lstrip("-")] = argv[i + 1]
            i += 2
            continue
        if arg == "-debug":
            i += 1
            continue
        rest.append(arg)
        i += 1
    return opts, rest


def start(opts: dict[str, str]) -> int:
    sock = os.path.join(os.getcwd(), "shim.sock")  # in the bundle: removed with it
    if len(sock) > 100:
        digest = hashlib.sha256(f"{opts['address']}/{opts['namespace']}/{opts['id']}".encode()).hexdigest()[:16]
        sockdir = f"/tmp/moortest-shim-{digest}"
        os.makedirs(sockdir, mode=0o700, exist_ok=True)
        sock = os.path.join(sockdir, "s.sock")
    r, w = os.pipe()
    log = open(os.path.join(os.getcwd(), "shim.log"), "ab")
    argv = [sys.executable, os.path.abspath(__file__), "-namespace", opts["namespace"], "-id", opts["id"]]
    argv += ["-socket", sock, "-ready-fd", str(w), "serve"]
    subprocess.Popen(argv, pass_fds=[w], start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    os.close(w)
    ready = os.read(r, 16)
    if ready != b"ok":
        print("shim server failed to start", file=sys.stderr)
        return 1
    sys.stdout.write(f"unix://{sock}")
    return 0


def delete(opts: dict[str, str]) -> int:
    log = os.environ.get("MOORTEST_SHIM_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"delete {opts['namespace']} {opts['id']} {os.getcwd()}\n")
    return 0


async def serve(opts: dict[str, str]) -> int:
    from google.protobuf import any_pb2

    from moorage import errdefs
    from moorage.api.containerd.runtime.sandbox.v1 import sandbox_pb2 as pb
    from moorage.api.containerd.runtime.sandbox.v1.sandbox_ttrpc import SandboxServicer
    from moorage.api.containerd.types import metrics_pb2, platform_pb2
    from moorage.rpc import status_of
    from ttrpc.server import Server

    done = asyncio.Event()
    exited = asyncio.Event()
    state: dict[str, object] = {"id": "", "state": "SANDBOX_NOTREADY", "exited_at": 0}

    def check(sandbox_id: str) -> None:
        if sandbox_id != state["id"]:
            raise errdefs.NotFound(f"sandbox {sandbox_id} not found in this shim")

    def now() -> object:
        from google.protobuf import timestamp_pb2

        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(time.time_ns())
        return ts

    class Shim(SandboxServicer):  # type: ignore[misc]
        async def CreateSandbox(self, req: pb.CreateSandboxRequest, ctx: object) -> pb.CreateSandboxResponse:
            state["id"] = req.sandbox_id
            with open(os.path.join(req.bundle_path, "create.json"), "w") as f:
                json.dump(
                    {
                        "sandbox_id": req.sandbox_id,
                        "netns_path": req.netns_path,
                        "annotations": dict(req.annotations),
                        "options": req.options.type_url,
                        "rootfs": [m.source for m in req.rootfs],
                    },
                    f,
                )
            return pb.CreateSandboxResponse()

        async def StartSandbox(self, req: pb.StartSandboxRequest, ctx: object) -> pb.StartSandboxResponse:
            check(req.sandbox_id)
            state["state"] = "SANDBOX_READY"
            return pb.StartSandboxResponse(pid=os.getpid(), created_at=now())

        async def Platform(self, req: pb.PlatformRequest, ctx: object) -> pb.PlatformResponse:
            check(req.sandbox_id)
            return pb.PlatformResponse(platform=platform_pb2.Platform(os="linux", architecture="fake64"))

        async def StopSandbox(self, req: pb.StopSandboxRequest, ctx: object) -> pb.StopSandboxResponse:
            check(req.sandbox_id)
            state["state"] = "SANDBOX_NOTREADY"
            exited.set()
            return pb.StopSandboxResponse()

        async def WaitSandbox(self, req: pb.WaitSandboxRequest, ctx: object) -> pb.WaitSandboxResponse:
            check(req.sandbox_id)
            await exited.wait()
            return pb.WaitSandboxResponse(exit_status=0, exited_at=now())

        async def SandboxStatus(self, req: pb.SandboxStatusRequest, ctx: object) -> pb.SandboxStatusResponse:
            check(req.sandbox_id)
            return pb.SandboxStatusResponse(
                sandbox_id=req.sandbox_id, pid=os.getpid(), state=str(state["state"]), info={"shim": "fake", "verbose": str(req.verbose)}
            )

        async def PingSandbox(self, req: pb.PingRequest, ctx: object) -> pb.PingResponse:
            return pb.PingResponse()

        async def ShutdownSandbox(self, req: pb.ShutdownSandboxRequest, ctx: object) -> pb.ShutdownSandboxResponse:
            check(req.sandbox_id)
            exited.set()
            done.set()
            return pb.ShutdownSandboxResponse()

        async def SandboxMetrics(self, req: pb.SandboxMetricsRequest, ctx: object) -> pb.SandboxMetricsResponse:
            check(req.sandbox_id)
            data = any_pb2.Any(type_url="moortest.Metrics", value=b"\x08\x2a")
            return pb.SandboxMetricsResponse(metrics=metrics_pb2.Metric(id=req.sandbox_id, data=data))

    server = Server(status_of=status_of)
    server.register(Shim())
    sock = opts["socket"]
    if os.path.exists(sock):
        os.unlink(sock)
    await server.listen_unix(sock)
    fd = int(opts["ready-fd"])
    os.write(fd, b"ok")
    os.close(fd)
    await done.wait()
    await server.shutdown(2.0)
    try:
        os.unlink(sock)
        if os.path.basename(os.path.dirname(sock)).startswith("moortest-shim-"):
            os.rmdir(os.path.dirname(sock))
    except OSError:
        pass
    return 0


def main() -> int:
    opts, rest = flags(sys.argv[1:])
    command = rest[-1] if rest else ""
    if command == "start":
        return start(opts)
    if command == "delete":
        return delete(opts)
    if command == "serve":
        return asyncio.run(serve(opts))
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
