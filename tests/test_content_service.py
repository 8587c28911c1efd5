"""The Content service on the wire: Write sessions with hostile input, Read ranges, leases."""

from __future__ import annotations

import hashlib
import os
import threading

import grpc
import pytest

from conftest import CTR, ctr
from ctrd.api.containerd.services.content.v1 import content_pb2 as pb
from ctrd.api.containerd.services.content.v1 import content_pb2_grpc as pb_grpc
from ctrd.api.containerd.services.leases.v1 import leases_pb2 as lpb
from ctrd.api.containerd.services.leases.v1 import leases_pb2_grpc as lpb_grpc

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]

NS = (("containerd-namespace", "default"),)


def digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


@pytest.fixture
def stub(ctrd):
    ch = grpc.insecure_channel("unix:" + ctrd.address)
    yield pb_grpc.ContentStub(ch)
    ch.close()


def session(stub, *requests, metadata=NS):
    return list(stub.Write(iter(requests), metadata=metadata, timeout=30))


def write_all(stub, ref: str, data: bytes, metadata=NS):
    """Write and commit a blob. Without a lease it is labelled a GC root, as a client keeps
    what it wants (the daemon collects soon after start; a bare blob would be fair game)."""
    leased = any(k == "containerd-lease" for k, _ in metadata)
    labels = {} if leased else {"containerd.io/gc.root": "test"}
    return session(stub,
                   pb.WriteContentRequest(action=pb.STAT, ref=ref, total=len(data),
                                          expected=digest(data)),
                   pb.WriteContentRequest(action=pb.WRITE, ref=ref, offset=0, data=data),
                   pb.WriteContentRequest(action=pb.COMMIT, ref=ref, offset=len(data),
                                          total=len(data), expected=digest(data),
                                          labels=labels),
                   metadata=metadata)


def files_under(path) -> set[str]:
    out = set()
    for root, dirs, files in os.walk(path):
        out.update(os.path.join(root, f) for f in files + dirs)
    return out


def test_write_then_read_ranges(stub):
    data = os.urandom(3 * (1 << 20) + 17)
    resps = write_all(stub, "plain", data)
    assert resps[-1].digest == digest(data) and resps[-1].offset == len(data)
    chunks = list(stub.Read(pb.ReadContentRequest(digest=digest(data)), metadata=NS))
    assert b"".join(c.data for c in chunks) == data
    assert [c.offset for c in chunks][:2] == [0, 1 << 20]
    part = stub.Read(pb.ReadContentRequest(digest=digest(data), offset=100, size=50),
                     metadata=NS)
    assert b"".join(c.data for c in part) == data[100:150]
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Read(pb.ReadContentRequest(digest=digest(data), offset=len(data) + 1),
                       metadata=NS))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Read(pb.ReadContentRequest(digest=digest(data), offset=-1), metadata=NS))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_write_at_a_wrong_offset_is_out_of_range(stub):
    with pytest.raises(grpc.RpcError) as e:
        session(stub, pb.WriteContentRequest(action=pb.STAT, ref="off"),
                pb.WriteContentRequest(action=pb.WRITE, ref="off", offset=0, data=b"abc"),
                pb.WriteContentRequest(action=pb.WRITE, ref="off", offset=10, data=b"x"))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "write @10 must occur at current offset 3" in e.value.details()
    st = stub.Status(pb.StatusRequest(ref="off"), metadata=NS).status
    assert st.offset == 3  # what was written stays for a resume


def test_commit_with_wrong_size_or_digest_publishes_nothing(stub, ctrd):
    data = b"some bytes"
    for bad in (dict(total=3, expected=digest(data)), dict(total=len(data),
                                                           expected=digest(b"other"))):
        ref = f"bad-{bad['total']}"
        with pytest.raises(grpc.RpcError) as e:
            session(stub, pb.WriteContentRequest(action=pb.WRITE, ref=ref, data=data),
                    pb.WriteContentRequest(action=pb.COMMIT, ref=ref, offset=len(data), **bad))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert list(stub.List(pb.ListContentRequest(), metadata=NS)) == []
    blobs = ctrd.root / "io.containerd.content.v1.content" / "blobs"
    assert not blobs.exists() or files_under(blobs) <= {str(blobs / "sha256")}


