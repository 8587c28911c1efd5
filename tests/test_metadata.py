"""The LMDB metadata store: schema version, namespaces, atomicity."""

from __future__ import annotations

import pytest

from ctrd import errdefs
from ctrd.metadata import namespaces as ns_mod
from ctrd.metadata.db import DB, SCHEMA_VERSION, key
from ctrd.metadata.namespaces import NamespaceStore


@pytest.fixture
def db(tmp_path):
    d = DB(str(tmp_path / "meta"))
    yield d
    d.close()


def test_schema_version_is_recorded_and_checked(tmp_path, db):
    with db.view() as txn:
        assert txn.get(b"schema", db=db.bucket("meta")) == str(SCHEMA_VERSION).encode()
    with db.update() as txn:
        txn.put(b"schema", b"99", db=db.bucket("meta"))
    db.close()
    with pytest.raises(errdefs.FailedPrecondition, match="schema version 99"):
        DB(str(tmp_path / "meta"))


def test_namespace_lifecycle(db):
    store = NamespaceStore(db)
    store.create("a", {"x": "1", "empty": ""})
    assert store.get("a").labels == {"x": "1"}
    with pytest.raises(errdefs.AlreadyExists, match='namespace "a": already exists'):
        store.create("a")
    store.set_labels("a", {"y": "2"}, replace=False)
    assert store.get("a").labels == {"x": "1", "y": "2"}
    store.set_labels("a", {"x": ""}, replace=False)
    assert store.get("a").labels == {"y": "2"}
    store.set_labels("a", {"z": "3"}, replace=True)
    assert store.get("a").labels == {"z": "3"}
    assert [n.name for n in store.list()] == ["a"]
    store.delete("a")
    with pytest.raises(errdefs.NotFound, match='namespace "a": not found'):
        store.delete("a")
    # Get of a missing namespace reads as empty (containerd's behaviour; ctr pull relies on it).
    assert store.get("a").labels == {}


@pytest.mark.parametrize("bucket,what", ns_mod.NAMESPACED_BUCKETS)
def test_delete_refuses_a_namespace_that_still_holds_objects(db, bucket, what):
    """Each bucket of the real map keeps its namespace while it holds a record of it."""
    store = NamespaceStore(db)
    store.create("busy")
    store.create("busy2")
    with db.update() as txn:
        txn.put(key("busy", "obj"), b"{}", db=db.bucket(bucket, txn))
        txn.put(key("busy2", "obj"), b"{}", db=db.bucket(bucket, txn))
    with pytest.raises(errdefs.FailedPrecondition,
                       match=f'namespace "busy" must be empty, but it still has {what}: '
                             'failed precondition$'):
        store.delete("busy")
    # A namespace whose name is a prefix of another's is not confused with it.
    store.create("bus")
    store.delete("bus")
    # Emptied, it goes.
    with db.update() as txn:
        txn.delete(key("busy", "obj"), db=db.bucket(bucket, txn))
    store.delete("busy")
    assert [n.name for n in store.list()] == ["busy2"]


def test_a_failed_transaction_leaves_nothing(db):
    store = NamespaceStore(db)
    with pytest.raises(RuntimeError):
        with db.update() as txn:
            store._put(txn, "half", {"a": "b"})
            raise RuntimeError("crash in the middle")
    assert [n.name for n in store.list()] == []


@pytest.mark.parametrize("labels", [{"k": "v" * 4096}, {"k" * 4000: "v" * 97},
                                    {"é" * 2048: "x"}])
def test_label_size_limit(db, labels):
    with pytest.raises(errdefs.InvalidArgument, match="greater than maximum size"):
        NamespaceStore(db).create("x", labels)
    assert NamespaceStore(db).list() == []


def test_errdefs_round_trip():
    for cls in (errdefs.NotFound, errdefs.AlreadyExists, errdefs.InvalidArgument,
                errdefs.FailedPrecondition, errdefs.Unavailable, errdefs.NotImplemented_):
        err = cls('thing "x"')
        code, message = errdefs.to_status(err)
        back = errdefs.from_status(code, message)
        assert type(back) is cls and back.detail == 'thing "x"' and str(back) == str(err)
    assert errdefs.to_status(ValueError("odd")) == (errdefs.UNKNOWN, "odd")
    assert type(errdefs.from_status(errdefs.NOT_FOUND, "not found")) is errdefs.NotFound
