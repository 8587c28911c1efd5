"""Content: immutable blobs addressed by digest, and the ingests that produce them.

Lifecycle of a blob (containerd's content contract):

* **Ingester** — ``store.writer(ref, total, expected)`` opens (or resumes) the ingest named
  ``ref``; at most one writer holds a ref at a time (a second gets ``Unavailable``). The
  writer appends at its offset (``write``), can ``truncate`` back, reports ``status()``, and
  ``commit(size, expected)`` verifies size and digest and only then makes the blob visible.
  An ingest survives a daemon restart: reopening the ref continues at its offset.
* **IngestManager** — ``status(ref)``, ``list_statuses(filter)``, ``abort(ref)`` for ingests
  in progress.
* **Provider** — ``reader(digest)`` reads a committed blob at any offset.
* **Manager** — ``info``/``update``/``walk``/``delete`` for committed blobs.

``ctrd.content.store`` declares these as typed Protocols and records; ``ctrd.content.local``
is the on-disk implementation (``blobs/<alg>/<hex>``, ``ingest/<sha256 of ref>/``);
``ctrd.metadata.content`` layers namespaces, labels and leases on top of it;
``ctrd.content.testsuite`` checks any implementation against the contract.
"""
