"""Which OCI runtime binaries the runtime starts containers with (reliability.md §1e).

`<binary> --version` is read once per binary file (again when the file changes), parsed, and
checked against the container breakouts fixed upstream:

- **refused**: breakouts whose fixes every maintained branch and the distributions have
  shipped for years (runc CVE-2024-21626, GHSA-xr7r-f8xq-vfvv, fixed in 1.1.12; runc
  CVE-2021-30465; crun CVE-2019-18837). Tasks.Create fails FailedPrecondition, naming the
  binary, its version and the CVEs.
- **unpatched**: breakouts fixed upstream that distributions still ship without
  (runc CVE-2025-31133/52565/52881, fixed in 1.2.8, 1.3.3 and 1.4.0-rc.3; Debian 12's
  runc 1.1.5 lacks them). Refused only with `refuse_unpatched_runtimes`; otherwise the
  runtime logs a warning at start and keeps the note for operators (`notes`).

A distribution build can carry a fix its upstream version predates: `BACKPORTS` lists the
builds known to, by the build string the binary prints (Debian's runc prints its package
version as `commit: 1.1.5+ds1-1+deb12u1`). A binary whose output is not runc's or crun's
is not judged. Deliberately not listed: runc CVE-2026-41579 (low severity by its advisory).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from moorage.errdefs import FailedPrecondition

from .contract import AnyValue

RUNC_OPTIONS = "containerd.runc.v1.Options"
VERSION_TIMEOUT = 10.0


@dataclass(frozen=True)
class Advisory:
    cve: str
    runtime: str
    """"runc" or "crun": the first word of the binary's `--version` output."""
    fixed: tuple[str, ...]
    """The first fixed release of each maintained branch; a newer branch is fixed, an
    older one is not."""
    refused: bool
    """Always refused (else only under `refuse_unpatched_runtimes`)."""
    reference: str
    since: str = ""
    """The first affected release ("" = every release before the fix)."""


ADVISORIES: tuple[Advisory, ...] = (
    Advisory("CVE-2021-30465", "runc", ("1.0.0-rc95",), True,
             "https://github.com/opencontainers/runc/security/advisories/GHSA-c3xm-pvg7-gh7r"),
    Advisory("CVE-2024-21626", "runc", ("1.1.12",), True,
             "https://github.com/opencontainers/runc/security/advisories/GHSA-xr7r-f8xq-vfvv",
             since="1.0.0-rc93"),
    Advisory("CVE-2025-31133", "runc", ("1.2.8", "1.3.3", "1.4.0-rc.3"), False,
             "https://github.com/opencontainers/runc/security/advisories/GHSA-9493-h29p-rfm2"),
    Advisory("CVE-2025-52565", "runc", ("1.2.8", "1.3.3", "1.4.0-rc.3"), False,
             "https://github.com/opencontainers/runc/security/advisories/GHSA-qw9x-cqr3-wc7r",
             since="1.0.0-rc3"),
    Advisory("CVE-2025-52881", "runc", ("1.2.8", "1.3.3", "1.4.0-rc.3"), False,
             "https://github.com/opencontainers/runc/security/advisories/GHSA-cgrx-mc8f-2prm"),
    Advisory("CVE-2019-18837", "crun", ("0.10.5",), True,
             "https://github.com/advisories/GHSA-992m-xc3g-r7rj"),
    # /dev/console and /dev/null symlinks followed (crun 1.30); reachable only when /dev is
    # not a fresh mount, which moorage's specs always give (a client's own spec may not)
    Advisory("CVE-2026-88264", "crun", ("1.30",), False,
             "https://github.com/containers/crun/releases/tag/1.30"),
    Advisory("CVE-2026-88265", "crun", ("1.30",), False,
             "https://github.com/containers/crun/releases/tag/1.30"),
)

# (runtime, build string up to the distro update number) -> (first update carrying the
# fixes, the CVEs). Debian stable updates of one package version are cumulative, so every
# later `+deb12uN` keeps them. Source: runc's /usr/share/doc/runc/changelog.Debian.gz,
# "runc (1.1.5+ds1-1+deb12u1) bookworm-security; * CVE-2024-21626".
BACKPORTS: dict[tuple[str, str], tuple[int, frozenset[str]]] = {
    ("runc", "1.1.5+ds1-1+deb12u"): (1, frozenset({"CVE-2024-21626"})),
}

