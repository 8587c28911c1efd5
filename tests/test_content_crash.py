"""kill -9 of ctrd in the middle of a 1 GiB ingest driven by the real ctr, restart, resume."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import pytest

from conftest import CTR, ctr

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]

SIZE = 1 << 30


def make_blob(path) -> str:
    h = hashlib.sha256()
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(SIZE >> 20):
            block = chunk[:-8] + i.to_bytes(8, "big")  # distinct blocks, cheap to make
            h.update(block)
            f.write(block)
    return "sha256:" + h.hexdigest()


def blobs_dir(root):
    return root / "io.containerd.content.v1.content" / "blobs" / "sha256"


def active_offset(address: str, ref: str) -> int:
    r = ctr(address, "content", "active")
    for line in r.stdout.splitlines()[1:]:
        if line.split()[0] == ref:
            size = line.split()[1]  # human size, e.g. 316MB
            units = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "B": 1}
            for u, m in units.items():
                if size.endswith(u):
                    return int(float(size[: -len(u)]) * m)
    return -1


def test_kill_9_mid_ingest_then_resume(start_ctrd, tmp_root):
    blob = tmp_root / "blob"
    digest = make_blob(blob)
    d = start_ctrd()
    with open(blob, "rb") as f:
        client = subprocess.Popen([CTR, "--address", d.address, "content", "ingest",
                                   "--expected-digest", digest, "--expected-size", str(SIZE),
                                   "big"], stdin=f, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while active_offset(d.address, "big") < 200_000_000:
            assert time.monotonic() < deadline, "ingest made no progress"
            assert client.poll() is None, client.stderr.read()
            time.sleep(0.05)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    finally:
        client.kill()
        client.wait()
    blobs = blobs_dir(d.root)
    assert not blobs.exists() or list(blobs.iterdir()) == []  # nothing half-written there

    d2 = start_ctrd(root=d.root)
    offset = active_offset(d2.address, "big")
    assert 200_000_000 <= offset < SIZE  # the ingest survived the crash
    with open(blob, "rb") as f:  # ctr seeks its (file) stdin to the daemon's offset
        r = subprocess.run([CTR, "--address", d2.address, "content", "ingest",
                            "--expected-digest", digest, "--expected-size", str(SIZE), "big"],
                           stdin=f, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr
    path = blobs_dir(d2.root) / digest.split(":")[1]
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == digest.split(":")[1]
    assert ctr(d2.address, "content", "active").stdout.splitlines()[1:] == []
