"""Containers: the store without sockets (validation, field-mask update, immutable fields,
extensions, GC), the ``ctrd_container_create`` hook, and the service through the real ``ctr``
and gRPC side by side with containerd 1.6 (same output, same errors)."""

from __future__ import annotations

import json
import subprocess
import time

import pluggy
import pytest

import conftest
from conftest import CTR, ctr
from ctrd import errdefs
from ctrd.content.local import LocalStore
from ctrd.metadata.containers import AnyValue, Container, ContainerStore, Runtime
from ctrd.metadata.store import Metadata
from ctrd.plugins import hookspec
from ctrd.services.containers import _matcher, run_create_hooks
from ctrd.typeurl import OCI_SPEC
from support.cmd import ok

SPEC = AnyValue(OCI_SPEC, b'{"ociVersion": "1.0.2-dev",  "process": {"args": ["sh"]}}')
OPTS = AnyValue("containerd.runc.v1.Options", b"\x12\x04runc")
LONG_ID = "a" * 77


def new(id_: str = "c1", **kw) -> Container:
    kw.setdefault("runtime", Runtime("io.containerd.runc.v2", OPTS))
    kw.setdefault("spec", SPEC)
    return Container(id_, **kw)


@pytest.fixture
def md(tmp_path):
    m = Metadata(str(tmp_path / "meta"), LocalStore(tmp_path / "content"))
    yield m
    m.close()


@pytest.fixture
def store(md):
    return ContainerStore(md.db)


# --- the store ---------------------------------------------------------------------------

def test_create_get_list_keep_any_bytes_and_drop_empty_labels(store):
    c = store.create("ns", new(labels={"a": "1", "empty": ""}, image="img:1",
                               snapshotter="overlayfs", snapshot_key="c1",
                               extensions={"ext": AnyValue("x.y.Z", b"\x00\xff")}))
    assert c.labels == {"a": "1"} and c.created_at == c.updated_at > 0
    got = store.get("ns", "c1")
    assert got == c
    assert got.spec.value == SPEC.value and got.spec.type_url == OCI_SPEC  # byte for byte
    assert got.runtime.options == OPTS and got.extensions["ext"].value == b"\x00\xff"
    store.create("ns", new("b0"))
    store.create("other", new("zz"))
    assert [x.id for x in store.list("ns")] == ["b0", "c1"]
    assert [x.id for x in store.list("other")] == ["zz"]
    assert store.list("none") == []
    # Runtime options are optional; absent stays absent.
    store.create("ns", new("noopts", runtime=Runtime("io.containerd.runc.v2")))
    assert store.get("ns", "noopts").runtime.options is None


@pytest.mark.parametrize("c, message", [
    (new("Bad/x"), 'create container failed validation: container.ID: identifier "Bad/x" '
                   "must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$: invalid argument"),
    (new(LONG_ID), f'create container failed validation: container.ID: identifier '
                   f'"{LONG_ID}" greater than maximum length (76 characters): invalid argument'),
    (new(""), "create container failed validation: container.ID: identifier must not be "
              "empty: invalid argument"),
    (new(extensions={"": AnyValue()}), "create container failed validation: container."
                                       "Extension keys must not be zero-length: invalid "
                                       "argument"),
    (new(labels={"k": "v" * 5000}), "create container failed validation: containers.Labels: "
                                    "label key and value length (5001 bytes) greater than "
                                    "maximum size (4096 bytes), key: k: invalid argument"),
    (new(runtime=Runtime()), "create container failed validation: container.Runtime.Name "
                             "must be set: invalid argument"),
    (new(spec=None), "create container failed validation: container.Spec must be set: "
                     "invalid argument"),
    (new(snapshot_key="k"), "create container failed validation: container.Snapshotter must "
                            "be set if container.SnapshotKey is set: invalid argument"),
])
def test_create_validation_as_containerd(store, c, message):
    with pytest.raises(errdefs.InvalidArgument) as e:
        store.create("ns", c)
    assert str(e.value) == message
    assert store.list("ns") == []


