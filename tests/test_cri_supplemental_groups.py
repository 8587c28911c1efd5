"""SupplementalGroupsPolicy (Kubernetes 1.31+) and ContainerStatus.user, observed from
inside: the ``Groups:`` of the container's init (/proc/1/status) and of an exec
(/proc/self/status). The image ``busybox-groups`` (tests/images.py) runs as ``app``
(1000:1000), whom its /etc/group puts in 2001 and 2002; ``other`` (1001) is in 2002 and
2003. Merge (the default) adds those memberships to the request's supplemental groups,
Strict does not; ContainerStatus.user reports what the process got. Hostile ids and
policies are refused, naming the field, with nothing left behind.
"""

from __future__ import annotations

import grpc
import pytest

from conftest import ctr
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def _pull(cri, registry, name: str) -> str:  # noqa: F811
    ref = registry.ref(name)
    r = ctr(cri.daemon.address, "-n", "k8s.io", "images", "pull", "--plain-http", ref)
    assert r.returncode == 0, r.stderr
    return ref


def _ctx(pb, **kw):
    return pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**kw))


def _ids(cri, cid: str, pid: str) -> tuple[int, int, list[int]]:  # noqa: F811
    """(uid, gid, groups) of ``/proc/<pid>/status`` in the container."""
    uid = gid = -1
    groups: list[int] = []
    for line in cri.sh(cid, f"cat /proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        if key == "Uid":
            uid = int(value.split()[0])
        elif key == "Gid":
            gid = int(value.split()[0])
        elif key == "Groups":
            groups = sorted(int(g) for g in value.split())
    return uid, gid, groups


def _user(cri, cid: str) -> tuple[int, int, list[int]]:  # noqa: F811
    cs = cri.status(cid)
    assert cs.HasField("user") and cs.user.HasField("linux"), cs
    u = cs.user.linux
    return u.uid, u.gid, sorted(u.supplemental_groups)


def test_merge_and_strict(cri, registry):  # noqa: F811
    pb = cri.pb
    image = pb.ImageSpec(image=_pull(cri, registry, "busybox-groups"))
    sid, pconf = cri.run_pod("groups")
    cases = {
        # name: (security context, expected uid, gid, groups)
        "merge-default": (dict(supplemental_groups=[3000]), (1000, 1000, [1000, 2001, 2002,
                                                                          3000])),
        "merge": (dict(supplemental_groups=[3000], supplemental_groups_policy=pb.Merge),
                  (1000, 1000, [1000, 2001, 2002, 3000])),
        "strict": (dict(supplemental_groups=[3000], supplemental_groups_policy=pb.Strict),
                   (1000, 1000, [1000, 3000])),
        "strict-none": (dict(supplemental_groups_policy=pb.Strict), (1000, 1000, [1000])),
        # run_as_user: the groups are those of the user the process runs as
        "other-merge": (dict(run_as_user=pb.Int64Value(value=1001)),
                        (1001, 1001, [1001, 2002, 2003])),
        "other-strict": (dict(run_as_user=pb.Int64Value(value=1001),
                              supplemental_groups_policy=pb.Strict,
                              supplemental_groups=[2001]), (1001, 1001, [1001, 2001])),
    }
    for name, (sc, want) in cases.items():
        cid = cri.create(sid, pconf, name, ["sleep", "1000"], image=image,
                         linux=_ctx(pb, **sc))
        assert _ids(cri, cid, "1") == want, name             # the container's init
        assert _ids(cri, cid, "self") == want, name          # an exec in it
        assert _user(cri, cid) == want, name                 # what the kubelet reads
    cri.remove_pod(sid)


def test_container_user_of_plain_image(cri):  # noqa: F811
    """Root, and a numeric user the image has no entry for, as the status reports them."""
    pb = cri.pb
    sid, pconf = cri.run_pod("users")
    root = cri.create(sid, pconf, "root", ["sleep", "1000"])
    assert _ids(cri, root, "1") == _user(cri, root) == (0, 0, [0])
    anon = cri.create(sid, pconf, "anon", ["sleep", "1000"], linux=_ctx(
        pb, run_as_user=pb.Int64Value(value=4242), run_as_group=pb.Int64Value(value=4343),
        supplemental_groups=[7, 4343]))
    assert _ids(cri, anon, "1") == _user(cri, anon) == (4242, 4343, [7, 4343])
    # a created (not started) container has its user too: it comes from the spec
    created = cri.create(sid, pconf, "created", ["true"], start=False, linux=_ctx(
        pb, run_as_user=pb.Int64Value(value=5), supplemental_groups=[9]))
    assert _user(cri, created) == (5, 0, [0, 9])
    cri.remove_pod(sid)


def _leftovers(cri) -> dict:  # noqa: F811
    pb = cri.pb
    return {"pods": [s.id for s in cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items],
            "containers": [c.id for c in
                           cri.rt.ListContainers(pb.ListContainersRequest()).containers],
            "snapshots": ctr(cri.daemon.address, "-n", "k8s.io", "snapshots", "ls").stdout,
            "leases": cri.net.leases()}


def test_hostile_groups_and_policies(cri):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("hostile-groups")
    before = _leftovers(cri)
    bad_containers = [
        (dict(supplemental_groups=[-1]), "supplemental_groups"),
        (dict(supplemental_groups=[5, 1 << 31]), "supplemental_groups"),
        (dict(supplemental_groups=[-(1 << 62)]), "supplemental_groups"),
        (dict(supplemental_groups_policy=7), "supplemental_groups_policy"),
        (dict(supplemental_groups_policy=-1), "supplemental_groups_policy"),
    ]
    for sc, field in bad_containers:
        with pytest.raises(grpc.RpcError) as e:
            cri.create(sid, pconf, "bad", ["sleep", "1000"], linux=_ctx(pb, **sc))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (sc, e.value.details())
        assert field in e.value.details(), (sc, e.value.details())
        assert _leftovers(cri) == before, sc
    # the pod's own fields
    for psc, field in ((dict(supplemental_groups=[-3]), "supplemental_groups"),
                       (dict(supplemental_groups=[1 << 40]), "supplemental_groups"),
                       (dict(supplemental_groups_policy=5), "supplemental_groups_policy")):
        with pytest.raises(grpc.RpcError) as e:
            cri.run_pod("bad-pod", linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(**psc)))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (psc, e.value.details())
        assert field in e.value.details(), (psc, e.value.details())
        assert _leftovers(cri) == before, psc
    # the largest valid id works, and the name of the refused container is free again
    cid = cri.create(sid, pconf, "bad", ["sleep", "1000"], linux=_ctx(
        pb, supplemental_groups=[(1 << 31) - 1]))
    assert (1 << 31) - 1 in _ids(cri, cid, "1")[2]
    cri.remove_pod(sid)


def test_additional_gids_rules():
    from ctrd.cri import identity
    from ctrd.errdefs import InvalidArgument

    assert identity.additional_gids(identity.MERGE, 10, [30, 20], [40, 10]) == [10, 20, 30, 40]
    assert identity.additional_gids(identity.STRICT, 10, [30, 20], [40]) == [10, 40]
    assert identity.additional_gids(identity.STRICT, 0, [], []) == [0]
    with pytest.raises(InvalidArgument, match="supplemental_groups_policy 2"):
        identity.additional_gids(2, 0, [], [])
    with pytest.raises(InvalidArgument, match="supplemental_groups entry -1"):
        identity.check_groups([1, -1])
    assert identity.container_user({"process": {"user": {"uid": 1, "gid": 2,
                                                         "additionalGids": [2, 3]}}}) == \
        {"uid": 1, "gid": 2, "supplemental_groups": [2, 3]}
    assert identity.container_user({}) == {}
