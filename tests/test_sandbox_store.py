"""The sandbox store (ctrd.metadata.sandboxes; containerd 2.x's core/metadata/sandbox.go) as a
Python object over a real LMDB: records, update field paths, namespaces, GC roots, and
hostile ids and labels (InvalidArgument naming the problem, nothing stored)."""

from __future__ import annotations

import pytest

from ctrd import errdefs
from ctrd.metadata.containers import AnyValue, Runtime
from ctrd.metadata.namespaces import NamespaceStore
from ctrd.metadata.sandboxes import Sandbox, SandboxStore
from ctrd.services.sandbox_store import matcher, sandbox_from_pb, sandbox_to_pb
from support.metadata import md, put  # noqa: F401 - md is a fixture

SPEC = AnyValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b'{"ociVersion":"1"}')


@pytest.fixture
def store(md) -> SandboxStore:  # noqa: F811
    return SandboxStore(md.db)


def _sb(id_: str = "sb1", **kw) -> Sandbox:
    kw.setdefault("runtime", Runtime("io.containerd.runc.v2", AnyValue("google.protobuf.Empty")))
    kw.setdefault("sandboxer", "shim")
    return Sandbox(id=id_, spec=SPEC, **kw)


def test_create_get_list_delete(store):
    made = store.create("default", _sb(labels={"a": "1"},
                                       extensions={"x": AnyValue("t/x", b"\x00\xff")}))
    assert made.created_at == made.updated_at > 0
    got = store.get("default", "sb1")
    assert got == made
    assert got.extensions["x"].value == b"\x00\xff" and got.sandboxer == "shim"
    assert got.runtime.options.type_url == "google.protobuf.Empty"
    store.create("default", _sb("sb0"))
    assert [s.id for s in store.list("default")] == ["sb0", "sb1"]  # id order
    assert store.list("other") == []
    with pytest.raises(errdefs.AlreadyExists, match='sandbox bucket "sb1" already exists'):
        store.create("default", _sb())
    store.delete("default", "sb1")
    with pytest.raises(errdefs.NotFound, match='bucket "sb1" not found'):
        store.get("default", "sb1")
    with pytest.raises(errdefs.NotFound, match='failed to delete sandbox "sb1"'):
        store.delete("default", "sb1")


def test_update_field_paths(store):
    made = store.create("default", _sb(labels={"a": "1", "b": "2"}))
    up = store.update("default", _sb(labels={"a": "9", "c": "3"}), ["labels.a"])
    assert up.labels == {"a": "9", "b": "2"} and up.created_at == made.created_at
    assert up.updated_at >= made.updated_at
    up = store.update("default", _sb(labels={"z": "1"},
                                     extensions={"e": AnyValue("t", b"1")}), [])
    assert up.labels == {"z": "1"} and set(up.extensions) == {"e"}  # a full replace
    up = store.update("default", _sb(), ["extensions.f"])
    assert up.extensions["f"] == AnyValue() and "e" in up.extensions
    new_rt = Runtime("io.containerd.other.v1")
    assert store.update("default", _sb(runtime=new_rt), ["runtime"]).runtime == new_rt
    with pytest.raises(errdefs.InvalidArgument, match="sandbox.Runtime.Name field is immutable"):
        store.update("default", _sb(), [])
    with pytest.raises(errdefs.InvalidArgument,
                       match='cannot update "sandboxer" field on sandbox "sb1"'):
        store.update("default", _sb(sandboxer="podsandbox"), ["sandboxer"])
    assert store.get("default", "sb1").sandboxer == "shim"
    with pytest.raises(errdefs.NotFound):
        store.update("default", _sb("nope"), ["labels"])


@pytest.mark.parametrize("bad, why", [
    ("../x", "must match"), ("", "must not be empty"), ("a" * 77, "greater than maximum length"),
    ("a/b", "must match"), ("x\0y", "must match"), (".hidden", "must match"),
    ("a" * 100_000, "greater than maximum length")])
def test_hostile_ids_are_refused_and_nothing_is_stored(store, md, bad, why):
    with pytest.raises(errdefs.InvalidArgument, match="invalid sandbox ID: identifier") as e:
        store.create("default", _sb(bad))
    assert why in str(e.value) and len(str(e.value)) < 1200
    assert store.list("default") == []
    for op in (lambda: store.get("default", bad), lambda: store.delete("default", bad),
               lambda: store.update("default", _sb(bad), ["labels"])):
        with pytest.raises(errdefs.NotFound):
            op()


def test_hostile_labels_and_extension_keys(store):
    with pytest.raises(errdefs.InvalidArgument, match=r"sandbox.Labels: label key and value "
                                                      r"length \(5001 bytes\) greater than "
                                                      "maximum size"):
        store.create("default", _sb(labels={"k": "v" * 5000}))
    with pytest.raises(errdefs.InvalidArgument, match="Extension keys must not be zero"):
        store.create("default", _sb(extensions={"": AnyValue()}))
    assert store.list("default") == []
    store.create("default", _sb())
    with pytest.raises(errdefs.InvalidArgument, match="greater than maximum size"):
        store.update("default", _sb(labels={"k": "v" * 5000}), ["labels"])
    assert store.get("default", "sb1").labels == {}


def test_filters(store):
    store.create("default", _sb("a1", labels={"app": "web", "x.y": "1"}))
    store.create("default", _sb("b2", labels={"app": "db"}))
    ids = lambda *f: [s.id for s in store.list("default", matcher(list(f)))]  # noqa: E731
    assert ids("id==a1") == ["a1"]
    assert ids("labels.app==db") == ["b2"]
    assert ids("labels.x.y") == ["a1"]
    assert ids("labels.app~=^w", "id==b2") == ["a1", "b2"]  # either filter
    assert ids("runtime.name==io.containerd.runc.v2") == []  # not a sandbox field
    with pytest.raises(errdefs.InvalidArgument, match="parse error"):
        matcher(["!!"])


def test_wire_form_round_trips(store):
    made = store.create("default", _sb(labels={"a": "1"},
                                       extensions={"m": AnyValue("t/m", b"{}")}))
    back = sandbox_from_pb(sandbox_to_pb(made))
    assert back == made
    p = sandbox_to_pb(Sandbox(id="bare"))
    assert p.HasField("runtime") and not p.HasField("spec")  # containerd sends a runtime


def test_namespace_delete_takes_its_sandboxes(md, store):
    ns = NamespaceStore(md.db)
    store.create("gone", _sb())
    store.create("kept", _sb())
    ns.delete("gone")  # sandboxes do not keep a namespace (containerd 2.x)
    assert store.list("gone") == [] and [s.id for s in store.list("kept")] == ["sb1"]


def test_sandbox_labels_are_gc_roots(md, store):  # noqa: F811
    held, loose = put(md, "default", b"held"), put(md, "default", b"loose")
    store.create("default", _sb(labels={"containerd.io/gc.ref.content.x": held}))
    md.collect()
    assert md.content.info("default", held)
    with pytest.raises(errdefs.NotFound):
        md.content.info("default", loose)
    store.delete("default", "sb1")
    md.collect()
    with pytest.raises(errdefs.NotFound):
        md.content.info("default", held)