def test_duplicate_and_missing(store):
    store.create("ns", new())
    with pytest.raises(errdefs.AlreadyExists, match='^container "c1": already exists$'):
        store.create("ns", new(labels={"x": "y"}))
    assert store.get("ns", "c1").labels == {}
    with pytest.raises(errdefs.NotFound,
                       match='^container "nope" in namespace "ns": not found$'):
        store.get("ns", "nope")
    with pytest.raises(errdefs.NotFound, match='^container "nope": not found$'):
        store.update("ns", new("nope"))
    huge = "x" * 100_000  # longer than an LMDB key: still just not there
    with pytest.raises(errdefs.NotFound):
        store.get("ns", huge)
    with pytest.raises(errdefs.InvalidArgument, match=r"greater than maximum length"):
        store.create("ns", new(huge))
    store.delete("ns", "c1")
    with pytest.raises(errdefs.NotFound, match="^container c1: not found$"):
        store.delete("ns", "c1")
    store.create("ns", new())  # the id is free again


def test_update_by_field_mask(store):
    first = store.create("ns", new(labels={"a": "1", "b": "2"}, image="i1",
                                   snapshotter="native", snapshot_key="k1"))
    up = store.update("ns", new(labels={"a": "9", "c": "3"}),
                      ["labels.a", "labels.b", "labels.c"])
    assert up.labels == {"a": "9", "c": "3"}  # b: missing in the request -> removed
    assert up.image == "i1" and up.snapshot_key == "k1" and up.created_at == first.created_at
    assert up.updated_at >= first.updated_at
    spec2 = AnyValue(OCI_SPEC, b"{}")
    up = store.update("ns", new(spec=spec2, image="i2", snapshot_key="k2"),
                      ["spec", "image", "snapshotkey"])
    assert (up.spec, up.image, up.snapshot_key, up.labels) == (spec2, "i2", "k2",
                                                               {"a": "9", "c": "3"})
    # No mask: replace every mutable field; immutable ones must be unchanged.
    up = store.update("ns", new(labels={"z": "1"}, snapshotter="native"))
    assert up.labels == {"z": "1"} and up.image == "" and up.snapshot_key == ""
    assert store.get("ns", "c1") == up


@pytest.mark.parametrize("change, paths, message", [
    ({"snapshotter": "overlayfs"}, [], "container.Snapshotter field is immutable"),
    ({"runtime": Runtime("io.containerd.runsc.v1")}, [],
     "container.Runtime.Name field is immutable"),
    ({"snapshotter": "overlayfs"}, ["snapshotter"], 'cannot update "snapshotter" field on "c1"'),
    ({"runtime": Runtime("x")}, ["runtime"], 'cannot update "runtime" field on "c1"'),
    ({}, ["runtime.name"], 'cannot update "runtime.name" field on "c1"'),
    ({}, ["id"], 'cannot update "id" field on "c1"'),
    ({}, ["created_at"], 'cannot update "created_at" field on "c1"'),
    ({"spec": None}, ["spec"], "update failed validation: container.Spec must be set"),
    ({"labels": {"k": "v" * 5000}}, ["labels.k"],
     "update failed validation: containers.Labels: label key and value length (5001 bytes) "
     "greater than maximum size (4096 bytes), key: k"),
    ({"extensions": {"": AnyValue()}}, ["extensions"],
     "update failed validation: container.Extension keys must not be zero-length"),
])
def test_update_refusals_change_nothing(store, change, paths, message):
    before = store.create("ns", new(labels={"a": "1"}, snapshotter="native",
                                    snapshot_key="c1"))
    want = new(labels={"a": "1"}, snapshotter="native", snapshot_key="c1")
    for k, v in change.items():
        setattr(want, k, v)
    with pytest.raises(errdefs.InvalidArgument) as e:
        store.update("ns", want, paths)
    assert str(e.value) == message + ": invalid argument"
    assert store.get("ns", "c1") == before


