"""ctrd's shim template (ctrd.runtime.shim.template): ``start`` asks a per-daemon, pre-imported
process to fork the shim server. Driven directly (no daemon): shims forked by one template,
their command lines, pages shared with it, a killed template that leaves its shims working and
is replaced, a template retiring when its code changes, the fallback when none can start,
hostile requests, and one shim serving a group of tasks (containerd's grouping annotations)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from ctrd.api.containerd.runtime.v2.task import shim_pb2 as api
from ctrd.runtime.shim.cli import template_socket
from shimutil import (SHIM_PATH, direct, rss_pss_kib, shim_pids,  # noqa: F401 (fixture)
                      template_pids, wait_until)

SANDBOX = "io.kubernetes.cri.sandbox-id"
FAST_IDLE = {"CTRD_SHIM_TEMPLATE_IDLE": "1"}


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def run_sleep(direct, id: str, **kw):
    bundle, address, shim = direct.start(id, ["sleep", "600"], **kw)
    pid = shim("Create", direct.create_request(id, bundle)).pid
    shim("Start", api.StartRequest(id=id))
    return shim, shim("Connect", api.ConnectRequest(id=id)).shim_pid, pid, address


def stop(shim, id: str) -> None:
    shim("Kill", api.KillRequest(id=id, signal=9))
    assert shim("Wait", api.WaitRequest(id=id)).exit_status == 137
    shim("Delete", api.DeleteRequest(id=id))
    shim("Shutdown", api.ShutdownRequest(id=id))


def my_template(direct) -> int:
    """The template of the test's fake daemon (found by its socket name)."""
    name = template_socket(direct.fake_daemon)
    for pid in template_pids():
        try:
            cmd = cmdline(pid)
        except OSError:
            continue
        if cmd and cmd[-1] == "@" + name:  # empty: it exited since template_pids() saw it
            return pid
    return 0


def templates_gone(direct) -> bool:
    return not my_template(direct)


@pytest.fixture
def spawned_by_shim(monkeypatch):
    """template_socket() hashes sys.argv[0]: compute it as the shim script does."""
    monkeypatch.setattr("sys.argv", [SHIM_PATH])


def test_shims_are_forked_by_one_template_and_share_its_pages(direct, spawned_by_shim):
    a, a_pid, _, _ = run_sleep(direct, "ta", env=FAST_IDLE)
    b, b_pid, _, _ = run_sleep(direct, "tb", env=FAST_IDLE)
    template = my_template(direct)
    assert template and ppid(a_pid) == template and ppid(b_pid) == template
    assert a_pid != b_pid
    # A shim reads as a shim (the daemon address in its command line), the template does not.
    assert cmdline(a_pid) == ["containerd-shim-ctrd-v2", "-namespace", direct.ns, "-id", "ta",
                              "-address", direct.fake_daemon]
    assert cmdline(template)[:2] == ["containerd-shim-ctrd-v2", "template"]
    assert direct.fake_daemon not in " ".join(cmdline(template))
    assert Path(f"/proc/{template}/cwd").resolve() == Path("/")
    assert sorted(shim_pids(direct.fake_daemon)) == sorted([a_pid, b_pid])
    rss, pss = rss_pss_kib(a_pid)
    assert pss < rss * 0.7, (rss, pss)  # pages shared with the template and its other shim
    stop(a, "ta")
    stop(b, "tb")
    assert wait_until(lambda: not shim_pids(direct.fake_daemon))
    # No shim, no request: the template leaves (IDLE 1 s here).
    assert wait_until(lambda: templates_gone(direct), timeout=15)


def mapped_files(pid: int) -> set[str]:
    """The files ``pid`` maps (shared libraries, extension modules, the interpreter)."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split(maxsplit=5)
        if len(f) == 6 and f[5].startswith("/"):
            out.add(f[5])
    return out


def test_a_forked_shim_imports_nothing_the_template_did_not(direct, spawned_by_shim):
    """What a shim runs is imported by the template before it forks, whatever the start
    request carries: BootstrapParams as ctrd and containerd 2.3 send them (here the first
    task, its ``start`` spawning the template) or bare options (the next one). A module
    imported after the fork (asyncio and ssl through a daemon-side helper once were) costs
    every shim megabytes of private memory; an extension module it loads shows in its
    mappings, so neither may map a file the template does not."""
    from ctrd.api.containerd.runc.options import oci_pb2
    from ctrd.runtime import bootstrap
    from ctrd.typeurl import pack

    options = pack(oci_pb2.Options(root=direct.runc_root)).SerializeToString()
    params = bootstrap.params("imp-first", direct.ns, direct.fake_daemon, direct.sink.path,
                              "/nonexistent", True, options)
    first, first_pid, _, _ = run_sleep(direct, "imp-first", stdin_opts=params, env=FAST_IDLE)
    later, later_pid, _, _ = run_sleep(direct, "imp-later", env=FAST_IDLE)
    try:
        template = my_template(direct)
        assert template and ppid(first_pid) == template and ppid(later_pid) == template
        base = mapped_files(template)
        assert not {f for f in base if "/_asyncio." in f or "/_ssl." in f}
        for pid in (first_pid, later_pid):
            assert mapped_files(pid) - base == set(), pid
    finally:
        stop(first, "imp-first")
        stop(later, "imp-later")


def mergeable_kib(pid: int) -> int:
    """KiB of ``pid``'s mappings marked for kernel same-page merging (VmFlags ``mg``)."""
    total = size = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("VmFlags:") and "mg" in line.split()[1:]:
            total += size
    return total


