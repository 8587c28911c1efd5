"""Hostile input to containerd.services.transfer.v1.Transfer (registry side): unknown type
URLs, corrupt ``Any`` payloads, an auth stream that never answers or answers garbage, a
registry answering garbage or stalling. Each: a clear error naming the problem, no image
record and no content left, and the daemon keeps serving.

A real ctrd daemon driven by a gRPC client (ctrd's generated stubs, the wire ctr 2.3.4
speaks); the registries here are small HTTP servers that misbehave on purpose.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import queue
import threading

import grpc
import pytest
from google.protobuf import any_pb2

from ctrd import typeurl
from ctrd.api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from ctrd.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from ctrd.api.containerd.services.streaming.v1 import streaming_pb2, streaming_pb2_grpc
from ctrd.api.containerd.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from ctrd.api.containerd.types.transfer import imagestore_pb2, registry_pb2

pytestmark = pytest.mark.integration

NS = (("containerd-namespace", "t"),)
CONFIG = 'version = 2\n[plugins."io.containerd.transfer.v1.local"]\n  progress_timeout = 1.0\n'


@pytest.fixture
def daemon(start_ctrd):
    d = start_ctrd(config_text=CONFIG)
    ch = grpc.insecure_channel("unix:" + d.address)
    yield d, ch
    ch.close()


def transfer(ch, src, dst, timeout: float = 60):
    req = transfer_pb2.TransferRequest(source=src, destination=dst)
    return transfer_pb2_grpc.TransferStub(ch).Transfer(req, metadata=NS, timeout=timeout)


def rpc_error(fn, *a, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn(*a, **kw)
    return e.value


def assert_nothing_left(ch) -> None:
    """No image, no content, and the daemon answers."""
    imgs = images_pb2_grpc.ImagesStub(ch).List(images_pb2.ListImagesRequest(), metadata=NS)
    assert list(imgs.images) == []
    blobs = list(content_pb2_grpc.ContentStub(ch).List(content_pb2.ListContentRequest(),
                                                       metadata=NS))
    assert [i for b in blobs for i in b.info] == []


def registry_src(ref: str, **resolver) -> any_pb2.Any:
    return typeurl.pack(registry_pb2.OCIRegistry(
        reference=ref, resolver=registry_pb2.RegistryResolver(default_scheme="http",
                                                              **resolver)))


def store_dst(name: str) -> any_pb2.Any:
    return typeurl.pack(imagestore_pb2.ImageStore(name=name))


# --- objects ----------------------------------------------------------------------------------

def test_unknown_type_url_is_not_found(daemon):
    d, ch = daemon
    bogus = any_pb2.Any(type_url="types.containerd.io/containerd.types.transfer.Nope",
                        value=b"\x0a\x01x")
    err = rpc_error(transfer, ch, bogus, store_dst("x"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "containerd.types.transfer.Nope" in err.details()
    assert_nothing_left(ch)


@pytest.mark.parametrize("value", [b"\xff\xff\xff", b"\x0a\x7fshort", b"\x12\x05\x0a\x03"])
def test_corrupt_any_is_invalid_argument(daemon, value):
    d, ch = daemon
    bad = any_pb2.Any(type_url="types.containerd.io/containerd.types.transfer.OCIRegistry",
                      value=value)
    err = rpc_error(transfer, ch, bad, store_dst("x"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "OCIRegistry" in err.details()
    assert_nothing_left(ch)


def test_bad_resolver_fields(daemon):
    d, ch = daemon
    for resolver, want in (({"default_scheme": "gopher"}, "default scheme"),
                           ({"headers": {"Bad\r\nHeader": "x"}}, "not a valid HTTP header")):
        src = typeurl.pack(registry_pb2.OCIRegistry(
            reference="127.0.0.1:1/a/b:c", resolver=registry_pb2.RegistryResolver(**resolver)))
        err = rpc_error(transfer, ch, src, store_dst("x"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and want in err.details()
    err = rpc_error(transfer, ch, registry_src("127.0.0.1:1/a/b:c", auth_stream="nope"),
                    store_dst("x"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.details()
    assert_nothing_left(ch)


# --- registries that misbehave ----------------------------------------------------------------

def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """An HTTP server answering ``routes[path] -> (status, headers, body | callable)``; a
    callable body gets the request handler (to stall, to trickle)."""

    def __init__(self, routes: dict) -> None:
        routes_ = routes

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self, head: bool):
                status, headers, body = routes_.get(self.path, (404, {}, b"{}"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if callable(body):
                    self.end_headers()
                    if not head:
                        body(self)
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self):
                self.answer(False)

            def do_HEAD(self):
                self.answer(True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_registry():
    made = []

    def make(routes):
        r = FakeRegistry(routes)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


MT = "application/vnd.oci.image.manifest.v1+json"


def test_registry_answering_garbage(daemon, fake_registry):
    d, ch = daemon
    garbage = b"\x00this is not a manifest\xff"
    headers = {"Content-Type": MT, "Docker-Content-Digest": sha(garbage)}
    reg = fake_registry({"/v2/a/b/manifests/c": (200, headers, garbage),
                         f"/v2/a/b/manifests/{sha(garbage)}": (200, headers, garbage)})
    err = rpc_error(transfer, ch, registry_src(f"{reg.address}/a/b:c"),
                    store_dst(f"{reg.address}/a/b:c"))
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                          grpc.StatusCode.FAILED_PRECONDITION), err.details()
    assert "manifest" in err.details() or sha(garbage) in err.details()
    assert_nothing_left(ch)


def test_registry_stalling_on_a_layer(daemon, fake_registry):
    d, ch = daemon
    release = threading.Event()
    layer = b"x" * 4096
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(layer), "size": len(layer)}]}).encode()

    def stall(h):
        h.wfile.write(layer[:100])
        h.wfile.flush()
        release.wait(30)

    reg = fake_registry({
        "/v2/a/b/manifests/c": (200, {"Content-Type": MT, "Docker-Content-Digest":
                                      sha(manifest)}, manifest),
        f"/v2/a/b/manifests/{sha(manifest)}": (200, {"Content-Type": MT}, manifest),
        f"/v2/a/b/blobs/{sha(config)}": (200, {}, config),
        f"/v2/a/b/blobs/{sha(layer)}": (200, {"Content-Length": str(len(layer))}, stall),
    })
    try:
        err = rpc_error(transfer, ch, registry_src(f"{reg.address}/a/b:c"),
                        store_dst(f"{reg.address}/a/b:c"))
    finally:
        release.set()
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    assert "stalled" in err.details() and sha(layer) in err.details()
    assert_nothing_left(ch)


# --- the auth stream --------------------------------------------------------------------------

class ClientStream:
    """The client end of a Streaming call: named by StreamInit, then whatever the test sends
    (``answers``: messages to send when the daemon asks; none: never answer)."""

    def __init__(self, ch, name: str, answer=None) -> None:
        self.out: queue.Queue = queue.Queue()
        self.asked: list[any_pb2.Any] = []
        self.out.put(typeurl.pack(streaming_pb2.StreamInit(id=name)))
        self.call = streaming_pb2_grpc.StreamingStub(ch).Stream(iter(self.out.get, None),
                                                                metadata=NS)
        next(self.call)  # the daemon's ack: the stream is registered
        self.answer = answer
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.asked.append(msg)
                if self.answer is not None:
                    self.out.put(self.answer)
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.out.put(None)
        self.call.cancel()
        self.thread.join(5)


@pytest.fixture
def basic_auth_registry(fake_registry):
    """Every request answered 401 with a Basic challenge."""
    return fake_registry({"/v2/a/b/manifests/c": (401, {
        "WWW-Authenticate": 'Basic realm="test"', "Content-Type": "application/json"},
        b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')})


def test_auth_stream_that_never_answers(daemon, basic_auth_registry):
    d, ch = daemon
    reg = basic_auth_registry
    s = ClientStream(ch, "creds-silent")
    try:
        # the RPC's own deadline is far off: the daemon's bound ends the wait
        err = rpc_error(transfer, ch, registry_src(f"{reg.address}/a/b:c",
                                                   auth_stream="creds-silent"),
                        store_dst(f"{reg.address}/a/b:c"), timeout=300)
    finally:
        s.close()
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    assert "auth stream" in err.details() and reg.address in err.details()
    assert "within 10s" in err.details()
    # what the daemon asked: host and reference, as containerd asks
    req = typeurl.unpack(s.asked[0], registry_pb2.AuthRequest)
    assert (req.host, req.reference) == (reg.address, f"{reg.address}/a/b:c")
    assert_nothing_left(ch)


def test_auth_stream_answering_garbage(daemon, basic_auth_registry):
    d, ch = daemon
    reg = basic_auth_registry
    wrong_type = typeurl.pack(registry_pb2.AuthRequest(host="evil.example"))
    s = ClientStream(ch, "creds-garbage", answer=wrong_type)
    try:
        err = rpc_error(transfer, ch, registry_src(f"{reg.address}/a/b:c",
                                                   auth_stream="creds-garbage"),
                        store_dst(f"{reg.address}/a/b:c"))
    finally:
        s.close()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "AuthResponse" in err.details() and reg.address in err.details()
    assert_nothing_left(ch)


def test_auth_response_with_unknown_fields_and_no_credentials(daemon, basic_auth_registry):
    """Unknown fields are ignored (protobuf); an answer of type NONE means no credentials,
    so the basic challenge fails clearly; nothing leaks to another host."""
    d, ch = daemon
    reg = basic_auth_registry
    resp = registry_pb2.AuthResponse(authType=registry_pb2.NONE).SerializeToString() + \
        b"\xa2\x06\x03abc"  # field 100, length-delimited: unknown
    s = ClientStream(ch, "creds-none", answer=any_pb2.Any(
        type_url="types.containerd.io/containerd.types.transfer.AuthResponse", value=resp))
    try:
        err = rpc_error(transfer, ch, registry_src(f"{reg.address}/a/b:c",
                                                   auth_stream="creds-none"),
                        store_dst(f"{reg.address}/a/b:c"))
    finally:
        s.close()
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    assert "requires basic authentication and no credentials" in err.details()
    assert len(s.asked) == 1  # asked once for that host, the answer kept
    assert_nothing_left(ch)
