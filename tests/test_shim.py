"""ctrd's shim (containerd-shim-ctrd-v2) driven by containerd 1.6 itself and the real ctr:
run/exec/ps/pause/resume/kill/rm through runtime io.containerd.ctrd.v2, exit codes, env,
terminals, another OCI runtime binary, and the shim outliving its daemon. After every test:
no shim process, no mount under the daemon's state, no shim socket left."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import CTR, ctr
from shimutil import (RUNTIME, mounts_under, shim_pids, sockets, stale_sockets,
                      wait_until)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]


class Env:
    """containerd with the busybox test image pulled, and shorthands for ctr."""

    def __init__(self, containerd, image: str) -> None:
        self.d = containerd
        self.image = image

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return ctr(self.d.address, *args, timeout=timeout)

    def ok(self, *args: str, timeout: float = 60) -> str:
        r = self.ctr(*args, timeout=timeout)
        assert r.returncode == 0, f"ctr {' '.join(args)}: {r.stderr}\n{self.d.read_log()[-3000:]}"
        return r.stdout

    def run(self, id: str, *cmd: str, opts: tuple = ()) -> subprocess.CompletedProcess:
        return self.ctr("run", "--rm", "--runtime", RUNTIME, *opts, self.image, id, *cmd)

    def task_status(self, id: str) -> str:
        for line in self.ok("tasks", "ls").splitlines()[1:]:
            f = line.split()
            if f[0] == id:
                return f[2]
        return ""


def _force_cleanup(env: Env) -> None:
    for line in env.ctr("tasks", "ls").stdout.splitlines()[1:]:
        id = line.split()[0]
        env.ctr("tasks", "kill", "-a", "-s", "KILL", id)
        env.ctr("tasks", "rm", "-f", id)
    for line in env.ctr("containers", "ls", "-q").stdout.split():
        env.ctr("containers", "rm", line)
    for pid in shim_pids(env.d.address):
        os.kill(pid, signal.SIGKILL)
    for m in reversed(mounts_under(str(env.d.state))):
        subprocess.run(["umount", "-l", m], capture_output=True)


@pytest.fixture
def env(containerd, registry):
    before = sockets()
    e = Env(containerd, registry.ref("busybox"))
    e.ok("images", "pull", "--plain-http", e.image, timeout=120)
    yield e
    # Clean state is part of every test: checked before anything is forced.
    try:
        assert wait_until(lambda: not shim_pids(containerd.address)), \
            f"shims left: {shim_pids(containerd.address)}"
        assert mounts_under(str(containerd.state)) == []
        assert stale_sockets(before) == set()
    finally:
        _force_cleanup(e)
        for s in stale_sockets(before):
            os.unlink(f"/run/ctrd/s/{s}")


def test_run_echo_prints_and_cleans_up(env):
    r = env.run("echo", "echo", "hi")
    assert r.returncode == 0, r.stderr + env.d.read_log()[-3000:]
    assert r.stdout == "hi\n"


def test_exit_codes_and_env_propagate(env):
    r = env.run("exit7", "sh", "-c", "exit 7")
    assert r.returncode == 7, r.stderr
    r = env.run("envtest", "sh", "-c", "echo $FOO-$BAR", opts=("--env", "FOO=foo",
                                                                  "--env", "BAR=b a r"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "foo-b a r\n"
    # A signalled init reports 128 + signal (ctr exits with the task's status).
    p = subprocess.Popen([CTR, "--address", env.d.address, "run", "--rm", "--runtime", RUNTIME,
                          env.image, "killed", "sleep", "60"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: env.task_status("killed") == "RUNNING"), p.stderr
        env.ok("tasks", "kill", "-s", "KILL", "killed")
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 137, err


def test_detached_task_exec_ps_pause_resume_kill_rm(env):
    env.ok("run", "-d", "--runtime", RUNTIME, env.image, "det", "sleep", "600")
    assert env.task_status("det") == "RUNNING"
    r = env.ctr("tasks", "exec", "--exec-id", "x1", "det", "sh", "-c", "echo in-$HOSTNAME; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("in-")
    # A second exec while the first long one runs: both listed by tasks ps.
    p = subprocess.Popen([CTR, "--address", env.d.address, "tasks", "exec", "--exec-id", "x2",
                          "det", "sleep", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: len(env.ok("tasks", "ps", "det").splitlines()) == 3)
        ps = env.ok("tasks", "ps", "det")
        assert "x2" in ps  # the exec's pid carries its exec id
        env.ok("tasks", "kill", "--exec-id", "x2", "-s", "KILL", "det")
        p.communicate(timeout=30)
        assert p.returncode == 137
    finally:
        if p.poll() is None:
            p.kill()
    env.ok("tasks", "pause", "det")
    assert env.task_status("det") == "PAUSED"
    env.ok("tasks", "resume", "det")
    assert env.task_status("det") == "RUNNING"
    # What containerd's own shim answers: pausing twice, deleting a running task.
    r = env.ctr("tasks", "rm", "det")
    assert r.returncode != 0 and "running" in r.stderr
    env.ok("tasks", "kill", "-s", "KILL", "det")
    assert wait_until(lambda: env.task_status("det") == "STOPPED")
    env.ok("tasks", "rm", "det")
    env.ok("containers", "rm", "det")


def test_exec_id_conflicts_and_bad_ids_are_refused(env):
    env.ok("run", "-d", "--runtime", RUNTIME, env.image, "ids", "sleep", "600")
    p = subprocess.Popen([CTR, "--address", env.d.address, "tasks", "exec", "--exec-id", "dup",
                          "ids", "sleep", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: len(env.ok("tasks", "ps", "ids").splitlines()) == 3)
        r = env.ctr("tasks", "exec", "--exec-id", "dup", "ids", "true")
        assert r.returncode != 0 and "already exists" in r.stderr
    finally:
        env.ctr("tasks", "kill", "--exec-id", "dup", "-s", "KILL", "ids")
        p.communicate(timeout=30)
    # A command that does not exist: the runtime's own error reaches ctr, nothing is left.
    r = env.ctr("tasks", "exec", "--exec-id", "nope", "ids", "/no/such/binary")
    assert r.returncode != 0 and "no/such/binary" in r.stderr
    env.ok("tasks", "kill", "-s", "KILL", "ids")
    assert wait_until(lambda: env.task_status("ids") == "STOPPED")
    env.ok("tasks", "rm", "ids")
    env.ok("containers", "rm", "ids")


def test_run_failure_leaves_nothing(env):
    r = env.run("bad", "/no/such/binary")
    assert r.returncode != 0
    assert "no/such/binary" in r.stderr
    env.ctr("containers", "rm", "bad")


def test_stdin_reaches_the_task_and_eof_ends_it(env):
    r = subprocess.run([CTR, "--address", env.d.address, "run", "--rm", "--runtime", RUNTIME,
                        env.image, "stdin", "sh", "-c", "cat; echo done"],
                       input="line one\nline two\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "line one\nline two\ndone\n"


def test_log_uri_file_appends_output(env, tmp_root):
    log = tmp_root / "logs" / "task.log"
    for word in ("first", "second"):
        r = env.ctr("run", "--rm", "--runtime", RUNTIME, "--log-uri", f"file://{log}",
                    env.image, "logged", "sh", "-c", f"echo {word}; echo {word}-err >&2")
        assert r.returncode == 0, r.stderr
    assert sorted(log.read_text().splitlines()) == sorted(
        ["first", "first-err", "second", "second-err"])


def _run_in_pty(argv: list[str], keys: bytes = b"", rows: int = 0, cols: int = 0,
                timeout: float = 60, prompt: bytes = b"# ") -> tuple[int, str]:
    """Run ``argv`` with a pty as its stdio (sized rows x cols), type ``keys`` once it
    printed ``prompt``; return its exit code and everything it printed."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    if rows:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if keys and prompt in out:
                os.write(master, keys)
                keys = b""
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: every slave end closed
                    break
                if not data:
                    break
                out += data
            elif p.poll() is not None:
                break
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return p.returncode, out.decode(errors="replace")


