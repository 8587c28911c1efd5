"""The registry client's transport (ctrd.remotes.transport, ctrd.remotes.proxy): proxies as Go's
``ProxyFromEnvironment`` (containerd's) chooses them, an https registry through a CONNECT
tunnel and a plain-http one through a forwarding proxy, NO_PROXY and loopback going direct,
keep-alive connections reused across requests, registries and threads.

The registry is the real Debian docker-registry the suite runs (and the same storage served
over TLS with a test CA); the proxy and the TCP relay here are small helpers that count what
passes through them, not the thing under test. ``registry.proxied.test`` does not resolve:
a request that reaches the registry by that name went through the proxy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import images
from ctrd.errdefs import InvalidArgument, Unavailable
from ctrd.metadata.images import Descriptor
from ctrd.remotes.proxy import ProxyConfig
from ctrd.remotes.registry import Registry
from ctrd.remotes.transport import Transport

PROXIED = "registry.proxied.test"


# --- Go's proxy rules -------------------------------------------------------------------------

@pytest.mark.parametrize("url, no_proxy, want", [
    ("https://r.example/v2/", "", "https"),
    ("http://r.example/v2/", "", "http"),
    ("https://127.0.0.1:5000/v2/", "", None),          # loopback: never proxied
    ("https://localhost/v2/", "", None),
    ("http://[::1]:5000/v2/", "", None),
    ("https://r.example/", "*", None),
    ("https://r.example/", "r.example", None),
    ("https://a.r.example/", "r.example", None),        # a domain covers its subdomains
    ("https://r.example/", ".r.example", "https"),      # a leading dot: subdomains only
    ("https://a.r.example/", ".r.example", None),
    ("https://a.r.example/", "*.r.example", None),
    ("https://r.example:5000/", "r.example:5000", None),
    ("https://r.example/", "r.example:5000", "https"),  # 443 is not 5000
    ("https://r.example:443/", "r.example:443", None),
    ("https://10.1.2.3/", "10.0.0.0/8", None),
    ("https://11.1.2.3/", "10.0.0.0/8", "https"),
    ("https://10.1.2.3:5000/", " foo.example , 10.1.2.3 ", None),
    ("https://10.1.2.3:5000/", "10.1.2.3:80", "https"),
    ("http://[fd00::5]:80/", "[fd00::5]:80", None),
    ("https://R.Example/", "r.EXAMPLE", None),
    ("https://r.example/", ":80,,", "https"),           # malformed entries are ignored
])
def test_proxy_rules_are_gos(url, no_proxy, want):
    cfg = ProxyConfig.from_environ({"HTTPS_PROXY": "https-proxy:3128",
                                    "http_proxy": "http://http-proxy:8080",
                                    "no_proxy": no_proxy})
    got = cfg.proxy_for(url)
    assert got == {"https": "http://https-proxy:3128", "http": "http://http-proxy:8080",
                   None: None}[want]


def test_proxy_environment_names():
    # Upper case wins; an empty value is unset; CGI refuses HTTP_PROXY (golang.org/s/cgihttpproxy).
    env = {"HTTPS_PROXY": "", "https_proxy": "http://lower:1", "HTTP_PROXY": "http://up:2",
           "http_proxy": "http://lower:2", "NO_PROXY": "", "no_proxy": "skip.example"}
    cfg = ProxyConfig.from_environ(env)
    assert cfg.proxy_for("https://r.example/") == "http://lower:1"
    assert cfg.proxy_for("http://r.example/") == "http://up:2"
    assert cfg.proxy_for("https://skip.example/") is None
    assert ProxyConfig.from_environ({}).proxy_for("https://r.example/") is None
    with pytest.raises(InvalidArgument, match="CGI"):
        ProxyConfig.from_environ({"HTTP_PROXY": "p:1", "REQUEST_METHOD": "GET"}
                                 ).proxy_for("http://r.example/")


# --- helpers: a counting TCP relay and a counting HTTP proxy ----------------------------------

def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Listener:
    """Accepts connections on ``host`` (any free port) and hands each to :meth:`handle` in a
    thread; counts them; :meth:`close` closes every socket it made."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.addr = f"{host}:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _keep(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._socks.append(s)
        return s

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            self._spawn(self.handle, self._keep(conn))

    def connect(self, hostport: str) -> socket.socket:
        host, port = hostport.rsplit(":", 1)
        return self._keep(socket.create_connection((host, int(port)), timeout=30))

    def splice(self, a: socket.socket, b: socket.socket) -> None:
        self._spawn(_pipe, b, a)
        _pipe(a, b)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in threads:
            t.join(10)


class Relay(_Listener):
    """A TCP forwarder to ``target``: the registry sees its connections, it counts them."""

    def __init__(self, target: str, host: str = "127.0.0.1") -> None:
        self.target = target
        super().__init__(host)

    def handle(self, conn: socket.socket) -> None:
        self.splice(conn, self.connect(self.target))


class Proxy(_Listener):
    """An HTTP proxy: ``CONNECT host:port`` is tunnelled, an absolute-form request is sent on
    as it is (Go servers accept absolute-form) and the connection piped from then on (so it
    serves one target per connection, enough here). ``routes`` maps the host:port a client
    names to where it really is. Records (method, target, Proxy-Authorization) of each
    connection's first request; with ``auth`` set, anything else gets a 407."""

    def __init__(self, routes: dict[str, str], auth: str = "") -> None:
        self.routes, self.auth, self.requests = routes, auth, []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            data = conn.recv(65536)
            if not data:
                return
            head += data
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (ln.partition(":") for ln in lines[1:])}
        got = headers.get("proxy-authorization", "")
        self.requests.append((method, target, got))
        if self.auth and got != "Basic " + base64.b64encode(self.auth.encode()).decode():
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"p\"\r\nContent-Length: 0\r\n\r\n")
            return
        if method == "CONNECT":
            upstream = self.connect(self.routes.get(target, target))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
        else:
            hostport = target.split("://", 1)[1].split("/", 1)[0]
            upstream = self.connect(self.routes.get(hostport, hostport))
            rest = head
        if rest:
            upstream.sendall(rest)
        self.splice(conn, upstream)


