"""Namespaced metadata in one LMDB environment: namespaces now; content, images, containers,
snapshots and leases as later capabilities land. Usable without gRPC."""