_VERSION = re.compile(r"^(?P<name>[a-z][\w-]*) version (?P<version>\S+)", re.M)
_COMMIT = re.compile(r"^commit: (?P<commit>\S+)", re.M)
_RELEASE = re.compile(r"^v?(?P<nums>\d+(?:\.\d+)*)(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+\S*)?$")
_DEBIAN_BUILD = re.compile(r"^(?P<base>.+\+deb\d+u)(?P<update>\d+)$")


@dataclass(frozen=True, order=True)
class Release:
    """A release number ordered as runc's and crun's tags: 1.4.0-rc.3 < 1.4.0 < 1.30."""

    nums: tuple[int, ...]
    final: bool
    pre: tuple[int, ...]

    @property
    def branch(self) -> tuple[int, ...]:
        return self.nums[:2]

    @classmethod
    def parse(cls, text: str) -> Release | None:
        m = _RELEASE.match(text)
        if m is None:
            return None
        nums = tuple(int(n) for n in m["nums"].split("."))
        nums = (nums + (0, 0, 0))[:max(3, len(nums))]
        pre = m["pre"]
        return cls(nums, pre is None, tuple(int(n) for n in re.findall(r"\d+", pre or "")))


def fixed_by(release: Release, fixes: Sequence[str]) -> bool:
    """Whether ``release`` carries a fix first released as ``fixes`` (one per branch)."""
    parsed = [f for f in (Release.parse(x) for x in fixes) if f is not None]
    for fix in parsed:
        if fix.branch == release.branch:
            return release >= fix
    return release.branch > max(f.branch for f in parsed)


@dataclass(frozen=True)
class Verdict:
    binary: str
    runtime: str
    """"runc", "crun", or "" when the output was not understood (nothing is judged)."""
    version: str
    """As printed, with the build string when it is not the bare version."""
    refused: tuple[Advisory, ...] = ()
    unpatched: tuple[Advisory, ...] = ()
    backported: tuple[str, ...] = ()

    def refusal(self, refuse_unpatched: bool) -> str:
        """Why Tasks.Create must fail ("" = allowed)."""
        found = self.refused + (self.unpatched if refuse_unpatched else ())
        if not found:
            return ""
        return (f"{self.binary} ({self.runtime} {self.version}) is vulnerable to container "
                f"breakouts {_cves(found)}; upgrade it"
                + ("" if self.refused else " (or set refuse_unpatched_runtimes = false in "
                   "[runtime])"))

    def note(self) -> str:
        """The warning an allowed but unpatched binary gets ("" = none)."""
        if not self.unpatched:
            return ""
        return (f"{self.binary} ({self.runtime} {self.version}) lacks the upstream fixes for "
                f"container breakouts {_cves(self.unpatched)}")


def _cves(advisories: Sequence[Advisory]) -> str:
    """`CVE-a, CVE-b (fixed in runc 1.2.8 / 1.3.3)`, one group per set of fixed releases."""
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for a in advisories:
        groups.setdefault((a.runtime, a.fixed), []).append(a.cve)
    return "; ".join(f"{', '.join(cves)} (fixed in {name} {' / '.join(fixed)})"
                     for (name, fixed), cves in groups.items())


def judge(binary: str, output: str) -> Verdict:
    """The verdict on the `--version` ``output`` of ``binary``."""
    m = _VERSION.search(output)
    release = Release.parse(m["version"]) if m else None
    if m is None or release is None or m["name"] not in {a.runtime for a in ADVISORIES}:
        return Verdict(binary, "", output.strip().splitlines()[0] if output.strip() else "")
    name, version = m["name"], m["version"]
    c = _COMMIT.search(output)
    commit = c["commit"] if c else ""
    shown = f"{version}, build {commit}" if commit.startswith(version + "-") else version
    backported = _backported(name, version, commit)
    refused: list[Advisory] = []
    unpatched: list[Advisory] = []
    for a in ADVISORIES:
        if a.runtime != name or a.cve in backported or fixed_by(release, a.fixed):
            continue
        since = Release.parse(a.since) if a.since else None
        if since is not None and release < since:
            continue
        (refused if a.refused else unpatched).append(a)
    return Verdict(binary, name, shown, tuple(refused), tuple(unpatched),
                   tuple(sorted(backported)))


