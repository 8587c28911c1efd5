"""A conformance suite for content stores (ctrd's ``content/testsuite``, after containerd's).

Any implementation of :class:`ctrd.content.store.Store` runs it with a factory
``make_store(root: Path) -> Store`` that opens a store on an existing, initially empty
directory. Calling the factory again on the same root must give a store that sees the same
content and ingests: that is how the suite simulates a daemon restart.

From pytest, subclass :class:`ContentSuite` (the class name must start with ``Test``)::

    from ctrd.content.testsuite import ContentSuite

    class TestMyStore(ContentSuite):
        make_store = staticmethod(lambda root: MyStore(root))

or parametrize over :data:`CHECKS` yourself::

    @pytest.mark.parametrize("name", sorted(CHECKS))
    def test_content(name, tmp_path):
        run_check(name, MyStore, tmp_path)

Without pytest, :func:`run_all` runs every check and returns the failures. The suite needs
nothing but the standard library.

The checks cover containerd 1.6's suite (Writer, UpdateStatus, CommitExists, Resume,
ResumeTruncate, ResumeDiscard, ResumeCopy*, SmallBlob, CommitErrorState; labels and namespaces
belong to the metadata layer) and the rest of ctrd's contract: restart, status/list/abort,
concurrency, failed commits that publish nothing, truncate, reads at offsets, delete, walk,
hostile refs and invalid digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from ctrd import testsuite as _suite
from ctrd.content.store import Store
from ctrd.errdefs import (AlreadyExists, CtrdError, FailedPrecondition, InvalidArgument,
                          NotFound, Unavailable)

StoreFactory = Callable[[Path], Store]

# Timestamps a store derives from the file system (mtimes) may trail the wall clock by a
# kernel tick; the ones it keeps itself should not, but floats round.
SLACK = 0.05
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class SuiteEnv:
    """What a check gets: a base directory, the store root inside it, and the factory."""

    def __init__(self, make_store: StoreFactory, base: Path) -> None:
        self.base = Path(base)
        # Three levels deep, so a ref that escapes with "../.." lands where we can see it.
        self.root = self.base / "a" / "b" / "store"
        self.root.mkdir(parents=True, exist_ok=True)
        self._make = make_store
        self.stores: list[Store] = []

    def make(self) -> Store:
        """A store on ``root``; a second call is a restart."""
        s = self._make(self.root)
        self.stores.append(s)
        return s


CHECKS: dict[str, Callable[[SuiteEnv], None]] = {}


def check(fn: Callable[[SuiteEnv], None]) -> Callable[[SuiteEnv], None]:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def run_check(name: str, make_store: StoreFactory, base: Path) -> None:
    """Run one check in ``base`` (an empty directory)."""
    CHECKS[name](SuiteEnv(make_store, base))


def run_all(make_store: StoreFactory, base: Path) -> dict[str, str]:
    """Run every check, each in its own directory under ``base``; return name -> traceback
    for the failures (empty when the implementation conforms)."""
    return _suite.run_all(CHECKS, run_check, make_store, base)


class ContentSuite:
    """Every check as a pytest test method; subclass it as ``Test...`` and set
    ``make_store`` (a staticmethod, or a method taking ``root``)."""

    @staticmethod
    def make_store(root: Path) -> Store:
        raise NotImplementedError("set make_store on the ContentSuite subclass")


def _add_methods() -> None:
    _suite.add_test_methods(ContentSuite, CHECKS, run_check, "make_store")


# --- helpers ------------------------------------------------------------------------------------

_seed = 0


def content(size: int) -> tuple[bytes, str]:
    """Reproducible pseudo-random bytes, different on every call, and their digest."""
    global _seed
    _seed += 1
    b = random.Random(_seed).randbytes(size)
    return b, digest_of(b)


def digest_of(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


@contextlib.contextmanager
def raises(*kinds: type[BaseException], match: str = "") -> Iterator[None]:
    try:
        yield
    except kinds as e:
        if match and match not in str(e):
            raise AssertionError(f"{type(e).__name__} {str(e)!r} does not contain {match!r}")
        return
    names = " or ".join(k.__name__ for k in kinds)
    raise AssertionError(f"expected {names}, nothing raised")


def copy(w, data: bytes, chunk: int = 32) -> None:
    for i in range(0, len(data), chunk):
        part = data[i:i + chunk]
        n = w.write(part)
        assert n == len(part), f"short write {n} of {len(part)}"


def write_blob(store: Store, ref: str, data: bytes, total: int = 0, expected: str = "") -> str:
    w = store.writer(ref, total, expected)
    try:
        copy(w, data, 1 << 16)
        return w.commit(len(data), expected)
    finally:
        w.close()


def read_all(store: Store, dgst: str) -> bytes:
    r = store.reader(dgst)
    try:
        return r.read_at(0, r.size)
    finally:
        r.close()


def within(t: float, lo: float, hi: float, what: str, slack: float = 1e-3) -> None:
    assert lo - slack <= t <= hi + slack, f"{what} {t} not within [{lo}, {hi}]"


def check_status(w, ref: str, offset: int, total: int, expected: str, dgst: str,
                 started: tuple[float, float], updated: tuple[float, float]) -> None:
    st = w.status()
    assert w.digest() == dgst, f"writer digest {w.digest()}, expected {dgst}"
    assert st.ref == ref, (st.ref, ref)
    assert st.offset == offset, f"offset {st.offset}, expected {offset}"
    assert st.total == total, f"total {st.total}, expected {total}"
    assert st.expected == expected, f"expected {st.expected!r}, want {expected!r}"
    within(st.started_at, *started, "started_at")
    within(st.updated_at, *updated, "updated_at")


def check_info(store: Store, dgst: str, size: int, created: tuple[float, float]) -> None:
    info = store.info(dgst)
    assert info.digest == dgst
    assert info.size == size, f"size {info.size}, expected {size}"
    within(info.created_at, *created, "created_at", SLACK)


def assert_unavailable(store: Store, ref: str) -> None:
    with raises(Unavailable):
        w = store.writer(ref)
        w.close()


def assert_not_visible(store: Store, dgst: str) -> None:
    with raises(NotFound):
        store.info(dgst)
    with raises(NotFound):
        store.reader(dgst).close()
    assert dgst not in {i.digest for i in store.walk()}


# --- containerd's suite -------------------------------------------------------------------------

@check
def check_writer(env: SuiteEnv) -> None:
    """Writers with no descriptor, a size, a digest, or both; small writes; commit; info."""
    cs = env.make()
    cases = []
    for i, (with_size, with_digest) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        b, d = content(256)
        w = cs.writer(f"c{i + 1}", len(b) if with_size else 0, d if with_digest else "")
        cases.append((b, d, w))
    for b, d, w in cases:
        try:
            copy(w, b, 32)
            pre = time.time()
            assert w.commit(0, "", {"containerd.io/gc.root": "now"}) == d
            post = time.time()
            assert w.digest() == d
            check_info(cs, d, len(b), (pre, post))
            assert read_all(cs, d) == b
        finally:
            w.close()


@check
def check_update_status(env: SuiteEnv) -> None:
    """Status after each write: offset, total, expected, digest so far, times."""
    cs = env.make()
    b, d = content(256)
    pre_start = time.time()
    w = cs.writer("c1", 256, d)
    try:
        post_start = time.time()
        check_status(w, "c1", 0, 256, d, EMPTY, (pre_start, post_start),
                     (pre_start, post_start))
        for lo, hi in ((0, 64), (64, 192), (192, 256)):
            pre = time.time()
            w.write(b[lo:hi])
            post = time.time()
            check_status(w, "c1", hi, 256, d, digest_of(b[:hi]), (pre_start, post_start),
                         (pre, post))
        pre = time.time()
        w.commit(0, "")
        post = time.time()
        check_info(cs, d, 256, (pre, post))
    finally:
        w.close()


def _resume_writer(env: SuiteEnv, restart: bool) -> None:
    cs = env.make()
    ref = "cb"
    b, d = content(256)
    first, second = b[:128], b[128:]
    pre_start = time.time()
    w1 = cs.writer(ref, 256, d)
    post_start = time.time()
    w1.write(first)
    post_update = time.time()
    window = ((pre_start, post_start), (post_start, post_update))
    check_status(w1, ref, 128, 256, d, digest_of(first), *window)
    w1.close()

    if restart:
        cs = env.make()
    w2 = cs.writer(ref, 256, d)
    try:
        # Consistent with the status before close (times included).
        check_status(w2, ref, 128, 256, d, digest_of(first), *window)
        pre = time.time()
        w2.write(second)
        post = time.time()
        check_status(w2, ref, 256, 256, d, d, window[0], (pre, post))
        pre = time.time()
        assert w2.commit(0, "") == d
        post = time.time()
    finally:
        w2.close()
    check_info(cs, d, 256, (pre, post))
    assert read_all(cs, d) == b


@check
def check_resume(env: SuiteEnv) -> None:
    """Close half way, reopen the ref: offset, digest and times carry over; finish."""
    _resume_writer(env, restart=False)


@check
def check_resume_after_restart(env: SuiteEnv) -> None:
    """As resume, but reopened through a new store instance on the same root."""
    _resume_writer(env, restart=True)


def _resume_variants(env: SuiteEnv, how: str, restart: bool = False) -> None:
    cs = env.make()
    for i, size in enumerate((500, 5000, 50000)):
        for j, frac in enumerate((0.0, 0.1, 0.5, 0.9, 1.0)):
            b, d = content(size)
            limit = int(size * frac)
            ref = f"ref-{i}-{j}"
            w = cs.writer(ref, size, d)
            w.write(b[:limit])
            w.close()
            if restart:
                cs = env.make()
            w = cs.writer(ref, size, d)
            try:
                st = w.status()
                assert st.offset == limit, f"offset {st.offset}, expected {limit}"
                pre = time.time()
                if how == "truncate":
                    w.truncate(0)
                    assert w.status().offset == 0 and w.digest() == EMPTY
                    copy(w, b, 1024)
                elif how == "discard":
                    copy(w, b[limit:], 1024)
                else:  # "copy": what content.Copy does, from the status offset
                    copy(w, b[w.status().offset:], 1024)
                assert w.commit(size, d) == d
                post = time.time()
            finally:
                w.close()
            check_info(cs, d, size, (pre, post))
            assert read_all(cs, d) == b


@check
def check_resume_truncate(env: SuiteEnv) -> None:
    """Resume, truncate(0), write everything again, commit (sizes x truncation points)."""
    _resume_variants(env, "truncate")


@check
def check_resume_discard(env: SuiteEnv) -> None:
    """Resume and write only the rest."""
    _resume_variants(env, "discard")


@check
def check_resume_copy_after_restart(env: SuiteEnv) -> None:
    """Resume from the status offset through a new store instance."""
    _resume_variants(env, "copy", restart=True)


@check
def check_small_blob(env: SuiteEnv) -> None:
    """A blob smaller than the read asked for reads back whole."""
    cs = env.make()
    blob = b"foobar"
    d = digest_of(blob)
    w = cs.writer("small", len(blob), d)
    w.write(blob)
    assert w.commit(len(blob), d) == d
    w.close()
    r = cs.reader(d)
    try:
        assert r.size == len(blob)
        assert r.read_at(0, len(blob) + 1) == blob
    finally:
        r.close()


@check
def check_commit_exists(env: SuiteEnv) -> None:
    """Committing content that exists is AlreadyExists, with or without the digest."""
    cs = env.make()
    b, d = content(256)
    write_blob(cs, "c1", b, expected=d)
    for i, expected in enumerate((d, "")):
        ref = f"c1-commitexists-{i}"
        w = cs.writer(ref)
        try:
            w.write(b)
            with raises(AlreadyExists):
                w.commit(len(b), expected)
        finally:
            w.close()
        # The ingest is gone and the ref free again.
        with raises(NotFound):
            cs.status(ref)
        cs.writer(ref).close()
    # Announcing the digest up front fails at once, and leaves the ref free.
    with raises(AlreadyExists):
        cs.writer("c1-announced", len(b), d)
    cs.writer("c1-announced").close()
    assert read_all(cs, d) == b


@check
def check_commit_error_state(env: SuiteEnv) -> None:
    """containerd's CommitErrorState: the ref stays locked until close whatever commit says;
    a failed check leaves the ingest for the next writer."""
    cs = env.make()
    c1, d1 = content(256)
    _, d2 = content(256)
    write_blob(cs, "c1", c1, expected=d1)
    ref = "c1-commiterror-state"

    w = cs.writer(ref)
    w.write(c1)
    assert_unavailable(cs, ref)
    with raises(AlreadyExists):
        w.commit(len(c1), d1)
    w.close()

    w = cs.writer(ref)
    assert_unavailable(cs, ref)
    w.write(c1)
    with raises(AlreadyExists):
        w.commit(len(c1), "")
    w.close()

    w = cs.writer(ref)
    assert_unavailable(cs, ref)
    w.write(c1 + b"more")
    with raises(FailedPrecondition):
        w.commit(len(c1) + 4, d2)
    w.close()

    w = cs.writer(ref)
    assert_unavailable(cs, ref)
    with raises(FailedPrecondition):
        w.commit(len(c1), "")
    w.close()

    w = cs.writer(ref)
    assert_unavailable(cs, ref)
    assert w.commit(len(c1) + 4, "") == digest_of(c1 + b"more")
    w.close()

    w = cs.writer(ref)
    assert w.status().offset == 0
    w.write(c1)
    assert_unavailable(cs, ref)
    with raises(AlreadyExists):
        w.commit(len(c1), d1)
    w.close()

    w = cs.writer(ref)
    assert_unavailable(cs, ref)
    w.close()
    cs.writer(ref).close()


# --- the rest of the contract -------------------------------------------------------------------

@check
def check_commit_wrong_size(env: SuiteEnv) -> None:
    """A size mismatch is FailedPrecondition naming both sizes; nothing is published and the
    ingest keeps its data."""
    cs = env.make()
    b, d = content(1000)
    w = cs.writer("wrong-size")
    try:
        w.write(b)
        # The message names the sizes (wording differs: containerd's local store says
        # "unexpected commit size 1000, expected 999", its metadata layer "... 1000 != 999").
        with raises(FailedPrecondition, match="999"):
            w.commit(999, "")
        assert_not_visible(cs, d)
    finally:
        w.close()
    st = cs.status("wrong-size")
    assert st.offset == 1000
    w = cs.writer("wrong-size")
    try:
        assert w.status().offset == 1000 and w.digest() == d
        assert w.commit(1000, d) == d
    finally:
        w.close()
    assert read_all(cs, d) == b


@check
def check_commit_wrong_digest(env: SuiteEnv) -> None:
    """A digest mismatch is FailedPrecondition naming both digests; nothing is published."""
    cs = env.make()
    b, d = content(1000)
    _, other = content(10)
    w = cs.writer("wrong-digest")
    try:
        w.write(b)
        with raises(FailedPrecondition, match=f"unexpected commit digest {d}, expected {other}"):
            w.commit(1000, other)
        assert_not_visible(cs, other)
        assert_not_visible(cs, d)
    finally:
        w.close()
    assert cs.status("wrong-digest").offset == 1000
    assert list(cs.walk()) == []


@check
def check_commit_checks_open_descriptor(env: SuiteEnv) -> None:
    """The total and digest given when the writer was opened are checked by a commit that
    names neither."""
    cs = env.make()
    b, d = content(100)
    w = cs.writer("total", 200)
    try:
        w.write(b)
        with raises(FailedPrecondition, match="unexpected commit size 100, expected 200"):
            w.commit(0, "")
    finally:
        w.close()
    _, other = content(100)
    w = cs.writer("digest", 0, other)
    try:
        w.write(b)
        with raises(FailedPrecondition, match="unexpected commit digest"):
            w.commit(0, "")
    finally:
        w.close()
    assert list(cs.walk()) == []


@check
def check_commit_releases_ref(env: SuiteEnv) -> None:
    """After a commit the ingest is gone, the ref is free and the writer takes no more data;
    close is harmless."""
    cs = env.make()
    b, d = content(300)
    w = cs.writer("done")
    w.write(b)
    assert w.commit(0, "") == d
    assert w.digest() == d
    with raises(CtrdError):
        w.write(b"more")
    with raises(CtrdError):
        w.commit(0, "")
    w.close()
    w.close()
    with raises(NotFound):
        cs.status("done")
    assert all(s.ref != "done" for s in cs.list_statuses())
    w = cs.writer("done")
    try:
        assert w.status().offset == 0 and w.digest() == EMPTY
    finally:
        w.close()


@check
def check_concurrent_writer_unavailable(env: SuiteEnv) -> None:
    """One writer per ref, from any thread and any store instance on the root; other refs
    are independent; close frees the ref."""
    cs = env.make()
    other = env.make()
    w = cs.writer("busy")
    try:
        w.write(b"abc")
        assert_unavailable(cs, "busy")
        assert_unavailable(other, "busy")
        errors: list[BaseException] = []

        def contend():
            try:
                assert_unavailable(cs, "busy")
            except BaseException as e:  # reported below
                errors.append(e)

        t = threading.Thread(target=contend)
        t.start()
        t.join()
        assert not errors, errors
        cs.writer("not-busy").close()
    finally:
        w.close()
    w = other.writer("busy")
    try:
        assert w.status().offset == 3
    finally:
        w.close()


@check
def check_concurrent_refs(env: SuiteEnv) -> None:
    """Many writers on different refs in threads, interleaved, all commit."""
    cs = env.make()
    blobs = [content(20000 + i) for i in range(8)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            b, d = blobs[i]
            w = cs.writer(f"thread-{i}", len(b), d)
            try:
                copy(w, b, 997)
                assert w.commit(len(b), d) == d
            finally:
                w.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(blobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert {i.digest for i in cs.walk()} == {d for _, d in blobs}
    for b, d in blobs:
        assert read_all(cs, d) == b


@check
def check_concurrent_commit_same_content(env: SuiteEnv) -> None:
    """The same content through several refs at once: every commit succeeds or says
    AlreadyExists, at least one succeeds, and the blob is intact."""
    cs = env.make()
    b, d = content(200000)
    results: list[str] = []
    barrier = threading.Barrier(6)

    def run(i: int) -> None:
        try:
            w = cs.writer(f"same-{i}")
            try:
                copy(w, b, 65536)
                barrier.wait()
                w.commit(len(b), d)
                results.append("ok")
            except AlreadyExists:
                results.append("exists")
            finally:
                w.close()
        except BaseException as e:
            results.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) <= {"ok", "exists"} and "ok" in results, results
    assert read_all(cs, d) == b
    assert [i.digest for i in cs.walk()] == [d]
    assert cs.list_statuses() == []


@check
def check_status_list_abort(env: SuiteEnv) -> None:
    """status/list_statuses see ingests (open or closed, across a restart); abort removes
    one; unknown refs are NotFound."""
    cs = env.make()
    for i in range(3):
        w = cs.writer(f"ingest-{i}", 100 * (i + 1))
        w.write(b"x" * (10 * i))
        w.close()
    w_open = cs.writer("open")
    try:
        w_open.write(b"12345")
        st = cs.status("open")  # written data is visible while the writer is open
        assert st.ref == "open" and st.offset == 5
        refs = {s.ref: s for s in cs.list_statuses()}
        assert set(refs) == {"ingest-0", "ingest-1", "ingest-2", "open"}
    finally:
        w_open.close()
    cs = env.make()
    for i in range(3):
        st = cs.status(f"ingest-{i}")
        assert (st.ref, st.offset, st.total) == (f"ingest-{i}", 10 * i, 100 * (i + 1))
    only = cs.list_statuses(lambda s: s.ref.startswith("ingest-1"))
    assert [s.ref for s in only] == ["ingest-1"]
    cs.abort("ingest-1")
    with raises(NotFound):
        cs.status("ingest-1")
    with raises(NotFound):
        cs.abort("ingest-1")
    with raises(NotFound):
        cs.status("never-was")
    with raises(NotFound):
        cs.abort("never-was")
    assert {s.ref for s in cs.list_statuses()} == {"ingest-0", "ingest-2", "open"}
    w = cs.writer("ingest-1")  # starts over
    try:
        assert w.status().offset == 0 and w.status().total == 0
    finally:
        w.close()


@check
def check_status_times(env: SuiteEnv) -> None:
    """The store's status of an ingest reports when it started and last changed."""
    cs = env.make()
    pre = time.time()
    w = cs.writer("times")
    post = time.time()
    try:
        time.sleep(0.02)
        pre_w = time.time()
        w.write(b"data")
        post_w = time.time()
    finally:
        w.close()
    st = env.make().status("times")
    within(st.started_at, pre, post, "started_at", SLACK)
    within(st.updated_at, pre_w, post_w, "updated_at", SLACK)


