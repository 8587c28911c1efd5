"""containerd.services.sandbox.v1.Controller on a real ctrd: the ``shim`` controller through a
real shim process speaking the sandbox ttrpc service (tests/sandbox_shim.py), the
``podsandbox`` controller running CRI pods (a pause container through ctrd's shim and runc,
on a real CNI bridge), dispatch errors and hostile requests (a clear error, nothing left,
the daemon serving)."""

from __future__ import annotations

import json
import os
import re
import time

import grpc
import pytest
from google.protobuf import any_pb2

from conftest import ctr
from sandboxutil import SPEC_URL, Events, Stubs, ctr2, have_ctr2, shim_wrapper
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri_factory, pod_config  # noqa: F401 - fixtures
from support.cri_pause import pause_factory, pause_ref  # noqa: F401 - fixtures
from support.poll import wait_until
from taskutil import mounts_under, processes_under

pytestmark = pytest.mark.integration

SPEC = json.dumps({"ociVersion": "1.1.0", "process": {"args": ["/pause"], "cwd": "/"},
                   "root": {"path": "rootfs"}}).encode()


def _sandbox(s: Stubs, id_: str, runtime: str, sandboxer: str = "shim", **kw):
    from ctrd.api.containerd.types import sandbox_pb2

    sb = sandbox_pb2.Sandbox(sandbox_id=id_, sandboxer=sandboxer, **kw)
    sb.runtime.name = runtime
    sb.spec.CopyFrom(any_pb2.Any(type_url=SPEC_URL, value=SPEC))
    return sb


def _code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


def _leftovers(d, base) -> list[str]:
    out = [f"process {p}: {_cmdline(p)}" for p in processes_under(base) if p != d.proc.pid]
    out += [f"mount {m}" for m in mounts_under(base)]
    shim_state = d.state / "io.containerd.sandbox.controller.v1.shim"
    if shim_state.exists():
        out += [f"bundle {p}" for p in shim_state.glob("*/*")]
    return out


@pytest.mark.parametrize("which", ["sandbox_shim", "ctrd-shim"])
def test_shim_controller_lifecycle(start_ctrd, tmp_root, which):
    """Through tests/sandbox_shim.py and through ctrd's own shim (its sandbox service,
    ctrd/runtime/shim/sandbox.py), started as the ``io.containerd.runc.v2`` runtime."""
    d = start_ctrd()
    shim = shim_wrapper(tmp_root) if which == "sandbox_shim" else "io.containerd.runc.v2"
    # The controller passes the shim's state words through, as containerd's does: the fake
    # shim says its own; ctrd's says the CRI's, as containerd's podsandbox controller does.
    ready, stopped = (("running", "stopped") if which == "sandbox_shim"
                      else ("SANDBOX_READY", "SANDBOX_NOTREADY"))
    s = Stubs(d.address)
    events = Events(d.address) if have_ctr2() else None
    time.sleep(0.3)
    try:
        sb = _sandbox(s, "box1", shim)
        s.call(s.store, "Create", sandbox=sb)
        r = s.call(s.ctl, "Create", sandbox_id="box1", sandboxer="shim", sandbox=sb,
                   netns_path="/proc/self/ns/net", annotations={"a": "b"})
        assert r.sandbox_id == "box1"
        assert _code(lambda: s.call(s.ctl, "Create", sandbox_id="box1", sandboxer="shim",
                                    sandbox=sb)) == \
            (grpc.StatusCode.ALREADY_EXISTS, "sandbox box1 already running: already exists")
        started = s.call(s.ctl, "Start", sandbox_id="box1", sandboxer="shim")
        assert started.pid > 0 and _alive(started.pid) and started.created_at.seconds > 0
        p = s.call(s.ctl, "Platform", sandbox_id="box1", sandboxer="shim").platform
        assert (p.os, p.architecture) == ("linux", "amd64")
        st = s.call(s.ctl, "Status", sandbox_id="box1", sandboxer="shim", verbose=True)
        assert (st.state, st.pid) == (ready, started.pid)
        m = s.call(s.ctl, "Metrics", sandbox_id="box1", sandboxer="shim").metrics
        assert m.id == "box1"
        s.call(s.ctl, "Update", sandbox_id="box1", sandboxer="shim", sandbox=sb)
        s.call(s.ctl, "Stop", sandbox_id="box1", sandboxer="shim", timeout_secs=1)
        # the fake shim's pid is its sandbox process; ctrd's shim has none of its own and
        # answers its own pid, which lives until Shutdown
        assert _alive(started.pid) == (which == "ctrd-shim")
        w = s.call(s.ctl, "Wait", sandbox_id="box1", sandboxer="shim")
        # the fake shim's process is SIGKILLed; ctrd's sandbox had none and ends with 0
        assert w.exit_status == (128 + 9 if which == "sandbox_shim" else 0)
        assert w.exited_at.seconds > 0
        assert s.call(s.ctl, "Status", sandbox_id="box1", sandboxer="shim").state == stopped
        s.call(s.ctl, "Shutdown", sandbox_id="box1", sandboxer="shim")
        assert wait_until(lambda: not _alive(started.pid))
        # gone from the controller: Stop is no error, Status answers an exit time, the rest
        # NotFound
        s.call(s.ctl, "Stop", sandbox_id="box1", sandboxer="shim")
        st = s.call(s.ctl, "Status", sandbox_id="box1", sandboxer="shim")
        assert st.sandbox_id == "box1" and st.exited_at.seconds > 0 and not st.state
        assert _code(lambda: s.call(s.ctl, "Wait", sandbox_id="box1", sandboxer="shim"))[0] \
            == grpc.StatusCode.NOT_FOUND
        s.call(s.store, "Delete", sandbox_id="box1")
    finally:
        s.close()
    if events is not None:
        assert events.topics() == ["/sandboxes/create", "/sandboxes/start", "/sandboxes/exit"]
    assert _leftovers(d, tmp_root / "ctrd") == []


