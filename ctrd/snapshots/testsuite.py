"""A conformance suite for snapshotters (ctrd's ``snapshots/testsuite``, after containerd's).

Any implementation of :class:`ctrd.snapshots.snapshotter.Snapshotter` runs it with a factory
``make_snapshotter(root: Path) -> Snapshotter`` that opens a snapshotter on an existing,
initially empty directory. After ``close()``, calling the factory again on the same root must
give a snapshotter that sees the same snapshots: that is how the suite simulates a daemon
restart. The checks mount what the snapshotter returns (with :mod:`ctrd.snapshots.mount`),
so they need root; every mount is undone when a check ends, passed or failed.

From pytest, subclass :class:`SnapshotSuite` (the class name must start with ``Test``)::

    from ctrd.snapshots.testsuite import SnapshotSuite

    class TestMySnapshotter(SnapshotSuite):
        make_snapshotter = staticmethod(lambda root: MySnapshotter(root))

or parametrize over :data:`CHECKS` yourself with :func:`run_check`; :func:`run_all` runs
every check without pytest and returns the failures.

The checks cover containerd 1.6's suite (Basic, StatActive, StatCommitted, Transitivity,
PrepareView, Update, Remove, Walk, LayerFileUpdate, RemoveDirectoryInLowerLayer, Chown,
DirectoryPermissionOnCommit, RemoveIntermediateSnapshot, DeletedFilesInChildSnapshot,
MoveFileFromLowerLayer, Rename, ViewReadonly, StatInWalk, CloseTwice, RootPermission,
128LayersMount) and the rest of ctrd's contract: usage, errors (kinds), commit of a view,
restart, cleanup reclaiming space, hostile keys, concurrent prepares.
"""

from __future__ import annotations

import os
import stat as statmod
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ctrd import filters
from ctrd import testsuite as _suite
from ctrd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ctrd.snapshots.mount import mounted, mountpoints, unmount
from ctrd.snapshots.snapshotter import Info, Kind, Snapshotter

SnapshotterFactory = Callable[[Path], Snapshotter]
GC_ROOT = {"containerd.io/gc.root": "testsuite"}
# Our own timestamps are floats from time.time(); allow for rounding.
SLACK = 0.01


class SuiteEnv:
    """What a check gets: a base directory, the snapshotter root and a work directory
    inside it (mount points go there), and the factory."""

    def __init__(self, make: SnapshotterFactory, base: Path) -> None:
        self.base = Path(base)
        self.root = self.base / "a" / "b" / "root"
        self.work = self.base / "work"
        self.root.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self._make = make
        self.snapshotters: list[Snapshotter] = []

    def make(self) -> Snapshotter:
        """A snapshotter on ``root``; after closing the previous one, a restart."""
        s = self._make(self.root)
        self.snapshotters.append(s)
        return s

    @contextmanager
    def mounted(self, mounts) -> Iterator[Path]:
        with mounted(mounts, dir=str(self.work)) as p:
            yield Path(p)

    def close(self) -> None:
        """Close every snapshotter and undo any mount a failed check left under base."""
        for s in self.snapshotters:
            try:
                s.close()
            except Exception:
                pass
        base = os.path.realpath(self.base)
        for m in sorted(mountpoints(), reverse=True):
            if m.startswith(base + "/"):
                unmount(m, retries=1)


CHECKS: dict[str, Callable[[SuiteEnv], None]] = {}


def check(fn: Callable[[SuiteEnv], None]) -> Callable[[SuiteEnv], None]:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def run_check(name: str, make: SnapshotterFactory, base: Path) -> None:
    """Run one check in ``base`` (an empty directory)."""
    env = SuiteEnv(make, base)
    try:
        CHECKS[name](env)
    finally:
        env.close()


def run_all(make: SnapshotterFactory, base: Path) -> dict[str, str]:
    """Run every check, each in its own directory under ``base``; return name -> traceback
    for the failures (empty when the implementation conforms)."""
    return _suite.run_all(CHECKS, run_check, make, base)


class SnapshotSuite:
    """Every check as a pytest test method; subclass it as ``Test...`` and set
    ``make_snapshotter`` (a staticmethod, or a method taking ``root``)."""

    @staticmethod
    def make_snapshotter(root: Path) -> Snapshotter:
        raise NotImplementedError("set make_snapshotter on the SnapshotSuite subclass")


