#!/usr/bin/env python3
"""Pod lifecycle latency through the CRI: ctrd vs containerd 2.3.4 and containerd 1.6, one
run, interleaved, same machine.

    sudo .venv/bin/python bench/cri_lifecycle.py [--pods 20] [--daemons ...]

Per daemon and pod (``--pods N``, one uncounted warm-up round first), the kubelet's sequence
for a host-network pod with one busybox ``sleep`` container, through the CRI gRPC stubs:

- ``run_pod_sandbox``: RunPodSandbox;
- ``create_start``: CreateContainer + StartContainer;
- ``stop_remove``: StopPodSandbox + RemovePodSandbox (the running container included).

``--network host`` (default) runs host-network pods (no CNI); ``--network bridge`` gives
every pod a network namespace and an address on one bridge network (Debian's bridge +
host-local plugins in /usr/lib/cni, no masquerade, one conflist shared by every daemon, as on
a node): RunPodSandbox then includes the CNI ADD, StopPodSandbox the DEL. The bridge is
deleted at the end.

Daemons (``--daemons``, default all):

- ``ctrd``: its default, no pause container (ctrd pins the pod's namespaces itself);
- ``ctrd-pause``: ctrd with ``sandbox_image`` set: a pause container per pod, as containerd;
- ``containerd2``: containerd 2.3.4 (``../shared/bin/containerd-2.3.4``, its runc shim on
  PATH), ``version = 4`` config from tests/containerd2.py, pause image pinned as its sandbox;
- ``containerd``: Debian's containerd 1.6 (``/usr/bin/containerd``), ``version = 2`` config,
  CRI plugin ``io.containerd.grpc.v1.cri`` with ``sandbox_image`` (bench/cri_exec.py's).

Images are built offline (tests/images.py, bench/cri_exec.py's ``build_images``): busybox and
a pause image (the busybox layer, a sleep loop as entrypoint), imported with ``ctr images
import`` into ``k8s.io``. Both containerds run with ``restrict_oom_score_adj`` (no
CAP_SYS_RESOURCE here: the pause's -998 would fail) and ``disable_apparmor``.

Printed: median (p50) [min..max] ms per figure and daemon, and each ctrd kind's ratio against
the better (lower p50) of the two containerds. Every daemon, pod and temp dir is removed at
the end, on failure and Ctrl-C too (bench/run.py's Tools.stop_all).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
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

import containerd2  # noqa: E402  (tests/containerd2.py: containerd 2.3.4's config)
import cri_exec  # noqa: E402  (bench/cri_exec.py: images, the ctrd / containerd 1.6 configs)
import run as benchrun  # noqa: E402  (bench/run.py: daemons and their cleanup)

BUSYBOX, PAUSE = cri_exec.BUSYBOX, cri_exec.PAUSE
KINDS = ("ctrd", "ctrd-pause", "containerd2", "containerd")
CONTAINERDS = ("containerd2", "containerd")
FIGURES = ("run_pod_sandbox", "create_start", "stop_remove")
CNI_BIN = "/usr/lib/cni"


class LifecycleDaemon(cri_exec.CRIDaemon):
    """cri_exec's daemons plus ``containerd2`` (containerd 2.3.4, its own binaries)."""

    conflist: str = ""  # --network bridge: the CNI conflist every daemon gets

    def __init__(self, kind: str, workdir: str, tools) -> None:
        env = None
        if kind == "containerd2":
            env = {"PATH": f"{containerd2.BIN_DIR}:{os.environ.get('PATH', '')}"}
        super().__init__(kind, workdir, tools, env=env)
        if kind == "containerd2":
            self.sock = os.path.join(self.dir, "c.sock")  # where config_text puts it

    def argv(self) -> list[str]:
        if self.kind != "containerd2":
            argv = super().argv()
            cfg = argv[argv.index("--config") + 1]
            with open(cfg) as f:
                text = f.read()
            # the CNI plugins are Debian's; the conf dir is the one the config names
            m = re.search(r'conf_dir = "([^"]+)"', text)
            with open(cfg, "w") as f:
                f.write(text.replace(m.group(0), m.group(0) + f'\n  bin_dir = "{CNI_BIN}"'))
            self._write_conflist(m.group(1))
            return argv
        cfg = os.path.join(self.dir, "config.toml")
        conf_dir = os.path.join(self.dir, "cni")
        self._write_conflist(conf_dir)
        with open(cfg, "w") as f:
            f.write(containerd2.config_text(Path(self.dir), cni_bin_dirs=[CNI_BIN],
                                            cni_conf_dir=conf_dir, sandbox_image=PAUSE))
        return [str(containerd2.CONTAINERD), "--config", cfg]

    def _write_conflist(self, conf_dir: str) -> None:
        os.makedirs(conf_dir, exist_ok=True)
        if self.conflist:
            with open(os.path.join(conf_dir, "10-bench.conflist"), "w") as f:
                f.write(self.conflist)

    @property
    def ctr(self) -> str:
        return str(containerd2.CTR) if self.kind == "containerd2" else self.tools.ctr


