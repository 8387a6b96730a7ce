"""protoc plugin: typed ttrpc stubs, ``<file>_ttrpc.py`` beside protoc's ``<file>_pb2.py``.

Run it as ``protoc --plugin=protoc-gen-ttrpc=WRAPPER --ttrpc_out=OUT ...`` where WRAPPER
is an executable running ``python -m ttrpc.codegen`` with protobuf importable. For each
file that declares services it writes, per service ``Svc``:

- ``SvcServicer``: the server base. ``__ttrpc_service__`` describes the methods; every
  method answers UNIMPLEMENTED until a subclass overrides it. Shapes:
  unary ``async def M(self, request, ctx) -> Resp``; server stream: an async generator
  ``async def M(self, request, ctx) -> AsyncIterator[Resp]``; client stream
  ``async def M(self, requests: AsyncIterator[Req], ctx) -> Resp``; bidi
  ``async def M(self, stream: ServerStream[Req, Resp], ctx) -> None``.
- ``SvcClient(client)`` over ``ttrpc.client.Client`` and ``SvcBlockingClient(client)``
  over ``ttrpc.blocking.Client``: unary methods return the response (a coroutine of it
  for the asyncio client, ``await c.M(req)``), server streams an (async) iterator of
  responses, client and bidi streams a typed stream.

Generated modules import protobuf modules exactly as protoc's python_out does
(``from a.b import c_pb2 as a_dot_b_dot_c__pb2``) and import no asyncio at import time.
"""

from __future__ import annotations

import keyword
import sys
from collections.abc import Iterable

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

_KINDS = {
    (False, False): "UNARY",
    (False, True): "SERVER_STREAM",
    (True, False): "CLIENT_STREAM",
    (True, True): "BIDI",
}


def module_name(proto_file: str) -> str:
    """protoc's Python module for a .proto file."""
    base = proto_file[: -len(".proto")] if proto_file.endswith(".proto") else proto_file
    return base.replace("-", "_").replace("/", ".") + "_pb2"


def module_alias(proto_file: str) -> str:
    """protoc's alias for an imported _pb2 module."""
    return module_name(proto_file).replace("_", "__").replace(".", "_dot_")


def import_line(proto_file: str) -> str:
    name = module_name(proto_file)
    alias = module_alias(proto_file)
    package, _, module = name.rpartition(".")
    if package:
        return f"from {package} import {module} as {alias}"
    return f"import {module} as {alias}"


class _Types:
    """Full protobuf message names -> Python expressions, and the files they need."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self._where: dict[str, tuple[str, str]] = {}
        for f in files:
            prefix = f".{f.package}" if f.package else ""
            for message in f.message_type:
                self._add(f.name, prefix, "", message)
        self.used: set[str] = set()

    def _add(self, file: str, prefix: str, outer: str, message: descriptor_pb2.DescriptorProto) -> None:
        path = f"{outer}.{message.name}" if outer else message.name
        self._where[f"{prefix}.{path}"] = (file, path)
        for nested in message.nested_type:
            self._add(file, prefix, path, nested)

    def expr(self, full_name: str) -> str:
        file, path = self._where[full_name]
        self.used.add(file)
        return f"{module_alias(file)}.{path}"


def _comments(f: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(loc.path): loc.leading_comments.strip()
        for loc in f.source_code_info.location
        if loc.leading_comments.strip()
    }


def _docstring(text: str, indent: str) -> list[str]:
    if not text:
        return []
    lines = [line.rstrip() for line in text.replace('"""', "'''").replace("\\", "\\\\").splitlines()]
    if len(lines) == 1:
        return [f'{indent}"""{lines[0]}"""']
    body = [f"{indent}{line}" if line else "" for line in lines]
    return [f'{indent}"""{lines[0]}', *body[1:], f'{indent}"""']


def _method_name(name: str) -> str:
    return f"{name}_" if keyword.iskeyword(name) else name


