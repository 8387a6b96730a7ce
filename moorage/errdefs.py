"""The one closed set of error kinds, as containerd's errdefs.

Domain code raises a kind with a message (``raise NotFound(f"content {dgst}")``); only the
RPC edges translate kinds to and from status codes (``to_status`` / ``from_status``). The
codes are gRPC's, which ttrpc carries in ``google.rpc.Status.code``.
"""

from __future__ import annotations

from ttrpc.codes import Code

__all__ = ["Code"]  # re-exported: the one enum of status codes


class Error(Exception):
    """Base of every kind. ``code`` is the status the kind travels as."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Unknown(Error):
    code = Code.UNKNOWN


class InvalidArgument(Error):
    code = Code.INVALID_ARGUMENT


class NotFound(Error):
    code = Code.NOT_FOUND


class AlreadyExists(Error):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(Error):
    code = Code.FAILED_PRECONDITION


class Conflict(FailedPrecondition):
    """A change that conflicts with the current state (containerd maps it to 9 too)."""


class NotModified(FailedPrecondition):
    pass


class Unavailable(Error):
    code = Code.UNAVAILABLE


class NotImplemented(Error):  # noqa: A001 - containerd's name for the kind
    code = Code.UNIMPLEMENTED


class OutOfRange(Error):
    code = Code.OUT_OF_RANGE


class Aborted(Error):
    code = Code.ABORTED


class ResourceExhausted(Error):
    code = Code.RESOURCE_EXHAUSTED


class PermissionDenied(Error):
    code = Code.PERMISSION_DENIED


class Internal(Error):
    code = Code.INTERNAL


class DataLoss(Error):
    code = Code.DATA_LOSS


class Unauthenticated(Error):
    code = Code.UNAUTHENTICATED


class DeadlineExceeded(Error):
    code = Code.DEADLINE_EXCEEDED


class Canceled(Error):
    code = Code.CANCELLED


_BY_CODE: dict[int, type[Error]] = {
    Code.UNKNOWN: Unknown,
    Code.INVALID_ARGUMENT: InvalidArgument,
    Code.NOT_FOUND: NotFound,
    Code.ALREADY_EXISTS: AlreadyExists,
    Code.FAILED_PRECONDITION: FailedPrecondition,
    Code.UNAVAILABLE: Unavailable,
    Code.UNIMPLEMENTED: NotImplemented,
    Code.OUT_OF_RANGE: OutOfRange,
    Code.ABORTED: Aborted,
    Code.RESOURCE_EXHAUSTED: ResourceExhausted,
    Code.PERMISSION_DENIED: PermissionDenied,
    Code.INTERNAL: Internal,
    Code.DATA_LOSS: DataLoss,
    Code.UNAUTHENTICATED: Unauthenticated,
    Code.DEADLINE_EXCEEDED: DeadlineExceeded,
    Code.CANCELLED: Canceled,
}


def to_status(exc: BaseException) -> tuple[int, str]:
    """The (code, message) an exception travels as; non-kinds become UNKNOWN."""
    if isinstance(exc, Error):
        return int(exc.code), exc.message
    return int(Code.UNKNOWN), f"{type(exc).__name__}: {exc}"


def from_status(code: int, message: str) -> Error:
    """The kind for a status received from a peer (unknown codes become Unknown)."""
    return _BY_CODE.get(code, Unknown)(message)


def is_kind(exc: BaseException, kind: type[Error]) -> bool:
    return isinstance(exc, kind)