@check
def check_empty_ref(env: SuiteEnv) -> None:
    """An empty ref is InvalidArgument; so is a negative total."""
    cs = env.make()
    with raises(InvalidArgument):
        cs.writer("")
    with raises(InvalidArgument):
        cs.writer("neg", -1)
    cs.writer("neg").close()


@check
def check_truncate(env: SuiteEnv) -> None:
    """truncate(0) restarts the ingest: offset 0, empty digest, fresh content commits."""
    cs = env.make()
    junk, _ = content(5000)
    b, d = content(3000)
    w = cs.writer("trunc")
    try:
        w.write(junk)
        w.truncate(0)
        assert w.status().offset == 0 and w.digest() == EMPTY
        assert cs.status("trunc").offset == 0
        copy(w, b, 512)
        assert w.commit(len(b), d) == d
    finally:
        w.close()
    assert read_all(cs, d) == b


@check
def check_read_at(env: SuiteEnv) -> None:
    """Reads at offsets: exact ranges, short at the end, empty at the end, errors for
    negative offsets; past the end is empty or InvalidArgument."""
    cs = env.make()
    b, d = content(10000)
    write_blob(cs, "read", b)
    r = cs.reader(d)
    try:
        assert r.size == len(b)
        for off, n in ((0, 1), (0, 10000), (1, 9999), (4096, 4096), (9999, 1), (5000, 100000),
                       (0, 0), (123, 0)):
            assert r.read_at(off, n) == b[off:off + n], (off, n)
        assert r.read_at(10000, 10) == b""
        try:
            assert r.read_at(10001, 10) == b""
        except InvalidArgument:
            pass
        with raises(InvalidArgument):
            r.read_at(-1, 10)
        # Reads are independent of each other (no shared position).
        assert r.read_at(10, 5) == b[10:15] and r.read_at(0, 5) == b[:5]
    finally:
        r.close()


