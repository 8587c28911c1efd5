"""Garbage collection: containerd's mark and sweep over the metadata, then the disk.

Roots (per namespace): live leases and everything they hold (``containerd.io/gc.expire`` in
the past ends a lease; ``containerd.io/gc.flat`` holds resources without their references),
images (their target and label references), containers (their snapshot and label
references), sandboxes (their label references, as containerd 2.x), unexpired ingests, and content or snapshots labelled ``containerd.io/gc.root``.
References follow ``containerd.io/gc.ref.content[.|/<any>]`` labels to content and
``containerd.io/gc.ref.snapshot.<snapshotter>[/<any>]`` labels to snapshots, a snapshot's
parent, and an ingest's expected digest.

:func:`collect` marks and sweeps in one LMDB write transaction (so nothing changes between
the two), then removes backing ingests of swept ingest records, then, holding the content
lock exclusively, deletes blob files no namespace links any more. Snapshotters are cleaned by
their own plugins (later capabilities register a cleanup with :func:`collect`'s caller).

Records read here (JSON values): ``content``/``snapshots``/``images``/``containers`` with a
``labels`` map; ``images`` with ``target.digest``; ``containers`` with ``snapshotter`` and
``snapshot_key``; ``snapshots`` (key ``<ns>\\0<snapshotter>\\0<name>``) with ``parent``.

Cost: a collection runs after every lease deletion (every ``ctr run``) and holds the write
transaction, so it reads each record once, and reuses what the previous collection of the
process derived from a record whose bytes have not changed (:class:`_Reuse`): a container
costs a byte comparison of its record instead of json.loads of its OCI spec.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ctrd.errdefs import NotFound
from ctrd.metadata.db import DB, key, name_of, scan, split
from ctrd.metadata.leases import GC_EXPIRE, GC_FLAT

log = logging.getLogger("ctrd.gc")

GC_ROOT = "containerd.io/gc.root"
GC_REF_CONTENT = "containerd.io/gc.ref.content"
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."

CONTENT, SNAPSHOT, INGEST, LEASE = "content", "snapshot", "ingest", "lease"
Node = tuple[str, str, str]  # (type, namespace, key); snapshot keys are "<snapshotter>/<name>"


@dataclass
class Stats:
    """What one collection removed and how long it took."""

    removed: dict[str, int] = field(default_factory=dict)
    snapshotters: set[str] = field(default_factory=set)  # whose snapshot records were swept
    snapshots_deleted: int = 0
    blobs_deleted: int = 0
    metadata_seconds: float = 0.0
    content_seconds: float = 0.0

    @property
    def elapsed(self) -> float:
        return self.metadata_seconds + self.content_seconds


def parse_rfc3339(value: str) -> float | None:
    """Seconds since the epoch, or None if ``value`` is not RFC 3339 (ignored, as
    containerd logs and ignores an invalid expiry)."""
    import calendar  # here, not at the top: only leases with an expiry need it
    import datetime

    try:
        dt = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return calendar.timegm(dt.utctimetuple()) + dt.microsecond / 1e6


def label_refs(ns: str, labels: dict[str, str]) -> Iterator[Node]:
    for k, v in labels.items():
        if k.startswith(GC_REF_CONTENT):
            rest = k[len(GC_REF_CONTENT):]
            if rest == "" or rest[0] in "./":
                yield (CONTENT, ns, v)
        elif k.startswith(GC_REF_SNAPSHOT):
            snapshotter = k[len(GC_REF_SNAPSHOT):].split("/", 1)[0]
            yield (SNAPSHOT, ns, f"{snapshotter}/{v}")


class _Reuse:
    """What collections derive from the records of one bucket, kept from one collection to
    the next (per process): raw key -> (raw value, what was derived from it).

    Collections run after every lease deletion (every ``ctr run``) inside the write
    transaction, and parsing every record was most of their cost: a container record
    carries its OCI spec (KiBs that GC does not need), every container brings a snapshot
    record. A hit needs the stored bytes to equal the record read now, so any change to a
    record is parsed afresh; comparing bytes is ~100x cheaper than parsing them or hashing
    them (blake2b of a 4.5 KiB record costs as much as json.loads). Each pass over the
    bucket rebuilds the entries from the records it read (deleted records leave), keeping
    records up to ``limit`` bytes in all. What is derived is shared between collections:
    read-only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: dict[bytes, tuple[bytes, Any]] = {}

    def derive(self, rows: Iterable[tuple[bytes, bytes]], fn: Callable[[bytes, bytes], Any]
               ) -> Iterator[tuple[bytes, Any]]:
        """(key, fn(key, value)) for each row, fn called only for rows not seen as they are."""
        entries, fresh, size = self.entries, {}, 0
        for k, v in rows:
            hit = entries.get(k)
            if hit is not None and hit[0] == v:
                derived = hit[1]
            else:
                derived = fn(k, v)
            if size + len(v) <= self.limit:
                fresh[k] = (v, derived)
                size += len(v)
            yield k, derived
        self.entries = fresh