def test_shims_mark_what_they_copied_and_nothing_else_is_marked(direct, spawned_by_shim):
    """A shim marks the pages it holds alone (the ones starting its task copied from the
    template, and its own) mergeable once the task started (madvise); the template marks
    nothing (its shared pages are not worth ksmd's scanning), nor do the programs a shim runs
    (runc, the container): pages are never merged with a container's."""
    if not Path("/sys/kernel/mm/ksm").is_dir():
        pytest.skip("this kernel has no same-page merging (CONFIG_KSM): nothing is marked")
    from ctrd.runtime.shim.serving import MARK_COPIED_AFTER

    a, a_pid, init, _ = run_sleep(direct, "ma", env=FAST_IDLE)
    template = my_template(direct)
    assert wait_until(lambda: mergeable_kib(a_pid) > 256, timeout=MARK_COPIED_AFTER[0] + 10)
    rss, _ = rss_pss_kib(a_pid)
    assert mergeable_kib(a_pid) < rss / 2  # what it copied, not what it shares
    assert mergeable_kib(template) == 0
    assert mergeable_kib(init) == 0
    status = Path(f"/proc/{init}/ksm_stat")
    if status.exists():  # Linux >= 6.4: no process-wide merging either
        assert "ksm_merge_any: no" in status.read_text()
    stop(a, "ma")


def test_a_killed_template_leaves_its_shims_working_and_is_replaced(direct, spawned_by_shim):
    a, a_pid, init, _ = run_sleep(direct, "ka", env=FAST_IDLE)
    template = my_template(direct)
    os.kill(template, signal.SIGKILL)
    assert wait_until(lambda: ppid(a_pid) != template)  # reparented, still serving
    assert a("State", api.StateRequest(id="ka")).status == 2  # RUNNING
    b, b_pid, _, _ = run_sleep(direct, "kb", env=FAST_IDLE)
    new = my_template(direct)
    assert new and new != template and ppid(b_pid) == new
    stop(a, "ka")
    stop(b, "kb")
    assert wait_until(lambda: templates_gone(direct), timeout=15)


def test_a_template_retires_when_its_code_changed(direct, spawned_by_shim):
    a, _, _, _ = run_sleep(direct, "ra", env=FAST_IDLE)
    old = my_template(direct)
    import ctrd.runtime.shim.log as mod

    st = os.stat(mod.__file__)
    os.utime(mod.__file__, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    try:
        b, b_pid, _, _ = run_sleep(direct, "rb", env=FAST_IDLE)
    finally:
        os.utime(mod.__file__, ns=(st.st_atime_ns, st.st_mtime_ns))
    new = my_template(direct)
    assert new != old and ppid(b_pid) == new
    # The old one still reaps its shim, then goes.
    stop(a, "ra")
    assert wait_until(lambda: not os.path.exists(f"/proc/{old}"), timeout=15)
    stop(b, "rb")
    assert wait_until(lambda: templates_gone(direct), timeout=15)


def test_without_a_template_start_forks_the_shim_itself(direct, spawned_by_shim):
    # A template that cannot start (a broken setting makes it fail at import).
    a, a_pid, _, _ = run_sleep(direct, "fa", env={"CTRD_SHIM_TEMPLATE_IDLE": "bogus"})
    assert cmdline(a_pid)[-1] == "start"  # forked by `start` itself
    assert not my_template(direct)
    stop(a, "fa")


def test_hostile_requests_to_the_template(direct, spawned_by_shim, tmp_root):
    a, _, _, _ = run_sleep(direct, "ha", env=FAST_IDLE)
    name = template_socket(direct.fake_daemon)
    for payload in (b"", b"garbage", b"ctrd-shim-start/1\0only\0three",
                    b"ctrd-shim-start/1\0id\0ns\0addr\0/no/such/bundle\x000\x000\0\0"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect("\0" + name)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(4096)
        s.close()
        assert reply.startswith(b"err\0"), reply
    assert b"/no/such/bundle" in reply
    # Still serving: a new task gets a shim.
    b, _, _, _ = run_sleep(direct, "hb", env=FAST_IDLE)
    stop(a, "ha")
    stop(b, "hb")


def test_a_group_shares_one_shim(direct, spawned_by_shim):
    pod = {SANDBOX: "pod-1"}
    a, a_pid, _, a_addr = run_sleep(direct, "ga", env=FAST_IDLE, annotations=pod)
    b, b_pid, _, b_addr = run_sleep(direct, "gb", env=FAST_IDLE, annotations=pod)
    c, c_pid, _, c_addr = run_sleep(direct, "gc", env=FAST_IDLE,
                                    annotations={SANDBOX: "pod-2"})
    assert a_pid == b_pid and a_addr == b_addr
    assert c_pid != a_pid and c_addr != a_addr
    assert len(shim_pids(direct.fake_daemon)) == 2
    # Deleting one task of the group (with its Shutdown) leaves the shim serving the other.
    stop(a, "ga")
    time.sleep(0.3)
    assert os.path.exists(f"/proc/{a_pid}")
    assert b("State", api.StateRequest(id="gb")).status == 2
    stop(b, "gb")
    assert wait_until(lambda: not os.path.exists(f"/proc/{b_pid}") or
                      Path(f"/proc/{b_pid}/stat").read_text().split(")")[1].split()[0] == "Z")
    stop(c, "gc")
