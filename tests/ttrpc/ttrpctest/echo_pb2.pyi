from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ("data", "sleep_ms", "fail_code", "fail_message", "count")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SLEEP_MS_FIELD_NUMBER: _ClassVar[int]
    FAIL_CODE_FIELD_NUMBER: _ClassVar[int]
    FAIL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sleep_ms: int
    fail_code: int
    fail_message: str
    count: int
    def __init__(self, data: _Optional[bytes] = ..., sleep_ms: _Optional[int] = ..., fail_code: _Optional[int] = ..., fail_message: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("data", "metadata", "remaining_ms")
    DATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    metadata: _containers.RepeatedScalarFieldContainer[str]
    remaining_ms: int
    def __init__(self, data: _Optional[bytes] = ..., metadata: _Optional[_Iterable[str]] = ..., remaining_ms: _Optional[int] = ...) -> None: ...
