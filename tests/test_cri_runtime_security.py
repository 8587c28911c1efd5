"""CRI security contexts observed from inside real containers (runc through ctrd's shim):
users and groups, read-only rootfs, privileged, capabilities, no_new_privs, masked and
read-only paths, seccomp profiles.
"""

from __future__ import annotations

import json

import grpc
import pytest

from ctrd.cri.spec import CAPABILITIES
from ctrd.oci.spec import DEFAULT_CAPS
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def caps_bits(names) -> int:
    return sum(1 << CAPABILITIES.index(n) for n in names)


def proc_status(cri, cid: str) -> dict[str, str]:  # noqa: F811
    out = cri.sh(cid, "cat /proc/self/status")
    return {k: v.strip() for k, v in (line.split(":", 1) for line in out.splitlines()
                                      if ":" in line)}


def host_cap_bounding() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return 0


def ctx(pb, **kw):
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**kw))


def test_users_and_groups(cri):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("users")
    cid = cri.create(sid, pconf, "ids", ["sleep", "1000"], linux=ctx(
        pb, run_as_user=pb.Int64Value(value=1), run_as_group=pb.Int64Value(value=65534),
        supplemental_groups=[1234, 0]))
    uid, gid, groups = cri.sh(cid, "id -u; id -g; id -G").split("\n")[:3]
    # run_as_group replaces the passwd entry's group; "daemon" is no member of any group
    assert (uid, gid, sorted(groups.split(), key=int)) == ("1", "65534", ["0", "1234", "65534"])
    # an exec runs as the container's user too
    assert cri.sh(cid, "id -u") == "1\n"

    by_name = cri.create(sid, pconf, "byname", ["sleep", "1000"],
                         linux=ctx(pb, run_as_username="nobody"))
    assert cri.sh(by_name, "id -u; id -g") == "65534\n65534\n"
    root = cri.create(sid, pconf, "root", ["sleep", "1000"])
    assert cri.sh(root, "id -u; id -G") == "0\n0\n"

    # a user the image does not know by name: refused at create, naming it
    with pytest.raises(grpc.RpcError) as e:
        cri.create(sid, pconf, "nouser", ["true"], linux=ctx(pb, run_as_username="ghost"))
    assert "ghost" in e.value.details()
    # a uid without an /etc/passwd entry is fine (gid 0 then, as runc)
    anon = cri.create(sid, pconf, "anon", ["sleep", "1000"],
                      linux=ctx(pb, run_as_user=pb.Int64Value(value=4242)))
    assert cri.sh(anon, "id -u; id -g") == "4242\n0\n"
    cri.remove_pod(sid)


def test_readonly_rootfs_no_new_privs_and_paths(cri):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("ro")
    cid = cri.create(sid, pconf, "ro", ["sleep", "1000"], linux=ctx(
        pb, readonly_rootfs=True, no_new_privs=True, masked_paths=["/proc/version", "/home"],
        readonly_paths=["/proc/sys", "/var"]))
    r = cri.exec(cid, ["touch", "/newfile"])
    assert r.exit_code != 0 and b"Read-only file system" in r.stderr, r
    # /dev/shm stays writable; the pod's files are read-only too (as containerd mounts them)
    cri.sh(cid, "echo x > /dev/shm/ok")
    assert cri.exec(cid, ["sh", "-c", "echo 1.2.3.4 x >> /etc/hosts"]).exit_code != 0
    assert proc_status(cri, cid)["NoNewPrivs"] == "1"
    assert cri.sh(cid, "cat /proc/version") == ""
    r = cri.exec(cid, ["touch", "/home/x"])
    assert r.exit_code != 0, "a masked dir is an empty read-only tmpfs"
    assert b"Read-only" in cri.exec(cid, ["sh", "-c", "echo 1 > /proc/sys/kernel/ns_last_pid"]
                                    ).stderr
    # the default: writable rootfs, no_new_privs off
    rw = cri.create(sid, pconf, "rw", ["sleep", "1000"])
    cri.sh(rw, "touch /newfile")
    assert proc_status(cri, rw)["NoNewPrivs"] == "0"
    cri.remove_pod(sid)