@check
def check_empty_blob(env: SuiteEnv) -> None:
    """The empty blob commits, reads and walks like any other."""
    cs = env.make()
    w = cs.writer("empty", 0, EMPTY)
    try:
        assert w.commit(0, EMPTY) == EMPTY
    finally:
        w.close()
    assert cs.info(EMPTY).size == 0
    assert read_all(cs, EMPTY) == b""
    assert [i.digest for i in cs.walk()] == [EMPTY]


@check
def check_multi_chunk_blob(env: SuiteEnv) -> None:
    """A blob of a few MiB in 1 MiB writes (plus an odd tail), read back in pieces."""
    cs = env.make()
    b, d = content(3 * (1 << 20) + 12345)
    w = cs.writer("big", len(b), d)
    try:
        copy(w, b, 1 << 20)
        assert w.commit(len(b), d) == d
    finally:
        w.close()
    r = cs.reader(d)
    try:
        got = b"".join(r.read_at(off, 1 << 20) for off in range(0, r.size, 1 << 20))
    finally:
        r.close()
    assert got == b


@check
def check_delete(env: SuiteEnv) -> None:
    """delete removes a blob (NotFound after, and for a second delete); it can be written
    again."""
    cs = env.make()
    b, d = content(100)
    write_blob(cs, "del", b)
    cs.delete(d)
    assert_not_visible(cs, d)
    with raises(NotFound):
        cs.delete(d)
    write_blob(cs, "del", b, expected=d)
    assert read_all(cs, d) == b