# Containers keep only their roots (a few nodes) besides their bytes; other buckets keep
# parsed records, several times their small JSON text.
_REUSE = {"containers": _Reuse(32 << 20),
          **{b: _Reuse(4 << 20) for b in ("leases", "images", "ingests", "content",
                                           "snapshots")}}


def _container_refs(ns: str, rec: dict) -> Iterator[Node]:
    if rec.get("snapshotter") and rec.get("snapshot_key"):
        yield (SNAPSHOT, ns, f"{rec['snapshotter']}/{rec['snapshot_key']}")
    yield from label_refs(ns, rec.get("labels", {}))


class _Graph:
    """Reads nodes and their edges from one transaction.

    Each record is parsed at most once per collection: :meth:`roots` reads every record of
    the buckets the sweep judges (leases, ingests, content, snapshots) and keeps them in
    :attr:`seen`, where :meth:`record` and the sweep find them (nothing writes between mark
    and sweep: one transaction)."""

    SWEPT = ("leases", "ingests", "content", "snapshots")

    def __init__(self, db: DB, txn, now: float) -> None:
        self.db, self.txn, self.now = db, txn, now
        # bucket -> raw key -> (key parts with the full name, record), in key order
        self.seen: dict[str, dict[bytes, tuple[tuple[str, ...], dict]]] = {b: {} for b in self.SWEPT}

    def items(self, bucket: str) -> Iterator[tuple[tuple[str, ...], dict]]:
        """(key parts with the full name, record) of every record of ``bucket``."""
        n = 3 if bucket == "snapshots" else 2

        def parse(k: bytes, v: bytes) -> tuple[tuple[str, ...], dict]:
            rec = json.loads(v)
            parts = split(k, n)
            parts[-1] = name_of(k, rec, n)
            return tuple(parts), rec

        keep = self.seen.get(bucket)
        rows = scan(self.txn, self.db.bucket(bucket), b"")
        for k, item in _REUSE[bucket].derive(rows, parse):
            if keep is not None:
                keep[k] = item
            yield item

    def record(self, node: Node) -> dict | None:
        type_, ns, k = node
        if type_ == CONTENT:
            bucket, raw_key = "content", key(ns, k)
        elif type_ == SNAPSHOT:
            snapshotter, _, name = k.partition("/")
            bucket, raw_key = "snapshots", key(ns, snapshotter, name)
        elif type_ == INGEST:
            bucket, raw_key = "ingests", key(ns, k)
        else:
            return None
        hit = self.seen[bucket].get(raw_key)
        if hit is not None:
            return hit[1]
        raw = self.txn.get(raw_key, db=self.db.bucket(bucket))
        return None if raw is None else json.loads(raw)

    def container_roots(self) -> Iterator[Node]:
        """What every container holds: its snapshot and label references."""
        rows = scan(self.txn, self.db.bucket("containers"), b"")
        for _, nodes in _REUSE["containers"].derive(
                rows, lambda k, v: tuple(_container_refs(split(k)[0], json.loads(v)))):
            yield from nodes

    def roots(self) -> Iterator[tuple[Node, bool]]:
        """(node, flat) for every root."""
        for (ns, lease_id), rec in self.items("leases"):
            labels = rec.get("labels", {})
            expiry = labels.get(GC_EXPIRE)
            if expiry is not None:
                at = parse_rfc3339(expiry)
                if at is None:
                    log.info("ignoring invalid lease expiration",
                             extra={"lease": lease_id, "value": expiry})
                elif at < self.now:
                    continue  # expired: not a root, swept below
            flat = GC_FLAT in labels
            yield (LEASE, ns, lease_id), False
            for d in rec.get("content", []):
                yield (CONTENT, ns, d), flat
            for ref in rec.get("ingests", []):
                yield (INGEST, ns, ref), False
            for snapshotter, keys in rec.get("snapshots", {}).items():
                for k in keys:
                    yield (SNAPSHOT, ns, f"{snapshotter}/{k}"), flat
        for (ns, _), rec in self.items("images"):
            target = rec.get("target", {}).get("digest")
            if target:
                yield (CONTENT, ns, target), False
            for n in label_refs(ns, rec.get("labels", {})):
                yield n, False
        for (ns, ref), rec in self.items("ingests"):
            at = rec.get("expire_at")
            if at is not None and at > self.now:
                yield (INGEST, ns, ref), False
        for (ns, digest), rec in self.items("content"):
            if GC_ROOT in rec.get("labels", {}):
                yield (CONTENT, ns, digest), False
        for n in self.container_roots():
            yield n, False
        for k, v in scan(self.txn, self.db.bucket("sandboxes"), b""):
            for n in label_refs(split(k)[0], json.loads(v).get("labels", {})):
                yield n, False
        for (ns, snapshotter, name), rec in self.items("snapshots"):
            if GC_ROOT in rec.get("labels", {}):
                yield (SNAPSHOT, ns, f"{snapshotter}/{name}"), False

    def references(self, node: Node, flat: bool) -> Iterator[Node]:
        type_, ns, k = node
        rec = self.record(node)
        if rec is None:
            return
        if type_ == CONTENT and not flat:
            yield from label_refs(ns, rec.get("labels", {}))
        elif type_ == SNAPSHOT:
            if rec.get("parent"):
                yield (SNAPSHOT, ns, f"{k.partition('/')[0]}/{rec['parent']}")
            if not flat:
                yield from label_refs(ns, rec.get("labels", {}))
        elif type_ == INGEST and rec.get("expected"):
            yield (CONTENT, ns, rec["expected"])

    def mark(self) -> set[Node]:
        marked: set[Node] = set()
        stack = list(self.roots())
        while stack:
            node, flat = stack.pop()
            if node in marked:
                continue
            marked.add(node)
            stack += [(ref, flat) for ref in self.references(node, flat) if ref not in marked]
        return marked