@pytest.fixture
def listeners():
    made: list[_Listener] = []

    def make(cls, *args, **kw):
        obj = cls(*args, **kw)
        made.append(obj)
        return obj
    yield make
    for obj in made:
        obj.close()


# --- the registry, also over TLS --------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_registry(registry):
    """The session registry's storage served over TLS by a second docker-registry, with a
    certificate for ``registry.proxied.test`` and 127.0.0.1 from a test CA. Yields
    (address, CA file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (to make the test CA)")
    base = Path(tempfile.mkdtemp(prefix="ctrd-tlsreg-", dir="/tmp"))
    proc = None
    try:
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                 "-out", "ca.crt", "-days", "2", "-subj", "/CN=ctrd test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=base)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out",
                 "srv.csr", "-subj", f"/CN={PROXIED}", cwd=base)
        (base / "ext").write_text(f"subjectAltName=DNS:{PROXIED},IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext",
                 cwd=base)
        addr = f"127.0.0.1:{images.free_port()}"
        (base / "config.yml").write_text(f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {registry.root}/storage
http:
  addr: {addr}
  tls:
    certificate: {base}/srv.crt
    key: {base}/srv.key
""")
        log = open(base / "registry.log", "wb")
        proc = subprocess.Popen(["docker-registry", "serve", str(base / "config.yml")],
                                stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (base / "registry.log").read_text()
            try:
                socket.create_connection(addr.split(":"), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (base / "registry.log").read_text()
                time.sleep(0.05)
        yield addr, base / "ca.crt"
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def pull_busybox(reg: Registry, ref: str) -> None:
    """Resolve ``ref`` and fetch its manifest, config and layer, digests checked."""
    name, desc = reg.resolve(ref)
    repo = reg.repository(name)
    manifest = json.loads(repo.fetch_manifest(desc))
    for d in [manifest["config"]] + manifest["layers"]:
        with repo.fetch(Descriptor(d["mediaType"], d["digest"], d["size"])) as r:
            data = r.read()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == d["digest"]


def write_hosts(root: Path, host: str, text: str) -> str:
    d = root / (host.replace(":", "_") + ("_" if ":" in host else ""))
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(text)
    return str(root)


# --- through a proxy --------------------------------------------------------------------------

def test_https_registry_through_one_connect_tunnel(tls_registry, listeners, tmp_path):
    addr, ca = tls_registry
    port = addr.rsplit(":", 1)[1]
    name = f"{PROXIED}:{port}"
    proxy = listeners(Proxy, {name: addr}, auth="pu:p@ss")
    hosts_dir = write_hosts(tmp_path / "certs.d", name, f'ca = "{ca}"\n')
    reg = Registry(hosts_dir=hosts_dir, transport=Transport(
        {"HTTPS_PROXY": f"http://pu:p%40ss@{proxy.addr}"}))
    pull_busybox(reg, f"{name}/test/busybox:latest")
    # Every request (HEAD, manifest, config, layer) went through one tunnel, the proxy's
    # credentials on its CONNECT; the registry's name was resolved by the proxy alone.
    auth = "Basic " + base64.b64encode(b"pu:p@ss").decode()
    assert proxy.requests == [("CONNECT", name, auth)]
    assert proxy.connections == 1
    # The tunnel carries TLS checked against the endpoint's CA: without it, no trust.
    bare = Registry(transport=Transport({"HTTPS_PROXY": f"http://pu:p%40ss@{proxy.addr}"}),
                    retries=0)
    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        bare.resolve(f"{name}/test/busybox:latest")


def test_plain_http_registry_through_a_forwarding_proxy(registry, listeners):
    port = registry.address.rsplit(":", 1)[1]
    name = f"{PROXIED}:{port}"
    proxy = listeners(Proxy, {name: registry.address})
    reg = Registry(plain_http=True, transport=Transport({"http_proxy": proxy.addr}))
    pull_busybox(reg, f"{name}/test/busybox:latest")
    assert proxy.requests[0] == (
        "HEAD", f"http://{name}/v2/test/busybox/manifests/latest", "")
    assert proxy.connections == 1


def test_loopback_is_never_proxied(registry, listeners):
    proxy = listeners(Proxy, {})
    env = {"HTTP_PROXY": f"http://{proxy.addr}", "HTTPS_PROXY": f"http://{proxy.addr}"}
    pull_busybox(Registry(transport=Transport(env)), registry.ref("busybox"))
    assert proxy.requests == [] and proxy.connections == 0


def _non_loopback_ipv4() -> str | None:
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    return None


def test_no_proxy_goes_direct(registry, listeners):
    ip = _non_loopback_ipv4()
    if ip is None:
        pytest.skip("this host has no non-loopback IPv4 address (loopback is never proxied)")
    relay = listeners(Relay, registry.address, host=ip)
    proxy = listeners(Proxy, {relay.addr: registry.address})
    ref = f"{relay.addr}/test/busybox:latest"
    pull_busybox(Registry(plain_http=True, transport=Transport(
        {"HTTP_PROXY": f"http://{proxy.addr}", "NO_PROXY": f"other.example,{ip}"})), ref)
    assert proxy.requests == [] and relay.connections == 1
    # The same host, not excluded: through the proxy.
    pull_busybox(Registry(plain_http=True, transport=Transport(
        {"HTTP_PROXY": f"http://{proxy.addr}", "NO_PROXY": "other.example"})), ref)
    assert proxy.requests and proxy.requests[0][1].startswith(f"http://{relay.addr}/")


def test_socks_proxy_is_refused_clearly(registry):
    reg = Registry(transport=Transport({"HTTPS_PROXY": "socks5://127.0.0.1:1"}))
    with pytest.raises(InvalidArgument, match="only http and https proxies"):
        reg.resolve("r.example/a/b:c")


# --- connection reuse -------------------------------------------------------------------------

def test_connections_are_reused_across_requests_registries_and_threads(registry, listeners):
    relay = listeners(Relay, registry.address)
    ref = f"{relay.addr}/test/busybox:latest"
    transport = Transport({})
    pull_busybox(Registry(transport=transport), ref)
    pull_busybox(Registry(transport=transport), ref)  # another pull, same pool
    assert relay.connections == 1
    # Four bodies open at once need four connections; all four go back to the pool, and the
    # next four concurrent reads reuse them.
    reg = Registry(transport=transport)
    name, desc = reg.resolve(ref)
    repo = reg.repository(name)
    layer = json.loads(repo.fetch_manifest(desc))["layers"][0]
    ldesc = Descriptor(layer["mediaType"], layer["digest"], layer["size"])
    for _ in range(2):
        readers = [repo.fetch(ldesc) for _ in range(4)]
        results: list[bytes] = []
        threads = [threading.Thread(target=lambda r=r: results.append(r.read()))
                   for r in readers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 4 and all(len(b) == ldesc.size for b in results)
    assert relay.connections == 4
    # A body abandoned half-way closes its connection (it cannot carry another request);
    # the next fetch is whole and verified.
    with repo.fetch(ldesc) as r:
        r.read(100)
    with repo.fetch(ldesc) as r:
        assert len(r.read()) == ldesc.size


# --- the daemon -------------------------------------------------------------------------------

@pytest.mark.integration
def test_daemon_pulls_through_the_environments_proxy(start_ctrd, registry, listeners):
    port = registry.address.rsplit(":", 1)[1]
    name = f"{PROXIED}:{port}"
    proxy = listeners(Proxy, {name: registry.address})
    d = start_ctrd(env={"HTTP_PROXY": f"http://{proxy.addr}", "NO_PROXY": ""})
    ctrctl = Path(sys.executable).parent / "ctrctl"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    r = subprocess.run([str(ctrctl), "--address", d.address, "pull", "--plain-http",
                        f"{name}/test/busybox:latest"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert registry.digest("busybox") in r.stdout
    assert proxy.requests and all(t.startswith(f"http://{name}/v2/")
                                  for _, t, _ in proxy.requests)


def test_redirect_loop_stops_at_the_limit_on_pooled_connections():
    """A registry redirecting forever (over keep-alive connections now) is cut off after
    MAX_REDIRECTS, with the count of requests it saw to show it."""
    import http.server

    from ctrd.remotes.registry import MAX_REDIRECTS

    hits = []

    class Loop(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            hits.append(self.path)
            self.send_response(307)
            self.send_header("Location", f"/v2/loop/{len(hits)}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loop)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        reg = Registry(retries=0, transport=Transport({}))
        with pytest.raises(Unavailable, match=f"more than {MAX_REDIRECTS} redirects"):
            reg.resolve(f"127.0.0.1:{srv.server_address[1]}/a/b:c")
        assert len(hits) == MAX_REDIRECTS + 1
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)


# --- stalls over TLS --------------------------------------------------------------------------

def test_trickle_over_tls_is_a_stall(tls_registry, tmp_path):
    """The stall rule shuts a TLS socket down under its blocked reader too: a server that
    trickles a body a byte every 0.2 s over TLS fails the fetch, naming the stall."""
    import ssl

    from ctrd.errdefs import DeadlineExceeded

    _, ca = tls_registry
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca.parent / "srv.crt", ca.parent / "srv.key")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = srv.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(65536)  # the request
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
                for _ in range(150):  # then the body ends short: a FailedPrecondition
                    if stop.wait(0.2):
                        break
                    tls.sendall(b"x")
        except OSError:
            pass  # the client gave up: what the test wants

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    host = f"127.0.0.1:{srv.getsockname()[1]}"
    hosts_dir = write_hosts(tmp_path / "certs.d", host,
                            f'server = "https://{host}"\nca = "{ca}"\n')
    reg = Registry(hosts_dir=hosts_dir, progress_timeout=1.0, retries=0)
    blob = b"x" * 5000
    try:
        with pytest.raises(DeadlineExceeded, match="transfer stalled"):
            reg.repository(f"{host}/a/b:c").fetch(
                Descriptor("application/octet-stream",
                           "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))).read()
    finally:
        stop.set()
        srv.close()
        t.join(10)
