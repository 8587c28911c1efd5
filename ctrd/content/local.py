"""The on-disk content store (containerd's ``content/local``), laid out as containerd lays it out.

Under the store root (the plugin's root, ``<root>/io.containerd.content.v1.content``)::

    blobs/<alg>/<hex>            committed blobs, read-only (mode & ~0333), verified by digest
    ingest/<sha256 hex of ref>/  one directory per ingest in progress:
        ref                      the ref, verbatim (the directory name is its sha256)
        data                     the bytes written so far
        startedat, updatedat     RFC 3339 timestamps (Go's ``time.MarshalText``)
        total                    the announced size, decimal (absent when unknown)
        expected                 the announced digest (ctrd only; containerd ignores it)

A ref is client text (it may hold ``/``, ``..``, NUL, or be kilobytes long): it is only ever
hashed, never a path component. A digest is checked by ``validate_digest`` before it becomes a
path.

Lifecycle of a write: ``writer(ref)`` takes the ref's lock (one writer per ref at a time in the
process, across store instances on the same root; an ``flock`` on ``data`` keeps other
processes out too), creates or resumes the ingest (resuming re-hashes ``data``), ``write``
appends and hashes, ``commit`` verifies size and digest, fsyncs ``data``, renames it into
``blobs/`` without replacing anything (``renameat2(RENAME_NOREPLACE)``), fsyncs the directory
and removes the ingest.

Crash safety (kill -9, and power loss for committed blobs): a blob path only ever names a
complete, fsynced, verified file, because it appears by one atomic rename of a file fsynced
before it. Ingests are not fsynced while written: after a kill -9 the page cache still holds
every byte ``write`` returned for; after a power loss ``data`` may be shorter (or, on some file
systems, hold zeros), which resume re-hashes and commit's digest check catches. ``updatedat``
is written lazily (at ``close``) and status reports the later of it and the mtime of
``data``, so a killed writer still shows when it last wrote.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# hashlib, shutil, calendar, datetime and concurrent.futures are imported where they are used:
# this module is on the daemon's start path, which needs none of them (their cost:
# bench/README.md, "Figures the code cites").

from ctrd.content.store import ALGORITHMS, Info, Status, validate_digest
from ctrd.errdefs import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound,
                          Unavailable, quote)

_CHUNK = 1 << 20  # read size when re-hashing an ingest
_HEX = {alg: re.compile(f"[0-9a-f]{{{n}}}") for alg, n in ALGORITHMS.items()}
_INGEST_NAME = _HEX["sha256"]


# --- ref locks ---------------------------------------------------------------------------------
# One writer per ref: in-process locks keyed by (real root, ref), shared by every LocalStore on
# the same root (a new instance on a root is a restart as far as the disk goes, but not as far
# as this process's open writers go).

_locks: dict[tuple[str, str], int] = {}  # -> since (time_ns)
_locks_cond = threading.Condition()


def _lock(key: tuple[str, str], timeout: float) -> None:
    """Take ``key``, waiting up to ``timeout`` for a holder that is about to let go (containerd
    retries for up to ~1 s the same way); Unavailable after that, which clients retry."""
    deadline = time.monotonic() + timeout
    with _locks_cond:
        while key in _locks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                since = _locks[key]
                raise Unavailable(f"ref {key[1]} locked for "
                                  f"{go_duration(time.time_ns() - since)} (since {go_time(since)})")
            _locks_cond.wait(remaining)
        _locks[key] = time.time_ns()


def _unlock(key: tuple[str, str]) -> None:
    with _locks_cond:
        _locks.pop(key, None)
        _locks_cond.notify_all()


def go_duration(ns: int) -> str:
    """``ns`` as Go's ``time.Duration.String`` prints it (``1.5s``, ``2m0.25s``, ``350µs``)."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def frac(v: int, unit: int) -> str:
        whole, rest = divmod(v, unit)
        digits = f"{rest:0{len(str(unit)) - 1}d}".rstrip("0")
        return f"{whole}.{digits}" if digits else str(whole)

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    h, rest = divmod(ns, 3600 * 10**9)
    m, rest = divmod(rest, 60 * 10**9)
    out = f"{frac(rest, 10**9)}s"
    if h:
        out = f"{h}h{m}m{out}"
    elif m:
        out = f"{m}m{out}"
    return sign + out


