"""ctrd.cri.spec: the OCI spec of a CRI container (containerd 1.6's CreateContainer rules) from
real runtime.v1 messages, hostile image rootfs directories and requests, and one run of a
built spec with the real runc (user, groups, capabilities, seccomp, no_new_privs, a pod file
bind mount observed from inside)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from ctrd.api.cri.runtime.v1 import api_pb2 as cri
from ctrd.cri import seccomp
from ctrd.cri.config import CRIConfig, RuntimeHandler
from ctrd.cri.spec import (CAPABILITIES, HostFacts, SandboxFacts, cgroups_path,
                           container_spec, exec_process, lookup_mount, normalize_capability,
                           passthrough_annotations, pod_sysctls, process_args)
from ctrd.errdefs import FailedPrecondition, InvalidArgument, NotFound
from ctrd.oci.spec import DEFAULT_CAPS, MASKED_PATHS, ImageConfig

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
          b"bob:x:1001:100::/home/bob:/bin/sh\n")
GROUP = (b"root:x:0:\n"
         b"users:x:100:alice\n"
         b"alice:x:1000:alice\n"
         b"wheel:x:10:alice,root\n"
         b"audio:x:29:bob\n")

# a host like this one (no CAP_SYS_RESOURCE), but fixed so the tests do not depend on it
HOST = HostFacts(cgroup2=False, hugetlb=True, swap=True, seccomp=True,
                 capabilities=tuple(c for c in CAPABILITIES if c != "CAP_SYS_RESOURCE"),
                 oom_score_adj=0, can_lower_oom=False, hostname="node1")
IMAGE = {"architecture": "amd64", "os": "linux",
         "config": {"Entrypoint": ["/entry"], "Cmd": ["serve"], "Env": ["PATH=/img/bin",
                                                                        "IMG=1"],
                    "WorkingDir": "/srv", "User": ""}}


def make_root(tmp_path, passwd: bytes | None = PASSWD, group: bytes | None = GROUP):
    root = tmp_path / "rootfs"
    if root.exists():
        return str(root)
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc/passwd").write_bytes(passwd)
    if group is not None:
        (root / "etc/group").write_bytes(group)
    return str(root)


def sandbox_config(privileged: bool = False, **kw) -> cri.PodSandboxConfig:
    sc = cri.LinuxSandboxSecurityContext(privileged=privileged)
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="pod", uid="pod-uid", namespace="default"),
        hostname=kw.pop("hostname", "podhost"),
        linux=cri.LinuxPodSandboxConfig(security_context=sc, **kw))


def container_config(sc: cri.LinuxContainerSecurityContext | None = None,
                     resources: cri.LinuxContainerResources | None = None,
                     **kw) -> cri.ContainerConfig:
    linux = cri.LinuxContainerConfig(security_context=sc or cri.LinuxContainerSecurityContext())
    if resources is not None:
        linux.resources.CopyFrom(resources)
    return cri.ContainerConfig(metadata=cri.ContainerMetadata(name="app"),
                               image=cri.ImageSpec(image="example.com/app:1"), linux=linux,
                               **kw)


def facts(**kw) -> SandboxFacts:
    kw.setdefault("netns_path", "/run/netns/pod")
    kw.setdefault("ipcns_path", "/run/ctrd/pod/ipc")
    kw.setdefault("utsns_path", "/run/ctrd/pod/uts")
    return SandboxFacts(id="sandbox1", **kw)


def build(tmp_path, config=None, sbx=None, image=IMAGE, sandbox=None, cfg=None, **kw):
    root = kw.pop("rootfs", None)
    if root is None:
        root = make_root(tmp_path)
    kw.setdefault("host", HOST)
    return container_spec("ctr1", config or container_config(), sbx or sandbox_config(),
                          image, sandbox or facts(), root, cfg, **kw)


def ns_map(spec) -> dict:
    return {n["type"]: n.get("path", "") for n in spec["linux"]["namespaces"]}


def mount_at(spec, dst):
    found = [m for m in spec["mounts"] if m["destination"] == dst]
    assert len(found) <= 1
    return found[0] if found else None


# -- process --------------------------------------------------------------------------------

@pytest.mark.parametrize("command,args,image,want", [
    ([], [], {"Entrypoint": ["/e"], "Cmd": ["c"]}, ["/e", "c"]),
    ([], ["a"], {"Entrypoint": ["/e"], "Cmd": ["c"]}, ["/e", "a"]),
    (["/x"], [], {"Entrypoint": ["/e"], "Cmd": ["c"]}, ["/x"]),
    (["/x"], ["a"], {"Entrypoint": ["/e"], "Cmd": ["c"]}, ["/x", "a"]),
    ([], [], {"Entrypoint": [""], "Cmd": ["sh"]}, ["sh"]),   # ENTRYPOINT [""]: none
    ([], ["a"], {"Cmd": ["c"]}, ["a"]),
])
def test_process_args(command, args, image, want):
    img = ImageConfig(entrypoint=image.get("Entrypoint", []), cmd=image.get("Cmd", []))
    assert process_args(command, args, img) == want


def test_no_command_is_an_error(tmp_path):
    with pytest.raises(InvalidArgument, match="no command"):
        build(tmp_path, image={"config": {}})


def test_env_cwd_hostname_tty(tmp_path):
    config = container_config(envs=[cri.KeyValue(key="IMG", value="2"),
                                    cri.KeyValue(key="NEW", value="a=b")], tty=True)
    spec = build(tmp_path, config)
    proc = spec["process"]
    # default PATH replaced by the image's, HOSTNAME from the pod, request env over image env
    assert proc["env"] == ["PATH=/img/bin", "TERM=xterm", "HOSTNAME=podhost", "IMG=2",
                           "NEW=a=b"]
    assert proc["args"] == ["/entry", "serve"] and proc["cwd"] == "/srv"
    assert proc["terminal"] is True
    assert "hostname" not in spec  # the pod's UTS namespace has it already
    # no image env: containerd's default PATH; no pod hostname: the host's
    spec = build(tmp_path / "b", container_config(working_dir="/w"),
                 sandbox_config(hostname=""), image={"config": {"Cmd": ["sh"]}})
    assert spec["process"]["env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=node1"]
    assert spec["process"]["cwd"] == "/w" and "terminal" not in spec["process"]


@pytest.mark.parametrize("key", ["", "A=B", "A\0"])
def test_bad_env_names(tmp_path, key):
    with pytest.raises(InvalidArgument, match="environment variable"):
        build(tmp_path, container_config(envs=[cri.KeyValue(key=key, value="v")]))


def test_relative_cwd_is_an_error(tmp_path):
    with pytest.raises(InvalidArgument, match="absolute"):
        build(tmp_path, container_config(working_dir="rel"))


def test_image_config_forms(tmp_path):
    inner = build(tmp_path, image={"Cmd": ["sh"], "Env": ["X=1"]})  # only the config object
    assert inner["process"]["args"] == ["sh"] and "X=1" in inner["process"]["env"]
    parsed = build(tmp_path / "b", image=ImageConfig(cmd=["true"]))
    assert parsed["process"]["args"] == ["true"]
    with pytest.raises(InvalidArgument, match="Cmd"):
        build(tmp_path / "c", image={"config": {"Cmd": "sh"}})


# -- user and groups ------------------------------------------------------------------------

def sc_user(**kw) -> cri.LinuxContainerSecurityContext:
    for k in ("run_as_user", "run_as_group"):
        if k in kw:
            kw[k] = cri.Int64Value(value=kw[k])
    return cri.LinuxContainerSecurityContext(**kw)


@pytest.mark.parametrize("sc,image_user,want", [
    (dict(), "", (0, 0, [0, 10])),                        # root, member of wheel
    (dict(run_as_user=1000), "", (1000, 1000, [10, 100, 1000])),
    (dict(run_as_username="alice"), "", (1000, 1000, [10, 100, 1000])),
    (dict(run_as_user=1000, run_as_group=29), "", (1000, 29, [10, 29, 100])),
    (dict(run_as_user=4242), "", (4242, 0, [0])),         # not in passwd: gid 0
    (dict(), "bob", (1001, 100, [29, 100])),              # the image's USER
    (dict(run_as_user=0), "bob", (0, 0, [0, 10])),        # the request's user wins
    (dict(run_as_user=1000, supplemental_groups=[7, 100, 5]), "",
     (1000, 1000, [5, 7, 10, 100, 1000])),
])
def test_users_and_groups(tmp_path, sc, image_user, want):
    image = {"config": {"Cmd": ["sh"], "User": image_user}}
    spec = build(tmp_path, container_config(sc_user(**sc)), image=image)
    u = spec["process"]["user"]
    assert (u["uid"], u["gid"], u["additionalGids"]) == want


@pytest.mark.parametrize("sc,err,match", [
    (dict(run_as_group=5), InvalidArgument, "without user"),
    (dict(run_as_user=-1), InvalidArgument, "out of range"),
    (dict(run_as_user=1 << 31), InvalidArgument, "out of range"),
    (dict(run_as_username="a:b"), InvalidArgument, "not a user name"),
    (dict(run_as_username="nobody"), NotFound, "nobody"),
    (dict(run_as_user=1000, supplemental_groups=[-3]), InvalidArgument, "supplemental"),
])
def test_user_errors(tmp_path, sc, err, match):
    with pytest.raises(err, match=match):
        build(tmp_path, container_config(sc_user(**sc)))


def test_hostile_rootfs(tmp_path):
    # a garbage line runc would read as uid 0 is no entry here: the user does not exist
    root = make_root(tmp_path, passwd=b"evil:x:abc:0::/:/bin/sh\n")
    with pytest.raises(NotFound, match="evil"):
        build(tmp_path, container_config(sc_user(run_as_username="evil")), rootfs=root)
    # /etc/passwd pointing out of the rootfs is read inside it (where it does not exist)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"mallory:x:0:0::/:/bin/sh\n")
    root2 = tmp_path / "r2"
    (root2 / "etc").mkdir(parents=True)
    os.symlink(f"../../../../../../..{outside}/passwd", root2 / "etc/passwd")
    with pytest.raises(NotFound, match="mallory"):
        build(tmp_path, container_config(sc_user(run_as_username="mallory")), rootfs=str(root2))
    # a FIFO at /etc/group is refused, never opened for a blocking read
    root3 = tmp_path / "r3"
    (root3 / "etc").mkdir(parents=True)
    (root3 / "etc/passwd").write_bytes(PASSWD)
    os.mkfifo(root3 / "etc/group")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        build(tmp_path, container_config(sc_user(run_as_user=1000)), rootfs=str(root3))


# -- capabilities, privileged, paths --------------------------------------------------------

def caps_of(spec):
    c = spec["process"]["capabilities"]
    assert c["bounding"] == c["effective"] == c["permitted"]
    assert "ambient" not in c and "inheritable" not in c
    return c["bounding"]


@pytest.mark.parametrize("add,drop,want", [
    ([], [], list(DEFAULT_CAPS)),
    (["ALL"], ["CHOWN"], [c for c in HOST.capabilities if c != "CAP_CHOWN"]),
    (["net_admin", "CAP_SYS_TIME"], ["ALL"], ["CAP_NET_ADMIN", "CAP_SYS_TIME"]),
    ([], ["KILL", "cap_net_raw"], [c for c in DEFAULT_CAPS
                                    if c not in ("CAP_KILL", "CAP_NET_RAW")]),
    (["all"], ["all"], []),
])
def test_capabilities(tmp_path, add, drop, want):
    sc = cri.LinuxContainerSecurityContext(
        capabilities=cri.Capability(add_capabilities=add, drop_capabilities=drop))
    assert caps_of(build(tmp_path, container_config(sc))) == want


def test_capability_errors(tmp_path):
    assert normalize_capability("sys_admin") == "CAP_SYS_ADMIN"
    for caps, match in ((cri.Capability(add_capabilities=["FLY"]), "FLY"),
                        (cri.Capability(add_ambient_capabilities=["CHOWN"]), "ambient")):
        with pytest.raises(InvalidArgument, match=match):
            build(tmp_path, container_config(cri.LinuxContainerSecurityContext(
                capabilities=caps)))


def test_masked_readonly_paths_and_flags(tmp_path):
    sc = cri.LinuxContainerSecurityContext(masked_paths=["/proc/kcore"],
                                           readonly_paths=["/proc/sys"], no_new_privs=True,
                                           readonly_rootfs=True)
    spec = build(tmp_path, container_config(sc))
    assert spec["linux"]["maskedPaths"] == ["/proc/kcore"]
    assert spec["linux"]["readonlyPaths"] == ["/proc/sys"]
    assert spec["process"]["noNewPrivileges"] is True and spec["root"]["readonly"] is True
    # the pod's etc files follow a read-only rootfs
    spec = build(tmp_path / "b", container_config(sc),
                 sandbox=facts(hosts_path=str(tmp_path), resolv_conf_path=str(tmp_path)))
    assert mount_at(spec, "/etc/hosts")["options"][-1] == "ro"
    # none asked: none (containerd #5029); disable_proc_mount: the runtime defaults
    spec = build(tmp_path / "c")
    assert "maskedPaths" not in spec["linux"] and spec["process"]["noNewPrivileges"] is False
    assert "readonly" not in spec["root"]
    spec = build(tmp_path / "d", container_config(sc), cfg=CRIConfig(disable_proc_mount=True))
    assert spec["linux"]["maskedPaths"] == list(MASKED_PATHS)
    with pytest.raises(InvalidArgument, match="absolute"):
        build(tmp_path / "e", container_config(
            cri.LinuxContainerSecurityContext(masked_paths=["proc/kcore"])))


def test_privileged(tmp_path):
    sc = cri.LinuxContainerSecurityContext(
        privileged=True, masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"],
        seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault))
    with pytest.raises(InvalidArgument, match="no privileged container allowed"):
        build(tmp_path, container_config(sc))
    spec = build(tmp_path, container_config(sc), sandbox_config(privileged=True))
    assert caps_of(spec) == list(HOST.capabilities)
    linux = spec["linux"]
    assert "maskedPaths" not in linux and "readonlyPaths" not in linux
    assert "seccomp" not in linux
    assert "rw" in mount_at(spec, "/sys")["options"]
    assert "ro" not in mount_at(spec, "/sys/fs/cgroup")["options"]
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    null = [d for d in linux["devices"] if d["path"] == "/dev/null"]
    assert null and null[0]["type"] == "c" and (null[0]["major"], null[0]["minor"]) == (1, 3)
    # privileged_without_host_devices: the default device rules and only requested devices
    spec = build(tmp_path, container_config(sc), sandbox_config(privileged=True),
                 handler=RuntimeHandler(privileged_without_host_devices=True))
    assert spec["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert "devices" not in spec["linux"]


# -- mounts ---------------------------------------------------------------------------------

def test_pod_mounts_and_request_mounts(tmp_path):
    files = tmp_path / "pod"
    files.mkdir()
    for name in ("hostname", "hosts", "resolv.conf"):
        (files / name).write_text(name)
    (files / "shm").mkdir()
    sbx = facts(hostname_path=str(files / "hostname"), hosts_path=str(files / "hosts"),
                resolv_conf_path=str(files / "resolv.conf"), shm_path=str(files / "shm"))
    spec = build(tmp_path, sandbox=sbx)
    for dst, src in (("/etc/hostname", "hostname"), ("/etc/hosts", "hosts"),
                     ("/etc/resolv.conf", "resolv.conf"), ("/dev/shm", "shm")):
        m = mount_at(spec, dst)
        assert m == {"destination": dst, "type": "bind", "source": str(files / src),
                     "options": ["rbind", "rprivate", "rw"]}
    assert mount_at(spec, "/run") is None  # containerd's WithoutRunMount
    # a request mount at /etc/hosts wins; missing hostname file: not mounted; host IPC: the
    # host's /dev/shm
    (files / "hostname").unlink()
    mine = tmp_path / "myhosts"
    mine.write_text("x")
    config = container_config(
        cri.LinuxContainerSecurityContext(namespace_options=cri.NamespaceOption(ipc=2)),
        mounts=[cri.Mount(container_path="/etc/hosts", host_path=str(mine), readonly=True)])
    spec = build(tmp_path, config, sandbox=sbx)
    assert mount_at(spec, "/etc/hostname") is None
    assert mount_at(spec, "/etc/hosts")["source"] == str(mine)
    assert mount_at(spec, "/etc/hosts")["options"] == ["rbind", "rprivate", "ro"]
    assert mount_at(spec, "/dev/shm")["source"] == "/dev/shm"


def test_mount_order_creation_symlinks_and_dev(tmp_path):
    link = tmp_path / "link"
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, link)
    new = tmp_path / "does/not/exist"
    config = container_config(mounts=[
        cri.Mount(container_path="/a/b/c", host_path=str(real)),
        cri.Mount(container_path="/a", host_path=str(link)),
        cri.Mount(container_path="/a/b", host_path=str(new)),
        cri.Mount(container_path="/dev", host_path=str(real)),
    ])
    spec = build(tmp_path, config)
    binds = [m for m in spec["mounts"] if m["type"] == "bind"]
    assert [m["destination"] for m in binds] == ["/a", "/dev", "/a/b", "/a/b/c"]
    assert binds[0]["source"] == str(real)          # symlink resolved
    assert new.is_dir()                             # created, as containerd does
    assert not [m for m in spec["mounts"] if m["destination"].startswith("/dev/")]


@pytest.mark.parametrize("mount,match", [
    (cri.Mount(container_path="rel", host_path="/tmp"), "absolute"),
    (cri.Mount(container_path="/x", host_path="tmp"), "absolute"),
    (cri.Mount(container_path="/x", host_path="/tmp", propagation=7), "propagation"),
    (cri.Mount(container_path="/x", host_path="/tmp", recursive_read_only=True), "recursive"),
    (cri.Mount(container_path="/x", host_path="/tmp",
               uidMappings=[cri.IDMapping(host_id=1, container_id=0, length=1)]), "idmap"),
    (cri.Mount(container_path="/x", image=cri.ImageSpec(image="busybox")), "image"),
])
def test_bad_mounts(tmp_path, mount, match):
    with pytest.raises(InvalidArgument, match=match):
        build(tmp_path, container_config(mounts=[mount]))


def test_symlink_loop_mount_source(tmp_path):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(InvalidArgument, match="symlink"):
        build(tmp_path, container_config(mounts=[
            cri.Mount(container_path="/x", host_path=str(tmp_path / "a"))]))


MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:30 / /srv rw,relatime - tmpfs tmpfs rw
31 30 0:31 / /srv/slave rw,relatime master:7 - tmpfs tmpfs rw
32 22 0:32 / /mnt/with\\040space rw shared:9 master:2 - tmpfs tmpfs rw
33 30 0:33 / /srv rw,relatime shared:12 - tmpfs tmpfs rw
"""


