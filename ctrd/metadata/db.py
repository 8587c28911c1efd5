"""The metadata database: one LMDB environment with a schema version.

Layout: named sub-databases ("buckets"), keys are ``\\0``-joined byte paths starting with the
namespace (``<ns>\\0<name>``) so that "everything of a namespace" is one key range, values are
small JSON documents. Every mutation is one write transaction (:meth:`DB.update`); reads use
:meth:`DB.view`.

Threads: a write transaction waits for the writer lock and syncs at commit: async code runs
it in a worker thread. A read transaction never waits (LMDB readers see a snapshot and take no
lock a writer holds) and a lookup of a record or two is a few microseconds of mapped-memory
reads, less than the CPU of a worker-thread hop (futures, futex wake-ups, the
loop's self-pipe; bench/README.md, "Figures the code cites"): the services call such lookups
(Get, Info, Stat) on the event loop. Scans
of a whole namespace (List, Walk) stay in worker threads.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import lmdb

from ctrd.errdefs import FailedPrecondition

SCHEMA_VERSION = 1
# Buckets of schema 1. Keys of namespaced buckets are "<ns>\0<name>" (content: digest,
# ingests: ref, leases: id, images: name, containers: id, snapshots: snapshotter\0key,
# sandboxes: id). A bucket added later is created empty on open: the schema stays 1.
BUCKETS = ("meta", "namespaces", "content", "ingests", "leases", "images", "containers",
           "snapshots", "sandboxes")
SEP = b"\0"


# LMDB keys are at most 511 bytes. A last part longer than this is stored as 0xff + its
# sha256 (0xff never occurs in UTF-8, so it cannot collide with a real name); records under
# such keys carry their full name in a "name" field (see :func:`name_of`).
MAX_KEY_PART = 400


def key(*parts: str) -> bytes:
    """A bucket key. Every part but the last must be free of NUL (namespaces and snapshotter
    names are validated identifiers); the last may be any client text (refs, lease ids)."""
    enc = [p.encode("utf-8", "surrogatepass") for p in parts]
    if len(enc[-1]) > MAX_KEY_PART:
        import hashlib

        enc[-1] = b"\xff" + hashlib.sha256(enc[-1]).hexdigest().encode()
    return SEP.join(enc)


def split(raw: bytes, n: int = 2) -> list[str]:
    """Inverse of :func:`key` for a key of ``n`` parts (a hashed last part comes back as
    "\ufffd<hex>": use :func:`name_of` where names may be long)."""
    return [p.decode("utf-8", "replace") for p in raw.split(SEP, n - 1)]


def name_of(raw_key: bytes, record: dict, n: int = 2) -> str:
    """The last part of a key, from the record's "name" when the key holds a hash."""
    return record.get("name") or split(raw_key, n)[-1]


def get_json(txn, db, k: bytes):
    raw = txn.get(k, db=db)
    return None if raw is None else json.loads(raw)


def put_json(txn, db, k: bytes, value) -> None:
    txn.put(k, json.dumps(value, separators=(",", ":"), sort_keys=True).encode(), db=db)


def scan(txn, db, start: bytes):
    """(key, value) pairs of ``db`` whose key starts with ``start``, in key order."""
    cur = txn.cursor(db=db)
    if not cur.set_range(start):
        return
    for k, v in cur:
        if not k.startswith(start):
            return
        yield k, v


def prefix(*parts: str) -> bytes:
    return key(*parts) + SEP


class DB:
    """An open metadata environment at ``path`` (a directory, created 0700)."""

    def __init__(self, path: str, map_size: int = 1 << 32, max_buckets: int = 32) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.path = path
        # map_size only reserves address space; the file grows as data is written.
        self.env = lmdb.open(path, map_size=map_size, max_dbs=max_buckets, subdir=True,
                             mode=0o600)
        self._buckets: dict[str, lmdb._Database] = {}
        self._mutation_callbacks: list[Callable[[bool], None]] = []
        # Held shared by content commits/deletes, exclusively by GC's sweep of the backing
        # store: a blob committed to disk is linked in metadata before GC can judge it.
        self.content_lock = RWLock()
        with self.env.begin(write=True) as txn:
            for name in BUCKETS:
                self._buckets[name] = self.env.open_db(name.encode(), txn=txn)
            meta = self._buckets["meta"]
            found = txn.get(b"schema", db=meta)
            if found is None:
                txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=meta)
            elif int(found) != SCHEMA_VERSION:
                raise FailedPrecondition(f"metadata {path}: schema version {int(found)}, "
                                         f"this ctrd knows {SCHEMA_VERSION}")

    def bucket(self, name: str, txn: lmdb.Transaction | None = None):
        db = self._buckets.get(name)
        if db is None:
            db = self._buckets[name] = self.env.open_db(name.encode(), txn=txn)
        return db

    @contextmanager
    def view(self) -> Iterator[lmdb.Transaction]:
        with self.env.begin(write=False, buffers=False) as txn:
            yield txn

    @contextmanager
    def update(self) -> Iterator[lmdb.Transaction]:
        """One write transaction: committed if the block returns, aborted if it raises."""
        with self.env.begin(write=True) as txn:
            yield txn

    def ensure_namespace(self, txn, ns: str) -> None:
        """Inside a write txn: objects created in a namespace create it (as in containerd,
        where the namespace is the bucket that holds them)."""
        bucket = self.bucket("namespaces")
        if txn.get(ns.encode(), db=bucket) is None:
            txn.put(ns.encode(), b"{}", db=bucket)

    def on_mutation(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(dirty)`` after each committed mutation; ``dirty`` means something
        was deleted (the GC scheduler counts both)."""
        self._mutation_callbacks.append(callback)

    def mutated(self, dirty: bool = False) -> None:
        for cb in self._mutation_callbacks:
            cb(dirty)

    def has_prefix(self, txn: lmdb.Transaction, bucket: str, start: bytes) -> bool:
        cur = txn.cursor(db=self.bucket(bucket, txn))
        return cur.set_range(start) and cur.key().startswith(start)

    def close(self) -> None:
        self.env.close()


class RWLock:
    """Many readers or one writer (threads); a waiting writer holds off new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