def test_shim_controller_failures_leave_nothing(start_ctrd, tmp_root):
    d = start_ctrd()
    s = Stubs(d.address)
    try:
        # no such runtime: nothing started, nothing made
        sb = _sandbox(s, "box2", "io.containerd.nosuch.v1")
        code, msg = _code(lambda: s.call(s.ctl, "Create", sandbox_id="box2", sandboxer="shim",
                                         sandbox=sb))
        assert code == grpc.StatusCode.NOT_FOUND and "containerd-shim-nosuch-v1" in msg
        # a binary that is no shim at all, shims that answer the start with garbage or a
        # dead address
        garbage = tmp_root / "garbage-shim"
        garbage.write_text("#!/bin/sh\nprintf '\\010\\377\\377\\377\\377\\377\\022\\001'\n")
        dead = tmp_root / "dead-shim"
        dead.write_text(f"#!/bin/sh\necho unix://{tmp_root}/nothing.sock\n")
        json_v9 = tmp_root / "v9-shim"
        json_v9.write_text('#!/bin/sh\necho \'{"version": 9, "address": "unix:///x", '
                           '"protocol": "grpc"}\'\n')
        for p in (garbage, dead, json_v9):
            p.chmod(0o755)
        for runtime in ("/bin/true", str(garbage), str(dead), str(json_v9)):
            code, msg = _code(lambda: s.call(s.ctl, "Create", sandbox_id="box3",
                                             sandboxer="shim",
                                             sandbox=_sandbox(s, "box3", runtime)))
            assert code != grpc.StatusCode.OK and "box3" in msg, msg
            assert _leftovers(d, tmp_root / "ctrd") == []
        # Start of a sandbox never created
        code, msg = _code(lambda: s.call(s.ctl, "Start", sandbox_id="none", sandboxer="shim"))
        assert code == grpc.StatusCode.NOT_FOUND and 'unable to find sandbox "none"' in msg
    finally:
        s.close()
    assert ctr(d.address, "version").returncode == 0


