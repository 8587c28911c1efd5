"""The real ``ctr`` 2.3.4 ``sandboxes`` commands (run, ls, info, rm) against a real ctrd, and
side by side with a real containerd 2.3.4.

containerd 2.3.4's ``containerd-shim-runc-v2`` does not serve the sandbox service, so ``ctr
sandboxes run`` with the default ``shim`` sandboxer fails against containerd with it -- the
same way against ctrd (whose task runtime is set to that shim here), except that ctrd leaves
no shim behind (containerd 2.3.4 leaves its shim running; the test kills it). A sandbox
that does run goes through tests/sandbox_shim.py, a minimal shim serving the service.
Skipped only where the containerd 2.3.4 binaries are absent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

import containerd2
from sandboxutil import RUNC_SHIM2, Events, Stubs, ctr2, have_ctr2, shim_wrapper
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri_compare import containerd234, ctrd_cri, pause_image  # noqa: F401 - fixtures
from support.poll import wait_until
from taskutil import mounts_under, processes_under

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_ctr2() or not containerd2.available(),
                                 reason="containerd 2.3.4 binaries absent "
                                        "(../shared/bin/containerd-2.3.4)")]

SPEC = {"ociVersion": "1.1.0", "process": {"args": ["/pause"], "cwd": "/"},
        "root": {"path": "rootfs"}}
RUNC2_CONFIG = f"""version = 2
[plugins."io.containerd.runtime.v2.task".shims."io.containerd.runc.v2"]
  binary = "{RUNC_SHIM2}"