@check
def check_walk(env: SuiteEnv) -> None:
    """walk yields every committed blob with its size, and no ingest; also after a
    restart."""
    cs = env.make()
    blobs = dict(reversed(content(n)) for n in (0, 1, 100, 70000))
    for i, (d, b) in enumerate(blobs.items()):
        write_blob(cs, f"walk-{i}", b)
    w = cs.writer("in-progress")
    w.write(b"not a blob yet")
    w.close()
    infos = {i.digest: i for i in env.make().walk()}
    assert set(infos) == set(blobs)
    for d, b in blobs.items():
        assert infos[d].size == len(b)
    cs.delete(next(iter(blobs)))
    assert len(list(cs.walk())) == len(blobs) - 1


@check
def check_not_found(env: SuiteEnv) -> None:
    """info, reader and delete of a valid but absent digest are NotFound."""
    cs = env.make()
    _, d = content(10)
    with raises(NotFound):
        cs.info(d)
    with raises(NotFound):
        cs.reader(d)
    with raises(NotFound):
        cs.delete(d)


INVALID_DIGESTS = [
    "", "sha256", "sha256:", ":abc", "sha256:../../../../etc/passwd",
    "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha256:" + "g" * 64,
    "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256/" + "a" * 64, "../sha256:" + "a" * 64,
    "sha256:" + "a" * 63 + "/", "sha256:" + "a" * 62 + "\x00a", "SHA256:" + "a" * 64,
]


