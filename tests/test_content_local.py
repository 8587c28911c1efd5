"""The on-disk content store: the conformance suite, containerd's layout, crashes, hostile
input, and the cost of a write."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from ctrd.content import local
from ctrd.content.local import LocalStore, format_timestamp, go_duration, parse_timestamp
from ctrd.content.testsuite import EMPTY, ContentSuite, content, digest_of, read_all
from ctrd.errdefs import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound,
                          Unavailable)

# A short lock wait keeps the suite's "ref is busy" checks fast.
make_store = functools.partial(LocalStore, lock_timeout=0.05)


class TestLocalStoreSuite(ContentSuite):
    make_store = staticmethod(make_store)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def commit_blob(store: LocalStore, ref: str, data: bytes) -> str:
    with store.writer(ref) as w:
        w.write(data)
        return w.commit(len(data), digest_of(data))


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return make_store(tmp_path / "io.containerd.content.v1.content")


# --- layout -------------------------------------------------------------------------------------

def test_layout_matches_containerd(store):
    ref = "layer-sha256:" + "ab" * 32
    b, d = content(5000)
    w = store.writer(ref, len(b))
    w.write(b[:1000])
    ing = store.root / "ingest" / sha(ref.encode())
    assert store.ingest_path(ref) == ing
    assert sorted(os.listdir(store.root / "ingest")) == [sha(ref.encode())]
    assert sorted(os.listdir(ing)) == ["data", "ref", "startedat", "total", "updatedat"]
    assert (ing / "ref").read_bytes() == ref.encode()
    assert (ing / "total").read_bytes() == b"5000"
    assert (ing / "data").read_bytes() == b[:1000]
    # Go's time.MarshalText (RFC 3339 with up to nine fractional digits).
    started = (ing / "startedat").read_bytes()
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", started), started
    w.write(b[1000:])
    assert w.commit(len(b), d) == d
    w.close()
    blob = store.root / "blobs" / "sha256" / d.split(":")[1]
    assert store.blob_path(d) == blob
    assert os.listdir(store.root / "ingest") == []
    assert os.listdir(blob.parent) == [blob.name]
    # Read-only, as containerd leaves it (its creation mode minus write and exec bits).
    assert stat.S_IMODE(blob.stat().st_mode) == 0o666 & ~0o333 & ~_umask()
    out = subprocess.run(["sha256sum", str(blob)], check=True, capture_output=True, text=True)
    assert out.stdout.split()[0] == d.split(":")[1]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_expected_is_kept_beside_containerd_files(store):
    b, d = content(10)
    with store.writer("exp", 10, d) as w:
        w.write(b[:3])
    ing = store.ingest_path("exp")
    assert (ing / "expected").read_text() == d
    assert store.status("exp").expected == d
    with store.writer("exp") as w:  # resumed: the announced digest still applies
        assert w.status().expected == d and w.status().total == 10


def test_resumes_an_ingest_containerd_wrote(store):
    """containerd's timestamps carry the local offset; no expected file."""
    b, d = content(300)
    ref = "config-" + d
    ing = store.ingest_path(ref)
    ing.mkdir(parents=True)
    (ing / "ref").write_bytes(ref.encode())
    (ing / "data").write_bytes(b[:100])
    (ing / "startedat").write_bytes(b"2024-03-01T10:00:00.123456789+01:00")
    (ing / "updatedat").write_bytes(b"2024-03-01T10:00:05.5+01:00")
    (ing / "total").write_bytes(b"300")
    st = store.status(ref)
    assert (st.ref, st.offset, st.total, st.expected) == (ref, 100, 300, "")
    assert st.started_at == pytest.approx(parse_timestamp(b"2024-03-01T09:00:00.123456789Z")
                                          / 1e9)
    with store.writer(ref, 300, d) as w:
        assert w.status().offset == 100 and w.digest() == digest_of(b[:100])
        w.write(b[100:])
        assert w.commit(0, "") == d
    assert read_all(store, d) == b


