"""Honest sizes: a manifest whose layer descriptor states a size larger or smaller than the
blob is refused on every path that writes or uses content (ctrctl import, with and without
unpack; ``ctr images import`` through Diff.Apply; Transfer import; the daemon-side pull, the
CRI and Transfer pulls; a blob already in content under a lying descriptor), and a content
commit with an expected size refuses other sizes. Nothing stays: no image, snapshot, lease or
ingest, and after a GC no content."""

from __future__ import annotations

import pytest

from conftest import CTR, ctr
from support.cmd import ctl, ok
from support.hostile import image, oci_archive, sha, small_layer
from support.hostile import static_registry  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
needs_ctr = pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")
LIES = pytest.mark.parametrize("lie", [+1, -1, +4096], ids=["larger", "smaller", "page-larger"])


def _lying(lie: int):
    layer = small_layer({"etc/hello": b"hello\n" * 100})
    return layer, image([layer], size_lies={0: lie})


def _nothing_left(d, ns: str = "default") -> None:
    def listed(*args: str) -> list[str]:
        return ok(ctr(d.address, *args, namespace=ns)).splitlines()

    assert listed("images", "ls", "-q") == []
    assert listed("snapshots", "ls")[1:] == []
    assert listed("leases", "ls", "-q") == []
    assert listed("content", "active")[1:] == []
    ok(ctl(d, "gc"))
    assert listed("content", "ls", "-q") == []


def _says_size(text: str, layer) -> None:
    assert sha(layer.blob) in text and "unexpected" in text and "size" in text, text


@LIES
@pytest.mark.parametrize("unpack", [True, False], ids=["unpack", "no-unpack"])
def test_ctrctl_import_refuses_a_size_lie(ctrd, tmp_path, lie, unpack):
    layer, img = _lying(lie)
    path = oci_archive(tmp_path / "lie.tar", img, "example.com/lie:1")
    r = ctl(ctrd, "import", *([] if unpack else ["--no-unpack"]), str(path))
    assert r.returncode == 1, r.stdout
    _says_size(r.stderr, layer)
    assert f"expected {len(layer.blob) + lie}" in r.stderr, r.stderr
    _nothing_left(ctrd)


@needs_ctr
@LIES
def test_ctr_import_refused_by_diff_apply(ctrd, tmp_path, lie):
    """Debian's ctr writes the blobs itself and asks Diff.Apply with the manifest's
    descriptor: the differ refuses the lie before writing a byte. (ctr keeps the image it
    created before unpacking: its own behaviour.)"""
    layer, img = _lying(lie)
    path = oci_archive(tmp_path / "lie.tar", img, "example.com/lie:ctr")
    r = ctr(ctrd.address, "images", "import", str(path))
    assert r.returncode != 0, r.stdout
    _says_size(r.stderr, layer)
    assert ok(ctr(ctrd.address, "snapshots", "ls")).splitlines()[1:] == []


@LIES
def test_transfer_import_refuses_a_size_lie(ctrd, tmp_path, lie):
    from transfer_util import ctr2, need_ctr2

    need_ctr2()
    layer, img = _lying(lie)
    path = oci_archive(tmp_path / "lie.tar", img, "example.com/lie:xfer")
    r = ctr2(ctrd.address, "images", "import", str(path), namespace="default")
    assert r.returncode != 0, r.stdout
    _says_size(r.stderr, layer)
    _nothing_left(ctrd)


@LIES
def test_daemon_pull_refuses_a_size_lie(ctrd, static_registry, lie):
    layer, img = _lying(lie)
    ref = static_registry.add("test/lie", "1", img)
    r = ctl(ctrd, "pull", "--plain-http", ref, timeout=120)
    assert r.returncode == 1, r.stdout
    assert sha(layer.blob) in r.stderr, r.stderr
    _nothing_left(ctrd)


@LIES
def test_transfer_pull_refuses_a_size_lie(ctrd, static_registry, lie):
    from transfer_util import ctr2, need_ctr2

    need_ctr2()
    layer, img = _lying(lie)
    ref = static_registry.add("test/lie", "xfer", img)
    r = ctr2(ctrd.address, "images", "pull", "--plain-http", ref, namespace="default")
    assert r.returncode != 0, r.stdout
    assert sha(layer.blob) in r.stderr, r.stderr
    _nothing_left(ctrd)


@LIES
def test_cri_pull_refuses_a_size_lie(ctrd, static_registry, lie):
    from cri_client import CRIClient, rpc_error

    layer, img = _lying(lie)
    ref = static_registry.add("test/lie", "cri", img)
    with CRIClient(ctrd.address) as c:
        err = rpc_error(c.pull, ref)
        assert sha(layer.blob) in err.details(), err.details()
        assert [i for i in c.list_images() if ref in i.repo_tags] == []
    _nothing_left(ctrd, "k8s.io")


@LIES
def test_blob_already_in_content_under_a_lying_descriptor(ctrd, static_registry, lie):
    """The layer is in content (an honest image has it); a second image names the same blob
    with another size: refused, not taken as "exists"."""
    layer, liar = _lying(lie)
    honest = image([layer])
    ok(ctl(ctrd, "pull", "--plain-http", static_registry.add("test/honest", "1", honest),
           timeout=120))
    r = ctl(ctrd, "pull", "--plain-http", static_registry.add("test/lie", "2", liar),
            timeout=120)
    assert r.returncode == 1, r.stdout
    assert sha(layer.blob) in r.stderr and "size" in r.stderr, r.stderr
    assert ok(ctr(ctrd.address, "images", "ls", "-q")).split() == [
        f"{static_registry.address}/test/honest:1"]


@pytest.mark.parametrize("lie", [+1, -1], ids=["larger", "smaller"])
@pytest.mark.parametrize("announced", ["at-open", "at-commit"])
def test_content_commit_with_expected_size_refuses_others(ctrd, lie, announced):
    """Content.Write: the size announced with the first STAT or with COMMIT is checked by the
    daemon at commit; no blob appears."""
    from ctrd import errdefs
    from ctrd.cli.client import Client

    data = b"some content\n" * 10
    size = len(data) + lie
    with Client(ctrd.address) as c:
        w = c.writer("sized-ref", total=size if announced == "at-open" else 0)
        try:
            w.offset = 0
            w.write(data)
            # containerd's metadata writer's words (the service commits with the size
            # announced at open when COMMIT gives none, as containerd's does)
            words = f'"sized-ref" failed size validation: {len(data)} != {size}'
            with pytest.raises(errdefs.FailedPrecondition, match=words):
                w.commit(total=size if announced == "at-commit" else 0)
        finally:
            w.close()
    assert sha(data) not in ok(ctr(ctrd.address, "content", "ls", "-q"))
