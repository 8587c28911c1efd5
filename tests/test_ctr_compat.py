"""The real ``ctr`` against ctrd and against containerd: same commands, same results — ctr
1.6 against containerd 1.6, ctr 2.3.4 against containerd 2.3.4 (fixture ``ctr_client``)."""

from __future__ import annotations

import hashlib
import random
import re

import pytest

from conftest import ctr
from support.ctr_compat import _compare

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ctr_client")]

# Each step: a ctr command line. Run in order on both daemons; rc, stdout and stderr compared.
SCRIPT = [
    "namespaces ls",
    "namespaces create x a=b",
    "namespaces create x a=b",           # already exists
    "namespaces label x a=c",
    "namespaces label x b=d",
    "namespaces ls",
    "namespaces label x b=",             # an empty value removes the label
    "namespaces ls -q",
    "namespaces create Bad/x",           # invalid identifier
    "namespaces create " + "a" * 77,     # too long
    "namespaces create y k=" + "v" * 5000,  # label too large
    "namespaces label nope q=1",         # labelling creates, as in containerd
    "namespaces ls",
    "namespaces rm x",
    "namespaces rm x",                   # not found: ctr ignores it
    "namespaces rm nope",
    "namespaces ls",
]


def test_namespace_commands_match_containerd(ctrd, containerd):
    _compare(ctrd, containerd, SCRIPT)


BLOB = bytes(random.Random(1).getrandbits(8) for _ in range(300_000))
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
WRONG = "sha256:" + hashlib.sha256(b"wrong").hexdigest()
MISSING = "sha256:" + "1" * 64

CONTENT_SCRIPT = [
    f"content ingest --expected-digest {WRONG} bad",          # wrong digest: nothing stored
    "content ls",
    "content active",
    f"content ingest --expected-digest {DIGEST} --expected-size 5 small",
    f"content ingest --expected-digest {DIGEST} good",
    f"content ingest --expected-digest {DIGEST} again",       # already there
    "content ls",
    f"content get {DIGEST}",
    f"content label {DIGEST} a=b c=d",
    f"content label {DIGEST} c=",
    "content ls",
    f"content label {MISSING} a=b",
    "content get sha256:zz",
    f"content get {MISSING}",
    "--namespace other content ls",
    f"--namespace other content get {DIGEST}",
    f"content rm {DIGEST} {DIGEST}",
    "content ls",
    "namespaces ls",
    "leases create --id L1",
    "leases create --id L1",
    "leases rm nope",
    "leases rm L1",
    "leases ls",
]


def test_content_and_lease_commands_match_containerd(ctrd, containerd):
    stdin = {line: BLOB for line in CONTENT_SCRIPT if line.startswith("content ingest")}
    _compare(ctrd, containerd, CONTENT_SCRIPT, stdin)


def test_version_and_uuid_survive_restart(start_ctrd, tmp_root):
    d = start_ctrd()
    r = ctr(d.address, "version")
    assert r.returncode == 0, r.stderr
    uuid = re.search(r"UUID: (\S+)", r.stdout).group(1)
    assert re.search(r"Server:\s+Version:\s+\d", r.stdout)
    d.stop()
    d2 = start_ctrd(root=d.root)
    r2 = ctr(d2.address, "version")
    assert re.search(r"UUID: (\S+)", r2.stdout).group(1) == uuid


def test_plugins_ls_lists_every_builtin_ok(ctrd):
    from ctrd.plugins.builtin import REGISTRATIONS

    r = ctr(ctrd.address, "plugins", "ls")
    assert r.returncode == 0, r.stderr
    rows = {tuple(line.split()[:2]): line.split()[-1] for line in r.stdout.splitlines()[1:]}
    for reg in REGISTRATIONS:
        assert rows.get((reg.type, reg.id)) == "ok", (reg.uri, r.stdout)
    # Filters work as in containerd.
    r = ctr(ctrd.address, "plugins", "ls", "type==io.containerd.grpc.v1")
    types = {line.split()[0] for line in r.stdout.splitlines()[1:]}
    assert types == {"io.containerd.grpc.v1"}
    r = ctr(ctrd.address, "plugins", "ls", "type==")
    assert r.returncode != 0 and "invalid argument" in r.stderr


SNAPSHOT_SCRIPT = [
    "snapshots ls",
    "snapshots prepare base",
    "snapshots prepare base",                      # already exists
    "snapshots mounts /mnt/x base",
    "snapshots commit base-c base",
    "snapshots commit base-c base",                # the active key is gone
    "snapshots prepare child base-c",
    "snapshots prepare orphan nope",               # parent does not exist
    "snapshots mounts /mnt/x child",
    "snapshots view v1 base-c",
    "snapshots mounts /mnt/x v1",
    "snapshots commit v1-c v1",                    # a view cannot be committed
    "snapshots tree",
    "snapshots ls",
    "snapshots usage base-c",
    "snapshots label base-c a=b",
    "snapshots rm base-c",                         # has children
    "snapshots rm nope",
    "snapshots rm v1 child",
    "snapshots rm base-c",
    "snapshots ls",
    "--namespace other snapshots ls",
    "snapshots --snapshotter native prepare n1",
    "snapshots --snapshotter native mounts /mnt/x n1",
    "snapshots --snapshotter native ls",
    "snapshots --snapshotter nope ls",
]


def test_snapshot_commands_match_containerd(ctrd, containerd):
    _compare(ctrd, containerd, SNAPSHOT_SCRIPT)
