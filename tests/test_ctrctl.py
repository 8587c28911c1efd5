"""ctrctl against a real ctrd daemon: version, plugins, namespaces, and how errors read.

The integration tests start one ctrd per module on a temp root/state/socket (the
``ctrd_daemon`` fixture below) and run the ctrctl console script as a subprocess, the way a
user does; a few drive the click command in-process with CliRunner. The daemon is stopped
(SIGTERM, then SIGKILL) and its dirs removed whether the tests passed or not. Unit tests at
the end (no daemon, no root) cover output formatting and option parsing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid as uuidlib
from pathlib import Path

import pytest

from conftest import Proc, launch_ctrd
from support.cmd import CTRCTL, clean_env, ctl, ok

IDENTIFIER_RE = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"


# -- a daemon of our own ------------------------------------------------------------------

Daemon = Proc


def start_daemon(base: Path, name: str = "d") -> Daemon:
    """Start ctrd under ``base/name`` and wait until its socket answers."""
    return launch_ctrd(base / name)


@pytest.fixture(scope="module")
def tmp_base():
    d = Path(tempfile.mkdtemp(prefix="ctrctl-", dir="/tmp"))  # short: socket paths <= 108
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ctrd_daemon(tmp_base):
    daemon = start_daemon(tmp_base)
    try:
        yield daemon
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0, daemon.read_log()


def run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """ctrctl with no ``--address`` of ours (the tests of how it finds its daemon)."""
    return subprocess.run(CTRCTL + list(args), capture_output=True, text=True,
                          env=clean_env(env), timeout=timeout)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuidlib.uuid4().hex[:8]}"


def parse_plain_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Split plain table output by the header's column offsets (cells may be empty)."""
    lines = text.splitlines()
    header = lines[0]
    names = header.split()
    starts = [header.index(n) for n in names]
    rows = []
    for line in lines[1:]:
        cells = []
        for i, s in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            if 0 < s < len(line):
                assert line[s - 1] == " ", f"column {names[i]} misaligned in {line!r}"
            cells.append(line[s:end].strip())
        rows.append(cells)
    return names, rows


# -- version ------------------------------------------------------------------------------

@pytest.mark.integration
def test_version_table_and_json(ctrd_daemon):
    out = ok(ctl(ctrd_daemon, "version"))
    from ctrd import __version__

    # kept where containerd keeps it: the introspection plugin's own root dir
    server_uuid = (ctrd_daemon.root / "io.containerd.grpc.v1.introspection"
                   / "uuid").read_text().strip()
    assert out.startswith(f"Client:\n  Version:  {__version__}\n")
    assert f"Server:\n  Version:  {__version__}\n" in out
    assert f"  UUID:     {server_uuid}\n" in out

    data = json.loads(ok(ctl(ctrd_daemon, "version", "--format", "json")))
    assert set(data) == {"client", "server"}
    assert set(data["server"]) == {"version", "revision", "uuid"}
    assert data["server"]["uuid"] == server_uuid
    assert data["client"]["version"] == data["server"]["version"] == __version__


@pytest.mark.integration
def test_address_from_environment(ctrd_daemon):
    out = ok(run("version", env={"CTRD_ADDRESS": ctrd_daemon.address}))
    assert "Server:" in out


# -- plugins ------------------------------------------------------------------------------

@pytest.mark.integration
def test_plugins_ls_table(ctrd_daemon):
    from ctrd.plugins.builtin import REGISTRATIONS

    names, rows = parse_plain_table(ok(ctl(ctrd_daemon, "plugins", "ls")))
    assert names == ["TYPE", "ID", "PLATFORMS", "STATUS"]  # no ERROR column: nothing failed
    by_uri = {(r[0], r[1]): r for r in rows}
    for reg in REGISTRATIONS:
        assert by_uri[(reg.type, reg.id)][3] == "ok", rows
    assert len(rows) == len(REGISTRATIONS)
    # aliases, and ids only
    assert ok(ctl(ctrd_daemon, "plugin", "list", "-q")).split() == [r[1] for r in rows]