def test_terminal_run_interactive_with_size(env):
    code, out = _run_in_pty([CTR, "--address", env.d.address, "run", "--rm", "-t",
                             "--runtime", RUNTIME, env.image, "tty", "sh"],
                            keys=b"stty size; echo got-$((6*7))\nexit 5\n", rows=33, cols=101)
    assert "33 101" in out, out
    assert "got-42" in out, out
    assert code == 5, out


def test_terminal_exec(env):
    env.ok("run", "-d", "--runtime", RUNTIME, env.image, "ttyx", "sleep", "600")
    code, out = _run_in_pty([CTR, "--address", env.d.address, "tasks", "exec", "-t",
                             "--exec-id", "t1", "ttyx", "sh", "-c", "tty; exit 4"])
    assert "/dev/pts/" in out, out
    assert code == 4, out
    env.ok("tasks", "kill", "-s", "KILL", "ttyx")
    assert wait_until(lambda: env.task_status("ttyx") == "STOPPED")
    env.ok("tasks", "rm", "ttyx")
    env.ok("containers", "rm", "ttyx")


def test_shim_survives_daemon_kill_9(env):
    from conftest import wait_for_socket

    env.ok("run", "-d", "--runtime", RUNTIME, env.image, "survivor", "sleep", "600")
    shims = shim_pids(env.d.address)
    assert len(shims) == 1
    old = env.d.proc
    old.kill()  # SIGKILL the daemon only: the shim lives in its own session
    old.wait()
    assert shim_pids(env.d.address) == shims
    with open(env.d.log, "a") as out:
        env.d.proc = subprocess.Popen([old.args[0], "--config", old.args[2]], stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      env=env.d.env)
    wait_for_socket(env.d, timeout=30)
    assert env.task_status("survivor") == "RUNNING"
    r = env.ctr("tasks", "exec", "--exec-id", "after", "survivor", "echo", "still here")
    assert r.returncode == 0 and r.stdout == "still here\n", r.stderr
    env.ok("tasks", "kill", "-s", "KILL", "survivor")
    assert wait_until(lambda: env.task_status("survivor") == "STOPPED")
    env.ok("tasks", "rm", "survivor")
    env.ok("containers", "rm", "survivor")


