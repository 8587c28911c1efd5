"""Test images, built offline and deterministically, and a throw-away local registry.

Everything here is stdlib + ``zstandard`` (in the venv). Every tar entry has a fixed mtime and
owner, every PRNG a fixed seed, gzip headers mtime 0, JSON is canonical: the digests depend only
on this file, the host's ``/bin/busybox`` (busybox-static) and the zlib/zstd versions.

Images (OCI image layouts, ``index.json`` + ``oci-layout`` + ``blobs/sha256``):

=================  ==========================================================================
``busybox``        1 gzip layer: static busybox, applet symlinks, /etc/passwd, /etc/group,
                   /tmp (1777); OCI manifest + config, host architecture, Cmd ["sh"]
``busybox-v2s2``   the same layer and config as a Docker schema 2 manifest
``busybox-multi``  OCI index: host arch (= ``busybox``) + an arm64 (or amd64) placeholder
``fat``            5 gzip layers (~50 MB): thousands of small files, big random files, symlinks
                   (relative, absolute, dangling, chains), hardlinks (also across dirs), setuid,
                   0600 and empty files, a file whiteout, an opaque dir, a whiteout of one
                   hardlink name, a >255-byte path (PAX), a unicode name, per-layer mtimes
``fat-zstd``       the same tars recompressed with zstd (``tar+zstd``): same diff_ids
``busybox-groups`` ``busybox`` + a layer whose /etc/passwd and /etc/group put user ``app``
                   (1000:1000, the config's User) in groups 2001 and 2002 (not 2003)
``busybox-stopsig`` ``busybox`` with ``StopSignal: SIGUSR1`` in its config
=================  ==========================================================================

API::

    built = build_images(out_dir)           # {name: Image}; layouts under out_dir/<name>
    reg = Registry.start(work_dir)          # docker-registry serve on 127.0.0.1:<free port>
    reg.push(built["busybox"])              # blobs, then manifest(s), by plain HTTP
    reg.ref("busybox")                      # "127.0.0.1:PORT/test/busybox:latest"
    reg.digest("busybox")                   # manifest (or index) digest the registry serves
    reg.stop()                              # SIGTERM, wait, remove its dir
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

EPOCH = 1700000000                       # base mtime; layer n uses EPOCH + n * 1000
CREATED = "2023-11-14T22:13:20Z"         # == EPOCH
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine(), platform.machine())
OTHER_ARCH = "arm64" if HOST_ARCH != "arm64" else "amd64"
BUSYBOX = "/bin/busybox"

APPLETS = ("sh ash cat chmod cp date echo env false grep head id ln ls mkdir mount mv printf "
           "pwd readlink rm sha256sum sleep stat tail tar test touch true umount uname wc "
           "xargs").split()

MiB = 1 << 20

# Registry repository and tag of each image.
REFS = {
    "busybox": ("test/busybox", "latest"),
    "busybox-v2s2": ("test/busybox", "v2s2"),
    "busybox-multi": ("test/busybox", "multi"),
    "fat": ("test/fat", "latest"),
    "fat-zstd": ("test/fat", "zstd"),
    "busybox-groups": ("test/busybox", "groups"),
    "busybox-stopsig": ("test/busybox", "stopsig"),
}


def canonical(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _HashWriter:
    """A sink that hashes and counts what passes through to ``f``."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


@dataclass
class Image:
    """One OCI layout: ``root`` holds it, ``manifest`` is the descriptor the tag points at
    (a manifest or an index), ``blobs`` maps digest -> media type of every blob it holds."""

    name: str
    root: Path
    manifest: dict
    blobs: dict = field(default_factory=dict)
    diff_ids: list = field(default_factory=list)

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()


class Layout:
    def __init__(self, name: str, root: Path):
        self.image = Image(name, root, {})
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))

    @property
    def root(self) -> Path:
        return self.image.root

    def put(self, data: bytes, media_type: str) -> dict:
        d = sha256(data)
        self.image.blob_path(d).write_bytes(data)
        self.image.blobs[d] = media_type
        return {"mediaType": media_type, "digest": d, "size": len(data)}

    def put_json(self, obj, media_type: str) -> dict:
        return self.put(canonical(obj), media_type)

    def finish(self, desc: dict, tag: str = "latest") -> Image:
        desc = dict(desc)
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        (self.root / "index.json").write_bytes(canonical(
            {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [desc]}))
        self.image.manifest = {k: v for k, v in desc.items() if k != "annotations"}
        return self.image


