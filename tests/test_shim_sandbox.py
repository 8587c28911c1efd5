"""ctrd's shim serves ``containerd.runtime.sandbox.v1.Sandbox`` (what containerd's shim
sandbox controller calls) and the task API v3 next to v2, on the same socket: a real shim
started with ``start``, real runc tasks in it, calls over ttrpc."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from google.protobuf.message_factory import GetMessageClass

from ctrd import errdefs
from ctrd.api.containerd.runtime.sandbox.v1 import sandbox_pb2 as sb
from ctrd.api.containerd.runtime.v3.task import shim_pb2 as v3
from shimutil import direct, make_bundle, shim_pids  # noqa: F401 (fixture)
from support.poll import wait_until

pytestmark = pytest.mark.integration

SANDBOX = "containerd.runtime.sandbox.v1.Sandbox"
TASK_V3 = "containerd.task.v3.Task"


def _call(direct, shim, service: str, method: str, request, timeout: float = 30):
    desc = (sb if service == SANDBOX else v3).DESCRIPTOR.services_by_name[
        service.rsplit(".", 1)[1]]
    out = GetMessageClass(desc.methods_by_name[method].output_type)
    return direct.sink.call_async(shim.client.call(
        service, method, request, out, timeout=timeout,
        metadata={"containerd-namespace-ttrpc": direct.ns}), timeout + 5)


def _later(direct, shim, service: str, method: str, request):
    desc = (sb if service == SANDBOX else v3).DESCRIPTOR.services_by_name[
        service.rsplit(".", 1)[1]]
    out = GetMessageClass(desc.methods_by_name[method].output_type)
    return asyncio.run_coroutine_threadsafe(shim.client.call(
        service, method, request, out, metadata={"containerd-namespace-ttrpc": direct.ns}),
        direct.sink.loop)


def test_sandbox_lifecycle_with_a_task_through_task_api_v3(direct, tmp_root):
    bundle, address, shim = direct.start("pod1", ["sleep", "1000"])
    (shim_pid,) = shim_pids(direct.fake_daemon)
    call = lambda m, r, **kw: _call(direct, shim, SANDBOX, m, r, **kw)  # noqa: E731
    task = lambda m, r, **kw: _call(direct, shim, TASK_V3, m, r, **kw)  # noqa: E731

    call("CreateSandbox", sb.CreateSandboxRequest(sandbox_id="pod1", bundle_path=str(bundle),
                                                  annotations={"a": "b"}))
    call("PingSandbox", sb.PingRequest(sandbox_id="pod1"))
    st = call("SandboxStatus", sb.SandboxStatusRequest(sandbox_id="pod1"))
    assert (st.sandbox_id, st.state, st.pid) == ("pod1", "SANDBOX_NOTREADY", 0)
    started = call("StartSandbox", sb.StartSandboxRequest(sandbox_id="pod1"))
    assert started.pid == shim_pid and started.created_at.seconds > 0
    st = call("SandboxStatus", sb.SandboxStatusRequest(sandbox_id="pod1", verbose=True))
    assert (st.state, st.pid, st.info["bundle"]) == ("SANDBOX_READY", shim_pid, str(bundle))
    assert st.created_at == started.created_at
    p = call("Platform", sb.PlatformRequest(sandbox_id="pod1")).platform
    assert p.os == "linux" and p.architecture in ("amd64", "arm64", "arm", "386",
                                                  os.uname().machine)
    m = call("SandboxMetrics", sb.SandboxMetricsRequest(sandbox_id="pod1")).metrics
    assert m.id == "pod1" and m.timestamp.seconds > 0 and "metrics" in m.data.type_url.lower()

    # A container of the sandbox: a task in the same shim, through the v3 service name.
    cbundle = make_bundle(tmp_root / "bundles" / "c1", ["sleep", "1000"])
    direct.bundles.append(cbundle)
    req = direct.create_request("c1", cbundle)
    created = v3.CreateTaskRequest()
    created.ParseFromString(req.SerializeToString())
    pid = task("Create", created).pid
    assert task("Start", v3.StartRequest(id="c1")).pid == pid
    assert task("State", v3.StateRequest(id="c1")).status == 2  # RUNNING
    task_wait = _later(direct, shim, TASK_V3, "Wait", v3.WaitRequest(id="c1"))
    sandbox_wait = _later(direct, shim, SANDBOX, "WaitSandbox",
                          sb.WaitSandboxRequest(sandbox_id="pod1"))

    call("StopSandbox", sb.StopSandboxRequest(sandbox_id="pod1"))
    assert task_wait.result(30).exit_status == 128 + signal.SIGKILL
    w = sandbox_wait.result(30)
    assert w.exit_status == 0 and w.exited_at.seconds > 0
    st = call("SandboxStatus", sb.SandboxStatusRequest(sandbox_id="pod1"))
    assert (st.state, st.exited_at) == ("SANDBOX_NOTREADY", w.exited_at)
    call("StopSandbox", sb.StopSandboxRequest(sandbox_id="pod1"))  # again: a no-op
    assert call("WaitSandbox", sb.WaitSandboxRequest(sandbox_id="pod1")) == w

    task("Delete", v3.DeleteRequest(id="c1"))
    # The task API's Shutdown does not end a shim that still holds a sandbox.
    task("Shutdown", v3.ShutdownRequest(id="c1"))
    assert task("Connect", v3.ConnectRequest(id="pod1")).shim_pid == shim_pid
    call("ShutdownSandbox", sb.ShutdownSandboxRequest(sandbox_id="pod1"))
    assert wait_until(lambda: not shim_pids(direct.fake_daemon))
    assert not (bundle / "address").exists()
    topics = direct.sink.topics()
    assert topics[:2] == ["/tasks/create", "/tasks/start"] and "/tasks/exit" in topics


def test_sandbox_bad_requests_are_clear_errors(direct, tmp_root):
    bundle, address, shim = direct.start("pod2", ["true"])
    call = lambda m, r: _call(direct, shim, SANDBOX, m, r)  # noqa: E731

    for bad_id in ("", "../etc", "a/b", "x" * 100):
        with pytest.raises(errdefs.InvalidArgument) as e:
            call("CreateSandbox", sb.CreateSandboxRequest(sandbox_id=bad_id,
                                                          bundle_path=str(bundle)))
        assert "identifier" in str(e.value)
    for bad_bundle in ("/nonexistent/bundle", "relative", str(bundle / "config.json")):
        with pytest.raises(errdefs.InvalidArgument) as e:
            call("CreateSandbox", sb.CreateSandboxRequest(sandbox_id="pod2",
                                                          bundle_path=bad_bundle))
        assert "not a directory" in str(e.value)
    with pytest.raises(errdefs.InvalidArgument):
        call("CreateSandbox", sb.CreateSandboxRequest(sandbox_id="pod2",
                                                      bundle_path=str(bundle),
                                                      netns_path="var/run/netns/x"))
    for method, req in (("StartSandbox", sb.StartSandboxRequest(sandbox_id="nope")),
                        ("Platform", sb.PlatformRequest(sandbox_id="nope")),
                        ("StopSandbox", sb.StopSandboxRequest(sandbox_id="nope")),
                        ("WaitSandbox", sb.WaitSandboxRequest(sandbox_id="nope")),
                        ("SandboxStatus", sb.SandboxStatusRequest(sandbox_id="nope")),
                        ("PingSandbox", sb.PingRequest(sandbox_id="nope")),
                        ("ShutdownSandbox", sb.ShutdownSandboxRequest(sandbox_id="nope")),
                        ("SandboxMetrics", sb.SandboxMetricsRequest(sandbox_id="nope"))):
        with pytest.raises(errdefs.NotFound) as e:
            call(method, req)
        assert "nope" in str(e.value), method
    call("CreateSandbox", sb.CreateSandboxRequest(sandbox_id="pod2", bundle_path=str(bundle)))
    with pytest.raises(errdefs.AlreadyExists):
        call("CreateSandbox", sb.CreateSandboxRequest(sandbox_id="pod2",
                                                      bundle_path=str(bundle)))
    call("StartSandbox", sb.StartSandboxRequest(sandbox_id="pod2"))
    with pytest.raises(errdefs.FailedPrecondition):
        call("StartSandbox", sb.StartSandboxRequest(sandbox_id="pod2"))
    # The shim still serves, then goes when its sandbox is shut down (no stop first).
    assert call("SandboxStatus", sb.SandboxStatusRequest(sandbox_id="pod2")).state == \
        "SANDBOX_READY"
    call("ShutdownSandbox", sb.ShutdownSandboxRequest(sandbox_id="pod2"))
    assert wait_until(lambda: not shim_pids(direct.fake_daemon))
