"""ctrd.diff: layer decompression and application, functional and hostile.

The hostile corpus ports containerd's archive TestBreakouts (tar_test.go): each case either
fails with InvalidArgument or ends as containerd's validator expects, and in every case
nothing outside the target changed (a sentinel directory beside it is compared before/after).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import time

import pytest
import zstandard

from ctrd.diff.apply import ApplyResult, apply_layer, apply_layer_blob
from ctrd.diff.compression import (
    MEDIA_TYPE_DOCKER_LAYER,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER_ZSTD,
    compression_of,
    open_decompressed,
)
from ctrd.errdefs import InvalidArgument

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (chown, mknod, trusted xattrs)")
UID, GID = os.getuid(), os.getgid()
MTIME = 1_600_000_000


# -- building tars ----------------------------------------------------------------------------

def _info(name: str, type_: bytes, mode: int, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mode = mode
    ti.uid, ti.gid = kw.pop("uid", UID), kw.pop("gid", GID)
    ti.mtime = kw.pop("mtime", MTIME)
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def d(name, mode=0o755, **kw):
    return (_info(name, tarfile.DIRTYPE, mode, **kw), None)


def f(name, data=b"", mode=0o644, **kw):
    ti = _info(name, tarfile.REGTYPE, mode, **kw)
    ti.size = len(data)
    return (ti, data)


def sym(target, name, **kw):
    return (_info(name, tarfile.SYMTYPE, 0o777, linkname=target, **kw), None)


def link(target, name, mode=0o644, **kw):
    # As containerd, the link's header metadata lands on the shared inode.
    return (_info(name, tarfile.LNKTYPE, mode, linkname=target, **kw), None)


def make_tar(*entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def apply_bytes(target, data: bytes, **kw) -> ApplyResult:
    return apply_layer(target, io.BytesIO(data), **kw)


# -- sandbox: a target with a sentinel beside it -------------------------------------------------

def _snapshot(path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            data = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    data = fh.read()
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_uid, st.st_mtime_ns, data)
    return out


@pytest.fixture
def sandbox(tmp_path):
    """(target, check): ``check()`` asserts nothing beside the target changed."""
    target = tmp_path / "target"
    target.mkdir()
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_bytes(b"outside")
    (outside / "etc" / "unbroken").write_bytes(b"outside")
    os.chmod(outside / "etc" / "passwd", 0o600)
    before = _snapshot(outside)

    def check():
        assert _snapshot(outside) == before
        assert sorted(os.listdir(tmp_path)) == ["outside", "target"]
        assert not os.path.exists("/etc/unbroken")

    return target, check


# -- functional ---------------------------------------------------------------------------------

def test_entry_kinds_and_metadata(tmp_path):
    big = os.urandom(3 << 20)
    data = make_tar(
        d("dir", 0o750, mtime=MTIME - 100),
        f("dir/file", b"hello", 0o640, mtime=MTIME - 5),
        f("dir/big", big, 0o600),
        f("suid", b"x", 0o4755),
        sym("dir/file", "dir/link", mtime=MTIME - 7),
        link("dir/file", "hard", 0o640, mtime=MTIME - 5),
        (_info("fifo", tarfile.FIFOTYPE, 0o600), None),
    )
    res = apply_bytes(tmp_path, data)
    assert res.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert res.size == len(data)
    st = os.lstat(tmp_path / "dir")
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime == MTIME - 100
    st = os.lstat(tmp_path / "dir/file")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime == MTIME - 5
    assert (tmp_path / "dir/file").read_bytes() == b"hello"
    assert (tmp_path / "dir/big").read_bytes() == big
    assert stat.S_IMODE(os.lstat(tmp_path / "suid").st_mode) == 0o4755
    assert os.readlink(tmp_path / "dir/link") == "dir/file"
    assert os.lstat(tmp_path / "dir/link").st_mtime == MTIME - 7
    assert os.path.samefile(tmp_path / "hard", tmp_path / "dir/file")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)


@needs_root
def test_owner_devices_and_xattrs(tmp_path):
    dev = _info("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3)
    blk = _info("dev/loop9", tarfile.BLKTYPE, 0o660, devmajor=7, devminor=9, uid=0, gid=6)
    fx = _info("xattrs", tarfile.REGTYPE, 0o755, uid=1000, gid=2000, pax_headers={
        "SCHILY.xattr.user.comment": "hi",
        "SCHILY.xattr.security.capability":
            "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
    })
    data = make_tar((dev, None), (blk, None), (fx, b""))
    apply_bytes(tmp_path, data)
    st = os.lstat(tmp_path / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    st = os.lstat(tmp_path / "dev/loop9")
    assert stat.S_ISBLK(st.st_mode) and (st.st_uid, st.st_gid) == (0, 6)
    st = os.lstat(tmp_path / "xattrs")
    assert (st.st_uid, st.st_gid) == (1000, 2000) and stat.S_IMODE(st.st_mode) == 0o755
    assert os.getxattr(tmp_path / "xattrs", "user.comment") == b"hi"
    assert os.getxattr(tmp_path / "xattrs", "security.capability")[:4] == b"\x01\x00\x00\x02"
    # containerd never sets trusted.* from an archive
    assert "trusted.overlay.opaque" not in os.listxattr(tmp_path / "xattrs")


def test_long_and_unicode_names(tmp_path):
    long = "/".join(["d" * 60] * 5) + "/" + "é" * 120 + ".txt"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        target = tmp_path / str(fmt)
        target.mkdir()
        data = make_tar(f(long, b"deep"), f("ünï/çødé", b"u"), sym("x" * 200, "longlink"),
                        fmt=fmt)
        apply_bytes(target, data)
        assert (target / long).read_bytes() == b"deep"
        assert (target / "ünï/çødé").read_bytes() == b"u"
        assert os.readlink(target / "longlink") == "x" * 200


def test_ustar_prefix(tmp_path):
    name = "p" * 90 + "/" + "q" * 90
    apply_bytes(tmp_path, make_tar(f(name, b"u"), fmt=tarfile.USTAR_FORMAT))
    assert (tmp_path / name).read_bytes() == b"u"


def test_directory_times_set_after_contents_and_merge(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep/old").write_bytes(b"old")
    data = make_tar(d("keep", 0o700, mtime=MTIME), f("keep/new", b"n"),
                    f("implicit/child", b"c"))
    apply_bytes(tmp_path, data)
    st = os.lstat(tmp_path / "keep")
    assert st.st_mtime == MTIME and stat.S_IMODE(st.st_mode) == 0o700
    assert (tmp_path / "keep/old").read_bytes() == b"old"
    assert stat.S_IMODE(os.lstat(tmp_path / "implicit").st_mode) == 0o755


def test_replaces_existing_entries(tmp_path):
    (tmp_path / "was_dir").mkdir()
    (tmp_path / "was_dir/x").write_bytes(b"x")
    (tmp_path / "was_file").write_bytes(b"f")
    os.symlink("/etc/passwd", tmp_path / "was_link")
    data = make_tar(f("was_dir", b"now a file"), d("was_file"), f("was_link", b"plain"))
    apply_bytes(tmp_path, data)
    assert (tmp_path / "was_dir").read_bytes() == b"now a file"
    assert (tmp_path / "was_file").is_dir()
    assert not os.path.islink(tmp_path / "was_link")
    assert (tmp_path / "was_link").read_bytes() == b"plain"


def _lower(tmp_path):
    for p in ("a/keep", "a/gone", "o/old", "o/sub/old"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b"lower")


def test_whiteouts_delete_mode(tmp_path):
    _lower(tmp_path)
    data = make_tar(f("a/.wh.gone"), f("o/new", b"n"), f("o/.wh..wh..opq"), f("o/sub/x", b"x"))
    apply_bytes(tmp_path, data, whiteouts="delete")
    assert sorted(os.listdir(tmp_path / "a")) == ["keep"]
    assert sorted(os.listdir(tmp_path / "o")) == ["new", "sub"]
    assert os.listdir(tmp_path / "o/sub") == ["x"]


@needs_root
def test_whiteouts_overlay_mode(tmp_path):
    data = make_tar(d("a"), f("a/.wh.gone"), d("o"), f("o/.wh..wh..opq"), f("o/new", b"n"))
    apply_bytes(tmp_path, data, whiteouts="overlay")
    st = os.lstat(tmp_path / "a/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not os.path.lexists(tmp_path / "a/.wh.gone")
    assert os.getxattr(tmp_path / "o", "trusted.overlay.opaque") == b"y"
    assert os.listdir(tmp_path / "o") == ["new"]


def _tree(path) -> dict:
    snap = _snapshot(path)
    return {k: (v[0], v[3]) for k, v in snap.items()}


def test_compressions_give_same_diff_id_and_tree(tmp_path):
    data = make_tar(d("x"), f("x/a", os.urandom(100_000)), f("x/b", bytes(300_000)),
                    sym("a", "x/c"))
    blobs = [
        (data, MEDIA_TYPE_OCI_LAYER),
        (gzip.compress(data), MEDIA_TYPE_OCI_LAYER_GZIP),
        (gzip.compress(data), MEDIA_TYPE_DOCKER_LAYER_GZIP),
        (gzip.compress(data), MEDIA_TYPE_DOCKER_LAYER),  # mislabelled: detected
        (data, MEDIA_TYPE_OCI_LAYER_GZIP),  # says gzip, is not: detected, as containerd
        (zstandard.ZstdCompressor().compress(data), MEDIA_TYPE_OCI_LAYER_ZSTD),
    ]
    trees = set()
    for i, (blob, mt) in enumerate(blobs):
        target = tmp_path / str(i)
        target.mkdir()
        res = apply_layer_blob(target, io.BytesIO(blob), mt)
        assert res.diff_id == "sha256:" + hashlib.sha256(data).hexdigest(), mt
        assert res.size == len(data)
        trees.add(repr(sorted(_tree(target).items())))
    assert len(trees) == 1


def test_trailing_data_is_hashed(tmp_path):
    data = make_tar(f("a", b"a")) + bytes(4096)
    assert apply_bytes(tmp_path, data).diff_id == "sha256:" + hashlib.sha256(data).hexdigest()


def test_media_types():
    assert compression_of(MEDIA_TYPE_OCI_LAYER) == "uncompressed"
    assert compression_of(MEDIA_TYPE_OCI_LAYER_ZSTD) == "zstd"
    with pytest.raises(InvalidArgument, match="application/x-nope"):
        compression_of("application/x-nope")
    with pytest.raises(InvalidArgument, match="encrypted"):
        compression_of(MEDIA_TYPE_OCI_LAYER_GZIP + "+encrypted")


# -- hostile corpus: containerd's TestBreakouts, plus escapes aimed at the sentinel -------------

def _same(a, b):
    def check(root):
        # follow links inside the root only: the entries are checked by their real paths
        assert os.path.samefile(_inside(root, a), _inside(root, b))
    return check


def _not_same(a, b):
    def check(root):
        assert not os.path.samefile(_inside(root, a), _inside(root, b))
    return check


def _inside(root, p):
    from ctrd.diff.apply import _root_path
    return _root_path(str(root), p.strip("/"))


def _value(p, content):
    def check(root):
        assert (root / p).read_bytes() == content
    return check


def _absent(p):
    def check(root):
        assert not os.path.lexists(root / p)
    return check


def _is_symlink(p):
    def check(root):
        assert os.path.islink(root / p)
    return check


def _all(*checks):
    def check(root):
        for c in checks:
            c(root)
    return check


def _pre(*ops):
    def setup(root):
        for op, *args in ops:
            if op == "dir":
                (root / args[0]).mkdir(parents=True, exist_ok=True)
            elif op == "file":
                (root / args[0]).write_bytes(args[1])
            elif op == "symlink":
                os.symlink(args[0], root / args[1])
            elif op == "link":
                os.link(_inside(root, args[0]), _inside(root, args[1]))
    return setup


UNBROKEN = _value("etc/unbroken", b"unbroken")
BREAKOUTS = [
    ("SymlinkAbsolute", None,
     [d("etc"), sym("/etc", "localetc"), f("/localetc/unbroken", b"unbroken")], UNBROKEN),
    ("SymlinkUpAndOut", None,
     [d("etc"), d("dummy"), sym("/dummy/../etc", "localetc"),
      f("/localetc/unbroken", b"unbroken")], UNBROKEN),
    ("SymlinkMultipleAbsolute", None,
     [d("etc"), d("dummy"), sym("/etc", "/dummy/etc"), sym("/dummy/etc", "localetc"),
      f("/dummy/etc/unbroken", b"unbroken")], UNBROKEN),
    ("SymlinkMultipleRelative", None,
     [d("etc"), d("dummy"), sym("/etc", "/dummy/etc"), sym("./dummy/etc", "localetc"),
      f("/dummy/etc/unbroken", b"unbroken")], UNBROKEN),
    ("SymlinkEmptyFile", None,
     [d("etc"), f("etc/emptied", b"notempty"), sym("/etc", "localetc"),
      f("/localetc/emptied", b"")], _value("etc/emptied", b"")),
    ("HardlinkRelative", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), d("breakouts"),
      sym("../../etc", "breakouts/d1"), link("/breakouts/d1/passwd", "breakouts/mypasswd")],
     _same("/breakouts/mypasswd", "/etc/passwd")),
    ("HardlinkDownAndOut", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), d("breakouts"), d("downandout"),
      sym("../downandout/../../etc", "breakouts/d1"),
      link("/breakouts/d1/passwd", "breakouts/mypasswd")],
     _same("/breakouts/mypasswd", "/etc/passwd")),
    ("HardlinkAbsolute", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), sym("/etc", "localetc"),
      link("/localetc/passwd", "localpasswd")], _same("localpasswd", "/etc/passwd")),
    ("HardlinkRelativeLong", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), sym("../../../../../../../etc", "localetc"),
      link("/localetc/passwd", "localpasswd")], _same("localpasswd", "/etc/passwd")),
    ("HardlinkRelativeUpAndOut", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), sym("upandout/../../../etc", "localetc"),
      link("/localetc/passwd", "localpasswd")], _same("localpasswd", "/etc/passwd")),
    ("HardlinkDirectRelative", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), link("../../../../../etc/passwd", "localpasswd")],
     _same("localpasswd", "/etc/passwd")),
    ("HardlinkDirectAbsolute", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), link("/etc/passwd", "localpasswd")],
     _same("localpasswd", "/etc/passwd")),
    ("HardlinkSymlinkBeforeCreateTarget", None,
     [d("etc", 0o770), sym("/etc/passwd", "localpasswd"), link("localpasswd", "localpasswd-dup"),
      f("/etc/passwd", b"after")], _same("localpasswd-dup", "/etc/passwd")),
    ("HardlinkSymlinkRelative", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), sym("../../../../../etc/passwd", "passwdlink"),
      link("/passwdlink", "localpasswd")],
     _all(_is_symlink("localpasswd"), _same("/localpasswd", "/etc/passwd"))),
    ("HardlinkSymlinkAbsolute", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), sym("/etc/passwd", "passwdlink"),
      link("/passwdlink", "localpasswd")],
     _all(_is_symlink("localpasswd"), _same("/localpasswd", "/etc/passwd"))),
    ("SymlinkParentDirectory", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), sym("/etc/", ".."),
      link("/etc/passwd", "localpasswd")], _same("/localpasswd", "/etc/passwd")),
    ("SymlinkEmptyFilename", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), sym("/etc/", ""),
      link("/etc/passwd", "localpasswd")], _same("/localpasswd", "/etc/passwd")),
    ("SymlinkParentRelative", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), sym("/etc/", "localetc/sub/.."),
      link("/etc/passwd", "/localetc/localpasswd")],
     _same("/localetc/localpasswd", "/etc/passwd")),
    ("SymlinkSlashEnded", None,
     [d("etc", 0o770), f("/etc/passwd", b"inside"), d("localetc/", 0o770),
      link("/etc/passwd", "/localetc/localpasswd")],
     _same("/localetc/localpasswd", "/etc/passwd")),
    ("SymlinkOverrideDirectory",
     _pre(("dir", "etc"), ("file", "etc/passwd", b"inside"), ("dir", "localetc")),
     [sym("/etc", "localetc"), link("/etc/passwd", "/localetc/localpasswd")],
     _same("/localetc/localpasswd", "/etc/passwd")),
    ("SymlinkOverrideDirectoryRelative",
     _pre(("dir", "etc"), ("file", "etc/passwd", b"inside"), ("dir", "localetc")),
     [sym("../../etc", "localetc"), link("/etc/passwd", "/localetc/localpasswd")],
     _same("/localetc/localpasswd", "/etc/passwd")),
    ("DirectoryOverrideSymlink",
     _pre(("dir", "etc"), ("file", "etc/passwd", b"inside"), ("symlink", "/etc", "localetc")),
     [d("/localetc/"), link("/etc/passwd", "/localetc/localpasswd")],
     _same("/localetc/localpasswd", "/etc/passwd")),
    ("DirectoryOverrideSymlinkAndHardlink",
     _pre(("dir", "etc"), ("file", "etc/passwd", b"inside"), ("symlink", "etc", "localetc"),
          ("link", "/etc/passwd", "/localetc/localpasswd")),
     [d("/localetc/"), f("/localetc/localpasswd", b"different")],
     _not_same("/localetc/localpasswd", "/etc/passwd")),
    ("WhiteoutRootParent", _pre(("dir", "etc"), ("file", "etc/passwd", b"inside")),
     [f(".wh...")], InvalidArgument),
    ("WhiteoutParent", _pre(("dir", "etc"), ("file", "etc/passwd", b"inside")),
     [f("etc/.wh...")], InvalidArgument),
    ("WhiteoutRoot", _pre(("dir", "etc"), ("file", "etc/passwd", b"inside")),
     [f(".wh..")], InvalidArgument),
    ("WhiteoutCurrentDirectory", _pre(("dir", "etc"), ("file", "etc/passwd", b"inside")),
     [f("etc/.wh..")], InvalidArgument),
    ("WhiteoutSymlink",
     _pre(("dir", "etc"), ("file", "etc/passwd", b"all users"), ("symlink", "/etc", "localetc")),
     [f(".wh.localetc")], _all(_value("etc/passwd", b"all users"), _absent("localetc"))),
    ("WhiteoutSymlinkPath",
     _pre(("dir", "etc"), ("file", "etc/passwd", b"all users"),
          ("file", "etc/whitedout", b"ahhhh whiteout"), ("symlink", "/etc", "localetc")),
     [f("localetc/.wh.whitedout")],
     _all(_value("etc/passwd", b"all users"), _absent("etc/whitedout"))),
    ("WhiteoutDirectoryName",
     _pre(("dir", "etc"), ("file", "etc/passwd", b"all users"), ("symlink", "/etc", "localetc")),
     [f(".wh.etc/somefile", b"non-empty")],
     _all(_value("etc/passwd", b"all users"), _value(".wh.etc/somefile", b"non-empty"))),
    ("WhiteoutDeadSymlinkParent",
     _pre(("dir", "etc"), ("file", "etc/passwd", b"all users"), ("symlink", "/dne", "localetc")),
     [f("localetc/.wh.etc")], _value("etc/passwd", b"all users")),
    ("WhiteoutRelativePath",
     _pre(("dir", "etc"), ("file", "etc/passwd", b"all users"), ("symlink", "/dne", "localetc")),
     [f("dne/../.wh.etc")], _absent("etc/passwd")),
    # ours: aimed at the sentinel beside the target (tmp/outside/etc)
    ("DotDotName", None, [f("../outside/etc/passwd", b"pwned")],
     _value("outside/etc/passwd", b"pwned")),
    ("AbsoluteName", None, [f("/outside/etc/unbroken", b"pwned")],
     _value("outside/etc/unbroken", b"pwned")),
    ("SymlinkDotDotParent", None,
     [sym("../outside/etc", "esc"), f("esc/passwd", b"pwned")],
     _value("outside/etc/passwd", b"pwned")),
    ("SymlinkReplacesDirMidLayer", None,
     [d("a"), f("a/x", b"1"), sym("../../outside", "a"), f("a/etc/passwd", b"pwned")],
     _value("outside/etc/passwd", b"pwned")),
    ("HardlinkOutsideDotDot", None, [link("../outside/etc/passwd", "pw")], InvalidArgument),
    ("HardlinkToRoot", None, [link("..", "pw")], InvalidArgument),
    ("WhiteoutDotDotName", None, [f("../.wh.outside")], None),
    ("SymlinkLoop", None, [sym("b", "a"), sym("a", "b"), f("a/x", b"x")], InvalidArgument),
    ("FileUnderFile", None, [f("a", b"x"), f("a/b", b"y")], InvalidArgument),
]


@pytest.mark.parametrize("name,setup,entries,expect", BREAKOUTS, ids=[b[0] for b in BREAKOUTS])
def test_breakouts(sandbox, name, setup, entries, expect):
    target, check = sandbox
    if setup:
        setup(target)
    data = make_tar(*entries)
    if expect is InvalidArgument:
        with pytest.raises(InvalidArgument, match="layer entry"):
            apply_bytes(target, data)
    else:
        apply_bytes(target, data)
        if expect:
            expect(target)
    check()


def test_hardlink_symlink_chmod(sandbox):
    """containerd's HardlinkSymlinkChmod: metadata of a link to a symlink that points outside
    must not reach the outside file."""
    target, check = sandbox
    outside = target.parent / "outside"
    p = str(outside / "etc" / "passwd")  # 0600
    ep = str(outside / "also-exists-outside-root")
    data = make_tar(sym(p, ep), link(ep, "sketchylink", 0o777))
    apply_bytes(target, data)
    assert stat.S_IMODE(os.lstat(p).st_mode) == 0o600
    assert os.path.islink(target / ep.lstrip("/"))
    check()


@needs_root
def test_overlay_whiteout_escapes(sandbox):
    target, check = sandbox
    for entries in ([sym("../outside", "esc"), f("esc/.wh.etc")],
                    [sym("/", "esc"), f("esc/.wh..wh..opq")]):
        apply_bytes(target, make_tar(*entries), whiteouts="overlay")
    assert "trusted.overlay.opaque" not in os.listxattr(target.parent / "outside")
    check()


# -- broken streams -------------------------------------------------------------------------------

def _layer():
    return make_tar(d("x"), f("x/a", os.urandom(200_000)), f("x/b", b"b" * 100_000))


@pytest.mark.parametrize("kind", ["tar", "gzip", "zstd"])
@pytest.mark.parametrize("cut", [100, 700, 60_000, -200])
def test_truncated_streams_refused(sandbox, kind, cut):
    target, check = sandbox
    data = _layer()
    if kind == "tar":
        blob, mt = data, MEDIA_TYPE_OCI_LAYER
        data_cut = blob[:cut] if cut > 0 else blob[: blob.index(b"b" * 1000) + 5000]  # in a file
    elif kind == "gzip":
        blob, mt = gzip.compress(data), MEDIA_TYPE_OCI_LAYER_GZIP
        data_cut = blob[:cut]
    else:
        blob, mt = zstandard.ZstdCompressor().compress(data), MEDIA_TYPE_OCI_LAYER_ZSTD
        data_cut = blob[:cut]
    with pytest.raises(InvalidArgument, match="truncated|unexpected end"):
        apply_layer_blob(target, io.BytesIO(data_cut), mt)
    check()


@pytest.mark.parametrize("blob,mt", [
    (os.urandom(4096), MEDIA_TYPE_OCI_LAYER),
    (b"\x1f\x8b\x08" + os.urandom(4096), MEDIA_TYPE_OCI_LAYER_GZIP),
    (b"\x28\xb5\x2f\xfd" + os.urandom(4096), MEDIA_TYPE_OCI_LAYER_ZSTD),
    (b"hello world, not a tar" * 30, MEDIA_TYPE_DOCKER_LAYER),
], ids=["tar", "gzip", "zstd", "text"])
def test_garbage_refused(sandbox, blob, mt):
    target, check = sandbox
    with pytest.raises(InvalidArgument):
        apply_layer_blob(target, io.BytesIO(blob), mt)
    check()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_decompression_bomb_capped(sandbox, kind):
    target, check = sandbox
    data = make_tar(f("zeros", bytes(64 << 20)))
    if kind == "gzip":
        blob, mt = gzip.compress(data, compresslevel=9), MEDIA_TYPE_OCI_LAYER_GZIP
    else:
        blob, mt = zstandard.ZstdCompressor(level=19).compress(data), MEDIA_TYPE_OCI_LAYER_ZSTD
    assert len(blob) < (1 << 20)
    with pytest.raises(InvalidArgument, match="size limit"):
        apply_layer_blob(target, io.BytesIO(blob), mt, max_size=16 << 20)
    check()
    s = open_decompressed(io.BytesIO(blob), mt, max_ratio=100)
    with pytest.raises(InvalidArgument, match="100x"):
        while s.read(1 << 20):
            pass


def test_bad_checksum_refused(tmp_path):
    data = bytearray(make_tar(f("a", b"a")))
    data[0] ^= 1
    with pytest.raises(InvalidArgument, match="checksum"):
        apply_bytes(tmp_path, bytes(data))
