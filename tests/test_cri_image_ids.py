"""Image identifiers across PullImage, ImageStatus, ListImages, ListContainers and
ContainerStatus, as containerd 2.3.4 answers them (internal/cri/server/container_status.go,
container_list.go, images/image_pull.go; checked against the 2.3.4 binary):

- PullImage answers the image id (config digest), whichever name pulled it;
- one image pulled under several names (two repositories, two registries) is one image: its
  repo tags and repo digests sorted, the same answer by any of its names or its id;
- ListContainers: ``image`` is the ImageSpec as the kubelet sent it (``user_specified_image``
  kept), ``image_ref`` and ``image_id`` the image id;
- ContainerStatus: ``image`` the image's first repo tag (no ``user_specified_image``),
  ``image_ref`` its first repo digest, ``image_id`` the image id; once the image is removed,
  the ImageSpec as sent and the image id;
- the spec's ``io.kubernetes.cri.image-name`` annotation is ``user_specified_image``, else the
  image's first name.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

import images
from cri_image_fixtures import push_as
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


@pytest.fixture
def second_registry():
    """Another registry (its own port, so its own host in image names), stopped after."""
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    base = Path(tempfile.mkdtemp(prefix="ctrd-registry2-", dir="/tmp"))
    reg = images.Registry.start(base / "registry")
    try:
        yield reg
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)


def _config_digest(image: images.Image) -> str:
    manifest = json.loads(image.read_blob(image.digest))
    return manifest["config"]["digest"]


def _pull(cri, ref: str) -> str:
    pb = cri.pb
    return cri.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref))).image_ref


def _names(registry, second_registry):
    """The busybox test image under three names: the fixture's, another repository of the
    same registry, and a second registry. (refs, repo tags sorted, repo digests sorted)."""
    bb = registry.pushed["busybox"]
    refs = [registry.ref("busybox"), push_as(registry, bb, "other/bb", "alt"),
            push_as(second_registry, bb, "mirror/busybox", "v1")]
    digests = sorted(r.rsplit(":", 1)[0] + "@" + bb.digest for r in refs)
    return refs, sorted(refs), digests


def test_one_image_under_several_names_and_registries(cri, registry, second_registry):
    pb = cri.pb
    refs, tags, digests = _names(registry, second_registry)
    image_id = _config_digest(registry.pushed["busybox"])
    # PullImage answers the image id for every name
    assert [_pull(cri, r) for r in refs] == [image_id] * 3
    for name in refs + [image_id, image_id.split(":")[1], image_id.split(":")[1][:12]]:
        img = cri.img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=name))).image
        assert (img.id, list(img.repo_tags), list(img.repo_digests)) == \
            (image_id, tags, digests), name
    listed = [i for i in cri.img.ListImages(pb.ListImagesRequest()).images if i.id == image_id]
    assert [(list(i.repo_tags), list(i.repo_digests)) for i in listed] == [(tags, digests)]
    # a filter by any name gives that one image
    for name in refs:
        got = cri.img.ListImages(pb.ListImagesRequest(filter=pb.ImageFilter(
            image=pb.ImageSpec(image=name)))).images
        assert [i.id for i in got] == [image_id]
    # removing by one name removes the image (every name), as containerd
    cri.img.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=refs[2])))
    for name in refs:
        assert not cri.img.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=name))).HasField("image")


def _image_name_annotation(cri, cid: str) -> str:
    _, info = cri.status(cid, verbose=True)
    return info["runtimeSpec"]["annotations"]["io.kubernetes.cri.image-name"]


def test_container_image_fields(cri, registry, second_registry):
    pb = cri.pb
    refs, tags, digests = _names(registry, second_registry)
    image_id = _config_digest(registry.pushed["busybox"])
    for r in refs:
        _pull(cri, r)
    sid, pconf = cri.run_pod("ids")
    # as the kubelet does: the image by id, what the pod spec said in user_specified_image
    sent = pb.ImageSpec(image=image_id, user_specified_image=refs[1],
                        annotations={"example.com/a": "b"})
    c1 = cri.create(sid, pconf, "byid", ["sleep", "1000"], image=sent)
    c2 = cri.create(sid, pconf, "byname", ["sleep", "1000"],
                    image=pb.ImageSpec(image=refs[2]))

    listed = {c.id: c for c in cri.rt.ListContainers(pb.ListContainersRequest()).containers}
    assert listed[c1].image == sent
    assert listed[c2].image == pb.ImageSpec(image=refs[2])
    for c in (c1, c2):
        assert (listed[c].image_ref, listed[c].image_id) == (image_id, image_id)

    for c in (c1, c2):
        s = cri.status(c)
        assert s.image == pb.ImageSpec(image=tags[0])  # user_specified_image not kept
        assert (s.image_ref, s.image_id) == (digests[0], image_id)

    assert _image_name_annotation(cri, c1) == refs[1]     # user_specified_image
    assert _image_name_annotation(cri, c2) == tags[0]     # the image's first name

    # the image removed while its containers exist: what was sent, and the id
    cri.img.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))
    s = cri.status(c1)
    assert (s.image, s.image_ref, s.image_id) == (sent, image_id, image_id)
    assert cri.sh(c1, "echo still running") == "still running\n"
    cri.remove_pod(sid)
