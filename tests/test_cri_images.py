"""The CRI ImageService (runtime.v1) of ctrd's cri plugin, driven as a kubelet does: a CRI
client over ctrd's socket (tests/cri_client.py), images from the session registry
(tests/images.py), the real ``ctr`` to look at the records and content underneath.

The reference behaviour is containerd 1.6's CRI: image id = config digest; a pull records
the id, the repo tag and the repo digest, labelled ``io.cri-containerd.image=managed``;
ImageStatus of an unknown image is empty; RemoveImage removes every name and collects.
"""

from __future__ import annotations

import base64
import concurrent.futures
import warnings
import json
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import grpc
import pytest

import images
from conftest import CTR, ctr
from cri_client import CRIClient, rpc_error

from ctrd.cri.images import user_from_image
from ctrd.images import manifest as m
from support.poll import wait_until
from support.registry_auth import PASSWORD, USER, AuthRegistry

with warnings.catch_warnings():  # deprecated in 3.11, the only bcrypt in the stdlib
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]

NS = "k8s.io"
MANAGED = "io.cri-containerd.image=managed"
CRI = 'plugins."io.containerd.grpc.v1.cri"'


# --- helpers ------------------------------------------------------------------------------

def config_of(image: images.Image) -> tuple[str, dict]:
    """(config digest, config) of the host platform's manifest of a test image."""
    doc = json.loads(image.read_blob(image.digest))
    if doc.get("mediaType") == images.MT_OCI_INDEX:
        host = next(d for d in doc["manifests"]
                    if d["platform"]["architecture"] == images.HOST_ARCH)
        doc = json.loads(image.read_blob(host["digest"]))
    cfg = doc["config"]["digest"]
    return cfg, json.loads(image.read_blob(cfg))


def expected_size(image: images.Image) -> int:
    """containerd's image size: (index +) the platform's manifest, config and layers."""
    doc = json.loads(image.read_blob(image.digest))
    size = 0
    if doc.get("mediaType") == images.MT_OCI_INDEX:
        size += image.blob_path(image.digest).stat().st_size
        host = next(d for d in doc["manifests"]
                    if d["platform"]["architecture"] == images.HOST_ARCH)
        size += host["size"]
        doc = json.loads(image.read_blob(host["digest"]))
    else:
        size += image.blob_path(image.digest).stat().st_size
    return size + doc["config"]["size"] + sum(x["size"] for x in doc["layers"])