def _add_methods() -> None:
    _suite.add_test_methods(SnapshotSuite, CHECKS, run_check, "make_snapshotter")


# --- helpers ------------------------------------------------------------------------------------


@contextmanager
def raises(*kinds: type[BaseException], match: str = "") -> Iterator[None]:
    try:
        yield
    except kinds as e:
        if match and match not in str(e):
            raise AssertionError(f"{type(e).__name__} {str(e)!r} does not contain {match!r}")
        return
    names = " or ".join(k.__name__ for k in kinds)
    raise AssertionError(f"expected {names}, nothing raised")


Applier = Callable[[Path], None]


def apply(*steps: Applier) -> Applier:
    def run(root: Path) -> None:
        for s in steps:
            s(root)
    return run


def create_file(name: str, data: bytes, mode: int = 0o644) -> Applier:
    def run(root: Path) -> None:
        p = root / name.lstrip("/")
        p.write_bytes(data)
        os.chmod(p, mode)
    return run


def create_dir(name: str, mode: int = 0o755) -> Applier:
    def run(root: Path) -> None:
        p = root / name.lstrip("/")
        p.mkdir()
        os.chmod(p, mode)
    return run


def remove_all(name: str) -> Applier:
    def run(root: Path) -> None:
        import shutil

        p = root / name.lstrip("/")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif os.path.lexists(p):
            p.unlink()
    return run


def link(old: str, new: str) -> Applier:
    def run(root: Path) -> None:
        os.link(root / old.lstrip("/"), root / new.lstrip("/"))
    return run


def symlink(target: str, name: str) -> Applier:
    def run(root: Path) -> None:
        os.symlink(target, root / name.lstrip("/"))
    return run


def rename(old: str, new: str) -> Applier:
    """Rename as ``mv`` does: overlay without ``redirect_dir`` refuses to rename a directory
    from a lower layer (EXDEV), and clients then copy and delete."""
    def run(root: Path) -> None:
        import errno
        import shutil

        src, dst = root / old.lstrip("/"), root / new.lstrip("/")
        try:
            os.rename(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copytree(src, dst, symlinks=True)
            shutil.rmtree(src)
    return run


def chown(name: str, uid: int, gid: int) -> Applier:
    def run(root: Path) -> None:
        os.lchown(root / name.lstrip("/"), uid, gid)
    return run


def tree(root: Path) -> dict[str, tuple]:
    """What a directory holds, for comparison: every entry below ``root`` (not ``root``
    itself) with its type, permission bits, owner and content or link target, and the
    groups of paths that are hard links of one another."""
    out: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            common = (statmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if statmod.S_ISDIR(st.st_mode):
                out[rel] = ("dir",) + common
            elif statmod.S_ISREG(st.st_mode):
                out[rel] = ("file",) + common + (Path(p).read_bytes(),)
                inodes.setdefault(st.st_ino, []).append(rel)
            elif statmod.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p))
            else:
                out[rel] = (statmod.S_IFMT(st.st_mode),) + common + (st.st_rdev,)
    for group in inodes.values():
        if len(group) > 1:
            out["<links>" + ":".join(sorted(group))] = ("links",)
    return out


def assert_same_tree(got: Path, want: Path, what: str = "") -> None:
    a, b = tree(got), tree(want)
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()), key=str)[:10]
        raise AssertionError(f"{what}: trees differ (got vs want, symmetric diff): {diff}")


def check_layers(env: SuiteEnv, s: Snapshotter, *appliers: Applier,
                 verify_each: bool = True) -> str:
    """containerd's checkSnapshots: each applier, applied through a mount of a new active
    snapshot on the previous layer, gives the same tree as applying it to a plain
    directory; then a view of the top is compared. Returns the top's name."""
    flat = env.work / "flat"
    flat.mkdir(exist_ok=True)
    parent = ""
    for i, ap in enumerate(appliers):
        key = f"prepare-layer-{i}"
        with env.mounted(s.prepare(key, parent, GC_ROOT)) as m:
            if verify_each:
                assert_same_tree(m, flat, f"layer {i} before apply")
            ap(flat)
            ap(m)
            if verify_each:
                assert_same_tree(m, flat, f"layer {i} after apply")
        parent = f"committed-{i}"
        s.commit(parent, key, GC_ROOT)
    with env.mounted(s.view("view-top", parent, GC_ROOT)) as m:
        assert_same_tree(m, flat, "view of the top layer")
    s.remove("view-top")
    return parent


