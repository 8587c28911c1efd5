#!/usr/bin/env python3
"""Exec round-trip latency through the CRI: ctrd vs containerd 1.6, one run, interleaved.

    sudo .venv/bin/python bench/cri_exec.py [--repeats 30]

For each daemon: a host-network pod (no CNI) with a busybox container running ``sleep``;
then, per sample, ``echo hi``

- through ExecSync (one gRPC call);
- through a streaming exec: the Exec call, the HTTP upgrade on the returned URL, the streams,
  output and exit status, the session closed -- over SPDY/3.1 (v4.channel.k8s.io, the path
  kubelet <- API server uses) and over WebSocket (v4.channel.k8s.io, which containerd 1.6's
  streaming server speaks too).

Images are made offline (tests/images.py): busybox, and for containerd a pause image (the
busybox layer with a sleep loop as its entrypoint) set as ``sandbox_image``; both are imported
with ``ctr images import``. ``--ctrd-sandbox-image`` adds a ctrd with that pause image as its
``sandbox_image`` too (kind ``ctrd-pause``): ctrd's pause mode against its default. Needs root, containerd, ctr, runc, the project's venv (grpc,
websockets). Every daemon, pod and temp dir is removed at the end, on failure too.

Known: on the development machine (cgroup v1) containerd 1.6's RunPodSandbox fails for this
pause image ("runc create failed: ... can't get final child's PID from pipe: EOF"; the pause
spec: mount namespace only, read-only rootfs), so only ``--daemons ctrd`` ran there.
"""

from __future__ import annotations

import argparse
import asyncio
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

import run as benchrun  # noqa: E402  (bench/run.py: daemons and their cleanup)

BUSYBOX = "docker.io/bench/busybox:latest"
PAUSE = "docker.io/bench/pause:latest"


def build_images(out: Path) -> dict[str, Path]:
    """OCI layout tars: busybox, and pause (same layer, a sleeping entrypoint)."""
    import images as ti

    built = ti.build_busybox(out / "layouts")
    pause = ti.Layout("pause", out / "layouts" / "pause")
    ldesc, diff = ti._busybox_layer(pause).close()
    cfg = ti._config(ti.HOST_ARCH, [diff], ["bench pause"])
    cfg["config"]["Entrypoint"] = ["/bin/sh", "-c",
                                   "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"]
    cfg["config"]["Cmd"] = None
    cdesc = pause.put_json(cfg, ti.MT_OCI_CONFIG)
    mdesc = pause.put_json({"schemaVersion": 2, "mediaType": ti.MT_OCI_MANIFEST,
                            "config": cdesc, "layers": [ldesc]}, ti.MT_OCI_MANIFEST)
    pause.finish(mdesc)
    tars = {}
    for name, root in (("busybox", built["busybox"].root), ("pause", pause.root)):
        tar = out / f"{name}.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
        tars[name] = tar
    return tars


class CRIDaemon(benchrun.Daemon):
    """bench/run.py's daemon with a CRI config (no CNI needed: host-network pods)."""

    def argv(self) -> list[str]:
        if self.family == "ctrd":
            cfg = os.path.join(self.dir, "ctrd.toml")
            with open(cfg, "w") as f:
                pause = f'  sandbox_image = "{PAUSE}"\n' if self.kind == "ctrd-pause" else ""
                f.write('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
                        + pause +
                        "  netns_mounts_under_state_dir = true\n"
                        "  disable_apparmor = true\n"
                        '  [plugins."io.containerd.grpc.v1.cri".cni]\n'
                        f'    conf_dir = "{os.path.join(self.dir, "cni")}"\n')
            return super().argv() + ["--config", cfg]
        argv = super().argv()
        cfg = argv[-1]
        with open(cfg) as f:
            text = f.read()
        text = text.replace('[plugins."io.containerd.grpc.v1.cri".cni]',
                            '[plugins."io.containerd.grpc.v1.cri"]\n'
                            f'  sandbox_image = "{PAUSE}"\n'
                            "  disable_apparmor = true\n"
                            # no CAP_SYS_RESOURCE here: the pause container's -998 fails
                            "  restrict_oom_score_adj = true\n"
                            '[plugins."io.containerd.grpc.v1.cri".cni]')
        with open(cfg, "w") as f:
            f.write(text)
        return argv