@pytest.mark.integration
def test_plugins_ls_json(ctrd_daemon):
    data = json.loads(ok(ctl(ctrd_daemon, "plugins", "ls", "--format", "json")))
    assert data and all(set(p) == {"type", "id", "requires", "platforms", "exports",
                                   "capabilities", "status", "error"} for p in data)
    assert all(p["status"] == "ok" and p["error"] is None for p in data)
    ns = next(p for p in data if (p["type"], p["id"]) == ("io.containerd.grpc.v1",
                                                          "namespaces"))
    assert ns["requires"] == ["io.containerd.service.v1"]


@pytest.mark.integration
def test_plugins_ls_filters(ctrd_daemon):
    names, rows = parse_plain_table(ok(ctl(ctrd_daemon, "plugins", "ls",
                                           "type==io.containerd.grpc.v1")))
    assert rows and {r[0] for r in rows} == {"io.containerd.grpc.v1"}
    # several filters: any may match
    data = json.loads(ok(ctl(ctrd_daemon, "plugins", "ls", "--format", "json",
                             "id==version", "id==introspection")))
    assert sorted(p["id"] for p in data) == ["introspection", "version"]
    r = ctl(ctrd_daemon, "plugins", "ls", "type==")
    assert r.returncode == 1 and r.stderr.startswith("ctrctl: ")
    assert "invalid argument" in r.stderr


@pytest.mark.integration
def test_plugins_ls_shows_failures(tmp_base):
    # A file where the metadata plugin's directory should be: it (and what needs it) fails,
    # the daemon keeps serving the rest.
    root = tmp_base / "broken" / "root"
    root.mkdir(parents=True)
    (root / "io.containerd.metadata.v1.lmdb").write_text("")
    daemon = start_daemon(tmp_base, "broken")
    try:
        names, rows = parse_plain_table(ok(ctl(daemon, "plugins", "ls")))
        assert names == ["TYPE", "ID", "PLATFORMS", "STATUS", "ERROR"]
        lmdb = next(r for r in rows if r[1] == "lmdb")
        assert lmdb[3] == "error" and "File exists" in lmdb[4]
        version = next(r for r in rows if r[1] == "version")
        assert version[3:] == ["ok", ""]

        data = json.loads(ok(ctl(daemon, "plugins", "ls", "--format", "json")))
        lmdb = next(p for p in data if p["id"] == "lmdb")
        assert lmdb["status"] == "error"
        assert lmdb["error"]["code"] == "Unknown" and "File exists" in lmdb["error"]["message"]

        detailed = ok(ctl(daemon, "plugins", "ls", "--detailed"))
        block = next(b for b in detailed.split("\n\n") if "ID:           lmdb" in b)
        assert "Status:       error" in block and "Error:        Unknown: " in block

        # namespaces is among the failed plugins: its service is not served
        r = ctl(daemon, "namespaces", "ls")
        assert r.returncode == 1
        assert r.stderr == ("ctrctl: the daemon does not serve namespaces.List (see the "
                            "plugins' status): not implemented\n")
    finally:
        daemon.stop()


# -- namespaces ---------------------------------------------------------------------------

@pytest.mark.integration
def test_namespaces_lifecycle(ctrd_daemon):
    name = unique("life")
    assert ok(ctl(ctrd_daemon, "namespaces", "create", name, "b=2", "a=1", "flag")) == ""

    names, rows = parse_plain_table(ok(ctl(ctrd_daemon, "namespaces", "ls")))
    assert names == ["NAME", "LABELS"]
    assert [name, "a=1,b=2,flag=true"] in rows
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)

    data = json.loads(ok(ctl(ctrd_daemon, "ns", "list", "--format", "json")))
    assert {"name": name, "labels": {"a": "1", "b": "2", "flag": "true"}} in data

    # set one, change one, remove one (an empty value removes, as with ctr)
    assert ok(ctl(ctrd_daemon, "ns", "label", name, "c=3", "a=10", "b=")) == ""
    data = json.loads(ok(ctl(ctrd_daemon, "ns", "ls", "--format", "json")))
    assert {"name": name, "labels": {"a": "10", "c": "3", "flag": "true"}} in data

    assert name in ok(ctl(ctrd_daemon, "ns", "ls", "-q")).splitlines()
    assert ok(ctl(ctrd_daemon, "namespaces", "rm", name)) == f"{name}\n"
    assert name not in ok(ctl(ctrd_daemon, "ns", "ls", "-q")).splitlines()