class Layer:
    """A tar layer streamed through gzip (mtime 0) into ``layout``; :meth:`close` gives the
    layer descriptor and the diff_id."""

    def __init__(self, layout: Layout, mtime: int = EPOCH,
                 media_type: str = MT_OCI_LAYER_GZIP):
        self.layout, self.mtime, self.media_type = layout, mtime, media_type
        fd, tmp = tempfile.mkstemp(dir=layout.root / "blobs" / "sha256", suffix=".tmp")
        self.tmp = Path(tmp)
        self.raw = os.fdopen(fd, "wb")
        self.comp = _HashWriter(self.raw)
        self.gz = gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=self.comp,
                                mtime=0)
        self.uncomp = _HashWriter(self.gz)
        self.tar = tarfile.open(fileobj=self.uncomp, mode="w|", format=tarfile.PAX_FORMAT)
        self.dirs: set[str] = set()
        self.modes: dict[str, int] = {}

    def _info(self, path, type_, mode, size=0, link="", uid=0, gid=0):
        ti = tarfile.TarInfo(path)
        ti.type, ti.mode, ti.size, ti.linkname = type_, mode, size, link
        ti.mtime, ti.uid, ti.gid = self.mtime, uid, gid
        ti.uname = ti.gname = ""
        return ti

    def _parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def dir(self, path, mode=0o755, uid=0, gid=0):
        if path in self.dirs:
            return
        self._parents(path)
        self.dirs.add(path)
        self.tar.addfile(self._info(path, tarfile.DIRTYPE, mode, uid=uid, gid=gid))

    def file(self, path, data: bytes, mode=0o644, uid=0, gid=0):
        self._parents(path)
        self.modes[path] = mode
        self.tar.addfile(self._info(path, tarfile.REGTYPE, mode, len(data), uid=uid, gid=gid),
                         io.BytesIO(data))

    def symlink(self, path, target):
        self._parents(path)
        self.tar.addfile(self._info(path, tarfile.SYMTYPE, 0o777, link=target))

    def hardlink(self, path, target):
        """``target``: a regular file written earlier in this layer."""
        self._parents(path)
        self.tar.addfile(self._info(path, tarfile.LNKTYPE, self.modes[target], link=target))

    def whiteout(self, path):
        d, b = os.path.split(path)
        self.file(f"{d}/.wh.{b}" if d else f".wh.{b}", b"")

    def opaque(self, path):
        self.dir(path)
        self.file(path + "/.wh..wh..opq", b"")

    def close(self) -> tuple[dict, str]:
        self.tar.close()
        self.gz.close()
        self.raw.close()
        digest = "sha256:" + self.comp.h.hexdigest()
        os.replace(self.tmp, self.layout.image.blob_path(digest))
        self.layout.image.blobs[digest] = self.media_type
        diff_id = "sha256:" + self.uncomp.h.hexdigest()
        self.layout.image.diff_ids.append(diff_id)
        return {"mediaType": self.media_type, "digest": digest, "size": self.comp.n}, diff_id


