"""ctrd.cri.status_info: the status pieces containerd 2.3.4 derives from its records (the
end-to-end comparison is tests/test_cri_compare.py)."""

from __future__ import annotations

from ctrd.api.cri.runtime.v1 import api_pb2 as pb
from ctrd.cri import status_info as si


def test_container_resources_from_spec():
    spec = {"process": {"oomScoreAdj": 500},
            "linux": {"resources": {
                "cpu": {"shares": 512, "period": 100000, "quota": 50000, "cpus": "0-1"},
                "memory": {"limit": 64 << 20, "swap": 64 << 20},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}],
                "unified": {"memory.high": "max"}}}}
    r = si.container_resources(spec).linux
    assert (r.oom_score_adj, r.cpu_shares, r.cpu_period, r.cpu_quota, r.cpuset_cpus) == \
        (500, 512, 100000, 50000, "0-1")
    assert (r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes) == (64 << 20, 64 << 20)
    assert [(h.page_size, h.limit) for h in r.hugepage_limits] == [("2MB", 1 << 21)]
    assert dict(r.unified) == {"memory.high": "max"}
    # a Linux spec without limits: linux present and empty (containerd's copyResourcesToStatus)
    empty = si.container_resources({"linux": {}})
    assert empty.HasField("linux") and empty.linux == pb.LinuxContainerResources()
    assert not si.container_resources({}).HasField("linux")


def test_go_json_names_enums_and_int64():
    c = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="x", attempt=2), log_path="x/0.log",
        mounts=[pb.Mount(container_path="/a", propagation=pb.PROPAGATION_BIDIRECTIONAL)],
        linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(
            cpu_shares=5, memory_limit_in_bytes=1 << 33)))
    assert si.go_json(c) == {
        "metadata": {"name": "x", "attempt": 2}, "log_path": "x/0.log",
        "mounts": [{"container_path": "/a", "propagation": 2}],
        "linux": {"resources": {"cpu_shares": 5, "memory_limit_in_bytes": 1 << 33}}}


def test_cni_result_as_go_cni():
    rec = {"interfaces": {"eth0": {"ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1",
                                            "interface": 1}],
                                   "mac": "aa:bb", "sandbox": "/ns"},
                          "br0": {"ips": [], "mac": "cc:dd", "sandbox": ""}},
           "dns": [{"nameservers": [], "domain": "", "search": [], "options": []}],
           "routes": [{"dst": "0.0.0.0/0", "gw": ""}]}
    got = si.cni_result_info(rec)
    assert got["Interfaces"]["eth0"] == {"IPConfigs": [{"IP": "10.1.2.3", "Gateway": "10.1.2.1"}],
                                         "Mac": "aa:bb", "Sandbox": "/ns", "PciID": "",
                                         "SocketPath": ""}
    assert got["Interfaces"]["br0"]["IPConfigs"] is None
    assert got["DNS"] == [{}] and got["Routes"] == [{"dst": "0.0.0.0/0"}]
    assert si.cni_result_info({}) is None