class Lifecycle:
    """A CRI client on one daemon, the images imported; :meth:`once` times one pod."""

    def __init__(self, d: LifecycleDaemon, tars: dict[str, Path], host_net: bool) -> None:
        import grpc

        from ctrd.api.cri.runtime.v1 import api_pb2 as pb
        from ctrd.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc

        self.kind, self.pb = d.kind, pb
        for name, tar in tars.items():
            if name == "pause" and d.kind == "ctrd":
                continue
            r = subprocess.run([d.ctr, "--address", d.sock, "-n", "k8s.io", "images",
                                "import", "--base-name", f"docker.io/bench/{name}", str(tar)],
                               capture_output=True, text=True, env=d.tools.ctr_env)
            if r.returncode:
                raise benchrun.BenchError(f"import into {d.kind}: {r.stderr}")
        self.channel = grpc.insecure_channel("unix:" + d.sock)
        self.rt = pb_grpc.RuntimeServiceStub(self.channel)
        images = pb_grpc.ImageServiceStub(self.channel)
        deadline = time.monotonic() + 20  # containerd's CRI learns of imports by events
        while not images.ImageStatus(pb.ImageStatusRequest(
                image=pb.ImageSpec(image=BUSYBOX)), timeout=30).image.id:
            if time.monotonic() > deadline:
                raise benchrun.BenchError(f"{d.kind}: {BUSYBOX} not seen by its CRI")
            time.sleep(0.1)
        # the kubelet's namespace options (PID per container)
        self.host_net = host_net
        ns = pb.NamespaceOption(network=pb.NODE if host_net else pb.POD, pid=pb.CONTAINER,
                                ipc=pb.POD)
        self.pod_linux = pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns))
        self.container_linux = pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(namespace_options=ns))

    def once(self, n: int) -> dict[str, float]:
        """One pod: RunPodSandbox; Create+StartContainer; StopPodSandbox+RemovePodSandbox."""
        pb = self.pb
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"life{n}", namespace="bench",
                                           uid=f"life-{n}"),
            # host network: no hostname (runc refuses one without a UTS namespace)
            hostname="" if self.host_net else f"life{n}", linux=self.pod_linux)
        t0 = time.perf_counter()
        sid = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                    timeout=120).pod_sandbox_id
        t1 = time.perf_counter()
        cid = self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, sandbox_config=config,
            config=pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                                      image=pb.ImageSpec(image=BUSYBOX),
                                      command=["sleep", "3600"],
                                      linux=self.container_linux)),
            timeout=120).container_id
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
        t2 = time.perf_counter()
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        t3 = time.perf_counter()
        return {"run_pod_sandbox": (t1 - t0) * 1e3, "create_start": (t2 - t1) * 1e3,
                "stop_remove": (t3 - t2) * 1e3}

    def close(self) -> None:
        """Remove any pod left (a failed round), then close the channel."""
        pb = self.pb
        try:
            for s in self.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items:
                self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s.id),
                                       timeout=60)
                self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=s.id),
                                         timeout=60)
        finally:
            self.channel.close()