@check
def check_invalid_digests(env: SuiteEnv) -> None:
    """Malformed digests are InvalidArgument everywhere a digest is taken, and touch no
    file."""
    cs = env.make()
    b, _ = content(10)
    for bad in INVALID_DIGESTS:
        with raises(InvalidArgument):
            cs.info(bad)
        with raises(InvalidArgument):
            cs.reader(bad)
        with raises(InvalidArgument):
            cs.delete(bad)
        if not bad:
            continue  # as an expected digest, "" means "no check"
        with raises(InvalidArgument):
            cs.writer("bad-expected", 0, bad)
        w = cs.writer("bad-commit")
        try:
            w.write(b)
            with raises(InvalidArgument, FailedPrecondition):
                w.commit(0, bad)
        finally:
            w.close()
    assert list(cs.walk()) == []
    assert sorted(os.listdir(env.base)) == ["a"]


HOSTILE_REFS = [
    "../../x", "../../../escape", "a/b/c", "/abs/path", "/", ".", "..", "\x00", "nul\x00in",
    "x" * 4096, "new\nline", "spaces and\ttabs", "ünïcødé-☃", "ref\\back", "-", "ingest",
    "data", "sha256:" + "a" * 64,
]


@check
def check_hostile_refs(env: SuiteEnv) -> None:
    """Refs are opaque text: path syntax, NUL, control characters and 4 KB refs all write,
    list, resume, commit and abort, with nothing created outside the root."""
    cwd_before = sorted(os.listdir("."))
    cs = env.make()
    blobs = {}
    for i, ref in enumerate(HOSTILE_REFS):
        b, d = content(100 + i)
        blobs[ref] = (b, d)
        w = cs.writer(ref, len(b))
        w.write(b[:50])
        w.close()
    statuses = {s.ref: s for s in env.make().list_statuses()}
    assert set(statuses) == set(HOSTILE_REFS)
    for ref in HOSTILE_REFS:
        assert cs.status(ref).offset == 50
        assert statuses[ref].total == len(blobs[ref][0])
    for i, ref in enumerate(HOSTILE_REFS):
        b, d = blobs[ref]
        if i % 2:
            cs.abort(ref)
            continue
        w = cs.writer(ref, len(b))
        try:
            assert w.status().offset == 50 and w.status().ref == ref
            w.write(b[50:])
            assert w.commit(len(b), d) == d
        finally:
            w.close()
        assert read_all(cs, d) == b
    assert cs.list_statuses() == []
    # Nothing escaped: the store root is alone in its tree, and the cwd is untouched.
    assert sorted(os.listdir(env.base)) == ["a"]
    assert sorted(os.listdir(env.base / "a")) == ["b"]
    assert sorted(os.listdir(env.base / "a" / "b")) == ["store"]
    assert sorted(os.listdir(".")) == cwd_before


_add_methods()
