"""ctrctl's container commands (run, ps, exec, top, pause/unpause, kill, stop, rm, logs)
end to end against a real daemon: containerd 1.6 (the reference) and ctrd; a ctrd whose tasks
plugin failed to start fails these tests.

Every test leaves nothing behind: its containers, tasks, snapshots, FIFO dirs and log files
are checked to be gone (and removed, reaped and reported if not).
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CTR, ctr
from support import cmd
from support.cmd import CTRCTL, ok
from support.poll import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)"),
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")]

REPO = Path(__file__).resolve().parent.parent


# containerd: the reference; ctrd: the same tests.
@pytest.fixture(params=["containerd", "ctrd"])
def daemon(request, registry, tmp_root):
    d = request.getfixturevalue(request.param)
    r = ctr(d.address, "images", "pull", "--plain-http", registry.ref("busybox"), timeout=300)
    assert r.returncode == 0, r.stderr
    d.image = registry.ref("busybox")
    d.fifo_dir = tmp_root / "fifo"
    d.log_dir = tmp_root / "logs"
    d.env = dict(os.environ, CTRCTL_FIFO_DIR=str(d.fifo_dir), CTRCTL_LOG_DIR=str(d.log_dir),
                 PYTHONPATH=str(REPO))
    yield d
    leftovers = cleanup(d)
    assert not leftovers, f"left behind: {leftovers}"


def cleanup(d) -> list[str]:
    """Remove whatever a test left (tasks, containers, snapshots other than the image's,
    FIFO dirs, logs) and say what there was."""
    left = []
    tasks = ctr(d.address, "tasks", "ls", "-q").stdout.split()
    for t in tasks:
        left.append(f"task {t}")
        ctr(d.address, "tasks", "kill", "-s", "SIGKILL", "--all", t)
        for _ in range(50):
            if ctr(d.address, "tasks", "rm", "-f", t).returncode == 0:
                break
            time.sleep(0.1)
    for cid in ctr(d.address, "containers", "ls", "-q").stdout.split():
        left.append(f"container {cid}")
        ctr(d.address, "containers", "rm", cid)
    for line in ctr(d.address, "snapshots", "ls").stdout.splitlines()[1:]:
        parts = line.split()  # KEY [PARENT] KIND
        key, kind = parts[0], parts[-1]
        if kind == "Active":
            left.append(f"snapshot {key}")
            ctr(d.address, "snapshots", "rm", key)
    for sub in (d.fifo_dir, d.log_dir):
        if sub.exists():
            found = [str(p) for p in sub.rglob("*") if not p.is_dir()]
            found += [str(p) for p in sub.rglob("*") if p.is_dir() and p.parent == d.fifo_dir]
            left += found
            shutil.rmtree(sub, ignore_errors=True)
    return left


def ctl_cmd(d, *args: str) -> list[str]:
    return CTRCTL + ["--address", d.address, *args]


def ctl(d, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """:func:`support.cmd.ctl` with the daemon's FIFO and log dirs in the environment."""
    return cmd.ctl(d, *args, timeout=timeout, env=d.env, **kw)


def ps(d) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads(ok(ctl(d, "ps", "--format", "json")))}


# -- foreground runs --------------------------------------------------------------------------

def test_run_rm_echo(daemon):
    r = ctl(daemon, "run", "--rm", daemon.image, "echo1", "echo", "hi")
    assert ok(r) == "hi\n"
    assert ps(daemon) == {}
    assert not list(daemon.fifo_dir.iterdir())  # the FIFO dir is gone


def test_run_exit_code_and_stderr(daemon):
    r = ctl(daemon, "run", "--rm", daemon.image, "exit7", "sh", "-c",
            "echo out; echo err >&2; exit 7")
    assert r.returncode == 7, r.stderr
    assert r.stdout == "out\n" and r.stderr == "err\n"


def test_run_env_cwd_user(daemon):
    r = ctl(daemon, "run", "--rm", "-e", "FOO=bar", "-e", "PATH=/bin", "--cwd", "/tmp",
            "--user", "daemon", daemon.image, "env1", "sh", "-c",
            'echo "$FOO $PATH $(pwd) $(id -u):$(id -g)"')
    assert ok(r) == "bar /bin /tmp 1:1\n"


def test_run_name_and_oom_score(daemon):
    r = ctl(daemon, "run", "--rm", "--name", "named1", "--oom-score-adj", "500", daemon.image,
            "cat", "/proc/self/oom_score_adj")
    assert ok(r) == "500\n"
    # lowering needs CAP_SYS_RESOURCE: without it, ctrctl asks for its own score instead
    from ctrd.oci import oom
    r = ctl(daemon, "run", "--rm", "--oom-score-adj", "-500", daemon.image, "low1",
            "cat", "/proc/self/oom_score_adj")
    want = -500 if oom.can_lower() else max(-500, oom.current_score())
    assert int(ok(r)) == want
    r = ctl(daemon, "run", "--rm", daemon.image)
    assert r.returncode == 2 and "container ID is required" in r.stderr