def generate(f: descriptor_pb2.FileDescriptorProto, types: _Types) -> str:
    """The ``_ttrpc.py`` module for one file (which must declare services)."""
    comments = _comments(f)
    body: list[str] = []
    for si, svc in enumerate(f.service):
        full = f"{f.package}.{svc.name}" if f.package else svc.name
        doc = comments.get((6, si), "") or f"{full} (ttrpc)."
        methods = []
        for mi, m in enumerate(svc.method):
            kind = _KINDS[(m.client_streaming, m.server_streaming)]
            methods.append(
                (
                    m.name,
                    _method_name(m.name),
                    kind,
                    types.expr(m.input_type),
                    types.expr(m.output_type),
                    comments.get((6, si, 2, mi), ""),
                )
            )
        body += ["", "", f"class {svc.name}Servicer:"]
        body += _docstring(f"Server base for {full}: override the methods it serves.\n\n{doc}", "    ")
        body += ["", f"    __ttrpc_service__ = ServiceSpec(", f'        "{full}",', "        {"]
        for name, _, kind, req, resp, _ in methods:
            body.append(f'            "{name}": MethodSpec("{name}", Kind.{kind}, {req}, {resp}),')
        body += ["        },", "    )"]
        for name, py, kind, req, resp, mdoc in methods:
            body.append("")
            if kind == "UNARY":
                body.append(f"    async def {py}(self, request: {req}, ctx: Context) -> {resp}:")
            elif kind == "SERVER_STREAM":
                body.append(f"    async def {py}(self, request: {req}, ctx: Context) -> AsyncIterator[{resp}]:")
            elif kind == "CLIENT_STREAM":
                body.append(
                    f"    async def {py}(self, requests: AsyncIterator[{req}], ctx: Context) -> {resp}:"
                )
            else:
                body.append(
                    f"    async def {py}(self, stream: ServerStream[{req}, {resp}], ctx: Context) -> None:"
                )
            body += _docstring(mdoc, "        ")
            body.append(f'        raise RpcError(Code.UNIMPLEMENTED, "method {name} not implemented")')
            if kind == "SERVER_STREAM":
                body.append("        yield")

        for blocking in (False, True):
            cls = f"{svc.name}BlockingClient" if blocking else f"{svc.name}Client"
            client_type = "BlockingClient" if blocking else "Client"
            stream_type = "BlockingStream" if blocking else "ClientStream"
            iterator = "Iterator" if blocking else "AsyncIterator"
            ret = (lambda t: t) if blocking else (lambda t: f"Coroutine[Any, Any, {t}]")
            body += ["", "", f"class {cls}:"]
            how = "blocking" if blocking else "asyncio"
            body += _docstring(f"{how.capitalize()} client for {full}.", "    ")
            body += [
                "",
                f'    SERVICE = "{full}"',
                "",
                f"    def __init__(self, client: {client_type}) -> None:",
                "        self.client = client",
            ]
            opts = "timeout: float | None = None, metadata: Metadata | None = None"
            for name, py, kind, req, resp, mdoc in methods:
                body.append("")
                if kind == "UNARY":
                    body.append(f"    def {py}(self, request: {req}, *, {opts}) -> {ret(resp)}:")
                    body += _docstring(mdoc, "        ")
                    body.append(
                        f'        return self.client.unary(self.SERVICE, "{name}", request, {resp}, timeout, metadata)'
                    )
                elif kind == "SERVER_STREAM":
                    body.append(f"    def {py}(self, request: {req}, *, {opts}) -> {iterator}[{resp}]:")
                    body += _docstring(mdoc, "        ")
                    body.append(
                        f'        return self.client.server_stream(self.SERVICE, "{name}", request, {resp}, timeout, metadata)'
                    )
                else:
                    body.append(f"    def {py}(self, *, {opts}) -> {ret(f'{stream_type}[{req}, {resp}]')}:")
                    body += _docstring(mdoc, "        ")
                    body.append(
                        f'        return self.client.stream(self.SERVICE, "{name}", {resp}, timeout, metadata)'
                    )

    head = [
        f"# Generated by ttrpc.codegen from {f.name}. DO NOT EDIT.",
        f'"""ttrpc stubs for {f.name}."""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import AsyncIterator, Coroutine, Iterator",
        "from typing import TYPE_CHECKING, Any",
        "",
        "from ttrpc.codes import Code",
        "from ttrpc.errors import RpcError",
        "from ttrpc.service import Kind, MethodSpec, ServiceSpec",
        "",
    ]
    head += [import_line(name) for name in sorted(types.used)]
    head += [
        "",
        "if TYPE_CHECKING:",
        "    from ttrpc.blocking import BlockingStream",
        "    from ttrpc.blocking import Client as BlockingClient",
        "    from ttrpc.client import Client, ClientStream",
        "    from ttrpc.messages import Metadata",
        "    from ttrpc.server import Context, ServerStream",
        "",
        '__all__ = [',
    ]
    for svc in f.service:
        head += [f'    "{svc.name}Servicer",', f'    "{svc.name}Client",', f'    "{svc.name}BlockingClient",']
    head.append("]")
    return "\n".join(head + body) + "\n"


def output_name(proto_file: str) -> str:
    base = proto_file[: -len(".proto")] if proto_file.endswith(".proto") else proto_file
    return base.replace("-", "_") + "_ttrpc.py"


def run(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    files = {f.name: f for f in request.proto_file}
    for name in request.file_to_generate:
        f = files[name]
        if not f.service:
            continue
        types = _Types(request.proto_file)
        out = response.file.add()
        out.name = output_name(name)
        out.content = generate(f, types)
    return response


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    try:
        response = run(request)
    except KeyError as exc:
        response = plugin_pb2.CodeGeneratorResponse(error=f"ttrpc codegen: unknown type {exc}")
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
