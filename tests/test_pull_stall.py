"""No hang: a registry whose answer stalls (headers then nothing, a trickle of a byte per
second, headers that never come or come a byte at a time, a chunked body whose chunk-size
line trickles) fails a pull with an error naming the stall, through ctrctl pull (ctrd's
Transfer), CRI PullImage and containerd's Transfer (ctr 2.3.4's ``images pull``), on manifests
and on blobs. The daemon is configured with a progress timeout of :data:`T` seconds; each
call must come back before a deadline derived from it (the rule is 2T; the slack is for
process start-up on a loaded machine), the registry must have seen no more attempts at the
stalled object than fit in 2T, and the daemon must go on pulling a good image afterwards."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
import socket
import tarfile
import tempfile
import threading
from pathlib import Path

import grpc
import pytest

import ctr2
from conftest import CTR, ctr, launch_ctrd
from cri_client import CRIClient
from support.cmd import ctl, ok

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]

T = 2.0                  # the progress timeout the daemon is configured with (seconds)
DEADLINE = 2 * T + 30    # a call must have returned by then
CONFIG = (f'version = 2\n'
          f'[plugins."io.containerd.transfer.v1.local"]\n  progress_timeout = {T}\n'
          f'[plugins."io.containerd.grpc.v1.cri"]\n  image_pull_progress_timeout = "{T:g}s"\n')
MT = "application/vnd.oci.image.manifest.v1+json"


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


LAYERS = 8  # of a "layers-..." repository's image; more than any client's download workers


@functools.cache
def image(repo: str) -> tuple[bytes, bytes, list[bytes]]:
    """(manifest, config, layers) of ``repo``'s image: its own blobs (a blob an earlier pull
    left in the content store would not be fetched again); one layer, or :data:`LAYERS` for
    a repository named ``layers-...``."""
    from ctrd.images.manifest import host_platform

    layers = []
    for i in range(LAYERS if repo.startswith("layers-") else 1):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            data = f"{repo} {i}".encode() * 2000
            ti = tarfile.TarInfo(f"file{i}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        layers.append(buf.getvalue())
    config = json.dumps({"architecture": host_platform().architecture, "os": "linux",
                         "rootfs": {"type": "layers",
                                    "diff_ids": [sha(x) for x in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(x), "size": len(x)} for x in layers]}).encode()
    return manifest, config, layers


# Where a mode misbehaves ("manifest": manifest GETs, and HEADs for "no-headers"; "blob":
# the layer) and how.
MODES = ["manifest/headers-then-nothing", "manifest/trickle", "manifest/no-headers",
         "blob/headers-then-nothing", "blob/trickle", "blob/no-headers",
         "blob/header-trickle", "blob/chunk-line-trickle"]


class HostileRegistry:
    """An HTTP/1.1 registry on 127.0.0.1 serving one image under any repository; a
    repository ``<target>-<how>/...`` (a :data:`MODES` entry with ``/`` as ``-``) misbehaves.
    One request per connection (``Connection: close``). ``attempts[(repository, kind)]``:
    requests seen for the misbehaving object ("manifests" or "blobs")."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.attempts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def ref(self, mode: str, client: str) -> str:
        return f"{self.address}/{mode.replace('/', '-')}/{client}:latest"

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket, drip: bytes = b"") -> None:
        """Send ``drip`` a byte per second (forever if it is one byte), until the client
        goes away or the test ends."""
        i = 0
        while not self.stop.wait(1.0):
            if drip:
                try:
                    conn.sendall(drip[i % len(drip):i % len(drip) + 1])
                except OSError:
                    return
                i += 1

    def _one(self, conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rb")
            line = f.readline().decode(errors="replace")
            if not line:
                return
            method, path, _ = line.split(" ", 2)
            while f.readline().strip():
                pass
            status, body, ctype, misbehave = self._route(method, path)
            if misbehave:
                return self._misbehave(conn, misbehave, method, body, ctype)
            head = (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
                    f"Content-Type: {ctype}\r\nConnection: close\r\n")
            if status == 200 and "/manifests/" in path:
                head += f"Docker-Content-Digest: {sha(body)}\r\n"
            conn.sendall(head.encode() + b"\r\n" + (b"" if method == "HEAD" else body))

    def _route(self, method: str, path: str) -> tuple[int, bytes, str, str]:
        """(status, body, content type, how to misbehave or "")."""
        if path == "/v2/":
            return 200, b"{}", "application/json", ""
        parts = path.split("/")  # "", "v2", repo, name, kind, ref
        if len(parts) != 6:
            return 404, b"{}", "application/json", ""
        repo, kind, obj = parts[2], parts[4], parts[5]
        target, _, how = repo.partition("-")
        manifest, config, layers = image("/".join(parts[2:4]))
        layer = next((x for x in layers if sha(x) == obj), None)
        if kind == "manifests":
            body, ctype = manifest, MT
            hit = target == "manifest" and (method == "GET" or how == "no-headers")
        elif obj == sha(config):
            body, ctype, hit = config, "application/octet-stream", False
        elif layer is not None:
            body, ctype, hit = layer, "application/octet-stream", target in ("blob", "layers")
        else:
            return 404, b"{}", "application/json", ""
        if hit:
            with self._lock:
                key = ("/".join(parts[2:4]), kind)
                self.attempts[key] = self.attempts.get(key, 0) + 1
        return 200, body, ctype, how if hit else ""

    def _misbehave(self, conn: socket.socket, how: str, method: str, body: bytes,
                   ctype: str) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nConnection: close\r\n"
                f"Docker-Content-Digest: {sha(body)}\r\n")
        if how == "no-headers":
            return self._hold(conn)
        if how == "header-trickle":
            return self._hold(conn, (head + f"Content-Length: {len(body)}\r\n\r\n").encode()
                              + body)
        if how == "chunk-line-trickle":
            conn.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
            return self._hold(conn, b"0")  # a chunk-size line of zeros, never ended
        conn.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode())
        if how == "trickle":
            return self._hold(conn, body)
        return self._hold(conn)  # headers-then-nothing