def names(s: Snapshotter, *exprs: str) -> list[str]:
    """Names the walk selects with containerd filter expressions (kind, name, parent,
    labels), as containerd's snapshot walk adapts them."""
    flt = filters.parse_all(*exprs)

    def match(info: Info) -> bool:
        kind = {Kind.ACTIVE: "active", Kind.VIEW: "view", Kind.COMMITTED: "committed"}
        return flt.match(filters.adaptor_from(
            {"kind": kind.get(info.kind, ""), "name": info.name, "parent": info.parent},
            info.labels, empty_is_absent=False))
    return sorted(i.name for i in s.walk(match))


def base_snapshots(s: Snapshotter) -> None:
    s.prepare("c1-a", "", GC_ROOT)
    s.commit("c1", "c1-a", GC_ROOT)
    s.prepare("c2-a", "c1", GC_ROOT)
    s.commit("c2", "c2-a", GC_ROOT)
    s.prepare("a1", "c2", GC_ROOT)
    s.prepare("a2", "", GC_ROOT)
    s.view("v1", "c2", GC_ROOT)
    s.view("v2", "", GC_ROOT)


def du(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return total


# --- checks -------------------------------------------------------------------------------------


@check
def check_basic(env: SuiteEnv) -> None:
    """Prepare, write, commit, prepare on top, change, commit, view: contents through mounts,
    stat, walk, and removal order."""
    s = env.make()
    initial = apply(create_file("/foo", b"foo\n", 0o777), create_dir("/a"),
                    create_dir("/a/b"), create_dir("/a/b/c"))
    diff = apply(create_file("/bar", b"bar\n", 0o777), create_file("/foo", b"bar\n", 0o777),
                 remove_all("/a/b"))
    ms = s.prepare("preparing", "", GC_ROOT)
    assert ms, "prepare returned no mounts"
    with env.mounted(ms) as m:
        initial(m)
    s.commit("committed", "preparing", GC_ROOT)
    si = s.stat("committed")
    assert (si.name, si.parent, si.kind) == ("committed", "", Kind.COMMITTED)
    with raises(NotFound):
        s.stat("preparing")

    expect1 = env.work / "expect1"
    expect1.mkdir()
    initial(expect1)
    with env.mounted(s.prepare("next", "committed", GC_ROOT)) as m:
        assert_same_tree(m, expect1, "next layer before changes")
        diff(m)
    ni = s.stat("next")
    assert (ni.parent, ni.kind) == ("committed", Kind.ACTIVE)
    s.commit("committed-next", "next", GC_ROOT)
    si2 = s.stat("committed-next")
    assert (si2.parent, si2.kind) == ("committed", Kind.COMMITTED)
    with raises(NotFound):
        s.stat("next")
    walked = {i.name: i for i in s.walk()}
    assert walked == {"committed": si, "committed-next": si2}, walked

    diff(expect1)
    with env.mounted(s.view("nextnext", "committed-next", GC_ROOT)) as m:
        assert_same_tree(m, expect1, "view of both layers")
    s.remove("nextnext")
    with raises(FailedPrecondition):
        s.remove("committed")
    s.remove("committed-next")
    s.remove("committed")
    assert list(s.walk()) == []


@check
def check_stat_active(env: SuiteEnv) -> None:
    s = env.make()
    with env.mounted(s.prepare("preparing", "", GC_ROOT)) as m:
        (m / "foo").write_bytes(b"foo\n")
        si = s.stat("preparing")
    assert (si.name, si.kind, si.parent, si.labels) == ("preparing", Kind.ACTIVE, "", GC_ROOT)


@check
def check_stat_committed(env: SuiteEnv) -> None:
    s = env.make()
    with env.mounted(s.prepare("preparing", "", GC_ROOT)) as m:
        (m / "foo").write_bytes(b"foo\n")
    s.commit("committed", "preparing", {"x": "y"})
    si = s.stat("committed")
    assert (si.name, si.kind, si.parent, si.labels) == ("committed", Kind.COMMITTED, "",
                                                        {"x": "y"})


@check
def check_transitivity(env: SuiteEnv) -> None:
    s = env.make()
    with env.mounted(s.prepare("preparing", "", GC_ROOT)) as m:
        (m / "foo").write_bytes(b"foo\n")
    s.commit("snapA", "preparing", GC_ROOT)
    with env.mounted(s.prepare("next", "snapA", GC_ROOT)) as m:
        (m / "foo").write_bytes(b"foo bar\n")
    s.commit("snapB", "next", GC_ROOT)
    a, b = s.stat("snapA"), s.stat("snapB")
    assert a.parent == "" and b.parent == "snapA" and s.stat(b.parent).parent == ""


@check
def check_prepare_view(env: SuiteEnv) -> None:
    """A key is taken whatever its kind: a second prepare or view of it is AlreadyExists."""
    s = env.make()
    s.prepare("preparing", "", GC_ROOT)
    s.commit("snapA", "preparing", GC_ROOT)
    s.prepare("newlayer", "snapA", GC_ROOT)
    with raises(AlreadyExists):
        s.view("newlayer", "snapA", GC_ROOT)
    s.prepare("prepLayer", "snapA", GC_ROOT)
    with raises(AlreadyExists):
        s.prepare("prepLayer", "snapA", GC_ROOT)
    s.view("viewLayer", "snapA", GC_ROOT)
    with raises(AlreadyExists):
        s.view("viewLayer", "snapA", GC_ROOT)
    with raises(AlreadyExists):
        s.prepare("snapA", "", GC_ROOT)


@check
def check_errors(env: SuiteEnv) -> None:
    """Error kinds: missing keys, missing or uncommitted parents, taken names, mounts of a
    committed snapshot, commit of a view."""
    s = env.make()
    for op in (lambda: s.stat("nope"), lambda: s.usage("nope"), lambda: s.mounts("nope"),
               lambda: s.remove("nope"), lambda: s.commit("x", "nope"),
               lambda: s.update(Info("nope", Kind.ACTIVE, labels={"a": "b"}))):
        with raises(NotFound):
            op()
    with raises(NotFound):
        s.prepare("a", "missing-parent")
    s.prepare("active", "")
    with raises(InvalidArgument):
        s.prepare("b", "active")
    with raises(InvalidArgument):
        s.view("b", "active")
    s.prepare("c-a", "")
    s.commit("c", "c-a")
    with raises(AlreadyExists):
        s.commit("c", "active")
    assert s.stat("active").kind == Kind.ACTIVE  # the failed commit changed nothing
    with raises(FailedPrecondition):
        s.mounts("c")
    s.view("v", "c")
    with raises(FailedPrecondition):
        s.commit("from-view", "v")
    assert s.stat("v").kind == Kind.VIEW
    with raises(NotFound):
        s.stat("from-view")
    with raises(InvalidArgument):
        s.prepare("", "")
    assert names(s) == ["active", "c", "v"]


@check
def check_update(env: SuiteEnv) -> None:
    """Labels change (all, or by ``labels.<key>``); times, kind, parent, name do not;
    other field paths are InvalidArgument."""
    s = env.make()
    t1 = time.time()
    base_snapshots(s)
    t2 = time.time()
    cases = [("c1", Kind.COMMITTED, ""), ("c2", Kind.COMMITTED, "c1"),
             ("a1", Kind.ACTIVE, "c2"), ("a2", Kind.ACTIVE, ""), ("v1", Kind.VIEW, "c2"),
             ("v2", Kind.VIEW, "")]
    for name, kind, parent in cases:
        st = s.stat(name)
        assert t1 - SLACK <= st.created_at <= t2 + SLACK, (name, st.created_at, t1, t2)
        assert st.created_at == st.updated_at, name
        assert (st.kind, st.parent, st.name) == (kind, parent, name)
        created = st.created_at
        expected = {"l1": "v1", "l2": "v2", "l3": "v3", **GC_ROOT}
        st.parent = "doesnotexist"
        st.labels = dict(expected)
        u1 = time.time()
        st = s.update(st)
        u2 = time.time()
        assert st.created_at == created, name
        assert u1 - SLACK <= st.updated_at <= u2 + SLACK, name
        assert (st.kind, st.parent, st.name, st.labels) == (kind, parent, name, expected)
        st.labels = {"l1": "updated", "l4": "v4"}
        st = s.update(st, ["labels.l1", "labels.l2"])
        assert st.labels == {"l1": "updated", "l3": "v3", **GC_ROOT}, st.labels
        st.labels = {"l4": "v4", **GC_ROOT}
        st = s.update(st, ["labels"])
        assert st.labels == {"l4": "v4", **GC_ROOT}
        assert s.stat(name).labels == st.labels
        st.parent = "doesnotexist"
        with raises(InvalidArgument):
            s.update(st, ["parent"])
        assert s.stat(name).parent == parent


@check
def check_usage(env: SuiteEnv) -> None:
    """Usage of an active snapshot is measured now; of a committed one, at commit."""
    s = env.make()
    ms = s.prepare("a", "", GC_ROOT)
    empty = s.usage("a")
    with env.mounted(ms) as m:
        (m / "big").write_bytes(os.urandom(1 << 20))
        (m / "d").mkdir()
        (m / "d" / "small").write_bytes(b"x")
        os.link(m / "big", m / "d" / "big-link")  # counted once
        grown = s.usage("a")
        assert grown.size - empty.size >= 1 << 20, (empty, grown)
        assert grown.size - empty.size < (1 << 20) + (1 << 17), (empty, grown)
        assert grown.inodes - empty.inodes == 3, (empty, grown)
    s.commit("c", "a")
    assert s.usage("c") == grown
    with env.mounted(s.prepare("b", "c")) as m:
        (m / "new").write_bytes(b"y" * 10)
    # (What a child's usage counts is the implementation's: overlay its own layer, native
    # its full copy.)
    assert s.usage("b").inodes >= 2
    s.commit("c2", "b")
    assert s.usage("c") == grown  # stored, unchanged by children


@check
def check_remove(env: SuiteEnv) -> None:
    """Removed keys can be reused, as key or as committed name."""
    s = env.make()
    s.prepare("committed-a", "", GC_ROOT)
    s.commit("committed-1", "committed-a", GC_ROOT)
    s.prepare("reuse-1", "committed-1", GC_ROOT)
    s.remove("reuse-1")
    s.view("reuse-1", "committed-1", GC_ROOT)
    s.remove("reuse-1")
    s.prepare("reuse-1", "", GC_ROOT)
    s.remove("committed-1")
    s.commit("committed-1", "reuse-1", GC_ROOT)
    assert names(s) == ["committed-1"]


@check
def check_remove_intermediate_snapshot(env: SuiteEnv) -> None:
    """A snapshot with children (active, view or committed) cannot be removed."""
    s = env.make()
    s.prepare("base", "", GC_ROOT)
    s.commit("committed-base", "base", GC_ROOT)
    s.prepare("intermediate", "committed-base", GC_ROOT)
    s.commit("committed-inter", "intermediate", GC_ROOT)
    s.prepare("toplayer", "committed-inter", GC_ROOT)
    s.view("topview", "committed-inter", GC_ROOT)
    with raises(FailedPrecondition, match="child"):
        s.remove("committed-inter")
    s.remove("toplayer")
    with raises(FailedPrecondition):
        s.remove("committed-inter")
    s.remove("topview")
    with raises(FailedPrecondition):
        s.remove("committed-base")
    s.remove("committed-inter")
    s.remove("committed-base")
    assert names(s) == []


@check
def check_walk(env: SuiteEnv) -> None:
    s = env.make()
    gc = {"containerd.io/gc.root": "check-walk"}
    s.prepare("a-np", "", gc)
    s.prepare("p-tmp", "", gc)
    s.commit("p", "p-tmp", gc)
    s.prepare("a", "p", gc)
    s.view("v", "p", gc)
    s.prepare("p-wl-tmp", "", gc)
    s.commit("p-wl", "p-wl-tmp", {"l": "1", **gc})
    s.prepare("a-wl", "p-wl", {"l": "2", **gc})
    s.view("v-wl", "p-wl", {"l": "3", **gc})
    s.prepare("a-np-wl", "", {"l": "2", **gc})
    gcf = 'labels."containerd.io/gc.root"==check-walk'
    for want, exprs in [
        (["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"], [gcf]),
        (["a-np", "a", "a-wl", "a-np-wl"], ["kind==active," + gcf]),
        (["v", "v-wl"], ["kind==view," + gcf]),
        (["p", "p-wl"], ["kind==committed," + gcf]),
        (["p", "a-np-wl"], ["name==p", "name==a-np-wl"]),
        (["a-wl"], ["name==a-wl,labels.l"]),
        (["a", "v"], ["parent==p"]),
        (["a", "v", "a-wl", "v-wl"], ['parent!="",' + gcf]),
        (["p-wl", "a-wl", "v-wl", "a-np-wl"], ["labels.l"]),
        (["a-wl", "a-np-wl"], ["labels.l==2"]),
    ]:
        assert names(s, *exprs) == sorted(want), (exprs, names(s, *exprs))
    assert len(list(s.walk())) == 8


@check
def check_stat_in_walk(env: SuiteEnv) -> None:
    """Stat (and other calls) while a walk is being consumed."""
    s = env.make()
    base_snapshots(s)
    for info in s.walk():
        assert s.stat(info.name) == info
        s.update(Info(info.name, info.kind, labels={"seen": "1"}))
    assert all(i.labels == {"seen": "1"} for i in s.walk())


@check
def check_layer_file_update(env: SuiteEnv) -> None:
    check_layers(env, env.make(),
                 apply(create_file("/foo", b"foo\n", 0o777)),
                 apply(create_file("/foo", b"bar\n", 0o777)),
                 apply(create_file("/foo", b"baz\n", 0o644)),
                 apply(remove_all("/foo"), create_dir("/foo", 0o700),
                       create_file("/foo/x", b"dir now\n")))


@check
def check_remove_directory_in_lower_layer(env: SuiteEnv) -> None:
    """A directory removed in an upper layer and re-created empty stays empty (overlay:
    opaque directory)."""
    check_layers(env, env.make(),
                 apply(create_dir("/lib"), create_dir("/lib/hidden"),
                       create_file("/lib/hidden/x", b"x")),
                 apply(remove_all("/lib")),
                 apply(create_dir("/lib"), create_file("/lib/only", b"y")),
                 apply(remove_all("/lib/only")))


@check
def check_chown(env: SuiteEnv) -> None:
    check_layers(env, env.make(),
                 apply(create_dir("/opt"), create_dir("/opt/a"),
                       create_file("/opt/a/f", b"f"), create_dir("/var", 0o1777)),
                 apply(chown("/opt", 1, 1), chown("/opt/a/f", 2, 3)),
                 apply(chown("/opt/a", 4, 4), create_dir("/var/x", 0o700),
                       chown("/var/x", 100, 200), symlink("/opt/a/f", "/lnk"),
                       chown("/lnk", 5, 6)))


@check
def check_directory_permission_on_commit(env: SuiteEnv) -> None:
    check_layers(env, env.make(),
                 apply(create_dir("/dir1", 0o700), create_dir("/dir2", 0o750),
                       create_dir("/dir3", 0o700), chown("/dir1", 1, 1),
                       create_dir("/dir1/subdir", 0o755)),
                 apply(create_file("/dir1/subdir/f", b"f", 0o640), chown("/dir2", 2, 2),
                       create_dir("/dir2/d", 0o711), create_file("/dir3/setuid", b"",
                                                                 0o4755)))


@check
def check_deleted_files_in_child_snapshot(env: SuiteEnv) -> None:
    """Files deleted through the mount of an upper layer (overlay: whiteouts made by the
    kernel) are not visible in later layers or views."""
    s = env.make()
    top = check_layers(env, s,
                       apply(create_file("/foo", b"foo\n", 0o777),
                             create_file("/foobar", b"foobar\n", 0o777),
                             create_dir("/d"), create_file("/d/gone", b"1")),
                       apply(remove_all("/foobar"), remove_all("/d/gone")),
                       apply())
    with env.mounted(s.view("check", top)) as m:
        assert sorted(os.listdir(m)) == ["d", "foo"]
        assert os.listdir(m / "d") == []


@check
def check_move_file_from_lower_layer(env: SuiteEnv) -> None:
    check_layers(env, env.make(),
                 apply(create_dir("/dir1", 0o700), create_file("/dir1/f1", b"Hello"),
                       create_dir("/dir2", 0o700), create_file("/dir2/f2", b"...")),
                 apply(create_dir("/dir3", 0o700), create_file("/dir3/f1", b"Hello"),
                       remove_all("/dir1"), link("/dir2/f2", "/dir3/f2"),
                       remove_all("/dir2/f2")))


@check
def check_rename(env: SuiteEnv) -> None:
    check_layers(env, env.make(),
                 apply(create_dir("/dir1"), create_dir("/somefiles"),
                       create_file("/somefiles/f1", b"was here first!"),
                       create_file("/somefiles/f2", b"nothing interesting")),
                 apply(rename("/dir1", "/dir2"), create_file("/somefiles/f1-overwrite",
                                                             b"new content 1"),
                       rename("/somefiles/f1-overwrite", "/somefiles/f1"),
                       rename("/somefiles/f2", "/somefiles/f3")))


@check
def check_view_readonly(env: SuiteEnv) -> None:
    """Nothing can be written through a view's mounts (with and without layers below)."""
    s = env.make()
    s.prepare("preparing", "", GC_ROOT)
    s.commit("committed", "preparing", GC_ROOT)
    with env.mounted(s.prepare("p2", "committed")) as m:
        (m / "x").write_bytes(b"x")
    s.commit("committed2", "p2")
    for key, parent in (("view", "committed"), ("view2", "committed2"), ("view0", "")):
        with env.mounted(s.view(key, parent, GC_ROOT)) as m:
            try:
                (m / "testfile").write_bytes(b"testcontent")
            except OSError:
                pass
            else:
                raise AssertionError(f"writing through view {key!r} should fail")
        s.remove(key)
    s.remove("committed2")
    s.remove("committed")


@check
def check_mounts_again(env: SuiteEnv) -> None:
    """``mounts(key)`` gives what prepare/view gave; an active snapshot's content persists
    between mounts."""
    s = env.make()
    ms = s.prepare("a", "")
    assert s.mounts("a") == ms
    with env.mounted(ms) as m:
        (m / "f").write_bytes(b"kept")
    s.commit("c", "a")
    ms = s.prepare("b", "c")
    assert s.mounts("b") == ms
    with env.mounted(s.mounts("b")) as m:
        (m / "g").write_bytes(b"also")
    with env.mounted(s.mounts("b")) as m:
        assert (m / "f").read_bytes() == b"kept" and (m / "g").read_bytes() == b"also"
    vm = s.view("v", "c")
    assert s.mounts("v") == vm


@check
def check_close_twice(env: SuiteEnv) -> None:
    s = env.make()
    s.prepare("closeTwice-prepare", "", GC_ROOT)
    s.commit("closeTwice", "closeTwice-prepare", GC_ROOT)
    s.remove("closeTwice")
    s.close()
    s.close()


@check
def check_restart(env: SuiteEnv) -> None:
    """Close and reopen on the same root: snapshots, kinds, parents, labels, times, usage
    and contents survive; new snapshots do not collide with old ones."""
    s = env.make()
    with env.mounted(s.prepare("a", "", {"k": "v"})) as m:
        (m / "f").write_bytes(b"layer 1")
    s.commit("c1", "a", {"k": "c"})
    with env.mounted(s.prepare("b", "c1")) as m:
        (m / "g").write_bytes(b"active")
    s.view("v", "c1")
    before = {i.name: i for i in s.walk()}
    usage = s.usage("c1")
    s.close()
    s = env.make()
    assert {i.name: i for i in s.walk()} == before
    assert s.usage("c1") == usage
    with env.mounted(s.mounts("b")) as m:
        assert (m / "f").read_bytes() == b"layer 1" and (m / "g").read_bytes() == b"active"
    with env.mounted(s.prepare("new", "c1")) as m:
        assert sorted(os.listdir(m)) == ["f"], "a new snapshot reused an old one's storage"
    s.commit("c2", "b")
    with env.mounted(s.view("v2", "c2")) as m:
        assert sorted(os.listdir(m)) == ["f", "g"]


@check
def check_cleanup(env: SuiteEnv) -> None:
    """After remove + cleanup the space of removed snapshots is reclaimed; live ones keep
    their content; cleanup is idempotent."""
    s = env.make()
    with env.mounted(s.prepare("keep-a", "")) as m:
        (m / "keep").write_bytes(b"k")
    s.commit("keep", "keep-a")
    base = du(env.root)
    with env.mounted(s.prepare("big-a", "keep")) as m:
        (m / "big").write_bytes(os.urandom(4 << 20))
    s.commit("big", "big-a")
    assert du(env.root) >= base + (4 << 20)
    s.remove("big")
    s.cleanup()
    s.cleanup()
    assert du(env.root) < base + (1 << 20), (du(env.root), base)
    with env.mounted(s.view("v", "keep")) as m:
        assert (m / "keep").read_bytes() == b"k"


@check
def check_root_permission(env: SuiteEnv) -> None:
    s = env.make()
    old = os.umask(0o077)
    try:
        with env.mounted(s.prepare("preparing", "", GC_ROOT)) as m:
            assert statmod.S_IMODE(os.stat(m).st_mode) == 0o755, oct(os.stat(m).st_mode)
    finally:
        os.umask(old)


@check
def check_128_layers_mount(env: SuiteEnv) -> None:
    """128 layers, each mounted through its parents and checked; the top is readable in
    full through one mount."""
    lowest = apply(create_file("/bottom", b"way at the bottom\n", 0o777),
                   create_file("/overwriteme", b"FIRST!\n", 0o777),
                   create_dir("/ADDHERE"), create_dir("/ONLYME"),
                   create_file("/ONLYME/bottom", b"bye!\n", 0o777))
    appliers = [lowest] + [
        apply(create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
              create_file(f"/ADDHERE/file-{i}", b"same\n", 0o755),
              remove_all("/ONLYME"), create_dir("/ONLYME"),
              create_file(f"/ONLYME/file-{i}", b"only me!\n", 0o777))
        for i in range(1, 128)]
    s = env.make()
    top = check_layers(env, s, *appliers)
    with env.mounted(s.view("fullview", top)) as m:
        assert (m / "overwriteme").read_bytes() == b"127 WAS HERE!\n"
        assert len(os.listdir(m / "ADDHERE")) == 127
        assert os.listdir(m / "ONLYME") == ["file-127"]


@check
def check_hostile_keys(env: SuiteEnv) -> None:
    """Keys are opaque text: long, with '/', '..', NUL, newlines, non-UTF-8 surrogates;
    none of them becomes a path, and each is stored and found exactly."""
    s = env.make()
    keys = ["../../../escape", "/abs/path", "a/b/c", "..", ".", "nul\0inside", "new\nline",
            "x" * 5000, "extract-1700000000000000000-abcd sha256:" + "f" * 64 + "y" * 600,
            "unicode-\u00e9\u4e2d\U0001f600", "bad-\udc80-surrogate", " ", "snapshots"]
    parent = ""
    for i, k in enumerate(keys):
        with env.mounted(s.prepare(k, parent, {"i": str(i)})) as m:
            (m / f"f{i}").write_bytes(k.encode("utf-8", "surrogatepass"))
        name = k + "-committed"
        s.commit(name, k, {"i": str(i)})
        assert s.stat(name).name == name and s.stat(name).parent == parent
        parent = name
    got = {i.name for i in s.walk()}
    assert got == {k + "-committed" for k in keys}, got ^ {k + "-committed" for k in keys}
    with env.mounted(s.view(keys[0], parent)) as m:
        for i, k in enumerate(keys):
            assert (m / f"f{i}").read_bytes() == k.encode("utf-8", "surrogatepass")
    s.remove(keys[0])
    # A prefix of a long key is a different key.
    with raises(NotFound):
        s.stat("x" * 4999 + "-committed")
    with raises(NotFound):
        s.stat("x" * 5000)
    # Nothing was created outside the root, and no key became a file name inside it.
    assert sorted(os.listdir(env.base)) == ["a", "work"]
    assert os.listdir(env.base / "a") == ["b"] and os.listdir(env.base / "a" / "b") == ["root"]
    for dirpath, dirnames, filenames in os.walk(env.root):
        for n in dirnames + filenames:
            assert "escape" not in n and "abs" not in n and "\n" not in n, (dirpath, n)


@check
def check_concurrent(env: SuiteEnv) -> None:
    """Prepares, commits and removes from several threads at once."""
    s = env.make()
    s.prepare("base-a", "")
    s.commit("base", "base-a")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for j in range(10):
                k = f"w{n}-{j}"
                s.prepare(k, "base")
                s.commit(k + "-c", k)
                s.view(k + "-v", k + "-c")
                s.remove(k + "-v")
                s.remove(k + "-c")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert names(s) == ["base"]


_add_methods()