def go_time(ns: int) -> str:
    """``ns`` since the epoch as Go's ``time.Time.String`` prints local times."""
    from datetime import datetime

    dt = datetime.fromtimestamp(ns // 10**9).astimezone()
    frac = f"{ns % 10**9:09d}".rstrip("0")
    return (dt.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac}" if frac else "")
            + dt.strftime(" %z %Z"))


# --- timestamp files (Go's time.MarshalText / UnmarshalText: RFC 3339 with nanoseconds) --------

_RFC3339 = re.compile(rb"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                      rb"(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def format_timestamp(ns: int) -> bytes:
    sec, rest = divmod(ns, 10**9)
    frac = f"{rest:09d}".rstrip("0")
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            + (f".{frac}" if frac else "") + "Z").encode()


def parse_timestamp(b: bytes) -> int:
    """Nanoseconds since the epoch; ValueError if ``b`` is not an RFC 3339 time."""
    m = _RFC3339.fullmatch(b.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {b[:64]!r}")
    import calendar

    y, mo, d, h, mi, s = (int(x) for x in m.groups()[:6])
    ns = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 10**9
    if m.group(7):
        ns += int(m.group(7).ljust(9, b"0"))
    if m.group(9):
        off = (int(m.group(10)) * 60 + int(m.group(11))) * 60 * 10**9
        ns -= off if m.group(9) == b"+" else -off
    return ns


# --- small file helpers ------------------------------------------------------------------------

def _write_file(path: str, data: bytes) -> None:
    """Replace ``path`` atomically (a reader sees the old or the new content, never a part).
    Not fsynced: these files describe an ingest, which survives a power loss only as far as
    commit's digest check allows anyway."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _read_file(path: str, limit: int = 1 << 20) -> bytes:
    """A small file's content; ValueError if it is larger than ``limit``."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size > limit:
            raise ValueError(f"{path}: larger than {limit} bytes")
        return f.read()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: str, h, limit: int | None = None) -> int:
    """Feed ``path`` (its first ``limit`` bytes) to ``h`` in chunks; return the bytes read."""
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while limit is None or n < limit:
            want = _CHUNK if limit is None else min(_CHUNK, limit - n)
            got = f.readinto(mv[:want])
            if not got:
                break
            h.update(mv[:got])
            n += got
    return n


# renameat2(RENAME_NOREPLACE): publish a blob without ever replacing one (glibc >= 2.28, Linux
# >= 3.15 on ext4/xfs/btrfs/tmpfs). Where it is missing, check-then-rename: the window only
# lets an identical, verified blob replace another.
# dlopen(NULL): the process's own libc symbols. (ctypes.util.find_library would run
# ldconfig in a subprocess at import, at every daemon start: bench/README.md.)
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists."""
    global _renameat2
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                      _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), src, None, dst)
        _renameat2 = None  # this kernel or file system cannot: fall back from now on
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


# Writeback: every _WRITEBACK bytes a writer asks the kernel to start writing the range out
# (sync_file_range(SYNC_FILE_RANGE_WRITE), asynchronous), so the fsync at commit waits for the
# tail only and a large ingest does not pile up dirty pages (measured on 1 GiB: bench/README.md,
# "Figures the code cites").
_WRITEBACK = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong,
                                 ctypes.c_uint]

# Large writes go to the file in a worker thread while the caller hashes the same bytes (both
# release the GIL): hashing and copying into the page cache overlap instead of adding up.
_PARALLEL = 256 << 10
_pool: "ThreadPoolExecutor | None" = None
_pool_lock = threading.Lock()


def _write_pool() -> "ThreadPoolExecutor":
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1),
                                           thread_name_prefix="ctrd-content-write")
    return _pool


def _write_all(fd: int, mv: memoryview) -> tuple[int, BaseException | None]:
    """Write all of ``mv``; return how much reached the file and the error that stopped it."""
    n = 0
    try:
        while n < len(mv):
            n += os.write(fd, mv[n:] if n else mv)
    except BaseException as e:
        return n, e
    return n, None


def _sha256_hex(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


def _ref_bytes(ref: str) -> bytes:
    try:
        return ref.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgument(f"ref {quote(ref)} is not valid UTF-8") from e


# --- the store ---------------------------------------------------------------------------------

class LocalStore:
    """Content in files under ``root`` (see the module docstring for layout and guarantees).

    Labels are not kept here (the metadata layer keeps them per namespace): ``Info.labels`` is
    always empty and ``commit``'s labels are ignored. Safe to use from many threads.
    ``lock_timeout``: how long ``writer`` waits for another writer of the same ref to let go
    before it gives up with Unavailable (containerd retries for up to about a second).
    """

    def __init__(self, root: str | os.PathLike, *, lock_timeout: float = 0.5) -> None:
        self.root = Path(root).absolute()
        self.lock_timeout = lock_timeout
        (self.root / "ingest").mkdir(parents=True, exist_ok=True)
        self._key_root = os.path.realpath(self.root)
        self._blobs = str(self.root / "blobs")
        self._ingest = str(self.root / "ingest")

    # --- paths ----------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where ``digest``'s blob lives (InvalidArgument for an invalid digest)."""
        alg, hexpart = validate_digest(digest)
        return Path(self._blobs, alg, hexpart)

    def ingest_path(self, ref: str) -> Path:
        """The directory of the ingest ``ref`` (named by the sha256 of the ref text)."""
        return Path(self._ingest, _sha256_hex(_ref_bytes(ref)))

    # --- committed blobs ------------------------------------------------------------------

    def info(self, digest: str) -> Info:
        p = self.blob_path(digest)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise NotFound(f"content {digest}") from None
        return _info(digest, st)

    def reader(self, digest: str) -> "LocalReader":
        p = self.blob_path(digest)
        try:
            try:
                # No atime update: Info.updated_at is the blob's atime (as containerd).
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME)
            except PermissionError:  # O_NOATIME needs ownership (or CAP_FOWNER)
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}") from None
        return LocalReader(fd, os.fstat(fd).st_size)

    def delete(self, digest: str) -> None:
        p = self.blob_path(digest)
        try:
            os.unlink(p)
        except FileNotFoundError:
            raise NotFound(f"content {digest}") from None

    def walk(self) -> Iterator[Info]:
        """Every committed blob; files that are not named like a digest of their directory's
        algorithm (leftovers, strays) are skipped."""
        for alg, pattern in _HEX.items():
            try:
                it = os.scandir(os.path.join(self._blobs, alg))
            except (FileNotFoundError, NotADirectoryError):
                continue
            with it:
                for entry in it:
                    if not pattern.fullmatch(entry.name):
                        continue
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # deleted meanwhile
                        continue
                    yield _info(f"{alg}:{entry.name}", st)

    # --- ingests --------------------------------------------------------------------------

    def writer(self, ref: str, total: int = 0, expected: str = "") -> "LocalWriter":
        """Open or resume the ingest ``ref``; see the module docstring.

        InvalidArgument: empty ref, negative total, invalid expected digest. Unavailable:
        another writer holds ``ref``. AlreadyExists: ``expected`` is already committed.
        Resuming with a different non-zero ``total`` or ``expected`` than the ingest was
        started with starts it over (as containerd).
        """
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if total < 0:
            raise InvalidArgument(f"invalid total size {total}")
        if expected:
            validate_digest(expected)
        refb = _ref_bytes(ref)
        key = (self._key_root, ref)
        _lock(key, self.lock_timeout)
        try:
            if expected and os.path.lexists(self.blob_path(expected)):
                raise AlreadyExists(f"content {expected}")
            return self._open_writer(key, ref, refb, total, expected)
        except BaseException:
            _unlock(key)
            raise

    def _open_writer(self, key, ref: str, refb: bytes, total: int,
                     expected: str) -> "LocalWriter":
        import hashlib

        path = os.path.join(self._ingest, _sha256_hex(refb))
        data = os.path.join(path, "data")
        for _ in range(5):  # an abort may remove the directory between mkdir and open
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                pass
            try:
                fd = _open_data(data)
                break
            except FileNotFoundError:
                continue
        else:
            raise Unavailable(f"ref {ref} is being aborted")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Unavailable(f"ref {ref} locked by another process") from None
            meta = _read_meta(path, refb)
            conflict = meta is not None and (
                (total and meta.total and total != meta.total)
                or (expected and meta.expected and expected != meta.expected))
            h = hashlib.sha256()
            if meta is None or conflict:
                # New, or not resumable (ref file missing or foreign, or a different blob
                # announced): start over. The ref file goes last: it makes the ingest listed.
                now = time.time_ns()
                os.ftruncate(fd, 0)
                _write_file(os.path.join(path, "startedat"), format_timestamp(now))
                _write_file(os.path.join(path, "updatedat"), format_timestamp(now))
                _set_optional(os.path.join(path, "total"), str(total) if total else "")
                _set_optional(os.path.join(path, "expected"), expected)
                _write_file(os.path.join(path, "ref"), refb)
                offset, started, updated = 0, now, now
            else:
                offset = _hash_file(data, h)
                # updatedat is written lazily (a killed writer left it stale): data's mtime
                # may be newer.
                started = meta.started
                updated = max(meta.updated, os.fstat(fd).st_mtime_ns)
                if not total:
                    total = meta.total
                elif not meta.total:
                    _set_optional(os.path.join(path, "total"), str(total))
                if not expected:
                    expected = meta.expected
                elif not meta.expected:
                    _set_optional(os.path.join(path, "expected"), expected)
            return LocalWriter(self, key, ref, path, fd, h, offset, total, expected,
                               started, updated)
        except BaseException:
            os.close(fd)
            raise

    def status(self, ref: str) -> Status:
        path = self.ingest_path(ref)
        try:
            return _status(str(path), _ref_bytes(ref))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise NotFound(f"ingest ref {quote(ref)}") from None

    def list_statuses(self, match: Callable[[Status], bool] | None = None) -> list[Status]:
        """Every ingest on disk (filtered by ``match``); directories that are not a complete
        ingest (no ``data``, no or a foreign ``ref``: a crash mid-creation, strays) are
        skipped, as are ingests that finish while we look."""
        out = []
        try:
            it = os.scandir(self._ingest)
        except FileNotFoundError:
            return out
        with it:
            for entry in it:
                if not _INGEST_NAME.fullmatch(entry.name):
                    continue
                try:
                    st = _status(entry.path, None)
                except (OSError, ValueError):
                    continue
                if match is None or match(st):
                    out.append(st)
        return out

    def abort(self, ref: str) -> None:
        """Remove the ingest ``ref`` (NotFound if there is none). As containerd, this does not
        wait for a writer holding the ref: that writer's commit then fails with NotFound."""
        path = self.ingest_path(ref)
        if not path.is_dir():
            raise NotFound(f"ingest ref {quote(ref)}")
        import shutil

        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            raise NotFound(f"ingest ref {quote(ref)}") from None

    def _publish_dir(self, alg: str) -> str:
        """``blobs/<alg>``, created (durably) on first use."""
        d = os.path.join(self._blobs, alg)
        if not os.path.isdir(d):
            os.makedirs(d, 0o755, exist_ok=True)
            _fsync_dir(self._blobs)
            _fsync_dir(str(self.root))
        return d