def report(samples: dict[tuple[str, str], list[float]], kinds: list[str], pods: int,
           network: str = "host") -> str:
    lines = [f"{network}-network pod lifecycle through the CRI, {pods} pods per daemon "
             "(interleaved): ms, p50 [min..max]"]
    for fig in FIGURES:
        row = [f"{fig:16}"]
        p50 = {k: statistics.median(samples[(fig, k)]) for k in kinds}
        for k in kinds:
            s = samples[(fig, k)]
            row.append(f"{k}: {p50[k]:7.2f} [{min(s):.2f}..{max(s):.2f}]")
        lines.append("  ".join(row))
        ref = [k for k in CONTAINERDS if k in kinds]
        if ref:
            best = min(ref, key=lambda k: p50[k])
            lines += [f"{'':16}{k} / {best} (the better containerd): {p50[k] / p50[best]:.2f}"
                      for k in kinds if k.startswith("ctrd")]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=20, help="pods per daemon (timed)")
    ap.add_argument("--daemons", default=",".join(KINDS), help=f"of {', '.join(KINDS)}")
    ap.add_argument("--network", choices=("host", "bridge"), default="host",
                    help="host-network pods, or pods on a CNI bridge network")
    ap.add_argument("--ctr", default="ctr")
    ap.add_argument("--containerd", default="/usr/bin/containerd",
                    help="containerd 1.6 (kind containerd)")
    ap.add_argument("--ctrd", default=os.path.join(os.path.dirname(sys.executable), "ctrd"))
    args = ap.parse_args()
    args.ctrd_alt, args.bytecode, args.ctrd_env = None, "cached", []
    kinds = [k for k in args.daemons.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        ap.error(f"unknown daemons: {', '.join(sorted(unknown))}")
    if "containerd2" in kinds and not containerd2.available():
        ap.error(f"containerd 2.3.4 not found in {containerd2.BIN_DIR}")
    work = tempfile.mkdtemp(prefix="bench-cri-life-", dir="/tmp")
    tools = benchrun.Tools(args, work)
    lives: dict[str, Lifecycle] = {}
    samples: dict[tuple[str, str], list[float]] = {}
    bridge = f"ctblife{os.getpid() % 100000}"
    try:
        if args.network == "bridge":
            LifecycleDaemon.conflist = json.dumps({
                "cniVersion": "1.0.0", "name": bridge, "plugins": [{
                    "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": _free_subnet()}]],
                             "routes": [{"dst": "0.0.0.0/0"}],
                             "dataDir": os.path.join(work, "ipam")}}]})
        tars = cri_exec.build_images(Path(work) / "images")
        for k in kinds:
            d = LifecycleDaemon(k, work, tools)
            d.start()
            lives[k] = Lifecycle(d, tars, host_net=args.network == "host")
        for i in range(args.pods + 1):  # round 0 warms up (pause pulled/unpacked), uncounted
            for k in kinds:
                got = lives[k].once(i)
                if i:
                    for fig, v in got.items():
                        samples.setdefault((fig, k), []).append(v)
        print(report(samples, kinds, args.pods, args.network))
        return 0
    finally:
        for life in lives.values():
            try:
                life.close()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                print(f"cleanup {life.kind}: {e}", file=sys.stderr)
        tools.stop_all()
        if args.network == "bridge":
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _free_subnet() -> str:
    """A 10.x.y.0/24 no route of this host uses."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"],
                            capture_output=True, text=True).stdout
    for _ in range(200):
        net = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        if f"{net}." not in routes:
            return f"{net}.0/24"
    raise benchrun.BenchError("no free 10.x.y.0/24")


if __name__ == "__main__":
    sys.exit(main())
