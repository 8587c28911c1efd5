"""Introspection as containerd 2.3.4 serves it, driven by the real ctr 2.3.4: ``info`` (uuid, pid,
pidns, deprecations), ``deprecations list``, ``plugins ls``, ``plugins inspect-runtime``
(PluginInfo -> the shim's ``-info`` RuntimeInfo); the deprecations reach the CRI status's
``ContainerdHasNoDeprecationWarnings`` condition; hostile PluginInfo requests."""

from __future__ import annotations

import json
import os
import re
import subprocess

import grpc
import pytest

import containerd2
from ctrd.deprecation import CGROUP_V1, MESSAGES, Deprecations, cgroup_v1_host

CTR2 = str(containerd2.CTR)
pytestmark = pytest.mark.integration
need_containerd2 = pytest.mark.skipif(
    not containerd2.available(), reason=f"containerd 2.3.4 is not at {containerd2.BIN_DIR}")


def ctr2(address: str, *args: str, quiet: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if quiet:
        env["CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS"] = "1"
    return subprocess.run([CTR2, "--address", address, *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_registry_keeps_last_occurrence_and_drops_unknown_ids():
    d = Deprecations()
    d.emit(CGROUP_V1)
    first = d.warnings()[0].last_occurrence_ns
    d.emit(CGROUP_V1)
    d.emit("io.containerd.deprecation/no-such-thing")
    (w,) = d.warnings()
    assert (w.id, w.message) == (CGROUP_V1, MESSAGES[CGROUP_V1])
    assert w.last_occurrence_ns >= first
    assert d.as_dict() == {CGROUP_V1: MESSAGES[CGROUP_V1]}


@need_containerd2
def test_info_as_containerd(ctrd, c2):
    ours, theirs = ctr2(ctrd.address, "info"), ctr2(c2.address, "info")
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    a, b = json.loads(ours.stdout)["server"], json.loads(theirs.stdout)["server"]
    assert a.keys() == b.keys() == {"uuid", "pid", "pidns", "deprecations"}
    assert a["pid"] == ctrd.proc.pid
    assert a["pidns"] == os.stat(f"/proc/{ctrd.proc.pid}/ns/pid").st_ino == b["pidns"]
    for w in a["deprecations"]:
        assert w.keys() == {"id", "message", "last_occurrence"}
        assert w["last_occurrence"].keys() == {"seconds", "nanos"}
    ids = {w["id"]: w["message"] for w in a["deprecations"]}
    theirs_ids = {w["id"]: w["message"] for w in b["deprecations"]}
    if cgroup_v1_host():
        assert ids[CGROUP_V1] == theirs_ids[CGROUP_V1]
    else:
        assert CGROUP_V1 not in ids and CGROUP_V1 not in theirs_ids


@need_containerd2
@pytest.mark.skipif(not cgroup_v1_host(), reason="the host is on cgroup v2: no warning to show")
def test_deprecations_list_as_containerd(ctrd, c2):
    ours = ctr2(ctrd.address, "deprecations", "list")
    theirs = ctr2(c2.address, "deprecations", "list")
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    head_a, *rows_a = ours.stdout.splitlines()
    head_b, *rows_b = theirs.stdout.splitlines()
    assert head_a.split() == head_b.split() == ["ID", "LAST", "OCCURRENCE", "MESSAGE"]
    row = next(r for r in rows_a if r.startswith(CGROUP_V1))
    assert re.match(rf"{CGROUP_V1}\s+\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\s+"
                    + re.escape(MESSAGES[CGROUP_V1]) + "$", row), row
    js_a = json.loads(ctr2(ctrd.address, "deprecations", "list", "--format", "json").stdout)
    js_b = json.loads(ctr2(c2.address, "deprecations", "list", "--format", "json").stdout)
    assert {tuple(sorted(w)) for w in js_a} == {tuple(sorted(w)) for w in js_b} == {
        ("id", "lastOccurrence", "message")}
    # every ctr 2.x command prints the warnings, as against containerd
    loud_a, loud_b = ctr2(ctrd.address, "version", quiet=False), ctr2(c2.address, "version",
                                                                       quiet=False)
    line = f"DEPRECATION: {MESSAGES[CGROUP_V1]}"
    assert line in loud_a.stderr.replace('\\"', '"') and line in loud_b.stderr.replace('\\"', '"')


@need_containerd2
def test_plugins_ls_and_inspect_runtime(ctrd, c2):
    r = ctr2(ctrd.address, "plugins", "ls")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^io\.containerd\.warning\.v1\s+deprecations\s+-\s+ok", r.stdout, re.M)
    ours = ctr2(ctrd.address, "plugins", "inspect-runtime")
    theirs = ctr2(c2.address, "plugins", "inspect-runtime")
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert a.keys() == b.keys() == {"Name", "Version", "Options", "Features", "Annotations"}
    assert a["Name"] == "io.containerd.ctrd.v2" and a["Version"]["Version"]
    # the same runc answers `runc features` for both shims
    assert a["Features"] == b["Features"]
    assert a["Options"] == b["Options"] == {}
    opts = ctr2(ctrd.address, "plugins", "inspect-runtime", "--runc-binary", "runc")
    opts2 = ctr2(c2.address, "plugins", "inspect-runtime", "--runc-binary", "runc")
    assert opts.returncode == opts2.returncode == 0, opts.stderr
    assert json.loads(opts.stdout)["Options"] == json.loads(opts2.stdout)["Options"] == {
        "binary_name": "runc"}
    bad = ctr2(ctrd.address, "plugins", "inspect-runtime", "--runc-binary", "/nonexistent/runc")
    assert bad.returncode != 0
    assert 'failed to look up the path of "/nonexistent/runc"' in bad.stderr
    nope = ctr2(ctrd.address, "plugins", "inspect-runtime", "--runtime", "io.containerd.nope.v1")
    assert nope.returncode != 0 and "containerd-shim-nope-v1" in nope.stderr


def _introspection(address: str):
    from ctrd.api.containerd.services.introspection.v1 import introspection_pb2 as pb
    from ctrd.api.containerd.services.introspection.v1 import introspection_pb2_grpc as pbg

    ch = grpc.insecure_channel(f"unix://{address}")
    return ch, pbg.IntrospectionStub(ch), pb


def test_plugin_info_hostile_requests(ctrd):
    from google.protobuf import any_pb2

    from ctrd.api.containerd.types import introspection_pb2 as ipb

    ch, stub, pb = _introspection(ctrd.address)
    with ch:
        resp = stub.PluginInfo(pb.PluginInfoRequest(type="io.containerd.runtime.v2", id="task"))
        assert resp.plugin.id == "task" and not resp.HasField("extra")

        def code(req) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as e:
                stub.PluginInfo(req, timeout=60)
            return e.value.code()

        assert code(pb.PluginInfoRequest(type="io.containerd.nope.v1", id="x")) \
            == grpc.StatusCode.NOT_FOUND
        assert code(pb.PluginInfoRequest(type="", id="")) == grpc.StatusCode.NOT_FOUND
        assert code(pb.PluginInfoRequest(type="io.containerd.runtime.v2", id="../../task")) \
            == grpc.StatusCode.NOT_FOUND
        rr = any_pb2.Any(type_url="containerd.types.RuntimeRequest",
                         value=ipb.RuntimeRequest(runtime_path="io.containerd.runc.v2")
                         .SerializeToString())
        # a plugin that has nothing more to say
        assert code(pb.PluginInfoRequest(type="io.containerd.grpc.v1", id="version",
                                         options=rr)) == grpc.StatusCode.UNIMPLEMENTED
        assert code(pb.PluginInfoRequest(
            type="io.containerd.runtime.v2", id="task",
            options=any_pb2.Any(type_url="example.com/Other", value=b"x"))) \
            == grpc.StatusCode.UNIMPLEMENTED
        assert code(pb.PluginInfoRequest(
            type="io.containerd.runtime.v2", id="task",
            options=any_pb2.Any(type_url="containerd.types.RuntimeRequest",
                                value=b"\xff\xff\xff"))) == grpc.StatusCode.INVALID_ARGUMENT
        # a "shim" that fails, and one that prints garbage: errors naming it
        for path, text in (("/bin/false", "exit status 1"), ("/bin/echo", "failed to unmarshal")):
            req = any_pb2.Any(type_url="containerd.types.RuntimeRequest",
                              value=ipb.RuntimeRequest(runtime_path=path).SerializeToString())
            with pytest.raises(grpc.RpcError) as e:
                stub.PluginInfo(pb.PluginInfoRequest(type="io.containerd.runtime.v2", id="task",
                                                     options=req), timeout=60)
            assert path in e.value.details() and text in e.value.details()
        # still serving
        from google.protobuf import empty_pb2

        assert stub.Server(empty_pb2.Empty()).pid == ctrd.proc.pid


def _crictl_conditions(address: str) -> dict:
    r = subprocess.run([str(containerd2.CRICTL), "--runtime-endpoint", f"unix://{address}",
                        "info"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {c["type"]: c for c in json.loads(r.stdout)["status"]["conditions"]}


@pytest.mark.skipif(not os.access(containerd2.CRICTL, os.X_OK),
                    reason=f"crictl 1.36 is not at {containerd2.CRICTL}")
def test_cri_condition_lists_the_deprecations(start_ctrd):
    p = start_ctrd(config_text='version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.'
                               'mirrors."docker.io"]\nendpoint = ["https://mirror.example"]\n')
    cond = _crictl_conditions(p.address)["ContainerdHasNoDeprecationWarnings"]
    assert cond["status"] is False and cond["reason"] == "ContainerdHasDeprecationWarnings"
    listed = json.loads(cond["message"])
    assert {"io.containerd.deprecation/cri-registry-mirrors",
            "io.containerd.deprecation/config-version"} <= listed.keys()
    assert (CGROUP_V1 in listed) == cgroup_v1_host()
    info = json.loads(ctr2(p.address, "info").stdout)["server"]
    assert {w["id"] for w in info["deprecations"]} == listed.keys()
    # and the config can ignore them (a version 3 file: no config-version warning)
    ignore = json.dumps(sorted(listed))
    q = start_ctrd(name="quiet", config_text=(
        "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\n"
        f"ignore_deprecation_warnings = {ignore}\n"
        "[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'docker.io']\n"
        "endpoint = ['https://mirror.example']\n"))
    cond = _crictl_conditions(q.address)["ContainerdHasNoDeprecationWarnings"]
    assert cond["status"] is True
