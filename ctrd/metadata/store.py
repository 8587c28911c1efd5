"""The metadata plugin's instance: one LMDB environment and the stores that share it."""

from __future__ import annotations

from ctrd.content.store import Store
from ctrd.metadata.content import ContentStore
from ctrd.metadata.db import DB
from ctrd.metadata.gc import Stats, collect
from ctrd.metadata.leases import LeaseManager
from ctrd.metadata.namespaces import NamespaceStore


class Metadata:
    """Namespaces, content links, leases (and, as they land, images, containers, snapshots)
    over one :class:`DB`, with :meth:`collect` as the GC's entry point."""

    def __init__(self, path: str, content: Store, map_size: int = 1 << 32) -> None:
        self.db = DB(path, map_size=map_size)
        self.namespaces = NamespaceStore(self.db)
        self.content = ContentStore(self.db, content)
        self.leases = LeaseManager(self.db)

    def collect(self) -> Stats:
        return collect(self.db, self.content.backing)

    def close(self) -> None:
        self.db.close()
