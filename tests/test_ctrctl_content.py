"""ctrctl content, leases, events and gc against a real ctrd (and next to the real ctr).

Most integration tests share one ctrd per module (``daemon`` below) on a temp root, started
so that it never collects garbage: the first collection is an hour away and no number of
deletions or mutations brings it forward. (Once a daemon has collected, containerd's
scheduler, and ctrd's, collects again after any deletion, which would take content another
test ingested without a lease.) Tests that collect (``ctrctl gc``, ``leases rm --sync``) get
a daemon of their own (``own``, through conftest's ``start_ctrd``). Each test works in its
own namespace. ctrctl runs as a subprocess, as a user runs it. Every process started here
(daemons, background ``ctrctl events``, ingests killed on purpose) is killed in teardown
whether the test passed or not. Unit tests at the end need neither daemon nor root.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import Proc, launch_ctrd
from support.cmd import CTRCTL, clean_env, ok

CTR = shutil.which("ctr")
MiB = 1 << 20
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
MANUAL_GC = """version = 2
[plugins."io.containerd.gc.v1.scheduler"]
deletion_threshold = 1000000
mutation_threshold = 1000000
startup_delay = "1h"
"""


# -- the daemon and how to drive it ---------------------------------------------------------

Daemon = Proc


@pytest.fixture(scope="module")
def base():
    d = Path(tempfile.mkdtemp(prefix="ctrctl-c-", dir="/tmp"))  # short: socket paths <= 108
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(base):
    d = launch_ctrd(base / "d", config_text=MANUAL_GC)
    try:
        yield d
    finally:
        d.stop()
    assert d.proc.returncode == 0, d.read_log()


def blob_path(daemon, digest: str) -> Path:
    """Where the daemon keeps a blob: containerd's layout under the content plugin's root."""
    return (daemon.root / "io.containerd.content.v1.content" / "blobs" / "sha256"
            / digest.removeprefix("sha256:"))


def run(*args: str, input: bytes | str | None = None, text: bool = True, stdin=None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    if isinstance(input, bytes):
        text = False
    return subprocess.run(CTRCTL + list(args), input=input, stdin=stdin, capture_output=True,
                          text=text, env=clean_env(), timeout=timeout)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuidlib.uuid4().hex[:8]}"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class NS:
    """ctrctl (and ctr) against the daemon in one namespace of a test's own."""

    def __init__(self, daemon, name: str | None = None) -> None:
        self.daemon = daemon
        self.name = name or unique("t")

    def args(self, *args: str) -> list[str]:
        return ["-a", self.daemon.address, "-n", self.name, *args]

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """ctrctl in this namespace; stdout and stderr as bytes."""
        kw.setdefault("text", False)
        return run(*self.args(*args), **kw)

    def ok(self, *args: str, **kw):
        return ok(self(*args, **kw))

    def ctr(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([CTR, "--address", self.daemon.address, "--namespace",
                               self.name, *args], input=input, capture_output=True,
                              timeout=120)

    def ingest(self, data: bytes, *extra: str, ref: str | None = None) -> str:
        out = self.ok("content", "ingest", ref or unique("ref"), *extra, input=data,
                      text=False)
        return out.decode().strip()

    def get(self, digest: str) -> bytes:
        return self.ok("content", "get", digest, text=False)

    def ls(self, *filters: str) -> list[dict]:
        return json.loads(self.ok("content", "ls", "--format", "json", *filters))

    def active(self) -> list[dict]:
        return json.loads(self.ok("content", "active", "--format", "json"))


@pytest.fixture
def ns(daemon) -> NS:
    return NS(daemon)


@pytest.fixture
def own(start_ctrd) -> NS:
    """A namespace on a daemon of the test's own, which has never collected garbage."""
    return NS(start_ctrd(config_text=MANUAL_GC))


def parse_plain_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Split plain table output by the header's column offsets (header names may contain
    one space, e.g. OFFSET/TOTAL does not, but keep to single words)."""
    lines = text.splitlines()
    header = lines[0]
    names = header.split()
    starts = [header.index(n) for n in names]
    rows = []
    for line in lines[1:]:
        rows.append([line[s:(starts[i + 1] if i + 1 < len(starts) else None)].strip()
                     for i, s in enumerate(starts)])
    return names, rows


@pytest.fixture
def procs():
    """Processes a test starts in the background: killed (whole session) in teardown."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def popen(started: list, *args: str, **kw) -> subprocess.Popen:
    p = subprocess.Popen(CTRCTL + list(args), env=clean_env(), start_new_session=True, **kw)
    started.append(p)
    return p


