"""Each running task's cgroup figures under containerd's cgroups-plugin names, read when a
scrape asks (prometheus-client calls :meth:`TaskCollector.collect` in the scrape's thread):
``container_`` + the figure + its unit, labelled ``container_id`` and ``namespace``.

cgroup v1 (containerd's metrics/cgroups/v1): ``cpu_total``/``cpu_kernel``/``cpu_user``
nanoseconds, ``memory_usage_usage``/``memory_usage_limit``/``memory_total_rss``/
``memory_total_cache``/``memory_total_inactive_file`` bytes, ``pids`` current and limit.
cgroup v2 (metrics/cgroups/v2): ``cpu_usage_usec``/``cpu_user_usec``/``cpu_system_usec``
microseconds, ``memory_usage``/``memory_usage_limit`` bytes, ``pids`` current and limit.

A task's cgroup is its spec's ``linux.cgroupsPath`` (``<bundle>/config.json``), looked up
once per task; a task whose cgroup cannot be read is left out of that scrape."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Callable

from ctrd import errdefs

V1 = (
    ("cpu_total_nanoseconds", "The total cpu time", lambda m: m.cpu.usage.total),
    ("cpu_kernel_nanoseconds", "The total kernel cpu time", lambda m: m.cpu.usage.kernel),
    ("cpu_user_nanoseconds", "The total user cpu time", lambda m: m.cpu.usage.user),
    ("memory_usage_usage_bytes", "The memory usage", lambda m: m.memory.usage.usage),
    ("memory_usage_limit_bytes", "The memory limit", lambda m: m.memory.usage.limit),
    ("memory_total_rss_bytes", "The total rss amount", lambda m: m.memory.total_rss),
    ("memory_total_cache_bytes", "The total cache amount", lambda m: m.memory.total_cache),
    ("memory_total_inactive_file_bytes", "The total inactive_file amount",
     lambda m: m.memory.total_inactive_file),
    ("pids_current", "The current pids", lambda m: m.pids.current),
    ("pids_limit", "The limit to the number of pids allowed", lambda m: m.pids.limit),
)
V2 = (
    ("cpu_usage_usec_microseconds", "Total cpu usage (cgroup v2)",
     lambda m: m.cpu.usage_usec),
    ("cpu_user_usec_microseconds", "Current cpu usage in user space (cgroup v2)",
     lambda m: m.cpu.user_usec),
    ("cpu_system_usec_microseconds", "Current cpu usage in kernel space (cgroup v2)",
     lambda m: m.cpu.system_usec),
    ("memory_usage_bytes", "Current memory usage (cgroup v2)", lambda m: m.memory.usage),
    ("memory_usage_limit_bytes", "Current memory usage limit (cgroup v2)",
     lambda m: m.memory.usage_limit),
    ("pids_current", "The current pids", lambda m: m.pids.current),
    ("pids_limit", "The limit to the number of pids allowed", lambda m: m.pids.limit),
)


class TaskCollector:
    """``tasks()`` lists (namespace, id, bundle path) of the running tasks; it is called
    from the scrape's thread, so it must only read (a copy of) the manager's table."""

    def __init__(self, tasks: Callable[[], list[tuple[str, str, str]]]) -> None:
        self._tasks = tasks
        self._cgroups: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    def _cgroup(self, key: tuple[str, str, str]):
        with self._lock:
            if key in self._cgroups:
                return self._cgroups[key]
        from ctrd.runtime import cgroups

        cg = None
        try:
            with open(os.path.join(key[2], "config.json")) as f:
                path = ((json.load(f).get("linux") or {}).get("cgroupsPath") or "")
            if path:
                cg = cgroups.load_path(path)
        except (OSError, ValueError, AttributeError, errdefs.CtrdError):
            cg = None
        with self._lock:
            self._cgroups[key] = cg
        return cg

    def describe(self):
        return []  # families depend on the host's cgroup version: found at collect time

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        tasks = self._tasks()
        live = set(tasks)
        with self._lock:
            for k in [k for k in self._cgroups if k not in live]:
                del self._cgroups[k]
        rows: list[tuple[Any, tuple[str, str]]] = []
        version = 1
        for key in tasks:
            cg = self._cgroup(key)
            if cg is None:
                continue
            try:
                m = cg.metrics()
            except (errdefs.CtrdError, OSError, ValueError):
                continue  # exited meanwhile: not in this scrape
            version = cg.version
            rows.append((m, (key[1], key[0])))
        for name, help_, get in (V2 if version == 2 else V1):
            fam = GaugeMetricFamily("container_" + name, help_,
                                    labels=["container_id", "namespace"])
            for m, labels in rows:
                fam.add_metric(list(labels), float(get(m)))
            yield fam