def human(n: int) -> str:
    """ctr's size column (go-units CustomSize "%02.1f %s", base 1024)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    v, i = float(n), 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.1f} {units[i]}"


def ctr_images(address: str) -> dict[str, dict]:
    """``ctr -n k8s.io images ls`` as {name: {type, digest, size, platforms, labels}}."""
    r = ctr(address, "images", "ls", namespace=NS)
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines()[1:]:
        name, mt, digest, num, unit, plats, labels = line.split()
        rows[name] = {"type": mt, "digest": digest, "size": f"{num} {unit}",
                      "platforms": plats, "labels": labels}
    return rows


def ctr_lines(address: str, *args: str) -> list[str]:
    r = ctr(address, *args, namespace=NS)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[1:]


def repo(registry, name: str) -> str:
    return f"{registry.address}/{images.REFS[name][0]}"


@pytest.fixture
def cri_daemon(start_ctrd):
    """Factory: a ctrd with the cri plugin (extra TOML under its section) and a CRI client."""
    clients: list[CRIClient] = []

    def start(cri_toml: str = "", env: dict | None = None):
        text = f'version = 2\n[{CRI}]\n{cri_toml}' if cri_toml else None
        d = start_ctrd(config_text=text, env=env)
        c = CRIClient(d.address)
        clients.append(c)
        return d, c

    yield start
    for c in clients:
        c.close()


# --- pulls, lists, status -----------------------------------------------------------------

def test_pull_by_tag_records_id_tag_and_digest_as_containerd(cri_daemon, registry):
    d, cri = cri_daemon()
    img = registry.pushed["busybox"]
    cfg_digest, cfg = config_of(img)
    ref = registry.ref("busybox")

    assert cri.pull(ref) == cfg_digest

    listed = cri.list_images()
    assert len(listed) == 1
    got = listed[0]
    assert got.id == cfg_digest
    assert list(got.repo_tags) == [ref]
    assert list(got.repo_digests) == [f"{repo(registry, 'busybox')}@{img.digest}"]
    assert got.size == expected_size(img)
    assert not got.HasField("uid") and got.username == "" and not got.pinned

    # What ctr sees underneath: three records, one target, the managed label, same size.
    rows = ctr_images(d.address)
    assert set(rows) == {cfg_digest, ref, f"{repo(registry, 'busybox')}@{img.digest}"}
    for row in rows.values():
        assert row["digest"] == img.digest
        assert row["type"] == images.MT_OCI_MANIFEST
        assert row["labels"] == MANAGED
        assert row["size"] == human(got.size)
    # ...and unpacked into overlayfs (the top snapshot is the chain id).
    chain = m.chain_ids(img.diff_ids)[-1]
    assert any(line.split()[0] == chain for line in ctr_lines(d.address, "snapshots", "ls"))

    # Status by every name the kubelet may use: tag, short name forms, digest, id, short id.
    for name in (ref, f"{repo(registry, 'busybox')}@{img.digest}", cfg_digest,
                 cfg_digest.split(":")[1], cfg_digest.split(":")[1][:12]):
        st = cri.image_status(name)
        assert st.image.id == cfg_digest, name
        assert not st.info
    st = cri.image_status(ref, verbose=True)
    info = json.loads(st.info["info"])
    assert info["chainID"] == chain
    assert info["imageSpec"] == cfg

    # Filtered list.
    assert [i.id for i in cri.list_images(ref)] == [cfg_digest]
    assert cri.list_images(f"{registry.address}/test/nothing:here") == []

    # A second pull of the same tag is the same image and no new names.
    assert cri.pull(ref) == cfg_digest
    assert set(ctr_images(d.address)) == set(rows)


def test_pull_by_digest_then_tag_and_docker_schema2(cri_daemon, registry):
    d, cri = cri_daemon()
    oci, v2 = registry.pushed["busybox"], registry.pushed["busybox-v2s2"]
    cfg_digest, _ = config_of(oci)
    assert config_of(v2)[0] == cfg_digest  # the same config bytes: one image id
    by_digest = f"{repo(registry, 'busybox')}@{oci.digest}"

    assert cri.pull(by_digest) == cfg_digest
    [got] = cri.list_images()
    assert list(got.repo_tags) == [] and list(got.repo_digests) == [by_digest]

    # A tag together with the digest: the tag is dropped (containerd's ParseDockerRef).
    assert cri.pull(f"{repo(registry, 'busybox')}:ignored@{oci.digest}") == cfg_digest
    assert f"{repo(registry, 'busybox')}:ignored" not in ctr_images(d.address)

    # Docker schema 2 manifest of the same config: the same image, a second tag and digest.
    assert cri.pull(registry.ref("busybox-v2s2")) == cfg_digest
    [got] = cri.list_images()
    assert list(got.repo_tags) == [registry.ref("busybox-v2s2")]
    assert sorted(got.repo_digests) == sorted([by_digest,
                                               f"{repo(registry, 'busybox')}@{v2.digest}"])
    rows = ctr_images(d.address)
    assert rows[registry.ref("busybox-v2s2")]["type"] == images.MT_DOCKER_MANIFEST
    # The id record points at the latest pull's target, as containerd repoints it.
    assert rows[cfg_digest]["digest"] == v2.digest


def test_pull_multi_arch_index(cri_daemon, registry):
    d, cri = cri_daemon()
    idx = registry.pushed["busybox-multi"]
    cfg_digest, _ = config_of(idx)
    ref = registry.ref("busybox-multi")

    assert cri.pull(ref) == cfg_digest
    [got] = cri.list_images()
    assert list(got.repo_tags) == [ref]
    assert list(got.repo_digests) == [f"{repo(registry, 'busybox-multi')}@{idx.digest}"]
    assert got.size == expected_size(idx)
    rows = ctr_images(d.address)
    assert rows[ref]["type"] == images.MT_OCI_INDEX
    assert rows[ref]["size"] == human(got.size)
    other = f"linux/{images.OTHER_ARCH}" + ("/v8" if images.OTHER_ARCH == "arm64" else "")
    assert other in rows[ref]["platforms"]
    # Only the host's manifest was fetched: the other platform's config is not in content.
    other_cfg = [d_ for d_, mt in idx.blobs.items() if mt == images.MT_OCI_CONFIG
                 and d_ != cfg_digest]
    content = ctr_lines(d.address, "content", "ls")
    assert not any(line.split()[0] in other_cfg for line in content)


def test_status_and_list_of_users_and_unknown_images(cri_daemon, registry):
    d, cri = cri_daemon()
    # An image whose config names a user, pushed next to busybox (same layer).
    img = registry.pushed["busybox"]
    _, cfg = config_of(img)
    layer = json.loads(img.read_blob(img.digest))["layers"][0]
    cfgs = {}
    for user in ("1000:1000", "daemon"):
        c = dict(cfg, config=dict(cfg["config"], User=user))
        data = images.canonical(c)
        digest = images.sha256(data)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            registry._put_blob("test/busybox", digest, Path(f.name))
        man = images.canonical({"schemaVersion": 2, "mediaType": images.MT_OCI_MANIFEST,
                                "config": {"mediaType": images.MT_OCI_CONFIG,
                                           "digest": digest, "size": len(data)},
                                "layers": [layer]})
        tag = "cri-user-" + user.replace(":", "-")
        registry._put_manifest("test/busybox", tag, man, images.MT_OCI_MANIFEST)
        cfgs[user] = cri.pull(f"{registry.address}/test/busybox:{tag}")
        assert cfgs[user] == digest

    st = cri.image_status(cfgs["1000:1000"])
    assert st.image.HasField("uid") and st.image.uid.value == 1000 and st.image.username == ""
    st = cri.image_status(cfgs["daemon"])
    assert not st.image.HasField("uid") and st.image.username == "daemon"

    # Unknown image: an empty answer, no error (any form of name).
    for name in ("nothing-here:latest", "sha256:" + "0" * 64, "0" * 12, "Bad Ref!"):
        st = cri.image_status(name)
        assert not st.HasField("image") and not st.info, name
    assert cri.list_images("sha256:" + "0" * 64) == []


@pytest.mark.parametrize(("user", "want"), [
    ("", (None, "")), ("0", (0, "")), ("1000:1000", (1000, "")), ("nobody", (None, "nobody")),
    ("nobody:nogroup", (None, "nobody")), ("99999999999999999999", (None, "99999999999999999999")),
])
def test_user_from_image(user, want):
    assert user_from_image(user) == want


# --- remove and GC --------------------------------------------------------------------------

def test_remove_removes_every_name_and_collects(cri_daemon, registry):
    d, cri = cri_daemon()
    ref = registry.ref("busybox")
    iid = cri.pull(ref)
    cri.pull(registry.ref("busybox-v2s2"))   # same image id, more names
    assert len(ctr_images(d.address)) == 5
    assert ctr_lines(d.address, "content", "ls")

    cri.remove_image(registry.ref("busybox-v2s2"))  # any one name removes the whole image
    assert not cri.image_status(ref).HasField("image")
    assert not cri.image_status(iid).HasField("image")
    assert cri.list_images() == []
    assert ctr_images(d.address) == {}
    # The removal waited for a collection: nothing left in content or snapshots.
    assert ctr_lines(d.address, "content", "ls") == []
    assert ctr_lines(d.address, "snapshots", "ls") == []

    # Removing what is not there is fine (the kubelet retries).
    cri.remove_image(ref)
    cri.remove_image("sha256:" + "1" * 64)
    cri.remove_image("never/pulled:x")

    # And the image can come back.
    assert cri.pull(ref) == iid


def test_remove_by_id_leaves_other_images(cri_daemon, registry):
    d, cri = cri_daemon()
    busy = cri.pull(registry.ref("busybox"))
    multi_cfg, _ = config_of(registry.pushed["busybox-multi"])
    assert cri.pull(registry.ref("busybox-multi")) == multi_cfg == busy  # same host config
    # Same id: one image. Pull something else to have two.
    fat = cri.pull(registry.ref("fat"))
    assert {i.id for i in cri.list_images()} == {busy, fat}
    cri.remove_image(fat)
    assert [i.id for i in cri.list_images()] == [busy]
    assert cri.image_status(registry.ref("busybox")).image.id == busy
    fat_layers = registry.pushed["fat"].diff_ids
    content = {line.split()[0] for line in ctr_lines(d.address, "content", "ls")}
    assert not any(ld in content for ld in fat_layers)


# --- errors -------------------------------------------------------------------------------

def test_pull_errors_name_the_image(cri_daemon, registry):
    d, cri = cri_daemon()
    missing = f"{registry.address}/test/missing:nope"
    err = rpc_error(cri.pull, missing)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert f'failed to pull and unpack image "{missing}"' in err.details()
    assert "not found" in err.details()

    # containerd 2.3.4 answers an unparsable reference with a plain error: UNKNOWN
    err = rpc_error(cri.pull, "Not A Ref!")
    assert err.code() == grpc.StatusCode.UNKNOWN
    assert "Not A Ref!" in err.details() and "invalid reference format" in err.details()
    err = rpc_error(cri.pull, "")
    assert err.code() == grpc.StatusCode.UNKNOWN

    # Bad base64 in the auth: refused before anything is fetched.
    err = rpc_error(cri.pull, registry.ref("busybox"), auth="***")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "base64" in err.details()

    # Nothing was left behind by the failures.
    assert ctr_images(d.address) == {}
    assert ctr_lines(d.address, "content", "ls") == []
    assert ctr_lines(d.address, "leases", "ls") == []


def test_pull_from_a_registry_that_never_answers_times_out(cri_daemon):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)  # accepts into the backlog, never answers
    try:
        port = srv.getsockname()[1]
        d, cri = cri_daemon('image_pull_progress_timeout = "1s"\n')
        ref = f"127.0.0.1:{port}/test/stall:latest"
        err = rpc_error(cri.pull, ref)
        # containerd 2.3.4: DEADLINE_EXCEEDED ("net/http: timeout awaiting response headers")
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert f'failed to pull and unpack image "{ref}"' in err.details()
        assert ctr_images(d.address) == {}
        assert ctr_lines(d.address, "leases", "ls") == []
    finally:
        srv.close()


# --- registry configuration: mirrors, hosts.toml ---------------------------------------------

def test_mirrors_endpoint_config(cri_daemon, registry):
    """The older ``registry.mirrors`` table: a name's pulls go to its mirror first."""
    d, cri = cri_daemon(f'[{CRI}.registry.mirrors."mirror.invalid"]\n'
                        f'endpoint = ["{registry.address}"]\n')
    ref = "mirror.invalid/test/busybox:latest"
    iid = cri.pull(ref)
    assert iid == config_of(registry.pushed["busybox"])[0]
    [got] = cri.list_images()
    assert list(got.repo_tags) == [ref]
    assert ref in ctr_images(d.address)


