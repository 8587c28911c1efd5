"""OCI image layout archives (tar): export from, and import into, a content store.

Export (:func:`export`) writes ``oci-layout``, ``blobs/<alg>/<hex>`` for every blob of the
images the store holds (an index's manifests for platforms never pulled are left out, as
``ctr export`` does by default) and ``index.json`` naming each image with containerd's
``io.containerd.image.name`` annotation (and ``org.opencontainers.image.ref.name``: the
tag), as ``ctr images export`` does. Blobs are streamed, each checked against its digest.

Import (:func:`import_archive`) treats the archive as hostile. It reads the tar as a stream,
twice, never whole:

1. the headers: only ``oci-layout``, ``index.json``, ``manifest.json``/``repositories``
   (Docker's, ignored), the directories ``blobs/`` and ``blobs/<alg>/`` and regular files
   ``blobs/<alg>/<hex>`` named by a valid digest are allowed; no links, devices, absolute or
   ``..`` names, duplicates, more than ``max_entries`` entries, or metadata files above
   ``max_metadata`` bytes. Nothing is written while any of this fails.
2. the data: each blob goes to the store (:class:`Store.write` checks its digest while
   writing), ``index.json`` is parsed (size-capped, validated).

Then every image ``index.json`` names is walked through the store (manifests read back with
the size caps of :mod:`ctrd.images.manifest`; every config and layer must be there), and its
indexes and manifests get containerd's GC labels (``containerd.io/gc.ref.content.*``) so the
image record will keep all of it. Only then does the caller create the image records: a bad
archive creates no image (what was written is left to the caller's lease and GC).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

from ctrd.content.store import validate_digest
from ctrd.errdefs import CtrdError, InvalidArgument, NotFound
from ctrd.images import manifest as m
from ctrd.images.manifest import Descriptor
from ctrd.images.push import Reader, is_index, is_manifest, read_all, walk

IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
MAX_METADATA = 4 << 20   # bytes of index.json, oci-layout, manifest.json
MAX_ENTRIES = 10_000     # tar entries (an image has a few dozen blobs)
CHUNK = 1 << 20
_BLOB = re.compile(r"^blobs/([a-z0-9]+(?:[+._-][a-z0-9]+)*)/([a-zA-Z0-9=_-]+)$")
_IGNORED = ("manifest.json", "repositories")


class Store(Protocol):
    """What import needs of a content store."""

    def write(self, desc: Descriptor, chunks: Iterator[bytes]) -> None:
        """Store the blob, verifying size and digest (an existing blob is fine)."""

    def read(self, digest: str) -> Iterable[bytes]: ...

    def exists(self, desc: Descriptor) -> bool: ...

    def label(self, digest: str, labels: dict[str, str]) -> None: ...


# -- export ------------------------------------------------------------------------------------

class _Verified(io.RawIOBase):
    """The chunks of a blob as a file object for tarfile; size and digest checked at the end."""

    def __init__(self, read: Reader, desc: Descriptor) -> None:
        from ctrd.images.push import _Stream

        self._s = _Stream(read, desc)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._s.read(n)

    def finish(self) -> None:
        if self._s.read(1):
            raise InvalidArgument(f"{self._s.desc.digest}: longer than its descriptor")


def _blob_name(digest: str) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"blobs/{alg}/{hexpart}"


def _tar_info(name: str, size: int, mtime: float, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = 0 if directory else size
    ti.mtime = int(mtime)
    ti.mode = 0o755 if directory else 0o444
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return ti


def export(read: Reader, out: BinaryIO, images: list[tuple[str, Descriptor]]) -> list[str]:
    """Write an OCI layout tar of ``images`` (``(name, root descriptor)``) to ``out``; returns
    the digests of the blobs written. Missing configs or layers are an error (NotFound)."""
    now = time.time()
    written: list[str] = []
    index = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_info("blobs/", 0, now, directory=True))
        dirs: set[str] = set()
        for name, root in images:
            for node in walk(read, root, strict=False):
                d = node.desc
                if d.digest in written:
                    continue
                alg = d.digest.partition(":")[0]
                if alg not in dirs:
                    dirs.add(alg)
                    tar.addfile(_tar_info(f"blobs/{alg}/", 0, now, directory=True))
                if node.data is not None:
                    tar.addfile(_tar_info(_blob_name(d.digest), d.size, now),
                                io.BytesIO(node.data))
                else:
                    src = _Verified(read, d)
                    tar.addfile(_tar_info(_blob_name(d.digest), d.size, now), src)
                    src.finish()
                written.append(d.digest)
            entry: dict = {"mediaType": root.media_type, "digest": root.digest,
                           "size": root.size}
            annotations = dict(root.annotations or {})
            annotations[IMAGE_NAME] = name
            tag = _tag_of(name)
            if tag:
                annotations[REF_NAME] = tag
            entry["annotations"] = annotations
            index.append(entry)
        doc = json.dumps({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": index},
                         separators=(",", ":"), sort_keys=True).encode()
        tar.addfile(_tar_info("oci-layout", len(LAYOUT), now), io.BytesIO(LAYOUT))
        tar.addfile(_tar_info("index.json", len(doc), now), io.BytesIO(doc))
    return written


def _tag_of(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    last = last.split("@", 1)[0]
    return last.rsplit(":", 1)[1] if ":" in last else ""


# -- import ------------------------------------------------------------------------------------

@dataclass
class Imported:
    images: list[tuple[str, Descriptor]]
    blobs: list[str]


def _clean_name(raw: str) -> str:
    name = raw
    while name.startswith("./"):
        name = name[2:]
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise InvalidArgument(f"archive entry {raw!r}: not a relative path")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"archive entry {raw!r}: path traversal or empty component")
    return name


def _classify(ti: tarfile.TarInfo) -> tuple[str, str]:
    """``(kind, key)``: kind is dir, blob (key: its digest), meta (key: its name) or
    ignored; anything else raises InvalidArgument."""
    name = _clean_name(ti.name)
    if ti.isdir():
        if name.rstrip("/") == "blobs" or re.fullmatch(r"blobs/[a-z0-9+._-]+/?", name):
            return "dir", name.rstrip("/")
        raise InvalidArgument(f"archive entry {ti.name!r}: unexpected directory")
    if not ti.isreg():
        raise InvalidArgument(f"archive entry {ti.name!r}: only regular files and directories "
                              "are allowed (no links or devices)")
    if name in ("index.json", "oci-layout"):
        if ti.size > MAX_METADATA:
            raise InvalidArgument(f"archive entry {name}: {ti.size} bytes exceeds the "
                                  f"{MAX_METADATA}-byte limit")
        return "meta", name
    if name in _IGNORED:
        return "ignored", name
    match = _BLOB.match(name)
    if not match:
        raise InvalidArgument(f"archive entry {ti.name!r}: not part of an OCI image layout")
    digest = f"{match.group(1)}:{match.group(2)}"
    try:
        validate_digest(digest)
    except InvalidArgument as e:
        raise InvalidArgument(f"archive entry {ti.name!r}: {e.detail}") from None
    return "blob", digest


def _entries(open_tar: Callable[[], BinaryIO], max_entries: int):
    """The tar's members as a stream (gzip detected), with their data readable in turn."""
    f = open_tar()
    try:
        try:
            tar = tarfile.open(fileobj=f, mode="r|*")
        except tarfile.TarError as e:
            raise InvalidArgument(f"not a tar archive: {e}") from None
        with tar:
            n = 0
            while True:
                try:
                    ti = tar.next()
                except tarfile.TarError as e:
                    raise InvalidArgument(f"corrupt tar archive: {e}") from None
                if ti is None:
                    return
                n += 1
                if n > max_entries:
                    raise InvalidArgument(f"archive has more than {max_entries} entries "
                                          "(a tar bomb?)")
                yield tar, ti
    finally:
        f.close()


