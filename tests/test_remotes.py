"""The registry client (ctrd.remotes): references, auth, hosts.toml, resolve/fetch/push against
a real docker-registry and against small fake servers (stalls, 401 loops, token realms)."""

from __future__ import annotations

import pytest

from ctrd.errdefs import InvalidArgument
from ctrd.remotes import reference
from ctrd.remotes.reference import Reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("ref, want", [
    ("busybox", Reference("docker.io", "library/busybox", "latest")),
    ("busybox:1.36", Reference("docker.io", "library/busybox", "1.36")),
    ("docker.io/busybox", Reference("docker.io", "library/busybox", "latest")),
    ("index.docker.io/library/busybox", Reference("docker.io", "library/busybox", "latest")),
    ("user/app", Reference("docker.io", "user/app", "latest")),
    ("a/b/c:t", Reference("docker.io", "a/b/c", "t")),
    ("localhost/app", Reference("localhost", "app", "latest")),
    ("localhost:5000/a/b:v1", Reference("localhost:5000", "a/b", "v1")),
    ("127.0.0.1:5000/x", Reference("127.0.0.1:5000", "x", "latest")),
    ("registry.example.com/ns/app@" + D, Reference("registry.example.com", "ns/app", "", D)),
    ("registry.example.com/ns/app:v2@" + D,
     Reference("registry.example.com", "ns/app", "v2", D)),
    ("Example/app", Reference("Example", "app", "latest")),
    ("[::1]:5000/app", Reference("[::1]:5000", "app", "latest")),
    ("a__b/c-d--e.f_g:T_1.x-", Reference("docker.io", "a__b/c-d--e.f_g", "T_1.x-")),
])
def test_parse_reference(ref, want):
    assert reference.parse(ref) == want


@pytest.mark.parametrize("ref, why", [
    ("", "empty reference"),
    ("foo/Bar", "must be lowercase"),
    ("UPPER", "must be lowercase"),
    ("a b", "whitespace"),
    ("busybox:", "invalid tag"),
    ("busybox:-x", "invalid tag"),
    ("busybox:" + "t" * 129, "invalid tag"),
    ("busybox@sha256:abc", "invalid digest"),
    ("busybox@sha256:" + "A" * 64, "lowercase hex"),
    ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("busybox@sha256:" + "a" * 63, "expected 64"),
    ("a" * 64, "64-byte hexadecimal"),
    ("host.com/a//b", "path component ''"),
    ("host.com/-a", "path component '-a'"),
    ("-bad.com/a", "invalid registry host"),
    ("host.com:port/a", "invalid registry host"),
    (":tag", "missing repository"),
    ("x.io/" + "a" * 260, "longer than 255"),
])
def test_parse_reference_errors(ref, why):
    with pytest.raises(InvalidArgument, match="invalid reference") as e:
        reference.parse(ref)
    assert why in str(e.value)


def test_reference_forms():
    r = reference.parse("localhost:5000/a/b:v1@" + D)
    assert r.locator == "localhost:5000/a/b"
    assert r.object == "v1@" + D
    assert str(r) == "localhost:5000/a/b:v1@" + D
    assert str(reference.parse("busybox")) == "docker.io/library/busybox:latest"
    assert reference.familiar(reference.parse("busybox")) == "busybox:latest"
    assert reference.familiar(reference.parse("user/app:x")) == "user/app:x"


# --- auth -----------------------------------------------------------------------------------

from ctrd.remotes import auth  # noqa: E402
from ctrd.remotes.auth import Challenge, Credentials, Unauthorized  # noqa: E402


@pytest.mark.parametrize("values, want", [
    (['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
      'scope="repository:library/busybox:pull"'],
     [Challenge("bearer", {"realm": "https://auth.docker.io/token",
                           "service": "registry.docker.io",
                           "scope": "repository:library/busybox:pull"})]),
    (['Basic realm="Registry Realm"'], [Challenge("basic", {"realm": "Registry Realm"})]),
    (['basic'], [Challenge("basic", {})]),
    (['Basic realm="a", Bearer realm="https://t/x", service=reg'],
     [Challenge("basic", {"realm": "a"}), Challenge("bearer", {"realm": "https://t/x",
                                                               "service": "reg"})]),
    (['Basic realm="a"', 'BEARER Realm="r\\"q"'],
     [Challenge("basic", {"realm": "a"}), Challenge("bearer", {"realm": 'r"q'})]),
    (['Bearer realm="https://t",error="insufficient_scope"'],
     [Challenge("bearer", {"realm": "https://t", "error": "insufficient_scope"})]),
    (['Negotiate abc123=='], [Challenge("negotiate", {"": "abc123=="})]),
])
def test_parse_challenges(values, want):
    assert auth.parse_challenges(values) == want


