"""Per-blob progress as containerd 2.3.4's ``ProgressTracker`` sends it
(core/transfer/local/progress.go), so ``ctr`` 2.3.4 draws the same tree against ctrd.

Contract (what the client sees, in order):
- ``waiting`` (progress 0, total = size) once per blob, when the pipeline first reaches it,
  named by containerd's ref key (``manifest-<digest>``, ``layer-<digest>``...), its parents
  the ref keys of the blobs that listed it, or the image name for the root;
- ``already exists`` (no parents) at once when the blob was in the store before (with
  ``defer_exists``, on the next update);
- on each :meth:`update` (every :data:`INTERVAL` and a last one from :meth:`close`): the
  transfer state (``downloading``/``uploading``) while the byte count grew, ``complete``
  once the blob is stored, ``extracting`` while a layer applies and ``extracted`` after.

The pipeline calls :meth:`add`, :meth:`exists`, :meth:`done`, :meth:`extracting`,
:meth:`extracted` from worker threads; byte counts are read from a
:class:`ctrd.images.pull.Progress` (``done[digest]``). Events go to the thread-safe
:class:`~ctrd.transfer.progress.ProgressSender`.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from ctrd.api.containerd.types import descriptor_pb2
from ctrd.images import manifest as m

INTERVAL = 0.3  # seconds, containerd's ticker

ADDED, IN_PROGRESS, COMPLETE, EXTRACTING, EXTRACTED = range(5)


def ref_key(desc) -> str:
    """containerd's ``remotes.MakeRefKey``."""
    key = desc.digest
    name = (getattr(desc, "annotations", None) or {}).get("org.opencontainers.image.ref.name")
    if name:
        key = f"{name}@{desc.digest}"
    mt = desc.media_type
    if mt in m.MANIFESTS:
        return "manifest-" + key
    if mt in m.INDEXES:
        return "index-" + key
    if mt in m.LAYERS or mt in m.NON_DISTRIBUTABLE or ".layer." in mt or \
            mt.startswith("application/vnd.docker.image.rootfs."):
        return "layer-" + key
    if mt in m.CONFIGS:
        return "config-" + key
    return "unknown-" + key


def descriptor_pb(desc) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=desc.media_type, digest=desc.digest,
                                     size=desc.size,
                                     annotations=dict(getattr(desc, "annotations", None) or {}))


@dataclass
class _Job:
    name: str
    parents: list[str]
    desc: object
    state: int = ADDED
    progress: int = 0
    stored: bool = False
    pb: descriptor_pb2.Descriptor = field(default=None)  # type: ignore[assignment]


class Tracker:
    """See the module doc. ``root``: the image name (the parent of top-level blobs);
    ``state``: ``downloading`` (pull) or ``uploading`` (push)."""

    def __init__(self, send, root: str, state: str, counts=None,
                 defer_exists: bool = False) -> None:
        self._send, self._root, self._state = send, root, state
        # push: containerd's "already exists" goes through its tracker goroutine, so the
        # client sees the last ones after "Completed push"; sending them on the next
        # update gives the same order
        self._defer_exists = defer_exists
        self._exists: list[_Job] = []
        self._counts = counts  # ctrd.images.pull.Progress, or None
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._task: asyncio.Task | None = None

    # --- from the pipeline (any thread) -----------------------------------------------------

    def add(self, desc, parents) -> None:
        with self._lock:
            if desc.digest in self._jobs:
                return
            names = [ref_key(p) for p in parents] or [self._root]
            job = _Job(ref_key(desc), names, desc, pb=descriptor_pb(desc))
            self._jobs[desc.digest] = job
        self._send("waiting", job.name, parents=job.parents, progress=0, total=desc.size,
                   desc=job.pb)

    def exists(self, desc) -> None:
        with self._lock:
            job = self._jobs.get(desc.digest)
            if job is None or job.state == COMPLETE:
                return
            job.state, job.progress = COMPLETE, desc.size
            if self._defer_exists:
                self._exists.append(job)
                return
        self._send_exists(job)

    def _send_exists(self, job: _Job) -> None:
        self._send("already exists", job.name, progress=job.desc.size, total=job.desc.size,
                   desc=job.pb)

    def done(self, desc) -> None:
        with self._lock:
            job = self._jobs.get(desc.digest)
            if job is not None:
                job.stored = True

    def extracting(self, desc) -> None:
        with self._lock:
            job = self._jobs.get(desc.digest)
            if job is not None:
                job.state, job.progress = EXTRACTING, 0

    def extracted(self, desc) -> None:
        with self._lock:
            job = self._jobs.get(desc.digest)
            if job is not None:
                job.state, job.progress = EXTRACTING, desc.size

    # --- the ticker (loop thread) -----------------------------------------------------------

    def update(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
            exists, self._exists = self._exists, []
        for job in exists:
            self._send_exists(job)
        for job in jobs:
            size = job.desc.size
            if job.state in (ADDED, IN_PROGRESS):
                done = self._counts.done.get(job.desc.digest, 0) if self._counts else 0
                if job.stored:
                    job.state = COMPLETE
                    self._send("complete", job.name, parents=job.parents, progress=size,
                               total=size, desc=job.pb)
                elif done > job.progress:
                    job.progress, job.state = done, IN_PROGRESS
                    self._send(self._state, job.name, parents=job.parents, progress=done,
                               total=size, desc=job.pb)
            elif job.state == EXTRACTING:
                if job.progress == size:
                    job.state = EXTRACTED
                    self._send("extracted", job.name, parents=job.parents, progress=size,
                               total=size, desc=job.pb)
                else:
                    self._send("extracting", job.name, parents=job.parents,
                               progress=job.progress, total=size, desc=job.pb)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            self.update()

    def close(self) -> None:
        """Stop ticking and send the last update (containerd's final ``update()``)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.update()
