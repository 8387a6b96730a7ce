"""A real registry for tests: Debian's docker-registry on loopback, in four flavours.

`start_registry(workdir, variant)` runs `docker-registry serve` with a temp storage dir on a
free loopback port and returns once GET /v2/ answers (a bounded readiness probe):

- ``plain``: HTTP, anonymous.
- ``tls``:   HTTPS with a certificate signed by a test CA (`Registry.ca`).
- ``basic``: HTTPS + htpasswd basic auth (`Registry.username` / `password`).
- ``mtls``:  HTTPS requiring a client certificate signed by the test CA (`TestCA.client_pair`).
- ``token``: HTTPS + Bearer token auth, tokens issued by `TokenServer` (ours, below): the
  registry trusts a self-signed signing certificate; the token server checks basic
  credentials and signs RS256 JWTs with openssl.

Images: `build_image(workdir, layers)` builds an OCI layout from busybox-static with umoci
(one layer per entry in `layers`), `push(layout, registry, ref)` copies it with skopeo.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
USER = "moor"
PASSWORD = "s3cret-pa55"
SERVICE = "moorage-test-registry"
REFRESH_TOKEN = "moorage-refresh-token-0123"
ISSUER = "moorage-test-issuer"
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: Sequence[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), check=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


@dataclass
class TestCA:
    """A CA plus one server certificate for 127.0.0.1/localhost."""

    dir: Path
    ca: Path
    cert: Path
    key: Path

    __test__ = False

    @classmethod
    def create(cls, d: Path, name: str = "ca") -> TestCA:
        d.mkdir(parents=True, exist_ok=True)
        ca_key, ca = d / f"{name}.key", d / f"{name}.crt"
        _run(["openssl", "req", "-x509", *EC, "-nodes", "-days", "2",
              "-keyout", ca_key, "-out", ca, "-subj", f"/CN=moorage test {name}",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        key, csr, cert = d / "server.key", d / "server.csr", d / "server.crt"
        _run(["openssl", "req", *EC, "-nodes", "-keyout", key, "-out", csr,
              "-subj", "/CN=127.0.0.1"])
        ext = d / "server.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n")
        _run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
              "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext])
        return cls(d, ca, cert, key)

    def client_pair(self, name: str = "client") -> tuple[Path, Path]:
        key, csr, cert = self.dir / f"{name}.key", self.dir / f"{name}.csr", self.dir / f"{name}.cert"
        _run(["openssl", "req", *EC, "-nodes", "-keyout", key, "-out", csr,
              "-subj", f"/CN={name}"])
        ext = self.dir / f"{name}.ext"
        ext.write_text("extendedKeyUsage=clientAuth\n")
        _run(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey",
              self.dir / "ca.key", "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext])
        return cert, key


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TokenServer:
    """A tiny Bearer token endpoint (docker token protocol) for the ``token`` variant.

    GET /token?service=..&scope=repository:NAME:ACTIONS with basic credentials -> JWT
    granting the asked actions; anonymous -> pull only; wrong credentials -> 401.
    Records every request's Authorization header in `seen_auth`.
    """

    def __init__(self, d: Path, ca: TestCA) -> None:
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.key = d / "signing.key"
        self.cert = d / "signing.crt"
        _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
              "-keyout", self.key, "-out", self.cert, "-subj", "/CN=moorage token signer"])
        der = _run(["openssl", "x509", "-in", self.cert, "-outform", "DER"]).stdout
        self.x5c = base64.b64encode(der).decode()
        self.seen_auth: list[str | None] = []
        self.anonymous_pull = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit
                q = parse_qs(urlsplit(self.path).query)
                auth = self.headers.get("Authorization")
                server.seen_auth.append(auth)
                user = None
                if auth:
                    want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                    if auth != want:
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = USER
                access = []
                for scope in q.get("scope", []):
                    for s in scope.split(" "):
                        kind, _, rest = s.partition(":")
                        name, _, actions = rest.rpartition(":")
                        acts = actions.split(",") if user else [a for a in actions.split(",") if a == "pull"]
                        if not user and not server.anonymous_pull:
                            acts = []
                        access.append({"type": kind, "name": name, "actions": acts})
                body = json.dumps({"token": server.sign(user or "", access),
                                   "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # OAuth2 refresh-token grant
                from urllib.parse import parse_qs
                n = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(n).decode())
                server.seen_auth.append("refresh")
                if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [REFRESH_TOKEN]:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                access = []
                for scope in form.get("scope", []):
                    for sc in scope.split(" "):
                        kind, _, rest = sc.partition(":")
                        name, _, actions = rest.rpartition(":")
                        access.append({"type": kind, "name": name, "actions": actions.split(",")})
                body = json.dumps({"access_token": server.sign(USER, access), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.cert, ca.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.realm = f"https://127.0.0.1:{self.port}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, sub: str, access: list[dict[str, object]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": sub, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        sig = _run(["openssl", "dgst", "-sha256", "-sign", self.key],
                   input=signing_input.encode()).stdout
        return signing_input + "." + _b64url(sig)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Registry:
    """A running docker-registry. `host` is what goes in references (127.0.0.1:PORT)."""

    variant: str
    host: str
    scheme: str
    storage: Path
    proc: subprocess.Popen[bytes]
    ca: TestCA | None = None
    token: TokenServer | None = None
    username: str | None = None
    password: str | None = None
    log: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.ca) if self.ca else None)
        if "client" in self.extra:
            cert, key = self.extra["client"]  # type: ignore[misc]
            ctx.load_cert_chain(cert, key)
        return ctx

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.token:
            self.token.stop()

    def skopeo_flags(self, direction: str) -> list[str]:
        """skopeo options for `--src-*` / `--dest-*` talking to this registry."""
        p = f"--{direction}-"
        flags: list[str] = []
        if self.scheme == "http":
            flags.append(p + "tls-verify=false")
        elif self.ca:
            certdir = self.ca.dir / "skopeo-certs"
            certdir.mkdir(exist_ok=True)
            shutil.copy(self.ca.ca, certdir / "ca.crt")
            if self.variant == "mtls" and not (certdir / "client.cert").exists():
                cert, key = self.ca.client_pair("skopeo")
                shutil.copy(cert, certdir / "client.cert")
                shutil.copy(key, certdir / "client.key")
            flags.append(p + f"cert-dir={certdir}")
        if self.username:
            flags.append(p + f"creds={self.username}:{self.password}")
        return flags


def start_registry(workdir: Path, variant: str = "plain") -> Registry:
    """Start docker-registry in `workdir` as ``plain``, ``tls``, ``basic`` or ``token``."""
    if variant not in ("plain", "tls", "basic", "token", "mtls"):
        raise ValueError(variant)
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    cfg: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": os.urandom(16).hex(),
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    ca = token = None
    username = password = None
    scheme = "http"
    if variant != "plain":
        ca = TestCA.create(workdir / "pki")
        cfg["http"]["tls"] = {"certificate": str(ca.cert), "key": str(ca.key)}  # type: ignore[index]
        if variant == "mtls":  # client certificates signed by the test CA required
            cfg["http"]["tls"]["clientcas"] = [str(ca.ca)]  # type: ignore[index]
        scheme = "https"
    if variant == "basic":
        htp = workdir / "htpasswd"
        htp.write_bytes(_run(["htpasswd", "-Bbn", USER, PASSWORD]).stdout)
        cfg["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(htp)}}
        username, password = USER, PASSWORD
    if variant == "token":
        assert ca is not None
        token = TokenServer(workdir / "token", ca)
        cfg["auth"] = {"token": {"realm": token.realm, "service": SERVICE, "issuer": ISSUER,
                                 "rootcertbundle": str(token.cert)}}
        username, password = USER, PASSWORD
    conf = workdir / "config.json"  # YAML is a superset of JSON
    conf.write_text(json.dumps(cfg))
    log = workdir / "registry.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(conf)], stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    reg = Registry(variant, f"127.0.0.1:{port}", scheme, storage, proc, ca, token,
                   username, password, log)
    if variant == "mtls":
        assert ca is not None
        reg.extra["client"] = ca.client_pair("probe")
    try:
        _wait_ready(reg)
    except BaseException:
        reg.stop()
        raise
    return reg


def _wait_ready(reg: Registry, attempts: int = 200) -> None:
    """Readiness probe: GET /v2/ until the registry answers (200 or 401), bounded."""
    ctx = reg.ssl_context() if reg.scheme == "https" else None
    last: Exception | None = None
    for _ in range(attempts):
        if reg.proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {reg.log.read_text() if reg.log else ''}")
        try:
            urllib.request.urlopen(f"{reg.url}/v2/", timeout=2, context=ctx)
            return
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return
            last = e
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"registry not ready: {last}")


# ---- images --------------------------------------------------------------------------------

BUSYBOX = Path("/bin/busybox")


def build_image(workdir: Path, layers: Sequence[dict[str, bytes]] | None = None,
                tag: str = "latest", cmd: str = "/bin/sh") -> Path:
    """Build an OCI layout at workdir/layout with umoci: busybox-static in the first layer,
    then one layer per mapping {path: bytes} of `layers`. Returns the layout dir."""
    layout = workdir / "layout"
    bundle = workdir / "bundle"
    if layout.exists():
        shutil.rmtree(layout)
    _run(["umoci", "init", "--layout", layout])
    ref = f"{layout}:{tag}"
    _run(["umoci", "new", "--image", ref])
    _run(["umoci", "config", "--image", ref, "--config.cmd", cmd, "--os", "linux",
          "--architecture", "amd64"])
    first: dict[str, bytes] = {}
    all_layers = [first, *(layers or [{"etc/moorage-layer": b"1\n"}])]
    for i, files in enumerate(all_layers):
        if bundle.exists():
            shutil.rmtree(bundle)
        _run(["umoci", "unpack", "--image", ref, bundle])
        rootfs = bundle / "rootfs"
        if i == 0:
            (rootfs / "bin").mkdir(parents=True, exist_ok=True)
            shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
            os.symlink("busybox", rootfs / "bin" / "sh")
        for rel, data in files.items():
            p = rootfs / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        _run(["umoci", "repack", "--image", ref, bundle])
    shutil.rmtree(bundle)
    _run(["umoci", "gc", "--layout", layout])
    return layout


def push(layout: Path, reg: Registry, repo: str, tag: str = "latest",
         src_tag: str = "latest", fmt: str | None = None) -> str:
    """skopeo copy the layout to reg/repo:tag; returns the reference. `fmt` may be
    ``v2s2`` to convert to Docker schema 2."""
    ref = f"{reg.host}/{repo}:{tag}"
    args = ["skopeo", "copy", "--quiet", *reg.skopeo_flags("dest")]
    if fmt:
        args += ["--format", fmt]
    _run([*args, f"oci:{layout}:{src_tag}", f"docker://{ref}"])
    return ref


def skopeo_inspect(ref: str, reg: Registry, raw: bool = False) -> dict[str, object]:
    args = ["skopeo", "inspect", *reg.skopeo_flags("src").__iter__()]
    args = [a.replace("--src-", "--") for a in args]
    if raw:
        args.append("--raw")
    return json.loads(_run([*args, f"docker://{ref}"]).stdout)  # type: ignore[no-any-return]


@contextlib.contextmanager
def running(workdir: Path, variant: str) -> Iterator[Registry]:
    reg = start_registry(workdir, variant)
    try:
        yield reg
    finally:
        reg.stop()


def add_multiarch(layout: Path, src_tag: str = "latest", tag: str = "multi",
                  arches: Sequence[str] = ("amd64", "arm64")) -> str:
    """Add to `layout` an image index tagged `tag` with one manifest per arch (same layers,
    a config per arch). Returns the index digest."""
    import hashlib

    def put(data: bytes) -> dict[str, object]:
        d = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / d).write_bytes(data)
        return {"digest": f"sha256:{d}", "size": len(data)}

    index = json.loads((layout / "index.json").read_text())
    src = next(m for m in index["manifests"]
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == src_tag)
    manifest = json.loads((layout / "blobs" / "sha256" / src["digest"][7:]).read_bytes())
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())
    entries = []
    for arch in arches:
        cfg = dict(config, architecture=arch)
        m = dict(manifest, config={"mediaType": manifest["config"]["mediaType"], **put(json.dumps(cfg).encode())})
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", **put(json.dumps(m).encode()),
                        "platform": {"os": "linux", "architecture": arch}})
    idx = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                          "manifests": entries}).encode())
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", **idx,
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    (layout / "index.json").write_text(json.dumps(index))
    return str(idx["digest"])


def push_all(layout: Path, reg: Registry, repo: str, tag: str) -> str:
    ref = f"{reg.host}/{repo}:{tag}"
    _run(["skopeo", "copy", "--quiet", "--all", *reg.skopeo_flags("dest"), f"oci:{layout}:{tag}", f"docker://{ref}"])
    return ref
