"""Namespaced content: which blobs each namespace can see, their labels, and their ingests.

Over a backing :class:`ctrd.content.store.Store` (one copy of each blob on disk), a namespace
sees a blob only once it committed it or added it (containerd's "shared" content policy: a
writer for content another namespace already has links it without transferring it again).
Labels are per namespace. Ingests are recorded per namespace under a lease, or with a 24 h
expiry when the call has no lease, so GC can remove abandoned ones.

Storage: bucket ``content`` key ``<ns>\\0<digest>`` -> ``{size, created_at, updated_at,
labels}``; bucket ``ingests`` key ``<ns>\\0<ref>`` -> ``{bref, expected, expire_at}`` where
``bref`` is the backing store's ref (``<ns>-<seq>-<ref>``, unique per ingest).

Every method blocks (LMDB, file I/O): async callers use worker threads.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from ctrd import identifiers
from ctrd.content.store import Info, ReaderAt, Status, Store, validate_digest
from ctrd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, quote
from ctrd.metadata.db import DB, get_json, key, name_of, prefix, put_json, scan, split
from ctrd.metadata.leases import lease_add, lease_remove

INGEST_EXPIRY = 24 * 3600.0


def _info(digest: str, rec: dict) -> Info:
    return Info(digest, rec["size"], rec["created_at"], rec["updated_at"],
                dict(rec.get("labels", {})))


class ContentStore:
    """The namespaced view of a backing store; see the module docstring."""

    def __init__(self, db: DB, backing: Store) -> None:
        self.db = db
        self.backing = backing

    # --- committed blobs ------------------------------------------------------------------

    def _blob(self, txn, ns: str, digest: str) -> dict | None:
        return get_json(txn, self.db.bucket("content"), key(ns, digest))

    def info(self, ns: str, digest: str) -> Info:
        validate_digest(digest)
        with self.db.view() as txn:
            rec = self._blob(txn, ns, digest)
        if rec is None:
            raise NotFound(f"content digest {digest}")
        return _info(digest, rec)

    def update(self, ns: str, digest: str, labels: dict[str, str],
               fieldpaths: list[str] | None = None) -> Info:
        """Set labels: all of them (no paths, or path ``labels``) or ``labels.<key>`` ones
        (an empty value removes the key)."""
        validate_digest(digest)
        with self.db.update() as txn:
            rec = self._blob(txn, ns, digest)
            if rec is None:
                raise NotFound(f"content digest {digest}")
            current = identifiers.updated_labels(rec.get("labels", {}), labels, fieldpaths,
                                                 f"content info {quote(digest)}",
                                                 "info.Labels")
            rec["labels"] = current
            rec["updated_at"] = time.time()
            put_json(txn, self.db.bucket("content"), key(ns, digest), rec)
        self.db.mutated()
        return _info(digest, rec)

    def walk(self, ns: str, match: Callable[[Info], bool] | None = None) -> list[Info]:
        out = []
        with self.db.view() as txn:
            for k, v in scan(txn, self.db.bucket("content"), prefix(ns)):
                info = _info(split(k)[1], json.loads(v))
                if match is None or match(info):
                    out.append(info)
        return out

    def delete(self, ns: str, digest: str, lease: str | None = None) -> None:
        """Unlink a blob from ``ns``; the file goes when GC finds no namespace using it."""
        validate_digest(digest)
        with self.db.content_lock.shared(), self.db.update() as txn:
            if not txn.delete(key(ns, digest), db=self.db.bucket("content")):
                raise NotFound(f"content digest {digest}")
            lease_remove(self.db, txn, ns, lease, "content", digest)
        self.db.mutated(dirty=True)

    def reader(self, ns: str, digest: str) -> ReaderAt:
        validate_digest(digest)
        with self.db.view() as txn:
            if self._blob(txn, ns, digest) is None:
                raise NotFound(f"content digest {digest}")
        return self.backing.reader(digest)

    # --- ingests --------------------------------------------------------------------------

    def _ingest(self, txn, ns: str, ref: str) -> dict | None:
        return get_json(txn, self.db.bucket("ingests"), key(ns, ref))

    def status(self, ns: str, ref: str) -> Status:
        with self.db.view() as txn:
            rec = self._ingest(txn, ns, ref)
        if rec is None:
            raise NotFound(f"reference {ref}")
        if rec.get("expected"):  # shared: nothing to transfer
            return Status(ref, rec["total"], rec["total"], rec["expected"], rec["started_at"],
                          rec["started_at"])
        st = self.backing.status(rec["bref"])
        st.ref = ref
        return st

    def list_statuses(self, ns: str,
                      match: Callable[[Status], bool] | None = None) -> list[Status]:
        with self.db.view() as txn:
            refs = [name_of(k, json.loads(v))
                    for k, v in scan(txn, self.db.bucket("ingests"), prefix(ns))]
        out = []
        for ref in refs:
            try:
                st = self.status(ns, ref)
            except NotFound:
                continue
            if match is None or match(st):
                out.append(st)
        return out

    def abort(self, ns: str, ref: str, lease: str | None = None) -> None:
        with self.db.update() as txn:
            rec = self._ingest(txn, ns, ref)
            if rec is None:
                raise NotFound(f"reference {ref}")
            txn.delete(key(ns, ref), db=self.db.bucket("ingests"))
            lease_remove(self.db, txn, ns, lease, "ingests", ref)
        if not rec.get("expected"):
            try:
                self.backing.abort(rec["bref"])
            except NotFound:
                pass
        self.db.mutated(dirty=True)

    def writer(self, ns: str, ref: str, total: int = 0, expected: str = "",
               lease: str | None = None) -> "NamespacedWriter":
        """Open or resume the ingest ``ref`` of ``ns``.

        AlreadyExists when ``expected`` is already visible in ``ns`` (the blob is added to the
        call's lease). Content another namespace has is linked without a transfer.
        """
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if expected:
            validate_digest(expected)
        if total < 0:
            raise InvalidArgument(f"negative total size {total}")
        shared_size = None
        if expected:
            try:
                info = self.backing.info(expected)
                if total in (0, info.size):
                    shared_size = info.size
            except NotFound:
                pass
        ingests = self.db.bucket("ingests")
        with self.db.update() as txn:
            self.db.ensure_namespace(txn, ns)
            if expected and self._blob(txn, ns, expected) is not None:
                lease_add(self.db, txn, ns, lease, "content", expected)
                exists = True
            else:
                exists = False
                rec = self._ingest(txn, ns, ref)
                if rec is None:
                    seq = int(txn.get(b"ingest-seq", b"0", db=self.db.bucket("meta"))) + 1
                    txn.put(b"ingest-seq", str(seq).encode(), db=self.db.bucket("meta"))
                    rec = {"name": ref, "bref": f"{ns}-{seq}-{ref}", "started_at": time.time()}
                leased = lease_add(self.db, txn, ns, lease, "ingests", ref)
                rec["expire_at"] = None if leased else time.time() + INGEST_EXPIRY
                rec["expected"] = expected if shared_size is not None else ""
                rec["total"] = shared_size if shared_size is not None else total
                put_json(txn, ingests, key(ns, ref), rec)
        if exists:
            raise AlreadyExists(f"content {expected}")
        backing = None
        if shared_size is None:
            backing = self.backing.writer(rec["bref"], total)
        w = NamespacedWriter(self, ns, ref, lease, backing, total=rec["total"],
                             expected=rec["expected"], started=rec["started_at"])
        w.wanted = expected
        return w

    # --- GC support -----------------------------------------------------------------------

    def referenced(self) -> set[str]:
        """Every digest some namespace links (what the backing store must keep)."""
        with self.db.view() as txn:
            return {split(k)[1] for k, _ in scan(txn, self.db.bucket("content"), b"")}


class NamespacedWriter:
    """An open ingest of one namespace; lifecycle as :class:`ctrd.content.store.Writer`."""

    def __init__(self, store: ContentStore, ns: str, ref: str, lease: str | None,
                 backing, total: int, expected: str, started: float) -> None:
        self._store = store
        self.ns, self.ref, self.lease = ns, ref, lease
        self._w = backing
        self._total = total
        self._expected = expected  # set when the blob is shared (nothing to write)
        self._started = started
        self.wanted = expected  # the digest the client said it will send ("" if unknown)
        self._committed = False

    def _materialise(self) -> None:
        """A shared ingest that receives data after all becomes a real one."""
        self._w = self._store.backing.writer(
            f"{self.ns}-shared-{time.time_ns()}-{self.ref}", self._total)
        self._expected = ""

    def _check_open(self) -> None:
        if self._committed:
            raise FailedPrecondition(f"ingest {quote(self.ref)} was already committed")

    def write(self, data: bytes) -> int:
        self._check_open()
        if self._w is None:
            if not data:
                return 0
            self._materialise()
        return self._w.write(data)

    def digest(self) -> str:
        return self._w.digest() if self._w is not None else self._expected

    def status(self) -> Status:
        if self._w is None:
            return Status(self.ref, self._total, self._total, self._expected, self._started,
                          self._started)
        st = self._w.status()
        st.ref = self.ref
        st.expected = st.expected or self.wanted
        return st

    def truncate(self, size: int) -> None:
        self._check_open()
        if self._w is None:
            if size == self._total:
                return
            self._materialise()
        self._w.truncate(size)

    def commit(self, size: int, expected: str, labels: dict[str, str] | None = None) -> str:
        self._check_open()
        labels = dict(labels or {})
        identifiers.validate_labels(labels, "info.Labels")
        db = self._store.db
        with db.content_lock.shared():
            already = False
            if self._w is None:
                if size and size != self._total:
                    raise FailedPrecondition(f"{quote(self.ref)} failed size validation: "
                                             f"{self._total} != {size}")
                if expected and expected != self._expected:
                    raise FailedPrecondition(f"{quote(self.ref)} unexpected digest")
                size, actual = self._total, self._expected
            else:
                offset = self._w.status().offset
                if size and size != offset:  # containerd's metadata check and message
                    raise FailedPrecondition(f"{quote(self.ref)} failed size validation: "
                                             f"{offset} != {size}")
                # The backing writer checks size and digest against what was asked at open
                # too (a commit naming neither still checks those).
                try:
                    actual = self._w.commit(size, expected or self.wanted)
                except AlreadyExists:
                    actual = self._w.digest()
                size = self._w.status().offset
                self._w.close()
                self._w = None
                self._expected, self._total = actual, size  # digest()/status() from now on
            now = time.time()
            with db.update() as txn:
                blobs = db.bucket("content")
                if get_json(txn, blobs, key(self.ns, actual)) is not None:
                    already = True
                else:
                    put_json(txn, blobs, key(self.ns, actual),
                             {"size": size, "created_at": now, "updated_at": now,
                              "labels": {k: v for k, v in labels.items() if v}})
                txn.delete(key(self.ns, self.ref), db=db.bucket("ingests"))
                lease_remove(db, txn, self.ns, self.lease, "ingests", self.ref)
                lease_add(db, txn, self.ns, self.lease, "content", actual)
        self._committed = True
        db.mutated()
        if already:
            raise AlreadyExists(f"content {actual}")
        return actual

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class NamespacedView:
    """One namespace of a :class:`ContentStore`, as a plain :class:`ctrd.content.store.Store`
    (for code that works in a single namespace, and for the content conformance suite)."""

    def __init__(self, store: ContentStore, ns: str, lease: str | None = None) -> None:
        self._s, self.ns, self.lease = store, ns, lease

    def writer(self, ref: str, total: int = 0, expected: str = "") -> NamespacedWriter:
        return self._s.writer(self.ns, ref, total, expected, self.lease)

    def status(self, ref: str) -> Status:
        return self._s.status(self.ns, ref)

    def list_statuses(self, match: Callable[[Status], bool] | None = None) -> list[Status]:
        return self._s.list_statuses(self.ns, match)

    def abort(self, ref: str) -> None:
        self._s.abort(self.ns, ref, self.lease)

    def reader(self, digest: str) -> ReaderAt:
        return self._s.reader(self.ns, digest)

    def info(self, digest: str) -> Info:
        return self._s.info(self.ns, digest)

    def walk(self):
        return iter(self._s.walk(self.ns))

    def delete(self, digest: str) -> None:
        self._s.delete(self.ns, digest, self.lease)
