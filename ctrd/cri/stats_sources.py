"""Where the CRI plugin's stats and metrics figures come from, per container and per pod.

Shared by the stats RPCs (:mod:`ctrd.cri.container_stats`, :mod:`ctrd.cri.sandbox_stats`) and the metrics RPCs
(:mod:`ctrd.cri.sandbox_metrics`). Each function takes the CRI core (``rt``, a
:class:`ctrd.cri.core.CRIRuntime`) and blocks (file reads): call it from a thread.

- a container's cgroup: ``linux.cgroupsPath`` of its OCI spec (ctrd reads cgroups itself
  rather than asking the shim, so a stats call does not wake every shim);
- a container's writable layer: the snapshot's upper directory (overlay) or bind source
  (native), and the filesystem it lives on;
- a pod's cgroup: its ``cgroup_parent``.

Every function answers None (or an empty value) for "not there" -- a container that exited
meanwhile, a snapshot removed -- and never raises for those: stats are best effort.
"""

from __future__ import annotations

import json
import os

from ctrd import errdefs
from ctrd.cri.helpers import NAMESPACE


def container_spec(rt, cid: str) -> dict | None:
    """The container's OCI spec (a dict), None if the container record is gone."""
    try:
        c = rt.containers.get(NAMESPACE, cid)
        return json.loads(c.spec.value)
    except (errdefs.CtrdError, ValueError):
        return None


def container_cgroup(rt, cid: str, spec: dict | None = None):
    """The container's :class:`ctrd.runtime.cgroups.Cgroup`, None without a cgroupsPath."""
    from ctrd.runtime import cgroups

    spec = container_spec(rt, cid) if spec is None else spec
    path = ((spec or {}).get("linux") or {}).get("cgroupsPath", "")
    if not path:
        return None
    try:
        return cgroups.load_path(path)
    except errdefs.CtrdError:
        return None


def cgroup_metrics(cg, cri_only: bool = False):
    """``cg.metrics()`` (``cri_only``: ``cg.stats_metrics()``, the CRI's figures only) or
    None when it cannot be read (gone, half removed)."""
    if cg is None:
        return None
    try:
        return cg.stats_metrics() if cri_only else cg.metrics()
    except (errdefs.CtrdError, OSError, ValueError):
        return None


def pod_cgroup_metrics(cgroup_parent: str):
    """The metrics of a pod's cgroup parent; None when it is empty, absent or unreadable
    (in ctrd's no-pause mode the directory exists only once runc made a container's)."""
    from ctrd.runtime import cgroups

    if not cgroup_parent:
        return None
    try:
        cg = cgroups.load_path(cgroup_parent)
    except errdefs.CtrdError:
        return None
    if not cg.exists():
        return None
    return cgroup_metrics(cg)


def writable_layer_dir(rt, cid: str) -> tuple[str, str] | None:
    """(upper directory, image filesystem root) of the container's snapshot, or None."""
    try:
        snap = rt.snapshotter()
        mounts = snap.mounts(NAMESPACE, cid)
    except (errdefs.CtrdError, OSError):
        return None
    upper = next((o.split("=", 1)[1] for m in mounts for o in m.options
                  if o.startswith("upperdir=")), None)
    if upper is None:  # native snapshotter: the bind source is the layer
        upper = next((m.source for m in mounts if m.type == "bind"), None)
    if not upper or not os.path.isdir(upper):
        return None
    root = str(getattr(getattr(snap, "backing", None), "root", "")
               or os.path.dirname(os.path.dirname(upper)))
    return upper, root


class StatsCache:
    """What the stats calls of one CRI plugin reuse from call to call, so a kubelet's poll of
    every container costs reads of the figures and not the lookups around them:

    - each container's and pod's :class:`~ctrd.runtime.cgroups.Cgroup` (from the spec's
      ``cgroupsPath`` / the pod's ``cgroup_parent``, parsed once: the OCI spec and the
      mount table are not read per call);
    - each container's writable-layer usage, walked again only once it is older than
      ``layer_period`` seconds (containerd's snapshot syncer refreshes it every
      ``stats_collect_period``; here it is refreshed by the calls that need it, so nothing
      walks while nobody asks).

    Entries go with their container or pod (:meth:`retain`). Thread-safe: the calls run
    their reads in worker threads."""

    def __init__(self, layer_period: float = 10.0) -> None:
        import threading

        self.layer_period = layer_period
        self._cgroups: dict[str, object] = {}
        self._pods: dict[tuple[str, str], object] = {}
        self._layers: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def container_cgroup(self, rt, cid: str):
        with self._lock:
            if cid in self._cgroups:
                return self._cgroups[cid]
        cg = container_cgroup(rt, cid)
        with self._lock:
            self._cgroups[cid] = cg
        return cg

    def pod_metrics(self, sid: str, cgroup_parent: str):
        """:func:`pod_cgroup_metrics`, with the pod's cgroup kept."""
        from ctrd.runtime import cgroups

        if not cgroup_parent:
            return None
        key = (sid, cgroup_parent)
        with self._lock:
            cg = self._pods.get(key)
        if cg is None:
            try:
                cg = cgroups.load_path(cgroup_parent)
            except errdefs.CtrdError:
                return None
            with self._lock:
                self._pods[key] = cg
        if not cg.exists():
            return None
        return cgroup_metrics(cg, cri_only=True)

    def layer_usage(self, rt, cid: str, now: float):
        """The writable layer's FilesystemUsage (:mod:`ctrd.cri.stats`), at most
        ``layer_period`` old; None when the container has no snapshot (any more)."""
        from ctrd.cri import stats as cs

        with self._lock:
            hit = self._layers.get(cid)
        if hit is not None and now - hit[0] < self.layer_period:
            return hit[1]
        where = writable_layer_dir(rt, cid)
        usage = None
        if where is not None:
            try:
                usage = cs.writable_layer_usage(*where)
            except (errdefs.CtrdError, OSError):
                usage = None  # removed meanwhile
        with self._lock:
            self._layers[cid] = (now, usage)
        return usage

    def retain(self, ids: set[str]) -> None:
        with self._lock:
            for d in (self._cgroups, self._layers):
                for k in [k for k in d if k not in ids]:
                    del d[k]
            for k in [k for k in self._pods if k[0] not in ids]:
                del self._pods[k]

