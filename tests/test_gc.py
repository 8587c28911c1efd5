"""Garbage collection: what goes, what stays, lease expiry, and the scheduler's triggers."""

from __future__ import annotations

import asyncio
import time

import pytest

from ctrd import errdefs
from ctrd.content.local import LocalStore
from ctrd.durations import parse_seconds
from ctrd.gc.scheduler import Scheduler, SchedulerConfig
from ctrd.metadata.db import key, put_json
from ctrd.metadata.gc import parse_rfc3339
from ctrd.metadata.leases import Resource
from support.metadata import md, put  # noqa: F401 - md is a fixture


def on_disk(md, d) -> bool:
    return md.content.backing.blob_path(d).exists()


def test_unreferenced_content_goes_from_metadata_and_disk(md):
    d = put(md, "ns", b"orphan")
    assert on_disk(md, d)
    stats = md.collect()
    assert stats.removed == {"content": 1} and stats.blobs_deleted == 1
    assert not on_disk(md, d)
    with pytest.raises(errdefs.NotFound):
        md.content.info("ns", d)


def test_roots_and_references_keep_content(md):
    layer = put(md, "ns", b"layer")
    config = put(md, "ns", b"config")
    manifest = put(md, "ns", b"manifest", labels={
        "containerd.io/gc.ref.content.config": config,
        "containerd.io/gc.ref.content.l.0": layer})
    rooted = put(md, "ns", b"rooted", labels={"containerd.io/gc.root": "x"})
    orphan = put(md, "ns", b"orphan")
    with md.db.update() as txn:  # an image record, as the images store will write it
        put_json(txn, md.db.bucket("images"), key("ns", "example/img:1"),
                 {"target": {"digest": manifest}, "labels": {}})
    md.collect()
    for d in (layer, config, manifest, rooted):
        assert md.content.info("ns", d) and on_disk(md, d)
    assert not on_disk(md, orphan)


def test_content_shared_by_two_namespaces_stays_while_either_links_it(md):
    d = put(md, "a", b"both", labels={"containerd.io/gc.root": "1"})
    put(md, "b", b"both")
    md.collect()
    with pytest.raises(errdefs.NotFound):
        md.content.info("b", d)  # b's link was unreferenced
    assert md.content.info("a", d) and on_disk(md, d)


def test_leases_hold_content_until_deleted_or_expired(md):
    md.leases.create("ns", "keep")
    md.leases.create("ns", "gone", {"containerd.io/gc.expire": "2000-01-01T00:00:00Z"})
    md.leases.create("ns", "later", {"containerd.io/gc.expire": "2999-01-01T00:00:00Z"})
    kept = put(md, "ns", b"kept", lease="keep")
    expired = put(md, "ns", b"expired", lease="gone")
    future = put(md, "ns", b"future", lease="later")
    md.collect()
    assert on_disk(md, kept) and on_disk(md, future)
    assert not on_disk(md, expired)
    assert [x.id for x in md.leases.list("ns")] == ["keep", "later"]  # expired lease swept
    md.leases.delete("ns", "keep")
    md.collect()
    assert not on_disk(md, kept)


def test_flat_lease_does_not_follow_references(md):
    child = put(md, "ns", b"child")
    md.leases.create("ns", "flat", {"containerd.io/gc.flat": ""})
    parent = put(md, "ns", b"parent", lease="flat",
                 labels={"containerd.io/gc.ref.content": child})
    md.collect()
    assert on_disk(md, parent) and not on_disk(md, child)


def test_ingests_expire_unless_leased(md):
    md.leases.create("ns", "l")
    for ref, lease in (("leased", "l"), ("fresh", None), ("old", None)):
        w = md.content.writer("ns", ref, lease=lease)
        w.write(b"partial")
        w.close()
    with md.db.update() as txn:
        rec_key = key("ns", "old")
        import json
        rec = json.loads(txn.get(rec_key, db=md.db.bucket("ingests")))
        rec["expire_at"] = time.time() - 1
        put_json(txn, md.db.bucket("ingests"), rec_key, rec)
    md.collect()
    assert sorted(s.ref for s in md.content.list_statuses("ns")) == ["fresh", "leased"]
    assert len(list(md.content.backing.list_statuses())) == 2
    md.leases.delete_resource("ns", "l", Resource("leased", "ingests"))
    md.collect()
    assert [s.ref for s in md.content.list_statuses("ns")] == ["fresh"]


