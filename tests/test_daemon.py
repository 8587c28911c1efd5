"""The daemon process: sockets and dirs, locking, shutdown, and hostile requests on the wire."""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time

import grpc
import pytest

from conftest import CTR, ctr
from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2 as ns_pb
from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2_grpc as ns_grpc

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel("unix:" + address)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sockets_and_directories_are_closed_to_others(ctrd):
    assert stat.S_ISSOCK(os.stat(ctrd.address).st_mode)
    assert mode(ctrd.address) == 0o660
    assert mode(ctrd.address + ".ttrpc") == 0o660
    assert mode(ctrd.root) == 0o711 and mode(ctrd.state) == 0o711
    # the task root is 0711 as containerd makes it (a user-namespaced pod's mapped root
    # must reach its bundle's rootfs); its own children stay closed
    traversable = {"io.containerd.runtime.v2.task"}
    for child in ctrd.root.iterdir():
        if child.is_dir():
            assert mode(child) == (0o711 if child.name in traversable else 0o700), child
    meta = ctrd.root / "io.containerd.metadata.v1.lmdb" / "meta.lmdb"
    for f in meta.iterdir():
        assert mode(f) & 0o077 == 0, f


def test_a_second_daemon_on_the_same_root_refuses(ctrd, start_ctrd):
    other = start_ctrd(name="second", root=ctrd.root, wait=False)
    assert other.proc.wait(60) == 1
    assert f"root {ctrd.root} is in use by another ctrd (pid {ctrd.proc.pid})" in \
        other.read_log()
    assert ctr(ctrd.address, "version").returncode == 0


def test_a_second_daemon_on_the_same_address_refuses(ctrd, start_ctrd, tmp_root):
    other = start_ctrd(name="third", wait=False,
                       extra_args=["--address", ctrd.address])
    assert other.proc.wait(60) == 1
    assert "is in use by another process" in other.read_log()
    assert ctr(ctrd.address, "version").returncode == 0  # the first one's socket is intact


def test_stale_socket_from_a_killed_daemon_is_replaced(start_ctrd):
    d = start_ctrd()
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    assert os.path.exists(d.address)  # left behind by kill -9
    d2 = start_ctrd(root=d.root)
    assert ctr(d2.address, "version").returncode == 0


def test_sigterm_removes_sockets_and_exits_zero(ctrd):
    assert ctrd.stop() == 0
    assert not os.path.exists(ctrd.address)
    assert not os.path.exists(ctrd.address + ".ttrpc")
    assert "stopped" in ctrd.read_log()


def test_sigterm_lets_in_flight_calls_finish(ctrd, start_ctrd):
    """Many calls in flight when SIGTERM lands: each either completes or is refused cleanly
    (UNAVAILABLE once the socket is gone; CANCELLED for a call that reached the server as it
    stopped, before its handler ran); none hangs, the daemon exits 0, and every call that
    succeeded is on disk after a restart."""
    stub = ns_grpc.NamespacesStub(channel(ctrd.address))
    results = []

    def worker(i):
        for j in range(30):
            try:
                stub.Create(ns_pb.CreateNamespaceRequest(
                    namespace=ns_pb.Namespace(name=f"n{i}-{j}")), timeout=10)
                results.append(f"n{i}-{j}")
            except grpc.RpcError as e:
                results.append(e.code())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    ctrd.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert ctrd.proc.wait(30) == 0
    created = {r for r in results if isinstance(r, str)}
    assert created
    assert set(results) - created <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    again = start_ctrd(root=ctrd.root)
    listed = set(ctr(again.address, "namespaces", "ls", "-q").stdout.split())
    assert created <= listed


# --- hostile requests ---------------------------------------------------------------------

@pytest.mark.parametrize("name, code, text", [
    ("", grpc.StatusCode.INVALID_ARGUMENT, "identifier must not be empty"),
    ("../../etc", grpc.StatusCode.INVALID_ARGUMENT, "must match"),
    ("a" * 10000, grpc.StatusCode.INVALID_ARGUMENT, "greater than maximum length"),
    ("ns\0x", grpc.StatusCode.INVALID_ARGUMENT, "must match"),
    ("ns/x", grpc.StatusCode.INVALID_ARGUMENT, "must match"),
])
def test_hostile_namespace_names(ctrd, name, code, text):
    stub = ns_grpc.NamespacesStub(channel(ctrd.address))
    with pytest.raises(grpc.RpcError) as e:
        stub.Create(ns_pb.CreateNamespaceRequest(namespace=ns_pb.Namespace(name=name)))
    assert e.value.code() == code and text in e.value.details()
    assert ctr(ctrd.address, "namespaces", "ls", "-q").stdout == ""


def test_hostile_labels_and_update_masks(ctrd):
    stub = ns_grpc.NamespacesStub(channel(ctrd.address))
    with pytest.raises(grpc.RpcError) as e:
        stub.Create(ns_pb.CreateNamespaceRequest(
            namespace=ns_pb.Namespace(name="x", labels={"k": "v" * 5000})))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label key and value length (5001 bytes) greater than maximum size (4096 bytes)" in e.value.details()
    stub.Create(ns_pb.CreateNamespaceRequest(namespace=ns_pb.Namespace(name="x")))
    req = ns_pb.UpdateNamespaceRequest(namespace=ns_pb.Namespace(name="x"))
    req.update_mask.paths.append("name")
    with pytest.raises(grpc.RpcError) as e:
        stub.Update(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot update 'name' field" in e.value.details() or \
        'cannot update "name" field' in e.value.details()


def test_malformed_protobuf_and_unknown_methods(ctrd):
    ch = channel(ctrd.address)
    raw = ch.unary_unary("/containerd.services.namespaces.v1.Namespaces/Create",
                         request_serializer=lambda b: b, response_deserializer=lambda b: b)
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\x0f", os.urandom(4096)):
        with pytest.raises(grpc.RpcError) as e:
            raw(garbage, timeout=5)
        assert e.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.UNKNOWN)
    nope = ch.unary_unary("/containerd.services.nope.v1.Nope/Do",
                          request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        nope(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert ctr(ctrd.address, "version").returncode == 0


def test_garbage_bytes_on_both_sockets(ctrd):
    for path in (ctrd.address, ctrd.address + ".ttrpc"):
        for payload in (b"GET / HTTP/1.1\r\n\r\n", os.urandom(65536),
                        b"\xff" * 10 + b"\x00" * 100):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(path)
            try:
                s.sendall(payload)
            except OSError:
                pass
            s.close()
    assert ctr(ctrd.address, "version").returncode == 0
    assert ctrd.proc.poll() is None


def test_oversized_grpc_message_is_refused(ctrd):
    stub = ns_grpc.NamespacesStub(channel(ctrd.address))
    with pytest.raises(grpc.RpcError) as e:
        stub.Create(ns_pb.CreateNamespaceRequest(
            namespace=ns_pb.Namespace(name="big", labels={"k": "v" * (17 << 20)})), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ctr(ctrd.address, "version").returncode == 0
