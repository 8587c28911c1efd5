"""ctrctl snapshots against a real ctrd (and next to the real ctr).

One ctrd per module on a temp root, started so that it never collects garbage on its own;
each test works in a namespace of its own. ctrctl runs as a subprocess, as a user runs it.
Everything a test mounts (through ``mounts | sh``, ``snapshots mount`` or mount_all) is at a
directory from the ``mnt`` fixture, and every mount under those directories (and, at the
end of the module, under the daemon's temp dir) is unmounted in teardown, whether the test
passed or not. Unit tests at the end need neither daemon nor root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid as uuidlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import launch_ctrd
from support.cmd import CTRCTL, clean_env, ok

CTR = shutil.which("ctr")
MANUAL_GC = """version = 2
[plugins."io.containerd.gc.v1.scheduler"]
deletion_threshold = 1000000
mutation_threshold = 1000000
startup_delay = "1h"
"""
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def _overlay_unsupported() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    from ctrd.snapshots.overlay import supported

    d = tempfile.mkdtemp(prefix="ctrctl-ovl-check-")
    try:
        return supported(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


_OVERLAY_UNSUPPORTED = _overlay_unsupported() if os.geteuid() == 0 else "not root"
NEEDS_OVERLAY = pytest.mark.skipif(bool(_OVERLAY_UNSUPPORTED),
                                   reason=f"overlay unsupported: {_OVERLAY_UNSUPPORTED}")


def mounts_under(path: Path) -> list[str]:
    from ctrd.snapshots.mount import mountpoints

    root = os.path.realpath(path)
    return [m for m in mountpoints() if m == root or m.startswith(root + "/")]


def unmount_under(path: Path) -> list[str]:
    """Unmount everything at or below ``path`` (deepest first); returns what was there."""
    from ctrd.snapshots.mount import unmount_all

    found = mounts_under(path)
    for m in sorted(set(found), key=len, reverse=True):
        try:
            unmount_all(m)
        except OSError:
            pass
    return found


# -- the daemon and how to drive it ---------------------------------------------------------

@pytest.fixture(scope="module")
def base():
    d = Path(tempfile.mkdtemp(prefix="ctrctl-s-", dir="/tmp"))  # short: socket paths <= 108
    yield d
    unmount_under(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(base):
    d = launch_ctrd(base / "d", config_text=MANUAL_GC)
    try:
        yield d
    finally:
        unmount_under(base)  # nothing may hold the daemon's snapshots when it stops
        d.stop()
    assert d.proc.returncode == 0, d.read_log()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuidlib.uuid4().hex[:8]}"


class NS:
    """ctrctl (and ctr) against the daemon in one namespace of a test's own, with one
    snapshotter."""

    def __init__(self, daemon, name: str | None = None, snapshotter: str | None = None):
        self.daemon = daemon
        self.name = name or unique("t")
        self.snapshotter = snapshotter

    def __call__(self, *args: str, env: dict | None = None,
                 input: str | None = None) -> subprocess.CompletedProcess:
        snap = ["--snapshotter", self.snapshotter] if self.snapshotter else []
        cmd = CTRCTL + ["-a", self.daemon.address, "-n", self.name, "snapshots", *snap, *args]
        return subprocess.run(cmd, capture_output=True, text=True, input=input,
                              env=env or clean_env(), timeout=120)

    def ok(self, *args: str, **kw) -> str:
        return ok(self(*args, **kw))

    def ctr(self, *args: str) -> subprocess.CompletedProcess:
        snap = ["--snapshotter", self.snapshotter] if self.snapshotter else []
        return subprocess.run([CTR, "--address", self.daemon.address, "--namespace",
                               self.name, "snapshots", *snap, *args], capture_output=True,
                              text=True, timeout=120)

    def ls(self, *filters: str) -> list[dict]:
        return json.loads(self.ok("ls", "--format", "json", *filters))

    def info(self, key: str) -> dict:
        return json.loads(self.ok("info", key))


@pytest.fixture
def ns(daemon) -> NS:
    return NS(daemon)


@pytest.fixture
def native(daemon) -> NS:
    return NS(daemon, snapshotter="native")


@pytest.fixture
def mnt(tmp_path):
    """Factory of mount points (new empty directories); whatever is mounted on them is
    unmounted in teardown, even when the test failed."""
    made: list[Path] = []

    def make(name: str = "m") -> Path:
        d = tmp_path / f"{name}-{len(made)}"
        d.mkdir()
        made.append(d)
        return d

    yield make
    for d in made:
        unmount_under(d)
    left = [m for d in made for m in mounts_under(d)]
    assert not left, f"mounts left behind: {left}"


def sh(script: str) -> None:
    r = subprocess.run(["sh", "-e"], input=script, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"sh failed: {r.stderr}\nscript:\n{script}"


def umount(target: Path) -> None:
    from ctrd.snapshots.mount import unmount_all

    unmount_all(str(target))


# -- the life of a snapshot -----------------------------------------------------------------

@pytest.mark.integration
@NEEDS_OVERLAY
def test_prepare_mount_write_commit_child_sees_file(ns, mnt):
    assert ns.ok("prepare", "base") == ""  # no --target: nothing printed, as ctr
    target = mnt()
    commands = ns.ok("mounts", str(target), "base")
    assert commands.startswith("mount -t ") and f" {target} -o " in commands
    sh(commands)  # exactly what `ctrctl snapshots mounts /mnt base | sh` runs
    (target / "hello.txt").write_text("from base\n")
    (target / "dir").mkdir()
    umount(target)
    assert not (target / "hello.txt").exists()

    ns.ok("commit", "layer1", "base")
    assert {r["key"]: r["kind"] for r in ns.ls()} == {"layer1": "Committed"}

    out = ns.ok("prepare", "child", "layer1", "--target", str(target))
    assert out.startswith("mount -t overlay overlay ") and "lowerdir=" in out
    sh(out)
    assert (target / "hello.txt").read_text() == "from base\n"
    (target / "hello.txt").write_text("changed in child\n")
    umount(target)

    # the friendlier pair: mount and unmount by key
    view_dir = mnt("view")
    ns.ok("view", "look", "layer1")
    ns.ok("mount", "look", str(view_dir))
    assert (view_dir / "hello.txt").read_text() == "from base\n"  # the child's change: not here
    with pytest.raises(OSError):
        (view_dir / "new").write_text("x")  # a view is read-only
    ns.ok("unmount", str(view_dir))
    assert not mounts_under(view_dir)

    child_dir = mnt("child")
    ns.ok("mount", "child", str(child_dir))
    assert (child_dir / "hello.txt").read_text() == "changed in child\n"
    ns.ok("unmount", str(child_dir))

    rows = {r["key"]: (r["parent"], r["kind"]) for r in ns.ls()}
    assert rows == {"layer1": ("", "Committed"), "child": ("layer1", "Active"),
                    "look": ("layer1", "View")}


@pytest.mark.integration
@NEEDS_OVERLAY
def test_mounts_and_info_match_ctr(ns):
    if CTR is None:
        pytest.skip("ctr is not installed")
    ns.ok("prepare", "a")
    ns.ok("commit", "a1", "a")
    ns.ok("prepare", "b", "a1", "--label", "team=infra")
    for key in ("b",):
        ours = ns.ok("mounts", "/mnt/x", key)
        theirs = ns.ctr("mounts", "/mnt/x", key)
        assert theirs.returncode == 0, theirs.stderr
        assert ours == theirs.stdout
    for key in ("a1", "b"):
        theirs = ns.ctr("info", key)
        assert theirs.returncode == 0, theirs.stderr
        assert ns.ok("info", key) == theirs.stdout
    theirs = ns.ctr("tree")
    assert ns.ok("tree") == theirs.stdout
    # what ctr prepares, ctrctl sees (and the other way round)
    assert ns.ctr("prepare", "from-ctr", "a1").returncode == 0
    assert ns.info("from-ctr")["Parent"] == "a1"


@pytest.mark.integration
@NEEDS_OVERLAY
def test_tree_ls_info_usage_label(ns):
    ns.ok("prepare", "root-a")
    ns.ok("commit", "ra", "root-a", "--label", "layer=1")
    ns.ok("prepare", "mid-a", "ra")
    ns.ok("commit", "mid", "mid-a")
    ns.ok("prepare", "leaf1", "mid")
    ns.ok("view", "leaf2", "mid")
    ns.ok("prepare", "other")

    tree = ns.ok("tree").splitlines()
    # roots are unindented; each child follows its parent, one level deeper
    assert tree.index(" ra") < tree.index("  \\_ mid") < tree.index("    \\_ leaf1")
    assert tree.index("  \\_ mid") < tree.index("    \\_ leaf2")
    assert " other" in tree and len(tree) == 5

    table = ns.ok("ls").splitlines()
    assert table[0].split() == ["KEY", "PARENT", "KIND"]
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert rows == {"ra": ["Committed"], "mid": ["ra", "Committed"], "leaf1": ["mid", "Active"],
                    "leaf2": ["mid", "View"], "other": ["Active"]}
    assert ns.ok("ls", "-q").split() == sorted(rows)
    assert [r["key"] for r in ns.ls("parent==mid")] == ["leaf1", "leaf2"]

    info = ns.info("ra")
    assert list(info) == ["Kind", "Name", "Labels", "Created", "Updated"]  # no Parent: root
    assert info["Kind"] == "Committed" and info["Name"] == "ra"
    assert info["Labels"]["layer"] == "1"
    assert "containerd.io/gc.root" in info["Labels"]  # as ctr: safe from GC
    assert info["Created"].endswith("Z")
    assert ns.info("leaf1")["Parent"] == "mid"

    # usage: all, or the ones asked for
    usage = ns.ok("usage").splitlines()
    assert usage[0].split() == ["KEY", "SIZE", "INODES"]
    assert sorted(line.split()[0] for line in usage[1:]) == sorted(rows)
    one = json.loads(ns.ok("usage", "--format", "json", "ra"))
    assert len(one) == 1 and one[0]["key"] == "ra"
    assert isinstance(one[0]["size"], int) and one[0]["inodes"] >= 1
    in_bytes = ns.ok("usage", "-b", "ra").splitlines()[1].split()
    assert in_bytes == ["ra", str(one[0]["size"]), str(one[0]["inodes"])]
    r = ns("usage", "nope")
    assert r.returncode == 1 and r.stderr.startswith("ctrctl: ")

    # label: set, change and remove in one go; prints the labels after
    out = ns.ok("label", "leaf1", "a=1", "b=2")
    assert "a=1" in out and "b=2" in out
    out = ns.ok("label", "leaf1", "a=", "b=3").strip()
    assert "a=1" not in out and "b=3" in out
    labels = ns.info("leaf1")["Labels"]
    assert "a" not in labels and labels["b"] == "3"


@pytest.mark.integration
@NEEDS_OVERLAY
def test_rm_parent_with_children_refused(ns):
    ns.ok("prepare", "p-a")
    ns.ok("commit", "p", "p-a")
    ns.ok("prepare", "c", "p")
    r = ns("rm", "p")
    assert r.returncode == 1
    assert r.stderr.startswith("ctrctl: cannot remove snapshot p: ")
    assert "remove them first" in r.stderr and "Traceback" not in r.stderr
    assert {x["key"] for x in ns.ls()} == {"p", "c"}

    # several keys: the ones that can go, go; the command fails for the rest
    r = ns("rm", "p", "c")
    assert r.returncode == 1 and r.stdout.split() == ["c"]
    assert ns.ok("rm", "p").split() == ["p"]
    assert ns.ls() == []

    r = ns("rm", "never-was")
    assert r.returncode == 1 and "never-was" in r.stderr and "not found" in r.stderr


@pytest.mark.integration
@NEEDS_ROOT
def test_native_snapshotter(native, mnt, daemon):
    target = mnt()
    out = native.ok("prepare", "n1", "--target", str(target))
    assert out.startswith("mount -t bind ") and "rbind" in out
    sh(out)
    (target / "f").write_text("native\n")
    umount(target)
    native.ok("commit", "n1c", "n1")
    native.ok("prepare", "n2", "n1c")
    native.ok("mount", "n2", str(target))
    assert (target / "f").read_text() == "native\n"
    native.ok("unmount", str(target))
    assert {r["key"]: r["kind"] for r in native.ls()} == {"n1c": "Committed", "n2": "Active"}
    assert native.ok("tree").splitlines() == [" n1c", "  \\_ n2"]

    # the snapshotters are separate: overlayfs (the default) sees none of these
    default = NS(daemon, native.name)
    assert default.ls() == []
    # CONTAINERD_SNAPSHOTTER chooses it too, as for ctr
    env_ns = NS(daemon, native.name)
    out = env_ns.ok("ls", "-q", env=clean_env(CONTAINERD_SNAPSHOTTER="native"))
    assert out.split() == ["n1c", "n2"]
    assert json.loads(env_ns.ok("info", "n2", env=clean_env(CONTAINERD_SNAPSHOTTER="native"))
                      )["Parent"] == "n1c"

    native.ok("rm", "n2", "n1c")
    assert native.ls() == []


@pytest.mark.integration
@NEEDS_ROOT
def test_namespaces_are_isolated(daemon):
    a, b = NS(daemon, snapshotter="native"), NS(daemon, snapshotter="native")
    a.ok("prepare", "same-key")
    assert b.ls() == []
    r = b("info", "same-key")
    assert r.returncode == 1 and "not found" in r.stderr
    b.ok("prepare", "same-key")  # the same key in another namespace is another snapshot
    b.ok("label", "same-key", "who=b")
    assert "who" not in a.info("same-key").get("Labels", {})
    b.ok("rm", "same-key")
    assert [r["key"] for r in a.ls()] == ["same-key"]
    a.ok("rm", "same-key")


@pytest.mark.integration
@NEEDS_ROOT
def test_json_output(native):
    native.ok("prepare", "j1", "--label", "x=y")
    assert native.info("j1")["Labels"]["x"] == "y"
    native.ok("commit", "j", "j1", "--label", "x=z")  # commit's labels are the name's
    native.ok("view", "jv", "j")
    records = native.ls()
    assert [r["key"] for r in records] == ["j", "jv"]
    for r in records:
        assert set(r) == {"key", "parent", "kind", "labels", "created_at", "updated_at"}
    j, jv = records
    assert j["kind"] == "Committed" and j["parent"] == "" and j["labels"]["x"] == "z"
    assert jv["kind"] == "View" and jv["parent"] == "j"
    usage = json.loads(native.ok("usage", "--format", "json"))
    assert [u["key"] for u in usage] == ["j", "jv"]
    # prepare/view --mounts: the mounts as JSON, in ctr's shape
    mounts = json.loads(native.ok("prepare", "j2", "j", "--mounts"))
    assert mounts and set(mounts[0]) == {"Type", "Source", "Options"}
    assert mounts[0]["Type"] == "bind"


@pytest.mark.integration
def test_errors(ns, daemon):
    r = ns("--snapshotter", "nosuch", "ls")
    assert r.returncode == 1
    assert r.stderr.startswith("ctrctl: snapshotter not loaded: nosuch")
    r = ns("info", "missing")
    assert r.returncode == 1 and r.stderr.startswith("ctrctl: ") and "missing" in r.stderr
    r = ns("commit", "x", "missing")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = ns("view", "v", "missing-parent")
    assert r.returncode == 1 and r.stderr.startswith("ctrctl: ")
    r = ns("mounts", "/mnt")  # usage error
    assert r.returncode == 2
    r = ns("unmount", "/nonexistent-dir-for-ctrctl")
    assert r.returncode == 1 and r.stderr.startswith("ctrctl: cannot unmount ")
    # the alias, and help
    r = subprocess.run(CTRCTL + ["-a", daemon.address, "-n", ns.name, "snapshot", "ls"],
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    assert ok(r).split() == ["KEY", "PARENT", "KIND"]
    assert "mounts, m" in ns.ok("--help")


# -- unit tests: no daemon ------------------------------------------------------------------

def _info(name: str, parent: str = "") -> SimpleNamespace:
    return SimpleNamespace(name=name, parent=parent)


def test_tree_lines_like_ctr():
    from ctrd.cli.ctrctl import tree_lines

    infos = [_info("a"), _info("b", "a"), _info("c", "b"), _info("d", "a"), _info("e")]
    assert tree_lines(infos) == [" a", "  \\_ b", "    \\_ c", "  \\_ d", " e"]
    # a child listed before its parent, and a parent that is not listed (a placeholder)
    assert tree_lines([_info("x", "y"), _info("y")]) == [" y", "  \\_ x"]
    assert tree_lines([_info("x", "gone")]) == [" gone", "  \\_ x"]
    assert tree_lines([]) == []


def test_mount_commands_like_ctr():
    from ctrd.cli.ctrctl import mount_commands

    ms = [SimpleNamespace(type="overlay", source="overlay",
                          options=["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l"]),
          SimpleNamespace(type="bind", source="/s", options=["rbind", "ro"])]
    assert mount_commands("/mnt", ms) == (
        "mount -t overlay overlay /mnt -o index=off,workdir=/w,upperdir=/u,lowerdir=/l\n"
        "mount -t bind /s /mnt -o rbind,ro\n")
    assert mount_commands("/mnt", []) == ""


def test_go_time_and_ctr_info():
    from google.protobuf.timestamp_pb2 import Timestamp

    from ctrd.cli.ctrctl import ctr_info, go_time

    assert go_time(Timestamp(seconds=0, nanos=0)) == "1970-01-01T00:00:00Z"
    assert go_time(Timestamp(seconds=1, nanos=120000000)) == "1970-01-01T00:00:01.12Z"
    assert go_time(Timestamp(seconds=1, nanos=5)) == "1970-01-01T00:00:01.000000005Z"
    info = SimpleNamespace(kind=3, name="n", parent="", labels={},
                           created_at=Timestamp(seconds=1), updated_at=Timestamp(seconds=2))
    assert list(ctr_info(info)) == ["Kind", "Name", "Created", "Updated"]
    info.parent, info.labels, info.kind = "p", {"b": "2", "a": "1"}, 2
    out = ctr_info(info)
    assert list(out) == ["Kind", "Name", "Parent", "Labels", "Created", "Updated"]
    assert out["Kind"] == "Active" and list(out["Labels"]) == ["a", "b"]