def test_run_without_rm_keeps_container(daemon):
    ok(ctl(daemon, "run", daemon.image, "keep1", "true"))
    rec = ps(daemon)["keep1"]
    assert rec["status"] == "" and rec["command"] == ["true"]  # task deleted, record kept
    assert ok(ctl(daemon, "rm", "keep1")) == "keep1\n"
    assert ps(daemon) == {}


def test_run_stdin_to_eof(daemon):
    data = "".join(f"line {i}\n" for i in range(2000))
    r = ctl(daemon, "run", "--rm", "-i", daemon.image, "cat1", "cat", input=data)
    assert ok(r) == data
    r = ctl(daemon, "run", "--rm", "-i", daemon.image, "wc1", "wc", "-l", input="")
    assert ok(r).strip() == "0"


def test_run_mount_and_net_host(daemon, tmp_path):
    (tmp_path / "data.txt").write_text("from the host\n")
    r = ctl(daemon, "run", "--rm", "--net-host", "--mount",
            f"type=bind,src={tmp_path},dst=/data,options=rbind:ro", daemon.image, "mnt1",
            "sh", "-c", "cat /data/data.txt; touch /data/x 2>/dev/null || echo ro; "
            "cat /etc/hostname >/dev/null; readlink /proc/self/ns/net")
    lines = ok(r).splitlines()
    assert lines[:2] == ["from the host", "ro"]
    assert lines[2] == os.readlink("/proc/self/ns/net")