def test_timestamps_round_trip_go_format():
    ns = 1_700_000_000_123_456_789
    assert format_timestamp(ns) == b"2023-11-14T22:13:20.123456789Z"
    assert parse_timestamp(format_timestamp(ns)) == ns
    assert format_timestamp(1_700_000_000_000_000_000) == b"2023-11-14T22:13:20Z"
    assert parse_timestamp(b"2023-11-14T23:13:20.1234+01:00") == 1_700_000_000_123_400_000
    for bad in (b"", b"yesterday", b"2023-11-14 22:13:20Z", b"2023-11-14T22:13:20"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_updatedat_is_written_lazily_and_status_uses_mtime(store):
    w = store.writer("lazy")
    ing = store.ingest_path("lazy")
    before = (ing / "updatedat").read_bytes()
    time.sleep(0.05)
    t0 = time.time()
    w.write(b"x" * 100)
    assert (ing / "updatedat").read_bytes() == before  # no metadata I/O per write
    assert store.status("lazy").updated_at >= t0 - 0.02  # data's mtime
    assert w.status().updated_at >= t0
    w.close()
    assert parse_timestamp((ing / "updatedat").read_bytes()) / 1e9 == pytest.approx(
        w.status().updated_at, abs=1e-6)


def test_info_times_are_commit_time_and_reads_keep_them(store):
    b, _ = content(100)
    t0 = time.time()
    d = commit_blob(store, "t", b)
    t1 = time.time()
    info = store.info(d)
    assert t0 - 0.01 <= info.created_at <= t1 + 0.01
    assert info.updated_at == info.created_at
    time.sleep(0.02)
    with store.reader(d) as r:
        r.read_at(0, 100)
    if os.geteuid() == 0 or store.blob_path(d).stat().st_uid == os.geteuid():
        assert store.info(d).updated_at == info.updated_at  # O_NOATIME


# --- locks --------------------------------------------------------------------------------------

def test_lock_message_is_containerds(store):
    w = store.writer("busy/ref")
    try:
        with pytest.raises(Unavailable) as e:
            store.writer("busy/ref")
        assert re.fullmatch(r"ref busy/ref locked for [0-9.]+(ns|µs|ms|s) \(since "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? [+-]\d{4} \S+\): "
                            r"unavailable", str(e.value)), str(e.value)
    finally:
        w.close()


def test_go_duration():
    assert [go_duration(n) for n in (0, 999, 1500, 2_000_000, 1_234_567_890,
                                     61_500_000_000, 3_600_000_000_000 + 1)] == \
        ["0s", "999ns", "1.5µs", "2ms", "1.23456789s", "1m1.5s", "1h0m0.000000001s"]


def test_writer_waits_briefly_for_a_closing_holder(tmp_path):
    """A second writer of a held ref waits, and is woken by the holder letting go: with an
    hour's lock timeout it can only return because the holder's close notified it."""
    s = LocalStore(tmp_path / "c", lock_timeout=3600.0)
    w = s.writer("r")
    closing = threading.Event()
    got: list = []

    def second_writer():
        try:
            s.writer("r").close()
            got.append(closing.is_set())  # acquired only after the holder began to close
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            got.append(e)

    t = threading.Thread(target=second_writer)
    t.start()
    threading.Timer(0.1, lambda: (closing.set(), w.close())).start()
    t.join(60)  # a guard against a lost wake-up hanging the suite, not a measurement
    assert not t.is_alive(), "the waiting writer was not woken by the holder's close"
    assert got == [True]


def test_lock_is_per_root_and_shared_across_spellings(tmp_path):
    a = make_store(tmp_path / "a")
    b = make_store(tmp_path / "b")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    a_again = make_store(tmp_path / "link")
    with a.writer("same"):
        b.writer("same").close()  # another root: independent
        with pytest.raises(Unavailable):
            a_again.writer("same")


def test_dropped_writer_releases_its_ref(store):
    w = store.writer("dropped")
    w.write(b"abc")
    del w
    with store.writer("dropped") as w:
        assert w.status().offset == 3


def test_another_process_holding_the_ref(store):
    """The flock on data keeps a second process out; it goes with the process."""
    child = _spawn(store.root, """
        w = s.writer("shared-ref")
        w.write(b"0123456789")
        print("ready", flush=True)
        time.sleep(60)
    """)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(Unavailable, match="locked by another process"):
            store.writer("shared-ref")
        assert store.status("shared-ref").offset == 10  # the ingest was left alone
    finally:
        child.kill()
        child.wait()
    with store.writer("shared-ref") as w:
        assert w.status().offset == 10


# --- crashes ------------------------------------------------------------------------------------