def test_config_path_hosts_toml(cri_daemon, registry, tmp_root):
    certs = tmp_root / "certs.d"
    (certs / "hosts.invalid").mkdir(parents=True)
    (certs / "hosts.invalid" / "hosts.toml").write_text(
        f'server = "http://{registry.address}"\n')
    d, cri = cri_daemon(f'[{CRI}.registry]\nconfig_path = "{tmp_root / "empty"}:{certs}"\n')
    assert cri.pull("hosts.invalid/test/busybox:latest") == \
        config_of(registry.pushed["busybox"])[0]
    # A host no root configures goes to its default endpoint.
    err = rpc_error(cri.pull, f"{registry.address}/test/missing:x")
    assert err.code() == grpc.StatusCode.NOT_FOUND


# --- auth -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_registry(registry):
    if not hasattr(crypt, "METHOD_BLOWFISH") or crypt.METHOD_BLOWFISH not in crypt.methods:
        pytest.skip("no bcrypt in crypt(3) for an htpasswd file")
    base = Path(tempfile.mkdtemp(prefix="ctrd-authreg-", dir="/tmp"))
    reg = None
    try:
        reg = AuthRegistry.start_auth(base / "registry")
        assert reg.request("GET", "/v2/")[0] == 200
        for name in ("busybox", "fat"):
            reg.push(registry.pushed[name])
        yield reg
    finally:
        if reg is not None:
            reg.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_pull_with_auth_config(cri_daemon, auth_registry):
    d, cri = cri_daemon()
    ref = auth_registry.ref("busybox")
    iid = config_of(auth_registry.pushed["busybox"])[0]

    # Anonymous: refused, and the error says so and names the image.
    err = rpc_error(cri.pull, ref)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f'failed to pull and unpack image "{ref}"' in err.details()
    assert "no credentials" in err.details()

    # Wrong password: refused, clearly.
    err = rpc_error(cri.pull, ref, username=USER, password="wrong")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f'failed to pull and unpack image "{ref}"' in err.details()
    assert "401" in err.details() and "unauthorized" in err.details().lower()

    # Credentials meant for another registry are not sent here.
    err = rpc_error(cri.pull, ref, username=USER, password=PASSWORD,
                    server_address="https://other.example")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ctr_images(d.address) == {}

    # username/password, with or without a matching server_address; auth = base64(u:p).
    assert cri.pull(ref, username=USER, password=PASSWORD) == iid
    cri.remove_image(ref)
    assert cri.pull(ref, username=USER, password=PASSWORD,
                    server_address=auth_registry.address) == iid
    cri.remove_image(ref)
    assert cri.pull(ref, auth=base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()) == iid
    assert [i.id for i in cri.list_images()] == [iid]