def test_lookup_mount(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    assert lookup_mount("/srv/slave/x", str(mi)) == ("/srv/slave", ["master:7"])
    assert lookup_mount("/srv2", str(mi)) == ("/", ["shared:1"])
    assert lookup_mount("/mnt/with space/d", str(mi)) == ("/mnt/with space",
                                                           ["shared:9", "master:2"])
    assert lookup_mount("/srv/a", str(mi)) == ("/srv", ["shared:12"])  # the latest on top


def test_propagation_checked_against_mountinfo(tmp_path):
    (tmp_path / "priv").mkdir()
    (tmp_path / "shared").mkdir()
    mi = tmp_path / "mountinfo"
    mi.write_text(f"1 0 0:1 / / rw - ext4 x rw\n"
                  f"2 1 0:2 / {tmp_path}/priv rw - tmpfs t rw\n"
                  f"3 1 0:3 / {tmp_path}/shared rw shared:5 - tmpfs t rw\n")

    def spec_for(path, prop):
        return build(tmp_path, container_config(mounts=[
            cri.Mount(container_path="/m", host_path=str(tmp_path / path), propagation=prop)]),
            mountinfo=str(mi))

    with pytest.raises(FailedPrecondition, match="not a shared mount"):
        spec_for("priv", cri.PROPAGATION_BIDIRECTIONAL)
    with pytest.raises(FailedPrecondition, match="not a shared or slave mount"):
        spec_for("priv", cri.PROPAGATION_HOST_TO_CONTAINER)
    spec = spec_for("shared", cri.PROPAGATION_BIDIRECTIONAL)
    assert mount_at(spec, "/m")["options"] == ["rbind", "rshared", "rw"]
    assert spec["linux"]["rootfsPropagation"] == "rshared"
    spec = spec_for("shared", cri.PROPAGATION_HOST_TO_CONTAINER)
    assert mount_at(spec, "/m")["options"] == ["rbind", "rslave", "rw"]
    assert spec["linux"]["rootfsPropagation"] == "rslave"


def _run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


def test_propagation_with_real_mounts(tmp_path):
    """A real shared tmpfs and a slave bind of it, checked through /proc/self/mountinfo."""
    shared, slave = tmp_path / "shared", tmp_path / "slave"
    shared.mkdir()
    slave.mkdir()
    mounted = []
    try:
        _run("mount", "-t", "tmpfs", "ctrd-test", str(shared))
        mounted.append(shared)
        _run("mount", "--make-shared", str(shared))
        _run("mount", "--bind", str(shared), str(slave))
        mounted.append(slave)
        _run("mount", "--make-slave", str(slave))
        (shared / "d").mkdir()
        spec = build(tmp_path, container_config(mounts=[
            cri.Mount(container_path="/s", host_path=str(shared / "d"), propagation=2),
            cri.Mount(container_path="/v", host_path=str(slave / "d"), propagation=1)]))
        assert spec["linux"]["rootfsPropagation"] == "rshared"
        with pytest.raises(FailedPrecondition, match="not a shared mount"):
            build(tmp_path, container_config(mounts=[
                cri.Mount(container_path="/v", host_path=str(slave / "d"), propagation=2)]))
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", str(m)], check=False)


# -- devices --------------------------------------------------------------------------------

def test_devices(tmp_path):
    config = container_config(
        sc_user(run_as_user=1000, run_as_group=29),
        devices=[cri.Device(container_path="/dev/mynull", host_path="/dev/null",
                            permissions="rw")])
    spec = build(tmp_path, config)
    dev = spec["linux"]["devices"]
    st = os.stat("/dev/null")
    assert dev == [{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
                    "fileMode": 0o666, "uid": st.st_uid, "gid": st.st_gid}]
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}
    spec = build(tmp_path, config, cfg=CRIConfig(device_ownership_from_security_context=True))
    assert (spec["linux"]["devices"][0]["uid"], spec["linux"]["devices"][0]["gid"]) == (1000, 29)


