"""Kubernetes' remotecommand and portforward conventions over SPDY (no I/O here).

Protocol negotiation: the client lists ``X-Stream-Protocol-Version`` values in preference
order; the server answers with the first it supports (kubelet's ``httpstream.Handshake``);
no header at all means v1; none supported is a 403. Over SPDY kubelet serves
remotecommand v4..v1 (v5 adds a close signal that only WebSocket carries, so a client
offering v5 first gets v4) and ``portforward.k8s.io``.

remotecommand streams (header ``streamType``): ``error`` (always), ``stdin``, ``stdout``,
``stderr`` (not with a terminal), ``resize`` (v3+, with a terminal: a sequence of JSON
``{"Width": w, "Height": h}``). v4 reports the outcome on the error stream as a JSON
metav1.Status: Success, or Failure (reason NonZeroExitCode with an ExitCode cause, or
InternalError); v1-v3 write only a failure's message. portforward: per connection a pair
of streams with the same ``requestID`` and ``port``, ``streamType`` ``error`` and ``data``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from .contract import TermSize

V1 = "channel.k8s.io"
V2 = "v2.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V5 = "v5.channel.k8s.io"
REMOTECOMMAND_SPDY = (V4, V3, V2, V1)
PORTFORWARD = "portforward.k8s.io"

STREAM_TYPE = "streamtype"
ERROR, STDIN, STDOUT, STDERR, RESIZE, DATA = "error", "stdin", "stdout", "stderr", "resize", "data"
PORT = "port"
REQUEST_ID = "requestid"


class NoCommonProtocol(Exception):
    """The client offered protocols, none of which the server speaks."""


def negotiate(offered: Iterable[str], supported: Sequence[str]) -> str:
    """The first offered protocol the server supports; "" (v1) when none was offered."""
    values = [v.strip() for item in offered for v in item.split(",") if v.strip()]
    if not values:
        return ""
    for v in values:
        if v in supported:
            return v
    raise NoCommonProtocol(
        f"unable to upgrade: unable to negotiate protocol: client supports {values}, "
        f"server supports {list(supported)}")


def expected_streams(protocol: str, stdin: bool, stdout: bool, stderr: bool,
                     tty: bool) -> set[str]:
    want = {ERROR}
    if stdin:
        want.add(STDIN)
    if stdout:
        want.add(STDOUT)
    if stderr and not tty:
        want.add(STDERR)
    if tty and protocol in (V3, V4):
        want.add(RESIZE)
    return want


def success() -> bytes:
    return json.dumps({"metadata": {}, "status": "Success"}).encode()


def exit_failure(cmd: Sequence[str], code: int) -> bytes:
    """kubelet's status for a command that exited non-zero."""
    return json.dumps({
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command "
                   f"{list(cmd)}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }).encode()


def internal_error(message: str) -> bytes:
    return json.dumps({
        "metadata": {}, "status": "Failure",
        "message": f"Internal error occurred: {message}", "reason": "InternalError",
        "details": {"causes": [{"message": message}]}, "code": 500,
    }).encode()


def v1_message(status: bytes) -> bytes:
    """What v1-v3 write for a status: a failure's message, nothing on success."""
    doc = json.loads(status)
    return b"" if doc.get("status") == "Success" else str(doc.get("message", "")).encode()


class ResizeDecoder:
    """A stream of concatenated JSON TerminalSize objects -> sizes, fed in any chunks.
    Malformed input raises ValueError."""

    def __init__(self) -> None:
        self._buf = ""
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> list[TermSize]:
        self._buf += data.decode("utf-8", "replace")
        out: list[TermSize] = []
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf = ""
                return out
            try:
                doc, end = self._json.raw_decode(text)
            except json.JSONDecodeError:
                if len(text) > 4096:
                    raise ValueError("resize stream: not JSON") from None
                self._buf = text
                return out
            self._buf = text[end:]
            if not isinstance(doc, dict):
                raise ValueError("resize stream: not an object")
            w, h = doc.get("Width", doc.get("width", 0)), doc.get("Height", doc.get("height", 0))
            if not isinstance(w, int) or not isinstance(h, int) or w < 0 or h < 0:
                raise ValueError("resize stream: bad size")
            out.append(TermSize(w, h))
