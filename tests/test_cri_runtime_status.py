"""ctrd.cri.runtime_status without a daemon: the handler list the kubelet reads from Status,
the cgroup driver RuntimeConfig answers, the deprecation condition."""

from __future__ import annotations

import json

from ctrd.cri import runtime_status as rs
from ctrd.cri.config import CRIConfig, RuntimeHandler


def _config(default: str = "runc", **runtimes: RuntimeHandler) -> CRIConfig:
    c = CRIConfig()
    c.containerd.default_runtime_name = default
    c.containerd.runtimes = dict(runtimes)
    return c


def test_handlers_sorted_with_the_unnamed_default():
    rro = rs.HandlerFeatures(recursive_read_only_mounts=True)
    c = _config("runc", runc=RuntimeHandler(), kata=RuntimeHandler(), crun=RuntimeHandler())
    seen = []

    def features_of(name, h):
        seen.append(name)
        return rro if name == "runc" else rs.HandlerFeatures()

    got = rs.runtime_handlers(c, features_of)
    assert [h.name for h in got] == ["", "crun", "kata", "runc"]
    assert got[0].features == rro and got[-1].features == rro
    assert sorted(seen) == ["crun", "kata", "runc"]  # probed once each
    # a default that names no handler: no unnamed entry (containerd adds it only when found)
    assert [h.name for h in rs.runtime_handlers(_config("nosuch", runc=RuntimeHandler()),
                                                 features_of)] == ["runc"]


def test_cgroup_driver_order_and_fallback():
    runc_sd = RuntimeHandler(options={"SystemdCgroup": True})
    runc_fs = RuntimeHandler(options={"SystemdCgroup": False})
    other = RuntimeHandler(runtime_type="io.containerd.kata.v2")
    never = lambda: (_ for _ in ()).throw(AssertionError("asked the host"))  # noqa: E731
    # the default handler decides first, whatever the names' order
    assert rs.cgroup_driver(_config("z", a=runc_fs, z=runc_sd), never) == rs.SYSTEMD
    assert rs.cgroup_driver(_config("a", a=runc_fs, z=runc_sd), never) == rs.CGROUPFS
    # a runc handler without the option says cgroupfs (runc's default)
    assert rs.cgroup_driver(_config("runc", runc=RuntimeHandler()), never) == rs.CGROUPFS
    # a non-runc default has no say: the next handler by name
    assert rs.cgroup_driver(_config("kata", kata=other, b=runc_sd), never) == rs.SYSTEMD
    # nobody says: what runs the host
    assert rs.cgroup_driver(_config("kata", kata=other), lambda: True) == rs.SYSTEMD
    assert rs.cgroup_driver(_config("kata", kata=other), lambda: False) == rs.CGROUPFS
    # the deprecated global switch
    c = _config("runc", runc=RuntimeHandler())
    c.systemd_cgroup = True
    assert rs.cgroup_driver(c, never) == rs.SYSTEMD


def test_deprecation_condition():
    assert rs.deprecation_condition({}, []) == (rs.CONDITION_NO_DEPRECATIONS, True, "", "")
    d = {"io.containerd.deprecation/cgroup-v1": "cgroup v1 is deprecated", "x": "y"}
    t, ok, reason, msg = rs.deprecation_condition(d, ["x"])
    assert (t, ok, reason) == (rs.CONDITION_NO_DEPRECATIONS, False, rs.REASON_DEPRECATIONS)
    assert json.loads(msg) == {"io.containerd.deprecation/cgroup-v1": "cgroup v1 is deprecated"}
    assert rs.deprecation_condition(d, list(d))[1] is True
