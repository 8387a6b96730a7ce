"""What every ``moor`` command gets: where the suite is, which namespace, how to print.

A command is ``main(cmd: str, argv: list[str], ctx: CliContext) -> int``. It connects with
``ctx.connect()`` (a blocking ttrpc client: no asyncio), sends ``ctx.metadata()`` with every
call, prints a table for people or JSON (``ctx.json``) for scripts, and returns an exit code.
Any exception it lets escape goes through ``ctx.fail``.

Exit codes scripts can rely on (:data:`EXIT`): 0 ok; 1 any other failure; 2 usage;
3 not found; 4 already exists; 5 invalid argument; 6 failed precondition or conflict;
7 unavailable (suite or service not running); 8 permission denied; 9 deadline exceeded;
10 not implemented; 130 interrupted.
"""

from __future__ import annotations

import sys

from moorage import errdefs
from moorage.namespaces import NAMESPACE_KEY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

    from ttrpc.blocking import Client

DEFAULT_ADDRESS = "/run/moorage/moorage.sock.ttrpc"
MAX_SECONDS = 9e9
"""The longest timeout a call can carry: ttrpc's ``timeout_nano`` is an int64 (2**63 ns)."""

EXIT: dict[str, int] = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "not_found": 3,
    "already_exists": 4,
    "invalid_argument": 5,
    "failed_precondition": 6,
    "unavailable": 7,
    "permission_denied": 8,
    "deadline_exceeded": 9,
    "unimplemented": 10,
    "interrupted": 130,
}

_BY_KIND: tuple[tuple[type[errdefs.Error], int], ...] = (
    (errdefs.NotFound, EXIT["not_found"]),
    (errdefs.AlreadyExists, EXIT["already_exists"]),
    (errdefs.InvalidArgument, EXIT["invalid_argument"]),
    (errdefs.FailedPrecondition, EXIT["failed_precondition"]),
    (errdefs.Unavailable, EXIT["unavailable"]),
    (errdefs.PermissionDenied, EXIT["permission_denied"]),
    (errdefs.DeadlineExceeded, EXIT["deadline_exceeded"]),
    (errdefs.NotImplemented, EXIT["unimplemented"]),
)


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception (errdefs kinds by kind; OSError as unavailable)."""
    for kind, code in _BY_KIND:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, (ConnectionError, FileNotFoundError)):
        return EXIT["unavailable"]
    if isinstance(exc, KeyboardInterrupt):
        return EXIT["interrupted"]
    return EXIT["error"]


class Usage(Exception):
    """Bad command-line use; ``fail`` prints it and returns 2."""


class Help(Exception):
    """``--help`` was asked for: ``fail`` prints the text (the exception's argument) on
    stdout and returns 0."""


def human_size(n: int) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def pairs(values: Sequence[str], what: str = "label") -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict (``KEY=`` gives an empty value); Usage otherwise."""
    out = {}
    for v in values:
        key, eq, value = v.partition("=")
        if not eq or not key:
            raise Usage(f"{what} {v!r} is not KEY=VALUE")
        out[key] = value
    return out


class CliContext:
    """Global flags and the connection, shared by the command that runs."""

    def __init__(self, address: str, namespace: str, json: bool = False, timeout: float | None = 30.0) -> None:
        self.address = address
        self.namespace = namespace
        self.json = json
        self.timeout = timeout
        self._client: Client | None = None

    def metadata(self) -> dict[str, str]:
        """The metadata every call sends: the namespace."""
        return {NAMESPACE_KEY: self.namespace}

    def connect(self) -> Client:
        """The blocking ttrpc client to the proxy (one per command run)."""
        if self._client is None:
            from ttrpc.blocking import Client

            try:
                self._client = Client(self.address, error_factory=errdefs.from_status)
            except (OSError, errdefs.Unavailable) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise errdefs.Unavailable(
                    f"cannot reach moorage at {self.address}: {reason} (is the suite running? `moorage up`)"
                ) from exc
        return self._client

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def fail(self, exc: BaseException) -> int:
        """Print ``moor: <message>`` to stderr and return the exit code for its kind."""
        if isinstance(exc, Help):
            sys.stdout.write(str(exc))
            return EXIT["ok"]
        if isinstance(exc, Usage):
            print(f"moor: {exc}", file=sys.stderr)
            return EXIT["usage"]
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, (errdefs.Error, OSError)):
            message = f"{type(exc).__name__}: {message}"
        print(f"moor: {message}", file=sys.stderr)
        return exit_code(exc)

    # output -----------------------------------------------------------------------

    def emit_json(self, value: Any) -> None:
        from moorage.jsoncodec import dumps  # json's own package: ~5 ms of a --json command

        sys.stdout.write(dumps(value, default=str) + "\n")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Print aligned columns with an upper-case header, like ctr."""
        text_rows = [[str(c) for c in row] for row in rows]
        widths = [len(h) for h in headers]
        for row in text_rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        out = []
        for row in ([h.upper() for h in headers], *text_rows):
            out.append("    ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        sys.stdout.write("\n".join(out) + "\n")


def labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"
