#!/usr/bin/env python3
"""Layer apply throughput: ctrd vs containerd 1.6, the same client driving both.

Takes the layers of bench/fat (5 gzip layers, ~216 MB of tar, built offline by
../shared/bench-anchor/make-images.sh and served by its local registry), ingests them into
each daemon's content store, then times what ``ctr pull``'s unpack does per layer:
Snapshots.Prepare, Diff.Apply, Snapshots.Commit — on overlayfs, interleaving the daemons.

    sudo .venv/bin/python bench/apply.py [--repeats 3] [--image bench/fat:latest]

Needs the venv (ctrd's generated gRPC stubs). Prints seconds and MB/s of tar applied, and
the ratio. Everything it starts is stopped and its temp dirs removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc

from ctrd.api.containerd.services.content.v1 import content_pb2 as cpb
from ctrd.api.containerd.services.content.v1 import content_pb2_grpc as cpb_grpc
from ctrd.api.containerd.services.diff.v1 import diff_pb2 as dpb
from ctrd.api.containerd.services.diff.v1 import diff_pb2_grpc as dpb_grpc
from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb
from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as spb_grpc
from ctrd.api.containerd.types import descriptor_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_IMAGES = os.path.join(HERE, "..", "..", "shared", "bench-anchor", "make-images.sh")
NS = (("containerd-namespace", "bench"),)
ACCEPT = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])


def fetch_layers(registry: str, image: str, dest: str) -> list[tuple[str, str, str, int]]:
    """(media type, digest, path, size) of each layer of ``image`` from the registry."""
    repo, _, tag = image.partition(":")
    req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag or 'latest'}",
                                 headers={"Accept": ACCEPT})
    manifest = json.load(urllib.request.urlopen(req, timeout=60))
    out = []
    for layer in manifest["layers"]:
        path = os.path.join(dest, layer["digest"].replace(":", "_"))
        with urllib.request.urlopen(f"http://{registry}/v2/{repo}/blobs/{layer['digest']}",
                                    timeout=300) as r, open(path, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        out.append((layer["mediaType"], layer["digest"], path, layer["size"]))
    return out


class Daemon:
    def __init__(self, kind: str, base: str) -> None:
        self.kind, self.base = kind, base
        self.sock = os.path.join(base, "d.sock")
        os.makedirs(base)
        if kind == "containerd":
            cfg = os.path.join(base, "config.toml")
            with open(cfg, "w") as f:
                f.write(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                        f'[grpc]\naddress = "{self.sock}"\n'
                        f'[ttrpc]\naddress = "{self.sock}.ttrpc"\n'
                        f'[plugins."io.containerd.grpc.v1.cri".cni]\n'
                        f'conf_dir = "{base}/cni"\n')
            cmd = ["containerd", "--config", cfg]
        else:
            cmd = [os.path.join(os.path.dirname(sys.executable), "ctrd"), "--root",
                   f"{base}/root", "--state", f"{base}/state", "--address", self.sock]
        self.log = open(os.path.join(base, "log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{kind} did not start; see {base}/log")
            time.sleep(0.02)
        self.ch = grpc.insecure_channel("unix:" + self.sock,
                                        options=[("grpc.max_send_message_length", 64 << 20)])
        grpc.channel_ready_future(self.ch).result(timeout=30)

    def stop(self) -> None:
        self.ch.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        subprocess.run(["umount", "-R", "-l", self.base], capture_output=True)

    def ingest(self, layers) -> None:
        content = cpb_grpc.ContentStub(self.ch)
        for _, digest, path, size in layers:
            def reqs():
                off = 0
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        yield cpb.WriteContentRequest(action=cpb.WRITE, ref=digest, offset=off,
                                                      data=chunk, total=size, expected=digest)
                        off += len(chunk)
                yield cpb.WriteContentRequest(action=cpb.COMMIT, ref=digest, offset=off,
                                              total=size, expected=digest,
                                              labels={"containerd.io/gc.root": "bench"})
            list(content.Write(reqs(), metadata=NS))

    def unpack(self, layers, run: int) -> tuple[float, int]:
        snaps, diff = spb_grpc.SnapshotsStub(self.ch), dpb_grpc.DiffStub(self.ch)
        parent, total = "", 0
        t0 = time.monotonic()
        for i, (media_type, digest, _, size) in enumerate(layers):
            key = f"extract-{run}-{i}"
            mounts = snaps.Prepare(spb.PrepareSnapshotRequest(
                snapshotter="overlayfs", key=key, parent=parent), metadata=NS).mounts
            applied = diff.Apply(dpb.ApplyRequest(
                diff=descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size),
                mounts=mounts), metadata=NS, timeout=600).applied
            total += applied.size
            name = f"layer-{run}-{i}"
            snaps.Commit(spb.CommitSnapshotRequest(snapshotter="overlayfs", name=name, key=key,
                                                   labels={"containerd.io/gc.root": "b"}),
                         metadata=NS)
            parent = name
        return time.monotonic() - t0, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image", default="bench/fat:latest")
    ap.add_argument("--registry", default=os.environ.get("BENCH_REGISTRY", "127.0.0.1:5000"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    subprocess.run([MAKE_IMAGES, "up"], check=True, stdout=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="ctrd-bench-apply.")
    daemons: list[Daemon] = []
    try:
        layers = fetch_layers(args.registry, args.image, work)
        print(f"{args.image}: {len(layers)} layers, "
              f"{sum(x[3] for x in layers) / 1e6:.1f} MB compressed", flush=True)
        for kind in ("ctrd", "containerd"):
            daemons.append(Daemon(kind, os.path.join(work, kind)))
            daemons[-1].ingest(layers)
        results: dict[str, list[float]] = {d.kind: [] for d in daemons}
        tar_bytes = 0
        for run in range(args.repeats):
            for d in daemons:
                took, tar_bytes = d.unpack(layers, run)
                results[d.kind].append(took)
                print(f"run {run + 1}: {d.kind:10s} {took:6.2f} s  "
                      f"{tar_bytes / took / 1e6:6.1f} MB/s of tar", flush=True)
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"\nmedian over {args.repeats}: " + ", ".join(
            f"{k} {v:.2f} s ({tar_bytes / v / 1e6:.0f} MB/s)" for k, v in med.items())
            + f"; ctrd/containerd time ratio {med['ctrd'] / med['containerd']:.2f}")
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