def _config(arch: str, diff_ids: list[str], history: list[str]) -> dict:
    cfg = {
        "architecture": arch, "os": "linux", "created": CREATED,
        "config": {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": CREATED, "created_by": h} for h in history],
    }
    if arch == "arm64":
        cfg["variant"] = "v8"
    return cfg


def _platform(arch: str) -> dict:
    p = {"architecture": arch, "os": "linux"}
    if arch == "arm64":
        p["variant"] = "v8"
    return p


def _oci_image(layout: Layout, layers, arch: str, history: list[str]) -> dict:
    cdesc = layout.put_json(_config(arch, [d for _, d in layers], history), MT_OCI_CONFIG)
    return layout.put_json({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "config": cdesc,
                            "layers": [l for l, _ in layers]}, MT_OCI_MANIFEST)


# ---------------------------------------------------------------------------- busybox

def busybox_applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    return sorted(set(APPLETS) & set(out.split()))


def _etc(L: Layer, hostname: bytes = b"ctrd-test\n"):
    L.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                         b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
                         b"nobody:x:65534:65534:nobody:/home:/bin/false\n")
    L.file("etc/group", b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n")
    L.file("etc/hostname", hostname)
    for d in ("dev", "proc", "sys", "home", "usr/bin", "var"):
        L.dir(d)
    L.dir("root", 0o700)
    L.dir("tmp", 0o1777)


def _busybox_layer(layout: Layout, L: Layer | None = None) -> Layer:
    L = L or Layer(layout)
    L.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    for a in busybox_applets():
        L.symlink("bin/" + a, "busybox")
    _etc(L)
    return L


def build_busybox(out: Path) -> dict[str, Image]:
    """``busybox`` (OCI), ``busybox-v2s2`` (Docker schema 2) and ``busybox-multi`` (index)."""
    oci = Layout("busybox", out / "busybox")
    ldesc, diff = _busybox_layer(oci).close()
    mdesc = _oci_image(oci, [(ldesc, diff)], HOST_ARCH, ["tests/images.py: busybox"])
    images = {"busybox": oci.finish(mdesc)}

    # Docker schema 2: the very same layer bytes, other media types.
    v2 = Layout("busybox-v2s2", out / "busybox-v2s2")
    v2.put(oci.image.read_blob(ldesc["digest"]), MT_DOCKER_LAYER_GZIP)
    v2.image.diff_ids.append(diff)
    cdesc = v2.put_json(_config(HOST_ARCH, [diff], ["tests/images.py: busybox"]),
                        MT_DOCKER_CONFIG)
    v2desc = v2.put_json({"schemaVersion": 2, "mediaType": MT_DOCKER_MANIFEST, "config": cdesc,
                          "layers": [dict(ldesc, mediaType=MT_DOCKER_LAYER_GZIP)]},
                         MT_DOCKER_MANIFEST)
    images["busybox-v2s2"] = v2.finish(v2desc, "v2s2")

    # Index: host arch = the OCI image above, plus a placeholder for the other arch.
    multi = Layout("busybox-multi", out / "busybox-multi")
    for d in list(oci.image.blobs):
        multi.put(oci.image.read_blob(d), oci.image.blobs[d])
    multi.image.diff_ids.append(diff)
    P = Layer(multi)
    _etc(P, b"placeholder\n")
    P.file("PLACEHOLDER", f"placeholder image for linux/{OTHER_ARCH}\n".encode())
    pdesc, pdiff = P.close()
    other = _oci_image(multi, [(pdesc, pdiff)], OTHER_ARCH, ["tests/images.py: placeholder"])
    entries = sorted([dict(mdesc, platform=_platform(HOST_ARCH)),
                      dict(other, platform=_platform(OTHER_ARCH))],
                     key=lambda d: d["platform"]["architecture"])
    idesc = multi.put_json({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries},
                           MT_OCI_INDEX)
    images["busybox-multi"] = multi.finish(idesc, "multi")
    return images


# ---------------------------------------------------------------------------- fat

def _corpus(seed: int) -> bytes:
    r = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words = ["".join(r.choice(letters) for _ in range(r.randint(2, 10))) for _ in range(2000)]
    out, n = [], 0
    while n < MiB:
        line = " ".join(r.choice(words) for _ in range(r.randint(4, 16))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()


def _small_files(L: Layer, r: random.Random, text: bytes, base: str, count: int, dirs: int):
    """``count`` files of 64 B .. 16 KiB (log-uniform) of compressible text."""
    for i in range(count):
        d = "%s/d%03d" % (base, i % dirs)
        size = int(64 * (256 ** r.random()))
        off = r.randrange(0, len(text) - size)
        L.file("%s/f%05d.txt" % (d, i), ("# %s/f%05d\n" % (d, i)).encode() + text[off:off + size])


def _semi_binary(r: random.Random, n: int) -> bytes:
    out, left = [], n
    while left > 0:
        k = min(left, r.choice((4096, 16384, 65536)))
        kind = r.random()
        out.append(r.randbytes(k) if kind < 0.5 else b"\0" * k if kind < 0.7 else
                   bytes(r.choice(b"abcdefghijklmnopqrstuvwxyz_./\n") for _ in range(64))
                   * (k // 64 + 1))
        left -= k
    return b"".join(out)[:n]


LONG_PATH = "usr/share/fat/long/" + "x" * 150 + "/" + "y" * 120 + ".txt"
UNICODE_PATH = "usr/share/fat/unicode/\u00e9t\u00e9-\u65e5\u672c-\u2603.txt"


def _fat_layer(layout: Layout, n: int, text: bytes) -> tuple[dict, str]:
    r = random.Random(1000 + n)
    L = Layer(layout, mtime=EPOCH + n * 1000)
    if n == 1:                                           # a runnable base
        _busybox_layer(layout, L)
        _small_files(L, r, text, "usr/share/fat/l1", 1500, 30)
        L.file("opt/big/blob1.bin", r.randbytes(8 * MiB))
        L.file("etc/fat/deleteme.conf", b"deleted by layer 4 (whiteout)\n")
        L.file("etc/fat/keep.conf", b"kept\n")
        for i in range(20):
            L.file("var/lib/fat/opaque/old%02d" % i, b"hidden by the opaque dir of layer 4\n")
        L.dir("var/lib/fat/opaque/olddir")
        L.file("var/lib/fat/opaque/olddir/x", b"hidden too\n")
        L.file("etc/fat/replaced.conf", b"version 1\n")
        L.symlink("usr/share/fat/latest", "l1")                    # relative dir symlink
        L.symlink("usr/bin/fat-abs", "/opt/big/blob1.bin")         # absolute symlink
        L.symlink("usr/bin/fat-dangling", "/does/not/exist")       # dangling symlink
        L.dir("var/empty")
        L.dir("var/tmp", 0o1777)
        L.dir("home/user", 0o750, uid=1000, gid=1000)
        L.file("home/user/owned", b"owned by 1000:1000\n", 0o640, uid=1000, gid=1000)
    elif n == 2:
        _small_files(L, r, text, "usr/lib/fat/l2", 1000, 20)
        L.file("opt/big/blob2.bin", r.randbytes(10 * MiB))
        L.file("usr/lib/fat/hl/original", r.randbytes(128 * 1024), 0o755)
        for i in range(5):
            L.hardlink("usr/lib/fat/hl/link%d" % i, "usr/lib/fat/hl/original")
        L.hardlink("usr/lib/fat/hl-other-dir", "usr/lib/fat/hl/original")   # across dirs
        L.file("etc/fat/replaced.conf", b"version 2\n")           # overwrites a lower file
        L.file("usr/share/fat/l1/d000/f00000.txt", b"modified in layer 2\n")
    elif n == 3:
        for i in range(8):
            L.file("usr/libexec/fat/tool%02d" % i, _semi_binary(r, 512 * 1024), 0o755)
        L.file("opt/big/blob3.bin", r.randbytes(6 * MiB))
        L.file("usr/libexec/fat/setuid-tool", b"#!/bin/sh\necho setuid\n", 0o4755)
        L.file("usr/libexec/fat/setgid-tool", b"#!/bin/sh\necho setgid\n", 0o2755)
        L.file("usr/libexec/fat/private", b"secret\n", 0o600)
        L.file("usr/libexec/fat/empty", b"")
        deep = "/".join("n%02d" % i for i in range(24))
        L.file("usr/share/fat/deep/" + deep + "/leaf.txt", b"deep\n")
    elif n == 4:
        L.whiteout("etc/fat/deleteme.conf")                      # file whiteout
        L.opaque("var/lib/fat/opaque")                           # opaque directory
        L.file("var/lib/fat/opaque/new", b"the only file visible here\n")
        L.whiteout("usr/lib/fat/hl/link4")                       # one hardlink name deleted
        _small_files(L, r, text, "srv/fat/l4", 800, 16)
        L.file("opt/big/blob4.bin", r.randbytes(8 * MiB))
    elif n == 5:
        _small_files(L, r, text, "home/fat/l5", 500, 10)
        L.file("opt/big/blob5.bin", r.randbytes(6 * MiB))
        L.file(LONG_PATH, b"long path (PAX path header)\n")
        L.file(UNICODE_PATH, "unicode name\n".encode())
        L.symlink("usr/share/fat/chain1", "chain2")
        L.symlink("usr/share/fat/chain2", "chain3")
        L.symlink("usr/share/fat/chain3", "latest/d001/f00001.txt")
        L.file("etc/fat/replaced.conf", b"version 5\n")
    return L.close()


FAT_LAYERS = 5


def build_fat(out: Path) -> dict[str, Image]:
    """``fat`` (5 gzip layers) and ``fat-zstd`` (the same tars as zstd: same diff_ids)."""
    import zstandard

    text = _corpus(7)
    fat = Layout("fat", out / "fat")
    layers = [_fat_layer(fat, n, text) for n in range(1, FAT_LAYERS + 1)]
    hist = ["tests/images.py: fat layer %d" % n for n in range(1, FAT_LAYERS + 1)]
    images = {"fat": fat.finish(_oci_image(fat, layers, HOST_ARCH, hist))}

    zst = Layout("fat-zstd", out / "fat-zstd")
    zlayers = []
    for desc, diff in layers:
        tar = gzip.decompress(fat.image.read_blob(desc["digest"]))
        assert sha256(tar) == diff
        data = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(tar)
        zlayers.append((zst.put(data, MT_OCI_LAYER_ZSTD), diff))
        zst.image.diff_ids.append(diff)
    images["fat-zstd"] = zst.finish(_oci_image(zst, zlayers, HOST_ARCH, hist), "zstd")
    return images


# ---------------------------------------------------------------------------- variants

GROUPS_PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
                 b"app:x:1000:1000:app:/home:/bin/sh\n"
                 b"other:x:1001:1001:other:/home:/bin/sh\n")
GROUPS_GROUP = (b"root:x:0:\napp:x:1000:\naudio:x:2001:app\nvideo:x:2002:other,app\n"
                b"staff:x:2003:other\n")


def _variant(out: Path, name: str, tag: str, base: Image, extra_layer=None,
             **config) -> Image:
    """``base``'s (single-layer) image plus an optional layer, its config's ``config``
    updated with ``config``."""
    L = Layout(name, out / name)
    base_manifest = json.loads(base.read_blob(base.digest))
    layers = []
    for ldesc, diff in zip(base_manifest["layers"], base.diff_ids):
        L.put(base.read_blob(ldesc["digest"]), ldesc["mediaType"])
        L.image.diff_ids.append(diff)
        layers.append((ldesc, diff))
    hist = ["tests/images.py: busybox"]
    if extra_layer is not None:
        X = Layer(L, EPOCH + 1000)
        extra_layer(X)
        layers.append(X.close())
        hist.append(f"tests/images.py: {name}")
    cfg = _config(HOST_ARCH, [d for _, d in layers], hist)
    cfg["config"].update(config)
    cdesc = L.put_json(cfg, MT_OCI_CONFIG)
    mdesc = L.put_json({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "config": cdesc,
                        "layers": [l for l, _ in layers]}, MT_OCI_MANIFEST)
    return L.finish(mdesc, tag)


def build_variants(out: Path, busybox: Image) -> dict[str, Image]:
    """``busybox-groups`` and ``busybox-stopsig`` (see the table above)."""
    def groups(X: Layer) -> None:
        X.file("etc/passwd", GROUPS_PASSWD)
        X.file("etc/group", GROUPS_GROUP)

    return {"busybox-groups": _variant(out, "busybox-groups", "groups", busybox, groups,
                                       User="app"),
            "busybox-stopsig": _variant(out, "busybox-stopsig", "stopsig", busybox,
                                        StopSignal="SIGUSR1")}


def build_images(out: Path) -> dict[str, Image]:
    out = Path(out)
    images = build_busybox(out)
    images.update(build_variants(out, images["busybox"]))
    images.update(build_fat(out))
    return images


# ---------------------------------------------------------------------------- registry

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: {addr}
"""

ACCEPT = ", ".join([MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST,
                    "application/vnd.docker.distribution.manifest.list.v2+json"])


class Registry:
    """Debian's ``docker-registry serve`` on 127.0.0.1:<free port>, storage in ``root``."""

    def __init__(self, root: Path, proc: subprocess.Popen, address: str):
        self.root, self.proc, self.address = root, proc, address
        self.pushed: dict[str, Image] = {}

    @classmethod
    def start(cls, root: Path, timeout: float = 20.0) -> "Registry":
        exe = shutil.which("docker-registry")
        if exe is None:
            raise FileNotFoundError("docker-registry is not installed (apt docker-registry)")
        root = Path(root)
        (root / "storage").mkdir(parents=True, exist_ok=True)
        last = None
        for _ in range(3):                      # a free port can be taken before we bind it
            addr = f"127.0.0.1:{free_port()}"
            (root / "config.yml").write_text(REGISTRY_CONFIG.format(root=root, addr=addr))
            with open(root / "registry.log", "w") as out:
                proc = subprocess.Popen([exe, "serve", str(root / "config.yml")], stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            reg = cls(root, proc, addr)
            try:
                reg._wait(timeout)
                return reg
            except Exception as e:            # noqa: BLE001 - retried, then re-raised
                last = e
                reg.stop(remove=False)
        raise RuntimeError(f"registry did not come up: {last}")

    def _wait(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.proc.returncode}: "
                                   + self.log())
            try:
                if self.request("GET", "/v2/")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("docker-registry did not answer /v2/: " + self.log())

    def log(self) -> str:
        try:
            return (self.root / "registry.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, remove: bool = True):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- HTTP

    def request(self, method: str, url: str, body=None, headers=None):
        host, port = self.address.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            conn.request(method, url, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def _put_blob(self, repo: str, digest: str, path: Path):
        if self.request("HEAD", f"/v2/{repo}/blobs/{digest}")[0] == 200:
            return
        status, headers, body = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert status == 202, (status, body)
        loc = urllib.parse.urlsplit(headers["Location"])
        query = (loc.query + "&" if loc.query else "") + "digest=" + urllib.parse.quote(digest)
        with open(path, "rb") as f:
            status, _, body = self.request(
                "PUT", f"{loc.path}?{query}", body=f,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(path.stat().st_size)})
        assert status == 201, (status, body)

    def _put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        status, headers, body = self.request("PUT", f"/v2/{repo}/manifests/{ref}", body=data,
                                             headers={"Content-Type": media_type})
        assert status == 201, (status, body)
        return headers.get("Docker-Content-Digest", "")

    def push(self, image: Image) -> str:
        """Blobs first, then child manifests by digest, then the tagged one; returns the
        digest the registry reports, which must be the layout's."""
        repo, tag = REFS[image.name]
        manifests = {MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, MT_OCI_INDEX}
        for d, mt in sorted(image.blobs.items()):
            if mt not in manifests:
                self._put_blob(repo, d, image.blob_path(d))
        for d, mt in sorted(image.blobs.items()):
            if mt in manifests and d != image.digest:
                got = self._put_manifest(repo, d, image.read_blob(d), mt)
                assert got == d, (got, d)
        got = self._put_manifest(repo, tag, image.read_blob(image.digest),
                                 image.manifest["mediaType"])
        assert got == image.digest, (image.name, got, image.digest)
        self.pushed[image.name] = image
        return got

    def manifest(self, name: str) -> tuple[str, dict]:
        repo, tag = REFS[name]
        status, headers, body = self.request("GET", f"/v2/{repo}/manifests/{tag}",
                                             headers={"Accept": ACCEPT})
        assert status == 200, (status, body)
        return headers["Docker-Content-Digest"], json.loads(body)

    def ref(self, name: str) -> str:
        repo, tag = REFS[name]
        return f"{self.address}/{repo}:{tag}"

    def digest(self, name: str) -> str:
        return self.pushed[name].digest

    @property
    def names(self) -> list[str]:
        return list(self.pushed)
