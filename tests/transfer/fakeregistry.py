"""A tiny scripted HTTP registry for malicious-registry tests (the real registry cannot be
made to misbehave). Routes map a path to a function returning (status, headers, body) where
body may be bytes or an iterator of bytes (sent chunked, possibly endless). Every request's
method, path and Authorization header is recorded."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

Response = tuple[int, dict[str, str], "bytes | Iterable[bytes]"]
Route = Callable[["http.server.BaseHTTPRequestHandler"], Response]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeRegistry:
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    bytes_sent: int = 0

    def start(self) -> FakeRegistry:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _serve(self) -> None:
                fake.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                route = fake.routes.get(self.path.split("?")[0])
                if route is None:
                    status, headers, body = 404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"NOT_FOUND"}]}'
                else:
                    status, headers, body = route(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                try:
                    if isinstance(body, bytes):
                        if "Content-Length" not in headers:
                            self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(body)
                            fake.bytes_sent += len(body)
                    else:
                        if "Content-Length" not in headers:
                            self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        chunked = "Content-Length" not in headers
                        for piece in body:
                            if chunked:
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                            else:
                                self.wfile.write(piece)
                            fake.bytes_sent += len(piece)
                        if chunked:
                            self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _serve

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def endless(piece: bytes = b"x" * 65536) -> Iterator[bytes]:
    while True:
        yield piece