@pytest.mark.parametrize("bad", ["../x", "", "a" * 77, "x/../../y", "."])
def test_hostile_sandbox_ids_to_the_controllers(start_ctrd, tmp_root, bad):
    d = start_ctrd()
    shim = shim_wrapper(tmp_root)
    s = Stubs(d.address)
    try:
        for sandboxer in ("shim", "podsandbox"):
            sb = _sandbox(s, bad, shim, sandboxer)
            code, msg = _code(lambda: s.call(s.ctl, "Create", sandbox_id=bad,
                                             sandboxer=sandboxer, sandbox=sb))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (sandboxer, msg)
            assert "identifier" in msg, msg
        code, msg = _code(lambda: s.call(s.store, "Create", sandbox=_sandbox(s, bad, shim)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid sandbox ID" in msg
        assert s.call(s.store, "List").list == []
    finally:
        s.close()
    assert _leftovers(d, tmp_root / "ctrd") == []
    assert not any((tmp_root / "ctrd").glob("state/*/x")) and not (tmp_root / "y").exists()


def test_dispatch_and_podsandbox_hostile_requests(start_ctrd):
    from ctrd.api.containerd.types import sandbox_pb2

    d = start_ctrd()
    s = Stubs(d.address)
    try:
        assert _code(lambda: s.call(s.ctl, "Start", sandbox_id="x")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "sandbox controller name can not be empty: invalid argument")
        assert _code(lambda: s.call(s.ctl, "Status", sandbox_id="x", sandboxer="nope")) == (
            grpc.StatusCode.NOT_FOUND, "failed to get sandbox controller by nope: not found")
        assert _code(lambda: s.call(s.ctl, "Update", sandbox_id="x", sandboxer="shim"))[0] == \
            grpc.StatusCode.INVALID_ARGUMENT
        # podsandbox: no pod config anywhere, a metadata extension that is garbage, options
        # that claim to be a PodSandboxConfig and are not
        cases = [
            ({"metadata": any_pb2.Any(type_url="x", value=b"\xff\xfe")}, None, "metadata"),
            ({"metadata": any_pb2.Any(type_url="x", value=b'{"Version":"v9"}')}, None,
             'unsupported version: "v9"'),
            ({"metadata": any_pb2.Any(type_url="x", value=b'{"Version":"v1","Metadata":'
                                                          b'{"Config":{"metadata":7}}}')},
             None, "metadata"),
            ({}, any_pb2.Any(type_url="type.googleapis.com/runtime.v1.PodSandboxConfig",
                             value=b"\x0a\xff\xff\xff\xff\x0f"), "options"),
        ]
        sb = sandbox_pb2.Sandbox(sandbox_id="pod1", sandboxer="podsandbox")
        assert _code(lambda: s.call(s.ctl, "Create", sandbox_id="pod1", sandboxer="podsandbox",
                                    sandbox=sb)) == (
            grpc.StatusCode.NOT_FOUND, 'failed to get sandbox "pod1" metadata: not found')
        for ext, options, want in cases:
            sb = sandbox_pb2.Sandbox(sandbox_id="pod1", sandboxer="podsandbox",
                                     extensions=ext)
            kw = {"options": options} if options is not None else {}
            code, msg = _code(lambda: s.call(s.ctl, "Create", sandbox_id="pod1",
                                             sandboxer="podsandbox", sandbox=sb, **kw))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
            assert 'failed to get sandbox "pod1"' in msg and want in msg, msg
        assert _code(lambda: s.call(s.ctl, "Start", sandbox_id="pod1",
                                    sandboxer="podsandbox"))[0] == grpc.StatusCode.NOT_FOUND
    finally:
        s.close()
    assert ctr(d.address, "version").returncode == 0


def test_podsandbox_controller_runs_a_pod(pause_factory, pause_ref):  # noqa: F811
    cri = pause_factory(sandbox_image=pause_ref)
    pb = cri.pb
    d = cri.daemon
    s = Stubs(d.address, namespace="k8s.io")
    try:
        from ctrd.api.containerd.types import sandbox_pb2

        config = pod_config(pb, "viaapi", "uid-viaapi")
        sb = sandbox_pb2.Sandbox(sandbox_id="apipod", sandboxer="podsandbox")
        sb.runtime.name = "io.containerd.runc.v2"
        s.call(s.store, "Create", sandbox=sb)
        opts = any_pb2.Any()
        opts.Pack(config)
        s.call(s.ctl, "Create", sandbox_id="apipod", sandboxer="podsandbox", sandbox=sb,
               options=opts)
        started = s.call(s.ctl, "Start", sandbox_id="apipod", sandboxer="podsandbox")
        assert started.pid > 0 and _alive(started.pid)
        assert started.labels["io.cri-containerd.kind"] == "sandbox"
        assert started.labels["oci_runtime_type"] == "io.containerd.runc.v2"
        pods = {p.id: p for p in cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items}
        assert pods["apipod"].metadata.name == "viaapi"
        assert pods["apipod"].state == pb.SANDBOX_READY
        st = s.call(s.ctl, "Status", sandbox_id="apipod", sandboxer="podsandbox", verbose=True)
        assert (st.state, st.pid) == ("SANDBOX_READY", started.pid)
        assert json.loads(st.info["info"])["config"]["metadata"]["name"] == "viaapi"
        m = s.call(s.ctl, "Metrics", sandbox_id="apipod", sandboxer="podsandbox").metrics
        assert m.id == "apipod" and m.data.type_url
        p = s.call(s.ctl, "Platform", sandbox_id="apipod", sandboxer="podsandbox").platform
        assert p.os == "linux"
        # a container of the pod names it as its sandbox (Container.sandbox)
        cid = cri.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id="apipod", sandbox_config=config,
            config=pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c1"),
                                      image=pb.ImageSpec(image=cri.image),
                                      command=["sleep", "1000"]))).container_id
        from ctrd.api.containerd.services.containers.v1 import containers_pb2, \
            containers_pb2_grpc

        cs = containers_pb2_grpc.ContainersStub(s.channel)
        got = cs.Get(containers_pb2.GetContainerRequest(id=cid), metadata=s.md).container
        assert got.sandbox == "apipod"
        s.call(s.ctl, "Stop", sandbox_id="apipod", sandboxer="podsandbox", timeout_secs=5)
        assert not _alive(started.pid)
        w = s.call(s.ctl, "Wait", sandbox_id="apipod", sandboxer="podsandbox")
        assert w.exited_at.seconds > 0
        st = s.call(s.ctl, "Status", sandbox_id="apipod", sandboxer="podsandbox")
        assert st.state == "SANDBOX_NOTREADY"
        s.call(s.ctl, "Shutdown", sandbox_id="apipod", sandboxer="podsandbox")
        assert cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
        assert cri.rt.ListContainers(pb.ListContainersRequest()).containers == []
        s.call(s.store, "Delete", sandbox_id="apipod")
        assert s.call(s.store, "List").list == []
    finally:
        s.close()
    # pause_factory's teardown fails on any process, mount, CNI lease, pod dir, task,
    # container, snapshot or lease left