# -- ingest and get -------------------------------------------------------------------------

@pytest.mark.integration
def test_ingest_stdin_then_get(ns):
    data = os.urandom(5 * MiB + 12345)  # several 1 MiB messages and a short one
    digest = ns.ingest(data)
    assert digest == sha(data)
    got = ns.get(digest)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()

    # the blob on disk verifies with sha256sum
    blob = blob_path(ns.daemon, digest)
    out = subprocess.run(["sha256sum", str(blob)], capture_output=True, text=True).stdout
    assert out.split()[0] == digest.removeprefix("sha256:")

    names, rows = parse_plain_table(ns.ok("content", "ls").decode())
    assert names == ["DIGEST", "SIZE", "AGE", "LABELS"]
    assert rows == [[digest, "5.0 MiB", rows[0][2], "-"]]
    assert rows[0][2].endswith(" ago")
    assert ns.ok("content", "list", "-q") == f"{digest}\n".encode()
    [info] = ns.ls()
    assert (info["digest"], info["size"], info["labels"]) == (digest, len(data), {})
    assert info["created_at"].endswith("Z") and "T" in info["created_at"]
    assert ns.active() == []


@pytest.mark.integration
def test_ingest_file_with_expectations_and_labels(ns, tmp_path):
    data = os.urandom(3 * MiB)
    path = tmp_path / "blob"
    path.write_bytes(data)
    out = ns.ok("content", "ingest", unique("ref"), "--file", str(path),
                "--expected-digest", sha(data), "--expected-size", str(len(data)),
                "--label", "app=web", "--label", "tier", "--format", "json")
    result = json.loads(out)
    assert result == {"ref": result["ref"], "digest": sha(data), "size": len(data),
                      "resumed_from": 0, "already_existed": False}
    assert ns.get(sha(data)) == data
    [info] = ns.ls()
    assert info["labels"] == {"app": "web", "tier": "true"}
    # filters: by label, and a filter nothing matches
    assert [i["digest"] for i in ns.ls("labels.app==web")] == [sha(data)]
    assert ns.ls("labels.app==db") == []


@pytest.mark.integration
def test_ingest_empty_input(ns):
    assert ns.ingest(b"") == EMPTY_DIGEST
    assert ns.get(EMPTY_DIGEST) == b""


@pytest.mark.integration
def test_ingest_expected_digest_already_present(ns):
    data = os.urandom(1000)
    digest = ns.ingest(data)
    # nothing is read: the daemon says it has it at once
    out = ns.ok("content", "ingest", unique("again"), "--expected-digest", digest,
                "--label", "seen=twice", "--format", "json", stdin=subprocess.DEVNULL)
    assert json.loads(out)["already_existed"] is True
    assert json.loads(out)["digest"] == digest
    # the labels asked for still land on the blob that was there
    assert ns.ls()[0]["labels"] == {"seen": "twice"}
    # same bytes again without an expected digest: sent, then found present at commit
    assert ns.ingest(data) == digest
    assert ns.active() == []


@pytest.mark.integration
@pytest.mark.parametrize("flag,value,message", [
    ("--expected-digest", sha(b"something else"), "unexpected commit digest"),
    ("--expected-size", "10", "failed size validation"),
])
def test_ingest_wrong_expectation(ns, flag, value, message):
    data = os.urandom(2 * MiB + 1)
    ref = unique("bad")
    r = ns("content", "ingest", ref, flag, value, input=data)
    assert r.returncode == 1
    assert r.stdout == b""
    err = r.stderr.decode()
    assert err.startswith(f"ctrctl: ingest {ref} failed: ") and message in err, err
    assert err.endswith("the ingest was dropped\n"), err
    assert err.count("\n") == 1  # one line, no traceback
    # nothing stored, nothing left half-done
    assert ns.ls() == []
    assert ns.ok("content", "ls", "-q") == b""
    assert ns.active() == []