def _spawn(root: Path, body: str) -> subprocess.Popen:
    code = "import os, sys, time, random, hashlib\n" \
           "from ctrd.content.local import LocalStore\n" \
           f"s = LocalStore({str(root)!r})\n" + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_kill_9_mid_write_then_resume(store):
    b, d = content(3 * (1 << 20))
    src = store.root.parent / "src"
    src.write_bytes(b)
    child = _spawn(store.root, f"""
        data = open({str(src)!r}, "rb").read()
        w = s.writer("crash", len(data))
        w.write(data[:len(data) // 2])
        os.kill(os.getpid(), 9)
    """)
    assert child.wait() == -signal.SIGKILL
    assert not (store.root / "blobs").exists() or not any((store.root / "blobs").rglob("*"))
    s2 = make_store(store.root)  # a restart
    [st] = s2.list_statuses()
    assert (st.ref, st.offset, st.total) == ("crash", len(b) // 2, len(b))
    with s2.writer("crash", len(b), d) as w:
        assert w.digest() == digest_of(b[:len(b) // 2])
        w.write(b[len(b) // 2:])
        assert w.commit(len(b), d) == d
    assert read_all(s2, d) == b
    assert s2.list_statuses() == []


CRASH_LOOP = """
    # Write and commit blobs forever; the test kills us at a random moment.
    i = 0
    while True:
        seed = {start} + i
        size = random.Random(seed).randrange(1, 4 << 20)
        data = random.Random(seed).randbytes(size)
        w = s.writer(f"blob-{{seed}}", size)
        for off in range(0, size, 1 << 18):
            w.write(data[off:off + (1 << 18)])
        w.commit(size, "sha256:" + hashlib.sha256(data).hexdigest())
        i += 1
        if i == 1:
            print("ready", flush=True)
"""


def test_kill_9_at_random_points_never_leaves_a_partial_blob(store):
    rng = random.Random(1234)
    for round_ in range(8):
        child = _spawn(store.root, CRASH_LOOP.format(start=round_ * 1000))
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        s = make_store(store.root)
        # Every blob is complete and verified, read-only, and named by its digest.
        blobs = store.root / "blobs" / "sha256"
        for p in blobs.iterdir():
            assert sha(p.read_bytes()) == p.name, p
            assert not stat.S_IMODE(p.stat().st_mode) & 0o222
        assert {i.digest for i in s.walk()} == {"sha256:" + p.name for p in blobs.iterdir()}
        # Whatever was in flight resumes and commits.
        for st in s.list_statuses():
            seed = int(st.ref.split("-")[1])
            size = random.Random(seed).randrange(1, 4 << 20)
            data = random.Random(seed).randbytes(size)
            assert st.total == size and st.offset <= size
            try:
                w = s.writer(st.ref, size)
            except AlreadyExists:
                continue
            with w:
                assert w.digest() == digest_of(data[:w.status().offset])
                w.write(data[w.status().offset:])
                try:
                    w.commit(size, digest_of(data))
                except AlreadyExists:  # killed between rename and ingest removal
                    pass
            assert read_all(s, digest_of(data)) == data
        assert s.list_statuses() == []


def test_killed_between_readonly_and_rename_resumes(store):
    """A commit killed after making data read-only leaves an ingest that still resumes."""
    b, d = content(1000)
    with store.writer("ro") as w:
        w.write(b)
    os.chmod(store.ingest_path("ro") / "data", 0o444)
    with store.writer("ro") as w:
        assert w.status().offset == 1000
        assert w.commit(1000, d) == d


# --- damaged and hostile state ------------------------------------------------------------------

def test_damaged_ingest_dirs_are_skipped(store):
    with store.writer("good") as w:
        w.write(b"ok")
    with store.writer("bad-times") as w:
        w.write(b"abc")
    bt = store.ingest_path("bad-times")
    (bt / "startedat").write_bytes(b"garbage")
    (bt / "updatedat").unlink()
    (bt / "total").write_bytes(b"-5x")
    (bt / "expected").write_bytes(b"sha256:nope")
    ingest = store.root / "ingest"
    (ingest / sha(b"no-ref")).mkdir()  # crash between mkdir and metadata
    (ingest / sha(b"no-ref") / "data").write_bytes(b"zzz")
    (ingest / sha(b"foreign")).mkdir()  # ref does not hash to the directory name
    (ingest / sha(b"foreign") / "ref").write_bytes(b"something else")
    (ingest / sha(b"foreign") / "data").write_bytes(b"")
    bad_utf8 = b"\xff\xfe"
    (ingest / sha(bad_utf8)).mkdir()
    (ingest / sha(bad_utf8) / "ref").write_bytes(bad_utf8)
    (ingest / sha(bad_utf8) / "data").write_bytes(b"")
    (ingest / sha(b"no-data")).mkdir()
    (ingest / sha(b"no-data") / "ref").write_bytes(b"no-data")
    (ingest / "not-a-hash").mkdir()
    (ingest / ("f" * 64)).write_bytes(b"a file, not a directory")
    (ingest / sha(b"ref-is-dir")).mkdir()
    (ingest / sha(b"ref-is-dir") / "ref").mkdir()
    (ingest / sha(b"ref-is-dir") / "data").write_bytes(b"")
    got = {s.ref: s for s in store.list_statuses()}
    assert set(got) == {"good", "bad-times"}
    assert (got["bad-times"].offset, got["bad-times"].total, got["bad-times"].expected) == \
        (3, 0, "")
    for ref in ("no-ref", "foreign", "no-data", "ref-is-dir"):
        with pytest.raises(NotFound):
            store.status(ref)
    # A ref whose directory lost its ref file starts over when opened.
    with store.writer("no-ref") as w:
        assert w.status().offset == 0
        w.write(b"fresh")
    assert store.status("no-ref").offset == 5
    with store.writer("bad-times") as w:
        assert w.status().offset == 3 and w.digest() == digest_of(b"abc")


def test_stray_blob_files_are_not_walked(store):
    b, _ = content(10)
    d = commit_blob(store, "real", b)
    blobs = store.root / "blobs"
    (blobs / "sha256" / (d.split(":")[1] + ".tmp")).write_bytes(b"x")
    (blobs / "sha256" / "notahash").write_bytes(b"x")
    (blobs / "sha256" / ("0" * 64)).mkdir()
    (blobs / "sha256" / ("1" * 64)).symlink_to("/etc/passwd")
    (blobs / "md5").mkdir()
    (blobs / "md5" / ("0" * 32)).write_bytes(b"x")
    (blobs / "stray-file").write_bytes(b"x")
    assert [i.digest for i in store.walk()] == [d]


def test_restart_with_a_different_total_starts_over(store):
    """As containerd: a resume that announces another size is another blob."""
    with store.writer("re", 100) as w:
        w.write(b"x" * 50)
    with store.writer("re", 200) as w:
        assert (w.status().offset, w.status().total) == (0, 200)
    with store.writer("re") as w:  # no total given: resume whatever is there
        assert w.status().total == 200


def test_hostile_refs_never_become_paths(store):
    refs = ["../../../../../tmp/ctrd-escape", "a/../../b", "/etc/passwd", "..", "\x00/..",
            "x" * 4096, "ingest/../blobs/sha256/" + "a" * 64]
    for ref in refs:
        with store.writer(ref) as w:
            w.write(ref.encode())
    names = sorted(os.listdir(store.root / "ingest"))
    assert names == sorted(sha(r.encode()) for r in refs)
    for n in names:
        assert sorted(os.listdir(store.root / "ingest" / n)) == \
            ["data", "ref", "startedat", "updatedat"]
    assert not os.path.exists("/tmp/ctrd-escape")
    assert sorted(os.listdir(store.root)) == ["ingest"]
    assert sorted(os.listdir(store.root.parent)) == [store.root.name]
    with pytest.raises(InvalidArgument):
        store.writer("lone \udc80 surrogate")


def test_invalid_digest_is_never_a_path(store, monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(local.os, "open", lambda p, *a, **k: opened.append(p) or
                        real_open(p, *a, **k))
    for bad in ("sha256:../../../../etc/passwd", "sha256:" + "a" * 63 + "/", "../x"):
        for call in (store.info, store.reader, store.delete):
            with pytest.raises(InvalidArgument):
                call(bad)
    assert opened == []


# --- writer details -----------------------------------------------------------------------------

def test_truncate_to_a_middle_offset(store):
    b, d = content(10000)
    with store.writer("mid") as w:
        w.write(b[:6000] + b"garbage")
        w.truncate(6000)
        assert w.status().offset == 6000 and w.digest() == digest_of(b[:6000])
        with pytest.raises(InvalidArgument):
            w.truncate(6001)
        with pytest.raises(InvalidArgument):
            w.truncate(-1)
        w.write(b[6000:])
        assert w.commit(10000, d) == d


def test_failed_commit_keeps_the_writer(store):
    b, d = content(100)
    w = store.writer("retry")
    w.write(b"wrong")
    with pytest.raises(FailedPrecondition):
        w.commit(100, d)
    with pytest.raises(Unavailable):  # still held
        store.writer("retry")
    w.truncate(0)
    w.write(b)
    assert w.commit(100, d) == d
    w.close()


def test_abort_under_an_open_writer(store):
    """As containerd, abort does not wait for the writer; its commit then fails and
    publishes nothing."""
    b, d = content(100)
    w = store.writer("doomed")
    w.write(b[:50])
    store.abort("doomed")
    assert store.list_statuses() == []
    w.write(b[50:])
    with pytest.raises(NotFound, match="aborted"):
        w.commit(100, d)
    w.close()
    with pytest.raises(NotFound):
        store.info(d)
    with store.writer("doomed") as w2:
        assert w2.status().offset == 0


def test_already_exists_at_open_and_message(store):
    b, _ = content(10)
    d = commit_blob(store, "a", b)
    with pytest.raises(AlreadyExists, match=f"^content {d}: already exists$"):
        store.writer("b", 10, d)
    with store.writer("c") as w:
        w.write(b)
        with pytest.raises(AlreadyExists, match=f"^content {d}: already exists$"):
            w.commit(10, d)
    assert not store.ingest_path("c").exists()


def test_error_messages(store):
    _, d = content(10)
    with pytest.raises(NotFound, match=f"^content {d}: not found$"):
        store.info(d)
    with pytest.raises(NotFound, match=f"^content digest {d}: not found$"):
        store.reader(d)
    with pytest.raises(NotFound, match='^ingest ref "x/y": not found$'):
        store.abort("x/y")
    with pytest.raises(InvalidArgument, match="ref must not be empty"):
        store.writer("")
    with store.writer("m") as w:
        w.write(b"abc")
        with pytest.raises(FailedPrecondition,
                           match=r"^unexpected commit size 3, expected 4: failed precondition$"):
            w.commit(4, "")
        with pytest.raises(FailedPrecondition,
                           match=f"^unexpected commit digest {digest_of(b'abc')}, "
                                 f"expected {EMPTY}: failed precondition$"):
            w.commit(3, EMPTY)


def test_rename_never_replaces(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    with pytest.raises(FileExistsError):
        local._rename_noreplace(str(a), str(b))
    monkeypatch.setattr(local, "_renameat2", None)  # the fallback
    with pytest.raises(FileExistsError):
        local._rename_noreplace(str(a), str(b))
    assert b.read_bytes() == b"b"
    local._rename_noreplace(str(a), str(tmp_path / "c"))
    assert (tmp_path / "c").read_bytes() == b"a" and not a.exists()


def test_no_whole_blob_buffering(store):
    """64 MiB in 1 MiB writes, a resume (re-hash) and a commit allocate well under the blob
    size in Python."""
    chunk = os.urandom(1 << 20)
    h = hashlib.sha256()
    tracemalloc.start()
    try:
        w = store.writer("big")
        for _ in range(32):
            w.write(chunk)
            h.update(chunk)
        w.close()
        w = store.writer("big")
        assert w.status().offset == 32 << 20
        for _ in range(32):
            w.write(chunk)
            h.update(chunk)
        d = w.commit(64 << 20, "sha256:" + h.hexdigest())
        with store.reader(d) as r:
            assert len(r.read_at((64 << 20) - 10, 100)) == 10
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.parametrize("chunk", [100 << 10, 1 << 20], ids=["inline", "parallel"])
def test_a_full_disk_keeps_offset_and_digest_true(tiny_fs, chunk):
    """A write cut short by ENOSPC counts and hashes exactly what reached the file, on both
    write paths; the ingest then truncates and completes."""
    s = LocalStore(tiny_fs / "content")
    w = s.writer("full")
    data = os.urandom(chunk)
    with pytest.raises(OSError) as e:
        for _ in range(20):
            w.write(data)
    assert e.value.errno == errno.ENOSPC
    on_disk = (s.ingest_path("full") / "data").read_bytes()
    assert 0 < len(on_disk) < 20 * chunk and len(on_disk) % chunk  # a short write happened
    assert w.status().offset == len(on_disk)
    assert w.digest() == digest_of(on_disk)
    w.truncate(0)
    w.write(b"small")
    assert w.commit(5, digest_of(b"small")) == digest_of(b"small")
    w.close()
