"""The real ``ctr run`` / ``ctr tasks ...`` against ctrd, with ctr 1.6 and ctr 2.3.4.

Parametrised over the shim that serves ``io.containerd.runc.v2``: ctrd's own
(``containerd-shim-ctrd-v2``, the default) and containerd's Go shim (mapped in ctrd's config),
so the daemon side is checked against the reference shim as well. After every test: no shim,
mount, FIFO, bundle or runc container is left.
"""

from __future__ import annotations

import os
import time

import pytest

from conftest import ctr
from support.poll import wait_until
from taskutil import SHIM_KINDS, task_daemon

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ctr_client")]

@pytest.fixture(params=SHIM_KINDS)
def daemon(request, start_ctrd, tmp_root, registry):
    yield from task_daemon(request.param, start_ctrd, tmp_root, registry)


def run(d, *args: str, timeout: float = 60):
    return ctr(d.address, "run", *args, timeout=timeout)


def test_run_rm_echo(daemon):
    r = run(daemon, "--rm", daemon.image, "t-echo", "echo", "hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi\n"
    assert ctr(daemon.address, "containers", "ls", "-q").stdout == ""
    assert ctr(daemon.address, "tasks", "ls", "-q").stdout == ""


def test_exit_code_propagates(daemon):
    r = run(daemon, "--rm", daemon.image, "t-exit", "sh", "-c", "exit 7")
    assert r.returncode == 7, r.stderr


def test_env(daemon):
    r = run(daemon, "--rm", "--env", "GREETING=hello there", daemon.image, "t-env",
            "sh", "-c", 'echo "$GREETING"')
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello there\n"


def _task_status(d, tid: str) -> str:
    r = ctr(d.address, "tasks", "ls")
    for line in r.stdout.splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == tid:
            return parts[-1]
    return ""


def _wait_status(d, tid: str, want: str, timeout: float = 15) -> str:
    wait_until(lambda: _task_status(d, tid) == want, timeout, what=f"task {tid} {want}")
    return want


def test_detached_lifecycle(daemon):
    d = daemon
    r = run(d, "-d", d.image, "t-d", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    assert _wait_status(d, "t-d", "RUNNING") == "RUNNING"

    r = ctr(d.address, "tasks", "exec", "--exec-id", "e1", "t-d", "sh", "-c", "echo from-exec")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from-exec\n"
    r = ctr(d.address, "tasks", "exec", "--exec-id", "e2", "t-d", "sh", "-c", "exit 3")
    assert r.returncode == 3

    r = ctr(d.address, "tasks", "ps", "t-d")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) >= 2  # header + the sleep

    assert ctr(d.address, "tasks", "pause", "t-d").returncode == 0
    assert _wait_status(d, "t-d", "PAUSED") == "PAUSED"
    assert ctr(d.address, "tasks", "resume", "t-d").returncode == 0
    assert _wait_status(d, "t-d", "RUNNING") == "RUNNING"

    r = ctr(d.address, "tasks", "kill", "-s", "KILL", "t-d")
    assert r.returncode == 0, r.stderr
    assert _wait_status(d, "t-d", "STOPPED") == "STOPPED"
    r = ctr(d.address, "tasks", "rm", "t-d")
    assert r.returncode == 0, r.stderr
    assert ctr(d.address, "tasks", "ls", "-q").stdout == ""
    r = ctr(d.address, "containers", "rm", "t-d")
    assert r.returncode == 0, r.stderr
    assert ctr(d.address, "containers", "ls", "-q").stdout == ""


def test_task_errors(daemon):
    d = daemon
    r = ctr(d.address, "tasks", "kill", "nosuch")
    assert r.returncode != 0 and "not found" in r.stderr
    r = ctr(d.address, "containers", "create", d.image, "t-twice", "true")
    assert r.returncode == 0, r.stderr
    r = ctr(d.address, "tasks", "start", "-d", "t-twice")
    assert r.returncode == 0, r.stderr
    r = ctr(d.address, "tasks", "start", "-d", "t-twice")
    assert r.returncode != 0 and "already exists" in r.stderr, r.stderr


def test_run_with_tty(daemon):
    """``ctr run -t`` in a pseudo-terminal: output comes back through the pty."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # child: become ctr
        os.execvp("ctr", ["ctr", "--address", daemon.address, "run", "--rm", "-t",
                          daemon.image, "t-tty", "sh", "-c", "tty; echo tty-ok"])
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert b"tty-ok" in out, out
    assert b"/dev/pts/" in out or b"/dev/console" in out, out
    assert os.waitstatus_to_exitcode(status) == 0


def test_other_runtime_name_resolves_to_its_shim_binary(daemon):
    """Any runtime name but the mapped one resolves as in containerd: io.containerd.runc.v1
    runs through containerd's own containerd-shim-runc-v1 (a Go shim v2 binary)."""
    import shutil

    if shutil.which("containerd-shim-runc-v1") is None:
        pytest.skip("containerd-shim-runc-v1 is not installed (apt-get install containerd)")
    r = run(daemon, "--rm", "--runtime", "io.containerd.runc.v1", daemon.image, "t-v1",
            "sh", "-c", "echo via-v1; exit 5")
    assert r.returncode == 5, r.stderr
    assert r.stdout == "via-v1\n"
    r = run(daemon, "--rm", "--runtime", "io.containerd.nosuch.v1", daemon.image, "t-no", "true")
    assert r.returncode != 0
    assert "containerd-shim-nosuch-v1" in r.stderr


def test_tasks_api_hostile_requests(daemon):
    """Tasks over gRPC with bad input: clear errors, nothing created, the task and the daemon
    keep serving."""
    import grpc
    from google.protobuf import any_pb2

    from ctrd.api.containerd.services.tasks.v1 import tasks_pb2 as pb
    from ctrd.api.containerd.services.tasks.v1 import tasks_pb2_grpc as pbg

    d = daemon
    assert run(d, "-d", d.image, "t-h", "sleep", "1000").returncode == 0
    md = (("containerd-namespace", "default"),)
    with grpc.insecure_channel("unix:" + d.address) as ch:
        tasks = pbg.TasksStub(ch)

        def code(call, req):
            with pytest.raises(grpc.RpcError) as e:
                call(req, metadata=md, timeout=30)
            return e.value.code(), e.value.details()

        c, msg = code(tasks.Create, pb.CreateTaskRequest(container_id="nosuch"))
        assert c == grpc.StatusCode.NOT_FOUND and "nosuch" in msg
        c, _ = code(tasks.Exec, pb.ExecProcessRequest(container_id="t-h", exec_id=""))
        assert c == grpc.StatusCode.INVALID_ARGUMENT
        garbage = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                              value=b"{not json")
        c, _ = code(tasks.Exec, pb.ExecProcessRequest(container_id="t-h", exec_id="g",
                                                      spec=garbage))
        assert c != grpc.StatusCode.OK
        c, _ = code(tasks.Kill, pb.KillRequest(container_id="t-h", exec_id="nope", signal=9))
        assert c == grpc.StatusCode.NOT_FOUND
        c, _ = code(tasks.Create, pb.CreateTaskRequest(container_id="t-h"))
        assert c == grpc.StatusCode.ALREADY_EXISTS
        got = tasks.Get(pb.GetRequest(container_id="t-h"), metadata=md, timeout=30)
        assert got.process.status == 2  # RUNNING: the bad calls changed nothing
    r = ctr(d.address, "tasks", "exec", "--exec-id", "ok", "t-h", "echo", "still")
    assert r.returncode == 0 and r.stdout == "still\n", r.stderr