@pytest.mark.integration
def test_ingest_invalid_expected_digest(ns):
    r = ns("content", "ingest", unique("x"), "--expected-digest", "md5:nope", input=b"x")
    assert r.returncode == 1 and r.stderr.decode().startswith("ctrctl: ")
    assert r.stderr.decode().rstrip().endswith("invalid argument")


@pytest.mark.integration
def test_ingest_missing_file(ns, tmp_path):
    r = ns("content", "ingest", "x", "--file", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert r.stderr.decode() == (f"ctrctl: cannot read {tmp_path / 'nope'}: "
                                 "No such file or directory\n")


# -- resume -----------------------------------------------------------------------------------

def _interrupted_ingest(ns: NS, procs: list, ref: str, data: bytes, send: int) -> int:
    """Start ``ctrctl content ingest REF`` fed by a pipe, send ``send`` bytes, wait until the
    daemon holds them, then SIGKILL ctrctl mid-transfer. Returns the offset left behind."""
    p = popen(procs, *ns.args("content", "ingest", ref), stdin=subprocess.PIPE,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(data[:send])
    p.stdin.flush()
    deadline = time.monotonic() + 30
    offset = 0
    while time.monotonic() < deadline:
        found = [s for s in ns.active() if s["ref"] == ref]
        if found and found[0]["offset"] >= send - MiB:  # the tail may sit in a partial block
            offset = found[0]["offset"]
            break
        time.sleep(0.05)
    assert offset > 0, f"ingest of {ref} made no progress: {ns.active()}"
    assert p.poll() is None, "ctrctl finished although its input is still open"
    p.kill()
    p.wait()
    p.stdin.close()
    # the killed session leaves a resumable ingest with its offset
    deadline = time.monotonic() + 10
    while True:
        [st] = [s for s in ns.active() if s["ref"] == ref]
        if st["offset"] >= offset or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert st["offset"] >= offset and st["offset"] < len(data)
    return st["offset"]


@pytest.mark.integration
def test_resume_interrupted_ingest_from_a_file(ns, procs, tmp_path):
    data = os.urandom(40 * MiB + 7)
    path = tmp_path / "large"
    path.write_bytes(data)
    ref = unique("resume")
    offset = _interrupted_ingest(ns, procs, ref, data, 12 * MiB)

    names, rows = parse_plain_table(ns.ok("content", "active").decode())
    assert names == ["REF", "OFFSET/TOTAL", "STARTED", "UPDATED"]
    assert [r[0] for r in rows] == [ref]
    assert rows[0][1].endswith("MiB") and rows[0][2].endswith(" ago")

    out = json.loads(ns.ok("content", "ingest", ref, "--file", str(path), "--format", "json"))
    assert out["resumed_from"] == offset  # the daemon's bytes were kept, not sent again
    assert out["digest"] == sha(data) and out["size"] == len(data)
    assert ns.get(sha(data)) == data
    assert ns.active() == []


@pytest.mark.integration
def test_resume_from_a_pipe_starts_over(ns, procs):
    data = os.urandom(20 * MiB)
    ref = unique("pipe")
    _interrupted_ingest(ns, procs, ref, data, 6 * MiB)
    out = json.loads(ns.ok("content", "ingest", ref, "--format", "json", input=data))
    assert out["resumed_from"] == 0
    assert out["digest"] == sha(data)
    assert ns.get(sha(data)) == data


@pytest.mark.integration
def test_resume_with_different_data_starts_over(ns, procs, tmp_path):
    # the same ref, another file: the bytes the daemon holds do not match its start, so
    # ctrctl does not stitch them together
    first, second = os.urandom(16 * MiB), os.urandom(16 * MiB)
    ref = unique("other")
    _interrupted_ingest(ns, procs, ref, first, 5 * MiB)
    path = tmp_path / "second"
    path.write_bytes(second)
    out = json.loads(ns.ok("content", "ingest", ref, "--file", str(path), "--format", "json"))
    assert out["resumed_from"] == 0
    assert out["digest"] == sha(second)
    assert ns.get(sha(second)) == second


# -- labels, rm, namespaces -------------------------------------------------------------------

@pytest.mark.integration
def test_label_set_change_remove(ns):
    digest = ns.ingest(b"labelled", "--label", "a=1", "--label", "b=2")
    # one update: set c, change a, remove b; prints the labels after the change
    assert ns.ok("content", "label", digest, "c=3", "a=10", "b=") == b"a=10,c=3\n"
    assert ns.ls()[0]["labels"] == {"a": "10", "c": "3"}
    names, rows = parse_plain_table(ns.ok("content", "ls").decode())
    assert rows[0][3] == "a=10,c=3"
    r = ns("content", "label", sha(b"not there"), "x=y")
    assert r.returncode == 1
    assert r.stderr.decode() == f"ctrctl: content digest {sha(b'not there')}: not found\n"
    r = ns("content", "label", digest)  # no KEY=VALUE: usage
    assert r.returncode == 2


@pytest.mark.integration
def test_rm(ns):
    a, b = ns.ingest(b"one"), ns.ingest(b"two")
    missing = sha(b"never stored")
    # as ctr: a digest that is not there is skipped without a word
    r = ns("content", "rm", a, missing, b)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{a}\n{b}\n".encode(), b"")
    assert ns.ls() == []
    c = ns.ingest(b"three")
    r = ns("content", "remove", "garbage", c)
    assert r.returncode == 1
    assert r.stdout == f"{c}\n".encode()
    assert r.stderr.decode().startswith("ctrctl: unable to delete garbage: ")
    r = ns("content", "get", a)
    assert r.returncode == 1 and r.stderr.decode() == f"ctrctl: content digest {a}: not found\n"


@pytest.mark.integration
def test_namespaces_are_isolated(daemon):
    mine, other = NS(daemon), NS(daemon)
    digest = mine.ingest(b"private bytes", "--label", "k=v")
    assert [i["digest"] for i in mine.ls()] == [digest]
    assert other.ls() == []
    assert other.ok("content", "ls", "-q") == b""
    r = other("content", "get", digest)
    assert r.returncode == 1 and b"not found" in r.stderr
    # an ingest in progress is per namespace too
    assert other.active() == []
    # the other namespace adds the same bytes: its own labels, mine unchanged
    assert other.ingest(b"private bytes", "--label", "k=other") == digest
    assert other.ls()[0]["labels"] == {"k": "other"}
    assert mine.ls()[0]["labels"] == {"k": "v"}
    ok(run("-a", daemon.address, "-n", other.name, "content", "rm", digest))
    assert mine.get(digest) == b"private bytes"


# -- leases ------------------------------------------------------------------------------------

@pytest.mark.integration
def test_leases_create_ls_rm(ns):
    before = datetime.now(timezone.utc)
    lid = ns.ok("leases", "create", "--id", "mine", "team=a", "flag").decode().strip()
    assert lid == "mine"
    generated = ns.ok("lease", "create", "--expires", "0").decode().strip()
    assert re.fullmatch(r"\d{1,9}-[A-Za-z0-9_-]{4}", generated), generated  # as ctr makes them
    hourly = ns.ok("leases", "c", "-x", "1h").decode().strip()

    records = {r["id"]: r for r in json.loads(ns.ok("leases", "ls", "--format", "json"))}
    assert set(records) == {"mine", generated, hourly}
    mine = records["mine"]
    expire = mine["labels"].pop("containerd.io/gc.expire")
    assert mine["labels"] == {"team": "a", "flag": "true"}
    # default expiry: 24h, RFC 3339 to the second (as ctr writes it)
    at = datetime.fromisoformat(expire.replace("Z", "+00:00"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", expire)
    assert timedelta(hours=24) - timedelta(seconds=5) <= at - before <= \
        timedelta(hours=24) + timedelta(seconds=60)
    assert records[generated]["labels"] == {}  # --expires 0: never
    at = datetime.fromisoformat(records[hourly]["labels"]["containerd.io/gc.expire"]
                                .replace("Z", "+00:00"))
    assert timedelta(minutes=59) <= at - before <= timedelta(minutes=61)

    names, rows = parse_plain_table(ns.ok("leases", "ls").decode())
    assert names == ["ID", "CREATED", "LABELS"]
    row = next(r for r in rows if r[0] == "mine")
    assert row[2].startswith("containerd.io/gc.expire=") and "flag=true,team=a" in row[2]
    assert next(r for r in rows if r[0] == generated)[2] == "-"
    assert sorted(ns.ok("leases", "ls", "-q").decode().split()) == sorted(records)
    assert ns.ok("leases", "ls", "-q", "id==mine").decode() == "mine\n"
    assert ns.ok("leases", "ls", "-q", "labels.team==a").decode() == "mine\n"

    r = ns("leases", "create", "--id", "mine")
    assert r.returncode == 1 and r.stderr.decode() == 'ctrctl: lease "mine": already exists\n'

    r = ns("leases", "rm", "mine", "nosuch", generated)
    assert r.returncode == 1
    assert r.stdout.decode() == f"mine\n{generated}\n"
    assert r.stderr.decode() == ('ctrctl: unable to delete lease nosuch: '
                                 'lease "nosuch": not found\n')
    assert ns.ok("leases", "ls", "-q").decode() == f"{hourly}\n"
    assert ns.ok("leases", "delete", hourly).decode() == f"{hourly}\n"


@pytest.mark.integration
def test_lease_holds_content_and_lists_resources(own):
    ns = own
    lid = ns.ok("leases", "create").decode().strip()
    digest = ns.ingest(b"held", "--lease", lid)
    names, rows = parse_plain_table(ns.ok("leases", "resources", lid).decode())
    assert names == ["ID", "TYPE"] and rows == [[digest, "content"]]
    assert json.loads(ns.ok("leases", "resources", lid, "--format", "json")) == [
        {"id": digest, "type": "content"}]
    r = ns("leases", "resources", "nosuch")
    assert r.returncode == 1 and b"not found" in r.stderr

    blob = blob_path(ns.daemon, digest)
    ns.ok("gc")
    assert blob.exists() and ns.get(digest) == b"held"  # the lease keeps it
    # deleting the lease with --sync collects before returning
    assert ns.ok("leases", "rm", "--sync", lid).decode() == f"{lid}\n"
    assert not blob.exists()
    assert ns.ls() == []


# -- gc ----------------------------------------------------------------------------------------

@pytest.mark.integration
def test_gc_removes_unreferenced_content(own):
    ns = own
    data = os.urandom(100_000)
    digest = ns.ingest(data)  # no lease
    lid = ns.ok("leases", "create").decode().strip()
    kept = ns.ingest(b"kept under a lease", "--lease", lid)
    blob = blob_path(ns.daemon, digest)
    assert blob.exists()

    assert ns.ok("content", "rm", digest).decode() == f"{digest}\n"
    assert blob.exists()  # gone from the namespace; the file waits for a collection

    out = ns.ok("gc").decode()
    assert re.fullmatch(r"garbage collection done in \d+ ms \(through lease ctrctl-gc-[0-9a-f]+, "
                        r"created and deleted with sync\)\n", out), out
    assert not blob.exists()
    assert blob_path(ns.daemon, kept).exists()
    assert ns.get(kept) == b"kept under a lease"
    # the throwaway lease is gone
    assert ns.ok("leases", "ls", "-q").decode() == f"{lid}\n"


@pytest.mark.integration
def test_gc_help_documents_the_lease_trick():
    r = run("gc", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "creates a throwaway lease" in text and "deletes it with sync" in text


# -- events ------------------------------------------------------------------------------------

class Lines:
    """The stdout lines of a background process, read by a thread (so reads can time out)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.q: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.q.put(line)
        self.q.put(None)

    def wait_for(self, predicate, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            self.seen.append(line)
            if predicate(line):
                return line
        return None


def _start_events(daemon: Daemon, procs: list, *args: str) -> tuple[subprocess.Popen, Lines]:
    p = popen(procs, "-a", daemon.address, "events", *args, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, text=True)
    try:
        p.wait(0.5)  # a daemon whose Events service is missing fails the call at once
    except subprocess.TimeoutExpired:
        return p, Lines(p)
    raise AssertionError(f"ctrctl events exited with {p.returncode}: {p.stderr.read()}")


def _create_until_seen(daemon: Daemon, lines: Lines, match) -> tuple[str, str]:
    """Create namespaces until the subscriber reports one (its subscription is live once
    the first shows up); returns (namespace, its line)."""
    for _ in range(50):
        name = unique("ev")
        ok(run("-a", daemon.address, "namespaces", "create", name, "k=v"))
        line = lines.wait_for(lambda ln, n=name: match(ln, n), 0.5)
        if line:
            return name, line
    raise AssertionError(f"no event for any created namespace; saw {lines.seen!r}")


@pytest.mark.integration
def test_events_table(daemon, procs):
    p, lines = _start_events(daemon, procs)
    name, line = _create_until_seen(
        daemon, lines, lambda ln, n: " /namespaces/create " in ln and f'"{n}"' in ln)
    ts, namespace, topic, event = line.rstrip("\n").split(" ", 3)
    assert datetime.fromisoformat(ts.replace("Z", "+00:00")) > datetime.now(timezone.utc) \
        - timedelta(minutes=1)
    # containerd publishes /namespaces/create in the caller's namespace ("default" here)
    assert namespace == "default" and topic == "/namespaces/create"
    assert json.loads(event) == {"name": name, "labels": {"k": "v"}}
    # content events, decoded too
    digest = NS(daemon, name).ingest(b"event me")
    ok(run("-a", daemon.address, "-n", name, "content", "rm", digest))
    line = lines.wait_for(lambda ln: " /content/delete " in ln, 10)
    assert line is not None, lines.seen
    assert line.split(" ", 3)[1] == name
    assert json.loads(line.split(" ", 3)[3]) == {"digest": digest}

    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    assert p.stderr.read() == ""


@pytest.mark.integration
def test_events_json_and_filters(daemon, procs):
    p, lines = _start_events(daemon, procs, "--format", "json", "topic~=^/namespaces/")
    name, line = _create_until_seen(
        daemon, lines, lambda ln, n: n in ln and "/namespaces/create" in ln)
    record = json.loads(line)
    assert set(record) == {"timestamp", "namespace", "topic", "type", "event"}
    assert record["type"] == "containerd.events.NamespaceCreate"
    assert record["event"] == {"name": name, "labels": {"k": "v"}}
    # filtered out: a content event; shown: the namespace's removal
    ns = NS(daemon, unique("evf"))
    ns.ok("content", "rm", ns.ingest(b"x"))  # publishes /content/delete
    ok(run("-a", daemon.address, "namespaces", "rm", name))
    line = lines.wait_for(lambda ln: "/namespaces/delete" in ln, 10)
    assert line is not None and json.loads(line)["event"] == {"name": name}
    assert not any("/content/" in ln for ln in lines.seen)
    p.send_signal(signal.SIGINT)  # Ctrl-C
    assert p.wait(10) == 0


@pytest.mark.integration
@pytest.mark.skipif(CTR is None, reason="ctr is not installed")
def test_events_from_ctr_actions(daemon, procs):
    # what ctr does shows up in ctrctl's stream
    p, lines = _start_events(daemon, procs)
    _create_until_seen(daemon, lines, lambda ln, n: n in ln)
    name = unique("ctr")
    r = subprocess.run([CTR, "--address", daemon.address, "namespaces", "create", name],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert lines.wait_for(lambda ln: f'"{name}"' in ln, 10), lines.seen


# -- interoperability with ctr ----------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.skipif(CTR is None, reason="ctr is not installed")
def test_ctr_reads_what_ctrctl_wrote_and_back(ns, tmp_path):
    ours = os.urandom(3 * MiB + 5)
    digest = ns.ingest(ours, "--label", "from=ctrctl")
    r = ns.ctr("content", "get", digest)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ours
    r = ns.ctr("content", "ls")
    assert digest.encode() in r.stdout and b"from=ctrctl" in r.stdout

    theirs = os.urandom(2 * MiB + 3)
    r = ns.ctr("content", "ingest", unique("ctr"), input=theirs)
    assert r.returncode == 0, r.stderr
    assert ns.get(sha(theirs)) == theirs
    assert {i["digest"] for i in ns.ls()} == {digest, sha(theirs)}

    # ctr labels, ctrctl sees; ctrctl removes, ctr no longer finds it
    r = ns.ctr("content", "label", sha(theirs), "by=ctr")
    assert r.returncode == 0, r.stderr
    assert next(i for i in ns.ls() if i["digest"] == sha(theirs))["labels"] == {"by": "ctr"}
    ns.ok("content", "rm", digest)
    r = ns.ctr("content", "get", digest)
    assert r.returncode != 0 and b"not found" in r.stderr


@pytest.mark.integration
@pytest.mark.skipif(CTR is None, reason="ctr is not installed")
def test_ctr_and_ctrctl_leases(ns):
    lid = ns.ok("leases", "create", "--id", unique("l"), "who=ctrctl").decode().strip()
    r = ns.ctr("leases", "ls")
    assert r.returncode == 0 and lid.encode() in r.stdout
    assert b"containerd.io/gc.expire=" in r.stdout and b"who=ctrctl" in r.stdout
    r = ns.ctr("leases", "create", "--id", "from-ctr")
    assert r.returncode == 0, r.stderr
    ids = ns.ok("leases", "ls", "-q").decode().split()
    assert sorted(ids) == sorted([lid, "from-ctr"])
    r = ns.ctr("leases", "rm", lid)
    assert r.returncode == 0, r.stderr
    assert ns.ok("leases", "ls", "-q").decode() == "from-ctr\n"


# -- resources: a transfer never holds the blob in memory ------------------------------------

def _max_rss_mib(cmd: list[str], **kw) -> int:
    """Peak RSS of ``cmd``, measured in a fresh interpreter (children of this one only)."""
    script = ("import resource, subprocess, sys\n"
              "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
              "assert r.returncode == 0, r.returncode\n"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n")
    r = subprocess.run([sys.executable, "-c", script, *cmd], capture_output=True, text=True,
                       env=clean_env(), timeout=300, **kw)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


@pytest.mark.integration
def test_large_transfers_stream(ns, tmp_path):
    size = 256 * MiB
    path = tmp_path / "large"
    h = hashlib.sha256()
    with open(path, "wb") as f:
        block = os.urandom(MiB)
        for i in range(size // MiB):
            chunk = block[:-4] + i.to_bytes(4, "big")
            h.update(chunk)
            f.write(chunk)
    digest = "sha256:" + h.hexdigest()
    rss = _max_rss_mib(CTRCTL + ns.args("content", "ingest", unique("big"), "--file",
                                        str(path)))
    assert rss < 150, f"ingest of {size >> 20} MiB peaked at {rss} MiB"
    rss = _max_rss_mib(CTRCTL + ns.args("content", "get", digest))
    assert rss < 150, f"get of {size >> 20} MiB peaked at {rss} MiB"
    r = subprocess.run(CTRCTL + ns.args("content", "get", digest), capture_output=True,
                       env=clean_env())
    assert hashlib.sha256(r.stdout).hexdigest() == digest.removeprefix("sha256:")


@pytest.mark.integration
def test_progress_bar_on_a_terminal_only(ns, tmp_path):
    import pty

    data = os.urandom(4 * MiB)
    path = tmp_path / "p"
    path.write_bytes(data)
    master, slave = pty.openpty()
    try:
        r = subprocess.run(CTRCTL + ns.args("content", "ingest", "tty-ref", "--file",
                                            str(path)),
                           stdout=subprocess.PIPE, stderr=slave, env=clean_env(), timeout=60)
        os.close(slave)
        slave = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert r.returncode == 0 and r.stdout.decode().strip() == sha(data)
    assert b"tty-ref" in drawn and b"4.0/4.0 MiB" in drawn
    # not a terminal: stderr stays empty
    r = ns("content", "ingest", "pipe-ref", "--file", str(path))
    assert r.returncode == 0 and r.stderr == b""


# -- unit tests: no daemon ----------------------------------------------------------------------

@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                    (1536, "1.5 KiB"), (5 * MiB + 12345, "5.0 MiB"),
                                    (12 * MiB, "12 MiB"), (1 << 30, "1.0 GiB")])
def test_human_size(n, text):
    from ctrd.cli.output import human_size

    assert human_size(n) == text


@pytest.mark.parametrize("seconds,text", [(0.2, "Less than a second"), (1, "1 second"),
                                          (59, "59 seconds"), (60, "About a minute"),
                                          (300, "5 minutes"), (3600, "About an hour"),
                                          (5 * 3600, "5 hours"), (3 * 86400, "3 days")])
def test_human_duration(seconds, text):
    from ctrd.cli.output import human_duration

    assert human_duration(seconds) == text


def test_times():
    from google.protobuf import timestamp_pb2

    from ctrd.cli.output import age, rfc3339

    ts = timestamp_pb2.Timestamp(seconds=1714564800, nanos=123456789)
    assert rfc3339(ts) == "2024-05-01T12:00:00.123456789Z"
    assert rfc3339(1714564800.5) == "2024-05-01T12:00:00.500000Z"
    local = rfc3339(ts, local=True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", local)
    assert datetime.fromisoformat(local.replace("Z", "+00:00")).timestamp() == 1714564800
    assert age(ts, now=1714564800 + 300) == "5 minutes ago"
    assert age(timestamp_pb2.Timestamp()) == "-"


def test_lease_ids_and_expiry_like_ctr():
    from ctrd.cli.ctrctl import gc_expire, random_lease_id

    ids = {random_lease_id() for _ in range(50)}
    assert len(ids) > 45
    assert all(re.fullmatch(r"\d{1,9}-[A-Za-z0-9_-]{4}", i) for i in ids)
    at = datetime.fromisoformat(gc_expire(3600).replace("Z", "+00:00"))
    assert abs((at - datetime.now(timezone.utc)).total_seconds() - 3600) < 5


def test_decode_events():
    from google.protobuf import any_pb2

    from ctrd import typeurl
    from ctrd.api.containerd.events import content_pb2, namespace_pb2
    from ctrd.cli.ctrctl import decode_event, event_types

    ev = typeurl.pack(namespace_pb2.NamespaceCreate(name="x", labels={"a": "b"}))
    assert decode_event(ev) == ("containerd.events.NamespaceCreate",
                                {"name": "x", "labels": {"a": "b"}})
    # the Go-style prefixed URL decodes too
    ev = any_pb2.Any(type_url="type.googleapis.com/containerd.events.ContentDelete",
                     value=content_pb2.ContentDelete(digest="sha256:ab").SerializeToString())
    assert decode_event(ev) == ("containerd.events.ContentDelete", {"digest": "sha256:ab"})
    # image events live in containerd.services.images.v1, as in containerd
    assert "containerd.services.images.v1.ImageCreate" in event_types()
    assert "containerd.events.TaskExit" in event_types()
    unknown = any_pb2.Any(type_url="example.com/Unknown", value=b"\x01")
    assert decode_event(unknown) == ("example.com/Unknown", None)


def test_iter_chunks_gathers_short_reads():
    from ctrd.cli.output import iter_chunks

    src = io.BytesIO(os.urandom(10_000))

    def trickle(n):  # a pipe that returns at most 700 bytes per read
        return src.read(min(n, 700))

    blocks = list(iter_chunks(trickle, 4096))
    assert [len(b) for b in blocks] == [4096, 4096, 10_000 - 8192]
    assert b"".join(blocks) == src.getvalue()
    assert list(iter_chunks(io.BytesIO(b"").read, 4096)) == []
    assert [len(b) for b in iter_chunks(io.BytesIO(b"x" * 8192).read, 4096)] == [4096, 4096]


def test_progress_is_silent_off_a_terminal():
    from ctrd.cli.output import progress

    out = io.StringIO()
    with progress("ref", total=10, stream=out) as bar:
        bar.advance(10)
    assert out.getvalue() == ""


def test_new_commands_do_not_import_grpc_for_help():
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from ctrd.cli.ctrctl import main\n"
                        "for args in (['content', '--help'], ['content', 'ingest', '--help'],"
                        " ['leases', '--help'], ['events', '--help'], ['gc', '--help']):\n"
                        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
                        "assert 'grpc' not in sys.modules, 'grpc imported'\n"
                        "assert 'rich' not in sys.modules, 'rich imported'\n"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