def collect(db: DB, backing=None, now: float | None = None) -> Stats:
    """One full collection; see the module docstring. ``backing`` is the content store whose
    unlinked blobs and swept ingests are removed from disk."""
    stats = Stats()
    t0 = time.monotonic()
    aborted: list[str] = []
    with db.update() as txn:
        graph = _Graph(db, txn, time.time() if now is None else now)
        marked = graph.mark()
        doomed: list[tuple[str, bytes]] = []
        for bucket, type_ in (("leases", LEASE), ("ingests", INGEST), ("content", CONTENT)):
            for k, ((ns, name), rec) in graph.seen[bucket].items():
                if (type_, ns, name) not in marked:
                    doomed.append((bucket, k))
                    if type_ == INGEST and not rec.get("expected"):
                        aborted.append(rec["bref"])
        for k, ((ns, snapshotter, name), _) in graph.seen["snapshots"].items():
            if (SNAPSHOT, ns, f"{snapshotter}/{name}") not in marked:
                doomed.append(("snapshots", k))
                stats.snapshotters.add(snapshotter)
        for bucket, k in doomed:
            txn.delete(k, db=db.bucket(bucket))
            stats.removed[bucket] = stats.removed.get(bucket, 0) + 1
    stats.metadata_seconds = time.monotonic() - t0
    if backing is not None:
        t1 = time.monotonic()
        for bref in aborted:
            try:
                backing.abort(bref)
            except NotFound:
                pass
        with db.content_lock.exclusive():
            with db.view() as txn:
                linked = {split(k)[1] for k, _ in scan(txn, db.bucket("content"), b"")}
            for info in list(backing.walk()):
                if info.digest not in linked:
                    try:
                        backing.delete(info.digest)
                        stats.blobs_deleted += 1
                    except NotFound:
                        pass
        stats.content_seconds = time.monotonic() - t1
    log.debug("garbage collected", extra={"removed": stats.removed,
                                          "blobs": stats.blobs_deleted,
                                          "seconds": round(stats.elapsed, 4)})
    return stats


CollectFn = Callable[[], Stats]
