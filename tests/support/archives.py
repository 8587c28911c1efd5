"""Image archives and OCI layouts built by hand for the import/export tests: moby's
``docker save`` layout (``moby_archive``, with ``layer_tar``, ``config_for`` and ``add``), a
minimal OCI image (``_minimal_image``) and a layout's members (``_layout``), and an OCI
archive with one big layer (``_big_archive``)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import images

def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _layout(blobs: list[bytes], index: dict) -> list[tuple[str, bytes]]:
    return ([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
            + [(f"blobs/sha256/{_sha(b)}", b) for b in blobs]
            + [("index.json", json.dumps(index).encode())])


def _minimal_image(tag: str = "example.com/evil:1"):
    config = json.dumps({"architecture": images.HOST_ARCH, "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    man = json.dumps({"schemaVersion": 2, "mediaType": images.MT_OCI_MANIFEST,
                      "config": {"mediaType": images.MT_OCI_CONFIG,
                                 "digest": f"sha256:{_sha(config)}", "size": len(config)},
                      "layers": []}).encode()
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": images.MT_OCI_MANIFEST, "digest": f"sha256:{_sha(man)}",
         "size": len(man), "annotations": {"io.containerd.image.name": tag}}]}
    return config, man, index
def _add(t: tarfile.TarFile, name: str, data: bytes = b"", size: int | None = None) -> None:
    import io

    ti = tarfile.TarInfo(name)
    ti.size = len(data) if size is None else size
    t.addfile(ti, io.BytesIO(data))


def _big_archive(path, size: int = 96 << 20) -> None:
    """An OCI archive of one image whose one uncompressed layer holds a ``size``-byte file
    (written streaming: the test never holds it)."""
    import hashlib
    import io

    from images import HOST_ARCH, MT_OCI_CONFIG, MT_OCI_MANIFEST

    layer = path.with_suffix(".layer")
    with open(layer, "wb") as f, tarfile.open(fileobj=f, mode="w|") as t:
        ti = tarfile.TarInfo("big")
        ti.size = size
        t.addfile(ti, io.BufferedReader(io.BytesIO(b"\0" * size)))
    h = hashlib.sha256()
    with open(layer, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    ldig, lsize = "sha256:" + h.hexdigest(), layer.stat().st_size
    config = json.dumps({"architecture": HOST_ARCH, "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [ldig]}}).encode()
    man = json.dumps({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                      "config": {"mediaType": MT_OCI_CONFIG, "digest": "sha256:" + _sha(config),
                                 "size": len(config)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                  "digest": ldig, "size": lsize}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MT_OCI_MANIFEST, "digest": "sha256:" + _sha(man), "size": len(man),
         "annotations": {"io.containerd.image.name": "example.com/big:1"}}]}).encode()
    with tarfile.open(path, "w") as t:
        _add(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        t.add(layer, arcname="blobs/sha256/" + ldig[7:])
        _add(t, "blobs/sha256/" + _sha(config), config)
        _add(t, "blobs/sha256/" + _sha(man), man)
        _add(t, "index.json", index)
    layer.unlink()
def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), images.EPOCH
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def config_for(tars: list[bytes], arch: str = images.HOST_ARCH) -> bytes:
    return json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["sh"]},
                       "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]}},
                      sort_keys=True).encode()


def add(t: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
        link: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mtime = kind, link, images.EPOCH
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.CHRTYPE,):
        ti.devmajor, ti.devminor = 1, 3
    t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def moby_archive(path: Path, tags=("example.com/hand/made:1",), gzip_layer: bool = False,
                 extra=None, manifest=None, swap_diff_ids: bool = False) -> dict:
    """A ``docker save`` archive as moby (docker < 25) writes it: ``<id>/layer.tar``,
    ``<id>/json``, ``<id>/VERSION``, ``<config hex>.json``, ``manifest.json``,
    ``repositories``. Returns what went in."""
    tar1 = layer_tar({"hello.txt": b"hello\n"})
    tar2 = layer_tar({"etc/motd": b"motd\n"})
    layer1 = gzip.compress(tar1, mtime=0) if gzip_layer else tar1
    config = config_for([tar2, tar1] if swap_diff_ids else [tar1, tar2])
    cfg_name = sha(config)[7:] + ".json"
    doc = manifest if manifest is not None else [
        {"Config": cfg_name, "RepoTags": list(tags), "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]
    with tarfile.open(path, "w") as t:
        for d, data in (("aaa", layer1), ("bbb", tar2)):
            add(t, d + "/", kind=tarfile.DIRTYPE)
            add(t, f"{d}/VERSION", b"1.0")
            add(t, f"{d}/json", b'{"id":"%s"}' % d.encode())
            add(t, f"{d}/layer.tar", data)
        add(t, cfg_name, config)
        for name, data, kind, link in (extra or []):
            add(t, name, data, kind, link)
        add(t, "manifest.json", json.dumps(doc).encode())
        add(t, "repositories", b"{}")
    return {"tars": [tar1, tar2], "layers": [layer1, tar2], "config": config}