def _backported(name: str, version: str, commit: str) -> frozenset[str]:
    m = _DEBIAN_BUILD.match(commit)
    if m is None or not commit.startswith(version + "-"):
        return frozenset()
    known = BACKPORTS.get((name, m["base"]))
    if known is None or int(m["update"]) < known[0]:
        return frozenset()
    return known[1]


def oci_binary(runtime: str, options: AnyValue | None) -> str | None:
    """The OCI runtime a runc-style shim runs for a task (None: not a runc-style shim)."""
    if not (runtime.startswith("io.containerd.runc.") or "runc" in os.path.basename(runtime)):
        return None
    if options is not None and options.type_url.rsplit("/", 1)[-1] == RUNC_OPTIONS:
        from moorage.api.containerd.types.runc.options import oci_pb2

        opts = oci_pb2.Options()
        try:
            opts.ParseFromString(options.value)
        except Exception:
            return "runc"  # the task manager refuses the options itself
        return opts.binary_name or "runc"
    return "runc"


def resolve(binary: str, search_path: str | None = None) -> str | None:
    """``binary`` as the shim finds it: absolute as is, else the first on the PATH."""
    if os.path.isabs(binary) or "/" in binary:
        return os.path.abspath(binary) if os.path.isfile(binary) else None
    path = os.environ.get("PATH", os.defpath) if search_path is None else search_path
    for folder in path.split(os.pathsep):
        found = os.path.join(folder or ".", binary)
        if os.path.isfile(found) and os.access(found, os.X_OK):
            return found
    return None


class RuntimePolicy:
    """The verdicts on the binaries in use, one `--version` run per binary file."""

    def __init__(self, logger: logging.Logger, *, refuse_unpatched: bool = False,
                 search_path: str | None = None) -> None:
        self.log = logger
        self.refuse_unpatched = refuse_unpatched
        self.search_path = search_path
        self._verdicts: dict[str, tuple[tuple[int, int, int, int], asyncio.Task[Verdict]]] = {}

    async def verdict(self, binary: str) -> Verdict | None:
        """The verdict on ``binary`` (None when it is not installed: the shim says so)."""
        path = resolve(binary, self.search_path)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        known = self._verdicts.get(path)
        if known is None or known[0] != key:
            # a task of its own: a caller that goes away does not cancel it for the others
            known = (key, asyncio.get_running_loop().create_task(self._probe(path)))
            self._verdicts[path] = known
        try:
            return await asyncio.shield(known[1])
        except Exception:
            if self._verdicts.get(path) is known:
                del self._verdicts[path]
            raise

    async def _probe(self, path: str) -> Verdict:
        return self._report(judge(path, await _version_output(path)))

    async def check(self, binary: str) -> None:
        """Raise FailedPrecondition when ``binary`` must not start containers."""
        v = await self.verdict(binary)
        if v is not None:
            why = v.refusal(self.refuse_unpatched)
            if why:
                raise FailedPrecondition(why)

    def close(self) -> None:
        """Cancel the probes still running (their ``--version`` processes are killed)."""
        for _, t in self._verdicts.values():
            t.cancel()

    def notes(self) -> list[str]:
        """The warnings of the binaries judged so far (for health and introspection)."""
        out = []
        for _, t in self._verdicts.values():
            if t.done() and not t.cancelled() and t.exception() is None:
                v = t.result()
                if v.note() and not v.refusal(self.refuse_unpatched):
                    out.append(v.note())
        return out

    def _report(self, v: Verdict) -> Verdict:
        if not v.runtime:
            self.log.info("OCI runtime %s: version not recognised (%r), not judged",
                          v.binary, v.version)
        elif v.refusal(self.refuse_unpatched):
            self.log.error("OCI runtime %s: tasks refused: %s", v.binary,
                           v.refusal(self.refuse_unpatched))
        elif v.note():
            self.log.warning("OCI runtime %s: %s; set refuse_unpatched_runtimes = true in "
                             "[runtime] to refuse it", v.binary, v.note())
        return v


async def _version_output(path: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            path, "--version", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return ""
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), VERSION_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return ""
    except asyncio.CancelledError:
        proc.kill()
        raise
    return out.decode(errors="replace")
