"""Daemon-side pull from an OCI layout: labels, unpack, GC, and hostile images (no image
record, nothing left referenced)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from ctrd import errdefs
from ctrd.content.local import LocalStore
from ctrd.images import manifest as m
from ctrd.images.pull import LayoutFetcher, layout_root, pull
from ctrd.metadata.store import Metadata
from ctrd.snapshots.native import NativeSnapshotter


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def tar_layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 1_600_000_000, 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class Layout:
    """A small OCI layout written by the test."""

    def __init__(self, path) -> None:
        self.path = str(path)
        os.makedirs(os.path.join(self.path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(self.path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes) -> str:
        d = sha(data)
        with open(os.path.join(self.path, "blobs", "sha256", d[7:]), "wb") as f:
            f.write(data)
        return d

    def image(self, layers: list[dict[str, bytes]], media_type=m.OCI_MANIFEST) -> dict:
        tars = [tar_layer(x) for x in layers]
        gz = [gzip.compress(t, mtime=0) for t in tars]
        config = json.dumps({"architecture": m.host_platform().architecture, "os": "linux",
                             "rootfs": {"type": "layers",
                                        "diff_ids": [sha(t) for t in tars]}}).encode()
        man = json.dumps({"schemaVersion": 2, "mediaType": media_type,
                          "config": {"mediaType": m.OCI_CONFIG, "digest": self.blob(config),
                                     "size": len(config)},
                          "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar"
                                                   "+gzip", "digest": self.blob(g),
                                      "size": len(g)} for g in gz]}).encode()
        return {"mediaType": media_type, "digest": self.blob(man), "size": len(man)}

    def tag(self, desc: dict, tag: str) -> None:
        index_path = os.path.join(self.path, "index.json")
        index = {"schemaVersion": 2, "manifests": []}
        if os.path.exists(index_path):
            index = json.load(open(index_path))
        desc = dict(desc, annotations={"org.opencontainers.image.ref.name": tag})
        index["manifests"].append(desc)
        with open(index_path, "w") as f:
            json.dump(index, f)


@pytest.fixture
def md(tmp_path):
    store = Metadata(str(tmp_path / "meta"), LocalStore(tmp_path / "content"))
    backing = NativeSnapshotter(str(tmp_path / "native"))
    store.add_snapshotter("native", backing)
    yield store
    backing.close()
    store.close()


def do_pull(md, layout: Layout, tag: str, name: str = "img"):
    return pull(md, "ns", name, layout_root(layout.path, tag), LayoutFetcher(layout.path),
                snapshotter="native")


def test_pull_unpacks_labels_and_survives_gc(md, tmp_path):
    lay = Layout(tmp_path / "layout")
    lay.tag(lay.image([{"a": b"1", "gone": b"x"}, {".wh.gone": b"", "b": b"2"}]), "v1")
    r = do_pull(md, lay, "v1")
    assert [i.name for i in md.images.list("ns")] == ["img"]
    man = md.content.info("ns", r.manifest.digest)
    assert "containerd.io/gc.ref.content.config" in man.labels
    assert "containerd.io/gc.ref.content.l.1" in man.labels
    config = man.labels["containerd.io/gc.ref.content.config"]
    assert md.content.info("ns", config).labels == {
        "containerd.io/gc.ref.snapshot.native": r.chain_id}
    layer0 = man.labels["containerd.io/gc.ref.content.l.0"]
    assert md.content.info("ns", layer0).labels["containerd.io/uncompressed"].startswith("sha256:")
    assert md.leases.list("ns") == []  # the pull's lease is gone
    md.collect()
    snaps = md.snapshotters["native"]
    assert snaps.stat("ns", r.chain_id).kind == 3
    assert len(md.content.walk("ns")) == 4
    view = snaps.view("ns", "check", r.chain_id)
    root = view[0].source
    assert sorted(os.listdir(root)) == ["a", "b"]
    # Pulling again is a no-op that finds everything; deleting the image frees everything.
    do_pull(md, lay, "v1")
    snaps.remove("ns", "check")
    md.images.delete("ns", "img")
    md.collect()
    assert md.content.walk("ns") == [] and snaps.walk("ns") == []


def _tamper(lay: Layout, digest: str, data: bytes) -> None:
    with open(os.path.join(lay.path, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)


@pytest.mark.parametrize("case", ["wrong-layer-digest", "truncated-layer", "schema1",
                                  "unknown-media-type", "oversized-manifest", "index-loop",
                                  "bad-json", "wrong-diff-id"])
def test_hostile_images_leave_nothing(md, tmp_path, case):
    lay = Layout(tmp_path / "layout")
    desc = lay.image([{"a": b"1"}, {"b": b"2"}])
    man = json.load(open(os.path.join(lay.path, "blobs", "sha256", desc["digest"][7:])))
    layer = man["layers"][1]["digest"]
    if case == "wrong-layer-digest":
        _tamper(lay, layer, gzip.compress(tar_layer({"evil": b"x"}), mtime=0))
    elif case == "truncated-layer":
        _tamper(lay, layer, open(os.path.join(lay.path, "blobs", "sha256", layer[7:]),
                                 "rb").read()[:10])
    elif case == "schema1":
        desc["mediaType"] = m.DOCKER_SCHEMA1[0]
    elif case == "unknown-media-type":
        desc["mediaType"] = "application/x-nope"
    elif case == "oversized-manifest":
        big = b'{"pad": "' + b"x" * (m.MAX_MANIFEST + 10) + b'"}'
        desc = {"mediaType": m.OCI_MANIFEST, "digest": lay.blob(big), "size": len(big)}
    elif case == "index-loop":
        # An index that (by digest) contains itself cannot be built; nest deeper than allowed.
        for _ in range(10):
            idx = json.dumps({"schemaVersion": 2, "mediaType": m.OCI_INDEX,
                              "manifests": [dict(desc, platform={
                                  "os": "linux",
                                  "architecture": m.host_platform().architecture})]}).encode()
            desc = {"mediaType": m.OCI_INDEX, "digest": lay.blob(idx), "size": len(idx)}
    elif case == "bad-json":
        bad = b"{not json"
        desc = {"mediaType": m.OCI_MANIFEST, "digest": lay.blob(bad), "size": len(bad)}
    elif case == "wrong-diff-id":
        cfg = man["config"]["digest"]
        doc = json.load(open(os.path.join(lay.path, "blobs", "sha256", cfg[7:])))
        doc["rootfs"]["diff_ids"][1] = sha(b"something else")
        new = json.dumps(doc).encode()
        man["config"] = {"mediaType": m.OCI_CONFIG, "digest": lay.blob(new), "size": len(new)}
        mb = json.dumps(man).encode()
        desc = {"mediaType": m.OCI_MANIFEST, "digest": lay.blob(mb), "size": len(mb)}
    lay.tag(desc, "bad")
    with pytest.raises(errdefs.CtrdError) as e:
        do_pull(md, lay, "bad")
    assert e.value.detail, e.value
    assert md.images.list("ns") == []
    assert md.leases.list("ns") == []
    md.collect()
    assert md.content.walk("ns") == []
    assert md.snapshotters["native"].walk("ns") == []
