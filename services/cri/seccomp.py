"""The ``RuntimeDefault`` seccomp profile: the syscalls Docker's and containerd's default
profile blocks, denied (EPERM) unless the container holds the capability that makes them
legitimate; everything else allowed.

This is a denylist, where containerd's profile is an allowlist: it blocks what Docker
documents as "significant syscalls blocked by the default profile" (kernel modules, kexec,
reboot, clock setting, namespace creation and mounts, keyrings, ptrace across processes,
BPF, perf, userfaultfd, obsolete calls), and ``clone`` with namespace flags; syscalls a
newer kernel adds are allowed. Names the kernel or libseccomp lacks on an architecture are
skipped by runc.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

# syscall -> the capability that allows it ("" = never allowed)
GATED: dict[str, str] = {
    "acct": "CAP_SYS_PACCT",
    "add_key": "",
    "bpf": "CAP_SYS_ADMIN",
    "clock_adjtime": "CAP_SYS_TIME",
    "clock_settime": "CAP_SYS_TIME",
    "create_module": "CAP_SYS_MODULE",
    "delete_module": "CAP_SYS_MODULE",
    "finit_module": "CAP_SYS_MODULE",
    "init_module": "CAP_SYS_MODULE",
    "get_kernel_syms": "",
    "get_mempolicy": "CAP_SYS_NICE",
    "mbind": "CAP_SYS_NICE",
    "move_pages": "CAP_SYS_NICE",
    "set_mempolicy": "CAP_SYS_NICE",
    "ioperm": "CAP_SYS_RAWIO",
    "iopl": "CAP_SYS_RAWIO",
    "kcmp": "CAP_SYS_PTRACE",
    "process_vm_readv": "CAP_SYS_PTRACE",
    "process_vm_writev": "CAP_SYS_PTRACE",
    "ptrace": "CAP_SYS_PTRACE",
    "kexec_file_load": "CAP_SYS_BOOT",
    "kexec_load": "CAP_SYS_BOOT",
    "reboot": "CAP_SYS_BOOT",
    "keyctl": "",
    "request_key": "",
    "lookup_dcookie": "CAP_SYS_ADMIN",
    "mount": "CAP_SYS_ADMIN",
    "umount": "CAP_SYS_ADMIN",
    "umount2": "CAP_SYS_ADMIN",
    "pivot_root": "CAP_SYS_ADMIN",
    "setns": "CAP_SYS_ADMIN",
    "unshare": "CAP_SYS_ADMIN",
    "quotactl": "CAP_SYS_ADMIN",
    "swapon": "CAP_SYS_ADMIN",
    "swapoff": "CAP_SYS_ADMIN",
    "fanotify_init": "CAP_SYS_ADMIN",
    "open_tree": "CAP_SYS_ADMIN",
    "move_mount": "CAP_SYS_ADMIN",
    "fsopen": "CAP_SYS_ADMIN",
    "fsconfig": "CAP_SYS_ADMIN",
    "fsmount": "CAP_SYS_ADMIN",
    "fspick": "CAP_SYS_ADMIN",
    "name_to_handle_at": "CAP_DAC_READ_SEARCH",
    "open_by_handle_at": "CAP_DAC_READ_SEARCH",
    "perf_event_open": "CAP_PERFMON",
    "nfsservctl": "",
    "query_module": "",
    "settimeofday": "CAP_SYS_TIME",
    "stime": "CAP_SYS_TIME",
    "sysfs": "",
    "_sysctl": "",
    "syslog": "CAP_SYSLOG",
    "uselib": "",
    "userfaultfd": "",
    "ustat": "",
    "vm86": "",
    "vm86old": "",
}
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET."""
EPERM, ENOSYS = 1, 38
_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def default_profile(capabilities: Iterable[str]) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` section for a container with these (bounding) capabilities."""
    caps = set(capabilities)
    denied = sorted(name for name, cap in GATED.items() if not cap or cap not in caps)
    if "CAP_SYS_ADMIN" in caps and "bpf" in denied:
        denied.remove("bpf")
    if "CAP_SYS_ADMIN" in caps and "perf_event_open" in denied:
        denied.remove("perf_event_open")
    rules: list[dict[str, Any]] = [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}]
    if "CAP_SYS_ADMIN" not in caps:
        index = 1 if platform.machine() == "s390x" else 0
        for flag in CLONE_NAMESPACE_FLAGS:
            rules.append({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                          "args": [{"index": index, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]})
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}
    arches = _ARCHES.get(platform.machine())
    if arches:
        profile["architectures"] = arches
    return profile
