"""Shims across daemon generations: containerd 2.3.4 running ctrd's shim
(``containerd-shim-ctrd-v2``) as its ``io.containerd.runc.v2`` — the bootstrap protocol
(BootstrapParams on ``start``'s stdin, a BootstrapResult of version 3 back, task API v3),
runc options through the params' extension, a containerd restart that reconnects from
``bootstrap.json`` — and what ctrd's shim makes of either generation's ``start`` input.
(ctrd running containerd 2.3.4's shim: the ``go-shim-2.3.4`` kind of tests/taskutil.py and
``go-2.3.4`` of tests/test_runtime_manager.py.)"""

from __future__ import annotations

import json
import os
import signal

import pytest

import containerd2
from conftest import ctr
from support.cmd import ok
from support.poll import wait_until
from taskutil import mounts_under, processes_under

NS = "s2x"


@pytest.fixture
def c2_ctrd_shim(tmp_root):
    """containerd 2.3.4 whose ``containerd-shim-runc-v2`` (found first on PATH) is ctrd's
    shim; on teardown: every task gone through the API, nothing of ours left running."""
    if not containerd2.available():
        pytest.skip(f"containerd 2.3.4 is not at {containerd2.BIN_DIR}")
    shim = ctr_shim_binary()
    first = tmp_root / "path-first"
    first.mkdir()
    (first / "containerd-shim-runc-v2").symlink_to(shim)
    base = tmp_root / "c2"
    d = containerd2.Containerd2.start(base, cni_bin_dirs=["/usr/lib/cni"],
                                      cni_conf_dir=str(base / "net.d"),
                                      path_first=(str(first),))
    holder = [d]
    try:
        yield holder
    finally:
        d = holder[0]
        for t in d.ctr("tasks", "ls", "-q", namespace=NS).stdout.split():
            d.ctr("tasks", "kill", "-s", "SIGKILL", t, namespace=NS)
            wait_until(lambda: "STOPPED" in d.ctr("tasks", "ls", namespace=NS).stdout)
            d.ctr("tasks", "rm", "-f", t, namespace=NS)
        d.stop()
        left = processes_under(base)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not left, f"processes left: {left}"
        assert mounts_under(base) == []


def ctr_shim_binary() -> str:
    from ctrd.runtime.shimclient import resolve_binary

    return resolve_binary("containerd-shim-ctrd-v2")


@pytest.mark.integration
def test_containerd2_runs_ctrd_shim_through_the_bootstrap_protocol(c2_ctrd_shim, registry,
                                                                    tmp_root):
    d = c2_ctrd_shim[0]
    image = registry.ref("busybox")
    ok(d.ctr("images", "pull", "--plain-http", image, namespace=NS))
    r = d.ctr("run", "--rm", image, "once", "sh", "-c", "echo hi; exit 3", namespace=NS)
    assert (r.returncode, r.stdout) == (3, "hi\n"), r.stderr

    # runc options reach the shim inside BootstrapParams (runc's state under --runc-root)
    runc_root = tmp_root / "runc-root"
    ok(d.ctr("run", "-d", "--runc-root", str(runc_root), image, "long", "sleep", "1000",
              namespace=NS))
    bundle = d.base / "state" / "io.containerd.runtime.v2.task" / NS / "long"
    boot = json.loads((bundle / "bootstrap.json").read_text())
    assert boot["version"] == 3 and boot["protocol"] == "ttrpc"
    assert boot["address"].startswith("unix:///run/ctrd/s/")  # ctrd's shim's socket
    assert (runc_root / NS / "long" / "state.json").exists()
    pid = int(ok(d.ctr("tasks", "ls", namespace=NS)).split("\n")[1].split()[1])
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rpartition(")")[2].split()[1])
    with open(f"/proc/{ppid}/cmdline", "rb") as f:
        assert b"containerd-shim-ctrd-v2" in f.read()  # ctrd's shim is the parent

    r = d.ctr("tasks", "exec", "--exec-id", "e1", "long", "sh", "-c", "echo in; exit 4",
              namespace=NS)
    assert (r.returncode, r.stdout) == (4, "in\n"), r.stderr

    # containerd restarts: it reconnects from bootstrap.json, through task API v3
    d.stop()
    c2_ctrd_shim[0] = d = containerd2.Containerd2.start(
        d.base, cni_bin_dirs=["/usr/lib/cni"], cni_conf_dir=str(d.base / "net.d"),
        path_first=(str(tmp_root / "path-first"),))
    assert f"long    {pid}    RUNNING" in ok(d.ctr("tasks", "ls", namespace=NS))
    r = d.ctr("tasks", "exec", "--exec-id", "e2", "long", "echo", "after", namespace=NS)
    assert (r.returncode, r.stdout) == (0, "after\n"), r.stderr
    ok(d.ctr("tasks", "kill", "-s", "SIGKILL", "long", namespace=NS))
    assert wait_until(lambda: "STOPPED" in d.ctr("tasks", "ls", namespace=NS).stdout)
    ok(d.ctr("tasks", "rm", "long", namespace=NS))
    ok(d.ctr("containers", "rm", "long", namespace=NS))
    assert not bundle.exists()
    assert not (runc_root / NS / "long").exists()
    # the shim went with its last task
    assert wait_until(lambda: not os.path.exists(f"/proc/{ppid}"), timeout=15)


def _options(**kw) -> bytes:
    from google.protobuf import any_pb2

    from ctrd.api.containerd.runc.options import oci_pb2

    a = any_pb2.Any(type_url="containerd.runc.v1.Options",
                    value=oci_pb2.Options(**kw).SerializeToString())
    return a.SerializeToString()


