"""Task metrics and OOM events from ctrd's shim, driven directly: Stats answers the task's
cgroup figures in containerd's Metrics types (the Any ``ctr tasks metrics`` decodes), a task
that runs out of memory produces ``/tasks/oom`` before its exit, and the watcher is gone with
the task. (``ctr tasks metrics`` against ctrd: tests/test_cgroups.py.)"""

from __future__ import annotations

import json

import pytest

from ctrd import errdefs
from ctrd.api.containerd.runtime.v2.task import shim_pb2 as api
from ctrd.runtime import cgroups
from shimutil import direct  # noqa: F401 (fixture)
from support.poll import wait_until

MiB = 1 << 20


def limit_memory(bundle, limit: int) -> None:
    spec = json.loads((bundle / "config.json").read_text())
    spec["linux"].setdefault("resources", {})["memory"] = {"limit": limit, "swap": limit}
    (bundle / "config.json").write_text(json.dumps(spec))


def test_stats_are_the_task_cgroup_metrics(direct):
    bundle, _, shim = direct.start("st", ["sleep", "600"])
    limit_memory(bundle, 64 * MiB)
    pid = shim("Create", direct.create_request("st", bundle)).pid
    shim("Start", api.StartRequest(id="st"))
    v2 = cgroups.mode() == "unified"
    from ctrd.api.cgroups.stats.v1 import metrics_pb2 as v1m
    from ctrd.api.cgroups.v2.stats import metrics_pb2 as v2m

    def stats():
        a = shim("Stats", api.StatsRequest(id="st")).stats
        return a, (v2m if v2 else v1m).Metrics.FromString(a.value)

    # pids counts tasks: runc's own may still be leaving the cgroup right after Start.
    assert wait_until(lambda: stats()[1].pids.current == 1)
    any_, m = stats()
    assert any_.type_url == ("io.containerd.cgroups.v2.Metrics" if v2
                             else "io.containerd.cgroups.v1.Metrics")
    if v2:
        assert m.memory.usage_limit == 64 * MiB
    else:
        assert m.memory.usage.limit == 64 * MiB and m.memory.usage.usage > 0
        assert m.cpu.usage.total > 0
    assert type(m) is type(cgroups.load(pid).metrics())
    with pytest.raises(errdefs.NotFound):
        shim("Stats", api.StatsRequest(id="nope"))
    shim("Kill", api.KillRequest(id="st", signal=9))
    shim("Wait", api.WaitRequest(id="st"))
    shim("Delete", api.DeleteRequest(id="st"))
    shim("Shutdown", api.ShutdownRequest(id="st"))


def test_out_of_memory_publishes_tasks_oom(direct):
    # `$(cat /dev/urandom)` grows the shell without bound (NULs would be dropped): the memory
    # cgroup's OOM killer ends it.
    bundle, _, shim = direct.start("oom", ["sh", "-c", "x=$(cat /dev/urandom); echo never"])
    limit_memory(bundle, 16 * MiB)
    shim("Create", direct.create_request("oom", bundle))
    shim("Start", api.StartRequest(id="oom"))
    w = shim("Wait", api.WaitRequest(id="oom"), timeout=60)
    assert w.exit_status == 137
    assert wait_until(lambda: "/tasks/oom" in direct.sink.topics())
    topics = direct.sink.topics()
    oom = next(e for e in direct.sink.envelopes if e.topic == "/tasks/oom")
    assert oom.event.type_url == "containerd.events.TaskOOM"
    from ctrd.api.containerd.events import task_pb2 as ev

    assert ev.TaskOOM.FromString(oom.event.value).container_id == "oom"
    assert topics.index("/tasks/oom") < topics.index("/tasks/delete") \
        if "/tasks/delete" in topics else True
    shim("Delete", api.DeleteRequest(id="oom"))
    shim("Shutdown", api.ShutdownRequest(id="oom"))
