"""gRPC status codes, as ttrpc carries them in ``google.rpc.Status.code``.

``Code`` behaves as the ``IntEnum`` it was: ``Code.NOT_FOUND == 5`` and is an int,
``Code(5) is Code.NOT_FOUND``, ``Code(5).name == "NOT_FOUND"``, ``Code(99)`` raises
ValueError, ``str()`` and formatting give the number, ``repr()`` names the member. It is a
plain int subclass because importing ``enum`` costs every ``moor`` command several ms.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


class Code(int):
    """gRPC status codes."""

    __slots__ = ()

    OK: ClassVar[Code]
    CANCELLED: ClassVar[Code]
    UNKNOWN: ClassVar[Code]
    INVALID_ARGUMENT: ClassVar[Code]
    DEADLINE_EXCEEDED: ClassVar[Code]
    NOT_FOUND: ClassVar[Code]
    ALREADY_EXISTS: ClassVar[Code]
    PERMISSION_DENIED: ClassVar[Code]
    RESOURCE_EXHAUSTED: ClassVar[Code]
    FAILED_PRECONDITION: ClassVar[Code]
    ABORTED: ClassVar[Code]
    OUT_OF_RANGE: ClassVar[Code]
    UNIMPLEMENTED: ClassVar[Code]
    INTERNAL: ClassVar[Code]
    UNAVAILABLE: ClassVar[Code]
    DATA_LOSS: ClassVar[Code]
    UNAUTHENTICATED: ClassVar[Code]

    def __new__(cls, value: int) -> Code:
        member = _MEMBERS.get(value)
        if member is None:
            raise ValueError(f"{value!r} is not a valid Code")
        return member

    @property
    def name(self) -> str:
        return _NAMES[self]

    @property
    def value(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"<Code.{_NAMES[self]}: {int(self)}>"

    __str__ = int.__repr__

    def __reduce__(self) -> tuple[type[Code], tuple[int]]:
        return Code, (int(self),)


_MEMBERS: dict[int, Code] = {}
for _value, _name in enumerate(_NAMES):
    _MEMBERS[_value] = int.__new__(Code, _value)
    setattr(Code, _name, _MEMBERS[_value])
del _value, _name
