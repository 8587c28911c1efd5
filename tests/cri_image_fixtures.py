"""Test images for the CRI image-volume and image-id tests, pushed to the session's
``registry`` fixture under names of their own (built offline, deterministic digests).

- :func:`volume_image`: a two-layer image whose files an image volume shows: ``data/hello.txt``,
  ``data/sub/inner.txt``, a file ``afile``, and symlinks ``inside`` -> ``data/sub``
  (relative, stays inside), ``escape`` -> ``../../../../../..`` and ``abs`` -> ``/etc``
  (both lead out of the image);
- :func:`push_as`: push an already built image under another repository and tag (one image,
  several names).
"""

from __future__ import annotations

import threading
from pathlib import Path

import images

VOLUME_REPO, VOLUME_TAG = "test/imgvol", "v1"
_lock = threading.Lock()
_built: dict[str, images.Image] = {}


def push_as(registry, image: images.Image, repo: str, tag: str) -> str:
    """Push ``image`` (blobs, child manifests, then the tagged manifest) as ``repo:tag``;
    returns the reference."""
    manifests = {images.MT_OCI_MANIFEST, images.MT_DOCKER_MANIFEST, images.MT_OCI_INDEX}
    for d, mt in sorted(image.blobs.items()):
        if mt not in manifests:
            registry._put_blob(repo, d, image.blob_path(d))
    for d, mt in sorted(image.blobs.items()):
        if mt in manifests and d != image.digest:
            assert registry._put_manifest(repo, d, image.read_blob(d), mt) == d
    got = registry._put_manifest(repo, tag, image.read_blob(image.digest),
                                 image.manifest["mediaType"])
    assert got == image.digest, (got, image.digest)
    return f"{registry.address}/{repo}:{tag}"


def volume_image(registry, workdir: Path) -> tuple[str, images.Image]:
    """(reference, image) of the volume test image, built and pushed once per registry."""
    with _lock:
        img = _built.get(registry.address)
        if img is None:
            layout = images.Layout("imgvol", Path(workdir) / "imgvol-layout")
            L1 = images.Layer(layout)
            L1.file("data/hello.txt", b"hello from the image volume\n")
            L1.file("data/sub/inner.txt", b"inner\n")
            L1.file("afile", b"a file, not a directory\n")
            d1 = L1.close()
            L2 = images.Layer(layout, mtime=images.EPOCH + 1000)
            L2.file("data/layer2.txt", b"second layer\n")
            L2.symlink("inside", "data/sub")
            L2.symlink("escape", "../../../../../..")
            L2.symlink("abs", "/etc")
            d2 = L2.close()
            mdesc = images._oci_image(layout, [d1, d2], images.HOST_ARCH,
                                      ["imgvol layer 1", "imgvol layer 2"])
            img = layout.finish(mdesc, VOLUME_TAG)
            push_as(registry, img, VOLUME_REPO, VOLUME_TAG)
            _built[registry.address] = img
    return f"{registry.address}/{VOLUME_REPO}:{VOLUME_TAG}", img