def test_capabilities_and_privileged(cri):  # noqa: F811
    pb = cri.pb
    default = caps_bits(DEFAULT_CAPS)
    sid, pconf = cri.run_pod("caps")
    plain = cri.create(sid, pconf, "plain", ["sleep", "1000"])
    assert int(proc_status(cri, plain)["CapEff"], 16) == default
    tuned = cri.create(sid, pconf, "tuned", ["sleep", "1000"], linux=ctx(
        pb, capabilities=pb.Capability(add_capabilities=["NET_ADMIN", "CAP_SYS_TIME"],
                                       drop_capabilities=["chown"])))
    s = proc_status(cri, tuned)
    want = (default | caps_bits(["CAP_NET_ADMIN", "CAP_SYS_TIME"])) & ~caps_bits(["CAP_CHOWN"])
    assert int(s["CapEff"], 16) == want and int(s["CapBnd"], 16) == want
    # NET_ADMIN works in the pod's network namespace; without it, it does not
    cri.sh(tuned, "busybox ip addr add 10.99.0.1/32 dev lo && busybox ip addr del 10.99.0.1/32 dev lo")
    assert cri.exec(plain, ["busybox", "ip", "addr", "add", "10.99.0.2/32", "dev", "lo"]
                    ).exit_code != 0
    r = cri.exec(tuned, ["busybox", "chown", "1", "/tmp"])
    assert r.exit_code != 0 and b"Operation not permitted" in r.stderr
    only = cri.create(sid, pconf, "only", ["sleep", "1000"], linux=ctx(
        pb, capabilities=pb.Capability(drop_capabilities=["ALL"], add_capabilities=["KILL"])))
    assert int(proc_status(cri, only)["CapEff"], 16) == caps_bits(["CAP_KILL"])
    with pytest.raises(grpc.RpcError) as e:
        cri.create(sid, pconf, "badcap", ["true"], linux=ctx(
            pb, capabilities=pb.Capability(add_capabilities=["NO_SUCH_CAP"])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NO_SUCH_CAP" in e.value.details()

    # privileged needs a privileged pod
    with pytest.raises(grpc.RpcError) as e:
        cri.create(sid, pconf, "priv", ["true"], linux=ctx(pb, privileged=True))
    assert "privileged" in e.value.details()
    cri.remove_pod(sid)

    psc = pb.LinuxSandboxSecurityContext(privileged=True)
    sid, pconf = cri.run_pod("priv", linux=pb.LinuxPodSandboxConfig(security_context=psc))
    priv = cri.create(sid, pconf, "priv", ["sleep", "1000"], linux=ctx(pb, privileged=True))
    s = proc_status(cri, priv)
    assert int(s["CapEff"], 16) == host_cap_bounding() and s["Seccomp"] == "0"
    # all devices, a writable /sys, mounts allowed
    assert "null" in cri.sh(priv, "ls /dev") and "loop" in cri.sh(priv, "ls /dev")
    cri.sh(priv, "mkdir -p /mnt && mount -t tmpfs x /mnt && umount /mnt")
    assert cri.sh(priv, "grep ' /sys ' /proc/self/mounts").split()[3].startswith("rw")
    cri.remove_pod(sid)


def test_seccomp_profiles(cri, tmp_path):  # noqa: F811
    pb = cri.pb
    rd = pb.SecurityProfile.ProfileType.RuntimeDefault
    unconfined = pb.SecurityProfile.ProfileType.Unconfined
    localhost = pb.SecurityProfile.ProfileType.Localhost
    sid, pconf = cri.run_pod("seccomp")
    a = cri.create(sid, pconf, "default", ["sleep", "1000"],
                   linux=ctx(pb, seccomp=pb.SecurityProfile(profile_type=rd)))
    b = cri.create(sid, pconf, "unconfined", ["sleep", "1000"],
                   linux=ctx(pb, seccomp=pb.SecurityProfile(profile_type=unconfined)))
    assert proc_status(cri, a)["Seccomp"] == "2"
    assert proc_status(cri, b)["Seccomp"] == "0"
    # RuntimeDefault blocks what docker's profile blocks (unshare of a user namespace
    # without CAP_SYS_ADMIN) while Unconfined lets the kernel decide
    r = cri.exec(a, ["busybox", "unshare", "-U", "true"])
    assert r.exit_code != 0

    # Localhost: a profile from a file denying mkdir(at) with EPERM
    prof = tmp_path / "nomkdir.json"
    prof.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    c = cri.create(sid, pconf, "local", ["sleep", "1000"], linux=ctx(
        pb, seccomp=pb.SecurityProfile(profile_type=localhost, localhost_ref=str(prof))))
    r = cri.exec(c, ["mkdir", "/tmp/d"])
    assert r.exit_code != 0 and b"not permitted" in r.stderr, r
    assert cri.exec(c, ["touch", "/tmp/f"]).exit_code == 0
    with pytest.raises(grpc.RpcError) as e:
        cri.create(sid, pconf, "missing", ["true"], linux=ctx(
            pb, seccomp=pb.SecurityProfile(profile_type=localhost,
                                           localhost_ref=str(tmp_path / "none.json"))))
    assert "none.json" in e.value.details()
    # the failed creates released their names
    assert {x.metadata.name for x in cri.rt.ListContainers(pb.ListContainersRequest())
            .containers} == {"default", "unconfined", "local"}
    cri.remove_pod(sid)
