"""Snapshotters: where image layers become file systems.

Lifecycle (containerd's snapshot contract): ``prepare(key, parent)`` makes an *active*
snapshot (writable) on top of a *committed* parent chain and returns the mounts that show it;
``commit(name, key)`` turns an active snapshot into a committed one named ``name`` (the
active key goes away); ``view(key, parent)`` makes a read-only *view* of a committed
snapshot; ``remove(key)`` deletes a snapshot that has no children. ``stat``, ``update``
(labels), ``usage``, ``mounts``, ``walk`` and ``cleanup`` (reclaim space of removed
snapshots) complete it.

``ctrd.snapshots.snapshotter`` declares the records and the Protocol; ``overlay`` and
``native`` implement it with their own metadata under the plugin root;
``ctrd.metadata.snapshots`` layers namespaces, labels and GC references on top;
``ctrd.snapshots.testsuite`` checks any implementation.
"""