def test_lease_resource_validation(md):
    md.leases.create("ns", "l")
    with pytest.raises(errdefs.InvalidArgument, match="invalid content resource id"):
        md.leases.add_resource("ns", "l", Resource("nope", "content"))
    with pytest.raises(errdefs.InvalidArgument, match="invalid snapshot resource type"):
        md.leases.add_resource("ns", "l", Resource("k", "snapshots"))
    with pytest.raises(errdefs.NotImplemented_, match="not supported yet"):
        md.leases.add_resource("ns", "l", Resource("k", "images"))
    with pytest.raises(errdefs.NotFound, match='lease "x"'):
        md.leases.add_resource("ns", "x", Resource("r", "ingests"))
    with pytest.raises(errdefs.AlreadyExists, match='lease "l": already exists'):
        md.leases.create("ns", "l")
    md.leases.add_resource("ns", "l", Resource("snap1", "snapshots/overlayfs"))
    assert md.leases.list_resources("ns", "l") == [Resource("snap1", "snapshots/overlayfs")]


def test_rfc3339_and_durations():
    assert parse_rfc3339("1970-01-01T00:01:00Z") == 60
    assert parse_rfc3339("1970-01-01T01:00:00+01:00") == 0
    assert parse_rfc3339("yesterday") is None
    assert parse_rfc3339("1970-01-01T00:00:00") is None  # no zone: not RFC 3339
    assert parse_seconds("100ms") == pytest.approx(0.1)
    assert parse_seconds("1m30s") == 90
    with pytest.raises(ValueError):
        parse_seconds("10 seconds")


def _started_scheduler(md) -> tuple[list[float], Scheduler]:
    """A scheduler over ``md`` hearing its mutations, started (in the running loop), and the
    list of monotonic times its collections ran at."""
    runs: list[float] = []

    def collect():
        runs.append(time.monotonic())
        return md.collect()

    s = Scheduler(collect, SchedulerConfig(startup_delay="0s"))
    md.db.on_mutation(s.mutation)
    s.start()
    return runs, s


def test_scheduler_collects_after_a_deletion_and_on_demand(md):
    async def main():
        runs, s = _started_scheduler(md)
        d = put(md, "ns", b"x", labels={"containerd.io/gc.root": "1"})
        for _ in range(1000):  # the mutation reaches the scheduler through the loop
            if s.pending_mutations:
                break
            await asyncio.sleep(0)
        # taken in, and below the threshold: no collection ran or is due
        assert s.pending_mutations > 0 and not s.scheduled and runs == []
        md.content.delete("ns", d)  # a deletion: collect soon
        for _ in range(1000):  # generous: the machine may be busy
            if runs and not on_disk(md, d):
                break
            await asyncio.sleep(0.01)
        assert runs and not on_disk(md, d)
        before = len(runs)
        stats = await s.schedule_and_wait()
        assert len(runs) > before and stats.removed == {}
        await s.close()

    asyncio.run(main())


def test_an_idle_scheduler_arms_no_timer_and_paces_collections(md):
    """After a collection with nothing left to do the scheduler sleeps until a mutation asks
    (no timer: an idle daemon is not woken); a later deletion is collected, no sooner than
    one interval after the previous collection (containerd's pace, its 5 ms floor on the
    average collection time: 245 ms at the default pause threshold)."""
    async def main():
        runs, s = _started_scheduler(md)
        await s.schedule_and_wait()
        assert s._interval >= 0.245 - 1e-9
        d = put(md, "ns", b"y")  # unreferenced: the next collection removes it
        md.content.delete("ns", d)
        while not (len(runs) >= 2 and not on_disk(md, d)):
            await asyncio.sleep(0.01)
        assert runs[1] - runs[0] >= s._interval - 0.01
        loop = asyncio.get_running_loop()
        for _ in range(100):  # the collection's answer settled: then nothing is armed
            if s._next is None and not any(not h.cancelled() for h in loop._scheduled):
                break
            await asyncio.sleep(0.01)
        assert s._next is None
        assert not [h for h in loop._scheduled if not h.cancelled()]
        await s.close()

    asyncio.run(main())


def test_snapshots_follow_gc_roots_and_backing_dirs_go(md, tmp_path):
    from ctrd.snapshots.native import NativeSnapshotter

    backing = NativeSnapshotter(str(tmp_path / "native"))
    s = md.add_snapshotter("native", backing)
    s.prepare("ns", "a")
    s.commit("ns", "layer1", "a")
    s.prepare("ns", "b", "layer1")
    s.commit("ns", "layer2", "b")
    s.prepare("ns", "orphan")
    # The image config references the top layer, as ctr pull labels it.
    cfg = put(md, "ns", b"config", labels={"containerd.io/gc.ref.snapshot.native": "layer2",
                                           "containerd.io/gc.root": "1"})
    assert md.content.info("ns", cfg)
    stats = md.collect()
    names = sorted(i.name for i in s.walk("ns"))
    assert names == ["layer1", "layer2"]  # layer1 kept as layer2's parent
    assert stats.snapshots_deleted == 1
    assert len(list(backing.walk())) == 2
    md.content.delete("ns", cfg)
    md.collect()
    assert s.walk("ns") == [] and list(backing.walk()) == []
    assert list((tmp_path / "native" / "snapshots").iterdir()) == []
    backing.close()