def test_run_signal_forwarded(daemon):
    p = subprocess.Popen(ctl_cmd(daemon, "run", "--rm", daemon.image, "sig1", "sh", "-c",
                                 "trap 'echo got TERM; exit 3' TERM; echo ready; "
                                 "while true; do sleep 0.1; done"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=daemon.env, stdin=subprocess.DEVNULL)
    try:
        assert p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 3, err
    assert out == "got TERM\n"


def test_run_tty_under_pty(daemon):
    """-t -i in a pseudo terminal: the container sees a terminal of our size, input typed
    reaches it, and the exit code comes back."""
    pid, fd = pty.fork()
    if pid == 0:  # child: ctrctl on the pty
        try:
            import fcntl
            import struct
            import termios
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
            os.execve(ctl_cmd(daemon)[0], ctl_cmd(daemon, "run", "--rm", "-t", "-i",
                                                   daemon.image, "tty1", "sh", "-c",
                                                   "stty size; tty; read x; echo got:$x; "
                                                   "exit 5"), daemon.env)
        finally:
            os._exit(127)
    out = b""
    try:
        def read_until(marker: bytes, timeout: float = 60) -> None:
            nonlocal out
            deadline = time.monotonic() + timeout
            while marker not in out:
                left = deadline - time.monotonic()
                assert left > 0, f"no {marker!r} in {out!r}"
                if select.select([fd], [], [], left)[0]:
                    try:
                        chunk = os.read(fd, 4096)
                    except OSError:
                        break
                    if not chunk:
                        break
                    out += chunk
        read_until(b"/dev/")
        os.write(fd, b"hello\r")
        read_until(b"got:hello")
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5, (out, daemon.read_log()[-3000:])
    assert b"33 101" in out and b"/dev/pts/" in out


# -- detached containers ----------------------------------------------------------------------

def test_detached_lifecycle(daemon):
    """-d, ps RUNNING with a pid, exec (exit code, stdin), top, pause/unpause, kill, rm."""
    ok(ctl(daemon, "run", "-d", daemon.image, "bg1", "sh", "-c",
           "echo started; while true; do sleep 0.1; done"))
    rec = ps(daemon)["bg1"]
    assert rec["status"] == "RUNNING" and rec["pid"] > 0
    assert os.path.exists(f"/proc/{rec['pid']}")
    r = ctl(daemon, "exec", "bg1", "sh", "-c", "echo in $(pwd); exit 4")
    assert r.returncode == 4 and r.stdout == "in /\n", r.stderr
    assert ok(ctl(daemon, "exec", "-i", "--exec-id", "e2", "bg1", "cat", input="abc")) == "abc"
    pids = [p["pid"] for p in json.loads(ok(ctl(daemon, "top", "--format", "json", "bg1")))]
    assert rec["pid"] in pids
    table = ok(ctl(daemon, "top", "bg1"))
    assert table.split()[:2] == ["PID", "COMMAND"]
    assert any(line.split()[:3] == [str(rec["pid"]), "sh", "-c"]
               for line in table.splitlines()), table

    ok(ctl(daemon, "pause", "bg1"))
    assert ps(daemon)["bg1"]["status"] == "PAUSED"
    ok(ctl(daemon, "unpause", "bg1"))
    assert ps(daemon)["bg1"]["status"] == "RUNNING"

    r = ctl(daemon, "rm", "bg1")
    assert r.returncode == 1 and "running task" in r.stderr and "rm -f" in r.stderr
    ok(ctl(daemon, "kill", "-s", "KILL", "bg1"))
    wait_until(lambda: ps(daemon)["bg1"]["status"] == "STOPPED", 20.0, what="STOPPED")
    assert "started\n" in ok(ctl(daemon, "logs", "bg1"))
    assert ok(ctl(daemon, "rm", "bg1")) == "bg1\n"
    assert ps(daemon) == {}
    assert not (daemon.log_dir / "default" / "bg1.log").exists()


def test_logs_follow(daemon):
    ok(ctl(daemon, "run", "-d", daemon.image, "log1", "sh", "-c",
           "for i in 1 2 3; do echo line $i; echo err $i >&2; sleep 0.2; done"))
    r = ctl(daemon, "logs", "-f", "log1")  # returns when the task has exited
    lines = ok(r).splitlines()
    assert [x for x in lines if x.startswith("line")] == ["line 1", "line 2", "line 3"]
    assert [x for x in lines if x.startswith("err")] == ["err 1", "err 2", "err 3"]
    assert ps(daemon)["log1"]["status"] == "STOPPED"
    ok(ctl(daemon, "rm", "log1"))


def test_stop_with_timeout(daemon):
    # ignores SIGTERM: stop must fall back to SIGKILL after the timeout
    ok(ctl(daemon, "run", "-d", daemon.image, "stub1", "sh", "-c",
           "trap '' TERM; echo ready; while true; do sleep 0.1; done"))
    wait_until(lambda: "ready" in ok(ctl(daemon, "logs", "stub1")), 20.0, what="trap installed")
    assert ok(ctl(daemon, "stop", "-t", "1s", "stub1")) == "stub1\n"
    assert ps(daemon)["stub1"]["status"] == ""  # task deleted
    # honours SIGTERM: stopped by it
    ok(ctl(daemon, "run", "-d", daemon.image, "nice1", "sh", "-c",
           "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done"))
    wait_until(lambda: "ready" in ok(ctl(daemon, "logs", "nice1")), 20.0, what="trap installed")
    ok(ctl(daemon, "stop", "-t", "60", "nice1"))
    assert "bye" in ok(ctl(daemon, "logs", "nice1"))
    ok(ctl(daemon, "rm", "stub1", "nice1"))


def test_rm_force_and_kill_all(daemon):
    ok(ctl(daemon, "run", "-d", daemon.image, "f1", "sh", "-c", "sleep 1000 & sleep 1000"))
    ok(ctl(daemon, "exec", "-d", "--exec-id", "bgexec", "f1", "sleep", "1000"))
    ok(ctl(daemon, "pause", "f1"))
    assert ok(ctl(daemon, "rm", "-f", "f1")) == "f1\n"  # paused too
    assert ps(daemon) == {}


# -- errors -----------------------------------------------------------------------------------

def test_errors_leave_nothing(daemon):
    r = ctl(daemon, "run", "--rm", "no/such:image", "e1", "true")
    assert r.returncode == 1 and "not found" in r.stderr
    r = ctl(daemon, "run", "--rm", "--user", "nosuchuser", daemon.image, "e2", "true")
    assert r.returncode == 1 and "nosuchuser" in r.stderr
    r = ctl(daemon, "run", "--rm", "--mount", "type=bind,src=rel,dst=/x", daemon.image, "e3",
            "true")
    assert r.returncode == 1 and "absolute" in r.stderr
    r = ctl(daemon, "run", "--rm", daemon.image, "e4", "/no/such/binary")
    assert r.returncode != 0 and "no/such/binary" in r.stderr
    r = ctl(daemon, "run", "-d", "--rm", daemon.image, "e5", "true")
    assert r.returncode == 2
    ok(ctl(daemon, "run", daemon.image, "dup", "true"))
    r = ctl(daemon, "run", "--rm", daemon.image, "dup", "true")
    assert r.returncode == 1 and "already exists" in r.stderr
    ok(ctl(daemon, "rm", "dup"))
    for args in (("exec", "nope", "true"), ("kill", "nope"), ("stop", "nope"),
                 ("rm", "nope"), ("logs", "nope"), ("top", "nope")):
        r = ctl(daemon, *args)
        assert r.returncode == 1 and "not found" in r.stderr, (args, r.stderr)
    r = ctl(daemon, "kill", "-s", "SIGNOPE", "x")
    assert r.returncode == 1 and "unknown signal" in r.stderr
