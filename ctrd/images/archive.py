"""Image archives (tar): OCI image layouts and ``docker save`` archives, both ways.

Export (:func:`export`) writes what ``ctr images export`` writes with its default options:
``oci-layout``, ``index.json`` naming each image with containerd's ``io.containerd.image.name``
annotation (and ``org.opencontainers.image.ref.name``: the tag), ``blobs/<alg>/<hex>`` for
every blob of the images for the chosen platform (all platforms: ``all_platforms``), and
Docker's ``manifest.json`` (``Config``, ``RepoTags``, ``Layers`` pointing at those blobs) so
``docker load`` and skopeo's ``docker-archive:`` read the same tar. Records are written in
name order, as containerd does. Blobs are streamed, each checked against its digest.

Import (:func:`import_archive`) treats the archive as hostile and reads it as a stream, twice,
never whole (``open_tar`` is called once per pass):

1. the headers. No absolute or ``..`` names, duplicates, devices, hard links, more than
   ``max_entries`` entries, or metadata files (``index.json``, ``oci-layout``,
   ``manifest.json``) above ``MAX_METADATA`` bytes; ``manifest.json`` is read here (capped).
   An archive with ``oci-layout`` or ``index.json`` is an OCI layout (containerd prefers it,
   so a tar holding both formats is read as OCI): only the layout's files are allowed, no
   links. Otherwise, with a ``manifest.json``, it is a Docker archive (``docker save``,
   skopeo ``docker-archive:``): any regular files and directories, and symlinks whose target
   stays inside the archive (skopeo links ``<id>/layer.tar`` to ``<hex>.tar``); legacy
   ``<id>/json`` files are ignored. Every ``Config`` and ``Layers`` path must resolve (through
   symlinks) to a regular file of the archive. Nothing is written while any of this fails.
2. the data: OCI blobs go to the store checked against the digest their name states; of a
   Docker archive only the files ``manifest.json`` names are stored, their digests computed
   as they are written (a file named for a sha256, ``blobs/sha256/<hex>`` or ``<hex>.tar``/
   ``<hex>.json``, must have that digest). A Docker archive is then converted as containerd's
   ``images/archive/importer.go`` does: per ``manifest.json`` entry a Docker schema 2 manifest
   (config media type Docker's, layers ``diff.tar`` or ``diff.tar.gzip`` by their magic bytes,
   or the compressed blob already in the store whose ``containerd.io/uncompressed`` label
   names the layer), its platform from the config, one index entry per ``RepoTags`` name
   normalised by docker's rules (``busybox`` -> ``docker.io/library/busybox:latest``), and an
   OCI index of them. The bytes are Go's ``json.Marshal`` of containerd's structs, so the
   manifest digests (and image records) are the ones containerd creates from the same tar.

Then every image the index names is walked through the store (manifests read back with the
size caps of :mod:`ctrd.images.manifest`; every config and layer must be there), and its
indexes and manifests get containerd's GC labels (``containerd.io/gc.ref.content.*``) so the
image record will keep all of it. Only then does the caller create the image records: a bad
archive creates no image. What was written is the caller's to drop: write under a lease.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
import tarfile
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

from ctrd.content.store import validate_digest
from ctrd.errdefs import CtrdError, InvalidArgument, NotFound
from ctrd.images import manifest as m
from ctrd.images.manifest import Descriptor, Platform
from ctrd.images.push import Reader, is_index, is_manifest, read_all, walk

IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"
UNCOMPRESSED = "containerd.io/uncompressed"
LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
MAX_METADATA = 4 << 20   # bytes of index.json, oci-layout, manifest.json
MAX_ENTRIES = 10_000     # tar entries (an image has a few dozen blobs)
MAX_IMAGES = 1_000       # manifest.json entries
MAX_LINK_HOPS = 16       # symlink chains in a Docker archive
CHUNK = 1 << 20
_BLOB = re.compile(r"^blobs/([a-z0-9]+(?:[+._-][a-z0-9]+)*)/([a-zA-Z0-9=_-]+)$")
_IGNORED = ("manifest.json", "repositories")
_METADATA = ("index.json", "oci-layout", "manifest.json")
_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class Store(Protocol):
    """What import needs of a content store."""

    def write(self, desc: Descriptor, chunks: Iterator[bytes]) -> None:
        """Store the blob, verifying size and digest (an existing blob is fine)."""

    def ingest(self, size: int, chunks: Iterator[bytes]) -> str:
        """Store a blob of ``size`` bytes whose digest is not known yet; returns it."""

    def read(self, digest: str) -> Iterable[bytes]: ...

    def exists(self, desc: Descriptor) -> bool: ...

    def size(self, digest: str) -> int:
        """The stored blob's size (NotFound when absent)."""

    def label(self, digest: str, labels: dict[str, str]) -> None: ...

    def compressed(self, diff_id: str) -> Descriptor | None:
        """A blob labelled ``containerd.io/uncompressed=<diff_id>`` (media type unset)."""