class Pod:
    def __init__(self, d: CRIDaemon, tools, tars: dict[str, Path],
                 shared_pid: bool = False) -> None:
        import grpc

        from ctrd.api.cri.runtime.v1 import api_pb2 as pb
        from ctrd.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc

        self.pb = pb
        for name, tar in tars.items():
            if name == "pause" and d.kind == "ctrd":
                continue
            r = subprocess.run([tools.ctr, "--address", d.sock, "-n", "k8s.io", "images",
                                "import", "--base-name", f"docker.io/bench/{name}", str(tar)],
                               capture_output=True, text=True, env=tools.ctr_env)
            if r.returncode:
                raise benchrun.BenchError(f"import into {d.kind}: {r.stderr}")
        self.channel = grpc.insecure_channel("unix:" + d.sock)
        self.rt = pb_grpc.RuntimeServiceStub(self.channel)
        for _ in range(100):  # containerd's CRI learns of imported images by events
            try:
                pb_grpc.ImageServiceStub(self.channel).ImageStatus(pb.ImageStatusRequest(
                    image=pb.ImageSpec(image=BUSYBOX))).image.id or (_ for _ in ()).throw(
                    ValueError())
                break
            except (grpc.RpcError, ValueError):
                time.sleep(0.1)
        # the kubelet's namespace options for a host-network pod: PID per container unless
        # --shared-pid (shareProcessNamespace: ctrd without a sandbox image runs its pod init)
        pid = pb.POD if shared_pid else pb.CONTAINER
        self.config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="bench", namespace="default", uid="bench-1"),
            linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pid))))
        self.container_linux = pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pid)))
        self.sid = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=self.config),
                                         timeout=120).pod_sandbox_id
        self.cid = self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=self.sid, sandbox_config=self.config,
            config=pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                                      image=pb.ImageSpec(image=BUSYBOX),
                                      command=["sleep", "3600"],
                                      linux=self.container_linux)),
            timeout=120).container_id
        self.rt.StartContainer(pb.StartContainerRequest(container_id=self.cid), timeout=120)

    def lifecycle(self, n: int) -> tuple[float, float]:
        """(RunPodSandbox ms, CreateContainer+StartContainer ms) of a fresh host-network pod;
        the pod is stopped and removed afterwards (not timed)."""
        pb = self.pb
        config = pb.PodSandboxConfig()
        config.CopyFrom(self.config)
        config.metadata.name, config.metadata.uid = f"life{n}", f"life-{n}"
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
        return (t1 - t0) * 1000, (t2 - t1) * 1000

    def exec_sync(self) -> float:
        t = time.perf_counter()
        r = self.rt.ExecSync(self.pb.ExecSyncRequest(container_id=self.cid,
                                                     cmd=["echo", "hi"], timeout=30))
        dt = time.perf_counter() - t
        assert (r.exit_code, r.stdout) == (0, b"hi\n"), r
        return dt * 1e3

    def stream(self, wire: str) -> float:
        t = time.perf_counter()
        url = self.rt.Exec(self.pb.ExecRequest(container_id=self.cid, cmd=["echo", "hi"],
                                               stdout=True)).url
        out, status = asyncio.run(_spdy(url) if wire == "spdy" else _ws(url))
        dt = time.perf_counter() - t
        assert out == b"hi\n" and b"Success" in status, (out, status)
        return dt * 1e3

    def close(self) -> None:
        pb = self.pb
        try:
            self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=self.sid), timeout=60)
            self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=self.sid),
                                     timeout=60)
        finally:
            self.channel.close()


