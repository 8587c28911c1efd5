"""Namespaces and their labels (containerd's metadata namespace store semantics)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ctrd import identifiers
from ctrd.errdefs import AlreadyExists, FailedPrecondition, NotFound, quote
from ctrd.metadata.db import DB, prefix, scan

# Buckets whose keys start with the namespace; a namespace is deletable when all are empty:
# (bucket, what containerd calls it in the error). Leases do not keep a namespace alive.
NAMESPACED_BUCKETS: list[tuple[str, str]] = [("images", "images"), ("content", "blobs"),
                                             ("containers", "containers")]


@dataclass
class Namespace:
    """A namespace record."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)


class NamespaceStore:
    """Create, label, list and delete namespaces. Each method is one transaction."""

    def __init__(self, db: DB) -> None:
        self.db = db

    def _get(self, txn, name: str) -> dict[str, str] | None:
        raw = txn.get(name.encode(), db=self.db.bucket("namespaces"))
        return None if raw is None else json.loads(raw)

    def _put(self, txn, name: str, labels: dict[str, str]) -> None:
        txn.put(name.encode(), json.dumps(labels, sort_keys=True).encode(),
                db=self.db.bucket("namespaces"))

    def create(self, name: str, labels: dict[str, str] | None = None) -> Namespace:
        identifiers.validate(name)
        labels = {k: v for k, v in (labels or {}).items()}
        identifiers.validate_labels(labels, "namespace.Labels")
        with self.db.update() as txn:
            if self._get(txn, name) is not None:
                raise AlreadyExists(f"namespace {quote(name)}")
            self._put(txn, name, {k: v for k, v in labels.items() if v})
        return Namespace(name, labels)

    def get(self, name: str) -> Namespace:
        """A namespace's labels; one that does not exist reads as having none (containerd's
        Get never says NotFound: clients call it on "default" before anything exists)."""
        with self.db.view() as txn:
            return Namespace(name, self._get(txn, name) or {})

    def ensure(self, name: str) -> None:
        """Create ``name`` if missing (objects created in a namespace create it, as in
        containerd)."""
        identifiers.validate(name)
        with self.db.update() as txn:
            self.db.ensure_namespace(txn, name)

    def list(self) -> list[Namespace]:
        with self.db.view() as txn:
            cur = txn.cursor(db=self.db.bucket("namespaces"))
            return [Namespace(k.decode(), json.loads(v)) for k, v in cur]

    def set_labels(self, name: str, labels: dict[str, str], replace: bool) -> Namespace:
        """Set (or, for an empty value, remove) labels; ``replace`` drops the others first.

        Labelling a namespace that does not exist creates it, as containerd's store does.
        """
        identifiers.validate(name)
        identifiers.validate_labels(labels, "namespace.Labels")
        with self.db.update() as txn:
            current = {} if replace else (self._get(txn, name) or {})
            current.update(labels)
            current = {k: v for k, v in current.items() if v}
            self._put(txn, name, current)
        return Namespace(name, current)

    def _snapshotters(self, txn, name: str) -> list[str]:
        """Snapshotters holding snapshots of ``name`` (keys ``<ns>\\0<snapshotter>\\0<key>``)."""
        from ctrd.metadata.db import split

        found: list[str] = []
        for k, _ in scan(txn, self.db.bucket("snapshots"), prefix(name)):
            s = split(k, 3)[1]
            if s not in found:
                found.append(s)
        return found

    def delete(self, name: str) -> None:
        with self.db.update() as txn:
            if self._get(txn, name) is None:
                raise NotFound(f"namespace {quote(name)}")
            still = [what for bucket, what in NAMESPACED_BUCKETS
                     if self.db.has_prefix(txn, bucket, prefix(name))]
            still += [f"snapshots on {quote(s)} snapshotter"
                      for s in self._snapshotters(txn, name)]
            if still:
                raise FailedPrecondition(f"namespace {quote(name)} must be empty, "
                                         f"but it still has {', '.join(still)}")
            # Sandboxes do not keep a namespace (containerd 2.x): they go with it.
            sandboxes = self.db.bucket("sandboxes")
            for k in [k for k, _ in scan(txn, sandboxes, prefix(name))]:
                txn.delete(k, db=sandboxes)
            txn.delete(name.encode(), db=self.db.bucket("namespaces"))