"""


def _normalize(text: str) -> str:
    text = re.sub(r"\d{4}-\d\d-\d\d[ T][0-9:.]+(Z| \+0000 UTC)", "<time>", text)
    return re.sub(r" +", " ", text)


def _shim_dir(d) -> Path:
    return d.state / "io.containerd.sandbox.controller.v1.shim"


def _no_bundles(d) -> list[str]:
    base = _shim_dir(d)
    return [str(p) for p in base.glob("*/*")] if base.exists() else []


@pytest.fixture
def c2(tmp_root):
    d = containerd2.Containerd2.start(tmp_root / "c2", cni_bin_dirs=["/usr/lib/cni"],
                                      cni_conf_dir=str(tmp_root / "c2" / "net.d"))
    try:
        yield d
    finally:
        d.stop()
        for pid in processes_under(tmp_root / "c2"):  # the shims containerd 2.3.4 leaves
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sandboxes_commands_as_against_containerd2(start_ctrd, c2, tmp_root):
    d = start_ctrd(config_text=RUNC2_CONFIG)
    spec = tmp_root / "spec.json"
    spec.write_text(json.dumps(SPEC))
    steps = [["sandboxes", "ls"],
             ["sandboxes", "run", str(spec), "sb1"],
             ["sandboxes", "ls"],
             ["sandboxes", "info", "sb1"],
             ["sandboxes", "rm", "sb1"],
             ["sandboxes", "ls"],
             ["sandboxes", "run", str(spec), "../x"],
             ["sandboxes", "run", str(spec), "a" * 77],
             ["sandboxes", "info", "nope"],
             ["sandboxes", "rm", "nope"],
             ["sandboxes", "ls", "--filters", "labels.a==b"],
             ["sandboxes", "ls", "--filters", "id==sb1"],
             ["sandboxes", "ls", "--filters", "!!"]]
    diffs = []
    for args in steps:
        ours, theirs = ctr2(d.address, *args), ctr2(c2.address, *args)
        o_out, t_out = _normalize(ours.stdout), _normalize(theirs.stdout)
        o_err, t_err = _normalize(ours.stderr), _normalize(theirs.stderr)
        if args[1] == "run" and args[-1] == "sb1":
            # containerd's errgrpc drops the kind it appends; ctrd's errors keep it
            o_err = o_err.replace("Sandbox: not implemented", "Sandbox")
        if (ours.returncode, o_out, o_err) != (theirs.returncode, t_out, t_err):
            diffs.append(f"{' '.join(args)}:\n  ctrd  {ours.returncode} {o_out!r} {o_err!r}\n"
                         f"  ctrd2 {theirs.returncode} {t_out!r} {t_err!r}")
    assert not diffs, "\n".join(diffs)
    # the failed run left nothing of ctrd's: no shim, no bundle, no mount
    assert [p for p in processes_under(tmp_root / "ctrd") if p != d.proc.pid] == []
    assert _no_bundles(d) == [] and mounts_under(tmp_root / "ctrd") == []
    assert ctr2(d.address, "version").returncode == 0


def test_sandbox_run_and_rm_through_a_sandbox_shim(start_ctrd, tmp_root):
    d = start_ctrd()
    spec = tmp_root / "spec.json"
    spec.write_text(json.dumps(SPEC))
    shim = shim_wrapper(tmp_root)
    events = Events(d.address)
    time.sleep(0.3)  # subscribed before the first event
    r = ctr2(d.address, "sandboxes", "run", "--runtime", shim, str(spec), "sb1")
    assert r.returncode == 0 and r.stdout.strip() == "sb1", r.stderr
    r = ctr2(d.address, "sandboxes", "ls")
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[0] == "sb1"
    assert r.stdout.splitlines()[1].split()[-1] == shim
    info = json.loads(ctr2(d.address, "sandboxes", "info", "sb1").stdout)
    assert info["Sandboxer"] == "shim" and info["Runtime"]["Name"] == shim
    s = Stubs(d.address)
    try:
        st = s.call(s.ctl, "Status", sandbox_id="sb1", sandboxer="shim")
        assert st.state == "running" and st.pid > 0 and st.info["shim"] == "sandbox_shim"
        with open(f"/proc/{st.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == b"sleep"
        bundle = _shim_dir(d) / "default" / "sb1"
        assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["/pause"]
    finally:
        s.close()
    r = ctr2(d.address, "sandboxes", "rm", "sb1")
    assert r.returncode == 0 and "deleted: sb1" in r.stderr, r.stderr
    assert ctr2(d.address, "sandboxes", "ls").stdout.splitlines()[1:] == []
    assert not os.path.exists(f"/proc/{st.pid}/cmdline") or \
        open(f"/proc/{st.pid}/cmdline", "rb").read() == b""
    assert events.topics()[:2] == ["/sandboxes/create", "/sandboxes/start"]
    assert [p for p in processes_under(tmp_root / "ctrd") if p != d.proc.pid] == []
    assert _no_bundles(d) == []


def _pod_record(address: str, sid: str) -> dict:
    import base64

    r = ctr2(address, "sandboxes", "info", sid, namespace="k8s.io")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    ext = info["Extensions"]["metadata"]
    meta = json.loads(base64.b64decode(ext["value"]))
    return {"keys": sorted(info), "labels": sorted(info["Labels"] or {}),
            "label name": (info["Labels"] or {}).get("name"), "runtime": info["Runtime"]["Name"],
            "options type": (info["Runtime"].get("Options") or {}).get("type_url"),
            "sandboxer": info["Sandboxer"],
            # the pause container's spec: its paths and ids differ, its shape must not
            "spec": (info["Spec"]["type_url"],
                     sorted(json.loads(base64.b64decode(info["Spec"]["value"])))),
            "extensions": sorted(info["Extensions"]), "ext type": ext["type_url"],
            "meta keys": sorted(meta), "meta version": meta["Version"],
            "metadata keys": sorted(meta["Metadata"]),
            "metadata id": meta["Metadata"]["ID"] == sid,
            "config metadata": meta["Metadata"]["Config"]["metadata"],
            "has ip": bool(meta["Metadata"]["IP"])}


@pytest.mark.parametrize("ctrd_cri", ["pause"], indirect=True)
def test_cri_pod_records_as_containerd2_writes_them(ctrd_cri, containerd234):  # noqa: F811
    from support.cri_compare import _pod_config

    got = {}
    for name, c in (("ctrd", ctrd_cri), ("containerd", containerd234)):
        pb = c.pb
        sid = c.rt.RunPodSandbox(pb.RunPodSandboxRequest(
            config=_pod_config(pb, "/tmp"))).pod_sandbox_id
        try:
            got[name] = _pod_record(c.daemon.address if name == "ctrd" else c.d.address, sid)
            rows = ctr2(c.daemon.address if name == "ctrd" else c.d.address,
                        "sandboxes", "ls", namespace="k8s.io").stdout.splitlines()[1:]
            got[name]["ls"] = [(row.split()[0] == sid, row.split()[-1]) for row in rows]
        finally:
            c.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
            c.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
    diffs = {k: (got["ctrd"].get(k), v) for k, v in got["containerd"].items()
             if got["ctrd"].get(k) != v}
    assert not diffs, json.dumps(diffs, indent=1, default=str)[:6000]


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def test_containers_of_a_sandbox_run_in_its_shim(start_ctrd, tmp_root, registry):
    """``ctr run --sandbox``: the task is created in the sandbox's shim (ctrd's, shim API 3)
    instead of a shim of its own, as containerd 2.x's shim manager does; it survives a
    daemon restart (reconnected from its bootstrap.json) and goes with the sandbox."""
    try:
        _containers_of_a_sandbox(start_ctrd, tmp_root, registry)
    finally:  # on failure too: no shim of the test outlives it
        for pid in processes_under(tmp_root / "ctrd"):
            try:
                if b"shim" in open(f"/proc/{pid}/cmdline", "rb").read():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _containers_of_a_sandbox(start_ctrd, tmp_root, registry):
    d = start_ctrd()
    spec = tmp_root / "spec.json"
    spec.write_text(json.dumps(SPEC))
    image = registry.ref("busybox")
    assert ctr2(d.address, "images", "pull", "--plain-http", image).returncode == 0
    r = ctr2(d.address, "sandboxes", "run", "--runtime", "io.containerd.runc.v2", str(spec),
             "pod")
    assert r.returncode == 0, r.stderr
    s = Stubs(d.address)
    try:
        st = s.call(s.ctl, "Status", sandbox_id="pod", sandboxer="shim")
    finally:
        s.close()
    shim_pid = st.pid
    sandbox_address = (_shim_dir(d) / "default" / "pod" / "address").read_text()
    r = ctr2(d.address, "run", "--rm", "--sandbox", "pod", image, "once", "sh", "-c",
             "echo hi; exit 3")
    assert (r.returncode, r.stdout) == (3, "hi\n"), r.stderr
    assert ctr2(d.address, "run", "-d", "--sandbox", "pod", image, "long", "sleep",
                "1000").returncode == 0
    task_pid = int(ctr2(d.address, "tasks", "ls").stdout.split("\n")[1].split()[1])
    assert _ppid(task_pid) == shim_pid
    bundle = d.state / "io.containerd.runtime.v2.task" / "default" / "long"
    boot = json.loads((bundle / "bootstrap.json").read_text())
    assert (boot["version"], boot["address"]) == (3, sandbox_address)

    d.stop()
    d = start_ctrd()
    r = ctr2(d.address, "tasks", "exec", "--exec-id", "e", "long", "sh", "-c", "exit 7")
    assert r.returncode == 7, r.stderr
    assert ctr2(d.address, "tasks", "kill", "-s", "SIGKILL", "long").returncode == 0
    wait_until(lambda: "STOPPED" in ctr2(d.address, "tasks", "ls").stdout, 10)
    assert ctr2(d.address, "tasks", "rm", "long").returncode == 0
    # the bundle goes right after the answer (the manager finishes a delete in the background)
    wait_until(lambda: not bundle.exists(), 10)
    assert not bundle.exists()
    assert os.path.exists(f"/proc/{shim_pid}")  # the sandbox's shim outlives its containers
    for c in ("long",):
        assert ctr2(d.address, "containers", "rm", c).returncode == 0
    r = ctr2(d.address, "sandboxes", "rm", "pod")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: not (os.path.exists(f"/proc/{shim_pid}/cmdline")
                            and open(f"/proc/{shim_pid}/cmdline", "rb").read()), 10)
    assert [p for p in processes_under(tmp_root / "ctrd") if p != d.proc.pid] == []
    assert _no_bundles(d) == [] and mounts_under(tmp_root / "ctrd") == []