def check_headers(open_tar: Callable[[], BinaryIO],
                  max_entries: int = MAX_ENTRIES) -> dict[str, int]:
    """Pass 1: every header allowed, no duplicates; returns digest -> size of the blobs."""
    seen: set[str] = set()
    blobs: dict[str, int] = {}
    for _tar, ti in _entries(open_tar, max_entries):
        kind, key = _classify(ti)
        if key in seen and kind != "dir":
            raise InvalidArgument(f"archive entry {ti.name!r} appears twice")
        seen.add(key)
        if kind == "blob":
            blobs[key] = ti.size
    if "index.json" not in seen:
        raise InvalidArgument("not an OCI image layout archive: no index.json (Docker "
                              "`save` archives are not supported)")
    return blobs


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


def _read_capped(f: BinaryIO, limit: int, what: str) -> bytes:
    data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidArgument(f"{what} exceeds the {limit}-byte limit")
    return data


def image_name(entry: Descriptor, i: int) -> str:
    name = entry.annotations.get(IMAGE_NAME) or entry.annotations.get(REF_NAME) or ""
    if not name:
        raise InvalidArgument(f"index.json manifests[{i}] has no image name (annotation "
                              f"{IMAGE_NAME} or {REF_NAME})")
    return name


def child_labels(node_desc: Descriptor, data: bytes) -> dict[str, str]:
    """containerd's GC labels for an index or manifest: what its record must keep."""
    if is_index(node_desc):
        idx = m.parse_index(data, node_desc.media_type)
        return {f"containerd.io/gc.ref.content.m.{i}": d.digest
                for i, d in enumerate(idx.manifests)}
    man = m.parse_manifest(data, node_desc.media_type)
    labels = {"containerd.io/gc.ref.content.config": man.config.digest}
    labels.update({f"containerd.io/gc.ref.content.l.{i}": d.digest
                   for i, d in enumerate(man.layers)})
    return labels