def _open_data(data: str) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(data, flags, 0o666)
    except PermissionError:
        # A commit that was killed after making data read-only (just before its rename):
        # make it writable again, then resume.
        os.chmod(data, 0o644)
        return os.open(data, flags, 0o666)


def _set_optional(path: str, text: str) -> None:
    if text:
        _write_file(path, text.encode())
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _info(digest: str, st: os.stat_result) -> Info:
    # As containerd: created is the mtime (set at commit), updated the atime.
    return Info(digest, st.st_size, st.st_mtime_ns / 1e9, st.st_atime_ns / 1e9)


class _Meta:
    __slots__ = ("ref", "started", "updated", "total", "expected")

    def __init__(self, ref, started, updated, total, expected):
        self.ref, self.started, self.updated = ref, started, updated
        self.total, self.expected = total, expected


def _read_meta(path: str, refb: bytes | None, data_mtime: int | None = None) -> _Meta | None:
    """The ingest's description, or None when ``ref`` is missing or not ``refb`` (``refb``
    None: any ref whose sha256 names the directory). Damaged optional files are tolerated:
    a timestamp falls back to ``data``'s mtime (or now), total to 0, expected to ""."""
    try:
        ref = _read_file(os.path.join(path, "ref"), 1 << 24)
    except (OSError, ValueError):  # missing, a directory, unreadable, absurdly large
        return None
    if refb is not None and ref != refb:
        return None
    if refb is None and _sha256_hex(ref) != os.path.basename(path):
        return None
    ref_s = ref.decode("utf-8")  # ValueError for a foreign, undecodable ref
    if data_mtime is None:
        try:
            data_mtime = os.stat(os.path.join(path, "data")).st_mtime_ns
        except FileNotFoundError:
            data_mtime = time.time_ns()

    def ts(name: str) -> int:
        try:
            return parse_timestamp(_read_file(os.path.join(path, name), 256))
        except (OSError, ValueError):
            return data_mtime

    try:
        total = int(_read_file(os.path.join(path, "total"), 64))
        total = max(total, 0)
    except (OSError, ValueError):
        total = 0
    try:
        expected = _read_file(os.path.join(path, "expected"), 256).decode()
        validate_digest(expected)
    except (OSError, ValueError, InvalidArgument):
        expected = ""
    return _Meta(ref_s, ts("startedat"), ts("updatedat"), total, expected)