@pytest.mark.skipif(not have_ctr2(), reason="containerd 2.3.4's ctr absent "
                                            "(../shared/bin/containerd-2.3.4)")
def test_cri_pods_listed_by_ctr2(cri_factory):  # noqa: F811
    cri = cri_factory()
    pb = cri.pb
    d = cri.daemon
    sid, _ = cri.run_pod("web", uid="uid-web")
    r = ctr2(d.address, "sandboxes", "ls", namespace="k8s.io")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [(row[0], row[-1]) for row in rows] == [(sid, "io.containerd.runc.v2")]
    info = json.loads(ctr2(d.address, "sandboxes", "info", sid, namespace="k8s.io").stdout)
    assert info["Sandboxer"] == "podsandbox"
    # as containerd 2.3.4 leaves it: the pod container's labels and the runtime type
    assert info["Labels"] == {"app": "web", "io.cri-containerd.kind": "sandbox",
                              "oci_runtime_type": "io.containerd.runc.v2"}
    assert info["Runtime"]["Options"]["type_url"] == "containerd.runc.v1.Options"
    assert info["Spec"]["type_url"] == "types.containerd.io/opencontainers/runtime-spec/1/Spec"
    ext = info["Extensions"]["metadata"]
    assert ext["type_url"] == "github.com/containerd/cri/pkg/store/sandbox/Metadata"
    import base64

    meta = json.loads(base64.b64decode(ext["value"]))
    assert meta["Version"] == "v1" and meta["Metadata"]["ID"] == sid
    assert meta["Metadata"]["Config"]["metadata"]["name"] == "web"
    assert meta["Metadata"]["IP"].startswith(cri.net.prefix + ".")
    # the podsandbox controller knows it
    s = Stubs(d.address, namespace="k8s.io")
    try:
        st = s.call(s.ctl, "Status", sandbox_id=sid, sandboxer="podsandbox")
        assert st.state == "SANDBOX_READY"
    finally:
        s.close()
    assert ctr2(d.address, "sandboxes", "ls", namespace="default").stdout.splitlines()[1:] == []
    cri.remove_pod(sid)
    r = ctr2(d.address, "sandboxes", "ls", namespace="k8s.io")
    assert r.returncode == 0 and r.stdout.splitlines()[1:] == []
    assert not os.path.exists(d.state / "io.containerd.grpc.v1.cri" / "sandboxes" / sid)
    # ctr 2.3.4 sandboxes rm of a CRI pod: Stop and Shutdown through the podsandbox
    # controller, then the record; the pod is gone for the CRI too (the fixture's teardown
    # fails on any process, mount, CNI lease or pod dir left)
    sid2, _ = cri.run_pod("db", uid="uid-db")
    r = ctr2(d.address, "sandboxes", "rm", sid2, namespace="k8s.io")
    assert r.returncode == 0 and f"deleted: {sid2}" in r.stderr, r.stderr
    assert cri.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert ctr2(d.address, "sandboxes", "ls", namespace="k8s.io").stdout.splitlines()[1:] == []