def test_extensions_are_only_ever_added_as_in_containerd(store):
    store.create("ns", new(extensions={"a": AnyValue("t.A", b"1")}))
    up = store.update("ns", new(extensions={"b": AnyValue("t.B", b"2")}), ["extensions.b"])
    assert set(up.extensions) == {"a", "b"}
    # A key named but not sent becomes an empty Any, not a removal.
    up = store.update("ns", new(), ["extensions.a"])
    assert up.extensions["a"] == AnyValue() and up.extensions["b"].value == b"2"
    up = store.update("ns", new(extensions={"c": AnyValue("t.C", b"3")}), ["extensions"])
    # A replacement answers with the new map, yet the record keeps the old keys.
    assert set(up.extensions) == {"c"}
    assert set(store.get("ns", "c1").extensions) == {"a", "b", "c"}


def test_filters_use_containerds_fields(store):
    store.create("ns", new("web", image="docker.io/library/nginx:1", labels={"app": "web",
                                                                            "a.b": "dot"}))
    store.create("ns", new("db", image="docker.io/library/postgres:16",
                           runtime=Runtime("io.containerd.runsc.v1"), snapshotter="native",
                           snapshot_key="db"))

    def ids(*fs):
        return [c.id for c in store.list("ns", _matcher(list(fs)))]

    assert ids() == ["db", "web"]
    assert ids("id==web") == ["web"]
    assert ids("image~=postgres") == ["db"]
    assert ids("runtime.name==io.containerd.runsc.v1") == ["db"]
    assert ids("runtime.name") == ["db", "web"] and ids("runtime") == []
    assert ids("labels.app==web", "id==db") == ["db", "web"]  # several filters: OR
    assert ids('labels."a.b"==dot') == ids("labels.a.b==dot") == ["web"]
    assert ids("labels.app!=web") == ["db"]
    # containerd's adaptor has no snapshotter (or snapshot key) field: nothing matches.
    assert ids("snapshotter==native") == []
    with pytest.raises(errdefs.InvalidArgument, match="filters: parse error"):
        _matcher(["id=web"])


def test_a_container_holds_its_snapshot_and_label_refs_until_deleted(md, store, tmp_path):
    from ctrd.snapshots.native import NativeSnapshotter

    backing = NativeSnapshotter(str(tmp_path / "native"))
    try:
        s = md.add_snapshotter("native", backing)
        s.prepare("ns", "l1")
        s.commit("ns", "layer1", "l1")
        s.prepare("ns", "c1", "layer1")      # the container's rootfs
        s.prepare("ns", "extra")             # held through a label reference
        s.prepare("ns", "orphan")
        store.create("ns", new(snapshotter="native", snapshot_key="c1",
                               labels={"containerd.io/gc.ref.snapshot.native": "extra"}))
        md.collect()
        assert sorted(i.name for i in s.walk("ns")) == ["c1", "extra", "layer1"]
        store.delete("ns", "c1")
        md.collect()
        assert s.walk("ns") == [] and list(backing.walk()) == []
    finally:
        backing.close()


# --- the ctrd_container_create hook (in-process) -------------------------------------------

def hooks_with(*plugins) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspec.PROJECT)
    pm.add_hookspecs(hookspec)
    for i, p in enumerate(plugins):
        pm.register(p, name=f"p{i}")
    return pm


class AddEnv:
    def __init__(self, var):
        self.var = var

    @hookspec.hookimpl
    def ctrd_container_create(self, namespace, container, spec):
        spec.setdefault("process", {}).setdefault("env", []).append(f"{self.var}={namespace}")


class Replace:
    @hookspec.hookimpl
    def ctrd_container_create(self, spec):  # a subset of the arguments is fine
        return {**spec, "annotations": {"seen-env": ",".join(spec["process"].get("env", []))}}


class Refuse:
    def __init__(self, exc):
        self.exc = exc

    @hookspec.hookimpl
    def ctrd_container_create(self, container):
        raise self.exc


