"""Docker archives (``docker save``, skopeo ``docker-archive:``) in and out of ctrd.

Two levels: :func:`ctrd.images.archive.import_archive` against an in-memory content store
(hostile archives: the error names the problem), and ``ctrctl import``/``export`` against a
real ctrd, compared with containerd 1.6 importing the same archives and with skopeo reading
ours. Archives in the Docker format are made by the real skopeo from the OCI layouts of
:mod:`images`, or by hand (moby's layout, hostile variants).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import images
from conftest import CTR, ctr
from ctrd.errdefs import InvalidArgument, NotFound
from ctrd.images import archive
from ctrd.images import manifest as m
from ctrd.images.manifest import Descriptor
from support.archives import add, config_for, layer_tar, moby_archive, sha
from support.cmd import content_digests, ctl, names, ok

SKOPEO = shutil.which("skopeo")


# -- an in-memory content store (the archive code's Store protocol) ---------------------------

class MemStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.labels: dict[str, dict[str, str]] = {}

    def write(self, desc: Descriptor, chunks) -> None:
        data = b"".join(chunks)
        if len(data) != desc.size or sha(data) != desc.digest:
            raise InvalidArgument(f"unexpected digest {sha(data)} for {desc.digest}")
        self.blobs[desc.digest] = data

    def ingest(self, size: int, chunks) -> str:
        data = b"".join(chunks)
        if len(data) != size:
            raise InvalidArgument(f"unexpected size {len(data)} != {size}")
        self.blobs[sha(data)] = data
        return sha(data)

    def read(self, digest: str):
        if digest not in self.blobs:
            raise NotFound(f"content {digest}")
        yield self.blobs[digest]

    def exists(self, desc: Descriptor) -> bool:
        return desc.digest in self.blobs

    def size(self, digest: str) -> int:
        if digest not in self.blobs:
            raise NotFound(f"content {digest}")
        return len(self.blobs[digest])

    def label(self, digest: str, labels: dict[str, str]) -> None:
        self.labels.setdefault(digest, {}).update(labels)

    def compressed(self, diff_id: str):
        for d, labels in self.labels.items():
            if labels.get("containerd.io/uncompressed") == diff_id:
                return Descriptor("", d, len(self.blobs[d]))
        return None


def load(path: Path, store: MemStore | None = None, **kw) -> tuple[archive.Imported, MemStore]:
    store = store or MemStore()
    return archive.import_archive(lambda: open(path, "rb"), store, **kw), store


# -- archives built by hand -------------------------------------------------------------------


# -- import, against an in-memory store -------------------------------------------------------

def test_moby_archive_is_converted_as_containerd_does(tmp_path):
    got = moby_archive(tmp_path / "a.tar", tags=("busybox", "example.com/hand/made:1"),
                       gzip_layer=True)
    result, store = load(tmp_path / "a.tar")
    assert result.format == "docker"
    assert [n for n, _ in result.images] == ["docker.io/library/busybox:latest",
                                             "example.com/hand/made:1"]
    root = result.images[0][1]
    assert root == result.images[1][1]
    assert root.media_type == m.DOCKER_MANIFEST
    data = store.blobs[root.digest]
    # Go's json.Marshal of containerd's struct: field order, no spaces
    config = got["config"]
    expected = (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"application/vnd.docker.container.image.v1+json",'
        f'"digest":"{sha(config)}","size":{len(config)}}},"layers":['
        f'{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip",'
        f'"digest":"{sha(got["layers"][0])}","size":{len(got["layers"][0])}}},'
        f'{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar",'
        f'"digest":"{sha(got["layers"][1])}","size":{len(got["layers"][1])}}}]}}')
    assert data == expected.encode()
    # the generated index: one entry per tag, with containerd's annotations and the platform
    index = json.loads(store.blobs[result.index.digest])
    assert [e["annotations"] for e in index["manifests"]] == [
        {"io.containerd.image.name": "docker.io/library/busybox:latest",
         "org.opencontainers.image.ref.name": "latest"},
        {"io.containerd.image.name": "example.com/hand/made:1",
         "org.opencontainers.image.ref.name": "1"}]
    assert index["manifests"][0]["platform"] == {"architecture": images.HOST_ARCH,
                                                 "os": "linux"}
    # only what manifest.json names went to the store; GC labels keep it together
    assert set(store.blobs) == {sha(config), *map(sha, got["layers"]), root.digest,
                                result.index.digest}
    assert store.labels[root.digest] == {
        "containerd.io/gc.ref.content.config": sha(config),
        "containerd.io/gc.ref.content.l.0": sha(got["layers"][0]),
        "containerd.io/gc.ref.content.l.1": sha(got["layers"][1])}


def test_compressed_layer_already_in_the_store_is_used(tmp_path):
    """As containerd's resolveLayers: a stored blob labelled uncompressed=<layer digest>
    stands in for the uncompressed layer."""
    got = moby_archive(tmp_path / "a.tar")
    store = MemStore()
    gz = gzip.compress(got["tars"][1], mtime=0)
    store.blobs[sha(gz)] = gz
    store.labels[sha(gz)] = {"containerd.io/uncompressed": sha(got["tars"][1])}
    result, _ = load(tmp_path / "a.tar", store)
    man = json.loads(store.blobs[result.images[0][1].digest])
    assert man["layers"][1] == {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                "digest": sha(gz), "size": len(gz)}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


HOSTILE = {
    # name: (how to build, what the error must say)
    "traversal": (dict(extra=[("../../etc/evil", b"x", tarfile.REGTYPE, "")]), "traversal"),
    "absolute": (dict(extra=[("/etc/evil", b"x", tarfile.REGTYPE, "")]), "not a relative"),
    "symlink-out": (dict(extra=[("ccc/layer.tar", b"", tarfile.SYMTYPE, "../../etc/passwd")]),
                    "leaves the archive"),
    "symlink-absolute": (dict(extra=[("ccc/layer.tar", b"", tarfile.SYMTYPE, "/etc/passwd")]),
                         "leaves the archive"),
    "hardlink": (dict(extra=[("ccc/layer.tar", b"", tarfile.LNKTYPE, "aaa/layer.tar")]),
                 "hard link"),
    "device": (dict(extra=[("null", b"", tarfile.CHRTYPE, "")]), "device"),
    "layer-path-traversal": (dict(manifest=[{"Config": "CONFIG", "RepoTags": ["a:1"],
                                             "Layers": ["../../etc/passwd"]}]),
                             "not a path inside the archive"),
    "missing-layer": (dict(manifest=[{"Config": "CONFIG", "RepoTags": ["a:1"],
                                      "Layers": ["aaa/layer.tar", "zzz/layer.tar"]}]),
                      "'zzz/layer.tar' is missing from the archive"),
    "dangling-symlink": (dict(extra=[("ccc/layer.tar", b"", tarfile.SYMTYPE, "../nowhere.tar")],
                              manifest=[{"Config": "CONFIG", "RepoTags": ["a:1"],
                                         "Layers": ["ccc/layer.tar"]}]),
                         "missing from the archive (symlink to 'nowhere.tar')"),
    "symlink-loop": (dict(extra=[("l1", b"", tarfile.SYMTYPE, "l2"),
                                 ("l2", b"", tarfile.SYMTYPE, "l1")],
                          manifest=[{"Config": "CONFIG", "RepoTags": ["a:1"],
                                     "Layers": ["l1"]}]),
                     "too many levels of symlinks"),
    "bad-json": (dict(manifest="not a list"), "must be a list"),
    "no-images": (dict(manifest=[]), "lists no images"),
    "bad-tag": (dict(tags=("UPPER/Case:1",)), "RepoTags"),
    "bad-digest": ("bad-digest", "is named for sha256:"),
    "huge-manifest-json": ("huge", "manifest.json: 4194305 bytes exceeds"),
    "truncated": ("truncated", "truncated or corrupt tar archive"),
    "duplicate": (dict(extra=[("aaa/layer.tar", b"again", tarfile.REGTYPE, "")]),
                  "appears twice"),
}


def build_hostile(path: Path, case: str) -> None:
    how = HOSTILE[case][0]
    if how == "bad-digest":
        got = moby_archive(path)
        cfg = sha(got["config"])[7:] + ".json"
        bad = path.with_suffix(".bad")
        with tarfile.open(path) as src, tarfile.open(bad, "w") as dst:
            for ti in src:
                data = src.extractfile(ti).read() if ti.isreg() else None
                if ti.name == cfg:
                    data = data.replace(b'"sh"', b'"ls"')
                dst.addfile(ti, io.BytesIO(data) if data is not None else None)
        bad.replace(path)
    elif how == "huge":
        with tarfile.open(path, "w") as t:
            add(t, "manifest.json", b" " * ((4 << 20) + 1))
    elif how == "truncated":
        moby_archive(path)
        _truncate(path)
    else:
        kw = dict(how)
        if isinstance(kw.get("manifest"), list):
            got_config = config_for([layer_tar({"hello.txt": b"hello\n"}),
                                     layer_tar({"etc/motd": b"motd\n"})])
            for e in kw["manifest"]:
                if e["Config"] == "CONFIG":
                    e["Config"] = sha(got_config)[7:] + ".json"
        moby_archive(path, **kw)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_docker_archives(tmp_path, case):
    path = tmp_path / f"{case}.tar"
    build_hostile(path, case)
    store = MemStore()
    with pytest.raises(InvalidArgument) as e:
        load(path, store)
    assert HOSTILE[case][1] in e.value.detail, e.value.detail
    # header problems are found before anything is written
    if case not in ("bad-digest", "truncated"):
        assert store.blobs == {}


def test_untagged_image_needs_digest_names(tmp_path):
    moby_archive(tmp_path / "a.tar", tags=())
    with pytest.raises(InvalidArgument, match="has no RepoTags"):
        load(tmp_path / "a.tar")
    result, _ = load(tmp_path / "a.tar", unnamed=True)
    assert result.images == [] and len(result.manifests) == 1


def test_truncated_oci_layout(tmp_path, registry):
    img = registry.pushed["busybox"]
    path = tmp_path / "oci.tar"
    with tarfile.open(path, "w") as t:
        t.add(img.root, arcname=".", recursive=True)
    _truncate(path)
    with pytest.raises(InvalidArgument, match="truncated or corrupt tar archive"):
        load(path)


def test_oci_layout_is_preferred_when_both_are_there(tmp_path, registry):
    """A tar with an OCI layout and a manifest.json (ours, containerd's, docker 25's) is read
    as the layout, as containerd does."""
    img = registry.pushed["busybox"]
    path = tmp_path / "both.tar"
    with tarfile.open(path, "w") as t:
        t.add(img.root, arcname=".", recursive=True)
        add(t, "manifest.json", b"[]")
    result, _ = load(path)
    assert result.format == "oci"
    assert [r.digest for _, r in result.images] == [img.digest]


# -- export, against an in-memory store -------------------------------------------------------

def test_export_writes_manifest_json(tmp_path, registry):
    store = MemStore()
    roots = []
    for name in ("busybox", "busybox-v2s2", "busybox-multi"):
        img = registry.pushed[name]
        for d in img.blobs:
            store.blobs[d] = img.read_blob(d)
        roots.append((registry.ref(name), Descriptor(img.manifest["mediaType"], img.digest,
                                                     img.manifest["size"])))
    out = io.BytesIO()
    archive.export(store.read, out, roots)
    out.seek(0)
    with tarfile.open(fileobj=out) as t:
        members = t.getnames()
        doc = json.loads(t.extractfile("manifest.json").read())
        index = json.loads(t.extractfile("index.json").read())
    assert members == sorted(members)  # containerd writes records in name order
    assert {"oci-layout", "index.json", "manifest.json"} <= set(members)
    # busybox and busybox-multi (its host manifest) are the same manifest: one entry, 2 tags;
    # busybox-v2s2 has the same config and layer but its own manifest: another entry
    oci = registry.pushed["busybox"]
    man = json.loads(oci.read_blob(oci.digest))
    assert sorted(sorted(e["RepoTags"]) for e in doc) == sorted([
        sorted([registry.ref("busybox"), registry.ref("busybox-multi")]),
        [registry.ref("busybox-v2s2")]])
    for e in doc:
        assert e["Config"] == f"blobs/sha256/{man['config']['digest'][7:]}"
        assert e["Layers"] == [f"blobs/sha256/{x['digest'][7:]}" for x in man["layers"]]
    assert len(doc) == 2
    assert [e["annotations"]["io.containerd.image.name"] for e in index["manifests"]] == [
        r for r, _ in roots]
    # the other platform's manifest of the index is not exported by default
    other = [d for d in registry.pushed["busybox-multi"].blobs
             if d not in oci.blobs and d != registry.digest("busybox-multi")]
    assert other and not any(f"blobs/sha256/{d[7:]}" in members for d in other)


# -- against a real ctrd and containerd -------------------------------------------------------

integration = [pytest.mark.integration,
               pytest.mark.usefixtures("ctr_client"),  # ctr 1.6 and ctr 2.3.4
               pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (apt skopeo)")]


def skopeo(*args: str) -> str:
    r = subprocess.run([SKOPEO, "--insecure-policy", *args], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def ls_lines(address: str, namespace: str | None = None) -> list[str]:
    out = ok(ctr(address, "images", "ls", namespace=namespace))
    return sorted(" ".join(line.split()) for line in out.splitlines()[1:] if line.strip())


def snapshot_names(address: str, namespace: str | None = None) -> set[str]:
    out = ok(ctr(address, "snapshots", "ls", namespace=namespace))
    return {line.split()[0] for line in out.splitlines()[1:]
            if line.strip() and line.split()[-1] == "Committed"}


def skopeo_archive(tmp_root: Path, registry, name: str, tag: str) -> Path:
    img = registry.pushed[name]
    path = tmp_root / f"{name}-docker.tar"
    skopeo("copy", f"oci:{img.root}:{images.REFS[name][1]}", f"docker-archive:{path}:{tag}")
    return path


@pytest.mark.parametrize("name", ["busybox", "fat"])
def test_skopeo_archive_imports_as_in_containerd(containerd, ctrd, registry, tmp_root, name):
    integration_checks()
    tag = f"example.com/skopeo/{name}:latest"
    path = skopeo_archive(tmp_root, registry, name, tag)
    ok(ctr(containerd.address, "images", "import", str(path), timeout=300))
    want_ls = ls_lines(containerd.address)
    want_snaps = snapshot_names(containerd.address)
    assert len(want_ls) == 1 and want_ls[0].startswith(tag + " ")

    # ctrctl import: same record, same chain id (snapshot names)
    out = ok(ctl(ctrd, "import", str(path)))
    assert out.split()[0] == tag
    assert ls_lines(ctrd.address) == want_ls
    assert snapshot_names(ctrd.address) == want_snaps
    # the real ctr importing into ctrd (in another namespace) gets the same, too
    ok(ctr(ctrd.address, "images", "import", str(path), namespace="viactr", timeout=300))
    assert ls_lines(ctrd.address, "viactr") == want_ls
    assert snapshot_names(ctrd.address, "viactr") == want_snaps


def integration_checks() -> None:
    if CTR is None:
        pytest.skip("ctr is not installed (apt containerd)")
    if SKOPEO is None:
        pytest.skip("skopeo is not installed (apt skopeo)")


def test_ctr_import_into_ctrd_then_mount(ctrd, registry, tmp_root):
    """``ctr images import`` against ctrd unpacks (ctr's default), so ``ctr images mount``
    finds the snapshot; the same after ``ctrctl import``."""
    integration_checks()
    tag = "example.com/skopeo/busybox:latest"
    path = skopeo_archive(tmp_root, registry, "busybox", tag)
    for how in ("ctr", "ctrctl"):
        ns = f"mount-{how}"
        if how == "ctr":
            ok(ctr(ctrd.address, "images", "import", str(path), namespace=ns, timeout=300))
        else:
            r = ctl(ctrd, "--namespace", ns, "import", str(path))
            ok(r)
            assert "unpacked" in r.stderr
        target = tmp_root / f"mnt-{how}"
        target.mkdir()
        try:
            ok(ctr(ctrd.address, "images", "mount", tag, str(target), namespace=ns))
            assert (target / "bin" / "busybox").is_file()
            assert (target / "etc" / "passwd").is_file()
        finally:
            subprocess.run(["umount", str(target)], capture_output=True)
            ctr(ctrd.address, "images", "unmount", "--rm", str(target), namespace=ns)
            target.rmdir()


def test_export_is_read_by_containerd_and_skopeo(containerd, ctrd, registry, tmp_root):
    integration_checks()
    refs = [registry.ref("busybox"), registry.ref("busybox-v2s2"), registry.ref("fat")]
    for ref in refs:
        ok(ctl(ctrd, "pull", "--plain-http", ref))
    mine = tmp_root / "mine.tar"
    ok(ctl(ctrd, "export", str(mine), *refs))
    # containerd's own export of the same images has the same manifest.json entries
    for ref in refs:
        ok(ctr(containerd.address, "images", "pull", "--plain-http", ref, timeout=300))
    theirs = tmp_root / "theirs.tar"
    ok(ctr(containerd.address, "images", "export", str(theirs), *refs))

    def manifest_json(p: Path) -> list:
        with tarfile.open(p) as t:
            doc = json.loads(t.extractfile("manifest.json").read())
        # two images may share a config (busybox and its schema 2 twin): tags break ties
        return sorted(({**e, "RepoTags": sorted(e["RepoTags"])} for e in doc),
                      key=lambda e: (e["Config"], e["RepoTags"]))

    assert manifest_json(mine) == manifest_json(theirs)
    # one image (no map order in play): byte for byte
    for ref in refs:
        one, other = tmp_root / "one.tar", tmp_root / "other.tar"
        ok(ctl(ctrd, "export", str(one), ref))
        ok(ctr(containerd.address, "images", "export", str(other), ref))
        with tarfile.open(one) as a, tarfile.open(other) as b:
            assert a.extractfile("manifest.json").read() == \
                b.extractfile("manifest.json").read()
    # containerd imports ours (as an OCI layout)
    ok(ctr(containerd.address, "images", "rm", "--sync", *refs))
    ok(ctr(containerd.address, "images", "import", str(mine), timeout=300))
    assert set(refs) <= set(ok(ctr(containerd.address, "images", "ls", "-q")).split())
    # skopeo reads it both as a Docker archive and as an OCI archive
    for name in ("busybox", "busybox-v2s2"):
        img = registry.pushed[name]
        config = json.loads(img.read_blob(json.loads(img.read_blob(img.digest))["config"]
                                          ["digest"]))
        transports = [f"docker-archive:{mine}:{registry.ref(name)}"]
        if name == "busybox":  # skopeo's oci: transport skips Docker-typed manifests
            transports.append(f"oci-archive:{mine}:{images.REFS[name][1]}")
        for transport in transports:
            doc = json.loads(skopeo("inspect", transport))
            assert doc["Architecture"] == images.HOST_ARCH, transport
            assert doc["Env"] == config["config"]["Env"], transport
        # and copies it out whole: the layer digests survive (docker-archive gives the tars)
        out = tmp_root / f"out-{name}"
        skopeo("copy", f"docker-archive:{mine}:{registry.ref(name)}", f"oci:{out}:x")
        man = json.loads((out / "index.json").read_text())["manifests"][0]
        got = json.loads((out / "blobs" / "sha256" / man["digest"][7:]).read_text())
        assert len(got["layers"]) == len(img.diff_ids)


HOSTILE_CTL = ["truncated", "missing-layer", "bad-digest", "symlink-out", "huge-manifest-json"]


def assert_nothing_left(daemon) -> None:
    assert names(daemon) == []
    assert content_digests(daemon) == set()
    assert snapshot_names(daemon.address) == set()
    assert ok(ctr(daemon.address, "snapshots", "ls")).splitlines()[1:] == []
    assert ok(ctr(daemon.address, "leases", "ls", "-q")).split() == []


@pytest.mark.parametrize("case", HOSTILE_CTL + ["wrong-diff-id"])
def test_hostile_docker_archive_leaves_nothing(ctrd, tmp_root, case):
    integration_checks()
    path = tmp_root / f"{case}.tar"
    if case == "wrong-diff-id":
        # well-formed, but the config's diff_ids do not match the layers: unpack refuses it
        # after everything was written, and still no image or content stays
        moby_archive(path, swap_diff_ids=True)
        expected = "wrong diff id"
    else:
        build_hostile(path, case)
        expected = HOSTILE[case][1]
    r = ctl(ctrd, "import", str(path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("ctrctl: cannot import"), r.stderr
    assert expected in r.stderr, r.stderr
    assert_nothing_left(ctrd)


def test_import_options(ctrd, tmp_root):
    integration_checks()
    path = tmp_root / "a.tar"
    moby_archive(path, tags=("example.com/opt/a:1",))
    # --no-unpack: records and content, no snapshots
    out = ok(ctl(ctrd, "import", "--no-unpack", str(path)))
    digest = out.split()[1]
    assert names(ctrd) == ["example.com/opt/a:1"]
    assert snapshot_names(ctrd.address) == set()
    # the default unpacks: two layers, two committed snapshots
    ok(ctl(ctrd, "import", str(path)))
    assert len(snapshot_names(ctrd.address)) == 2
    # --index-name keeps the generated index as an image; --digests names the manifest
    out = ok(ctl(ctrd, "import", "--index-name", "example.com/opt/index:1", "--digests",
                 str(path)))
    got = sorted(names(ctrd))
    assert "example.com/opt/index:1" in got
    assert any(n.startswith("import-") and n.endswith(f"@{digest}") for n in got), got
    check = ok(ctr(ctrd.address, "images", "check"))
    assert "incomplete" not in check
    # every image keeps what it needs through a GC
    before = content_digests(ctrd)
    ok(ctl(ctrd, "gc"))
    assert content_digests(ctrd) == before
    ok(ctl(ctrd, "images", "rm", "--sync", *got))
    assert content_digests(ctrd) == set()