def _status(path: str, refb: bytes | None) -> Status:
    """Status of the ingest at ``path``; FileNotFoundError if it is not a complete ingest."""
    st = os.stat(os.path.join(path, "data"))
    meta = _read_meta(path, refb, st.st_mtime_ns)
    if meta is None:
        raise FileNotFoundError(errno.ENOENT, "no ingest", path)
    # updatedat is written lazily: data's mtime may be newer.
    updated = max(meta.updated, st.st_mtime_ns)
    return Status(meta.ref, st.st_size, meta.total, meta.expected, meta.started / 1e9,
                  updated / 1e9)


# --- writer and reader -------------------------------------------------------------------------

class LocalWriter:
    """An open ingest (see :class:`ctrd.content.store.Writer`); one thread at a time.

    Differences from containerd's writer, all additive: ``truncate(n)`` takes any ``n`` up to
    the offset (re-hashing the first ``n`` bytes); a commit that fails its size or digest check
    leaves the writer open (and the ref locked) so the caller may truncate and retry or close;
    ``commit`` with no size / digest checks the ``total`` / ``expected`` the writer was opened
    (or the ingest started) with.
    """

    def __init__(self, store: LocalStore, key, ref: str, path: str, fd: int, h, offset: int,
                 total: int, expected: str, started: int, updated: int) -> None:
        self._store = store
        self._key = key
        self.ref = ref
        self._path = path
        self._fd = fd
        self._hash = h
        self._offset = offset
        self._total = total
        self._expected = expected
        self._started = started
        self._updated = updated
        self._committed = ""
        self._written_back = offset

    def __enter__(self) -> "LocalWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, data) -> int:
        fd = self._fd
        if fd < 0:
            raise FailedPrecondition(f"writer for ref {self.ref} is closed")
        mv = memoryview(data).cast("B")
        size = len(mv)
        if size >= _PARALLEL:
            before = self._hash.copy()
            fut = _write_pool().submit(_write_all, fd, mv)
            self._hash.update(mv)
            n, err = fut.result()
            if n != size:  # hash only what reached the file
                self._hash = before
                self._hash.update(mv[:n])
        else:
            n, err = _write_all(fd, mv)
            self._hash.update(mv if n == size else mv[:n])
        self._offset += n
        self._updated = time.time_ns()
        if self._offset - self._written_back >= _WRITEBACK and _sync_file_range is not None:
            _sync_file_range(fd, self._written_back, self._offset - self._written_back,
                             _SYNC_FILE_RANGE_WRITE)  # a hint: errors do not matter
            self._written_back = self._offset
        if err is not None:
            raise err
        return n

    def digest(self) -> str:
        return self._committed or "sha256:" + self._hash.hexdigest()

    def status(self) -> Status:
        return Status(self.ref, self._offset, self._total, self._expected,
                      self._started / 1e9, self._updated / 1e9)

    def truncate(self, size: int) -> None:
        if self._fd < 0:
            raise FailedPrecondition(f"writer for ref {self.ref} is closed")
        if size < 0 or size > self._offset:
            raise InvalidArgument(f"cannot truncate ref {self.ref} to {size}: "
                                  f"only {self._offset} bytes written")
        import hashlib

        os.ftruncate(self._fd, size)
        h = hashlib.sha256()
        if size:
            _hash_file(os.path.join(self._path, "data"), h, size)
        self._hash, self._offset = h, size
        self._written_back = min(self._written_back, size)
        self._updated = time.time_ns()

    def commit(self, size: int = 0, expected: str = "",
               labels: dict[str, str] | None = None) -> str:
        fd = self._fd
        if fd < 0:
            raise FailedPrecondition("cannot commit on closed writer")
        if expected:
            validate_digest(expected)
        st = os.fstat(fd)
        if st.st_size != self._offset:
            raise FailedPrecondition(f"ingest ref {self.ref} changed on disk: "
                                     f"{st.st_size} bytes, {self._offset} written")
        want = size or self._total
        if want and want != st.st_size:
            raise FailedPrecondition(f"unexpected commit size {st.st_size}, expected {want}")
        dgst = self.digest()
        want_dgst = expected or self._expected
        if want_dgst and want_dgst != dgst:
            raise FailedPrecondition(f"unexpected commit digest {dgst}, expected {want_dgst}")

        store = self._store
        alg, hexpart = validate_digest(dgst)
        try:
            target = os.path.join(store._publish_dir(alg), hexpart)
            if os.path.lexists(target):
                self._discard()
                raise AlreadyExists(f"content {dgst}")
            mode = stat.S_IMODE(st.st_mode)
            now = time.time_ns()
            # Read-only and stamped before the rename, so the blob appears complete at once.
            os.fchmod(fd, mode & ~0o333)
            os.utime(fd, ns=(now, now))
            os.fsync(fd)
            data = os.path.join(self._path, "data")
            try:
                cur = os.stat(data)
                if (cur.st_dev, cur.st_ino) != (st.st_dev, st.st_ino):
                    raise FileNotFoundError(errno.ENOENT, "replaced", data)
                _rename_noreplace(data, target)
            except FileExistsError:
                self._discard()
                raise AlreadyExists(f"content {dgst}") from None
            except FileNotFoundError:
                self._release()
                raise NotFound(f"ingest ref {quote(self.ref)} was aborted") from None
            except BaseException:
                os.fchmod(fd, mode)
                raise
            _fsync_dir(os.path.dirname(target))
        except (AlreadyExists, NotFound):
            raise
        except BaseException:
            self._release()
            raise
        import shutil

        shutil.rmtree(self._path, ignore_errors=True)
        self._committed = dgst
        self._release()
        return dgst

    def close(self) -> None:
        """Release the ref; the ingest stays for a later resume. Idempotent."""
        if self._fd < 0:
            return
        try:
            os.fdatasync(self._fd)  # as containerd: a closed ingest resumes after power loss
            _write_file(os.path.join(self._path, "updatedat"), format_timestamp(self._updated))
        except OSError:
            pass  # aborted meanwhile, or the disk is failing: resume copes with either
        finally:
            self._release()

    def _discard(self) -> None:
        """The blob exists already: drop the ingest (before unlocking, so nobody resumes it)."""
        import shutil

        shutil.rmtree(self._path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
            _unlock(self._key)

    def __del__(self) -> None:
        # A writer dropped without close must not keep its ref locked for the process's life.
        try:
            self._release()
        except Exception:
            pass


class LocalReader:
    """Random access to one blob (see :class:`ctrd.content.store.ReaderAt`); thread safe.

    ``read_at`` returns fewer than ``n`` bytes only at the end of the blob, and ``b""`` at or
    past it (Go's ReaderAt gives EOF there; containerd's Read service answers OUT_OF_RANGE
    for an offset past the size, which is the service's check to make). A negative offset or
    size is InvalidArgument.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    def __enter__(self) -> "LocalReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise InvalidArgument(f"invalid read of {n} bytes at offset {offset}")
        if self._fd < 0:
            raise FailedPrecondition("reader is closed")
        n = min(n, self.size - offset)
        if n <= 0:
            return b""
        b = os.pread(self._fd, n, offset)
        if len(b) == n or not b:
            return b
        parts = [b]
        got = len(b)
        while got < n:
            more = os.pread(self._fd, n - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
