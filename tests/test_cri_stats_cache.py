"""The CRI stats' cheap path: :meth:`Cgroup.stats_metrics` (only the files the CRI's figures
come from) gives the figures the full :meth:`Cgroup.metrics` gives, on cgroup v1 and v2 file
trees as the kernel writes them; :class:`StatsCache` keeps cgroups and writable-layer usage
between calls, refreshes the layer once it is older than its period, and forgets what is
gone."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from ctrd.cri import stats as cs
from ctrd.cri.stats_sources import StatsCache
from ctrd.runtime import cgroups


def _write(d: Path, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for k, v in files.items():
        (d / k).write_text(v)


def _v1_tree(tmp_path: Path) -> cgroups.Cgroup:
    _write(tmp_path / "cpuacct", {"cpuacct.usage": "2000000000\n",
                                  "cpuacct.stat": "user 150\nsystem 50\n",
                                  "cpuacct.usage_percpu": "1500000000 500000000 \n"})
    _write(tmp_path / "cpu", {"cpu.stat": "nr_periods 1\nnr_throttled 0\nthrottled_time 0\n"})
    _write(tmp_path / "pids", {"pids.current": "3\n", "pids.max": "max\n"})
    mem = {"memory.stat": "cache 10\nrss 20\ntotal_rss 21\ntotal_inactive_file 5\n"
                          "total_pgfault 40\ntotal_pgmajfault 2\n",
           "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"}
    for f, v in (("usage_in_bytes", 100), ("max_usage_in_bytes", 150), ("failcnt", 0),
                 ("limit_in_bytes", 1000)):
        mem[f"memory.{f}"] = f"{v}\n"
    _write(tmp_path / "memory", mem)
    return cgroups.Cgroup(1, paths={c: str(tmp_path / c)
                                    for c in ("cpu", "cpuacct", "pids", "memory")})


def _v2_tree(tmp_path: Path) -> cgroups.Cgroup:
    _write(tmp_path / "cg", {
        "cgroup.controllers": "cpu memory pids io\n",
        "cpu.stat": "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 4\n"
                    "nr_throttled 1\nthrottled_usec 77\n",
        "memory.stat": "anon 4096\nfile 8192\ninactive_file 1000\npgfault 12\npgmajfault 1\n",
        "memory.current": "20000\n", "memory.max": "65536\n",
        "memory.swap.current": "0\n", "memory.swap.max": "1000\n",
        "memory.events": "low 0\nhigh 1\nmax 2\noom 3\noom_kill 0\n",
        "pids.current": "2\n", "pids.max": "max\n",
        "io.stat": "254:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n"})
    return cgroups.Cgroup(2, path=str(tmp_path / "cg"))


def _cri_figures(metrics) -> tuple:
    cpu = cs.cpu_usage(metrics, 1)
    mem = cs.memory_usage(metrics, 1)
    return (cpu.usage_core_nano_seconds, mem.working_set_bytes, mem.available_bytes,
            mem.usage_bytes, mem.rss_bytes, mem.page_faults, mem.major_page_faults,
            cs.pids_current(metrics))


def test_stats_metrics_give_the_full_readers_figures_v1(tmp_path):
    cg = _v1_tree(tmp_path)
    assert _cri_figures(cg.stats_metrics()) == _cri_figures(cg.metrics()) == \
        (2000000000, 95, 905, 100, 21, 40, 2, 3)


def test_stats_metrics_give_the_full_readers_figures_v2(tmp_path):
    cg = _v2_tree(tmp_path)
    assert _cri_figures(cg.stats_metrics()) == _cri_figures(cg.metrics()) == \
        (5_000_000, 19000, 46536, 20000, 4096, 12, 1, 2)


def test_stats_metrics_of_missing_controllers_and_files(tmp_path):
    cg = cgroups.Cgroup(1, paths={"memory": str(tmp_path / "gone")})
    m = cg.stats_metrics()
    assert cs.memory_usage(m, 1) is None and cs.pids_current(m) == 0
    gone = cgroups.Cgroup(2, path=str(tmp_path / "nothing"))
    from ctrd.cri.stats_sources import cgroup_metrics

    assert cgroup_metrics(gone, cri_only=True) is None  # NotFound: no figures, no error


def test_stats_metrics_of_this_process_cgroup():
    """The host's own cgroup (v1 here, v2 on unified hosts): both readers agree on what does
    not move between two reads."""
    cg = cgroups.load(os.getpid())
    light, full = cg.stats_metrics(), cg.metrics()
    a, b = cs.memory_usage(light, 1), cs.memory_usage(full, 1)
    assert (a is None) == (b is None)
    if a is not None:
        assert a.available_bytes is not None and b.available_bytes is not None
    assert (cs.cpu_usage(light, 1) is None) == (cs.cpu_usage(full, 1) is None)


class _Snapshots:
    def __init__(self, uppers: dict[str, Path]) -> None:
        self.uppers = uppers
        self.backing = SimpleNamespace(root="/images")

    def mounts(self, ns: str, key: str):
        if key not in self.uppers:
            from ctrd import errdefs

            raise errdefs.NotFound(key)
        return [SimpleNamespace(type="overlay", source="overlay",
                                options=[f"upperdir={self.uppers[key]}", "lowerdir=/x"])]


def test_layer_usage_is_kept_for_its_period_and_forgotten_with_the_container(tmp_path):
    upper = tmp_path / "c1" / "fs"
    upper.mkdir(parents=True)
    rt = SimpleNamespace(snapshotter=lambda: _Snapshots({"c1": upper}))
    cache = StatsCache(layer_period=10.0)
    first = cache.layer_usage(rt, "c1", now=100.0)
    assert first.inodes_used == 1 and first.mountpoint == "/images"
    (upper / "data").write_bytes(b"x" * 65536)
    assert cache.layer_usage(rt, "c1", now=109.0) is first  # within the period: kept
    fresh = cache.layer_usage(rt, "c1", now=110.5)          # older: walked again
    assert fresh.inodes_used == 2 and fresh.used_bytes >= 65536
    assert cache.layer_usage(rt, "nope", now=111.0) is None  # no snapshot: none
    cache.retain({"other"})
    assert cache._layers == {} and cache._cgroups == {}
