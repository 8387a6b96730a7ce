from moorage.api.nri.pkg.api import api_pb2 as _api_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SynchronizeRequest(_message.Message):
    __slots__ = ("pods", "containers")
    PODS_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    pods: _containers.RepeatedCompositeFieldContainer[_api_pb2.PodSandbox]
    containers: _containers.RepeatedCompositeFieldContainer[_api_pb2.Container]
    def __init__(self, pods: _Optional[_Iterable[_Union[_api_pb2.PodSandbox, _Mapping]]] = ..., containers: _Optional[_Iterable[_Union[_api_pb2.Container, _Mapping]]] = ...) -> None: ...

class ListPluginsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PluginInfo(_message.Message):
    __slots__ = ("index", "name", "events", "event_names", "pid", "launched", "nri_version")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_NAMES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LAUNCHED_FIELD_NUMBER: _ClassVar[int]
    NRI_VERSION_FIELD_NUMBER: _ClassVar[int]
    index: str
    name: str
    events: int
    event_names: _containers.RepeatedScalarFieldContainer[str]
    pid: int
    launched: bool
    nri_version: str
    def __init__(self, index: _Optional[str] = ..., name: _Optional[str] = ..., events: _Optional[int] = ..., event_names: _Optional[_Iterable[str]] = ..., pid: _Optional[int] = ..., launched: _Optional[bool] = ..., nri_version: _Optional[str] = ...) -> None: ...

class ListPluginsResponse(_message.Message):
    __slots__ = ("plugins",)
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[PluginInfo]
    def __init__(self, plugins: _Optional[_Iterable[_Union[PluginInfo, _Mapping]]] = ...) -> None: ...
