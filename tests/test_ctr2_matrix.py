"""The real ``ctr`` 2.3.4 against ctrd and against containerd 2.3.4: the everyday commands,
run in order on both daemons, with the same results (exit code and, where the output does not
name the daemon itself, the same normalised output).

Each script is a list of steps ``(command, check)``: ``same`` compares exit code, stdout and
stderr after normalising times, ages, sizes of directories and paths; ``rc`` compares exit
codes only (the output names the daemon: versions, plugin lists); ``ok`` wants exit code 0
from both (progress output: its frames depend on timing; the state it leaves is compared by
the next steps). Commands are split as a shell would (shlex) before ``{image}``, ``{registry}``... are filled in.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import containerd2
from conftest import ctr, launch_ctrd
from taskutil import remove_all_tasks

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not containerd2.available(),
                                 reason=f"containerd 2.3.4 is not in {containerd2.BIN_DIR}")]

CTR2 = str(containerd2.CTR)


@pytest.fixture(scope="module")
def daemons(registry, tmp_path_factory):
    """ctrd and containerd 2.3.4 side by side, each with the test registry reachable."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="ctrd-m2-", dir="/tmp"))
    ours = theirs = None
    try:
        ours = launch_ctrd(base / "ctrd")
        theirs = containerd2.Containerd2.start(
            base / "c2", cni_bin_dirs=["/usr/lib/cni"], cni_conf_dir=str(base / "net.d"),
            plain_http=[registry.address])
        yield ours, theirs
    finally:
        for d, addr in ((ours, ours and ours.address), (theirs, theirs and theirs.address)):
            if d is not None:
                for ns in ("default", "m2"):
                    remove_all_tasks(addr, ns) if _serving(addr) else None
                d.stop()
        from taskutil import reap

        reap(base)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def _serving(address: str) -> bool:
    return subprocess.run([CTR2, "--address", address, "version"], capture_output=True,
                          timeout=30).returncode == 0


def _warnings_sorted(text: str) -> str:
    """ctr 2.x prints the server's deprecation warnings first, in Go's map order; the
    reference's ``enable_cdi`` one comes from its test config (tests/containerd2.py), not
    from anything ctr did."""
    lines = text.splitlines(keepends=True)
    warn = sorted(ln for ln in lines if "DEPRECATION" in ln and "enable_cdi" not in ln)
    return "".join(warn + [ln for ln in lines if "DEPRECATION" not in ln])


