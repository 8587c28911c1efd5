"""ctrd's daemon-side pull (ctrctl pull) against a hostile registry: a fake HTTP registry that
serves a good manifest and config, then misbehaves on the layer blob. Every case fails with a
clear error, creates no image, leaves no lease, and after a GC no content."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import socketserver
import subprocess
import tarfile
import threading
import time

import pytest

from conftest import CTR, ctr
from support.cmd import ctl
from support.hostile import RegistryHandler

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def _image():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = b"x" * 300_000
        ti = tarfile.TarInfo("file")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    layer = gzip.compress(raw, mtime=0, compresslevel=1)
    from ctrd.images.manifest import host_platform

    config = json.dumps({"architecture": host_platform().architecture, "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(raw)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer), "size": len(layer)}]}).encode()
    return manifest, config, layer


MANIFEST, CONFIG, LAYER = _image()


class FakeRegistry(RegistryHandler):
    mode = "ok"

    def do_GET(self) -> None:
        mode = type(self).mode
        if mode == "401":
            return self._send(401, b"{}", "application/json", {
                "WWW-Authenticate": 'Basic realm="fake"'})
        if self.path == "/v2/":
            return self._send(200, b"{}", "application/json")
        if "/manifests/" in self.path:
            body = MANIFEST
            if mode == "huge-manifest":
                return self._send(200, b"{" + b" " * (5 << 20) + b"}",
                                  "application/vnd.oci.image.manifest.v1+json")
            return self._send(200, body, "application/vnd.oci.image.manifest.v1+json",
                              {"Docker-Content-Digest": sha(body)})
        if self.path.endswith(sha(CONFIG)):
            return self._send(200, CONFIG)
        if self.path.endswith(sha(LAYER)):
            if mode == "stall":
                self._send(200, LAYER[:1000], length=len(LAYER))
                self.wfile.flush()
                time.sleep(8)
                return
            if mode == "short":
                self._send(200, LAYER[:1000], length=len(LAYER))
                self.close_connection = True
                return
            if mode == "wrong-digest":
                bad = bytes(len(LAYER))
                return self._send(200, bad)
            return self._send(200, LAYER)
        self._send(404, b"{}", "application/json")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture
def fake_registry():
    srv = _Server(("127.0.0.1", 0), FakeRegistry)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


CONFIG_TOML = ('version = 2\n[plugins."io.containerd.transfer.v1.local"]\n'
               'progress_timeout = 1.5\n')


def ctrctl(address: str, *args: str) -> subprocess.CompletedProcess:
    return ctl(address, *args, timeout=120)


@pytest.mark.parametrize("mode, message", [
    ("stall", "stalled"),
    ("short", ""),
    ("wrong-digest", "digest"),
    ("401", "unauthorized"),
    ("huge-manifest", "larger than"),
])
def test_hostile_registry_leaves_nothing(start_ctrd, fake_registry, mode, message):
    FakeRegistry.mode = mode
    d = start_ctrd(config_text=CONFIG_TOML)
    ref = f"127.0.0.1:{fake_registry.server_address[1]}/test/img:latest"
    r = ctrctl(d.address, "pull", "--plain-http", ref)
    assert r.returncode == 1, r.stdout
    error = r.stderr.strip().splitlines()[-1]  # after any progress lines
    assert error.startswith("ctrctl: ") and message in error.lower(), r.stderr
    assert ctr(d.address, "images", "ls", "-q").stdout.strip() == ""
    assert ctr(d.address, "leases", "ls", "-q").stdout.strip() == ""
    assert ctrctl(d.address, "gc").returncode == 0
    assert ctr(d.address, "content", "ls", "-q").stdout.strip() == ""
    assert ctr(d.address, "snapshots", "ls").stdout.splitlines()[1:] == []
    # The daemon still pulls a good image afterwards.
    FakeRegistry.mode = "ok"
    r = ctrctl(d.address, "pull", "--plain-http", ref)
    assert r.returncode == 0, r.stderr
    assert ctr(d.address, "images", "ls", "-q").stdout.split() == [ref]