def test_hooks_chain_and_their_result_is_stored(store):
    # pluggy calls the last registered first: Replace sees AddEnv's change.
    pm = hooks_with(Replace(), AddEnv("A"))
    c = run_create_hooks(pm, "ns", new())
    store.create("ns", c)
    spec = json.loads(store.get("ns", "c1").spec.value)
    assert spec["process"] == {"args": ["sh"], "env": ["A=ns"]}
    assert spec["annotations"] == {"seen-env": "A=ns"}
    assert store.get("ns", "c1").spec.type_url == OCI_SPEC


def test_hooks_that_change_nothing_keep_the_clients_bytes():
    class Noop:
        @hookspec.hookimpl
        def ctrd_container_create(self, spec):
            spec["x"] = 1
            del spec["x"]

    assert run_create_hooks(hooks_with(Noop()), "ns", new()).spec == SPEC
    assert run_create_hooks(None, "ns", new()).spec == SPEC
    # Not OCI JSON: never shown to hooks.
    other = AnyValue("example.com/Other", b"\x01\x02")
    pm = hooks_with(Refuse(AssertionError("must not run")))
    assert run_create_hooks(pm, "ns", new(spec=other)).spec == other
    notjson = AnyValue(OCI_SPEC, b"\xff not json")
    assert run_create_hooks(pm, "ns", new(spec=notjson)).spec == notjson


@pytest.mark.parametrize("exc, kind, text", [
    (errdefs.InvalidArgument("no privileged containers"), errdefs.InvalidArgument,
     'container create hook "p0": no privileged containers: invalid argument'),
    (ValueError("oops"), errdefs.CtrdError,
     'container create hook "p0": ValueError: oops: unknown'),
])
def test_a_failing_hook_fails_the_create(exc, kind, text):
    with pytest.raises(kind) as e:
        run_create_hooks(hooks_with(Refuse(exc)), "ns", new())
    assert str(e.value) == text


def test_a_hook_returning_garbage_fails_the_create():
    class Bad:
        @hookspec.hookimpl
        def ctrd_container_create(self):
            return "not a spec"

    with pytest.raises(errdefs.CtrdError, match='hook "p0": returned str, not a spec dict'):
        run_create_hooks(hooks_with(Bad()), "ns", new())


# --- the service, through the real ctr and gRPC, against containerd ------------------------

def integration(fn):
    """Real daemons and the real ctr (1.6, and 2.3.4 against containerd 2.3.4): root."""
    fn = pytest.mark.usefixtures("ctr_client")(fn)
    return pytest.mark.integration(fn)


def integration_api(fn):
    """The Containers API itself against containerd 1.6 (no ctr). Not against 2.3.4: it
    accepts a container without a spec (its Go proto conversion turns a missing Any into a
    non-nil interface, so its own "container.Spec must be set" check never fires); ctrd keeps
    refusing it, as 1.6 does and as the check intends."""
    fn = pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")(fn)
    return pytest.mark.integration(fn)


def ctr_scripts(registry) -> tuple[list[str], list[str]]:
    """Steps before and after the ``ctr c info`` comparison."""
    ref = registry.ref("busybox")
    before = [
        f"containers create --label a=b {ref} c1",
        f"c create --label a=b --label q=r --env X=1 {ref} c2",
        "c create --rootfs /nonexistent-rootfs c3",
        "c create --rootfs /nonexistent-rootfs c3",      # container already exists
        f"c create {ref} c1",                            # its snapshot already exists
        "c create --rootfs /x Bad/x",                    # invalid id
        "c create --rootfs /x " + LONG_ID,               # too long
        "c create --rootfs /x --label k=" + "v" * 5000 + " c4",  # label too large
        "c ls",
        "c ls -q",
        "c ls labels.a==b",
        "c ls labels.q",
        "c ls id==c2 id==c3",
        "c ls image~=busybox",
        "c ls runtime.name==io.containerd.runc.v2",
        "c ls id=c1",                                    # bad filter
        "--namespace other c ls",
        "--namespace other c create --rootfs /x o1",
        "namespaces rm other",                           # not empty: has a container
        "--namespace other c rm o1",
        "namespaces rm other",
        "c label c1 x=y",
        "c label c1 a=",
        "c label c1 big=" + "v" * 5000,
        "c label nope x=y",
        "c info nope",
        "c info Bad/x",
    ]
    after = [
        "c rm nope",
        "c rm c1 c2 c3",
        "c ls",
        "c rm c1",
        "snapshots ls",
    ]
    return before, after


