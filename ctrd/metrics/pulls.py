"""Image pull and plugin figures for the metrics endpoint.

:data:`PULLS` is what the CRI image service records each pull in: plain integers under a
lock, so a pull pays no Prometheus cost and nothing is imported when metrics are off; the
collectors here render it (and the daemon's plugins) at scrape time. Names follow
containerd 2.3.4 where it has them (internal/cri/server/images/metrics.go, through
docker/go-metrics: a counter gets ``_total``, a gauge its unit):

- ``containerd_cri_sandboxed_image_pulls_total{status="success"|"failure"}``
- ``containerd_cri_sandboxed_in_progress_image_pulls_total`` (gauge)
- ``containerd_cri_sandboxed_image_pulling_throughput`` (histogram of MB/s, Prometheus'
  default buckets: the image's size in MB over the pull's seconds)
- ``containerd_build_info_total{version, revision}`` (containerd's core/metrics)

and ctrd's own where containerd has none (the issue asks bytes and durations, and a plugin's
state, which containerd only tells through its introspection API):

- ``ctrd_image_pull_bytes_total``, ``ctrd_image_pull_duration_seconds`` (histogram)
- ``ctrd_plugin_loaded{type, id}``: 1 for a plugin that initialised, 0 for one that failed
  or was skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: Prometheus' default histogram buckets (prom.DefBuckets), as containerd uses them
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.total += v
        self.n += 1

    def samples(self) -> tuple[list[tuple[str, int]], float]:
        return ([(repr(b), c) for b, c in zip(self.buckets, self.counts)] +
                [("+Inf", self.n)], self.total)


class PullStats:
    """Counts of image pulls. ``begin()`` when one starts; ``end(ok, size, seconds)`` when
    it is over (size in bytes of the image's content, 0 when it failed). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success = self.failure = self.in_progress = self.bytes = 0
        self.throughput = _Histogram(DEFAULT_BUCKETS)
        self.seconds = _Histogram(DURATION_BUCKETS)

    def begin(self) -> None:
        with self._lock:
            self.in_progress += 1

    def end(self, ok: bool, size: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            self.in_progress -= 1
            if not ok:
                self.failure += 1
                return
            self.success += 1
            self.bytes += size
            self.seconds.observe(seconds)
            if seconds > 0:
                self.throughput.observe(size / 1024 / 1024 / seconds)

    def snapshot(self) -> dict:
        with self._lock:
            return {"success": self.success, "failure": self.failure,
                    "in_progress": self.in_progress, "bytes": self.bytes,
                    "throughput": self.throughput.samples(),
                    "seconds": self.seconds.samples()}


PULLS = PullStats()


class PullCollector:
    """prometheus-client collector of :data:`PULLS` (or another PullStats)."""

    def __init__(self, stats: PullStats = PULLS) -> None:
        self.stats = stats

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        s = self.stats.snapshot()
        pulls = CounterMetricFamily("containerd_cri_sandboxed_image_pulls",
                                    "succeeded and failed counters", labels=["status"])
        pulls.add_metric(["success"], s["success"])
        pulls.add_metric(["failure"], s["failure"])
        yield pulls
        yield GaugeMetricFamily("containerd_cri_sandboxed_in_progress_image_pulls_total",
                                "in progress pulls", value=s["in_progress"])
        buckets, total = s["throughput"]
        yield HistogramMetricFamily("containerd_cri_sandboxed_image_pulling_throughput",
                                    "image pull throughput", buckets=buckets, sum_value=total)
        yield CounterMetricFamily("ctrd_image_pull_bytes", "bytes of the images pulled",
                                  value=s["bytes"])
        buckets, total = s["seconds"]
        yield HistogramMetricFamily("ctrd_image_pull_duration_seconds",
                                    "seconds a successful image pull took",
                                    buckets=buckets, sum_value=total)


class PluginCollector:
    """``ctrd_plugin_loaded{type, id}`` of the daemon's plugins (``plugins()`` yields
    (type, id, ok)), and containerd's build info."""

    def __init__(self, plugins: Callable[[], Iterable[tuple[str, str, bool]]],
                 version: str, revision: str = "") -> None:
        self.plugins, self.version, self.revision = plugins, version, revision

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        info = CounterMetricFamily("containerd_build_info", "containerd build information",
                                   labels=["version", "revision"])
        info.add_metric([self.version, self.revision], 1)
        yield info
        loaded = GaugeMetricFamily("ctrd_plugin_loaded",
                                   "1 when the plugin initialised, 0 when it failed or was "
                                   "skipped", labels=["type", "id"])
        for type_, id_, ok in self.plugins():
            loaded.add_metric([type_, id_], 1 if ok else 0)
        yield loaded