def test_registry_configs_auth_and_auth_for_mirrors(cri_daemon, auth_registry):
    # configs.<host>.auth: pulls without request credentials use it.
    d, cri = cri_daemon(f'[{CRI}.registry.configs."{auth_registry.address}".auth]\n'
                        f'username = "{USER}"\npassword = "{PASSWORD}"\n'
                        f'[{CRI}.registry.mirrors."private.invalid"]\n'
                        f'endpoint = ["http://{auth_registry.address}"]\n')
    iid = config_of(auth_registry.pushed["busybox"])[0]
    assert cri.pull(auth_registry.ref("busybox")) == iid
    # The mirror of another name is that same host: its configs auth serves it too...
    assert cri.pull("private.invalid/test/busybox:latest") == iid
    # ...and the request's own (wrong) credentials take precedence over the config's.
    err = rpc_error(cri.pull, "private.invalid/test/busybox:latest", username=USER,
                    password="wrong")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_concurrent_pulls_of_one_ref_share_one_pull(cri_daemon, auth_registry):
    d, cri = cri_daemon()
    ref = auth_registry.ref("fat")
    before = auth_registry.manifest_hits("test/fat", "latest")
    n = 4
    start = threading.Barrier(n)

    def one(_):
        with CRIClient(d.address) as c:
            start.wait()
            return c.pull(ref, username=USER, password=PASSWORD)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        got = list(pool.map(one, range(n)))
    assert len(set(got)) == 1 and got[0] == config_of(auth_registry.pushed["fat"])[0]
    # One resolve for all four (the access log is written as requests finish).
    wait_until(lambda: auth_registry.manifest_hits("test/fat", "latest") != before, 5)
    assert auth_registry.manifest_hits("test/fat", "latest") - before == 1
    [img] = cri.list_images()
    assert list(img.repo_tags) == [ref]