@pytest.mark.parametrize("value", ['Bearer realm="unterminated', 'Bearer realm=<x>', '"x"'])
def test_parse_challenges_garbage(value):
    with pytest.raises(InvalidArgument, match="WWW-Authenticate"):
        auth.parse_challenges([value])


def test_docker_config(tmp_path):
    import base64
    import json
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw:with:colons").decode()},
        "r.example:5000": {"username": "u", "password": "p"},
        "https://other.example/v2/": {"identitytoken": "idt"},
        "empty.example": {},
    }, "credsStore": "desktop"}))
    got = auth.load_docker_config(cfg)
    assert got == {"docker.io": Credentials("hub", "pw:with:colons"),
                   "r.example:5000": Credentials("u", "p"),
                   "other.example": Credentials("", "", "idt")}
    assert "pw" not in repr(got["docker.io"])
    assert auth.load_docker_config(tmp_path / "missing.json") == {}


@pytest.mark.parametrize("text, why", [
    ("{", "config.json"),
    ("[]", "JSON object"),
    ('{"auths": []}', "'auths' must be an object"),
    ('{"auths": {"h": {"auth": "***"}}}', "not valid base64"),
    ('{"auths": {"h": {"auth": "dXNlcg=="}}}', "username:password"),
    ('{"auths": {"h": {"username": 1}}}', "must be strings"),
])
def test_docker_config_hostile(tmp_path, text, why):
    cfg = tmp_path / "config.json"
    cfg.write_text(text)
    with pytest.raises(InvalidArgument, match="docker config") as e:
        auth.load_docker_config(cfg)
    assert why in str(e.value) and str(cfg) in str(e.value)


def test_token_request_and_credential_policy():
    c = Challenge("bearer", {"realm": "https://auth.example/token", "service": "reg"})
    creds = Credentials("u", "p")
    r = auth.token_request(c, ["repository:a/b:pull"], "reg.example", creds)
    assert r.method == "GET"
    assert r.url == ("https://auth.example/token?service=reg&scope=repository%3Aa%2Fb%3Apull")
    assert r.headers == {"Authorization": creds.basic()}
    # A plain-http realm on another host never gets the credentials...
    c2 = Challenge("bearer", {"realm": "http://auth.example/token"})
    assert auth.token_request(c2, [], "reg.example", creds).headers == {}
    # ...the registry's own host does, even over http.
    c3 = Challenge("bearer", {"realm": "http://reg.example:5000/token"})
    assert auth.token_request(c3, [], "reg.example:5000", creds).headers["Authorization"]
    r = auth.token_request(c, [], "reg.example", Credentials("", "", "idt"))
    assert r.method == "POST" and b"refresh_token=idt" in r.body
    with pytest.raises(InvalidArgument, match="realm"):
        auth.token_request(Challenge("bearer", {"realm": "file:///etc/passwd"}), [], "h", None)


def test_parse_token_response():
    assert auth.parse_token_response(b'{"token": "t", "expires_in": 300}', now=10) == \
        auth.Token("t", 310)
    assert auth.parse_token_response(b'{"access_token": "a"}', now=0) == auth.Token("a", 60)
    for bad in (b"nope", b"[]", b'{"token": ""}'):
        with pytest.raises(Unauthorized):
            auth.parse_token_response(bad)


def test_authorizer_caches_tokens_per_scope():
    calls = []

    def fetch(req):
        calls.append(req)
        return 200, b'{"token": "tok%d"}' % len(calls)

    a = auth.Authorizer({"reg": Credentials("u", "p")}, fetch)
    assert a.authorize("reg", ["s1"]) is None
    a.challenged("reg", ['Bearer realm="https://auth/t",service="reg"'])
    assert a.authorize("reg", ["s1"]) == "Bearer tok1"
    assert a.authorize("reg", ["s1"]) == "Bearer tok1"
    assert a.authorize("reg", ["s2"]) == "Bearer tok2"
    assert len(calls) == 2
    with pytest.raises(Unauthorized, match="no credentials"):
        a.challenged("other", ['Basic realm="x"'])
    with pytest.raises(Unauthorized, match="no supported"):
        a.challenged("other", ['Negotiate'])
    a2 = auth.Authorizer({}, lambda req: (401, b"denied"))
    a2.challenged("reg", ['Bearer realm="https://auth/t"'])
    with pytest.raises(Unauthorized, match="HTTP 401: denied"):
        a2.authorize("reg", [])