# --------------------------------------------------- the shim driven directly over ttrpc

from ctrd import errdefs  # noqa: E402
from ctrd.api.containerd.runc.options import oci_pb2  # noqa: E402
from ctrd.api.containerd.runtime.v2.task import shim_pb2 as api  # noqa: E402
from ctrd.typeurl import pack  # noqa: E402
from shimutil import SHIM_PATH, direct, make_bundle, make_rootfs  # noqa: E402,F401 (fixture)


def _crun_usable(tmp_root) -> str:
    """Why crun cannot run a container here ("" if it can)."""
    import shutil

    if shutil.which("crun") is None:
        return "crun is not installed"
    b = make_bundle(tmp_root / "crun-probe", ["true"])
    os.rmdir(b / "rootfs")
    make_rootfs(b / "rootfs")
    r = subprocess.run(["crun", "--root", str(tmp_root / "crun-root"), "run", "probe"],
                       cwd=b, capture_output=True, text=True, timeout=30)
    subprocess.run(["crun", "--root", str(tmp_root / "crun-root"), "delete", "-f", "probe"],
                   capture_output=True)
    return "" if r.returncode == 0 else f"crun cannot run containers here: {r.stderr.strip()}"


@pytest.mark.parametrize("binary", ["", "wrapper", "crun"])
def test_direct_lifecycle_events_and_shutdown(direct, tmp_root, binary):
    if binary == "crun" and (why := _crun_usable(tmp_root)):
        pytest.skip(why)
    if binary == "wrapper":  # BinaryName is honoured: every call goes through this script
        calls = tmp_root / "calls"
        script = tmp_root / "runc-wrapper"
        script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec runc "$@"\n')
        script.chmod(0o755)
        binary = str(script)
    out = tmp_root / "out" / "task.log"
    bundle, address, shim = direct.start("life", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    req = direct.create_request("life", bundle, binary, stdout=f"file://{out}",
                                stderr=f"file://{out}")
    pid = shim("Create", req).pid
    assert pid > 0
    assert mounts_under(str(bundle)) == [str(bundle / "rootfs")]
    st = shim("State", api.StateRequest(id="life"))
    assert (st.status, st.pid, st.stdout, st.bundle) == (1, pid, f"file://{out}", str(bundle))
    import asyncio

    waiter = asyncio.run_coroutine_threadsafe(shim.client.call(
        shim.SERVICE, "Wait", api.WaitRequest(id="life"), api.WaitResponse,
        metadata={"containerd-namespace-ttrpc": direct.ns}), direct.sink.loop)
    assert shim("Start", api.StartRequest(id="life")).pid == pid
    w = waiter.result(30)
    assert w.exit_status == 3 and w.exited_at.seconds > 0
    st = shim("State", api.StateRequest(id="life"))
    assert (st.status, st.exit_status) == (3, 3)  # STOPPED
    d = shim("Delete", api.DeleteRequest(id="life"))
    assert (d.pid, d.exit_status) == (pid, 3)
    assert mounts_under(str(bundle)) == []
    assert sorted(out.read_text().split()) == ["err", "out"]
    conn = shim("Connect", api.ConnectRequest(id="life"))
    assert conn.shim_pid in shim_pids(direct.fake_daemon)
    assert wait_until(lambda: len(direct.sink.envelopes) >= 4)
    assert direct.sink.topics() == ["/tasks/create", "/tasks/start", "/tasks/exit",
                                    "/tasks/delete"]
    assert {e.namespace for e in direct.sink.envelopes} == {direct.ns}
    assert direct.sink.envelopes[2].event.type_url == "containerd.events.TaskExit"
    shim("Shutdown", api.ShutdownRequest(id="life"))
    assert wait_until(lambda: not shim_pids(direct.fake_daemon))
    assert not (bundle / "address").exists()
    assert not os.path.exists(address.removeprefix("unix://"))
    if binary.endswith("runc-wrapper"):
        text = calls.read_text()
        assert "create --bundle" in text and f"--root {direct.runc_root}/{direct.ns}" in text


def test_direct_hostile_requests_leave_nothing_half_done(direct, tmp_root):
    bundle, address, shim = direct.start("hostile", ["sleep", "600"])
    runc_state = os.path.join(direct.runc_root, direct.ns)

    def refused(exc, method, req, text):
        with pytest.raises(exc) as e:
            shim(method, req)
        assert text in str(e.value)
        assert mounts_under(str(bundle)) == []
        assert not os.path.exists(os.path.join(runc_state, "hostile"))

    refused(errdefs.NotImplemented_, "Create",
            direct.create_request("hostile", bundle, stdout="binary:///bin/logger"), "binary://")
    refused(errdefs.InvalidArgument, "Create",
            direct.create_request("hostile", bundle, stdout=str(tmp_root / "no-such-fifo")),
            "no-such-fifo")
    refused(errdefs.InvalidArgument, "Create",
            direct.create_request("hostile", bundle, stdout="ftp://x/y"), "unknown STDIO scheme")
    bad_opts = direct.create_request("hostile", bundle)
    bad_opts.options.type_url = "example.com/Other"
    refused(errdefs.InvalidArgument, "Create", bad_opts, "example.com/Other")
    bad_mount = direct.create_request("hostile", bundle)
    bad_mount.rootfs.add(type="overlay", source="overlay",
                         options=[f"lowerdir={tmp_root}/nope", "upperdir=/nope", "workdir=/x"])
    refused(errdefs.CtrdError, "Create", bad_mount, "mount")
    refused(errdefs.CtrdError, "Create",
            direct.create_request("hostile", bundle, binary="/no/such/runtime"),
            "/no/such/runtime")
    refused(errdefs.NotFound, "State", api.StateRequest(id="hostile"), "not created")
    # Now a good one, and hostile calls against it.
    pid = shim("Create", direct.create_request("hostile", bundle)).pid
    shim("Start", api.StartRequest(id="hostile"))
    with pytest.raises(errdefs.AlreadyExists):
        shim("Create", direct.create_request("hostile", bundle))
    spec = pack(oci_pb2.Options())  # any bytes: not a process spec
    spec.type_url, spec.value = "types.containerd.io/opencontainers/runtime-spec/1/Process", b"{"
    for exec_id, value, exc in (("../evil", b'{"args": ["true"], "cwd": "/"}',
                                 errdefs.InvalidArgument),
                                ("config", b"{", errdefs.InvalidArgument)):
        spec.value = value
        with pytest.raises(exc):
            shim("Exec", api.ExecProcessRequest(id="hostile", exec_id=exec_id, spec=spec))
    assert (bundle / "config.json").read_text().startswith("{")
    with pytest.raises(errdefs.NotFound):
        shim("Kill", api.KillRequest(id="hostile", exec_id="nope", signal=9))
    with pytest.raises(errdefs.FailedPrecondition):
        shim("Delete", api.DeleteRequest(id="hostile"))
    with pytest.raises(errdefs.FailedPrecondition):
        shim("Resume", api.ResumeRequest(id="hostile"))
    with pytest.raises(errdefs.NotImplemented_):
        shim("Checkpoint", api.CheckpointTaskRequest(id="hostile"))
    # Shutdown with a task left is ignored: the shim keeps serving.
    shim("Shutdown", api.ShutdownRequest(id="hostile"))
    assert shim("Connect", api.ConnectRequest(id="hostile")).task_pid == pid
    ps = shim("Pids", api.PidsRequest(id="hostile"))
    assert [p.pid for p in ps.processes] == [pid]
    shim("Kill", api.KillRequest(id="hostile", signal=9))
    assert shim("Wait", api.WaitRequest(id="hostile")).exit_status == 137
    with pytest.raises(errdefs.NotFound):
        shim("Kill", api.KillRequest(id="hostile", signal=9))
    shim("Delete", api.DeleteRequest(id="hostile"))
    shim("Shutdown", api.ShutdownRequest(id="hostile"))


def test_start_reuses_a_live_shim_and_delete_cleans_up_after_a_dead_one(direct):
    bundle, address, shim = direct.start("dead", ["sleep", "600"])
    # A second `start` for the same id finds the live shim and answers its address.
    env = dict(os.environ, TTRPC_ADDRESS=direct.sink.path)
    argv = [SHIM_PATH, "-namespace", direct.ns, "-address", direct.fake_daemon,
            "-publish-binary", "/nonexistent", "-id", "dead"]
    r = subprocess.run(argv + ["start"], cwd=bundle, capture_output=True, env=env, timeout=30)
    assert r.returncode == 0 and r.stdout.decode() == address
    assert len(shim_pids(direct.fake_daemon)) == 1
    pid = shim("Create", direct.create_request("dead", bundle)).pid
    shim("Start", api.StartRequest(id="dead"))
    os.kill(shim("Connect", api.ConnectRequest(id="dead")).shim_pid, signal.SIGKILL)
    assert wait_until(lambda: not shim_pids(direct.fake_daemon))
    r = subprocess.run(argv + ["-bundle", str(bundle), "delete"], capture_output=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    resp = api.DeleteResponse()
    resp.ParseFromString(r.stdout)
    assert (resp.pid, resp.exit_status) == (pid, 137) and resp.exited_at.seconds > 0
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}") or
                      open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z")
    assert mounts_under(str(bundle)) == []
    assert not os.path.exists(address.removeprefix("unix://"))


def test_events_to_an_absent_daemon_never_block_task_operations(direct, tmp_root):
    bundle, address, shim = direct.start("noevents", ["sh", "-c", "exit 9"],
                                         events=str(tmp_root / "nobody-listens.sock"))
    shim("Create", direct.create_request("noevents", bundle))
    shim("Start", api.StartRequest(id="noevents"))
    assert shim("Wait", api.WaitRequest(id="noevents")).exit_status == 9
    assert shim("Delete", api.DeleteRequest(id="noevents")).exit_status == 9
    shim("Shutdown", api.ShutdownRequest(id="noevents"))
    assert wait_until(lambda: not shim_pids(direct.fake_daemon))
    assert direct.sink.envelopes == []