# --- image fs ---------------------------------------------------------------------------------

def test_image_fs_info_is_the_snapshotter_root(cri_daemon, registry):
    d, cri = cri_daemon()
    # Pull first: the usage is sampled at most every 10 s, so the first answer is fresh.
    cri.pull(registry.ref("fat"))
    info = cri.image_fs_info()
    [fs] = info.image_filesystems
    assert fs.fs_id.mountpoint == str(d.root / "io.containerd.snapshotter.v1.overlayfs")
    assert fs.timestamp > 0
    assert fs.used_bytes.value > 20 << 20    # the fat image's files, unpacked
    assert fs.inodes_used.value > 1000      # thousands of small files
    assert list(info.container_filesystems) == []


# --- registry configuration, without a daemon ----------------------------------------------

def _section(**kw):
    from ctrd.cri.config import RegistrySection

    return RegistrySection(**kw)


def test_mirror_endpoints_as_containerd():
    from ctrd.cri.config import Mirror, RegistryHostConfig, TLSConfig
    from ctrd.cri.registry import mirror_endpoints

    reg = _section(mirrors={"docker.io": Mirror(["mirror.example:5000", "http://m2.example/x"]),
                            "*": Mirror(["https://catchall.example"]),
                            "self.example": Mirror(["https://self.example"])},
                   configs={"mirror.example:5000": RegistryHostConfig(
                       tls=TLSConfig(insecure_skip_verify=True, ca_file="/ca.pem"))})
    eps = mirror_endpoints(reg, "docker.io")
    assert [e.base_url for e in eps] == ["https://mirror.example:5000/v2",
                                         "http://m2.example/x",
                                         "https://registry-1.docker.io/v2"]
    assert eps[0].skip_verify and eps[0].ca == ("/ca.pem",)
    assert all(not e.can("push") and e.can("pull") and e.can("resolve") for e in eps)
    # "*" serves hosts without their own entry; a mirror that is the host adds no default.
    assert [e.base_url for e in mirror_endpoints(reg, "quay.io")] == [
        "https://catchall.example/v2", "https://quay.io/v2"]
    assert [e.base_url for e in mirror_endpoints(reg, "self.example")] == [
        "https://self.example/v2"]
    # Localhost: plain http by default, TLS not verified.
    [ep] = mirror_endpoints(_section(), "localhost:5000")
    assert ep.base_url == "http://localhost:5000/v2" and ep.skip_verify


