"""Garbage collection over many containers: what a collection reuses from the previous one
(container roots, parsed records) never keeps a stale view. Each test collects once to warm
what is reused, then changes the database and collects again."""

from __future__ import annotations

import hashlib
import json

import pytest

from ctrd import errdefs
from ctrd.content.local import LocalStore
from ctrd.metadata import gc
from ctrd.metadata.containers import AnyValue, Container, ContainerStore, Runtime
from ctrd.metadata.db import key, put_json
from ctrd.metadata.store import Metadata
from ctrd.typeurl import OCI_SPEC

REF = "containerd.io/gc.ref.content"
SNAP_REF = "containerd.io/gc.ref.snapshot.native"


@pytest.fixture
def md(tmp_path):
    from ctrd.snapshots.native import NativeSnapshotter

    m = Metadata(str(tmp_path / "meta"), LocalStore(tmp_path / "content"))
    backing = NativeSnapshotter(str(tmp_path / "native"))
    m.add_snapshotter("native", backing)
    yield m
    m.close()
    backing.close()


def put(md, ns: str, data: bytes) -> str:
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    w = md.content.writer(ns, d, len(data), d, None)
    try:
        w.write(data)
        w.commit(len(data), d)
    finally:
        w.close()
    return d


def has_blob(md, ns: str, d: str) -> bool:
    try:
        md.content.info(ns, d)
    except errdefs.NotFound:
        return False
    return md.content.backing.blob_path(d).exists()


def snapshots(md, ns: str = "ns") -> list[str]:
    return sorted(i.name for i in md.snapshotters["native"].walk(ns))


def container(id_: str, **kw) -> Container:
    # A spec of a few KiB, as ctr's: the part of the record GC does not need.
    spec = json.dumps({"ociVersion": "1.0.2", "process": {"args": ["sh"]},
                       "mounts": [{"destination": f"/m{i}"} for i in range(100)]}).encode()
    return Container(id_, runtime=Runtime("io.containerd.runc.v2"),
                     spec=AnyValue(OCI_SPEC, spec), **kw)


def test_updated_container_labels_and_snapshot_key_move_what_it_holds(md):
    cs = ContainerStore(md.db)
    s = md.snapshotters["native"]
    s.prepare("ns", "snap-a")
    a, b = put(md, "ns", b"a"), put(md, "ns", b"b")
    cs.create("ns", container("c1", labels={REF: a}, snapshotter="native",
                              snapshot_key="snap-a"))
    md.collect()
    assert has_blob(md, "ns", a) and not has_blob(md, "ns", b)
    assert snapshots(md) == ["snap-a"]

    # Same record length, another target: the previous collection's roots must not be used.
    b = put(md, "ns", b"b")
    cs.update("ns", container("c1", labels={REF: b}), ["labels"])
    md.collect()
    assert has_blob(md, "ns", b) and not has_blob(md, "ns", a)
    assert snapshots(md) == ["snap-a"]
    s.prepare("ns", "snap-b")
    cs.update("ns", container("c1", snapshot_key="snap-b"), ["snapshotkey"])
    md.collect()
    assert snapshots(md) == ["snap-b"] and has_blob(md, "ns", b)

    # A label added through a single-key path, then one snapshot reference label.
    a = put(md, "ns", b"a")
    s.prepare("ns", "snap-c")
    cs.update("ns", container("c1", labels={f"{REF}.x": a, f"{SNAP_REF}/x": "snap-c"}),
              [f"labels.{REF}.x", f"labels.{SNAP_REF}/x"])
    md.collect()
    assert has_blob(md, "ns", a) and has_blob(md, "ns", b)
    assert snapshots(md) == ["snap-b", "snap-c"]


def test_deleted_container_releases_its_snapshot_and_references(md):
    cs = ContainerStore(md.db)
    s = md.snapshotters["native"]
    s.prepare("ns", "layer")
    s.commit("ns", "top", "layer")
    for i in range(3):
        s.prepare("ns", f"c{i}", "top")
        cs.create("ns", container(f"c{i}", snapshotter="native", snapshot_key=f"c{i}",
                                  labels={REF: put(md, "ns", b"%d" % i)}))
    md.collect()
    assert snapshots(md) == ["c0", "c1", "c2", "top"]
    cs.delete("ns", "c1")
    md.collect()
    assert snapshots(md) == ["c0", "c2", "top"]
    assert not has_blob(md, "ns", "sha256:" + hashlib.sha256(b"1").hexdigest())
    cs.delete("ns", "c0")
    cs.delete("ns", "c2")
    md.collect()
    assert snapshots(md) == []  # the parent went with its last child
    assert list(md.content.backing.walk()) == []