# -- Go's encoding/json, for byte-identical manifests ----------------------------------------

def go_json(obj: object) -> bytes:
    """``json.Marshal`` of ``obj`` as Go writes it: no spaces, UTF-8, ``<>&`` and U+2028/9
    escaped. Dict order is kept (callers build structs in field order, maps sorted)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode()


def _go_descriptor(d: Descriptor, platform: dict | None = None) -> dict:
    """An ocispec.Descriptor in its field order (omitempty fields left out)."""
    out: dict = {"mediaType": d.media_type} if d.media_type else {}
    out["digest"] = d.digest
    out["size"] = d.size
    if d.urls:
        out["urls"] = list(d.urls)
    if d.annotations:
        out["annotations"] = dict(sorted(d.annotations.items()))
    if platform is not None:
        out["platform"] = platform
    return out


def normalize_platform(os_: str, arch: str, variant: str = "") -> dict:
    """containerd's ``platforms.Normalize`` of a config's os/architecture, as an
    ocispec.Platform in field order (what the importer stores on the index entry)."""
    os_, arch, variant = os_.lower(), arch.lower(), variant.lower()
    if os_ == "macos":
        os_ = "darwin"
    if arch == "i386":
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch = "amd64"
        variant = "" if variant == "v1" else variant
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        variant = "" if variant in ("8", "v8") else variant
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        variant = {"": "v7", "7": "v7", "5": "v5", "6": "v6", "8": "v8"}.get(variant, variant)
    out = {"architecture": arch, "os": os_}
    if variant:
        out["variant"] = variant
    return out


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


def _tar_info(name: str, size: int, mtime: float, directory: bool = False,
              mode: int = 0o444) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = 0 if directory else size
    ti.mtime = int(mtime)
    ti.mode = 0o755 if directory else mode
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return ti


def _familiar(name: str) -> str | None:
    """containerd's ``familiarizeReference`` (``docker.io/library/busybox:latest`` ->
    ``busybox:latest``); None for a name that is not a reference."""
    from ctrd.remotes.reference import familiar, parse

    try:
        return familiar(parse(name))
    except InvalidArgument:
        return None


@dataclass
class _DockerEntry:
    manifest: Descriptor
    data: bytes
    names: list[str] = field(default_factory=list)


def docker_manifest_json(entries: list[_DockerEntry]) -> bytes:
    """Docker's ``manifest.json`` for ``entries`` (containerd's ``manifestsRecord``)."""
    out = []
    for e in entries:
        man = m.parse_manifest(e.data, e.manifest.media_type)
        tags = [t for t in (_familiar(n) for n in e.names) if t]
        out.append({"Config": _blob_name(man.config.digest),
                    "RepoTags": tags or None,
                    "Layers": [_blob_name(x.digest) for x in man.layers] or None})
    return go_json(out)


def export(read: Reader, out: BinaryIO, images: list[tuple[str, Descriptor]], *,
           platform: Platform | None = None, all_platforms: bool = False,
           docker_manifest: bool = True, skip_non_distributable: bool = False) -> list[str]:
    """Write an image archive of ``images`` (``(name, root descriptor)``) to ``out``; returns
    the digests of the blobs written.

    Of an index, the manifests for ``platform`` (default: the host's) are exported, or all of
    them with ``all_platforms`` (then every one must be in the store). ``manifest.json`` gets
    one entry per manifest: an image's own, or the first manifest of its index for
    ``platform`` (an index without one present is left out of it, where containerd fails).
    Missing configs or layers are an error (NotFound). ``skip_non_distributable``: no
    non-distributable layers (Windows base layers) in the tar, as containerd's
    ``WithSkipNonDistributableBlobs`` (the manifests still name them)."""
    now = time.time()
    platform = platform or m.host_platform()
    blobs: dict[str, Descriptor] = {}
    docs: dict[str, bytes] = {}
    index = []
    docker: dict[str, _DockerEntry] = {}
    for name, root in images:
        if not (is_index(root) or is_manifest(root)):
            raise InvalidArgument(f"{name}: only manifests and indexes may be exported, not "
                                  f"{root.media_type!r}")
        nodes = walk(read, root, platform=None if all_platforms else platform,
                     strict=all_platforms)
        for node in nodes:
            if skip_non_distributable and node.desc.media_type in m.NON_DISTRIBUTABLE:
                continue
            blobs.setdefault(node.desc.digest, node.desc)
            if node.data is not None:
                docs[node.desc.digest] = node.data
        entry: dict = {"mediaType": root.media_type, "digest": root.digest, "size": root.size}
        annotations = dict(root.annotations or {})
        annotations[IMAGE_NAME] = name
        tag = _tag_of(name)
        if tag:
            annotations[REF_NAME] = tag
        entry["annotations"] = dict(sorted(annotations.items()))  # Go sorts map keys
        index.append(entry)
        if not docker_manifest:
            continue
        chosen: Descriptor | None = root if is_manifest(root) else None
        if chosen is None:
            idx = m.parse_index(docs[root.digest], root.media_type)
            candidates = [d for d in idx.manifests if is_manifest(d) and d.digest in docs
                          and m.matches(platform, d.platform)]
            # as containerd's sort: a manifest with a platform before one without
            candidates.sort(key=lambda d: d.platform is None)
            chosen = candidates[0] if candidates else None
        if chosen is not None:
            e = docker.setdefault(chosen.digest, _DockerEntry(chosen, docs[chosen.digest]))
            e.names.append(name)

    records: list[tuple[str, tarfile.TarInfo, Callable[[], BinaryIO] | None]] = []
    for alg in sorted({d.partition(":")[0] for d in blobs}):
        records.append((f"blobs/{alg}/", _tar_info(f"blobs/{alg}/", 0, now, True), None))
    if blobs:
        records.append(("blobs/", _tar_info("blobs/", 0, now, True), None))
    for digest, d in blobs.items():
        name = _blob_name(digest)
        if digest in docs:
            data = docs[digest]
            records.append((name, _tar_info(name, len(data), now),
                            lambda data=data: io.BytesIO(data)))
        else:
            records.append((name, _tar_info(name, d.size, now),
                            lambda d=d: _Verified(read, d)))
    doc = go_json({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": index})
    records.append(("index.json", _tar_info("index.json", len(doc), now, mode=0o644),
                    lambda: io.BytesIO(doc)))
    if docker:
        mj = docker_manifest_json(list(docker.values()))
        records.append(("manifest.json", _tar_info("manifest.json", len(mj), now, mode=0o644),
                        lambda: io.BytesIO(mj)))
    records.append(("oci-layout", _tar_info("oci-layout", len(LAYOUT), now),
                    lambda: io.BytesIO(LAYOUT)))
    records.sort(key=lambda r: r[0])
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for _name, ti, opener in records:
            if opener is None:
                tar.addfile(ti)
                continue
            src = opener()
            tar.addfile(ti, src)
            if isinstance(src, _Verified):
                src.finish()
    return list(blobs)


def _tag_of(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    last = last.split("@", 1)[0]
    return last.rsplit(":", 1)[1] if ":" in last else ""


# -- import: pass 1, headers -------------------------------------------------------------------

@dataclass
class Imported:
    """``images``: (name, root) to create; ``blobs``: digests the archive brought;
    ``index``: the index of the archive in the store (a Docker archive's generated one, or
    ``index.json`` when ``keep_index``); ``manifests``: that index's entries."""

    images: list[tuple[str, Descriptor]]
    blobs: list[str]
    index: Descriptor | None = None
    manifests: list[Descriptor] = field(default_factory=list)
    format: str = "oci"


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
    """OCI layout rules: ``(kind, key)``: kind is dir, blob (key: its digest), meta (key:
    its name) or ignored; anything else raises InvalidArgument."""
    name = _clean_name(ti.name)
    if ti.isdir():
        if name.rstrip("/") == "blobs" or re.fullmatch(r"blobs/[a-z0-9+._-]+/?", name):
            return "dir", name.rstrip("/")
        raise InvalidArgument(f"archive entry {ti.name!r}: unexpected directory")
    if not ti.isreg():
        raise InvalidArgument(f"archive entry {ti.name!r}: only regular files and directories "
                              "are allowed (no links or devices)")
    if name in ("index.json", "oci-layout"):
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


class _EofGuard:
    """The archive file for tarfile's stream mode, which skips an entry's data by reading
    it and keeps reading at EOF: a tiny archive whose header claims a 1 TiB entry would
    spin for minutes. Reads past the end beyond :data:`MAX_EOF_READS` fail instead. A
    zstd-compressed archive is decompressed here (containerd reads those too)."""

    MAX_EOF_READS = 8

    def __init__(self, f: BinaryIO) -> None:
        self._raw = f
        self._eof_reads = 0
        head = f.read(len(_ZSTD_MAGIC))
        self._f = _Prefixed(head, f)
        self._errors: tuple[type[Exception], ...] = ()
        if head == _ZSTD_MAGIC:  # tarfile knows gzip, bzip2, xz; containerd zstd too
            import zstandard

            self._f = zstandard.ZstdDecompressor().stream_reader(self._f, closefd=False)
            self._errors = (zstandard.ZstdError,)

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._f.read(n)
        except self._errors as e:
            raise InvalidArgument(f"corrupt zstd-compressed archive: {e}") from None
        if not data and n != 0:
            self._eof_reads += 1
            if self._eof_reads > self.MAX_EOF_READS:
                raise InvalidArgument("truncated or corrupt tar archive: an entry claims "
                                      "more data than the archive holds")
        return data

    def close(self) -> None:
        self._raw.close()


class _Prefixed:
    """Bytes already read from ``f``, then the rest of ``f``."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self._head, self._f = head, f

    def read(self, n: int = -1) -> bytes:
        if self._head:
            data = self._head if n < 0 else self._head[:n]
            self._head = b"" if n < 0 else self._head[n:]
            return data
        return self._f.read(n)


def _entries(open_tar: Callable[[], BinaryIO], max_entries: int):
    """The tar's members as a stream (gzip detected), with their data readable in turn."""
    f = _EofGuard(open_tar())
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
                    raise InvalidArgument(f"truncated or corrupt tar archive: {e}") from None
                if ti is None:
                    return
                n += 1
                if n > max_entries:
                    raise InvalidArgument(f"archive has more than {max_entries} entries "
                                          "(a tar bomb?)")
                if ti.isdir() and ti.name in (".", "./"):
                    continue  # the root of `tar -C layout .`
                yield tar, ti
    finally:
        f.close()


def _chunks(f: BinaryIO, name: str) -> Iterator[bytes]:
    while True:
        try:
            chunk = f.read(CHUNK)
        except tarfile.TarError as e:
            raise InvalidArgument(f"archive entry {name!r}: truncated or corrupt tar archive: "
                                  f"{e}") from None
        if not chunk:
            return
        yield chunk


def _read_capped(f: BinaryIO, limit: int, what: str) -> bytes:
    try:
        data = f.read(limit + 1)
    except tarfile.TarError as e:
        raise InvalidArgument(f"{what}: truncated or corrupt tar archive: {e}") from None
    if len(data) > limit:
        raise InvalidArgument(f"{what} exceeds the {limit}-byte limit")
    return data


@dataclass
class _Scan:
    """Pass 1: every header (checked for traversal, duplicates, count), and the bytes of
    ``manifest.json``."""

    members: list[tarfile.TarInfo]
    names: dict[str, tarfile.TarInfo]
    manifest_json: bytes | None

    @property
    def format(self) -> str:
        if "index.json" in self.names or "oci-layout" in self.names:
            return "oci"
        return "docker" if "manifest.json" in self.names else "oci"


def _scan(open_tar: Callable[[], BinaryIO], max_entries: int) -> _Scan:
    members: list[tarfile.TarInfo] = []
    names: dict[str, tarfile.TarInfo] = {}
    manifest_json = None
    for tar, ti in _entries(open_tar, max_entries):
        name = _clean_name(ti.name).rstrip("/")
        if name in names and not (ti.isdir() and names[name].isdir()):
            raise InvalidArgument(f"archive entry {ti.name!r} appears twice")
        if name in _METADATA:
            if not ti.isreg():
                raise InvalidArgument(f"archive entry {name}: must be a regular file")
            if ti.size > MAX_METADATA:
                raise InvalidArgument(f"archive entry {name}: {ti.size} bytes exceeds the "
                                      f"{MAX_METADATA}-byte limit")
            if name == "manifest.json":
                f = tar.extractfile(ti)
                assert f is not None
                manifest_json = _read_capped(f, MAX_METADATA, name)
        names[name] = ti
        members.append(ti)
    return _Scan(members, names, manifest_json)


def check_headers(open_tar: Callable[[], BinaryIO],
                  max_entries: int = MAX_ENTRIES) -> dict[str, int]:
    """Pass 1 for an OCI layout: every header allowed, no duplicates; returns digest -> size
    of the blobs."""
    return _check_oci(_scan(open_tar, max_entries))


def _check_oci(scan: _Scan) -> dict[str, int]:
    blobs: dict[str, int] = {}
    for ti in scan.members:
        kind, key = _classify(ti)
        if kind == "blob":
            blobs[key] = ti.size
    if "index.json" not in scan.names:
        raise InvalidArgument("not an image archive: no index.json (OCI layout) or "
                              "manifest.json (docker save)")
    return blobs


# -- import: Docker archives -------------------------------------------------------------------

@dataclass
class _DockerImage:
    config: str             # archive paths, symlinks resolved
    layers: list[str]
    tags: list[str]         # normalised names


def _archive_path(raw: object, what: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise InvalidArgument(f"manifest.json: {what} must be a non-empty string")
    p = posixpath.normpath(raw)
    if p.startswith("/") or p == ".." or p.startswith("../") or "\x00" in p:
        raise InvalidArgument(f"manifest.json: {what} {raw!r} is not a path inside the archive")
    return p


def _resolve(scan: _Scan, path: str, what: str) -> str:
    """``path`` through the archive's symlinks to a regular file entry."""
    seen = path
    for _ in range(MAX_LINK_HOPS):
        ti = scan.names.get(path)
        if ti is None:
            raise InvalidArgument(f"manifest.json: {what} {seen!r} is missing from the archive"
                                  + (f" (symlink to {path!r})" if path != seen else ""))
        if ti.isreg():
            return path
        if not ti.issym():
            raise InvalidArgument(f"manifest.json: {what} {seen!r} is not a regular file")
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), ti.linkname))
    raise InvalidArgument(f"manifest.json: {what} {seen!r}: too many levels of symlinks")