def test_concurrent_writers_on_one_ref(stub):
    started, release = threading.Event(), threading.Event()

    def holder():
        def reqs():
            yield pb.WriteContentRequest(action=pb.STAT, ref="shared-ref")
            started.set()
            release.wait(10)
        list(stub.Write(reqs(), metadata=NS, timeout=30))

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert started.wait(10)
        import time
        time.sleep(0.3)  # let the first session open its writer
        with pytest.raises(grpc.RpcError) as e:
            session(stub, pb.WriteContentRequest(action=pb.STAT, ref="shared-ref"))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "locked" in e.value.details()
    finally:
        release.set()
        t.join()
    session(stub, pb.WriteContentRequest(action=pb.STAT, ref="shared-ref"))  # free again


@pytest.mark.parametrize("ref", ["../../../../etc/evil", "/abs/path", "a/b/c/../../d",
                                 "nul\0inside", "..", "x" * 5000, "é/🙂/\n\t"])
def test_hostile_refs_never_become_paths(stub, ctrd, ref):
    before = files_under("/etc") | files_under(ctrd.root.parent)
    data = b"hostile " + ref.encode()[:40]
    resps = write_all(stub, ref, data)
    assert resps[-1].digest == digest(data)
    session(stub, pb.WriteContentRequest(action=pb.WRITE, ref=ref + "-pending", data=b"x"))
    statuses = stub.ListStatuses(pb.ListStatusesRequest(), metadata=NS).statuses
    assert [s.ref for s in statuses] == [ref + "-pending"]
    after = files_under("/etc") | files_under(ctrd.root.parent)
    new = {p for p in after - before if not p.startswith(str(ctrd.root))
           and not p.startswith(str(ctrd.state))}
    assert new == set()
    ingest = ctrd.root / "io.containerd.content.v1.content" / "ingest"
    for d in ingest.iterdir():
        assert len(d.name) == 64 and all(c in "0123456789abcdef" for c in d.name)
    stub.Abort(pb.AbortRequest(ref=ref + "-pending"), metadata=NS)


def test_hostile_labels_and_digests(stub):
    data = b"labelled"
    write_all(stub, "l", data)
    req = pb.UpdateRequest(info=pb.Info(digest=digest(data), labels={"k": "v" * 5000}))
    req.update_mask.paths.append("labels.k")
    with pytest.raises(grpc.RpcError) as e:
        stub.Update(req, metadata=NS)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label key and value length (5001 bytes) greater than maximum size" in e.value.details()
    for bad in ("", "sha256:../../etc/passwd", "md5:abc", "sha256:" + "Z" * 64):
        with pytest.raises(grpc.RpcError) as e:
            stub.Info(pb.InfoRequest(digest=bad), metadata=NS)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    with pytest.raises(grpc.RpcError) as e:
        stub.Info(pb.InfoRequest(digest=digest(data)))  # no namespace
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "namespace is required" in e.value.details()


def test_writes_under_a_lease_belong_to_it(ctrd, stub):
    ch = grpc.insecure_channel("unix:" + ctrd.address)
    leases = lpb_grpc.LeasesStub(ch)
    leases.Create(lpb.CreateRequest(id="pull"), metadata=NS)
    md = NS + (("containerd-lease", "pull"),)
    data = b"leased blob"
    write_all(stub, "leased", data, metadata=md)
    res = leases.ListResources(lpb.ListResourcesRequest(id="pull"), metadata=NS).resources
    assert [(r.id, r.type) for r in res] == [(digest(data), "content")]
    with pytest.raises(grpc.RpcError) as e:
        write_all(stub, "nolease", b"z", metadata=NS + (("containerd-lease", "missing"),))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # Deleting the lease with sync collects what only it held.
    leases.Delete(lpb.DeleteRequest(id="pull", sync=True), metadata=NS)
    with pytest.raises(grpc.RpcError) as e:
        stub.Info(pb.InfoRequest(digest=digest(data)), metadata=NS)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    path = (ctrd.root / "io.containerd.content.v1.content" / "blobs" / "sha256" /
            digest(data).split(":")[1])
    assert not path.exists()
    assert ctr(ctrd.address, "version").returncode == 0
    ch.close()