@pytest.mark.integration
def test_namespaces_rm_several_and_missing(ctrd_daemon):
    a, b, missing = unique("rm"), unique("rm"), unique("never")
    ok(ctl(ctrd_daemon, "ns", "c", a))
    ok(ctl(ctrd_daemon, "ns", "create", b))
    # a namespace that does not exist counts as removed (ctr does the same)
    assert ok(ctl(ctrd_daemon, "ns", "remove", a, missing, b)) == f"{a}\n{missing}\n{b}\n"
    left = ok(ctl(ctrd_daemon, "ns", "ls", "-q")).splitlines()
    assert a not in left and b not in left


@pytest.mark.integration
def test_namespace_already_exists(ctrd_daemon):
    name = unique("dup")
    ok(ctl(ctrd_daemon, "ns", "create", name))
    r = ctl(ctrd_daemon, "ns", "create", name, "x=y")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == f'ctrctl: namespace "{name}": already exists\n'
    # the failed create changed nothing
    data = json.loads(ok(ctl(ctrd_daemon, "ns", "ls", "--format", "json")))
    assert {"name": name, "labels": {}} in data


@pytest.mark.integration
@pytest.mark.parametrize("bad", ["Bad!", "-lead", "a..b", "x" * 77])
def test_namespace_invalid_name(ctrd_daemon, bad):
    r = ctl(ctrd_daemon, "ns", "create", "--", bad)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("ctrctl: identifier ")
    assert r.stderr.endswith(": invalid argument\n")
    if len(bad) <= 76:
        assert f'"{bad}" must match {IDENTIFIER_RE}' in r.stderr
    else:
        assert "greater than maximum length (76 characters)" in r.stderr
    assert bad not in ok(ctl(ctrd_daemon, "ns", "ls", "-q")).splitlines()