def test_device_directory(tmp_path):
    d = tmp_path / "devs"
    (d / "sub").mkdir(parents=True)
    os.mknod(d / "zero", 0o600 | 0o020000, os.makedev(1, 5))
    os.mknod(d / "sub/full", 0o640 | 0o020000, os.makedev(1, 7))
    os.mkfifo(d / "fifo")
    (d / "file").write_text("x")
    spec = build(tmp_path, container_config(devices=[
        cri.Device(container_path="/dev/x", host_path=str(d), permissions="rwm")]))
    got = {(x["path"], x["major"], x["minor"], x["fileMode"]) for x in spec["linux"]["devices"]}
    assert got == {("/dev/x/zero", 1, 5, 0o600), ("/dev/x/sub/full", 1, 7, 0o640)}


@pytest.mark.parametrize("device,match", [
    (cri.Device(container_path="/dev/x", host_path="/dev/null", permissions=""), "permissions"),
    (cri.Device(container_path="/dev/x", host_path="/dev/null", permissions="rwx"),
     "permissions"),
    (cri.Device(container_path="/dev/x", host_path="/dev/null", permissions="rr"),
     "permissions"),
    (cri.Device(container_path="/dev/x", host_path="/etc/hostname", permissions="r"),
     "not a device"),
    (cri.Device(container_path="/dev/x", host_path="/dev/no-such", permissions="r"),
     "no-such"),
    (cri.Device(container_path="dev/x", host_path="/dev/null", permissions="r"), "absolute"),
])
def test_bad_devices(tmp_path, device, match):
    with pytest.raises(InvalidArgument, match=match):
        build(tmp_path, container_config(devices=[device]))


