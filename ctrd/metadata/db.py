"""The metadata database: one LMDB environment with a schema version.

Layout: named sub-databases ("buckets"), keys are ``\\0``-joined byte paths starting with the
namespace (``<ns>\\0<name>``) so that "everything of a namespace" is one key range, values are
small JSON documents. Every mutation is one write transaction (:meth:`DB.update`); reads use
:meth:`DB.view`. Both are blocking: call them from a worker thread in async code.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import lmdb

from ctrd.errdefs import FailedPrecondition

SCHEMA_VERSION = 1
# Buckets that exist in every schema-1 database. Later capabilities add their own.
BUCKETS = ("meta", "namespaces")
SEP = b"\0"


def key(*parts: str) -> bytes:
    return SEP.join(p.encode() for p in parts)


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

    def has_prefix(self, txn: lmdb.Transaction, bucket: str, start: bytes) -> bool:
        cur = txn.cursor(db=self.bucket(bucket, txn))
        return cur.set_range(start) and cur.key().startswith(start)

    def close(self) -> None:
        self.env.close()