# --- hosts.toml -----------------------------------------------------------------------------

from ctrd.remotes import hosts  # noqa: E402
from ctrd.remotes.hosts import Endpoint  # noqa: E402


def test_default_hosts():
    assert hosts.registry_hosts("docker.io") == [Endpoint("https", "registry-1.docker.io")]
    assert hosts.registry_hosts("r.example") == [Endpoint("https", "r.example")]
    assert hosts.registry_hosts("r.example", default_scheme="http") == [
        Endpoint("http", "r.example")]
    assert hosts.registry_hosts("127.0.0.1:5000") == [
        Endpoint("http", "127.0.0.1:5000", skip_verify=True)]
    assert hosts.registry_hosts("localhost")[0].plain_http
    assert hosts.registry_hosts("[::1]:5000")[0].plain_http
    assert hosts.registry_hosts("r.example")[0].base_url == "https://r.example/v2"


def write_hosts(root, dirname, text):
    d = root / dirname
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(text)
    return d


def test_hosts_toml_mirrors_in_file_order(tmp_path):
    d = write_hosts(tmp_path, "docker.io", '''
server = "https://registry-1.docker.io"
[host."https://mirror-b.example"]
  capabilities = ["pull", "resolve"]
  ca = "ca.crt"
[host."http://mirror-a.example:5000/prefix"]
  capabilities = ["pull"]
  skip_verify = true
  header = {X-A = "1", X-B = ["2", "3"]}
  client = [["c.crt", "/abs/c.key"]]
[host."https://mirror-c.example/custom"]
  override_path = true
''')
    eps = hosts.registry_hosts("docker.io", str(tmp_path))
    assert [e.base_url for e in eps] == [
        "https://mirror-b.example/v2", "http://mirror-a.example:5000/prefix/v2",
        "https://mirror-c.example/custom", "https://registry-1.docker.io/v2"]
    b, a, c, server = eps
    assert b.capabilities == {"pull", "resolve"} and b.ca == (str(d / "ca.crt"),)
    assert a.capabilities == {"pull"} and a.skip_verify and a.plain_http
    assert a.header == (("X-A", ("1",)), ("X-B", ("2", "3")))
    assert a.client == ((str(d / "c.crt"), "/abs/c.key"),)
    assert server.capabilities == {"pull", "resolve", "push"}


def test_hosts_dir_lookup_and_default(tmp_path):
    write_hosts(tmp_path, "r.example_5000_", '[host."https://m.example"]\n')
    write_hosts(tmp_path, "_default", 'server = "https://fallback.example"\n')
    assert [e.base_url for e in hosts.registry_hosts("r.example:5000", str(tmp_path))] == [
        "https://m.example/v2", "https://r.example:5000/v2"]
    assert [e.base_url for e in hosts.registry_hosts("other.example", str(tmp_path))] == [
        "https://fallback.example/v2"]
    # A directory without hosts.toml is the default endpoint.
    (tmp_path / "plain.example").mkdir()
    assert hosts.registry_hosts("plain.example", str(tmp_path)) == [
        Endpoint("https", "plain.example")]
    # server without a scheme is https.
    write_hosts(tmp_path, "s.example", 'server = "s2.example"\ncapabilities = ["pull"]\n')
    assert hosts.registry_hosts("s.example", str(tmp_path)) == [
        Endpoint("https", "s2.example", capabilities=frozenset({"pull"}))]


@pytest.mark.parametrize("text, key", [
    ("server = [", "invalid TOML"),
    ("server = 5", "server: expected a string"),
    ('server = "ftp://x"', "unsupported scheme"),
    ('server = "https://u:p@x"', "invalid server URL"),
    ('server = "https://"', "invalid server URL"),
    ("host = 1", "host: expected a table"),
    ('[host."https://m"]\ncapabilities = ["pull", "delete"]', "unknown capability 'delete'"),
    ('[host."https://m"]\ncapabilities = "pull"\nskip_verify = "yes"',
     'host."https://m".skip_verify: expected a boolean'),
    ('[host."https://m"]\nca = 3', 'host."https://m".ca: expected a string'),
    ('[host."https://m"]\nclient = [["a"]]', "client: expected a path"),
    ('[host."https://m"]\nheader = "x"', "header: expected a table"),
    ('[host."https://m"]\nheader = {a = 1}', "header.a: expected a string"),
    ('override_path = 1', "override_path: expected a boolean"),
    ('[host.""]', "empty host URL"),
])
def test_hosts_toml_hostile(tmp_path, text, key):
    d = write_hosts(tmp_path, "h.example", text)
    with pytest.raises(InvalidArgument) as e:
        hosts.registry_hosts("h.example", str(tmp_path))
    assert str(d / "hosts.toml") in str(e.value) and key in str(e.value)


