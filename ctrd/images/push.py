"""Walking an image held in a content store, and pushing it to a registry (client side).

Content is reached only through a *reader*: ``read(digest) -> Iterator[bytes]``, the blob's
bytes as a stream of chunks (:meth:`ctrd.cli.client.Client.read_content` is one; a dict
lookup is another, for tests). Manifests and indexes are read whole, with the size caps of
:mod:`ctrd.images.manifest`; layers are streamed to the registry, never held in memory.

:func:`walk` lists an image parent-first (index, its manifests, each manifest's config and
layers), optionally only the manifests of one platform. :func:`push` uploads, in the order a
registry needs: every blob it lacks (``blob_exists``), then the manifests children-first,
then the root under its tag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ctrd.errdefs import FailedPrecondition, InvalidArgument, NotFound
from ctrd.images import manifest as m
from ctrd.images.manifest import Descriptor, Platform

Reader = Callable[[str], Iterable[bytes]]
MAX_DEPTH = 8  # nested indexes


def read_all(read: Reader, desc: Descriptor, limit: int = m.MAX_MANIFEST) -> bytes:
    """The whole of a small blob, capped at ``limit`` bytes and verified against ``desc``."""
    if desc.size > limit:
        raise InvalidArgument(f"{desc.digest}: size {desc.size} exceeds the {limit}-byte limit")
    data = bytearray()
    for chunk in read(desc.digest):
        data += chunk
        if len(data) > limit:
            raise InvalidArgument(f"{desc.digest}: more than {limit} bytes")
    data = bytes(data)
    m.verify(desc, data)
    return data


def is_index(desc: Descriptor) -> bool:
    return desc.media_type in m.INDEXES


def is_manifest(desc: Descriptor) -> bool:
    return desc.media_type in m.MANIFESTS


@dataclass
class Node:
    """One blob of an image: its descriptor, and for an index or manifest its document."""

    desc: Descriptor
    data: bytes | None = None
    children: list[Descriptor] | None = None


def walk(read: Reader, root: Descriptor, platform: Platform | list[Platform] | None = None,
         strict: bool = True) -> list[Node]:
    """The image's blobs, parent-first, each once. With ``platform``, an index contributes
    only its manifests for that platform (or any of a list; an empty list: all) (as ``ctr
    images ls`` sizes images). With
    ``strict=False`` manifests of an index that are not in the store are skipped (a pull
    fetches only the host's platform); the root, configs and layers are not checked here."""
    out: list[Node] = []
    seen: set[str] = set()
    wanted = [platform] if isinstance(platform, Platform) else list(platform or [])

    def visit(desc: Descriptor, depth: int, optional: bool) -> None:
        if desc.digest in seen:
            return
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"{desc.digest}: indexes nested more than {MAX_DEPTH} deep")
        if is_index(desc) or is_manifest(desc):
            try:
                data = read_all(read, desc)
            except NotFound:
                if optional:
                    return
                raise
            seen.add(desc.digest)
            node = Node(desc, data)
            out.append(node)
            if is_index(desc):
                idx = m.parse_index(data, desc.media_type)
                node.children = idx.manifests
                for child in idx.manifests:
                    if wanted and not any(m.matches(p, child.platform) for p in wanted):
                        continue
                    visit(child, depth + 1, optional or not strict)
            else:
                man = m.parse_manifest(data, desc.media_type)
                node.children = [man.config] + man.layers
                for child in node.children:
                    if child.digest not in seen:
                        seen.add(child.digest)
                        out.append(Node(child))
        else:
            seen.add(desc.digest)
            out.append(Node(desc))

    visit(root, 0, False)
    return out


def platforms(read: Reader, root: Descriptor) -> list[str]:
    """The platforms an image offers: an index's manifests' platforms, or a manifest's
    config's os/architecture (as ``ctr images ls`` shows them)."""
    import json

    if is_index(root):
        idx = m.parse_index(read_all(read, root), root.media_type)
        return sorted({str(d.platform) for d in idx.manifests if d.platform is not None})
    if is_manifest(root):
        man = m.parse_manifest(read_all(read, root), root.media_type)
        cfg = json.loads(read_all(read, man.config, m.MAX_CONFIG))
        p = Platform(str(cfg.get("os") or ""), str(cfg.get("architecture") or ""),
                     str(cfg.get("variant") or ""))
        return [str(p)] if p.os else []
    return []


