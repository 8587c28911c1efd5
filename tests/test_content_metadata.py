"""The namespaced content layer: the conformance suite through it, namespace visibility,
shared blobs, labels, and leases on what a writer creates."""

from __future__ import annotations

import hashlib

import pytest

from ctrd import errdefs
from ctrd.content.local import LocalStore
from ctrd.content.testsuite import ContentSuite
from ctrd.metadata.content import NamespacedView
from ctrd.metadata.leases import Resource
from ctrd.metadata.store import Metadata

_open: dict[str, Metadata] = {}


def _metadata(root) -> Metadata:
    # One LMDB environment per root per process (LMDB's rule); a "restart" of the suite gets
    # fresh store objects over it.
    md = _open.get(str(root))
    if md is None:
        md = _open[str(root)] = Metadata(str(root / "meta"), LocalStore(root / "content"))
    md.content.backing = LocalStore(root / "content")
    return md


class TestNamespacedContent(ContentSuite):
    @staticmethod
    def make_store(root):
        return NamespacedView(_metadata(root).content, "suite")


@pytest.fixture
def md(tmp_path):
    m = Metadata(str(tmp_path / "meta"), LocalStore(tmp_path / "content"))
    yield m
    m.close()


def ingest(store, ns, data: bytes, ref="r", lease=None, labels=None) -> str:
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    w = store.writer(ns, ref, len(data), dgst, lease)
    try:
        w.write(data)
        return w.commit(len(data), dgst, labels)
    finally:
        w.close()


def test_content_is_visible_only_where_it_was_committed(md):
    d = ingest(md.content, "a", b"hello")
    assert md.content.info("a", d).size == 5
    with pytest.raises(errdefs.NotFound, match=f"content digest {d}: not found"):
        md.content.info("b", d)
    with pytest.raises(errdefs.NotFound):
        md.content.reader("b", d)
    assert [i.digest for i in md.content.walk("b")] == []


def test_shared_blob_is_linked_without_a_transfer(md):
    d = ingest(md.content, "a", b"shared bytes")
    w = md.content.writer("b", "ref-b", 12, d)
    st = w.status()
    assert (st.offset, st.total) == (12, 12)  # nothing to send
    assert w.commit(12, d) == d
    assert md.content.info("b", d).size == 12
    assert md.content.backing.info(d).size == 12


def test_writer_for_existing_content_is_already_exists(md):
    d = ingest(md.content, "a", b"x")
    with pytest.raises(errdefs.AlreadyExists, match=f"content {d}"):
        md.content.writer("a", "again", 1, d)


def test_labels_are_per_namespace_and_validated(md):
    d = ingest(md.content, "a", b"lbl", labels={"k": "v"})
    ingest(md.content, "b", b"lbl")
    assert md.content.info("a", d).labels == {"k": "v"}
    assert md.content.info("b", d).labels == {}
    md.content.update("a", d, {"x": "1"}, ["labels.x"])
    assert md.content.info("a", d).labels == {"k": "v", "x": "1"}
    md.content.update("a", d, {}, ["labels.k"])
    assert md.content.info("a", d).labels == {"x": "1"}
    with pytest.raises(errdefs.InvalidArgument, match="cannot update \"size\" field"):
        md.content.update("a", d, {}, ["size"])
    with pytest.raises(errdefs.InvalidArgument, match="greater than maximum size"):
        md.content.update("a", d, {"big": "v" * 5000}, ["labels.big"])
    assert md.content.info("a", d).labels == {"x": "1"}


def test_writes_under_a_lease_are_its_resources(md):
    md.leases.create("a", "l1")
    d = ingest(md.content, "a", b"leased", ref="lr", lease="l1")
    assert md.leases.list_resources("a", "l1") == [Resource(d, "content")]
    w = md.content.writer("a", "pending", lease="l1")
    w.write(b"half")
    w.close()
    assert Resource("pending", "ingests") in md.leases.list_resources("a", "l1")
    with pytest.raises(errdefs.NotFound, match="lease does not exist"):
        md.content.writer("a", "nolease", lease="missing")
    assert md.content.list_statuses("a")[0].ref == "pending"
