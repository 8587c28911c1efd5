"""Image manifests, indexes and configs: media types, bounded parsing, platform matching.

Everything read here comes from a registry or an archive, so every parser checks the media
type before parsing, caps the size, validates the fields it relies on, and answers bad input
with InvalidArgument naming what is wrong. Docker schema 1 is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as _platform
from dataclasses import dataclass, field

from ctrd.content.store import validate_digest
from ctrd.errdefs import InvalidArgument, NotFound

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIGS = (OCI_CONFIG, DOCKER_CONFIG)
LAYERS = ("application/vnd.oci.image.layer.v1.tar",
          "application/vnd.oci.image.layer.v1.tar+gzip",
          "application/vnd.oci.image.layer.v1.tar+zstd",
          "application/vnd.docker.image.rootfs.diff.tar.gzip",
          "application/vnd.docker.image.rootfs.diff.tar")
NON_DISTRIBUTABLE = ("application/vnd.oci.image.layer.nondistributable.v1.tar",
                     "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                     "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                     "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")

MAX_MANIFEST = 4 << 20  # bytes, as containerd's limit on manifests it reads
MAX_CONFIG = 16 << 20


@dataclass(frozen=True)
class Platform:
    """An OCI platform. ``os_version``/``os_features`` are the index entry's ``os.version`` /
    ``os.features`` (containerd 2.x's Platform proto carries them too)."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.architecture, self.variant) if x)


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


def host_platform() -> Platform:
    machine = _platform.machine() if hasattr(_platform, "machine") else os.uname().machine
    arch = _ARCH.get(machine, machine)
    variant = "v8" if arch == "arm64" else ("v7" if machine == "armv7l" else "")
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` or ``arch`` (linux assumed), normalised as containerd does."""
    parts = text.strip().lower().split("/")
    if not all(parts) or len(parts) > 3:
        raise InvalidArgument(f"invalid platform {text!r}: expected os/arch[/variant]")
    if len(parts) == 1:
        parts = ["linux"] + parts
    arch = _ARCH.get(parts[1], parts[1])
    variant = parts[2] if len(parts) == 3 else ("v8" if arch == "arm64" else "")
    return Platform(parts[0], arch, variant)


def matches(want: Platform, have: Platform | None) -> bool:
    if have is None:
        return True  # a manifest without platform: take it
    if (want.os, want.architecture) != (have.os, _ARCH.get(have.architecture,
                                                             have.architecture)):
        return False
    hv = have.variant or ("v8" if have.architecture == "arm64" else "")
    if want.variant and hv and want.variant != hv:
        return False
    # containerd's matcher: an entry that needs OS features matches only a platform that has
    # them all (os.version only counts on Windows, which ctrd does not run)
    return set(have.os_features) <= set(want.os_features)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify(desc: Descriptor, data: bytes) -> None:
    if len(data) != desc.size:
        raise InvalidArgument(f"{desc.digest}: size {len(data)} does not match the "
                              f"descriptor's {desc.size}")
    if digest_of(data) != desc.digest:
        raise InvalidArgument(f"{desc.digest}: content digest {digest_of(data)} does not "
                              "match")


def _descriptor(d: object, where: str) -> Descriptor:
    if not isinstance(d, dict):
        raise InvalidArgument(f"{where}: expected a descriptor object")
    mt, dg, size = d.get("mediaType"), d.get("digest"), d.get("size")
    if not isinstance(mt, str) or not mt:
        raise InvalidArgument(f"{where}: mediaType missing")
    if not isinstance(dg, str):
        raise InvalidArgument(f"{where}: digest missing")
    try:
        validate_digest(dg)
    except InvalidArgument as e:
        raise InvalidArgument(f"{where}: {e.detail}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{where}: size must be a non-negative integer")
    p = d.get("platform")
    plat = None
    if isinstance(p, dict) and isinstance(p.get("os"), str) and \
            isinstance(p.get("architecture"), str):
        feats = p.get("os.features")
        plat = Platform(p["os"], p["architecture"], str(p.get("variant") or ""),
                        str(p.get("os.version") or ""),
                        tuple(sorted(str(f) for f in feats)) if isinstance(feats, list)
                        else ())
    ann = d.get("annotations") or {}
    urls = d.get("urls") or []
    return Descriptor(mt, dg, size, plat,
                      {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
                      [str(u) for u in urls] if isinstance(urls, list) else [])


def _load(data: bytes, what: str, limit: int) -> dict:
    if len(data) > limit:
        raise InvalidArgument(f"{what} of {len(data)} bytes exceeds the {limit}-byte limit")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def check_media_type(media_type: str) -> str:
    if media_type in DOCKER_SCHEMA1:
        raise InvalidArgument("Docker schema 1 manifests are not supported (deprecated since "
                              "2017; convert the image or push it again with a current client)")
    if media_type not in INDEXES + MANIFESTS:
        raise InvalidArgument(f"unsupported manifest media type {media_type!r}")
    return media_type


@dataclass
class Index:
    manifests: list[Descriptor]


@dataclass
class Manifest:
    config: Descriptor
    layers: list[Descriptor]


def parse_index(data: bytes, media_type: str) -> Index:
    doc = _load(data, "index", MAX_MANIFEST)
    m = doc.get("manifests")
    if not isinstance(m, list):
        raise InvalidArgument("index: manifests must be a list")
    if doc.get("mediaType") not in (None, media_type):
        raise InvalidArgument(f"index: mediaType {doc.get('mediaType')!r} does not match "
                              f"{media_type!r}")
    return Index([_descriptor(d, f"index.manifests[{i}]") for i, d in enumerate(m)])


def parse_manifest(data: bytes, media_type: str) -> Manifest:
    doc = _load(data, "manifest", MAX_MANIFEST)
    if doc.get("mediaType") not in (None, media_type):
        raise InvalidArgument(f"manifest: mediaType {doc.get('mediaType')!r} does not match "
                              f"{media_type!r}")
    config = _descriptor(doc.get("config"), "manifest.config")
    if config.media_type not in CONFIGS:
        raise InvalidArgument(f"manifest.config: unsupported media type "
                              f"{config.media_type!r}")
    layers_doc = doc.get("layers")
    if not isinstance(layers_doc, list):
        raise InvalidArgument("manifest: layers must be a list")
    layers = [_descriptor(d, f"manifest.layers[{i}]") for i, d in enumerate(layers_doc)]
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYERS + NON_DISTRIBUTABLE:
            raise InvalidArgument(f"manifest.layers[{i}]: unsupported layer media type "
                                  f"{layer.media_type!r}")
    return Manifest(config, layers)


def diff_ids(config_data: bytes) -> list[str]:
    """The uncompressed layer digests an image config lists (``rootfs.diff_ids``)."""
    doc = _load(config_data, "image config", MAX_CONFIG)
    rootfs = doc.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        raise InvalidArgument("image config: rootfs.diff_ids missing")
    for d in ids:
        if not isinstance(d, str):
            raise InvalidArgument("image config: rootfs.diff_ids must be digests")
        validate_digest(d)
    return ids


def chain_ids(ids: list[str]) -> list[str]:
    """OCI ChainIDs: the snapshot names a layer stack unpacks into."""
    out: list[str] = []
    for d in ids:
        out.append(d if not out else digest_of(f"{out[-1]} {d}".encode()))
    return out


def select(index: Index, want: Platform) -> Descriptor:
    for d in index.manifests:
        if d.media_type in MANIFESTS + INDEXES and matches(want, d.platform):
            return d
    raise NotFound(f"no match for platform {want} in manifest list")