class _Stream:
    """A file-like view of a reader's chunks that checks size and digest at EOF."""

    def __init__(self, read: Reader, desc: Descriptor) -> None:
        self.desc = desc
        self._chunks: Iterator[bytes] = iter(read(desc.digest))
        self._buf = b""
        self._n = 0
        self._h = hashlib.sha256()
        self._done = False

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buf) < n):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
                if self._n != self.desc.size or (
                        self.desc.digest.startswith("sha256:")
                        and "sha256:" + self._h.hexdigest() != self.desc.digest):
                    raise FailedPrecondition(f"{self.desc.digest}: content does not match its "
                                             f"descriptor ({self._n} bytes read)")
                break
            self._n += len(chunk)
            self._h.update(chunk)
            self._buf += chunk
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data


def children_first(nodes: list[Node]) -> list[Node]:
    """The index and manifest nodes of :func:`walk`'s answer, each after all its children."""
    docs = {n.desc.digest: n for n in nodes if n.data is not None}
    out: list[Node] = []
    done: set[str] = set()

    def visit(node: Node) -> None:
        if node.desc.digest in done:
            return
        done.add(node.desc.digest)
        for child in node.children or ():
            if child.digest in docs:
                visit(docs[child.digest])
        out.append(node)

    for node in docs.values():
        visit(node)
    return out


@dataclass
class PushResult:
    pushed: list[str]    # digests of the blobs uploaded
    skipped: list[str]   # blobs the registry already had
    manifests: list[str]  # manifests and indexes put, children first


def push(read: Reader, repo, root: Descriptor, tag: str = "",
         progress: Callable[[str, str], None] | None = None,
         chunk_size: int = 0, *, platforms: list[Platform] | None = None,
         mount_from: Callable[[Descriptor], str | None] | None = None,
         nodes: list[Node] | None = None) -> PushResult:
    """Push the image ``root`` (an index or manifest in the reader's store) to ``repo`` (a
    :class:`ctrd.remotes.registry.Repository`), and tag it ``tag`` (empty: by digest only).

    ``platforms``: only an index's manifests for these (None or empty: all). ``mount_from``:
    a repository of the same registry a blob may be mounted from (its distribution source),
    or None. ``nodes``: :func:`walk`'s answer when the caller already has it. A manifest the
    registry already has under that tag (or digest) is not put again ("exists").

    Manifests of an index that the store lacks (not pulled for this platform) cannot be
    pushed: that is an error, as an index pointing at missing manifests would be refused."""
    report = progress or (lambda digest, status: None)
    nodes = nodes if nodes is not None else walk(read, root, platforms or None)
    result = PushResult([], [], [])
    for node in nodes:
        if node.data is not None:
            continue
        if node.desc.media_type in m.NON_DISTRIBUTABLE or node.desc.urls:
            report(node.desc.digest, "skipped (non-distributable)")
            continue
        if repo.blob_exists(node.desc):
            result.skipped.append(node.desc.digest)
            report(node.desc.digest, "exists")
            continue
        report(node.desc.digest, "uploading")
        source = mount_from(node.desc) if mount_from is not None else None
        if repo.push_blob(node.desc, _Stream(read, node.desc), chunk_size=chunk_size,
                          mount_from=source):
            result.pushed.append(node.desc.digest)
            report(node.desc.digest, "done")
        else:  # mounted from another repository
            result.skipped.append(node.desc.digest)
            report(node.desc.digest, "exists")
    # children first: a registry refuses a manifest whose references it does not have
    for node in children_first(nodes):
        is_root = node.desc.digest == root.digest
        if repo.manifest_exists(node.desc, tag if is_root else ""):
            report(node.desc.digest, "exists")
            continue
        report(node.desc.digest, "uploading")
        repo.push_manifest(node.desc, node.data, tag=tag if is_root else "")
        result.manifests.append(node.desc.digest)
        report(node.desc.digest, "done")
    return result