def _normalise(text: str, root: str) -> str:
    text = _warnings_sorted(text.replace(root, "<root>"))
    text = re.sub(r'time="[^"]*" ', "", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", "<time>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? [+-]\d{4} \w+", "<time>", text)
    text = re.sub(r"Less than a second|About a minute|\d+ (seconds|minutes)", "<age>", text)
    text = re.sub(r"elapsed: [\d.]+\s*\w+", "elapsed: <t>", text)
    text = re.sub(r"\b\d+(\.\d+)? ?[KMG]i?B/s\b", "<rate>", text)
    # ctr prints label maps in Go's random map order: sort "a=b,c=d" lists.
    return re.sub(r"[^\s,=]+=[^\s,]*(?:,[^\s,=]+=[^\s,]*)+",
                  lambda m: ",".join(sorted(m.group(0).split(","))), text)


def _run(address: str, root: str, line: str, values: dict, stdin: bytes | None = None):
    args = [a.format(**values) for a in shlex.split(line)]
    r = subprocess.run([CTR2, "--address", address, *args], input=stdin,
                       capture_output=True, timeout=180)
    out = _normalise(r.stdout.decode(errors="replace"), root)
    if len(out) > 4096:  # a blob or a long listing: compare its digest after normalising
        out = "sha256:" + hashlib.sha256(out.encode()).hexdigest()
    return r.returncode, out, _normalise(r.stderr.decode(errors="replace"), root)


def _compare(daemons, script, values, namespace="m2"):
    """The whole script on containerd, then on ctrd (not step by step: the containers of both
    would share their cgroups, ``/<namespace>/<id>``, and one's pause would freeze the
    other's)."""
    ours, theirs = daemons
    lines = [(f"-n {namespace} {line}", check) for line, check in script]
    t_all = [_run(theirs.address, str(theirs.base), full, values) for full, _ in lines]
    o_all = [_run(ours.address, str(ours.root.parent), full, values) for full, _ in lines]
    failures = []
    for (line, check), t, o in zip(script, t_all, o_all):
        if check == "ok":
            bad = t[0] != 0 or o[0] != 0
        elif check == "rc":
            bad = t[0] != o[0]
        else:
            bad = t != o
        if bad:
            failures.append(f"ctr {line}:\n  ctrd:       {o}\n  containerd: {t}")
    assert not failures, "\n".join(failures)


def _values(registry, **extra) -> dict:
    return {"image": registry.ref("busybox"), "registry": registry.address,
            "multi": registry.ref("busybox-multi"), **extra}


# --- the scripts -------------------------------------------------------------------------

SERVER = [
    ("version", "rc"),
    ("info", "rc"),
    ("plugins ls", "rc"),
    ("plugins ls -q", "rc"),
    ("deprecations list", "rc"),
    ("namespaces ls", "ok"),
]

NAMESPACES = [
    ("namespaces create x2 a=b", "same"),
    ("namespaces create x2 a=b", "same"),
    ("namespaces label x2 b=c", "same"),
    ("namespaces ls", "same"),
    ("namespaces rm x2", "same"),
    ("namespaces rm x2", "same"),
]

IMAGES = [
    ("images pull --plain-http {image}", "ok"),
    ("images ls", "same"),
    ("images ls -q", "same"),
    ("images check", "same"),
    ("images tag {image} {registry}/test/copy:1", "same"),
    ("images tag {image} {registry}/test/copy:1", "same"),
    ("images tag --force {image} {registry}/test/copy:1", "same"),
    ("images ls -q", "same"),
    ("images usage {image}", "same"),
    ("content ls -q", "same"),
    ("images push --plain-http {registry}/test/copy:1", "ok"),
    ("images rm {registry}/test/copy:1", "same"),
    ("images rm {registry}/test/copy:1", "same"),
    ("images pull --plain-http {registry}/test/copy:1", "ok"),
    ("images export /tmp/ctrd-m2-export.tar {image}", "ok"),
    ("images rm {image}", "same"),
    ("images import /tmp/ctrd-m2-export.tar", "ok"),
    ("images ls -q", "same"),
    ("images pull --plain-http --all-platforms {multi}", "ok"),
    ("images pull --plain-http {registry}/test/nope:latest", "rc"),
    ("images mount {image} /tmp/ctrd-m2-mnt", "ok"),
    ("images unmount /tmp/ctrd-m2-mnt", "ok"),
    ("images inspect {image}", "same"),
    ("images label {image} team=blue", "same"),
    ("images ls", "same"),
    ("images convert --uncompress {image} {registry}/test/plain:1", "same"),
    ("images ls -q", "same"),
    ("images rm {registry}/test/plain:1", "same"),
    ("images prune --all", "same"),
    ("images ls -q", "same"),
    ("images pull --local --plain-http {image}", "ok"),
    ("images export --local /tmp/ctrd-m2-export.tar {image}", "ok"),
    ("images import --local /tmp/ctrd-m2-export.tar", "ok"),
    ("images ls -q", "same"),
]

CONTENT = [
    ("content fetch --plain-http {image}", "ok"),
    ("content ls", "same"),
    ("content get {config}", "same"),
    ("content label {config} a=b", "same"),
    ("content ls", "same"),
    ("content fetch-blob --plain-http {image} {config}", "same"),
    ("content fetch-object --plain-http {image}", "rc"),
    ("content rm {config}", "same"),
    ("content rm sha256:" + "0" * 64, "same"),
    ("content prune references", "rc"),
]

SNAPSHOTS = [
    ("snapshots unpack {manifest}", "rc"),
    ("snapshots ls", "same"),
    ("snapshots prepare s1 {chain}", "same"),
    ("snapshots prepare s1 {chain}", "same"),
    ("snapshots mounts /tmp s1", "same"),
    ("snapshots info s1", "same"),
    ("snapshots label s1 a=b", "same"),
    ("snapshots commit s1c s1", "same"),
    # The commit removed s1 (a deletion): either daemon's GC runs soon after, and would take
    # the unreferenced view made next if it ran late. A synchronous collection here settles
    # it on both before the view is made.
    ("leases create --id gc-settle", "rc"),
    ("leases rm --sync gc-settle", "rc"),
    ("snapshots view v1 s1c", "same"),
    ("snapshots tree", "same"),
    ("snapshots usage", "rc"),
    ("snapshots rm v1", "same"),
    ("snapshots rm s1c", "same"),
    ("snapshots rm nope", "same"),
]

CONTAINERS = [
    ("containers create {image} c1 true", "same"),
    ("containers create {image} c1 true", "same"),
    ("containers ls", "same"),
    ("containers ls -q", "same"),
    ("containers label c1 a=b", "same"),
    ("containers info c1", "same"),
    ("containers rm c1", "same"),
    ("containers rm c1", "rc"),
    ("run --rm {image} r1 echo hello", "same"),
    ("run --rm {image} r2 sh -c 'exit 3'", "rc"),
    ("run -d {image} d1 sleep 300", "same"),
    ("tasks ls", "rc"),
    ("tasks ps d1", "rc"),
    ("tasks pause d1", "same"),
    ("tasks resume d1", "same"),
    ("tasks exec --exec-id e1 d1 echo inside", "same"),
    ("tasks metrics d1", "rc"),
    ("tasks kill -s 9 d1", "same"),
    ("tasks delete d1", "rc"),
    ("containers rm d1", "same"),
    ("snapshots ls", "rc"),
    ("sandboxes ls", "same"),
    ("leases create --id l1", "same"),
    ("leases ls -q", "same"),
    ("leases rm l1", "same"),
    ("content active", "same"),
    ("oci spec", "same"),
]


def test_server_commands(daemons):
    _compare(daemons, SERVER, {})


def test_namespace_commands(daemons):
    _compare(daemons, NAMESPACES, {})


def test_image_commands(daemons, registry):
    Path("/tmp/ctrd-m2-mnt").mkdir(exist_ok=True)
    try:
        _compare(daemons, IMAGES, _values(registry))
    finally:
        subprocess.run(["umount", "/tmp/ctrd-m2-mnt"], capture_output=True)
        Path("/tmp/ctrd-m2-export.tar").unlink(missing_ok=True)


def _prepared(daemons, registry, pull: bool) -> dict:
    """The test image pulled into both (ctr 1.6's client-side pull, when ``pull``), and the
    digests and chain id a script names."""
    import json

    values = _values(registry)
    img = registry.pushed["busybox"]
    manifest = json.loads(img.read_blob(img.digest))
    values["manifest"] = img.digest
    values["config"] = manifest["config"]["digest"]
    cfg = json.loads(img.read_blob(values["config"]))
    values["chain"] = cfg["rootfs"]["diff_ids"][0]  # one layer: chain id == diff id
    if pull:
        for d in daemons:
            r = ctr(d.address, "images", "pull", "--plain-http", values["image"],
                    namespace="m2", timeout=120)
            assert r.returncode == 0, r.stderr
    return values


def test_content_commands(daemons, registry):
    _compare(daemons, CONTENT, _prepared(daemons, registry, pull=False), namespace="m2c")


def test_snapshot_commands(daemons, registry):
    values = _prepared(daemons, registry, pull=False)
    for d in daemons:
        r = ctr(d.address, "content", "fetch", "--plain-http", values["image"],
                namespace="m2s", timeout=120)
        assert r.returncode == 0, r.stderr
    _compare(daemons, SNAPSHOTS, values, namespace="m2s")


def test_container_and_task_commands(daemons, registry):
    # ctr 1.6's client-side pull: this script is about containers
    _compare(daemons, CONTAINERS, _prepared(daemons, registry, pull=True))