@pytest.fixture(scope="module")
def registry():
    reg = HostileRegistry()
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def daemon():
    base = Path(tempfile.mkdtemp(prefix="ctrd-stall-", dir="/tmp"))
    d = launch_ctrd(base, CONFIG)
    cri = CRIClient(d.address, timeout=DEADLINE)
    try:
        yield d, cri
    finally:
        cri.close()
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


def pull_ctrctl(d, cri, ref: str) -> tuple[bool, str]:
    r = ctl(d.address, "pull", "--plain-http", ref, timeout=DEADLINE)
    return r.returncode == 0, r.stderr


def pull_cri(d, cri, ref: str) -> tuple[bool, str]:
    try:
        cri.pull(ref)
    except grpc.RpcError as e:
        # a server-side stall is DEADLINE_EXCEEDED too: "stalled" tells it from the
        # client's own deadline ("Deadline Exceeded")
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
        return False, e.details()
    return True, ""


def pull_ctr2(d, cri, ref: str) -> tuple[bool, str]:
    r = ctr2.run(d.address, "images", "pull", "--plain-http", ref, timeout=DEADLINE)
    return r.returncode == 0, ctr2.errors(r)


CLIENTS = {"ctrctl": pull_ctrctl, "cri": pull_cri, "ctr2": pull_ctr2}


def _images(d) -> set[str]:
    out = set()
    for ns in ("default", "k8s.io", "t"):
        out |= set(ok(ctr(d.address, "images", "ls", "-q", namespace=ns)).split())
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_stalled_registry_fails_the_pull_in_bounded_time(daemon, registry, client, mode):
    if client == "ctr2" and not ctr2.available():
        pytest.skip("containerd 2.3.4's ctr is not in ../shared/bin")
    d, cri = daemon
    pull = CLIENTS[client]
    ref = registry.ref(mode, client)
    done, err = pull(d, cri, ref)  # a hang fails here (subprocess or RPC deadline)
    assert not done, f"{ref}: pulled from a stalling registry"
    assert "stalled" in err, err
    assert ref not in _images(d)
    target, _, how = mode.partition("/")
    kind = "manifests" if target == "manifest" else "blobs"
    # each attempt waits T: no more than 2T's worth of them
    seen = registry.attempts.get((f"{mode.replace('/', '-')}/{client}", kind), 0)
    assert 1 <= seen <= 2, registry.attempts
    # the daemon keeps serving: a good pull works
    good = registry.ref("ok/fine", f"{client}-{how}")
    done, err = pull(d, cri, good)
    assert done, err


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_layer_stalling_fails_the_pull_once(daemon, registry, client):
    """Every layer stalls: the downloads under way fail, the queued ones are not started
    (else a pull waits the stall once per round of its download workers)."""
    if client == "ctr2" and not ctr2.available():
        pytest.skip("containerd 2.3.4's ctr is not in ../shared/bin")
    d, cri = daemon
    ref = registry.ref("layers/headers-then-nothing", client)
    done, err = CLIENTS[client](d, cri, ref)
    assert not done and "stalled" in err, err
    seen = registry.attempts.get((f"layers-headers-then-nothing/{client}", "blobs"), 0)
    assert 1 <= seen <= 4 < LAYERS, registry.attempts  # 4: the most workers of any client
