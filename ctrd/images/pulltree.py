"""Pull an image tree the way containerd 2.x's transfer service does: several platforms, the
metadata (manifests and configs) of the others, a cap on how many manifests, unpack per
platform into a named snapshotter, progress per blob.

It drives the same blob pipeline as :func:`ctrd.images.pull.pull` (``_Pull``: bounded and
verified documents, resumable layer ingests, in-order apply with GC labels); what differs is
which blobs it walks:

- an index's manifests are filtered by ``platforms`` (empty: all); with ``all_metadata`` the
  others are still fetched, manifest and config only (containerd's
  ``FilterManifestByPlatformHandler``); ``manifest_limit`` keeps the first N matches;
- every index and manifest is labelled with *all* its children (``gc.ref.content.m.<i>``,
  ``.config``, ``.l.<i>``), fetched or not, as containerd's ``SetChildrenMappedLabels``;
- a matched manifest's layers are fetched, and unpacked when an ``unpacks`` entry matches its
  platform (its snapshotter, or the default one); when that snapshotter already has the top
  chain, the layers are neither fetched nor shown (containerd's unpacker skips them);
- every blob handled gets ``containerd.io/distribution.source.<host>=<repos>``.

Everything is written under a lease of its own, dropped at the end: ``store(root)`` (creating
the image records) runs before the lease goes, so the content is always referenced.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ctrd.errdefs import InvalidArgument, NotFound
from ctrd.images import manifest as m
from ctrd.images.manifest import Descriptor, Platform
from ctrd.images.pull import (MAX_DEPTH, Fetcher, Progress, Tracker, _NO_TRACKER, _Pull,
                              _rfc3339, fetch_layers)

log = logging.getLogger("ctrd.images")

DEFAULT_SNAPSHOTTER = "overlayfs"
SOURCE_LABEL = "containerd.io/distribution.source."
MAX_LABEL = 4096  # containerd's labels.Validate: key + value


@dataclass
class TreeOptions:
    platforms: list[Platform] = field(default_factory=list)  # empty: every platform
    all_metadata: bool = False
    manifest_limit: int = 0
    # (platform, snapshotter); a platform without architecture matches by OS
    unpacks: list[tuple[Platform, str]] = field(default_factory=list)
    workers: int = 3
    source: tuple[str, str] | None = None  # (registry hostname, repository) for the label


@dataclass
class TreeResult:
    root: Descriptor
    chains: dict[str, str] = field(default_factory=dict)  # manifest digest -> top chain id
    stored: object = None  # what ``store`` returned


def append_source(value: str, repo: str) -> str:
    """containerd's ``appendDistributionSourceLabel``: the sorted set of repositories."""
    repos = set(filter(None, value.split(","))) | {repo}
    return ",".join(sorted(repos))


def _matches_any(platforms: list[Platform], have: Platform | None) -> bool:
    return not platforms or any(m.matches(p, have) for p in platforms)


def _config_platform(config_data: bytes) -> Platform | None:
    try:
        cfg = json.loads(config_data)
    except ValueError:
        return None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("os"), str):
        return None
    return Platform(str(cfg.get("os") or ""), str(cfg.get("architecture") or ""),
                    str(cfg.get("variant") or ""))