def _check_docker(scan: _Scan) -> list[_DockerImage]:
    from ctrd.remotes.reference import parse

    for ti in scan.members:
        name = _clean_name(ti.name).rstrip("/")
        if ti.isdir() or ti.isreg():
            continue
        if ti.issym():
            target = ti.linkname
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                raise InvalidArgument(f"archive entry {ti.name!r}: symlink to {target!r} "
                                      "leaves the archive")
            continue
        what = "a hard link" if ti.islnk() else "a device or fifo"
        raise InvalidArgument(f"archive entry {ti.name!r} is {what}: only regular files, "
                              "directories and symlinks are allowed")
    try:
        doc = json.loads(scan.manifest_json or b"")
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"manifest.json is not valid JSON: {e}") from None
    if not isinstance(doc, list):
        raise InvalidArgument("manifest.json must be a list of images")
    if not doc:
        raise InvalidArgument("manifest.json lists no images")
    if len(doc) > MAX_IMAGES:
        raise InvalidArgument(f"manifest.json lists more than {MAX_IMAGES} images")
    out = []
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict):
            raise InvalidArgument(f"manifest.json[{i}] must be an object")
        config = _resolve(scan, _archive_path(entry.get("Config"), f"[{i}].Config"),
                          f"[{i}].Config")
        raw_layers = entry.get("Layers")
        if not isinstance(raw_layers, list):
            raise InvalidArgument(f"manifest.json[{i}].Layers must be a list")
        layers = [_resolve(scan, _archive_path(x, f"[{i}].Layers[{j}]"), "layer")
                  for j, x in enumerate(raw_layers)]
        raw_tags = entry.get("RepoTags") or []
        if not isinstance(raw_tags, list) or not all(isinstance(t, str) for t in raw_tags):
            raise InvalidArgument(f"manifest.json[{i}].RepoTags must be a list of strings")
        tags = []
        for t in raw_tags:
            try:
                tags.append(str(_docker_ref(parse(t))))
            except InvalidArgument as e:
                raise InvalidArgument(f"manifest.json[{i}].RepoTags: {e.detail}") from None
        out.append(_DockerImage(config, layers, tags))
    return out


