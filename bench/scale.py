#!/usr/bin/env python3
"""Many objects without the CRI: containers, images and snapshots by the hundred, ctrd vs
containerd 2.3.4 and 1.6, one run, same machine.

    sudo .venv/bin/python bench/scale.py [--steps 250,500,1000] [--daemons ...]

Per daemon, one after the other: the busybox test image imported into ``k8s.io`` (as
bench/density.py does), then for each step N: N container records (each with its spec and
an active snapshot of the image's rootfs, what ``ctr containers create`` makes) and N image
names (``ctr images tag``'s records: one image under N names), created over containerd's
gRPC API; measured at each step:

- ``ctr containers ls``, ``ctr images ls``, ``ctr snapshots ls`` wall (the real ctr 1.6, one
  call each, median of 3): what listing N objects costs, client included;
- the daemon's PSS;
- a GC pass: ``Images.Delete(sync=true)`` of one name (containerd's ``ctr images rm
  --sync``), which returns after the collector's mark-and-sweep over everything, median of 3.

Printed per figure: each daemon's value per step, the slope per 100 objects between the
first and the last step, and ctrd's ratio against the better containerd at the last step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

import containerd2  # noqa: E402
import cri_exec  # noqa: E402
import cri_lifecycle as life  # noqa: E402
import density  # noqa: E402  (Tree: the daemon's PSS)
import grpc  # noqa: E402
import run as benchrun  # noqa: E402

from ctrd.api.containerd.services.containers.v1 import containers_pb2 as cpb  # noqa: E402
from ctrd.api.containerd.services.containers.v1 import containers_pb2_grpc as cgrpc  # noqa: E402
from ctrd.api.containerd.services.images.v1 import images_pb2 as ipb  # noqa: E402
from ctrd.api.containerd.services.images.v1 import images_pb2_grpc as igrpc  # noqa: E402
from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb  # noqa: E402
from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as sgrpc  # noqa: E402

NS = (("containerd-namespace", "k8s.io"),)
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
SPEC = json.dumps({"ociVersion": "1.1.0", "process": {"args": ["sleep", "1"], "cwd": "/"},
                   "root": {"path": "rootfs"}}).encode()


class Scale:
    def __init__(self, kind: str, work: str, tools, tars) -> None:
        self.kind = kind
        self.d = life.LifecycleDaemon(kind, work, tools)
        self.d.start()
        self.client = life.Lifecycle(self.d, tars, host_net=True)  # imports the images
        ch = self.client.channel
        self.containers = cgrpc.ContainersStub(ch)
        self.images = igrpc.ImagesStub(ch)
        self.snapshots = sgrpc.SnapshotsStub(ch)
        self.tree = density.Tree(self.d.proc.pid, self.d.sock)
        img = self.images.Get(ipb.GetImageRequest(name=cri_exec.BUSYBOX), metadata=NS,
                              timeout=30).image
        self.target = img.target
        self.parent = self._committed()
        self.made = 0

    def _committed(self) -> str:
        keys = []
        for resp in self.snapshots.List(spb.ListSnapshotsRequest(snapshotter="overlayfs"),
                                        metadata=NS, timeout=60):
            keys += [i.name for i in resp.info if i.kind == 3]  # COMMITTED
        if len(keys) != 1:
            raise benchrun.BenchError(f"{self.kind}: expected one committed snapshot: {keys}")
        return keys[0]

    def grow(self, n: int) -> None:
        for i in range(self.made, n):
            key = f"scale-{i}"
            self.snapshots.Prepare(spb.PrepareSnapshotRequest(
                snapshotter="overlayfs", key=key, parent=self.parent), metadata=NS, timeout=60)
            c = cpb.Container(id=key, image=cri_exec.BUSYBOX, snapshotter="overlayfs",
                              snapshot_key=key)
            c.runtime.name = "io.containerd.runc.v2"
            c.spec.type_url, c.spec.value = SPEC_URL, SPEC
            self.containers.Create(cpb.CreateContainerRequest(container=c), metadata=NS,
                                   timeout=60)
            im = ipb.Image(name=f"docker.io/bench/scale:{i}")
            im.target.CopyFrom(self.target)
            self.images.Create(ipb.CreateImageRequest(image=im), metadata=NS, timeout=60)
        self.made = n

    def ctr_wall(self, *args: str) -> float:
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = subprocess.run([self.d.ctr, "--address", self.d.sock, "-n", "k8s.io", *args],
                               capture_output=True, env=self.d.tools.ctr_env)
            walls.append((time.perf_counter() - t0) * 1e3)
            if r.returncode:
                raise benchrun.BenchError(f"{self.kind}: ctr {args}: {r.stderr[-300:]}")
        return statistics.median(walls)

    def gc_pass(self) -> float:
        walls = []
        for j in range(3):
            name = f"docker.io/bench/scale-gc:{self.made}-{j}"
            im = ipb.Image(name=name)
            im.target.CopyFrom(self.target)
            self.images.Create(ipb.CreateImageRequest(image=im), metadata=NS, timeout=60)
            t0 = time.perf_counter()
            self.images.Delete(ipb.DeleteImageRequest(name=name, sync=True), metadata=NS,
                               timeout=300)
            walls.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(walls)

    def measure(self, n: int) -> dict[str, float]:
        self.grow(n)
        time.sleep(2)
        out = {"ctr containers ls (ms)": self.ctr_wall("containers", "ls"),
               "ctr images ls (ms)": self.ctr_wall("images", "ls"),
               "ctr snapshots ls (ms)": self.ctr_wall("snapshots", "ls"),
               "PSS of the daemon (MiB)": self._daemon_pss()}
        out["GC pass: images rm --sync (ms)"] = self.gc_pass()
        return out

    def _daemon_pss(self) -> float:
        with open(f"/proc/{self.d.proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        for i in range(self.made):
            for call in (lambda: self.containers.Delete(cpb.DeleteContainerRequest(
                             id=f"scale-{i}"), metadata=NS, timeout=60),
                         lambda: self.snapshots.Remove(spb.RemoveSnapshotRequest(
                             snapshotter="overlayfs", key=f"scale-{i}"), metadata=NS,
                             timeout=60)):
                try:
                    call()
                except grpc.RpcError:
                    pass
        self.client.channel.close()


def report(results: dict[str, dict[int, dict[str, float]]], steps: list[int]) -> str:
    kinds = list(results)
    figures = list(next(iter(results.values()))[steps[0]])
    lines = [f"{'figure':34} {'daemon':12}" + "".join(f"{n:>10}" for n in steps) +
             f"{'per 100':>10}"]
    for fig in figures:
        for k in kinds:
            vals = [results[k][n][fig] for n in steps]
            slope = (vals[-1] - vals[0]) / (steps[-1] - steps[0]) * 100 if len(steps) > 1 \
                else float("nan")
            lines.append(f"{fig:34} {k:12}" + "".join(f"{v:10.1f}" for v in vals) +
                         f"{slope:10.2f}")
        refs = [k for k in kinds if k != "ctrd"]
        if "ctrd" in results and refs:
            best = min(refs, key=lambda k: results[k][steps[-1]][fig])
            ratio = results["ctrd"][steps[-1]][fig] / results[best][steps[-1]][fig]
            lines.append(f"{'':34} ctrd / better at {steps[-1]}: {ratio:.2f}x ({best})")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="250,500,1000")
    ap.add_argument("--daemons", default=",".join(density.KINDS))
    ap.add_argument("--ctr", default="ctr")
    ap.add_argument("--containerd", default="/usr/bin/containerd")
    ap.add_argument("--ctrd", default=os.path.join(os.path.dirname(sys.executable), "ctrd"))
    args = ap.parse_args()
    args.ctrd_alt, args.bytecode, args.ctrd_env = None, "cached", []
    steps = sorted(int(x) for x in args.steps.split(","))
    kinds = [k for k in args.daemons.split(",") if k]
    if "containerd2" in kinds and not containerd2.available():
        ap.error(f"containerd 2.3.4 not found in {containerd2.BIN_DIR}")
    work = tempfile.mkdtemp(prefix="bench-scale-", dir="/tmp")
    tools = benchrun.Tools(args, work)
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        tars = cri_exec.build_images(Path(work) / "images")
        for k in kinds:
            s = Scale(k, work, tools, tars)
            try:
                results[k] = {}
                for n in steps:
                    results[k][n] = s.measure(n)
                    benchrun.log(f"{k} at {n}: {results[k][n]}")
            finally:
                s.close()
        print(report(results, steps))
        return 0
    finally:
        tools.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
