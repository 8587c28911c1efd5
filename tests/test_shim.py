"""ctrd's shim (containerd-shim-ctrd-v2) driven by containerd 1.6 itself and the real ctr:
run/exec/ps/pause/resume/kill/rm through runtime io.containerd.ctrd.v2, exit codes, env,
terminals, another OCI runtime binary, and the shim outliving its daemon. After every test:
no shim process, no mount under the daemon's state, no shim socket left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import CTR, ctr
from shimutil import RUNTIME, mounts_under, rss_pss_kib, shim_pids, sockets, wait_until

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
        assert sockets() - before == set()
    finally:
        _force_cleanup(e)


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