class _Tree:
    def __init__(self, p: _Pull, opts: TreeOptions, tracker: Tracker) -> None:
        self.p, self.opts, self.tracker = p, opts, tracker
        self.result: TreeResult | None = None
        self.handled: list[Descriptor] = []
        self.seen: set[str] = set()

    def document(self, desc: Descriptor, parents: list[Descriptor], limit: int) -> bytes:
        """The bytes of a small blob, tracked: "already exists" when content has it."""
        self.tracker.add(desc, parents)
        self.handled.append(desc)
        if self.p.have(desc):
            self.tracker.exists(desc)
        return self.p.document(desc, limit)

    def stored(self, desc: Descriptor, data: bytes, labels: dict[str, str]) -> None:
        existed = self.p.have(desc)
        self.p.store(desc, data, labels)
        if not existed:
            self.tracker.done(desc)

    def visit(self, desc: Descriptor, parents: list[Descriptor], depth: int,
              platform: Platform | None, want_layers: bool) -> None:
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"indexes nested deeper than {MAX_DEPTH}")
        m.check_media_type(desc.media_type)
        if desc.digest in self.seen:
            if depth and desc.media_type in m.INDEXES:
                raise InvalidArgument(f"index loop at {desc.digest}")
            return
        self.seen.add(desc.digest)
        limit = m.MAX_MANIFEST
        if desc.media_type in m.INDEXES:
            data = self.document(desc, parents, limit)
            index = m.parse_index(data, desc.media_type)
            labels = {f"containerd.io/gc.ref.content.m.{i}": c.digest
                      for i, c in enumerate(index.manifests)}
            chosen = [c for c in index.manifests if _matches_any(self.opts.platforms, c.platform)]
            if self.opts.manifest_limit > 0:
                chosen = chosen[:self.opts.manifest_limit]
            if not chosen and self.opts.platforms:
                raise NotFound(f"no match for platform in manifest {desc.digest}")
            for child in index.manifests:
                keep = any(c is child for c in chosen)
                if keep or (self.opts.all_metadata and child.media_type in m.MANIFESTS):
                    self.visit(child, [desc], depth + 1, child.platform, keep and want_layers)
            self.stored(desc, data, labels)
            return
        data = self.document(desc, parents, limit)
        man = m.parse_manifest(data, desc.media_type)
        labels = {"containerd.io/gc.ref.content.config": man.config.digest}
        labels.update({f"containerd.io/gc.ref.content.l.{i}": x.digest
                       for i, x in enumerate(man.layers)})
        config_data = self.document(man.config, [desc], m.MAX_CONFIG)
        config_labels: dict[str, str] = {}
        if want_layers:
            platform = platform or _config_platform(config_data)
            chain, snapshotter = self.layers(desc, man, config_data, platform)
            if chain and snapshotter:
                config_labels[f"containerd.io/gc.ref.snapshot.{snapshotter}"] = chain
                assert self.result is not None
                self.result.chains[desc.digest] = chain
        self.stored(man.config, config_data, config_labels)
        self.stored(desc, data, labels)

    def snapshotter_for(self, platform: Platform | None) -> str:
        """The snapshotter to unpack ``platform`` into ("" for no unpack)."""
        for want, snapshotter in self.opts.unpacks:
            if platform is None or (m.matches(want, platform) if want.architecture
                                    else want.os == platform.os):
                name = snapshotter or DEFAULT_SNAPSHOTTER
                if name in self.p.md.snapshotters:
                    return name
                # containerd: "Unpack configuration not supported, skipping"
                log.warning("unpack into snapshotter %r not supported (not loaded); skipping",
                            name)
                return ""
        return ""

    def layers(self, desc: Descriptor, man: m.Manifest, config_data: bytes,
               platform: Platform | None) -> tuple[str, str]:
        ids = m.diff_ids(config_data)
        layers = [x for x in man.layers if x.media_type not in m.NON_DISTRIBUTABLE]
        if len(ids) != len(layers):
            raise InvalidArgument(f"image config lists {len(ids)} layers, the manifest "
                                  f"{len(layers)}")
        snapshotter = self.snapshotter_for(platform)
        chain = m.chain_ids(ids)[-1] if ids else ""
        if snapshotter and chain:
            try:
                self.p.md.snapshotters[snapshotter].stat(self.p.ns, chain)
                return chain, snapshotter  # unpacked before: nothing to fetch
            except NotFound:
                pass
        for x in layers:
            self.tracker.add(x, [desc])
            self.handled.append(x)
        return fetch_layers(self.p, layers, ids, self.opts.workers, snapshotter) or chain, \
            snapshotter

    def label_sources(self) -> None:
        if self.opts.source is None:
            return
        host, repo = self.opts.source
        key = SOURCE_LABEL + host
        content = self.p.md.content
        for d in {d.digest: d for d in self.handled}.values():
            try:
                info = content.info(self.p.ns, d.digest)
            except NotFound:
                continue  # not fetched (a layer the unpacker skipped)
            value = append_source((info.labels or {}).get(key, ""), repo)
            if len(key) + len(value) > MAX_LABEL:
                log.warning("skip to append distribution label %s: too long", key)
                continue
            content.update(self.p.ns, d.digest, {key: value}, [f"labels.{key}"])


def pull_tree(md, ns: str, root: Descriptor, fetcher: Fetcher, opts: TreeOptions, *,
              store: Callable[[Descriptor], object], tracker: Tracker | None = None,
              progress: Progress | None = None) -> TreeResult:
    """Pull ``root`` into namespace ``ns`` as the module doc says; ``store(root)`` names it."""
    lease = f"pull-{time.time_ns()}-{os.urandom(4).hex()}"
    md.leases.create(ns, lease, {"containerd.io/gc.expire": _rfc3339(time.time() + 86400)})
    try:
        p = _Pull(md, ns, "", fetcher, m.host_platform(), progress or Progress(), lease,
                  tracker)
        tree = _Tree(p, opts, tracker or _NO_TRACKER)
        tree.result = TreeResult(root)
        tree.visit(root, [], 0, None, True)
        tree.label_sources()
        tree.result.stored = store(root)
        return tree.result
    finally:
        try:
            md.leases.delete(ns, lease)
        except NotFound:
            pass
