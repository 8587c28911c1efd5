"""The real ``ctr`` 1.6 against ctrd and against containerd: same commands, same results."""

from __future__ import annotations

import re

import pytest

from conftest import CTR, ctr

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]

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


def _normalise(text: str) -> str:
    # ctr logs errors with a timestamp: keep the message only.
    return re.sub(r'time="[^"]*" ', "", text)


def _run_script(address: str) -> list[tuple[str, int, str, str]]:
    out = []
    for line in SCRIPT:
        r = ctr(address, *line.split())
        out.append((line, r.returncode, r.stdout, _normalise(r.stderr)))
    return out


def test_namespace_commands_match_containerd(ctrd, containerd):
    theirs = _run_script(containerd.address)
    ours = _run_script(ctrd.address)
    for (line, *t), (_, *o) in zip(theirs, ours):
        assert o == t, f"ctr {line}: ctrd gave {o}, containerd gave {t}"


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
