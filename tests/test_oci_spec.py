"""ctrd.oci: the default spec, image config and run options, user resolution against hostile
rootfs directories, the OOM score clamp, and one comparison with the spec the real ``ctr``
makes through containerd 1.6."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ctrd.errdefs import InvalidArgument, NotFound
from ctrd.oci import oom
from ctrd.oci.spec import (DEFAULT_CAPS, DEFAULT_UNIX_ENV, ImageConfig, RunOptions,
                           default_spec, exec_process, generate, parse_mount,
                           replace_or_append_env)
from ctrd.oci.user import MAX_FILE_SIZE, Rootfs, parse_passwd, read_root_file, resolve_user

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
          b"alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
          b"bob:x:1001:100::/home/bob:/bin/sh\n")
GROUP = (b"root:x:0:\n"
         b"users:x:100:alice\n"
         b"alice:x:1000:alice\n"
         b"wheel:x:10:alice,bob,root\n"
         b"audio:x:29:bob\n")


def make_root(tmp_path, passwd: bytes | None = PASSWD, group: bytes | None = GROUP):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc/passwd").write_bytes(passwd)
    if group is not None:
        (root / "etc/group").write_bytes(group)
    return root


# -- default spec ---------------------------------------------------------------------------

def test_default_spec_security_fields():
    s = default_spec("ns1", "web")
    caps = s["process"]["capabilities"]
    for k in ("bounding", "effective", "permitted"):
        assert caps[k] == list(DEFAULT_CAPS)
    assert caps.get("inheritable", []) == [] and caps.get("ambient", []) == []
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    assert s["process"]["noNewPrivileges"] is True
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert "/sys/devices/virtual/powercap" in s["linux"]["maskedPaths"]
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert "/proc/sysrq-trigger" in s["linux"]["readonlyPaths"]
    assert [n["type"] for n in s["linux"]["namespaces"]] == \
        ["pid", "ipc", "uts", "mount", "network"]
    assert s["linux"]["cgroupsPath"] == "/ns1/web"
    assert s["root"] == {"path": "rootfs"}
    dests = {m["destination"]: m for m in s["mounts"]}
    for d in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"):
        assert d in dests
    assert "ro" in dests["/sys"]["options"] and "ro" in dests["/sys/fs/cgroup"]["options"]
    assert s["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    json.dumps(s)  # JSON-ready


def test_default_spec_needs_namespace():
    with pytest.raises(InvalidArgument):
        default_spec("", "x")


# -- image config and options ---------------------------------------------------------------

def image(**kw) -> ImageConfig:
    return ImageConfig(**kw)


def test_image_config_parse_and_types():
    ic = ImageConfig.parse(json.dumps({"config": {
        "Entrypoint": ["/bin/ep"], "Cmd": ["a"], "Env": ["A=1"], "WorkingDir": "/w",
        "User": "alice", "StopSignal": "SIGQUIT", "Labels": {"k": "v"}}}).encode())
    assert (ic.entrypoint, ic.cmd, ic.env, ic.working_dir, ic.user, ic.stop_signal,
            ic.labels) == (["/bin/ep"], ["a"], ["A=1"], "/w", "alice", "SIGQUIT", {"k": "v"})
    assert ImageConfig.parse(b'{"config": {"Cmd": null}}').cmd == []
    assert ImageConfig.parse(b"{}") == ImageConfig()
    for bad in (b"[1]", b"{", b'{"config": {"Cmd": "sh"}}', b'{"config": {"Env": [1]}}',
                b'{"config": {"User": 0}}', b'{"config": {"Labels": {"a": 1}}}',
                b'{"config": 5}'):
        with pytest.raises(InvalidArgument, match="image config"):
            ImageConfig.parse(bad)
    with pytest.raises(InvalidArgument, match="limit"):
        ImageConfig.parse(b" " * (17 << 20))


def test_args_env_cwd(tmp_path):
    root = make_root(tmp_path)
    ic = image(entrypoint=["/ep"], cmd=["default"], env=["PATH=/img", "A=1", "B=2"],
               working_dir="/srv")
    s = generate("default", "c1", ic, str(root))
    assert s["process"]["args"] == ["/ep", "default"]
    assert s["process"]["env"] == ["PATH=/img", "A=1", "B=2"]
    assert s["process"]["cwd"] == "/srv"
    s = generate("default", "c1", ic, str(root),
                 RunOptions(args=["x", "y"], env=["B=override", "C=3", "A"], cwd="/tmp"))
    assert s["process"]["args"] == ["/ep", "x", "y"]  # args replace Cmd, keep Entrypoint
    assert s["process"]["env"] == ["PATH=/img", "B=override", "C=3"]  # request env wins
    assert s["process"]["cwd"] == "/tmp"
    # no Env in the image: containerd's default PATH
    s = generate("default", "c1", image(cmd=["sh"]), str(root))
    assert s["process"]["env"] == DEFAULT_UNIX_ENV and s["process"]["cwd"] == "/"
    with pytest.raises(InvalidArgument, match="no command"):
        generate("default", "c1", image(), str(root))
    with pytest.raises(InvalidArgument, match="absolute"):
        generate("default", "c1", image(cmd=["sh"]), str(root), RunOptions(cwd="rel"))


def test_replace_or_append_env():
    assert replace_or_append_env(["A=1", "B=2", "C=3"], ["B=x", "D=4", "A", "Z"]) == \
        ["B=x", "C=3", "D=4"]
    assert replace_or_append_env([], ["A=1", "A=2"]) == ["A=2"]
    assert replace_or_append_env(["A=1"], ["A", "A=3"]) == ["A=3"]


def test_tty_hostname_net_host_mounts_annotations(tmp_path):
    root = make_root(tmp_path)
    m = parse_mount("type=bind,src=/srv/data,dst=/data,options=rbind:ro")
    s = generate("ns", "c", image(cmd=["sh"]), str(root),
                 RunOptions(tty=True, hostname="box", net_host=True, mounts=[m],
                            annotations={"a": "b"}, readonly_rootfs=True),
                 host_hostname="thehost")
    p = s["process"]
    assert p["terminal"] is True and "TERM=xterm" in p["env"]
    assert "HOSTNAME=thehost" in p["env"]
    assert s["hostname"] == "box"
    assert "network" not in [n["type"] for n in s["linux"]["namespaces"]]
    dests = {x["destination"]: x for x in s["mounts"]}
    assert dests["/etc/hosts"] == {"destination": "/etc/hosts", "type": "bind",
                                   "source": "/etc/hosts", "options": ["rbind", "ro"]}
    assert dests["/etc/resolv.conf"]["source"] == "/etc/resolv.conf"
    assert dests["/data"] == {"destination": "/data", "type": "bind", "source": "/srv/data",
                              "options": ["rbind", "ro"]}
    assert s["annotations"] == {"a": "b"} and s["root"]["readonly"] is True
    # without net-host: own netns, no host files
    s = generate("ns", "c", image(cmd=["sh"]), str(root))
    assert "network" in [n["type"] for n in s["linux"]["namespaces"]]
    assert "/etc/hosts" not in {x["destination"] for x in s["mounts"]}


def test_parse_mount():
    assert parse_mount('type=tmpfs,source=tmpfs,destination=/t,options=size=1m:mode=755') == \
        {"destination": "/t", "type": "tmpfs", "source": "tmpfs",
         "options": ["size=1m", "mode=755"]}
    assert parse_mount("src=/a,dst=/b,options=rbind")["type"] == "bind"
    assert parse_mount('"src=/a,b",dst=/c,type=bind')["source"] == "/a,b"  # CSV quoting
    for bad, msg in (("dst=/x,type=bind,src", "key=val"), ("bogus=1,dst=/x", "not supported"),
                     ("type=bind,src=/a,dst=rel", "absolute"), ("src=/a,dst=/b", "type"),
                     ("type=bind,src=rel,dst=/b", "absolute source"),
                     ("a=1\nb=2", "one line")):
        with pytest.raises(InvalidArgument, match=msg):
            parse_mount(bad)


def test_exec_process():
    spec = generate("ns", "c", image(cmd=["sh"], env=["A=1"]), None)
    p = exec_process(spec, ["ls", "-l"], tty=True, cwd="/tmp", env=["B=2"])
    assert p["args"] == ["ls", "-l"] and p["terminal"] is True and p["cwd"] == "/tmp"
    assert p["env"] == ["A=1", "B=2"]
    assert p["capabilities"] == spec["process"]["capabilities"]
    assert spec["process"]["args"] == ["sh"]  # not modified
    with pytest.raises(InvalidArgument):
        exec_process(spec, [])


# -- users ----------------------------------------------------------------------------------

@pytest.mark.parametrize("user,want", [
    ("", (0, 0, [0, 10])),                 # no USER: root, plus root's groups
    ("alice", (1000, 1000, [1000, 100, 10])),  # group "alice" excluded, primary first
    ("1000", (1000, 1000, [1000, 100, 10])),
    ("bob", (1001, 100, [100, 10, 29])),   # primary already listed: kept in file order
    ("4242", (4242, 0, [0])),              # unknown uid: gid 0, no groups
    ("alice:audio", (1000, 29, [29, 100, 10])),
    ("alice:5", (1000, 5, [5, 100, 10])),
    ("1001:wheel", (1001, 10, [10, 29])),  # primary gid among the groups: as is
    ("7:8", (7, 8, [8])),
])
def test_resolve_user(tmp_path, user, want):
    root = make_root(tmp_path)
    u = resolve_user(user, str(root))
    assert (u.uid, u.gid, u.additional_gids) == want
    if user:
        s = generate("ns", "c", image(cmd=["sh"], user=user), str(root))
        assert s["process"]["user"] == u.to_spec()


def test_run_user_overrides_image_user(tmp_path):
    root = make_root(tmp_path)
    s = generate("ns", "c", image(cmd=["sh"], user="alice"), str(root), RunOptions(user="bob"))
    assert s["process"]["user"]["uid"] == 1001


def test_resolve_user_errors(tmp_path):
    root = make_root(tmp_path)
    with pytest.raises(NotFound, match="'carol' is not in the image's /etc/passwd"):
        resolve_user("carol", str(root))
    with pytest.raises(NotFound, match="group 'nogroup'"):
        resolve_user("alice:nogroup", str(root))
    with pytest.raises(InvalidArgument, match="invalid USER"):
        resolve_user("a:b:c", str(root))
    with pytest.raises(InvalidArgument, match="empty"):
        resolve_user("alice:", str(root))
    with pytest.raises(InvalidArgument, match="no rootfs"):
        resolve_user("alice", None)
    bare = make_root(tmp_path / "bare", passwd=None, group=None)
    assert resolve_user("1000", str(bare)).to_spec() == \
        {"uid": 1000, "gid": 0, "additionalGids": [0]}
    with pytest.raises(NotFound, match="has no /etc/passwd"):
        resolve_user("alice", str(bare))
    # a uid beyond MaxInt32 is a name, and there is no such name
    with pytest.raises(NotFound):
        resolve_user(str(1 << 31), str(root))


def test_hostile_garbage_lines(tmp_path):
    """runc reads a non-numeric uid as 0; here such lines are no entries at all."""
    passwd = (b"# comment\n\n   \nevil:x:notanumber:0::/:/bin/sh\nneg:x:-1:0::/:/bin/sh\n"
              b"big:x:99999999999:0::/:/bin/sh\nshort:x\n:x:5:5::/:\nplus:x:+7:7::/:\n"
              b"\xff\xfe:x:3:3\x00::/:\nalice:x:1000:1000::/home/alice:/bin/sh")
    root = make_root(tmp_path, passwd=passwd, group=b"g:x:zz:alice\nok:x:50:alice\n:::\n")
    assert [u.name for u in parse_passwd(passwd)] == ["alice"]
    with pytest.raises(NotFound):
        resolve_user("evil", str(root))
    assert resolve_user("0", str(root)).additional_gids == [0]  # no entry claims uid 0
    assert resolve_user("alice", str(root)).additional_gids == [1000, 50]


def test_hostile_symlinks_stay_in_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"pwned:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    # absolute and relative links out of the root: resolved inside it (missing there)
    os.symlink(str(outside / "passwd"), root / "etc/passwd")
    with pytest.raises(NotFound, match="has no /etc/passwd"):
        resolve_user("pwned", str(root))
    os.unlink(root / "etc/passwd")
    os.symlink("../../../../../../" + str(outside / "passwd").lstrip("/"), root / "etc/passwd")
    with pytest.raises(NotFound, match="has no /etc/passwd"):
        resolve_user("pwned", str(root))
    # /etc itself a link to / of the host: still the rootfs's /
    os.unlink(root / "etc/passwd")
    os.rmdir(root / "etc")
    os.symlink("/", root / "etc")
    (root / "passwd").write_bytes(b"inside:x:5:5::/:/bin/sh\n")
    assert resolve_user("inside", str(root)).uid == 5
    # a link inside the root is followed
    os.unlink(root / "etc")
    (root / "etc").mkdir()
    (root / "real").mkdir()
    (root / "real/pw").write_bytes(b"linked:x:6:6::/:/bin/sh\n")
    os.symlink("/real/pw", root / "etc/passwd")
    assert resolve_user("linked", str(root)).uid == 6
    # a loop
    os.unlink(root / "etc/passwd")
    os.symlink("passwd", root / "etc/passwd")
    with pytest.raises(InvalidArgument, match="symbolic links"):
        resolve_user("x", str(root))


def test_hostile_special_and_huge_files(tmp_path):
    root = make_root(tmp_path, passwd=None)
    os.mkfifo(root / "etc/passwd")  # would block an ordinary open
    with pytest.raises(InvalidArgument, match="/etc/passwd in the image is not a regular file"):
        resolve_user("alice", str(root))
    os.unlink(root / "etc/passwd")
    os.symlink("/dev/zero", root / "etc/passwd")  # resolves to <root>/dev/zero: missing
    assert read_root_file(str(root), "/etc/passwd") is None
    os.unlink(root / "etc/passwd")
    (root / "dev").mkdir()
    os.mknod(root / "dev/zero", 0o600 | 0o020000, os.makedev(1, 5))  # a real /dev/zero
    os.symlink("/dev/zero", root / "etc/passwd")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        resolve_user("alice", str(root))
    os.unlink(root / "etc/passwd")
    (root / "etc/passwd").mkdir()
    with pytest.raises(InvalidArgument, match="not a regular file"):
        resolve_user("alice", str(root))
    os.rmdir(root / "etc/passwd")
    with open(root / "etc/passwd", "wb") as f:
        f.truncate(MAX_FILE_SIZE + 1)  # sparse: cheap to make, refused before reading
    with pytest.raises(InvalidArgument, match="over the"):
        resolve_user("alice", str(root))


def test_rootfs_reads_once(tmp_path):
    root = make_root(tmp_path)
    db = Rootfs(str(root))
    assert resolve_user("alice", db).uid == 1000
    (root / "etc/passwd").unlink()
    assert resolve_user("bob", db).uid == 1001  # cached


# -- OOM score ------------------------------------------------------------------------------

def test_oom_restrict():
    assert oom.restrict(-500, current=0, privileged=True) == -500
    assert oom.restrict(-500, current=0, privileged=False) == 0
    assert oom.restrict(500, current=0, privileged=False) == 500
    assert oom.restrict(-10, current=-100, privileged=False) == -10
    for bad in (-1001, 1001, True, "5"):
        with pytest.raises(InvalidArgument, match="out of range"):
            oom.restrict(bad, current=0, privileged=True)
    assert oom.current_score() == int(open("/proc/self/oom_score_adj").read())
    assert oom.can_lower() == bool(int([ln for ln in open("/proc/self/status")
                                        if ln.startswith("CapEff")][0].split()[1], 16)
                                   & (1 << 24))


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv (util-linux) to drop CAP_SYS_RESOURCE")
def test_oom_clamped_without_cap_sys_resource():
    """A process without CAP_SYS_RESOURCE whose own score is 300 cannot ask for less."""
    code = ("import json; from ctrd.oci.spec import *; from ctrd.oci import oom;"
            "s = generate('ns', 'c', ImageConfig(cmd=['sh']), None,"
            " RunOptions(oom_score_adj=-500));"
            "t = generate('ns', 'c', ImageConfig(cmd=['sh']), None,"
            " RunOptions(oom_score_adj=700));"
            "print(json.dumps([oom.can_lower(), s['process']['oomScoreAdj'],"
            " t['process']['oomScoreAdj']]))")
    r = subprocess.run(
        ["setpriv", "--inh-caps=-sys_resource", "--bounding-set=-sys_resource", "--",
         "sh", "-c", f"echo 300 > /proc/self/oom_score_adj && exec {sys.executable} -c \"$0\"",
         code], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(
             os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [False, 300, 700]
    # this process: as asked if it holds the capability, else clamped to its own score
    s = generate("ns", "c", image(cmd=["sh"]), None, RunOptions(oom_score_adj=-500))
    assert s["process"]["oomScoreAdj"] == (-500 if oom.can_lower()
                                           else max(-500, oom.current_score()))


# -- against ctr ----------------------------------------------------------------------------

@pytest.mark.integration
def test_matches_ctr_spec(containerd, registry, tmp_path):
    """``ctr c create`` through containerd 1.6 and ctrd.oci agree on what matters."""
    from conftest import CTR, ctr
    from support.cmd import ok

    if CTR is None:
        pytest.skip("ctr is not installed (apt containerd)")
    ref = registry.ref("busybox")

    ok(ctr(containerd.address, "images", "pull", "--plain-http", ref, timeout=300))
    ok(ctr(containerd.address, "containers", "create", "--env", "FOO=bar", ref, "cmp1",
           "echo", "hi"))
    ok(ctr(containerd.address, "containers", "create", "--net-host", "--tty", ref, "cmp2"))
    try:
        theirs1 = json.loads(ok(ctr(containerd.address, "containers", "info", "cmp1")))["Spec"]
        theirs2 = json.loads(ok(ctr(containerd.address, "containers", "info", "cmp2")))["Spec"]
    finally:
        for cid in ("cmp1", "cmp2"):
            ctr(containerd.address, "containers", "rm", cid)
    # the busybox test image's config (tests/images.py): Env PATH, Cmd sh, WorkingDir /
    import images
    ic = ImageConfig(cmd=["sh"], env=[images.PATH_ENV], working_dir="/")
    root = make_root(tmp_path, passwd=b"root:x:0:0:root:/root:/bin/sh\n"
                     b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
                     b"nobody:x:65534:65534:nobody:/home:/bin/false\n",
                     group=b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n")
    ours1 = generate("default", "cmp1", ic, str(root),
                     RunOptions(args=["echo", "hi"], env=["FOO=bar"]))
    ours2 = generate("default", "cmp2", ic, str(root), RunOptions(net_host=True, tty=True),
                     host_hostname=os.uname().nodename)
    for ours, theirs in ((ours1, theirs1), (ours2, theirs2)):
        for key in ("ociVersion", "root"):
            assert ours[key] == theirs[key], key
        for key in ("user", "args", "env", "cwd", "capabilities", "rlimits",
                    "noNewPrivileges", "terminal"):
            assert ours["process"].get(key) == theirs["process"].get(key), key
        for key in ("namespaces", "cgroupsPath", "readonlyPaths"):
            assert ours["linux"][key] == theirs["linux"][key], key
        assert ours["linux"]["resources"]["devices"] == \
            theirs["linux"]["resources"]["devices"]
        # ours adds two hardenings (see ctrd.oci.spec): the powercap mask, read-only cgroupfs
        assert ours["linux"]["maskedPaths"] == \
            theirs["linux"]["maskedPaths"] + ["/sys/devices/virtual/powercap"]
        cgroup = [m for m in ours["mounts"] if m["destination"] == "/sys/fs/cgroup"]
        assert [m for m in ours["mounts"] if m not in cgroup] == theirs["mounts"]