@pytest.mark.integration
def test_usage_errors_exit_2(ctrd_daemon):
    for args in (["ns", "label", "x"],           # no KEY=VALUE
                 ["ns", "create"],               # no name
                 ["ns", "create", "x", "=v"],    # empty key
                 ["ns", "rm"],
                 ["plugins", "ls", "--format", "yaml"],
                 ["--timeout", "soon", "version"],
                 ["nosuchcommand"]):
        r = ctl(ctrd_daemon, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Usage:" in r.stderr and r.stdout == ""


# -- the daemon is not there --------------------------------------------------------------

@pytest.mark.integration
def test_daemon_not_running(tmp_base):
    missing = str(tmp_base / "nobody" / "ctrd.sock")
    for args in (["version"], ["plugins", "ls"], ["ns", "ls"], ["ns", "create", "x"]):
        r = run("-a", missing, *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr == f"ctrctl: cannot connect to ctrd at {missing}: is the daemon running?\n"
    # a socket left behind by a dead daemon: nobody accepts
    import socket

    stale = tmp_base / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    r = run("version", env={"CTRD_ADDRESS": str(stale)})
    assert r.returncode == 1
    assert r.stderr == f"ctrctl: cannot connect to ctrd at {stale}: is the daemon running?\n"


@pytest.mark.integration
def test_daemon_stopped_under_the_client(tmp_base):
    daemon = start_daemon(tmp_base, "stopping")
    try:
        ok(ctl(daemon, "ns", "ls"))
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0, daemon.read_log()
    r = ctl(daemon, "ns", "ls")
    assert r.returncode == 1
    assert r.stderr == (f"ctrctl: cannot connect to ctrd at {daemon.address}: "
                        "is the daemon running?\n")


@pytest.mark.integration
def test_timeout_when_the_daemon_does_not_answer(tmp_base):
    daemon = start_daemon(tmp_base, "frozen")
    try:
        os.kill(daemon.proc.pid, signal.SIGSTOP)  # the socket accepts, nobody replies
        try:
            # the frozen daemon never answers: ctrctl returns only through its own deadline
            # (run()'s subprocess timeout is the suite's guard against a hang)
            r = ctl(daemon, "--timeout", "500ms", "ns", "ls")
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        assert r.returncode == 1
        assert r.stderr == ("ctrctl: no reply from ctrd to namespaces.List within 0.5s "
                            "(see --timeout): context deadline exceeded\n")
        ok(ctl(daemon, "ns", "ls"))  # thawed: answers again
    finally:
        daemon.stop()


# -- in-process, through click ------------------------------------------------------------

@pytest.mark.integration
def test_cli_runner_in_process(ctrd_daemon):
    from click.testing import CliRunner

    from ctrd.cli.ctrctl import cli

    runner = CliRunner()
    name = unique("runner")
    base = ["--address", ctrd_daemon.address]
    r = runner.invoke(cli, base + ["ns", "create", name, "k=v"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, base + ["ns", "ls"])
    assert r.exit_code == 0
    # not a terminal: plain aligned text, no rich styling
    assert "\x1b[" not in r.stdout
    assert [name, "k=v"] in parse_plain_table(r.stdout)[1]
    r = runner.invoke(cli, base + ["ns", "create", name])
    assert r.exit_code == 1
    assert r.stderr == f'ctrctl: namespace "{name}": already exists\n'
    r = runner.invoke(cli, base + ["ns", "rm", name])
    assert (r.exit_code, r.stdout) == (0, f"{name}\n")


# -- unit tests: no daemon ----------------------------------------------------------------

def test_plain_table_alignment():
    from ctrd.cli.output import plain_table

    text = plain_table(["NAME", "LABELS"], [["default", ""], ["k8s.io", "a=b,c=d"]])
    assert text == ("NAME      LABELS\n"
                    "default\n"
                    "k8s.io    a=b,c=d\n")


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_table_uses_rich_on_a_terminal_only():
    from ctrd.cli.output import print_table

    tty = _TTY()
    print_table(["NAME", "LABELS"], [["[bold]x[/bold]", "a=b"]], stream=tty)
    out = tty.getvalue()
    assert "\x1b[1m" in out            # bold header
    assert "[bold]x[/bold]" in out     # cells are text, never markup

    plain = io.StringIO()
    print_table(["NAME", "LABELS"], [["x", "a=b"]], stream=plain)
    assert plain.getvalue() == "NAME   LABELS\nx      a=b\n"


@pytest.mark.parametrize("text,seconds", [("30", 30.0), ("1.5", 1.5), ("500ms", 0.5),
                                          ("1m30s", 90.0), ("2h", 7200.0), ("0", 0.0)])
def test_timeout_durations(text, seconds):
    from ctrd.cli.ctrctl import Duration

    assert Duration().convert(text, None, None) == pytest.approx(seconds)


def test_label_arguments_read_like_ctr():
    from ctrd.cli.ctrctl import parse_labels

    assert parse_labels(("a=1", "b=", "c", "d=x=y")) == {"a": "1", "b": "", "c": "true",
                                                         "d": "x=y"}


def test_client_addresses_and_metadata():
    from ctrd.cli.client import Client, socket_path

    assert socket_path("unix:///run/x.sock") == "/run/x.sock"
    assert socket_path("unix:/run/x.sock") == "/run/x.sock"
    assert socket_path("rel.sock") == os.path.abspath("rel.sock")
    c = Client("/run/x.sock", namespace="k8s.io", lease="l1")
    assert c.metadata() == [("containerd-namespace", "k8s.io"), ("containerd-lease", "l1")]
    assert c.with_namespace("other").metadata() == [("containerd-namespace", "other"),
                                                    ("containerd-lease", "l1")]
    c.close()


def test_help_does_not_import_grpc():
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from ctrd.cli.ctrctl import main\n"
                        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                        "assert 'grpc' not in sys.modules, 'grpc imported'\n"
                        "assert 'rich' not in sys.modules, 'rich imported'\n"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