def info(daemon, *args: str) -> dict:
    """``ctr c info`` as JSON, its timestamps checked and taken out."""
    doc = json.loads(ok(ctr(daemon.address, "c", "info", *args)))
    if "--spec" not in args:
        for k in ("CreatedAt", "UpdatedAt"):
            assert doc.pop(k) > "2001", doc
    return doc


@integration
def test_ctr_containers_commands_match_containerd(ctrd, containerd, registry):
    from support.ctr_compat import _compare

    for d in (ctrd, containerd):  # pull output has timings: not compared
        ok(ctr(d.address, "images", "pull", "--plain-http", registry.ref("busybox"),
               timeout=300))
    before, after = ctr_scripts(registry)
    _compare(ctrd, containerd, before)
    for args in (["c1"], ["c2"], ["c3"], ["--spec", "c2"]):
        ours, theirs = info(ctrd, *args), info(containerd, *args)
        assert ours == theirs, args
    c1 = info(ctrd, "c1")
    assert c1["Labels"] == {"x": "y", "io.containerd.image.config.stop-signal": "SIGTERM"}
    assert c1["Runtime"]["Name"] == "io.containerd.runc.v2"
    assert c1["Runtime"]["Options"]["type_url"] == "containerd.runc.v1.Options"
    assert (c1["Snapshotter"], c1["SnapshotKey"]) == ("overlayfs", "c1")
    assert c1["Spec"]["process"]["args"] == ["sh"] and c1["Image"] == registry.ref("busybox")
    _compare(ctrd, containerd, after)


def grpc_steps(c) -> list:
    """Calls straight to Containers on one daemon (client ``c``); each step's outcome is the
    response (timestamps dropped) or the error's kind and text."""
    from google.protobuf import any_pb2, field_mask_pb2

    from ctrd.api.containerd.services.containers.v1 import containers_pb2 as pb

    def container(id_="g1", runtime="io.containerd.runc.v2", spec=True, **kw):
        p = pb.Container(id=id_, **kw)
        if runtime is not None:
            p.runtime.name = runtime
            p.runtime.options.CopyFrom(any_pb2.Any(type_url=OPTS.type_url, value=OPTS.value))
        if spec:
            p.spec.CopyFrom(any_pb2.Any(type_url=SPEC.type_url, value=SPEC.value))
        return p

    def ext(type_url, value):
        return any_pb2.Any(type_url=type_url, value=value)

    def create(**kw):
        return c.containers.Create(pb.CreateContainerRequest(container=container(**kw)))

    def update(paths, **kw):
        return c.containers.Update(pb.UpdateContainerRequest(
            container=container(**kw), update_mask=field_mask_pb2.FieldMask(paths=paths)))

    def get(id_="g1"):
        return c.containers.Get(pb.GetContainerRequest(id=id_))

    steps = [
        lambda: create(labels={"a": "1", "e": ""}, image="img", snapshotter="native",
                       snapshot_key="s1", extensions={"x": ext("t.X", b"1")}),
        lambda: create(),                                          # already exists
        lambda: create(id_="Bad/x"),
        lambda: create(id_="g2", runtime=None),
        lambda: create(id_="g2", runtime=""),
        lambda: create(id_="g2", spec=False),
        lambda: create(id_="g2", snapshot_key="k"),
        lambda: create(id_="g2", extensions={"": ext("t.X", b"")}),
        lambda: create(id_="g2", labels={"k" * 10: "v" * 5000}),
        lambda: get(),
        lambda: get("nope"),
        lambda: update([], snapshotter="overlayfs", snapshot_key="s1"),   # immutable
        lambda: update([], runtime="io.containerd.runsc.v1", snapshotter="native"),
        lambda: update(["snapshotter"], snapshotter="overlayfs"),
        lambda: update(["runtime"], runtime="other"),
        lambda: update(["runtime.name"], runtime="other"),
        lambda: update(["labels.k"], labels={"k": "v" * 5000}),
        lambda: update(["spec"], spec=False),
        lambda: update(["labels.a", "labels.b"], labels={"b": "2"}),
        lambda: update(["extensions.y"], extensions={"y": ext("t.Y", b"2")}),
        lambda: update(["extensions.z"]),
        lambda: update(["extensions"], extensions={"w": ext("t.W", b"3")}),
        lambda: get(),
        lambda: update(["image", "snapshotkey"], image="img2", snapshot_key="s2"),
        lambda: update([], labels={"only": "this"}, snapshotter="native", image="img3"),
        lambda: get(),
        lambda: update(["labels.a"], id_="nope"),
        lambda: update(["labels.a"], id_=""),
        lambda: c.containers.List(pb.ListContainersRequest(filters=["labels.only==this"])),
        lambda: list(c.containers.ListStream(pb.ListContainersRequest(filters=["id==g1"]))),
        lambda: c.containers.List(pb.ListContainersRequest(filters=["id=="])),
        lambda: c.containers.Delete(pb.DeleteContainerRequest(id="g1")),
        lambda: c.containers.Delete(pb.DeleteContainerRequest(id="g1")),
        lambda: c.containers.List(pb.ListContainersRequest()),
    ]
    out = []
    for step in steps:
        try:
            r = step()
        except errdefs.CtrdError as e:
            out.append((type(e).__name__, str(e)))
            continue
        for msg in r if isinstance(r, list) else [r]:
            for cont in ([msg.container] if hasattr(msg, "container")
                         else getattr(msg, "containers", [])):
                assert cont.created_at.seconds > 0 and cont.updated_at.seconds > 0
                cont.ClearField("created_at")
                cont.ClearField("updated_at")
        out.append(r)
    return out