def test_shim_sandboxes_survive_a_daemon_restart(start_ctrd, tmp_root):
    d = start_ctrd()
    shim = shim_wrapper(tmp_root)
    s = Stubs(d.address)
    pids = {}
    try:
        for id_ in ("keep", "dies"):
            sb = _sandbox(s, id_, shim)
            s.call(s.store, "Create", sandbox=sb)
            s.call(s.ctl, "Create", sandbox_id=id_, sandboxer="shim", sandbox=sb)
            pids[id_] = s.call(s.ctl, "Start", sandbox_id=id_, sandboxer="shim").pid
    finally:
        s.close()
    d.stop()
    # while the daemon is down, the shim of "dies" goes (with its sandbox process)
    bundle = d.state / "io.containerd.sandbox.controller.v1.shim" / "default" / "dies"
    victims = [p for p in processes_under(bundle)]
    assert victims
    for p in victims + [pids["dies"]]:
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            pass
    d = start_ctrd()
    s = Stubs(d.address)
    try:
        st = s.call(s.ctl, "Status", sandbox_id="keep", sandboxer="shim")
        assert (st.state, st.pid) == ("running", pids["keep"]) and _alive(pids["keep"])
        assert not bundle.exists()  # cleaned up at start
        st = s.call(s.ctl, "Status", sandbox_id="dies", sandboxer="shim")
        assert not st.state and st.exited_at.seconds > 0
        r = ctr2(d.address, "sandboxes", "rm", "keep", "dies") if have_ctr2() else None
        if r is None:
            for id_ in ("keep", "dies"):
                s.call(s.ctl, "Stop", sandbox_id=id_, sandboxer="shim")
                try:
                    s.call(s.ctl, "Shutdown", sandbox_id=id_, sandboxer="shim")
                except grpc.RpcError:
                    pass
                s.call(s.store, "Delete", sandbox_id=id_)
        assert s.call(s.store, "List").list == []
    finally:
        s.close()
    assert not _alive(pids["keep"])
    assert _leftovers(d, tmp_root / "ctrd") == []


def test_shim_start_answers():
    """What a shim's ``start`` may print (ctrd.runtime.bootstrap.parse_start_output)."""
    from ctrd import errdefs
    from ctrd.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2
    from ctrd.runtime.bootstrap import parse_start_output

    v3 = bootstrap_pb2.BootstrapResult(version=3, address="unix:///run/s/x",
                                       protocol="ttrpc").SerializeToString()
    assert parse_start_output(v3) == ("unix:///run/s/x", 3)
    assert parse_start_output(b"unix:///run/s/y\n") == ("unix:///run/s/y", 2)
    assert parse_start_output(b'{"version": 2, "address": "unix:///z", "protocol": "ttrpc"}') \
        == ("unix:///z", 2)
    for bad, kind, words in [
            (bootstrap_pb2.BootstrapResult(version=9, address="unix:///x").SerializeToString(),
             errdefs.NotImplemented_, "unsupported shim version (9)"),
            (b'{"version": 3, "address": "vsock://1:2", "protocol": "grpc"}',
             errdefs.NotImplemented_, "unsupported shim protocol 'grpc'"),
            (b"\x08\xff\xff\xff\xff\xff\x12\x01", errdefs.FailedPrecondition, "unreadable")]:
        with pytest.raises(kind, match=re.escape(words)):
            parse_start_output(bad)
