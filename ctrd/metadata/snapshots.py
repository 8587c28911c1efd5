"""Namespaced snapshots over a backing snapshotter (containerd's metadata snapshotter).

Each namespace has its own keys; each snapshot maps to a backing key ``<ns>/<seq>/<key>``
(unique, so namespaces never collide in the backing snapshotter). Labels live here, per
namespace; only inherited labels (``containerd.io/snapshot/*``, ``containerd.io/snapshot.ref``)
reach the backing snapshotter. Parents are by namespaced name, with a children list so that
removing a parent with children is refused. Removing only unlinks the metadata: the backing
snapshot goes at the next garbage collection (:meth:`NamespacedSnapshotter.cleanup_backing`),
as in containerd.

Storage: bucket ``snapshots``, key ``<ns>\\0<snapshotter>\\0<key>`` -> ``{name, bkey, kind,
parent, children, labels, created_at, updated_at}``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

from ctrd import identifiers
from ctrd.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, quote
from ctrd.metadata.db import DB, get_json, key, prefix, put_json, scan
from ctrd.metadata.leases import lease_add, lease_remove
from ctrd.snapshots.snapshotter import Info, Kind, Mount, Snapshotter, Usage

INHERITED_PREFIX = "containerd.io/snapshot/"
SNAPSHOT_REF = "containerd.io/snapshot.ref"


def inherited(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items()
            if k == SNAPSHOT_REF or k.startswith(INHERITED_PREFIX)}


def _info(rec: dict, backing: Info | None = None) -> Info:
    return Info(rec["name"], Kind(backing.kind if backing else rec["kind"]),
                rec.get("parent", ""), dict(rec.get("labels", {})), rec["created_at"],
                rec["updated_at"])


class NamespacedSnapshotter:
    """The snapshotter ``name`` as clients see it; every method takes the namespace."""

    def __init__(self, db: DB, name: str, backing: Snapshotter) -> None:
        self.db, self.name, self.backing = db, name, backing
        self._creating: set[str] = set()  # backing keys made whose record is not committed
        self._creating_lock = threading.Lock()
        self.dirty = False  # something was removed: the backing needs a cleanup at next GC
        # stat and mounts are quick (callable on the event loop) when the backing's are: the
        # records here are LMDB reads too (see ctrd.metadata.db).
        self.quick_reads = bool(getattr(backing, "quick_reads", False))

    @property
    def _bucket(self):
        return self.db.bucket("snapshots")

    def _key(self, ns: str, k: str) -> bytes:
        return key(ns, self.name, k)

    def _get(self, txn, ns: str, k: str) -> dict:
        rec = get_json(txn, self._bucket, self._key(ns, k))
        if rec is None:
            raise NotFound(f"snapshot {k} does not exist")
        return rec

    # --- reads ------------------------------------------------------------------------------

    def stat(self, ns: str, k: str) -> Info:
        with self.db.view() as txn:
            rec = self._get(txn, ns, k)
        return _info(rec, self.backing.stat(rec["bkey"]))

    def usage(self, ns: str, k: str) -> Usage:
        with self.db.view() as txn:
            rec = self._get(txn, ns, k)
        return self.backing.usage(rec["bkey"])

    def mounts(self, ns: str, k: str) -> list[Mount]:
        with self.db.view() as txn:
            rec = self._get(txn, ns, k)
        return self.backing.mounts(rec["bkey"])

    def walk(self, ns: str, match: Callable[[Info], bool] | None = None) -> list[Info]:
        out = []
        with self.db.view() as txn:
            for k, v in scan(txn, self._bucket, prefix(ns, self.name)):
                info = _info(json.loads(v))
                if match is None or match(info):
                    out.append(info)
        return out

    # --- writes -----------------------------------------------------------------------------

    def update(self, ns: str, k: str, labels: dict[str, str],
               fieldpaths: list[str] | None = None) -> Info:
        if not k:
            raise InvalidArgument("snapshot name must be set")
        with self.db.update() as txn:
            rec = self._get(txn, ns, k)
            current = identifiers.updated_labels(rec.get("labels", {}), labels, fieldpaths,
                                                 f"snapshot {quote(k)}", "snapshot.Labels")
            rec["labels"] = current
            rec["updated_at"] = time.time()
            put_json(txn, self._bucket, self._key(ns, k), rec)
            binfo = self.backing.stat(rec["bkey"])
            binfo.labels = inherited(current)
            self.backing.update(binfo, ["labels"])
        self.db.mutated()
        return _info(rec)

    def _create(self, ns: str, k: str, parent: str, labels: dict[str, str] | None,
                readonly: bool, lease: str | None) -> list[Mount]:
        if not k:
            raise InvalidArgument("snapshot key must be set")
        labels = dict(labels or {})
        identifiers.validate_labels(labels, "snapshot.Labels")
        with self.db.update() as txn:
            self.db.ensure_namespace(txn, ns)
            if txn.get(self._key(ns, k), db=self._bucket) is not None:
                raise AlreadyExists(f"snapshot {quote(k)}")
            bparent = ""
            if parent:
                prec = get_json(txn, self._bucket, self._key(ns, parent))
                if prec is None:
                    raise NotFound(f"parent snapshot {parent} does not exist")
                bparent = prec["bkey"]
            seq = int(txn.get(b"snapshot-seq", b"0", db=self.db.bucket("meta"))) + 1
            txn.put(b"snapshot-seq", str(seq).encode(), db=self.db.bucket("meta"))
        bkey = f"{ns}/{seq}/{k}"
        create = self.backing.view if readonly else self.backing.prepare
        # Until its record is committed, the new backing snapshot is referenced by nothing:
        # say so, or a collection running meanwhile would remove it as garbage.
        with self._creating_lock:
            self._creating.add(bkey)
        try:
            return self._record(ns, k, parent, bparent, bkey, labels, readonly, lease,
                                create(bkey, bparent, inherited(labels)))
        finally:
            with self._creating_lock:
                self._creating.discard(bkey)

    def _record(self, ns: str, k: str, parent: str, bparent: str, bkey: str,
                labels: dict[str, str], readonly: bool, lease: str | None,
                mounts: list[Mount]) -> list[Mount]:
        now = time.time()
        try:
            with self.db.update() as txn:
                if txn.get(self._key(ns, k), db=self._bucket) is not None:
                    raise AlreadyExists(f"snapshot {quote(k)}")
                if parent:
                    prec = get_json(txn, self._bucket, self._key(ns, parent))
                    if prec is None or prec["bkey"] != bparent:
                        raise NotFound(f"parent snapshot {parent} does not exist")
                    prec["children"] = sorted(set(prec.get("children", [])) | {k})
                    put_json(txn, self._bucket, self._key(ns, parent), prec)
                lease_add(self.db, txn, ns, lease, "snapshots", k, self.name)
                put_json(txn, self._bucket, self._key(ns, k),
                         {"name": k, "bkey": bkey, "parent": parent,
                          "kind": int(Kind.VIEW if readonly else Kind.ACTIVE),
                          "labels": {a: b for a, b in labels.items() if b},
                          "created_at": now, "updated_at": now})
        except BaseException:
            self._discard_backing(bkey)
            raise
        self.db.mutated()
        return mounts

    def _discard_backing(self, bkey: str) -> None:
        try:
            self.backing.remove(bkey)
        except Exception:  # noqa: BLE001 - GC removes what is left
            pass

    def prepare(self, ns: str, k: str, parent: str = "", labels: dict[str, str] | None = None,
                lease: str | None = None) -> list[Mount]:
        return self._create(ns, k, parent, labels, False, lease)

    def view(self, ns: str, k: str, parent: str = "", labels: dict[str, str] | None = None,
             lease: str | None = None) -> list[Mount]:
        return self._create(ns, k, parent, labels, True, lease)

    def commit(self, ns: str, name: str, k: str, labels: dict[str, str] | None = None,
               lease: str | None = None, parent: str = "") -> None:
        """Commit active ``k`` as ``name``. ``parent`` (containerd 2.x) rebases a snapshot
        prepared without a parent onto that committed snapshot; a snapshot that has a
        parent keeps it (containerd's metadata snapshotter ignores the request's then)."""
        labels = dict(labels or {})
        identifiers.validate_labels(labels, "snapshot.Labels")
        with self.db.update() as txn:
            if txn.get(self._key(ns, name), db=self._bucket) is not None:
                raise AlreadyExists(f"snapshot {quote(name)}")
            rec = self._get(txn, ns, k)
            # A view or committed key is refused by the backing commit below (its message is
            # containerd's, naming the backing key), which aborts this transaction.
            seq = int(txn.get(b"snapshot-seq", b"0", db=self.db.bucket("meta"))) + 1
            txn.put(b"snapshot-seq", str(seq).encode(), db=self.db.bucket("meta"))
            bname = f"{ns}/{seq}/{name}"
            rebase = bool(parent) and not rec.get("parent")
            parent = rec.get("parent", "") or parent
            bparent = ""
            if parent:
                prec = get_json(txn, self._bucket, self._key(ns, parent))
                if prec is None:
                    raise NotFound(f"parent snapshot {parent} does not exist")
                prec["children"] = sorted((set(prec.get("children", [])) - {k}) | {name})
                put_json(txn, self._bucket, self._key(ns, parent), prec)
                bparent = prec["bkey"]
            now = time.time()
            put_json(txn, self._bucket, self._key(ns, name),
                     {"name": name, "bkey": bname, "parent": parent,
                      "kind": int(Kind.COMMITTED), "children": [],
                      "labels": {a: b for a, b in labels.items() if b},
                      "created_at": now, "updated_at": now})
            txn.delete(self._key(ns, k), db=self._bucket)
            lease_remove(self.db, txn, ns, lease, "snapshots", k, self.name)
            lease_add(self.db, txn, ns, lease, "snapshots", name, self.name)
            # Inside the transaction: if the backing commit fails, nothing here changes.
            self.backing.commit(bname, rec["bkey"], inherited(labels),
                                **({"parent": bparent} if rebase else {}))
        self.db.mutated()

    def remove(self, ns: str, k: str, lease: str | None = None) -> None:
        with self.db.update() as txn:
            rec = self._get(txn, ns, k)
            if rec.get("children"):
                raise FailedPrecondition("cannot remove snapshot with child")
            parent = rec.get("parent", "")
            if parent:
                prec = get_json(txn, self._bucket, self._key(ns, parent))
                if prec is not None:
                    prec["children"] = sorted(set(prec.get("children", [])) - {k})
                    put_json(txn, self._bucket, self._key(ns, parent), prec)
            txn.delete(self._key(ns, k), db=self._bucket)
            lease_remove(self.db, txn, ns, lease, "snapshots", k, self.name)
        self.dirty = True
        self.db.mutated(dirty=True)

    # --- GC ---------------------------------------------------------------------------------

    def cleanup_backing(self) -> int:
        """Remove backing snapshots no namespace refers to (children first), then let the
        backing snapshotter reclaim space. Returns how many were removed.

        Order matters against concurrent creates: list the backing snapshots, then those
        being created, then the references; a snapshot created meanwhile is in one of the
        last two."""
        infos = {i.name: i for i in self.backing.walk()}
        with self._creating_lock:
            creating = set(self._creating)
        with self.db.view() as txn:
            referenced = set()
            for k, v in scan(txn, self._bucket, b""):
                parts = k.split(b"\0", 2)
                if len(parts) == 3 and parts[1] == self.name.encode():
                    referenced.add(json.loads(v)["bkey"])
        referenced |= creating

        def depth(name: str) -> int:
            d, seen = 0, set()
            while name in infos and infos[name].parent and name not in seen:
                seen.add(name)
                name = infos[name].parent
                d += 1
            return d

        self.dirty = False
        removed = 0
        for name in sorted((n for n in infos if n not in referenced), key=depth, reverse=True):
            try:
                self.backing.remove(name)
                removed += 1
            except (FailedPrecondition, NotFound):
                pass
        self.backing.cleanup()
        return removed