@integration_api
def test_containers_api_matches_containerd(ctrd, containerd):
    from ctrd.cli.client import Client

    with Client(ctrd.address, "g") as ours, Client(containerd.address, "g") as theirs:
        got, want = grpc_steps(ours), grpc_steps(theirs)
    from support.ctr_compat import _as_16  # the reference is containerd 1.6: its wording

    for i, (o, t) in enumerate(zip(got, want)):
        if isinstance(o, tuple):  # an error: (code, message)
            o = tuple(_as_16(x) if isinstance(x, str) else x for x in o)
        assert o == t, f"step {i}: ctrd gave {o}, containerd gave {t}"


def sync_gc(daemon) -> None:
    """A collection now: delete a fresh lease with --sync."""
    ok(ctr(daemon.address, "leases", "create", "--id", "gc-now"))
    ok(ctr(daemon.address, "leases", "rm", "--sync", "gc-now"))


def snapshot_keys(daemon) -> list[str]:
    out = ok(ctr(daemon.address, "snapshots", "ls"))
    return sorted(line.split()[0] for line in out.splitlines()[1:] if line.strip())


@integration
def test_a_containers_snapshot_outlives_its_image_until_the_container_goes(
        ctrd, containerd, registry):
    ref = registry.ref("busybox")
    seen = {}
    for name, d in (("ctrd", ctrd), ("containerd", containerd)):
        ok(ctr(d.address, "images", "pull", "--plain-http", ref, timeout=300))
        ok(ctr(d.address, "c", "create", ref, "k1"))
        ok(ctr(d.address, "images", "rm", "--sync", ref))
        assert ok(ctr(d.address, "content", "ls", "-q")) == "", name
        kept = snapshot_keys(d)
        sync_gc(d)
        assert snapshot_keys(d) == kept, name   # the container holds k1 and its parents
        ok(ctr(d.address, "c", "rm", "--keep-snapshot", "k1"))
        sync_gc(d)
        seen[name] = (kept, snapshot_keys(d))
    assert "k1" in seen["ctrd"][0] and len(seen["ctrd"][0]) == 2  # k1 and the one layer
    assert seen["ctrd"][1] == []
    assert seen["ctrd"] == seen["containerd"]