async def _spdy(url: str) -> tuple[bytes, bytes]:
    from spdy_client import SpdyClient

    c = await SpdyClient.connect(url, ["v4.channel.k8s.io"])
    err = c.open({"streamtype": "error"})
    out = c.open({"streamtype": "stdout"})
    res = await c.read_all(out), await c.read_all(err)
    await c.close()
    return res


async def _ws(url: str) -> tuple[bytes, bytes]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    out, status = b"", b""
    async with connect("ws" + url[4:], subprotocols=["v4.channel.k8s.io"]) as ws:
        try:
            async for msg in ws:
                if msg[0] == 1:
                    out += msg[1:]
                elif msg[0] == 3:
                    status += msg[1:]
                    break
        except ConnectionClosed:
            pass
    return out, status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--lifecycles", type=int, default=15,
                    help="pods started (RunPodSandbox, then Create+StartContainer)")
    ap.add_argument("--daemons", default="ctrd,containerd",
                    help="of ctrd, ctrd-pause (ctrd with sandbox_image), containerd")
    ap.add_argument("--shared-pid", action="store_true",
                    help="pods ask for a pod-level PID namespace (shareProcessNamespace)")
    ap.add_argument("--ctrd-sandbox-image", action="store_true",
                    help="also run ctrd with the pause image as sandbox_image (ctrd-pause)")
    ap.add_argument("--ctr", default="ctr")
    ap.add_argument("--containerd", default="containerd")
    ap.add_argument("--ctrd", default=os.path.join(os.path.dirname(sys.executable), "ctrd"))
    args = ap.parse_args()
    args.ctrd_alt, args.bytecode, args.ctrd_env = None, "cached", []
    work = tempfile.mkdtemp(prefix="bench-cri-exec-", dir="/tmp")
    tools = benchrun.Tools(args, work)
    kinds = args.daemons.split(",")
    if args.ctrd_sandbox_image and "ctrd-pause" not in kinds:
        kinds.append("ctrd-pause")
    pods: dict[str, Pod] = {}
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        tars = build_images(Path(work) / "images")
        for k in kinds:
            d = CRIDaemon(k, work, tools)
            d.start()
            pods[k] = Pod(d, tools, tars, shared_pid=args.shared_pid)
        figures = (("exec_sync", Pod.exec_sync), ("stream_spdy", lambda p: p.stream("spdy")),
                   ("stream_ws", lambda p: p.stream("ws")))
        for i in range(args.lifecycles + 1):  # pod start latency, first round uncounted
            for k in kinds:
                run_pod, start_ctr = pods[k].lifecycle(i)
                if i:
                    samples.setdefault(("run_pod_sandbox", k), []).append(run_pod)
                    samples.setdefault(("create_start", k), []).append(start_ctr)
        for i in range(args.repeats + 1):  # the first round warms up, uncounted
            for name, fn in figures:
                for k in kinds:
                    v = fn(pods[k])
                    if i:
                        samples.setdefault((name, k), []).append(v)
        print(f"exec round trip of `echo hi` ({args.repeats} samples) and host-network pod "
              f"start ({args.lifecycles}): ms, median [min..max]")
        for name in [f for f, _ in figures] + ["run_pod_sandbox", "create_start"]:
            row = [f"{name:12}"]
            for k in kinds:
                s = samples[(name, k)]
                row.append(f"{k}: {statistics.median(s):6.2f} [{min(s):.2f}..{max(s):.2f}]")
            for k in ("ctrd", "ctrd-pause"):
                if k in kinds and "containerd" in kinds:
                    r = statistics.median(samples[(name, k)]) / statistics.median(
                        samples[(name, "containerd")])
                    row.append(f"{k}/containerd {r:.2f}")
            print("  ".join(row))
        return 0
    finally:
        for p in pods.values():
            try:
                p.close()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                print(f"cleanup: {e}", file=sys.stderr)
        tools.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