def _docker_ref(ref):
    """containerd's ``ParseDockerRef``: a reference with both tag and digest keeps only the
    digest."""
    from dataclasses import replace

    return replace(ref, tag="") if ref.tag and ref.digest else ref


_HEX_NAME = re.compile(r"^([a-f0-9]{64})(?:\.tar|\.json)?$")


def _named_digest(path: str) -> str:
    """The sha256 digest a Docker archive file's name claims (``blobs/sha256/<hex>``,
    ``<hex>.tar``, ``<hex>.json``: Docker 25, skopeo and moby name files so), or ""."""
    match = _BLOB.match(path)
    if match and match.group(1) == "sha256":
        return f"sha256:{match.group(2)}"
    match = _HEX_NAME.match(posixpath.basename(path))
    return f"sha256:{match.group(1)}" if match else ""


def _layer_media_type(head: bytes) -> str:
    """containerd's ``detectLayerMediaType``: anything compressed is called gzip."""
    if head.startswith(_GZIP_MAGIC) or head.startswith(_ZSTD_MAGIC):
        return DOCKER_LAYER_GZIP
    return DOCKER_LAYER


class _Head:
    """Passes chunks through, keeping the first bytes (for the magic) and the sha256."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.head, self.h = chunks, b"", hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            if len(self.head) < 10:
                self.head += chunk[:10 - len(self.head)]
            self.h.update(chunk)
            yield chunk


def _store_doc(store: Store, media_type: str, data: bytes) -> Descriptor:
    desc = Descriptor(media_type, m.digest_of(data), len(data))
    store.write(desc, iter([data]))
    return desc


def _import_docker(open_tar: Callable[[], BinaryIO], store: Store, scan: _Scan,
                   max_entries: int, report: Callable[[str, str], None]) -> tuple[bytes, list[str]]:
    """Pass 2 and the conversion: returns the generated index and the digests stored."""
    plan = _check_docker(scan)
    needed = {p for img in plan for p in [img.config, *img.layers]}
    stored: dict[str, tuple[str, int, bytes]] = {}  # path -> digest, size, first bytes
    for tar, ti in _entries(open_tar, max_entries):
        name = _clean_name(ti.name).rstrip("/")
        if name not in needed or not ti.isreg():
            continue
        f = tar.extractfile(ti)
        assert f is not None
        report(name, "importing")
        head = _Head(_chunks(f, ti.name))
        try:
            digest = store.ingest(ti.size, iter(head))
        except CtrdError as e:
            raise InvalidArgument(f"archive entry {ti.name!r}: {e}") from None
        if digest != "sha256:" + head.h.hexdigest():
            raise InvalidArgument(f"archive entry {ti.name!r}: stored as {digest}, read as "
                                  f"sha256:{head.h.hexdigest()}")
        named = _named_digest(name)
        if named and named != digest:
            raise InvalidArgument(f"archive entry {ti.name!r} is named for {named} but its "
                                  f"content is {digest}")
        stored[name] = (digest, ti.size, head.head)
        report(name, "done")
    missing = needed - set(stored)
    if missing:
        raise InvalidArgument(f"archive ends before {sorted(missing)[0]!r} (truncated?)")
    written = [d for d, _, _ in stored.values()]
    entries: list[dict] = []
    for i, img in enumerate(plan):
        cdigest, csize, _ = stored[img.config]
        config = Descriptor(m.DOCKER_CONFIG, cdigest, csize)
        layers = []
        for path in img.layers:
            digest, size, head = stored[path]
            sub = store.compressed(digest)
            if sub is not None:
                layers.append(Descriptor(_layer_media_type(_first_bytes(store, sub.digest)),
                                         sub.digest, sub.size))
            else:
                layers.append(Descriptor(_layer_media_type(head), digest, size))
        doc = {"schemaVersion": 2, "mediaType": m.DOCKER_MANIFEST,
               "config": _go_descriptor(config),
               "layers": [_go_descriptor(x) for x in layers]}
        man = _store_doc(store, m.DOCKER_MANIFEST, go_json(doc))
        written.append(man.digest)
        try:
            cfg = json.loads(read_all(store.read, config, m.MAX_CONFIG))
        except ValueError as e:
            raise InvalidArgument(f"manifest.json[{i}].Config is not valid JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise InvalidArgument(f"manifest.json[{i}].Config is not a JSON object")
        os_, arch = cfg.get("os", ""), cfg.get("architecture", "")
        if not isinstance(os_, str) or not isinstance(arch, str):
            raise InvalidArgument(f"manifest.json[{i}].Config: os and architecture must be "
                                  "strings")
        platform = normalize_platform(os_, arch)
        if not img.tags:
            entries.append(_go_descriptor(man, platform))
        for tag in img.tags:
            from ctrd.remotes.reference import parse

            ann = {IMAGE_NAME: tag, REF_NAME: parse(tag).object}
            entries.append(_go_descriptor(Descriptor(man.media_type, man.digest, man.size,
                                                     annotations=ann), platform))
    return go_json({"schemaVersion": 2, "manifests": entries}), written


def _first_bytes(store: Store, digest: str) -> bytes:
    head = b""
    for chunk in store.read(digest):
        head += chunk
        if len(head) >= 10:
            break
    return head[:10]


# -- import ------------------------------------------------------------------------------------

def image_name(entry: Descriptor, i: int) -> str:
    return entry.annotations.get(IMAGE_NAME) or entry.annotations.get(REF_NAME) or ""


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
                   progress: Callable[[str, str], None] | None = None, *,
                   platform: Platform | None = None, all_platforms: bool = False,
                   keep_index: bool = False, unnamed: bool = False) -> Imported:
    """Import an OCI layout or Docker archive into ``store``; returns the images to create.

    ``open_tar()`` opens the archive for reading from the start (it is called twice). Every
    image must be complete for ``platform`` (default: the host's): an index's manifest for it,
    its config and layers; with ``all_platforms`` every manifest of every index. An index
    entry without a name is an error unless ``unnamed`` (the caller names it by digest)."""
    report = progress or (lambda digest, status: None)
    platform = platform or m.host_platform()
    scan = _scan(open_tar, max_entries)
    if scan.format == "docker":
        index_data, written = _import_docker(open_tar, store, scan, max_entries, report)
        index_desc = _store_doc(store, m.OCI_INDEX, index_data)
        blobs = {d: 0 for d in written + [index_desc.digest]}
    else:
        blobs = _check_oci(scan)
        index_data = b""
        for tar, ti in _entries(open_tar, max_entries):
            kind, key = _classify(ti)
            if kind not in ("meta", "blob"):
                continue
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
                store.write(desc, _chunks(f, ti.name))
            except CtrdError as e:
                raise InvalidArgument(f"archive blob {key}: {e}") from None
            report(key, "done")
        m.parse_index(index_data, m.OCI_INDEX)
        index_desc = _store_doc(store, m.OCI_INDEX, index_data) if keep_index else None
    index = m.parse_index(index_data, m.OCI_INDEX)
    result = Imported([], list(blobs), index_desc, list(index.manifests), scan.format)
    names: set[str] = set()
    for i, entry in enumerate(index.manifests):
        name = image_name(entry, i)
        if not name and not unnamed:
            if scan.format == "docker":
                raise InvalidArgument(f"manifest.json: an image ({entry.digest}) has no "
                                      "RepoTags (name it by digest instead)")
            raise InvalidArgument(f"index.json manifests[{i}] has no image name (annotation "
                                  f"{IMAGE_NAME} or {REF_NAME}; name it by digest instead)")
        if name and name in names:
            raise InvalidArgument(f"index.json names image {name!r} twice")
        names.add(name)
        label = name or entry.digest
        if not (is_index(entry) or is_manifest(entry)):
            raise InvalidArgument(f"index.json manifests[{i}]: unsupported media type "
                                  f"{entry.media_type!r}")
        if entry.digest not in blobs and not store.exists(entry):
            raise InvalidArgument(f"image {label}: {entry.digest} is not in the archive")
        try:
            nodes = walk(store.read, entry, strict=all_platforms)
        except NotFound as e:
            raise InvalidArgument(f"image {label}: {e} (missing from the archive)") from None
        present = {n.desc.digest for n in nodes}
        for node in nodes:
            if node.data is None:
                _check_blob(store, node.desc, label)
            if node.data is not None and is_index(node.desc):
                idx = m.parse_index(node.data, node.desc.media_type)
                want = [d for d in idx.manifests if m.matches(platform, d.platform)]
                if want and not any(d.digest in present for d in want):
                    raise InvalidArgument(f"image {label}: the manifest for {platform} "
                                          f"({want[0].digest}) is missing from the archive")
        for node in nodes:
            if node.data is not None:
                store.label(node.desc.digest, child_labels(node.desc, node.data))
        if name:
            root = Descriptor(entry.media_type, entry.digest, entry.size,
                              annotations={k: v for k, v in entry.annotations.items()
                                           if k not in (IMAGE_NAME, REF_NAME)})
            result.images.append((name, root))
    if index_desc is not None:
        store.label(index_desc.digest, child_labels(index_desc, index_data))
    return result


def _check_blob(store: Store, desc: Descriptor, label: str) -> None:
    """A config or layer of image ``label`` is in the store with its descriptor's size
    (indexes and manifests are read back and verified by the walk): a manifest that lies
    about a layer's size, either way, is refused here, before anything is unpacked."""
    try:
        size = store.size(desc.digest)
    except NotFound:
        raise InvalidArgument(f"image {label}: blob {desc.digest} is missing from the "
                              "archive") from None
    if size != desc.size:
        raise InvalidArgument(f"image {label}: blob {desc.digest}: unexpected size {size}, "
                              f"expected {desc.size} (its descriptor's)")


def _check_layout(data: bytes) -> None:
    try:
        doc = json.loads(data)
    except ValueError:
        raise InvalidArgument("oci-layout is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("imageLayoutVersion") != "1.0.0":
        raise InvalidArgument("oci-layout: unsupported imageLayoutVersion "
                              f"{doc.get('imageLayoutVersion') if isinstance(doc, dict) else doc!r}")


__all__ = ["export", "import_archive", "check_headers", "Imported", "Store", "read_all",
           "go_json", "normalize_platform", "docker_manifest_json"]
