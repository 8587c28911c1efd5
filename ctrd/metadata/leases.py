"""Leases: named, optionally expiring holds on content, ingests and snapshots.

A lease is a GC root while it lives (``containerd.io/gc.expire`` in RFC 3339 ends it). What a
client creates under a lease (gRPC metadata ``containerd-lease``) is recorded as the lease's
resource in the same transaction that creates it, so nothing is ever briefly unreferenced.
Deleting a lease makes its resources collectable (the GC scheduler hears about it).

Storage: bucket ``leases``, key ``<ns>\\0<id>``, value JSON ``{created_at, labels, content:
[digest], ingests: [ref], snapshots: {snapshotter: [key]}}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ctrd import identifiers
from ctrd.content.store import validate_digest
from ctrd.errdefs import AlreadyExists, InvalidArgument, NotFound, NotImplemented_, quote
from ctrd.metadata.db import DB, get_json, key, name_of, prefix, put_json, scan

GC_EXPIRE = "containerd.io/gc.expire"
GC_FLAT = "containerd.io/gc.flat"


@dataclass
class Lease:
    """A lease record (the resources it holds are kept apart)."""

    id: str
    created_at: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resource:
    """``type`` is ``content``, ``ingests`` or ``snapshots/<snapshotter>``."""

    id: str
    type: str


def parse_resource(r: Resource) -> tuple[str, str | None, str]:
    """(kind, snapshotter, id) of a lease resource; containerd's rules and messages."""
    parts = r.type.split("/")
    kind = parts[0]
    if kind in ("content", "ingests"):
        if len(parts) != 1:
            raise InvalidArgument(f"invalid resource type {r.type}")
        if kind == "content":
            try:
                validate_digest(r.id)
            except InvalidArgument as e:
                raise InvalidArgument(f"invalid content resource id {r.id}: {e.detail}") from None
        return kind, None, r.id
    if kind == "snapshots":
        if len(parts) != 2:
            raise InvalidArgument(f"invalid snapshot resource type {r.type}")
        identifiers.validate(parts[1])
        return kind, parts[1], r.id
    raise NotImplemented_(f"resource type {r.type} not supported yet")


def _record_add(rec: dict, kind: str, snapshotter: str | None, rid: str) -> None:
    if kind == "snapshots":
        items = rec.setdefault("snapshots", {}).setdefault(snapshotter, [])
    else:
        items = rec.setdefault(kind, [])
    if rid not in items:
        items.append(rid)
        items.sort()


def _record_remove(rec: dict, kind: str, snapshotter: str | None, rid: str) -> bool:
    items = (rec.get("snapshots", {}).get(snapshotter, []) if kind == "snapshots"
             else rec.get(kind, []))
    if rid in items:
        items.remove(rid)
        return True
    return False


def lease_add(db: DB, txn, ns: str, lease_id: str | None, kind: str, rid: str,
              snapshotter: str | None = None) -> bool:
    """Inside a write txn: record ``rid`` under the call's lease. No lease: no-op, False.
    A lease that does not exist is NotFound (as containerd: "lease does not exist")."""
    if not lease_id:
        return False
    bucket = db.bucket("leases")
    k = key(ns, lease_id)
    rec = get_json(txn, bucket, k)
    if rec is None:
        raise NotFound("lease does not exist")
    _record_add(rec, kind, snapshotter, rid)
    put_json(txn, bucket, k, rec)
    return True


def lease_remove(db: DB, txn, ns: str, lease_id: str | None, kind: str, rid: str,
                 snapshotter: str | None = None) -> None:
    if not lease_id:
        return
    bucket = db.bucket("leases")
    k = key(ns, lease_id)
    rec = get_json(txn, bucket, k)
    if rec is not None and _record_remove(rec, kind, snapshotter, rid):
        put_json(txn, bucket, k, rec)


def resources_of(rec: dict) -> list[Resource]:
    out = [Resource(d, "content") for d in rec.get("content", [])]
    out += [Resource(r, "ingests") for r in rec.get("ingests", [])]
    for snapshotter, keys in sorted(rec.get("snapshots", {}).items()):
        out += [Resource(k, f"snapshots/{snapshotter}") for k in keys]
    return out


class LeaseManager:
    """Lease CRUD and resources; each method is one transaction."""

    def __init__(self, db: DB) -> None:
        self.db = db

    @property
    def _bucket(self):
        return self.db.bucket("leases")

    def create(self, ns: str, lease_id: str, labels: dict[str, str] | None = None) -> Lease:
        if not lease_id:
            raise InvalidArgument("lease id must be provided")
        labels = dict(labels or {})
        identifiers.validate_labels(labels, "lease.Labels")
        lease = Lease(lease_id, time.time(), labels)
        with self.db.update() as txn:
            self.db.ensure_namespace(txn, ns)
            k = key(ns, lease_id)
            if txn.get(k, db=self._bucket) is not None:
                raise AlreadyExists(f"lease {quote(lease_id)}")
            put_json(txn, self._bucket, k, {"name": lease_id, "created_at": lease.created_at,
                                            "labels": labels})
        return lease

    def delete(self, ns: str, lease_id: str) -> None:
        with self.db.update() as txn:
            if not txn.delete(key(ns, lease_id), db=self._bucket):
                raise NotFound(f"lease {quote(lease_id)}")
        self.db.mutated(dirty=True)

    def get(self, ns: str, lease_id: str) -> Lease:
        with self.db.view() as txn:
            rec = get_json(txn, self._bucket, key(ns, lease_id))
        if rec is None:
            raise NotFound(f"lease {quote(lease_id)}")
        return Lease(lease_id, rec["created_at"], rec.get("labels", {}))

    def list(self, ns: str, match: Callable[[Lease], bool] | None = None) -> list[Lease]:
        import json

        out = []
        with self.db.view() as txn:
            for k, v in scan(txn, self._bucket, prefix(ns)):
                rec = json.loads(v)
                lease = Lease(name_of(k, rec), rec["created_at"], rec.get("labels", {}))
                if match is None or match(lease):
                    out.append(lease)
        return out

    def add_resource(self, ns: str, lease_id: str, r: Resource) -> None:
        kind, snapshotter, rid = parse_resource(r)
        with self.db.update() as txn:
            rec = get_json(txn, self._bucket, key(ns, lease_id))
            if rec is None:
                raise NotFound(f"lease {quote(lease_id)}")
            _record_add(rec, kind, snapshotter, rid)
            put_json(txn, self._bucket, key(ns, lease_id), rec)

    def delete_resource(self, ns: str, lease_id: str, r: Resource) -> None:
        kind, snapshotter, rid = parse_resource(r)
        with self.db.update() as txn:
            rec = get_json(txn, self._bucket, key(ns, lease_id))
            if rec is None:
                raise NotFound(f"lease {quote(lease_id)}")
            removed = _record_remove(rec, kind, snapshotter, rid)
            put_json(txn, self._bucket, key(ns, lease_id), rec)
        if removed:
            self.db.mutated(dirty=True)

    def list_resources(self, ns: str, lease_id: str) -> list[Resource]:
        with self.db.view() as txn:
            rec = get_json(txn, self._bucket, key(ns, lease_id))
        if rec is None:
            raise NotFound(f"lease {quote(lease_id)}")
        return resources_of(rec)