# -- seccomp and apparmor -------------------------------------------------------------------

def sc_seccomp(kind, ref="", **kw):
    return cri.LinuxContainerSecurityContext(
        seccomp=cri.SecurityProfile(profile_type=kind, localhost_ref=ref), **kw)


def test_seccomp_runtime_default(tmp_path):
    spec = build(tmp_path, container_config(sc_seccomp(cri.SecurityProfile.RuntimeDefault)))
    prof = spec["linux"]["seccomp"]
    assert prof == seccomp.default_profile(DEFAULT_CAPS)
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
    names = {n for s in prof["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" for n in s["names"]}
    assert {"read", "execve", "chroot"} <= names and "mount" not in names
    clone3 = [s for s in prof["syscalls"] if s["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    # the profile follows the final capabilities: CAP_SYS_ADMIN unlocks mount and clone
    sc = sc_seccomp(cri.SecurityProfile.RuntimeDefault,
                    capabilities=cri.Capability(add_capabilities=["SYS_ADMIN"]))
    prof = build(tmp_path, container_config(sc))["linux"]["seccomp"]
    names = {n for s in prof["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" for n in s["names"]}
    assert {"mount", "clone", "clone3", "unshare"} <= names
    assert not [s for s in prof["syscalls"] if s["names"] == ["clone3"] and s.get("errnoRet")]


def test_seccomp_unconfined_none_and_deprecated_paths(tmp_path):
    assert "seccomp" not in build(tmp_path)["linux"]  # nothing asked: no profile
    assert "seccomp" not in build(tmp_path, container_config(
        sc_seccomp(cri.SecurityProfile.Unconfined)))["linux"]
    for path, has in (("runtime/default", True), ("docker/default", True),
                      ("unconfined", False)):
        sc = cri.LinuxContainerSecurityContext(seccomp_profile_path=path)
        assert ("seccomp" in build(tmp_path, container_config(sc))["linux"]) is has
    with pytest.raises(InvalidArgument, match="invalid profile"):
        build(tmp_path, container_config(
            cri.LinuxContainerSecurityContext(seccomp_profile_path="/abs/file")))
    # unset_seccomp_profile: the profile of containers that ask for none
    spec = build(tmp_path, cfg=CRIConfig(unset_seccomp_profile="runtime/default"))
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    with pytest.raises(InvalidArgument, match="LocalhostRef"):
        build(tmp_path, container_config(sc_seccomp(cri.SecurityProfile.RuntimeDefault,
                                                    "/x.json")))
    # a kernel without seccomp: asking for a profile fails, Unconfined is fine
    no = HostFacts(**{**HOST.__dict__, "seccomp": False})
    with pytest.raises(FailedPrecondition, match="seccomp is not supported"):
        build(tmp_path, container_config(sc_seccomp(cri.SecurityProfile.RuntimeDefault)),
              host=no)
    build(tmp_path, container_config(sc_seccomp(cri.SecurityProfile.Unconfined)), host=no)


def test_seccomp_localhost(tmp_path):
    prof = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                          "comment": "dropped", "args": [{"index": 0, "value": 1,
                                                          "op": "SCMP_CMP_EQ", "x": 1}]}],
            "archMap": "dropped as by Go's decoder"}
    f = tmp_path / "prof.json"
    f.write_text(json.dumps(prof))
    for ref in (str(f), "localhost/" + str(f)):
        spec = build(tmp_path, container_config(sc_seccomp(cri.SecurityProfile.Localhost, ref)))
        assert spec["linux"]["seccomp"] == {
            "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}
    sc = cri.LinuxContainerSecurityContext(seccomp_profile_path="localhost/" + str(f))
    assert build(tmp_path, container_config(sc))["linux"]["seccomp"]["defaultAction"] == \
        "SCMP_ACT_ALLOW"


@pytest.mark.parametrize("content,match", [
    (None, "No such file"),
    ("not json", "decoding seccomp profile failed"),
    ("[]", "not a JSON object"),
    ('{"syscalls": []}', "defaultAction"),
    ('{"defaultAction": "A", "syscalls": [{"names": "read", "action": "A"}]}', "names"),
    ('{"defaultAction": "A", "syscalls": [{"names": ["read"], "action": "A", '
     '"args": [{"index": -1}]}]}', "index"),
    ("fifo", "not a regular file"),
    ("huge", "over the"),
])
def test_seccomp_localhost_hostile(tmp_path, content, match):
    f = tmp_path / "prof.json"
    if content == "fifo":
        os.mkfifo(f)
    elif content == "huge":
        with open(f, "wb") as h:
            h.truncate((1 << 20) + 1)
    elif content is not None:
        f.write_text(content)
    with pytest.raises(InvalidArgument, match=match) as e:
        build(tmp_path, container_config(sc_seccomp(cri.SecurityProfile.Localhost, str(f))))
    assert str(f) in str(e.value)


def test_apparmor(tmp_path):
    sc = cri.LinuxContainerSecurityContext(apparmor=cri.SecurityProfile(
        profile_type=cri.SecurityProfile.Localhost, localhost_ref="my-profile"))
    # this host has no AppArmor: requests are ignored
    assert "apparmorProfile" not in build(tmp_path, container_config(sc))["process"]
    aa = HostFacts(**{**HOST.__dict__, "apparmor": True,
                      "apparmor_profiles": frozenset({"my-profile",
                                                      "cri-containerd.apparmor.d"})})
    assert build(tmp_path, container_config(sc), host=aa)["process"]["apparmorProfile"] == \
        "my-profile"
    assert build(tmp_path, host=aa)["process"]["apparmorProfile"] == "cri-containerd.apparmor.d"
    assert "apparmorProfile" not in build(tmp_path, host=aa,
                                          cfg=CRIConfig(disable_apparmor=True))["process"]
    sc.apparmor.localhost_ref = "missing"
    with pytest.raises(NotFound, match="missing"):
        build(tmp_path, container_config(sc), host=aa)


# -- resources, cgroups, namespaces ---------------------------------------------------------

def test_resources(tmp_path):
    r = cri.LinuxContainerResources(cpu_period=100000, cpu_quota=50000, cpu_shares=256,
                                    cpuset_cpus="0-1", cpuset_mems="0",
                                    memory_limit_in_bytes=64 << 20,
                                    memory_swap_limit_in_bytes=64 << 20,
                                    hugepage_limits=[cri.HugepageLimit(page_size="2MB",
                                                                       limit=1 << 21)])
    res = build(tmp_path, container_config(resources=r))["linux"]["resources"]
    assert res["cpu"] == {"period": 100000, "quota": 50000, "shares": 256, "cpus": "0-1",
                          "mems": "0"}
    assert res["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    assert "hugepageLimits" not in res  # disable_hugetlb_controller is containerd's default
    # no swap asked: swap = memory (no swapping by default, containerd); a swap asked wins
    for swap, want in ((0, 32 << 20), (96 << 20, 96 << 20), (-1, -1)):
        r2 = cri.LinuxContainerResources(memory_limit_in_bytes=32 << 20,
                                         memory_swap_limit_in_bytes=swap)
        mem = build(tmp_path, container_config(resources=r2))["linux"]["resources"]["memory"]
        assert mem == {"limit": 32 << 20, "swap": want}, swap
    cfg = CRIConfig(disable_hugetlb_controller=False)
    res = build(tmp_path, container_config(resources=r), cfg=cfg)["linux"]["resources"]
    assert res["hugepageLimits"] == [{"pageSize": "2MB", "limit": 1 << 21}]
    nohuge = HostFacts(**{**HOST.__dict__, "hugetlb": False, "swap": False})
    res = build(tmp_path, container_config(resources=r), cfg=cfg, host=nohuge)
    assert "hugepageLimits" not in res["linux"]["resources"]
    assert "swap" not in res["linux"]["resources"]["memory"]
    with pytest.raises(FailedPrecondition, match="hugetlb"):
        build(tmp_path, container_config(resources=r), host=nohuge,
              cfg=CRIConfig(disable_hugetlb_controller=False,
                            tolerate_missing_hugetlb_controller=False))


def test_unified_and_bad_resources(tmp_path):
    r = cri.LinuxContainerResources(unified={"memory.high": "1000000"})
    with pytest.raises(InvalidArgument, match="cgroup v2"):
        build(tmp_path, container_config(resources=r))
    v2 = HostFacts(**{**HOST.__dict__, "cgroup2": True})
    spec = build(tmp_path, container_config(resources=r), host=v2)
    assert spec["linux"]["resources"]["unified"] == {"memory.high": "1000000"}
    assert ns_map(spec)["cgroup"] == ""  # cgroup v2: a private cgroup namespace
    assert "cgroup" not in ns_map(build(tmp_path))
    for bad in (dict(cpu_shares=-2), dict(memory_limit_in_bytes=-5), dict(cpu_period=-1)):
        with pytest.raises(InvalidArgument, match="negative"):
            build(tmp_path, container_config(resources=cri.LinuxContainerResources(**bad)))


@pytest.mark.parametrize("adj,restrict,can_lower,own,want", [
    (-999, False, False, 0, 0),       # this machine: no CAP_SYS_RESOURCE, clamped
    (-999, False, True, 0, -999),     # allowed to lower: as asked
    (-999, True, True, -500, -500),   # restrict_oom_score_adj: never below ctrd's own
    (500, True, False, 0, 500),
])
def test_oom_score_adj(tmp_path, adj, restrict, can_lower, own, want):
    host = HostFacts(**{**HOST.__dict__, "can_lower_oom": can_lower, "oom_score_adj": own})
    spec = build(tmp_path, container_config(resources=cri.LinuxContainerResources(
        oom_score_adj=adj)), host=host, cfg=CRIConfig(restrict_oom_score_adj=restrict))
    assert spec["process"]["oomScoreAdj"] == want


def test_oom_score_adj_range(tmp_path):
    with pytest.raises(InvalidArgument, match="out of range"):
        build(tmp_path, container_config(resources=cri.LinuxContainerResources(
            oom_score_adj=-1001)))
    assert "oomScoreAdj" not in build(tmp_path)["process"]  # no resources: not set


def test_cgroups_path(tmp_path):
    assert build(tmp_path)["linux"]["cgroupsPath"] == "/k8s.io/ctr1"
    spec = build(tmp_path, sbx=sandbox_config(cgroup_parent="/kubepods/besteffort/podX"))
    assert spec["linux"]["cgroupsPath"] == "/kubepods/besteffort/podX/ctr1"
    spec = build(tmp_path, sandbox=facts(cgroup_parent="/ctrd-test"))
    assert spec["linux"]["cgroupsPath"] == "/ctrd-test/ctr1"
    assert cgroups_path("/kubepods.slice/kubepods-pod1.slice", "c", False) == \
        "kubepods-pod1.slice:cri-containerd:c"
    systemd = RuntimeHandler(options={"SystemdCgroup": True})
    spec = build(tmp_path, sbx=sandbox_config(cgroup_parent="kubepods-pod1.slice"),
                 handler=systemd)
    assert spec["linux"]["cgroupsPath"] == "kubepods-pod1.slice:cri-containerd:ctr1"
    assert build(tmp_path, handler=systemd)["linux"]["cgroupsPath"] == ":cri-containerd:ctr1"
    with pytest.raises(InvalidArgument, match="slice"):
        build(tmp_path, sbx=sandbox_config(cgroup_parent="/kubepods/pod1"), handler=systemd)
    spec = build(tmp_path, container_config(resources=cri.LinuxContainerResources(
        cpu_shares=2)), cfg=CRIConfig(disable_cgroup=True))
    assert "cgroupsPath" not in spec["linux"] and "cpu" not in spec["linux"]["resources"]


@pytest.mark.parametrize("pid,sbx,target,want", [
    (cri.CONTAINER, {}, None, ""),
    (cri.POD, {"pidns_path": "/proc/77/ns/pid"}, None, "/proc/77/ns/pid"),
    (cri.POD, {}, None, ""),                 # no pod PID namespace yet: a new one
    (cri.NODE, {}, None, None),              # the host's
    (cri.TARGET, {}, "/proc/88/ns/pid", "/proc/88/ns/pid"),
])
def test_namespaces(tmp_path, pid, sbx, target, want):
    sc = cri.LinuxContainerSecurityContext(namespace_options=cri.NamespaceOption(pid=pid))
    spec = build(tmp_path, container_config(sc), sandbox=facts(**sbx), target_pid_ns=target)
    ns = ns_map(spec)
    assert ns.get("pid") == want
    assert ns["network"] == "/run/netns/pod" and ns["ipc"] == "/run/ctrd/pod/ipc"
    assert ns["uts"] == "/run/ctrd/pod/uts" and ns["mount"] == "" and "user" not in ns


def test_host_namespaces_and_target_errors(tmp_path):
    spec = build(tmp_path, sandbox=SandboxFacts(id="s"))
    assert set(ns_map(spec)) == {"mount", "pid"}
    sc = cri.LinuxContainerSecurityContext(
        namespace_options=cri.NamespaceOption(pid=cri.TARGET, target_id="other"))
    with pytest.raises(InvalidArgument, match="other"):
        build(tmp_path, container_config(sc))
    sc = cri.LinuxContainerSecurityContext(namespace_options=cri.NamespaceOption(
        userns_options=cri.UserNamespace(mode=cri.POD)))
    with pytest.raises(InvalidArgument, match="user namespaces"):
        build(tmp_path, container_config(sc))


# -- annotations, sysctls, base spec, exec --------------------------------------------------

def test_annotations_and_passthrough(tmp_path):
    sbx = sandbox_config()
    sbx.annotations.update({"pod.example/a": "1", "pod.example/x/y": "2", "other": "3"})
    config = container_config(annotations={"ctr.example/k": "v", "nope": "n"})
    handler = RuntimeHandler(pod_annotations=["pod.example/*"],
                             container_annotations=["ctr.example/[a-k]", "[bad"])
    spec = build(tmp_path, config, sbx, handler=handler, image_name="docker.io/x/app:1")
    assert spec["annotations"] == {
        "pod.example/a": "1", "ctr.example/k": "v",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "sandbox1",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "pod-uid",
        "io.kubernetes.cri.sandbox-name": "pod",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.image-name": "docker.io/x/app:1"}
    # Go's path.Match: * never crosses a /
    assert passthrough_annotations({"a/b": "1", "a/b/c": "2", "ab": "3"}, ["a/*"]) == \
        {"a/b": "1"}
    assert passthrough_annotations({"a": "1"}, ["*"]) == {"a": "1"}


def test_sysctls(tmp_path):
    sbx = sandbox_config(sysctls={"net.ipv4.ip_forward": "1"})
    assert "sysctl" not in build(tmp_path, sbx=sbx)["linux"]  # containerd: pause spec only
    spec = build(tmp_path, sbx=sbx, sysctls=pod_sysctls(sbx))
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}


def test_base_runtime_spec(tmp_path):
    base = {"ociVersion": "1.0.2", "process": {"cwd": "/", "rlimits": [
        {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}], "apparmorProfile": "x"},
        "root": {"path": "elsewhere"},
        "mounts": [{"destination": "/run", "type": "tmpfs", "source": "tmpfs"},
                   {"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}}
    f = tmp_path / "base.json"
    f.write_text(json.dumps(base))
    spec = build(tmp_path, handler=RuntimeHandler(base_runtime_spec=str(f)))
    assert spec["process"]["rlimits"] == base["process"]["rlimits"]  # kept with a base spec
    assert spec["root"]["path"] == "rootfs" and mount_at(spec, "/run") is None
    assert mount_at(spec, "/sys/fs/cgroup")["options"][-1] == "ro"
    assert "cgroupsPath" not in spec["linux"]
    # without one: containerd's default spec minus its rlimits and profiles
    assert "rlimits" not in build(tmp_path)["process"]
    f.write_text("{nope")
    with pytest.raises(FailedPrecondition, match="base runtime spec"):
        build(tmp_path, handler=RuntimeHandler(base_runtime_spec=str(f)))


def test_cdi_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="CDI"):
        build(tmp_path, container_config(CDI_devices=[cri.CDIDevice(name="v/c=1")]))


def test_exec_process(tmp_path):
    spec = build(tmp_path, container_config(sc_user(run_as_user=1000)))
    before = json.dumps(spec, sort_keys=True)
    p = exec_process(spec, ["ls", "-l"], tty=True)
    assert p["args"] == ["ls", "-l"] and p["terminal"] is True
    assert p["env"][-1] == "TERM=xterm" and p["user"] == spec["process"]["user"]
    assert exec_process(spec, ["ls"])["terminal"] is False
    assert json.dumps(spec, sort_keys=True) == before
    with pytest.raises(InvalidArgument):
        exec_process(spec, [])


# -- with the real runc ---------------------------------------------------------------------

def _rmdir_cgroup_parent(name: str) -> None:
    base = "/sys/fs/cgroup"
    for d in [base] + [os.path.join(base, h) for h in os.listdir(base)]:
        p = os.path.join(d, name)
        if os.path.isdir(p):
            try:
                os.rmdir(p)
            except OSError:
                pass


CAP_MASK = (1 << 0) | (1 << 13)  # CAP_CHOWN, CAP_NET_RAW


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root")
@pytest.mark.parametrize("uid,want_id,want_eff", [
    # a non-root user keeps the bounding set; effective caps go at execve (no ambient caps)
    (1000, "uid=1000(alice) gid=1000(alice) groups=10(wheel),100(users),1000(alice),4242", 0),
    (0, "uid=0(root) gid=0(root) groups=0(root),10(wheel),4242", CAP_MASK),
])
def test_spec_runs_with_runc(tmp_path, uid, want_id, want_eff):
    bundle = tmp_path / "bundle"
    root = bundle / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy("/bin/busybox", root / "bin/busybox")
    (root / "etc/passwd").write_bytes(PASSWD)
    (root / "etc/group").write_bytes(GROUP)
    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.8.7 pod-host\n")

    sc = cri.LinuxContainerSecurityContext(
        run_as_user=cri.Int64Value(value=uid), supplemental_groups=[4242],
        capabilities=cri.Capability(drop_capabilities=["ALL"],
                                    add_capabilities=["CHOWN", "NET_RAW"]),
        no_new_privs=True, masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"],
        seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault))
    script = ("/bin/busybox id; /bin/busybox grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "
              "/proc/self/status; /bin/busybox cat /etc/hosts")
    config = container_config(sc, command=["/bin/busybox", "sh", "-c", script])
    parent = f"ctrd-test-{uuid.uuid4().hex[:12]}"
    cid = f"ctrd-cri-spec-{uuid.uuid4().hex[:12]}"
    spec = container_spec(cid, config, sandbox_config(), {"config": {}},
                          SandboxFacts(id="s", hosts_path=str(hosts), cgroup_parent="/" + parent),
                          str(root))
    (bundle / "config.json").write_text(json.dumps(spec))
    state = tmp_path / "runc-state"
    try:
        r = subprocess.run(["runc", "--root", str(state), "run", "--bundle", str(bundle), cid],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == want_id
        status = dict(line.split(":\t", 1) for line in lines[1:5])
        assert int(status["CapBnd"], 16) == CAP_MASK
        assert int(status["CapEff"], 16) == want_eff
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert lines[5:] == ["10.9.8.7 pod-host"]
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "-f", cid],
                       capture_output=True, timeout=60)
        _rmdir_cgroup_parent(parent)