def test_mirror_endpoint_errors_name_the_problem():
    from ctrd import errdefs
    from ctrd.cri.config import Mirror, RegistryHostConfig, TLSConfig
    from ctrd.cri.registry import mirror_endpoints

    with pytest.raises(errdefs.InvalidArgument, match="invalid endpoint 'ftp://x'"):
        mirror_endpoints(_section(mirrors={"h.example": Mirror(["ftp://x"])}), "h.example")
    reg = _section(mirrors={"h.example": Mirror(["https://m.example"])},
                   configs={"m.example": RegistryHostConfig(tls=TLSConfig(cert_file="/c"))})
    with pytest.raises(errdefs.InvalidArgument, match="m.example: cert_file and key_file"):
        mirror_endpoints(reg, "h.example")


def test_credentials_stay_with_the_pulled_host_and_its_mirrors():
    from ctrd import errdefs
    from ctrd.cri.config import AuthConfig, Mirror, RegistryHostConfig
    from ctrd.cri.registry import CRIRegistry, PullAuth
    from ctrd.remotes.auth import Credentials

    reg = _section(mirrors={"r.example": Mirror(["https://mirror.example"])},
                   configs={"mirror.example": RegistryHostConfig(
                       auth=AuthConfig(username="cfg", password="cfgpw"))},
                   auths={"https://r.example/v1/": AuthConfig(
                       auth=base64.b64encode(b"old:oldpw").decode())})
    # Request credentials: every endpoint of the pulled host, nothing else.
    r = CRIRegistry(reg, "r.example", PullAuth(username="u", password="p"),
                    progress_timeout=5)
    assert r._credentials("r.example") == Credentials("u", "p")
    assert r._credentials("mirror.example") == Credentials("u", "p")
    assert r._credentials("evil.example") is None
    # ...unless server_address names another host.
    r = CRIRegistry(reg, "r.example", PullAuth(username="u", password="p",
                                               server_address="https://mirror.example"),
                    progress_timeout=5)
    assert r._credentials("r.example") is None
    assert r._credentials("mirror.example") == Credentials("u", "p")
    # No request credentials: configs.<endpoint host>.auth, then the deprecated auths.
    r = CRIRegistry(reg, "r.example", None, progress_timeout=5)
    assert r._credentials("mirror.example") == Credentials("cfg", "cfgpw")
    assert r._credentials("r.example") == Credentials("old", "oldpw")
    # identity_token: the refresh-token flow; auth with NULs after the password (Windows).
    a = PullAuth(identity_token="idt")
    assert a.credentials() == Credentials(identity_token="idt")
    a = PullAuth(auth=base64.b64encode(b"u:p\x00\x00").decode())
    assert a.credentials() == Credentials("u", "p")
    for bad, why in (("***", "not valid base64"), (base64.b64encode(b"nocolon").decode(),
                                                    "username:password")):
        with pytest.raises(errdefs.InvalidArgument, match=why):
            CRIRegistry(reg, "r.example", PullAuth(auth=bad), progress_timeout=5)
    assert "p" not in repr(PullAuth(username="u", password="p")).replace("PullAuth", "")


def test_registry_token_and_headers_go_to_the_pulled_hosts_endpoints():
    from ctrd import errdefs
    from ctrd.cri.config import Mirror
    from ctrd.cri.registry import CRIRegistry, PullAuth

    reg = _section(mirrors={"r.example": Mirror(["https://mirror.example"])},
                   headers={"X-Trace": ["a", "b"]})
    r = CRIRegistry(reg, "r.example", PullAuth(registry_token="tok",
                                               server_address="r.example"),
                    progress_timeout=5)
    eps = {e.host: dict(e.header) for e in r.endpoints("r.example", "pull")}
    assert eps["r.example"] == {"X-Trace": ("a", "b"), "Authorization": ("Bearer tok",)}
    assert eps["mirror.example"] == {"X-Trace": ("a", "b")}
    with pytest.raises(errdefs.InvalidArgument, match="can push"):  # mirrors only pull
        r.endpoints("r.example", "push")
