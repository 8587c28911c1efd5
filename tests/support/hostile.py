"""Hostile images for the unpack-limit, blob-size and platform tests: decompression bombs
generated streaming (``bomb_layer``), OCI layout archives whose manifests may lie
(``oci_archive``), and a static registry serving exactly the bytes it is given, lies
included (``StaticRegistry``, fixture ``static_registry``; ``RegistryHandler`` for registries of
a test's own).

Nothing here holds a bomb's uncompressed bytes: a bomb is a tar of one zero file whose
header is written by hand and whose data is fed to the compressor in 1 MiB pieces; only the
compressed blob (a few MB at most) is kept.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socketserver
import tarfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import images

GZIP = images.MT_OCI_LAYER_GZIP
ZSTD = images.MT_OCI_LAYER_ZSTD
_ZEROS = bytes(1 << 20)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layer:
    """A layer blob, its media type and the diff ID of its tar."""

    media_type: str
    blob: bytes
    diff_id: str


def _tar_stream_of_zero_file(size: int, name: str = "zeros"):
    """The chunks of a tar holding one regular file of ``size`` zero bytes (PAX for sizes
    past ustar's 8 GiB)."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, images.EPOCH, 0o644
    yield ti.tobuf(format=tarfile.PAX_FORMAT)
    left = size + (-size % 512) + 1024  # data, padding, the two end blocks
    while left:
        n = min(left, len(_ZEROS))
        yield _ZEROS[:n]
        left -= n


def bomb_layer(size: int, media_type: str = GZIP) -> Layer:
    """A layer whose tar holds one ``size``-byte file of zeros, compressed streaming with
    gzip (~1/1000) or zstd (far smaller); the diff ID is hashed as the tar goes past."""
    import zstandard

    h = hashlib.sha256()
    out = io.BytesIO()
    if media_type == ZSTD:
        comp = zstandard.ZstdCompressor(level=3).compressobj()
    else:
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing, ~1030:1 on zeros
    for chunk in _tar_stream_of_zero_file(size):
        h.update(chunk)
        out.write(comp.compress(chunk))
    out.write(comp.flush())
    return Layer(media_type, out.getvalue(), "sha256:" + h.hexdigest())


def small_layer(files: dict[str, bytes], media_type: str = GZIP) -> Layer:
    """A gzip (or zstd) layer of ``files``."""
    import gzip

    import zstandard

    from support.archives import layer_tar

    raw = layer_tar(files)
    blob = zstandard.ZstdCompressor().compress(raw) if media_type == ZSTD \
        else gzip.compress(raw, mtime=0)
    return Layer(media_type, blob, sha(raw))


@dataclass
class Image:
    """An image's documents and blobs; ``root`` is what a tag or index.json names."""

    config: bytes
    manifest: bytes
    layers: list[Layer]
    index: bytes | None = None
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def root(self) -> tuple[str, bytes]:
        if self.index is not None:
            return images.MT_OCI_INDEX, self.index
        return images.MT_OCI_MANIFEST, self.manifest


def image(layers: list[Layer], arch: str = images.HOST_ARCH,
          size_lies: dict[int, int] | None = None, in_index: bool = False) -> Image:
    """An OCI image of ``layers`` for linux/``arch``; ``size_lies`` adds to the size the
    manifest states for layer i (the blob stays what it is); ``in_index``: the root is an
    index with the manifest as its only entry (platform linux/``arch``)."""
    config = json.dumps({"architecture": arch, "os": "linux",
                         "rootfs": {"type": "layers",
                                    "diff_ids": [x.diff_id for x in layers]}}).encode()
    lies = size_lies or {}
    man = json.dumps({
        "schemaVersion": 2, "mediaType": images.MT_OCI_MANIFEST,
        "config": {"mediaType": images.MT_OCI_CONFIG, "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": x.media_type, "digest": sha(x.blob),
                    "size": len(x.blob) + lies.get(i, 0)} for i, x in enumerate(layers)],
    }).encode()
    img = Image(config, man, layers)
    img.blobs = {sha(config): config, sha(man): man, **{sha(x.blob): x.blob for x in layers}}
    if in_index:
        img.index = json.dumps({"schemaVersion": 2, "mediaType": images.MT_OCI_INDEX,
                                "manifests": [{"mediaType": images.MT_OCI_MANIFEST,
                                               "digest": sha(man), "size": len(man),
                                               "platform": {"architecture": arch,
                                                            "os": "linux"}}]}).encode()
        img.blobs[sha(img.index)] = img.index
    return img


def foreign_arch() -> str:
    """An architecture that is not this host's."""
    return "s390x" if images.HOST_ARCH != "s390x" else "ppc64le"


def oci_archive(path: Path, img: Image, name: str) -> Path:
    """``img`` as an OCI layout tar, its root named ``name`` in index.json."""
    mt, root = img.root
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": mt, "digest": sha(root), "size": len(root),
         "annotations": {"io.containerd.image.name": name}}]}
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
    members += [(f"blobs/sha256/{d[7:]}", b) for d, b in sorted(img.blobs.items())]
    members.append(("index.json", json.dumps(index).encode()))
    with tarfile.open(path, "w") as t:
        for member, data in members:
            ti = tarfile.TarInfo(member)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return path


class StaticRegistry:
    """A registry (OCI distribution, read side, plain HTTP) answering from ``images``:
    ``/v2/<repo>/manifests/<tag or digest>`` and ``/v2/<repo>/blobs/<digest>``, exactly
    the bytes it holds, whatever the manifests claim about them."""

    def __init__(self) -> None:
        self.tags: dict[str, tuple[str, bytes]] = {}  # "repo:tag" -> media type, bytes
        self.blobs: dict[str, bytes] = {}
        handler = type("Handler", (_Handler,), {"registry": self})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, tag: str, img: Image) -> str:
        """Serve ``img`` as ``repo:tag``; returns the reference."""
        self.tags[f"{repo}:{tag}"] = img.root
        self.blobs.update(img.blobs)
        return f"{self.address}/{repo}:{tag}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class RegistryHandler(http.server.BaseHTTPRequestHandler):
    """What a test registry's request handler shares: HTTP/1.1, quiet, ``_send`` (a body
    with its headers; ``length`` may claim another Content-Length), HEAD as GET."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/octet-stream",
              headers: dict | None = None, length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()  # type: ignore[attr-defined]


class _Handler(RegistryHandler):
    registry: StaticRegistry

    def do_GET(self) -> None:
        reg, path = self.registry, self.path.split("?")[0]
        if path == "/v2/":
            return self._send(200, b"{}", "application/json")
        if "/manifests/" in path:
            repo, ref = path[4:].split("/manifests/")
            if ref.startswith("sha256:"):
                data = reg.blobs.get(ref)
                mt = json.loads(data).get("mediaType", "") if data else ""
            else:
                mt, data = reg.tags.get(f"{repo}:{ref}", ("", None))
            if data is not None:
                return self._send(200, data, mt, {"Docker-Content-Digest": sha(data)})
        elif "/blobs/" in path:
            data = reg.blobs.get(path.rsplit("/", 1)[1])
            if data is not None:
                return self._send(200, data, headers={"Docker-Content-Digest": sha(data)})
        self._send(404, b'{"errors":[{"code":"NOT_FOUND"}]}', "application/json")


@pytest.fixture
def static_registry():
    reg = StaticRegistry()
    yield reg
    reg.close()
