"""The metadata plugin's instance: one LMDB environment and the stores that share it."""

from __future__ import annotations

from ctrd.content.store import Store
from ctrd.metadata.content import ContentStore
from ctrd.metadata.db import DB
from ctrd.metadata.gc import Stats, collect
from ctrd.metadata.images import ImageStore
from ctrd.metadata.leases import LeaseManager
from ctrd.metadata.namespaces import NamespaceStore
from ctrd.metadata.snapshots import NamespacedSnapshotter


class Metadata:
    """Namespaces, content links, leases (and, as they land, images, containers, snapshots)
    over one :class:`DB`, with :meth:`collect` as the GC's entry point."""

    def __init__(self, path: str, content: Store, map_size: int = 1 << 32) -> None:
        self.db = DB(path, map_size=map_size)
        self.namespaces = NamespaceStore(self.db)
        self.content = ContentStore(self.db, content)
        self.leases = LeaseManager(self.db)
        self.images = ImageStore(self.db)
        self.snapshotters: dict[str, NamespacedSnapshotter] = {}

    def add_snapshotter(self, name: str, backing) -> NamespacedSnapshotter:
        """Put a snapshotter plugin's instance under namespaced metadata."""
        s = self.snapshotters[name] = NamespacedSnapshotter(self.db, name, backing)
        return s

    def collect(self) -> Stats:
        """Mark and sweep metadata and content, then remove the backing snapshots that no
        namespace refers to any more (only for snapshotters where something went)."""
        stats = collect(self.db, self.content.backing)
        for name, s in self.snapshotters.items():
            if s.dirty or name in stats.snapshotters:
                stats.snapshots_deleted += s.cleanup_backing()
        return stats

    def close(self) -> None:
        self.db.close()