def import_archive(open_tar: Callable[[], BinaryIO], store: Store,
                   max_entries: int = MAX_ENTRIES,
                   progress: Callable[[str, str], None] | None = None) -> Imported:
    """Import an OCI layout tar into ``store``; returns the images to create (name, root).

    ``open_tar()`` opens the archive for reading from the start (it is called twice)."""
    report = progress or (lambda digest, status: None)
    blobs = check_headers(open_tar, max_entries)
    index_data = b""
    for tar, ti in _entries(open_tar, max_entries):
        kind, key = _classify(ti)
        if kind == "meta" or kind == "blob":
            f = tar.extractfile(ti)
            assert f is not None
            if kind == "meta":
                data = _read_capped(f, MAX_METADATA, key)
                if key == "index.json":
                    index_data = data
                else:
                    _check_layout(data)
                continue
            desc = Descriptor("application/octet-stream", key, ti.size)
            report(key, "importing")
            try:
                store.write(desc, _chunks(f))
            except CtrdError as e:
                raise InvalidArgument(f"archive blob {key}: {e}") from None
            report(key, "done")
    index = m.parse_index(index_data, m.OCI_INDEX)
    result = Imported([], list(blobs))
    names: set[str] = set()
    for i, entry in enumerate(index.manifests):
        name = image_name(entry, i)
        if name in names:
            raise InvalidArgument(f"index.json names image {name!r} twice")
        names.add(name)
        if not (is_index(entry) or is_manifest(entry)):
            raise InvalidArgument(f"index.json manifests[{i}]: unsupported media type "
                                  f"{entry.media_type!r}")
        if entry.digest not in blobs:
            raise InvalidArgument(f"image {name}: {entry.digest} is not in the archive")
        try:
            nodes = walk(store.read, entry, strict=False)
        except NotFound as e:
            raise InvalidArgument(f"image {name}: {e}") from None
        for node in nodes:
            if node.data is None and node.desc.digest not in blobs and \
                    not store.exists(node.desc):
                raise InvalidArgument(f"image {name}: blob {node.desc.digest} is missing "
                                      "from the archive")
        for node in nodes:
            if node.data is not None:
                store.label(node.desc.digest, child_labels(node.desc, node.data))
        root = Descriptor(entry.media_type, entry.digest, entry.size,
                          annotations={k: v for k, v in entry.annotations.items()
                                       if k not in (IMAGE_NAME, REF_NAME)})
        result.images.append((name, root))
    return result


def _check_layout(data: bytes) -> None:
    try:
        doc = json.loads(data)
    except ValueError:
        raise InvalidArgument("oci-layout is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("imageLayoutVersion") != "1.0.0":
        raise InvalidArgument("oci-layout: unsupported imageLayoutVersion "
                              f"{doc.get('imageLayoutVersion') if isinstance(doc, dict) else doc!r}")


__all__ = ["export", "import_archive", "check_headers", "Imported", "Store", "read_all"]
