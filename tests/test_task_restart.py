"""Containers survive ctrd: kill -9 the daemon, restart it, and the tasks are still there,
and a killed shim's task is reported stopped with everything released.
"""

from __future__ import annotations

import os
import signal

import pytest

from conftest import ctr
from support.poll import wait_until
from taskutil import SHIM_KINDS, mounts_under, task_daemon

pytestmark = pytest.mark.integration


@pytest.fixture(params=SHIM_KINDS)
def daemon(request, start_ctrd, tmp_root, registry):
    yield from task_daemon(request.param, start_ctrd, tmp_root, registry)


def tasks(d) -> dict[str, tuple[int, str]]:
    r = ctr(d.address, "tasks", "ls")
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines()[1:]:
        tid, pid, status = line.split()
        out[tid] = (int(pid), status)
    return out


def test_kill9_daemon_tasks_survive(daemon, start_ctrd):
    d = daemon
    for c in ("c1", "c2", "c3"):
        r = ctr(d.address, "run", "-d", d.image, c, "sleep", "1000")
        assert r.returncode == 0, r.stderr
    assert wait_until(lambda: all(s == "RUNNING" for _, s in tasks(d).values())
                      and len(tasks(d)) == 3, timeout=15)
    pids = {k: p for k, (p, _) in tasks(d).items()}

    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    os.kill(pids["c3"], signal.SIGKILL)  # exits while no daemon is there

    d2 = start_ctrd(config_text=d.config_text, name="ctrd")
    d.holder[0] = d2
    t = wait_until(lambda: tasks(d2).get("c3", (0, ""))[1] == "STOPPED" and tasks(d2), timeout=15)
    assert t["c1"][1] == "RUNNING" and t["c2"][1] == "RUNNING", t
    assert t["c3"][1] == "STOPPED", t

    r = ctr(d2.address, "tasks", "exec", "--exec-id", "x", "c1", "echo", "still-here")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "still-here\n"
    assert ctr(d2.address, "tasks", "kill", "-s", "KILL", "c2").returncode == 0
    assert wait_until(lambda: tasks(d2)["c2"][1] == "STOPPED", timeout=15)
    r = ctr(d2.address, "tasks", "rm", "c3")
    assert r.returncode == 0, r.stderr
    assert "137" in r.stderr, r.stderr  # ctr warns with the non-zero exit status


def _shim_pid(d, tid: str) -> int:
    """The shim serving ``tid``: the parent of the container's init (shims are subreapers
    and parents of the runtime's init)."""
    pid = tasks(d)[tid][0]
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_kill9_shim_reports_stopped_and_releases(daemon, tmp_root):
    d = daemon
    r = ctr(d.address, "run", "-d", d.image, "victim", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: tasks(d).get("victim", (0, ""))[1] == "RUNNING", timeout=15)
    init = tasks(d)["victim"][0]
    shim = _shim_pid(d, "victim")
    assert shim != d.proc.pid
    os.kill(shim, signal.SIGKILL)
    assert wait_until(lambda: tasks(d).get("victim", (0, ""))[1] == "STOPPED",
                      timeout=15), tasks(d)
    assert wait_until(lambda: not os.path.exists(f"/proc/{init}"),
                      timeout=15), "container outlived its shim"
    bundle = d.state / "io.containerd.runtime.v2.task" / "default" / "victim"
    assert not bundle.exists()
    assert not [m for m in mounts_under(tmp_root) if "victim" in m]
    r = ctr(d.address, "tasks", "rm", "victim")
    assert r.returncode == 0, r.stderr
    assert ctr(d.address, "tasks", "ls", "-q").stdout == ""


def test_hung_shim_does_not_block_others(daemon):
    """A shim that stops answering (SIGSTOP) costs its own calls a deadline; the API keeps
    serving the other containers, and the hung one is listed UNKNOWN meanwhile."""
    d = daemon
    for c in ("ok1", "hung"):
        r = ctr(d.address, "run", "-d", d.image, c, "sleep", "1000")
        assert r.returncode == 0, r.stderr
    assert wait_until(lambda: len(tasks(d)) == 2, timeout=15)
    shim = _shim_pid(d, "hung")
    os.kill(shim, signal.SIGSTOP)
    try:
        t = tasks(d)  # answers: the hung shim's State hit its deadline (hence UNKNOWN)
        assert t["ok1"][1] == "RUNNING" and t["hung"][1] == "UNKNOWN", t
        r = ctr(d.address, "tasks", "exec", "--exec-id", "x", "ok1", "echo", "fine")
        assert r.returncode == 0 and r.stdout == "fine\n", r.stderr
    finally:
        os.kill(shim, signal.SIGCONT)
    assert wait_until(lambda: tasks(d)["hung"][1] == "RUNNING", timeout=15)
