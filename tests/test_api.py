"""moorage.api: every generated module imports, and names and numbers are containerd's."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

import moorage.api
from moorage.api import build

API_DIR = Path(moorage.api.__file__).parent


def generated_modules() -> list[str]:
    names = []
    for path in sorted(API_DIR.rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_ttrpc.py")):
            rel = path.relative_to(API_DIR).with_suffix("")
            names.append("moorage.api." + ".".join(rel.parts))
    return names


def test_every_proto_has_generated_code() -> None:
    for proto in build.proto_files():
        stem = proto.with_suffix("")
        assert (API_DIR / f"{stem}_pb2.py").is_file(), proto
        assert (API_DIR / f"{stem}_pb2.pyi").is_file(), proto


@pytest.mark.parametrize("name", generated_modules())
def test_generated_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert isinstance(module, ModuleType)


def message(full_name: str) -> Descriptor:
    for name in generated_modules():
        importlib.import_module(name)
    return descriptor_pool.Default().FindMessageTypeByName(full_name)


def fields(full_name: str) -> dict[str, int]:
    return {f.name: f.number for f in message(full_name).fields}


@pytest.mark.parametrize(
    ("full_name", "expected"),
    [
        ("containerd.services.content.v1.WriteContentRequest",
         {"action": 1, "ref": 2, "total": 3, "expected": 4, "offset": 5, "data": 6, "labels": 7}),
        ("containerd.services.content.v1.WriteContentResponse",
         {"action": 1, "started_at": 2, "updated_at": 3, "offset": 4, "total": 5, "digest": 6}),
        ("containerd.services.content.v1.Info",
         {"digest": 1, "size": 2, "created_at": 3, "updated_at": 4, "labels": 5}),
        ("containerd.services.content.v1.Status",
         {"started_at": 1, "updated_at": 2, "ref": 3, "offset": 4, "total": 5, "expected": 6}),
        ("containerd.services.content.v1.ReadContentRequest", {"digest": 1, "offset": 2, "size": 3}),
        ("containerd.types.Envelope", {"timestamp": 1, "namespace": 2, "topic": 3, "event": 4}),
        ("containerd.types.Mount", {"type": 1, "source": 2, "target": 3, "options": 4}),
        ("containerd.types.Descriptor", {"media_type": 1, "digest": 2, "size": 3, "annotations": 5}),
        ("containerd.types.Platform",
         {"os": 1, "architecture": 2, "variant": 3, "os_version": 4, "os_features": 5}),
        ("containerd.types.Sandbox",
         {"sandbox_id": 1, "runtime": 2, "spec": 3, "labels": 4, "created_at": 5, "updated_at": 6,
          "extensions": 7, "sandboxer": 10}),
        ("containerd.services.snapshots.v1.CommitSnapshotRequest",
         {"snapshotter": 1, "name": 2, "key": 3, "labels": 4, "parent": 5}),
        ("containerd.services.snapshots.v1.Info",
         {"name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5, "labels": 6}),
        ("containerd.services.snapshots.v1.ListSnapshotsRequest", {"snapshotter": 1, "filters": 2}),
        ("containerd.task.v2.CreateTaskRequest",
         {"id": 1, "bundle": 2, "rootfs": 3, "terminal": 4, "stdin": 5, "stdout": 6, "stderr": 7,
          "checkpoint": 8, "parent_checkpoint": 9, "options": 10}),
        ("containerd.task.v2.StateResponse",
         {"id": 1, "bundle": 2, "pid": 3, "status": 4, "stdin": 5, "stdout": 6, "stderr": 7,
          "terminal": 8, "exit_status": 9, "exited_at": 10, "exec_id": 11}),
        ("containerd.task.v2.ConnectResponse", {"shim_pid": 1, "task_pid": 2, "version": 3}),
        ("containerd.task.v3.CreateTaskRequest",
         {"id": 1, "bundle": 2, "rootfs": 3, "terminal": 4, "stdin": 5, "stdout": 6, "stderr": 7,
          "checkpoint": 8, "parent_checkpoint": 9, "options": 10}),
        ("containerd.services.tasks.v1.CreateTaskRequest",
         {"container_id": 1, "rootfs": 3, "stdin": 4, "stdout": 5, "stderr": 6, "terminal": 7,
          "checkpoint": 8, "options": 9, "runtime_path": 10, "task_api_address": 11,
          "task_api_version": 12}),
        ("containerd.events.TaskCreate",
         {"container_id": 1, "bundle": 2, "rootfs": 3, "io": 4, "checkpoint": 5, "pid": 6}),
        ("containerd.events.TaskExit",
         {"container_id": 1, "id": 2, "pid": 3, "exit_status": 4, "exited_at": 5}),
        ("containerd.events.TaskDelete",
         {"container_id": 1, "pid": 2, "exit_status": 3, "exited_at": 4, "id": 5}),
        ("containerd.events.SnapshotCommit", {"key": 1, "name": 2, "snapshotter": 5}),
        ("containerd.events.ContentCreate", {"digest": 1, "size": 2, "mediaType": 3}),
        ("containerd.events.SandboxExit", {"sandbox_id": 1, "exit_status": 2, "exited_at": 3}),
        ("containerd.services.images.v1.ImageCreate", {"name": 1, "labels": 2}),
        ("containerd.services.images.v1.Image",
         {"name": 1, "labels": 2, "target": 3, "created_at": 7, "updated_at": 8}),
        ("containerd.services.containers.v1.Container",
         {"id": 1, "labels": 2, "image": 3, "runtime": 4, "spec": 5, "snapshotter": 6,
          "snapshot_key": 7, "created_at": 8, "updated_at": 9, "extensions": 10, "sandbox": 11}),
        ("containerd.services.sandbox.v1.ControllerCreateRequest",
         {"sandbox_id": 1, "rootfs": 2, "options": 3, "netns_path": 4, "annotations": 5,
          "sandbox": 6, "sandboxer": 10}),
        ("containerd.services.sandbox.v1.ControllerUpdateRequest",
         {"sandbox_id": 1, "sandboxer": 2, "sandbox": 3, "fields": 4}),
        ("containerd.services.sandbox.v1.ControllerStatusResponse",
         {"sandbox_id": 1, "pid": 2, "state": 3, "info": 4, "created_at": 5, "exited_at": 6,
          "extra": 7, "address": 8, "version": 9}),
        ("containerd.runtime.sandbox.v1.CreateSandboxRequest",
         {"sandbox_id": 1, "bundle_path": 2, "rootfs": 3, "options": 4, "netns_path": 5,
          "annotations": 6}),
        ("containerd.services.transfer.v1.TransferRequest",
         {"source": 1, "destination": 2, "options": 3}),
        ("containerd.types.transfer.ImageStore",
         {"name": 1, "labels": 2, "platforms": 3, "all_metadata": 4, "manifest_limit": 5,
          "extra_references": 6, "unpacks": 10}),
        ("containerd.types.transfer.RegistryResolver",
         {"auth_stream": 1, "headers": 2, "host_dir": 3, "default_scheme": 4, "http_debug": 5,
          "logs_stream": 6}),
        ("containerd.types.transfer.AuthResponse",
         {"authType": 1, "secret": 2, "username": 3, "expire_at": 4}),
        ("containerd.types.transfer.Progress",
         {"event": 1, "name": 2, "parents": 3, "progress": 4, "total": 5, "desc": 6}),
        ("containerd.services.leases.v1.CreateRequest", {"id": 1, "labels": 3}),
        ("containerd.services.introspection.v1.Plugin",
         {"type": 1, "id": 2, "requires": 3, "platforms": 4, "exports": 5, "capabilities": 6,
          "init_err": 7}),
        ("containerd.runc.v1.Options",
         {"no_pivot_root": 1, "no_new_keyring": 2, "shim_cgroup": 3, "io_uid": 4, "io_gid": 5,
          "binary_name": 6, "root": 7, "criu_path": 8, "systemd_cgroup": 9,
          "criu_image_path": 10, "criu_work_path": 11, "task_api_address": 12,
          "task_api_version": 13}),
        ("containerd.v1.types.ProcessInfo", {"pid": 1, "info": 2}),
        ("google.rpc.Status", {"code": 1, "message": 2, "details": 3}),
        ("io.containerd.cgroups.v2.Metrics",
         {"pids": 1, "cpu": 2, "memory": 4, "rdma": 5, "io": 6, "hugetlb": 7, "memory_events": 8,
          "network": 9}),
        ("io.containerd.cgroups.v2.CPUStat",
         {"usage_usec": 1, "user_usec": 2, "system_usec": 3, "nr_periods": 4, "nr_throttled": 5,
          "throttled_usec": 6, "psi": 7, "nr_bursts": 8, "burst_usec": 9}),
        ("io.containerd.cgroups.v1.Metrics",
         {"hugetlb": 1, "pids": 2, "cpu": 3, "memory": 4, "blkio": 5, "rdma": 6, "network": 7,
          "cgroup_stats": 8, "memory_oom_control": 9}),
        ("nri.pkg.api.v1alpha1.RegisterPluginRequest",
         {"plugin_name": 1, "plugin_idx": 2, "NRI_version": 3}),
        ("nri.pkg.api.v1alpha1.ConfigureRequest",
         {"config": 1, "runtime_name": 2, "runtime_version": 3, "registration_timeout": 4,
          "request_timeout": 5, "NRI_version": 6}),
        ("nri.pkg.api.v1alpha1.ConfigureResponse", {"events": 2}),
        ("nri.pkg.api.v1alpha1.SynchronizeRequest", {"pods": 1, "containers": 2, "more": 3}),
        ("nri.pkg.api.v1alpha1.CreateContainerResponse", {"adjust": 1, "update": 2, "evict": 3}),
        ("nri.pkg.api.v1alpha1.PodSandbox",
         {"id": 1, "name": 2, "uid": 3, "namespace": 4, "labels": 5, "annotations": 6,
          "runtime_handler": 7, "linux": 8, "pid": 9, "ips": 10}),
        ("nri.pkg.api.v1alpha1.ContainerAdjustment",
         {"annotations": 2, "mounts": 3, "env": 4, "hooks": 5, "linux": 6, "rlimits": 7,
          "CDI_devices": 8, "args": 9}),
        ("nri.pkg.api.v1alpha1.ContainerUpdate", {"container_id": 1, "linux": 2, "ignore_failure": 3}),
        ("nri.pkg.api.v1alpha1.LinuxIOPriority", {"class": 1, "priority": 2}),
    ],
)
def test_fields_match_containerd(full_name: str, expected: dict[str, int]) -> None:
    assert fields(full_name) == expected


def test_field_types() -> None:
    write = message("containerd.services.content.v1.WriteContentRequest")
    assert write.fields_by_name["data"].type == FieldDescriptor.TYPE_BYTES
    assert write.fields_by_name["offset"].type == FieldDescriptor.TYPE_INT64
    assert write.fields_by_name["action"].enum_type.full_name == (
        "containerd.services.content.v1.WriteAction"
    )
    envelope = message("containerd.types.Envelope")
    assert envelope.fields_by_name["timestamp"].message_type.full_name == "google.protobuf.Timestamp"
    assert envelope.fields_by_name["event"].message_type.full_name == "google.protobuf.Any"
    create = message("containerd.task.v2.CreateTaskRequest")
    assert create.fields_by_name["rootfs"].message_type.full_name == "containerd.types.Mount"
    assert create.fields_by_name["options"].message_type.full_name == "google.protobuf.Any"


def test_nri_container_fields() -> None:
    container = fields("nri.pkg.api.v1alpha1.Container")
    assert [container[n] for n in ("id", "state", "rlimits", "created_at", "CDI_devices", "user",
                                   "image")] == [1, 4, 13, 14, 20, 21, 22]
    assert len(container) == 22


def test_enums() -> None:
    pool = descriptor_pool.Default()
    message("containerd.v1.types.Process")

    def values(name: str) -> dict[str, int]:
        return {v.name: v.number for v in pool.FindEnumTypeByName(name).values}

    assert values("containerd.services.content.v1.WriteAction") == {"STAT": 0, "WRITE": 1, "COMMIT": 2}
    assert values("containerd.services.snapshots.v1.Kind") == {
        "UNKNOWN": 0, "VIEW": 1, "ACTIVE": 2, "COMMITTED": 3}
    assert values("containerd.v1.types.Status") == {
        "UNKNOWN": 0, "CREATED": 1, "RUNNING": 2, "STOPPED": 3, "PAUSED": 4, "PAUSING": 5}
    assert values("containerd.types.transfer.AuthType") == {
        "NONE": 0, "CREDENTIALS": 1, "REFRESH": 2, "HEADER": 3}
    events = values("nri.pkg.api.v1alpha1.Event")
    assert (events["RUN_POD_SANDBOX"], events["VALIDATE_CONTAINER_ADJUSTMENT"], events["LAST"]) == (
        1, 14, 15)
    assert values("nri.pkg.api.v1alpha1.Field")["MemoryPolicy"] == 40


SERVICES = {
    "containerd.services.content.v1.Content":
        "Info Update List Delete Read Status ListStatuses Write Abort",
    "containerd.services.snapshots.v1.Snapshots":
        "Prepare View Mounts Commit Remove Stat Update List Usage Cleanup",
    "containerd.services.diff.v1.Diff": "Apply Diff",
    "containerd.services.images.v1.Images": "Get List Create Update Delete",
    "containerd.services.containers.v1.Containers": "Get List ListStream Create Update Delete",
    "containerd.services.tasks.v1.Tasks":
        "Create Start Delete DeleteProcess Get List Kill Exec ResizePty CloseIO Pause Resume "
        "ListPids Checkpoint Update Metrics Wait",
    "containerd.services.events.v1.Events": "Publish Forward Subscribe",
    "containerd.services.events.ttrpc.v1.Events": "Forward",
    "containerd.services.namespaces.v1.Namespaces": "Get List Create Update Delete",
    "containerd.services.introspection.v1.Introspection": "Plugins Server PluginInfo",
    "containerd.services.version.v1.Version": "Version",
    "containerd.services.leases.v1.Leases":
        "Create Delete List AddResource DeleteResource ListResources",
    "containerd.services.transfer.v1.Transfer": "Transfer",
    "containerd.services.streaming.v1.Streaming": "Stream",
    "containerd.services.sandbox.v1.Store": "Create Update Delete List Get",
    "containerd.services.sandbox.v1.Controller":
        "Create Start Platform Stop Wait Status Shutdown Metrics Update",
    "containerd.task.v2.Task":
        "State Create Start Delete Pids Pause Resume Checkpoint Kill Exec ResizePty CloseIO "
        "Update Wait Stats Connect Shutdown",
    "containerd.task.v3.Task":
        "State Create Start Delete Pids Pause Resume Checkpoint Kill Exec ResizePty CloseIO "
        "Update Wait Stats Connect Shutdown",
    "containerd.runtime.sandbox.v1.Sandbox":
        "CreateSandbox StartSandbox Platform StopSandbox WaitSandbox SandboxStatus PingSandbox "
        "ShutdownSandbox SandboxMetrics",
    "nri.pkg.api.v1alpha1.Runtime": "RegisterPlugin UpdateContainers",
    "nri.pkg.api.v1alpha1.Plugin":
        "Configure Synchronize Shutdown RunPodSandbox UpdatePodSandbox PostUpdatePodSandbox "
        "StopPodSandbox RemovePodSandbox CreateContainer PostCreateContainer StartContainer "
        "PostStartContainer UpdateContainer PostUpdateContainer StopContainer RemoveContainer "
        "StateChange ValidateContainerAdjustment",
    "nri.pkg.api.v1alpha1.HostFunctions": "Log",
}


@pytest.mark.parametrize(("full_name", "methods"), sorted(SERVICES.items()))
def test_service_names(full_name: str, methods: str) -> None:
    message("containerd.types.Mount")  # loads every module
    service = descriptor_pool.Default().FindServiceByName(full_name)
    assert [m.name for m in service.methods] == methods.split()


def test_streaming_shapes() -> None:
    message("containerd.types.Mount")
    pool = descriptor_pool.Default()

    def shape(service: str, method: str) -> tuple[bool, bool]:
        m = pool.FindServiceByName(service).methods_by_name[method]
        return m.client_streaming, m.server_streaming

    assert shape("containerd.services.content.v1.Content", "Write") == (True, True)
    assert shape("containerd.services.content.v1.Content", "Read") == (False, True)
    assert shape("containerd.services.content.v1.Content", "List") == (False, True)
    assert shape("containerd.services.snapshots.v1.Snapshots", "List") == (False, True)
    assert shape("containerd.services.events.v1.Events", "Subscribe") == (False, True)
    assert shape("containerd.services.streaming.v1.Streaming", "Stream") == (True, True)
    assert shape("containerd.task.v2.Task", "Wait") == (False, False)


def test_event_type_urls_are_containerds() -> None:
    from moorage.api.containerd.events import image_pb2, task_pb2

    assert task_pb2.TaskExit.DESCRIPTOR.full_name == "containerd.events.TaskExit"
    # containerd declares image events in the images service package
    assert image_pb2.ImageCreate.DESCRIPTOR.full_name == "containerd.services.images.v1.ImageCreate"


def test_envelope_round_trip() -> None:
    from google.protobuf import any_pb2

    from moorage.api.containerd.events import task_pb2
    from moorage.api.containerd.types import event_pb2

    payload = any_pb2.Any(
        type_url="containerd.events.TaskStart",
        value=task_pb2.TaskStart(container_id="c1", pid=42).SerializeToString(),
    )
    env = event_pb2.Envelope(namespace="default", topic="/tasks/start", event=payload)
    env.timestamp.FromSeconds(1)
    decoded = event_pb2.Envelope.FromString(env.SerializeToString())
    start = task_pb2.TaskStart.FromString(decoded.event.value)
    assert (decoded.topic, start.container_id, start.pid) == ("/tasks/start", "c1", 42)


def test_ttrpc_stubs_where_the_plugin_exists() -> None:
    if not build.ttrpc_plugin_available():
        pytest.skip("ttrpc/codegen.py not present")
    stubs = {p.relative_to(API_DIR) for p in API_DIR.rglob("*_ttrpc.py")}
    with_services = {
        p.with_suffix("").with_name(p.stem + "_ttrpc.py")
        for p in build.proto_files()
        if "\nservice " in (API_DIR / p).read_text()
    }
    assert with_services <= stubs


# --- the generator itself ------------------------------------------------------------------


def test_stubs_parse() -> None:
    import ast

    for path in sorted(API_DIR.rglob("*.pyi")):
        ast.parse(path.read_text(), str(path))


def test_fix_stub_keywords() -> None:
    text = "class F:\n    None: _ClassVar[F]\n    Nonesuch: int\nNone: F\nclass_: int\n"
    assert build.fix_stub_keywords(text) == (
        "class F:\n    # keyword, use getattr(): None: _ClassVar[F]\n    Nonesuch: int\n"
        "# keyword, use getattr(): None: F\nclass_: int\n"
    )


def test_rewrite_imports() -> None:
    text = (
        "from containerd.types import mount_pb2 as m\n"
        "import containerd.types.task\n"
        "from google.protobuf import any_pb2\n"
        "from google.rpc import status_pb2\n"
        "from containerdx import y\n"
        "    from nri.pkg import api_pb2\n"
    )
    out = build.rewrite_imports(text, ["containerd", "google.rpc", "nri"])
    assert out == (
        "from moorage.api.containerd.types import mount_pb2 as m\n"
        "import moorage.api.containerd.types.task\n"
        "from google.protobuf import any_pb2\n"
        "from moorage.api.google.rpc import status_pb2\n"
        "from containerdx import y\n"
        "    from moorage.api.nri.pkg import api_pb2\n"
    )


def test_proto_roots_never_claim_the_protobuf_runtime() -> None:
    roots = build.proto_roots(
        [Path("containerd/types/mount.proto"), Path("google/rpc/status.proto"),
         Path("nri/pkg/api/api.proto"), Path("top.proto")]
    )
    assert roots == ["containerd", "google.rpc", "nri"]


def test_generate_and_check_a_small_tree(tmp_path: Path) -> None:
    (tmp_path / "containerd" / "x" / "v1").mkdir(parents=True)
    (tmp_path / "containerd" / "x" / "v1" / "a.proto").write_text(
        'syntax = "proto3";\npackage containerd.x.v1;\nmessage A { string s = 1; }\n'
    )
    (tmp_path / "containerd" / "x" / "v1" / "b.proto").write_text(
        'syntax = "proto3";\npackage containerd.x.v1;\nimport "containerd/x/v1/a.proto";\n'
        "message B { A a = 1; }\n"
    )
    expected = build.generate(tmp_path)
    names = {str(p) for p in expected}
    assert {"containerd/__init__.py", "containerd/x/__init__.py", "containerd/x/v1/__init__.py",
            "containerd/x/v1/a_pb2.py", "containerd/x/v1/a_pb2.pyi",
            "containerd/x/v1/b_pb2.py"} <= names
    assert b"from moorage.api.containerd.x.v1 import a_pb2" in expected[
        Path("containerd/x/v1/b_pb2.py")]
    assert build.generate(tmp_path) == expected  # deterministic

    assert {r for r, _ in build.stale(expected, build.committed_files(tmp_path))} == {"missing"}
    build.write(expected, tmp_path)
    assert build.stale(expected, build.committed_files(tmp_path)) == []

    (tmp_path / "containerd" / "x" / "v1" / "a_pb2.py").write_text("# edited\n")
    (tmp_path / "containerd" / "x" / "v1" / "gone_pb2.py").write_text("")
    problems = build.stale(build.generate(tmp_path), build.committed_files(tmp_path))
    assert problems == [
        ("differs", Path("containerd/x/v1/a_pb2.py")),
        ("extra", Path("containerd/x/v1/gone_pb2.py")),
    ]
    build.write(build.generate(tmp_path), tmp_path)
    assert not (tmp_path / "containerd" / "x" / "v1" / "gone_pb2.py").exists()
    assert build.stale(build.generate(tmp_path), build.committed_files(tmp_path)) == []



async def test_generated_stubs_serve_and_call_over_a_socket(tmp_path: Path) -> None:
    if not build.ttrpc_plugin_available():
        pytest.skip("ttrpc/codegen.py not present")
    from collections.abc import AsyncIterator

    from google.protobuf import empty_pb2
    from ttrpc.client import Client
    from ttrpc.server import Context, Server

    from moorage.api.containerd.services.content.v1 import content_pb2, content_ttrpc
    from moorage.api.containerd.services.version.v1 import version_pb2, version_ttrpc

    class Version(version_ttrpc.VersionServicer):
        async def Version(self, request: empty_pb2.Empty, ctx: Context) -> version_pb2.VersionResponse:
            return version_pb2.VersionResponse(version="v-test", revision="r")

    class Content(content_ttrpc.ContentServicer):
        async def List(
            self, request: content_pb2.ListContentRequest, ctx: Context
        ) -> AsyncIterator[content_pb2.ListContentResponse]:
            for f in request.filters:
                yield content_pb2.ListContentResponse(info=[content_pb2.Info(digest=f)])

    server = Server()
    server.register(Version())
    server.register(Content())
    path = str(tmp_path / "s.sock")
    await server.listen_unix(path)
    client = await Client.connect(path)
    try:
        got = await version_ttrpc.VersionClient(client).Version(empty_pb2.Empty(), timeout=5)
        assert (got.version, got.revision) == ("v-test", "r")
        listed = [
            r.info[0].digest
            async for r in content_ttrpc.ContentClient(client).List(
                content_pb2.ListContentRequest(filters=["a", "b"])
            )
        ]
        assert listed == ["a", "b"]
    finally:
        await client.close()
        server.close()