def test_ctrd_shim_reads_either_generations_start_input():
    from ctrd.api.containerd.runtime.bootstrap.v1 import bootstrap_pb2
    from ctrd.runtime import bootstrap
    from ctrd.runtime.shim import handshake

    bare = _options(binary_name="crun", root="/r")
    params = bootstrap.params("c1", "ns", "/run/x.sock", "/run/x.sock.ttrpc", "/bin/ctrd",
                              False, bare)
    for stdin in (bare, params):
        o = handshake.read_options(stdin)
        assert (o.binary_name, o.root) == ("crun", "/r")
    # the answer follows the question: a bare address to 1.x/2.0-2.2 daemons, a
    # BootstrapResult of version 3 to 2.3's
    assert handshake.start_answer("unix:///run/ctrd/s/a", bare) == b"unix:///run/ctrd/s/a"
    assert handshake.start_answer("unix:///run/ctrd/s/a", b"") == b"unix:///run/ctrd/s/a"
    res = bootstrap_pb2.BootstrapResult()
    res.ParseFromString(handshake.start_answer("unix:///run/ctrd/s/a", params))
    assert (res.version, res.address, res.protocol) == (3, "unix:///run/ctrd/s/a", "ttrpc")
    assert bootstrap.parse_start_output(res.SerializeToString()) == ("unix:///run/ctrd/s/a", 3)
    # params without options, another options type, an Any of garbage: no options, no error
    assert handshake.read_options(bootstrap.params("c1", "ns", "a", "b", "c", True, None)) is None
    other = bootstrap.params("c1", "ns", "a", "b", "c", False,
                             _options().replace(b"containerd.runc.v1.Options",
                                                b"example.com/other.Optionsx"))
    assert handshake.read_options(other) is None
    for garbage in (b"\x0a\x02\xff\xfe", b"\x12\x05hello"):
        assert handshake.bootstrap_params(garbage) is None


def test_ctrd_sends_bootstrap_params_only_to_2x_shims(tmp_path):
    """The probe: a shim that answers ``-info`` gets BootstrapParams; Debian's 1.6 shim,
    which refuses ``-info`` (and any stdin that is not an options Any), does not."""
    import asyncio
    import shutil

    from ctrd.runtime import bootstrap

    assert asyncio.run(bootstrap.speaks_bootstrap(ctr_shim_binary()))
    if containerd2.available():
        assert asyncio.run(bootstrap.speaks_bootstrap(
            str(containerd2.BIN_DIR / "containerd-shim-runc-v2")))
    old = shutil.which("containerd-shim-runc-v2")
    if old is None:
        pytest.skip("Debian's containerd-shim-runc-v2 is not installed")
    assert not asyncio.run(bootstrap.speaks_bootstrap(old))
    # a probe that hangs is bounded (a shim that never answers -info: treated as 1.x)
    slow = tmp_path / "slow-shim"
    slow.write_text("#!/bin/sh\nexec sleep 1000\n")
    slow.chmod(0o755)
    bootstrap.PROBE_TIMEOUT, saved = 0.5, bootstrap.PROBE_TIMEOUT
    try:
        assert not asyncio.run(bootstrap.speaks_bootstrap(str(slow)))
    finally:
        bootstrap.PROBE_TIMEOUT = saved


@pytest.mark.integration
def test_ctrd_speaks_v3_to_its_own_shim_started_by_command(start_ctrd, registry):
    """A fresh daemon's first task: no template of ctrd's shim runs yet, so ctrd runs the
    shim's ``start`` command, with BootstrapParams; the shim answers version 3 and the task
    goes through task API v3 (later tasks go straight to the template, shim API 2)."""
    d = start_ctrd()
    image = registry.ref("busybox")
    assert ctr(d.address, "images", "pull", "--plain-http", image).returncode == 0
    assert ctr(d.address, "run", "-d", image, "v3", "sleep", "1000").returncode == 0
    try:
        boot = json.loads((d.state / "io.containerd.runtime.v2.task" / "default" / "v3" /
                           "bootstrap.json").read_text())
        assert boot["version"] == 3
        r = ctr(d.address, "tasks", "exec", "--exec-id", "e", "v3", "sh", "-c", "exit 6")
        assert r.returncode == 6, r.stderr
    finally:
        ctr(d.address, "tasks", "kill", "-s", "SIGKILL", "v3")
        wait_until(lambda: "STOPPED" in ctr(d.address, "tasks", "ls").stdout)
        ctr(d.address, "tasks", "rm", "v3")
        ctr(d.address, "containers", "rm", "v3")


def test_hostile_bootstrap_json_is_a_clear_error(tmp_path):
    """A bundle's bootstrap.json that is not what ctrd or containerd wrote: an error naming
    the file or the problem (the manager then treats the shim as gone), never a crash."""
    from ctrd import errdefs
    from ctrd.runtime import bootstrap

    assert bootstrap.read_result(str(tmp_path)) is None  # none: nothing to say
    f = tmp_path / "bootstrap.json"
    f.write_bytes(b"x" * (bootstrap.MAX_BOOTSTRAP_FILE + 1))
    with pytest.raises(errdefs.FailedPrecondition, match="larger than"):
        bootstrap.read_result(str(tmp_path))
    f.write_text('{"version": 7, "address": "unix:///x", "protocol": "ttrpc"}')
    with pytest.raises(errdefs.NotImplemented_, match="unsupported shim version"):
        bootstrap.read_result(str(tmp_path))
    f.write_bytes(b"\x08\xff\xff\xff\xff\xff")
    with pytest.raises(errdefs.FailedPrecondition, match="unreadable"):
        bootstrap.read_result(str(tmp_path))
    bootstrap.write_result(str(tmp_path), 3, "unix:///run/x.sock")
    assert bootstrap.read_result(str(tmp_path)) == ("unix:///run/x.sock", 3)