def test_hosts_toml_not_utf8_or_too_big(tmp_path):
    d = tmp_path / "h.example"
    d.mkdir()
    (d / "hosts.toml").write_bytes(b'server = "\xff"')
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        hosts.registry_hosts("h.example", str(tmp_path))
    (d / "hosts.toml").write_bytes(b"#" * (hosts.MAX_HOSTS_FILE + 1))
    with pytest.raises(InvalidArgument, match="larger than"):
        hosts.registry_hosts("h.example", str(tmp_path))
    assert hosts.host_dir(str(tmp_path), "../etc") is None


# --- the client against a real docker-registry and fake servers -----------------------------

import hashlib  # noqa: E402
import http.client  # noqa: E402
import json as _json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from ctrd.errdefs import DeadlineExceeded, FailedPrecondition, NotFound  # noqa: E402
from ctrd.metadata.images import Descriptor  # noqa: E402
from ctrd.remotes.registry import MEDIA_OCI_MANIFEST, Registry  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def docker_registry():
    """Debian's docker-registry on 127.0.0.1:<free port>, holding test/app:v1 (a config, one
    1 MiB layer, an OCI manifest) pushed with raw HTTP. Yields (address, blobs dict, manifest
    bytes)."""
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed")
    base = Path(tempfile.mkdtemp(prefix="ctrd-remotes-", dir="/tmp"))
    port = free_port()
    addr = f"127.0.0.1:{port}"
    (base / "config.yml").write_text(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {base}/storage
  delete:
    enabled: true
http:
  addr: {addr}
""")
    log = open(base / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(base / "config.yml")],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                c = http.client.HTTPConnection(addr, timeout=1)
                c.request("GET", "/v2/")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("registry did not start: " + (base / "registry.log").read_text())
        layer = bytes(range(256)) * 4096
        config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers",' \
                 b'"diff_ids":[]}}'
        blobs = {sha(layer): layer, sha(config): config}
        for d, data in blobs.items():
            c = http.client.HTTPConnection(addr)
            c.request("POST", "/v2/test/app/blobs/uploads/")
            r = c.getresponse()
            r.read()
            loc = r.getheader("Location")
            c.request("PUT", f"{loc}&digest={d}", body=data,
                      headers={"Content-Type": "application/octet-stream"})
            assert c.getresponse().status == 201
        manifest = _json.dumps({
            "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha(layer), "size": len(layer)}]}).encode()
        c = http.client.HTTPConnection(addr)
        c.request("PUT", "/v2/test/app/manifests/v1", body=manifest,
                  headers={"Content-Type": MEDIA_OCI_MANIFEST})
        assert c.getresponse().status == 201
        yield addr, blobs, manifest, layer
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def test_resolve_and_fetch(docker_registry):
    addr, blobs, manifest, layer = docker_registry
    reg = Registry()  # 127.0.0.1 is plain http by default, as containerd
    name, desc = reg.resolve(f"{addr}/test/app:v1")
    assert name == f"{addr}/test/app:v1"
    assert desc == Descriptor(MEDIA_OCI_MANIFEST, sha(manifest), len(manifest))
    name2, desc2 = reg.resolve(f"{addr}/test/app@{desc.digest}")
    assert desc2 == desc and name2 == f"{addr}/test/app@{desc.digest}"
    repo = reg.repository(name)
    assert repo.fetch_manifest(desc) == manifest
    ldesc = Descriptor("application/vnd.oci.image.layer.v1.tar", sha(layer), len(layer))
    with repo.fetch(ldesc) as r:
        got = b"".join(iter(lambda: r.read(65536), b""))
    assert got == layer
    with repo.fetch(ldesc, offset=1000) as r:
        assert r.read() == layer[1000:]
    with pytest.raises(NotFound):
        reg.resolve(f"{addr}/test/app:missing")
    with pytest.raises(NotFound):
        reg.resolve(f"{addr}/test/nothing:v1")
    with pytest.raises(FailedPrecondition, match="more than the expected"):
        repo.fetch(Descriptor(MEDIA_OCI_MANIFEST, desc.digest, len(manifest) - 1)).read()


def test_fetch_detects_wrong_digest_and_size(docker_registry):
    addr, blobs, manifest, layer = docker_registry
    repo = Registry().repository(f"{addr}/test/app:v1")
    d = sha(layer)
    with pytest.raises(FailedPrecondition, match="more than the expected"):
        repo.fetch(Descriptor("x", d, len(layer) - 10)).read()
    with pytest.raises(FailedPrecondition, match="body ended after"):
        repo.fetch(Descriptor("x", d, len(layer) + 10)).read()
    with pytest.raises(NotFound):
        repo.fetch(Descriptor("x", sha(b"absent"), 6)).read()
    with pytest.raises(FailedPrecondition, match="exceeds"):
        repo.fetch_manifest(Descriptor(MEDIA_OCI_MANIFEST, d, 5 << 20))


class FakeServer:
    """A tiny threaded HTTP server: ``handler(method, path, headers) -> (status, headers,
    body)`` or a callable taking the socket; records every request."""

    def __init__(self, handler):
        self.handler, self.requests = handler, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            f = conn.makefile("rb")
            line = f.readline().decode()
            if not line:
                return
            method, path, _ = line.split(" ", 2)
            headers = {}
            while (h := f.readline().decode().strip()):
                k, v = h.split(":", 1)
                headers[k.strip().lower()] = v.strip()
            if int(headers.get("content-length", 0)):
                f.read(int(headers["content-length"]))
            self.requests.append((method, path, headers))
            out = self.handler(method, path, headers)
            if callable(out):
                out(conn)
                return
            status, hdrs, body = out
            head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
            conn.sendall(head.encode() + b"\r\n" + body)

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def fake_server():
    servers = []

    def make(handler):
        s = FakeServer(handler)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def test_stalled_transfer_fails_clearly(fake_server):
    release = threading.Event()
    stalled_out = threading.Event()

    def stall(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        if not release.wait(60):
            stalled_out.set()

    srv = fake_server(lambda m, p, h: stall)
    reg = Registry(progress_timeout=0.5, retries=0)
    d = Descriptor("x", sha(b"x" * 100), 100)
    with pytest.raises(DeadlineExceeded, match="no data for 0.5s .transfer stalled."):
        reg.repository(f"{srv.addr}/a/b:c").fetch(d).read()
    # the client gave up while the server was still stalling (not when it hung up)
    assert not stalled_out.is_set()
    release.set()


def test_trickle_below_min_bytes_fails(fake_server):
    def trickle(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        try:
            for _ in range(40):
                conn.sendall(b"x")
                time.sleep(0.1)
        except OSError:
            pass  # the client gave up: what the test wants

    srv = fake_server(lambda m, p, h: trickle)
    reg = Registry(progress_timeout=1.0, min_bytes=50, retries=0)
    with pytest.raises(DeadlineExceeded, match="below 50 bytes per 1s"):
        reg.repository(f"{srv.addr}/a/b:c").fetch(Descriptor("x", sha(b"x" * 100), 100)).read()


def test_default_stall_rule_fails_a_byte_per_second(fake_server):
    """The defaults (no min_bytes given): a byte a second is a stall."""
    stop = threading.Event()

    def trickle(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
        try:
            while not stop.wait(0.25):
                conn.sendall(b"x")
        except OSError:
            pass  # the client gave up: what the test wants

    srv = fake_server(lambda m, p, h: trickle)
    reg = Registry(progress_timeout=1.0, retries=0)
    try:
        with pytest.raises(DeadlineExceeded, match="transfer stalled"):
            reg.repository(f"{srv.addr}/a/b:c").fetch(
                Descriptor("x", sha(b"x" * 5000), 5000)).read()
    finally:
        stop.set()


@pytest.mark.parametrize("how", ["no-headers", "header-trickle", "chunk-line-trickle"])
def test_stalls_the_socket_timeout_misses_are_stalls(fake_server, how):
    """Headers that never come (retried, but within 2T: at most 2 attempts of T each),
    headers a byte at a time, a chunk-size line a byte at a time: each restarts a socket
    timeout on every byte, the stall rule still ends them."""
    stop = threading.Event()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"

    def misbehave(conn):
        if how == "chunk-line-trickle":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        i = 0
        try:
            while not stop.wait(0.2):
                if how == "header-trickle":
                    conn.sendall(head[i:i + 1])
                elif how == "chunk-line-trickle":
                    conn.sendall(b"0")
                i += 1
        except OSError:
            pass  # the client gave up: what the test wants

    srv = fake_server(lambda m, p, h: misbehave)
    reg = Registry(progress_timeout=0.6, retries=5, backoff=0.05)
    try:
        with pytest.raises(DeadlineExceeded, match="stalled"):
            reg.repository(f"{srv.addr}/a/b:c").fetch(
                Descriptor("x", sha(b"x" * 100), 100)).read()
    finally:
        stop.set()
    assert 1 <= len(srv.requests) <= 2, srv.requests


def test_401_loop_is_an_error(fake_server):
    srv = fake_server(lambda m, p, h: (401, {"WWW-Authenticate": 'Basic realm="r"'},
                                       b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}'))
    reg = Registry(credentials={srv.addr: Credentials("u", "p")}, retries=0)
    with pytest.raises(Unauthorized, match="401 again after authenticating"):
        reg.resolve(f"{srv.addr}/a/b:c")
    assert len(srv.requests) == 2
    assert "authorization" not in srv.requests[0][2]
    assert srv.requests[1][2]["authorization"] == Credentials("u", "p").basic()


def test_bearer_token_flow_and_credentials_stay_home(fake_server):
    body = b'{"schemaVersion":2,"mediaType":"%s"}' % MEDIA_OCI_MANIFEST.encode()
    blob = b"blob data" * 1000
    other = fake_server(lambda m, p, h: (200, {}, blob) if p.startswith("/blob") else
                        (200, {}, b'{"token":"tok-from-other","expires_in":300}'))

    def registry_handler(m, p, h):
        if h.get("authorization") not in ("Bearer tok", "Bearer tok-from-other"):
            realm = f"http://{srv.addr}/token" if "/a/" in p else f"http://{other.addr}/token"
            return 401, {"WWW-Authenticate":
                         f'Bearer realm="{realm}",service="reg"'}, b""
        if "/blobs/" in p:
            return 307, {"Location": f"http://{other.addr}/blob"}, b""
        return 200, {"Content-Type": MEDIA_OCI_MANIFEST, "Docker-Content-Digest": sha(body)}, \
            body if m == "GET" else b""

    def srv_handler(m, p, h):
        if p.startswith("/token"):
            assert h.get("authorization") == Credentials("u", "p").basic()
            return 200, {}, b'{"access_token":"tok"}'
        return registry_handler(m, p, h)

    srv = fake_server(srv_handler)
    reg = Registry(credentials={srv.addr: Credentials("u", "p")}, retries=0)
    name, desc = reg.resolve(f"{srv.addr}/a/b:c")
    assert desc.digest == sha(body)
    token_req = [r for r in srv.requests if r[1].startswith("/token")][0]
    assert token_req[1] == "/token?service=reg&scope=repository%3Aa%2Fb%3Apull"
    # The blob redirects to another host: it gets neither credentials nor the token.
    with reg.repository(name).fetch(Descriptor("x", sha(blob), len(blob))) as r:
        assert r.read() == blob
    # A realm on another plain-http host gets the token request without credentials.
    reg.resolve(f"{srv.addr}/x/y:c")
    assert other.requests, "the other host saw no request"
    for _, _, h in other.requests:
        assert "authorization" not in h


def test_push_blob_mount_and_manifest(docker_registry):
    import io
    addr, blobs, manifest, layer = docker_registry
    reg = Registry()
    repo = reg.repository(f"{addr}/test/pushed:v1")
    data = b"chunky" * 5000
    d = Descriptor("application/octet-stream", sha(data), len(data))
    assert repo.push_blob(d, io.BytesIO(data), chunk_size=7000) is True
    assert repo.push_blob(d, data) is False  # already there
    mono = b"monolithic" * 100
    assert repo.push_blob(Descriptor("x", sha(mono), len(mono)), io.BytesIO(mono))
    ldesc = Descriptor("x", sha(layer), len(layer))
    assert repo.push_blob(ldesc, b"", mount_from="test/app") is False
    assert repo.blob_exists(ldesc)
    for dg, b in blobs.items():
        repo.push_blob(Descriptor("x", dg, len(b)), b"", mount_from="test/app")
    mdesc = Descriptor(MEDIA_OCI_MANIFEST, sha(manifest), len(manifest))
    repo.push_manifest(mdesc, manifest, tag="v1")
    assert reg.resolve(f"{addr}/test/pushed:v1")[1] == mdesc
    with repo.fetch(d) as r:
        assert r.read() == data