def container_events(daemon, actions: list[list[str]]) -> list[tuple[str, str, dict]]:
    """(namespace, topic, event) of every /containers/ event ``ctr events`` printed while
    ``actions`` (ctr command lines) ran."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([conftest.CTR, "--address", daemon.address, "events"], stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        try:
            # Subscribed once a namespace event comes through.
            deadline = time.monotonic() + 20
            i = 0
            while True:
                ok(ctr(daemon.address, "namespaces", "label", "evprobe", f"n={i}"))
                i += 1
                out.seek(0)
                if "/namespaces/" in out.read():
                    break
                assert time.monotonic() < deadline, "ctr events saw nothing"
                time.sleep(0.1)
            for args in actions:
                ok(ctr(daemon.address, *args))
            ok(ctr(daemon.address, "namespaces", "label", "evprobe", "end=1"))
            deadline = time.monotonic() + 20
            while True:
                out.seek(0)
                text = out.read()
                if '"end":"1"' in text or '"end": "1"' in text:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(10)
    found = []
    for line in text.splitlines():
        # "<date> <time> <offset> <zone> <namespace> <topic> <event as JSON>"
        fields = line.split()
        for j, f in enumerate(fields):
            if f.startswith("/containers/"):
                found.append((fields[j - 1], f, json.loads(" ".join(fields[j + 1:]))))
                break
    return found


@integration
def test_create_update_delete_publish_events_as_containerd(ctrd, containerd):
    actions = [["c", "create", "--rootfs", "--label", "a=b", "/nonexistent", "e1"],
               ["c", "label", "e1", "x=y"],
               ["c", "rm", "e1"]]
    ours = container_events(ctrd, actions)
    assert [t for _, t, _ in ours] == ["/containers/create", "/containers/update",
                                       "/containers/delete"]
    assert ours[0][0] == "default" and ours[0][2]["id"] == "e1"
    assert ours[1][2]["labels"] == {"a": "b", "x": "y"}
    assert ours == container_events(containerd, actions)


@integration
def test_a_third_party_plugin_adjusts_the_spec_ctr_stores(start_ctrd, registry, tmp_root):
    from support.plugins import pip_install

    site = tmp_root / "site"
    pip_install("spec-plugin", site, tmp_root)
    d = start_ctrd(env={"PYTHONPATH": str(site)})
    ref = registry.ref("busybox")
    ok(ctr(d.address, "images", "pull", "--plain-http", ref, timeout=300))
    ok(ctr(d.address, "c", "create", "--env", "FROM_CTR=1", ref, "h1"))
    spec = info(d, "--spec", "h1")
    env = spec["process"]["env"]
    assert "FROM_CTR=1" in env and env[-1] == "SPEC_DEMO=default/h1"
    assert spec["annotations"]["spec-demo.example.com/adjusted"] == "true"
    assert spec["process"]["args"] == ["sh"]  # the rest is ctr's spec
    assert info(d, "h1")["Spec"] == spec

    # A refusal fails the create with the plugin's words and kind; nothing is stored.
    r = ctr(d.address, "c", "create", "--rootfs", "--label", "spec-demo/refuse=policy says no",
            "/x", "h2")
    assert r.returncode == 1
    assert ('container create hook "spec-demo": spec-demo refuses container \'h2\': '
            "policy says no: invalid argument") in r.stderr, r.stderr
    # A plugin bug is an unknown error that names the plugin.
    r = ctr(d.address, "c", "create", "--label", "spec-demo/crash=1", ref, "h3")
    assert r.returncode == 1
    assert 'container create hook "spec-demo": RuntimeError: spec-demo crashed' in r.stderr
    assert ok(ctr(d.address, "c", "ls", "-q")).split() == ["h1"]
    # h3's snapshot was ctr's, under its lease: garbage once the create failed.
    sync_gc(d)
    assert "h3" not in snapshot_keys(d) and "h1" in snapshot_keys(d)
    assert ok(ctr(d.address, "version"))  # still serving