def test_the_same_container_in_two_databases(md, tmp_path):
    """Roots are reused by record bytes, not by key alone: another database (another daemon
    root in the same process) with a container of the same namespace and id holds its own."""
    other = Metadata(str(tmp_path / "meta2"), LocalStore(tmp_path / "content2"))
    try:
        x = put(md, "ns", b"x")
        y = put(other, "ns", b"y")
        ContainerStore(md.db).create("ns", container("c1", labels={REF: x}))
        ContainerStore(other.db).create("ns", container("c1", labels={REF: y}))
        for _ in range(2):
            md.collect()
            other.collect()
            assert has_blob(md, "ns", x) and has_blob(other, "ns", y)
    finally:
        other.close()


HOSTILE = [
    '"', '\\', '\\"', '"}', '","snapshot_key":"decoy","snapshotter":"native"',
    '{"labels":{"containerd.io/gc.ref.content":"DECOY"}}', '\\u0022', 'ünïcödé ☃ \U0001f600',
    '\x00\x1f\x7f',
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_label_text_is_data(md, value):
    """Label keys and values that look like JSON structure or the fields GC reads are only
    label text: nothing but real gc.ref labels and the real snapshot key hold anything."""
    cs = ContainerStore(md.db)
    s = md.snapshotters["native"]
    for k in ("real", "decoy"):
        s.prepare("ns", k)
    kept, decoy = put(md, "ns", b"kept"), put(md, "ns", b"decoy")
    text = value.replace("DECOY", decoy)
    labels = {"plain": text, text: "v", f"{REF}.{text}": kept,
              f"x{REF}": decoy, f"{REF}{text}x": decoy if text[:1] not in "./" else kept}
    cs.create("ns", container("c1", labels=labels, snapshotter="native", snapshot_key="real"))
    for _ in range(2):  # parsed, then reused
        md.collect()
        assert has_blob(md, "ns", kept) and not has_blob(md, "ns", decoy)
        assert snapshots(md) == ["real"]
        decoy = put(md, "ns", b"decoy")
    assert cs.get("ns", "c1").labels == labels


def test_records_written_without_the_store_are_read_as_json(md):
    """A container record with whitespace, another key order, and no snapshot fields (as an
    older writer might have stored it) holds what its JSON says."""
    a = put(md, "ns", b"a")
    md.snapshotters["native"].prepare("ns", "snap")
    raw = ('{ "spec" : {"value": "e30="}, "labels" : {"%s": "%s"},\n'
           ' "snapshotter": "native", "snapshot_key": "snap", "id": "c1" }' % (REF, a))
    with md.db.update() as txn:
        txn.put(key("ns", "c1"), raw.encode(), db=md.db.bucket("containers"))
        put_json(txn, md.db.bucket("containers"), key("ns", "c2"), {"id": "c2"})
    for _ in range(2):
        md.collect()
        assert has_blob(md, "ns", a) and snapshots(md) == ["snap"]


def test_reuse_is_bounded(md, monkeypatch):
    for reuse in gc._REUSE.values():
        monkeypatch.setattr(reuse, "limit", 1)
    a = put(md, "ns", b"a")
    md.snapshotters["native"].prepare("ns", "snap")
    ContainerStore(md.db).create("ns", container("c1", labels={REF: a}, snapshotter="native",
                                                 snapshot_key="snap"))
    for _ in range(2):
        md.collect()
        assert has_blob(md, "ns", a) and snapshots(md) == ["snap"]
    assert all(reuse.entries == {} for reuse in gc._REUSE.values())


def test_changed_snapshot_and_content_records_are_read_afresh(md):
    """Parsed snapshot and content records are reused only while their bytes are the same:
    a label that roots or references something takes effect at the next collection."""
    s = md.snapshotters["native"]
    s.prepare("ns", "snap")
    a, b = put(md, "ns", b"a"), put(md, "ns", b"b")
    md.content.update("ns", a, {"containerd.io/gc.root": "1", REF: b}, ["labels"])
    md.collect()
    assert snapshots(md) == [] and has_blob(md, "ns", a) and has_blob(md, "ns", b)
    s.prepare("ns", "snap")
    s.update("ns", "snap", {"containerd.io/gc.root": "1"}, ["labels"])
    md.content.update("ns", a, {"containerd.io/gc.root": "1"}, ["labels"])
    md.collect()
    assert snapshots(md) == ["snap"] and has_blob(md, "ns", a) and not has_blob(md, "ns", b)
    s.update("ns", "snap", {}, ["labels"])
    md.content.update("ns", a, {}, ["labels"])
    md.collect()
    assert snapshots(md) == [] and not has_blob(md, "ns", a)
