"""ctrctl images (ls, rm, tag, inspect), push, export and import against a real ctrd, with
the test registry of :mod:`images` and the real ``ctr`` as the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import images
from conftest import CTR, ctr
from support.archives import _layout, _minimal_image, _sha
from support.cmd import content_digests, ctl, names, ok

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]


def pull(daemon, ref: str) -> None:
    ok(ctl(daemon, "pull", "--plain-http", ref))


# -- images ls / rm / tag / inspect -----------------------------------------------------------

def test_images_ls_matches_ctr(ctrd, registry):
    for name in ("busybox", "busybox-multi"):
        pull(ctrd, registry.ref(name))
    records = {r["name"]: r for r in json.loads(ok(ctl(ctrd, "images", "ls", "--format",
                                                       "json")))}
    assert set(records) == {registry.ref("busybox"), registry.ref("busybox-multi")}
    ctr_rows = {line.split()[0]: line.split()
                for line in ok(ctr(ctrd.address, "images", "ls")).splitlines()[1:]}
    for ref, r in records.items():
        assert r["target"]["digest"] == registry.digest(
            "busybox" if ref.endswith(":latest") else "busybox-multi")
        assert ctr_rows[ref][1] == r["target"]["mediaType"]
        assert ctr_rows[ref][2] == r["target"]["digest"]
        assert r["size"] and r["size"] > 0
    single = records[registry.ref("busybox")]
    multi = records[registry.ref("busybox-multi")]
    host = f"linux/{images.HOST_ARCH}"
    assert single["platforms"] == [host]
    assert host in multi["platforms"] and len(multi["platforms"]) == 2
    # the index adds its own size to the same manifest + config + layer
    assert multi["size"] > single["size"]
    # the table, the aliases, and filters
    table = ok(ctl(ctrd, "i", "list"))
    assert table.splitlines()[0].split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS",
                                             "LABELS"]
    assert ok(ctl(ctrd, "image", "ls", "-q", "name~=multi")).split() == [
        registry.ref("busybox-multi")]


def test_images_tag_inspect_rm(ctrd, registry):
    ref = registry.ref("busybox")
    pull(ctrd, ref)
    assert ok(ctl(ctrd, "images", "tag", ref, "example.com/copy:1")).strip() == \
        "example.com/copy:1"
    r = ctl(ctrd, "images", "tag", ref, "example.com/copy:1")
    assert r.returncode == 1 and "already exists" in r.stderr
    ok(ctl(ctrd, "images", "tag", "--force", ref, "example.com/copy:1"))
    assert sorted(names(ctrd)) == sorted([ref, "example.com/copy:1"])
    # ctr sees the tag too
    assert "example.com/copy:1" in ok(ctr(ctrd.address, "images", "ls", "-q")).split()

    doc = json.loads(ok(ctl(ctrd, "images", "inspect", "example.com/copy:1")))
    assert doc["image"]["name"] == "example.com/copy:1"
    assert doc["image"]["target"]["digest"] == registry.digest("busybox")
    assert len(doc["manifest"]["layers"]) == 1
    assert doc["config"]["rootfs"]["diff_ids"] == registry.pushed["busybox"].diff_ids

    r = ctl(ctrd, "images", "inspect", "nope:1")
    assert r.returncode == 1 and r.stderr.startswith("ctrctl: ")

    before = content_digests(ctrd)
    assert before
    # a missing ref is a warning, the others are removed; --sync collects the content
    r = ctl(ctrd, "images", "rm", "--sync", ref, "example.com/copy:1", "nope:1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [ref, "example.com/copy:1"]
    assert "nope:1" in r.stderr
    assert names(ctrd) == []
    assert content_digests(ctrd) == set()


def test_images_inspect_index(ctrd, registry):
    ref = registry.ref("busybox-multi")
    pull(ctrd, ref)
    doc = json.loads(ok(ctl(ctrd, "i", "inspect", ref)))
    assert doc["image"]["target"]["digest"] == registry.digest("busybox-multi")
    assert len(doc["index"]["manifests"]) == 2
    assert doc["config"]["architecture"] == images.HOST_ARCH


# -- push -------------------------------------------------------------------------------------

def test_push_then_pull_back_into_a_fresh_daemon(start_ctrd, registry):
    first = start_ctrd(name="first")
    src = registry.ref("busybox")
    pull(first, src)
    dst = f"{registry.address}/pushed/busybox:copy"
    r = ctl(first, "push", "--plain-http", dst, src)
    out = ok(r)
    assert registry.digest("busybox") in out
    # again: every blob is there already, only the manifest is put
    assert "0 blobs uploaded" in ok(ctl(first, "push", "--plain-http", dst, src))

    second = start_ctrd(name="second")
    by_digest = f"{registry.address}/pushed/busybox@{registry.digest('busybox')}"
    pull(second, by_digest)
    check = ok(ctr(second.address, "images", "check"))
    assert "complete" in check and "incomplete" not in check
    # the tag resolves too, to the same digest
    pull(second, dst)
    records = json.loads(ok(ctl(second, "images", "ls", "--format", "json")))
    assert {r["target"]["digest"] for r in records} == {registry.digest("busybox")}


def test_push_missing_image_and_digest_mismatch(ctrd, registry):
    r = ctl(ctrd, "push", "--plain-http", f"{registry.address}/pushed/none:1")
    assert r.returncode == 1 and r.stderr.startswith("ctrctl: ") and "not found" in r.stderr
    pull(ctrd, registry.ref("busybox"))
    wrong = "sha256:" + "0" * 64
    r = ctl(ctrd, "push", "--plain-http", f"{registry.address}/pushed/x@{wrong}",
            registry.ref("busybox"))
    assert r.returncode == 1 and "names digest" in r.stderr


def test_push_index_with_unpulled_platform_fails_clearly(ctrd, registry):
    pull(ctrd, registry.ref("busybox-multi"))
    r = ctl(ctrd, "push", "--plain-http", f"{registry.address}/pushed/multi:1",
            registry.ref("busybox-multi"))
    assert r.returncode == 1 and "must be in the content store" in r.stderr, r.stderr


# -- export / import --------------------------------------------------------------------------

def check_complete(daemon) -> str:
    out = ok(ctr(daemon.address, "images", "check"))
    rows = [line for line in out.splitlines()[1:] if line.strip()]
    assert rows and all("complete" in r and "incomplete" not in r for r in rows), out
    return out


@pytest.mark.parametrize("name", ["busybox", "busybox-multi", "fat"])
def test_export_rm_import_round_trip(ctrd, registry, tmp_root, name):
    ref = registry.ref(name)
    pull(ctrd, ref)
    before = content_digests(ctrd)
    archive = tmp_root / "image.tar"
    ok(ctl(ctrd, "export", str(archive), ref))
    ok(ctl(ctrd, "images", "rm", "--sync", ref))
    assert content_digests(ctrd) == set()
    out = ok(ctl(ctrd, "import", str(archive)))
    assert out.split() == [ref, registry.digest(name)]
    assert content_digests(ctrd) == before
    check_complete(ctrd)
    # the image keeps its content: a GC removes nothing (the GC labels were set)
    ok(ctl(ctrd, "gc"))
    assert content_digests(ctrd) == before
    # importing again updates the record in place
    ok(ctl(ctrd, "import", str(archive)))
    assert names(ctrd) == [ref]


def test_import_of_containerd_export(containerd, ctrd, registry, tmp_root):
    refs = [registry.ref("busybox"), registry.ref("busybox-v2s2")]
    for ref in refs:
        ok(ctr(containerd.address, "images", "pull", "--plain-http", ref, timeout=300))
    archive = tmp_root / "from-containerd.tar"
    ok(ctr(containerd.address, "images", "export", str(archive), *refs))
    out = ok(ctl(ctrd, "import", str(archive)))
    assert sorted(out.splitlines()) == sorted(
        f"{registry.ref(n)} {registry.digest(n)}" for n in ("busybox", "busybox-v2s2"))
    check_complete(ctrd)
    # and the other way round: ctr imports what ctrctl exports
    mine = tmp_root / "from-ctrd.tar"
    ok(ctl(ctrd, "export", str(mine), *refs))
    ok(ctr(containerd.address, "images", "rm", "--sync", *refs))
    ok(ctr(containerd.address, "images", "import", str(mine), timeout=300))
    assert set(refs) <= set(ok(ctr(containerd.address, "images", "ls", "-q")).split())


def _tar(path: Path, entries: list[tuple[str, bytes]], kind: bytes = b"0") -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            if kind == b"2":
                ti.type, ti.linkname, ti.size = tarfile.SYMTYPE, "/etc/passwd", 0
            tar.addfile(ti, io.BytesIO(data))
    return path


HOSTILE = {
    "traversal": lambda: [("../../etc/evil", b"x")],
    "absolute": lambda: [("/etc/evil", b"x")],
    "symlink": "symlink",
    "unexpected": lambda: [("hello.txt", b"x")],
    "big-index": lambda: [("index.json", b" " * ((4 << 20) + 1))],
    "no-index": lambda: [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')],
    "wrong-digest": "wrong-digest",
    "missing-blob": "missing-blob",
    "bomb": "bomb",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archives_create_no_image(ctrd, tmp_root, case):
    path = tmp_root / f"{case}.tar"
    config, man, index = _minimal_image()
    if case == "symlink":
        _tar(path, [("blobs/sha256/" + "a" * 64, b"")], kind=b"2")
    elif case == "wrong-digest":
        entries = _layout([config, man], index)
        entries[1] = (entries[1][0], config + b" ")  # the config's bytes do not match
        _tar(path, entries)
    elif case == "missing-blob":
        _tar(path, _layout([man], index))  # no config
    elif case == "bomb":
        _tar(path, [(f"blobs/sha256/{_sha(str(i).encode())}", b"") for i in range(10_001)])
    else:
        _tar(path, HOSTILE[case]())
    r = ctl(ctrd, "import", str(path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("ctrctl: cannot import"), r.stderr
    expected = {"traversal": "traversal", "absolute": "not a relative path",
                "symlink": "no links", "unexpected": "not part of an OCI image layout",
                "big-index": "limit", "no-index": "no index.json",
                "wrong-digest": "digest", "missing-blob": "missing",
                "bomb": "tar bomb"}[case]
    assert expected in r.stderr, r.stderr
    assert names(ctrd) == []
    assert content_digests(ctrd) == set()
    # the well-formed version of the same image imports fine
    if case == "wrong-digest":
        _tar(path, _layout([config, man], index))
        assert ok(ctl(ctrd, "import", str(path))).split()[0] == "example.com/evil:1"
