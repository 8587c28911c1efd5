#!/usr/bin/env python3
"""A node at density under the kubelet's polling: ctrd vs containerd 2.3.4 and 1.6, one run,
same machine.

    sudo .venv/bin/python bench/density.py [--pods 110] [--poll 30] [--daemons ...]

Per daemon, one after the other (the pods of one daemon are all removed before the next
starts): N host-network pods (``--pods``, default 110, the kubelet's maxPods), each with one
busybox ``sleep`` container, created through the CRI gRPC stubs (RunPodSandbox,
CreateContainer, StartContainer: the per-pod start time); then

- idle: ``--idle`` s (default 20) with no call at all: CPU of the daemon, its shims and what
  runs in them but the containers' own ``sleep``;
- poll: ``--poll`` s (default 30) of what a kubelet asks: ListPodSandbox + ListContainers
  every second (the PLEG relist), ListContainerStats + ListPodSandboxStats every 10 s (the
  stats provider): the same CPU;
- per RPC: the daemon's CPU for one ListContainerStats and one ListPodSandboxStats over all
  pods (median of 3), and their wall p50;
- PSS of the daemon, its shims and pause processes (``/proc/<pid>/smaps_rollup``);
- remove all: StopPodSandbox + RemovePodSandbox of every pod, 8 at a time (``crictl rmp
  -fa``'s shape), wall time;
- parallel start: ``--parallel`` (default 8) kubelet workers starting the pods again
  (RunPodSandbox + CreateContainer + StartContainer each), pods per second, then removed.

Daemons (``--daemons``): ``ctrd`` (no pause container), ``containerd2`` (2.3.4) and
``containerd`` (1.6.20), as bench/cri_lifecycle.py starts them. CPU is utime + stime from
/proc of the daemon and every process whose command line names its socket (the shims), their
reaped children included (runc, CNI plugins), the pause processes, and ksmd (the kernel's
same-page merging thread: ctrd's shims ask it to merge the pages they copied from their
template); the containers' ``sleep`` processes are left out. After the starts the run waits
until ksmd has stopped merging (at most 300 s; ksmd's CPU meanwhile is a figure of its
own): the idle, poll and steady PSS figures are a node's steady state; "PSS after the
starts" is taken before. Printed: a table per figure with each daemon's value and
ctrd's ratio against the better containerd.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

import containerd2  # noqa: E402
import grpc  # noqa: E402
import cri_exec  # noqa: E402
import cri_lifecycle as life  # noqa: E402  (its daemons and CRI client)
import run as benchrun  # noqa: E402

KINDS = ("ctrd", "containerd2", "containerd")
CONTAINERDS = ("containerd2", "containerd")
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, list[str]] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[1]), fields
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class Tree:
    """The daemon's processes: itself, its shims (their command line names its socket),
    and everything below the shims; ``sleep`` processes (the containers) apart."""

    def __init__(self, daemon_pid: int, sock: str) -> None:
        self.daemon_pid, self.sock = daemon_pid, sock.encode()

    def pids(self) -> tuple[list[int], list[int], list[int]]:
        """(daemon and shims, infra below the shims (pause), container processes)."""
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                s = _stat(int(name))
                if s is not None:
                    stats[int(name)] = s
        top = [self.daemon_pid] + [p for p in stats if p != self.daemon_pid
                                   and self.sock in _cmdline(p)
                                   and b"shim" in _cmdline(p).split(b"\0")[0]]
        below: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            below.setdefault(ppid, []).append(pid)
        infra, work = [], []
        stack = [c for p in top for c in below.get(p, []) if c not in top]
        while stack:
            p = stack.pop()
            (work if b"sleep" in _cmdline(p).split(b"\0")[0] else infra).append(p)
            stack.extend(below.get(p, []))
        return top, infra, work

    def cpu(self) -> float:
        """CPU seconds so far of the daemon, its shims (with their reaped children) and the
        infra processes (without the containers' own)."""
        top, infra, _ = self.pids()
        ticks = 0
        for p in top:
            s = _stat(p)
            if s:
                ticks += sum(int(x) for x in s[1][11:15])
        for p in infra:
            s = _stat(p)
            if s:
                ticks += int(s[1][11]) + int(s[1][12])
        return ticks / TICK

    def pss_mib(self) -> float:
        top, infra, _ = self.pids()
        total = 0
        for p in top + infra:
            try:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                            break
            except OSError:
                pass
        return total / 1024


def _ksmd_pid() -> int | None:
    for name in os.listdir("/proc"):
        if name.isdigit() and _stat(int(name)):
            try:
                with open(f"/proc/{name}/comm") as f:
                    if f.read().strip() == "ksmd":
                        return int(name)
            except OSError:
                pass
    return None


KSMD = _ksmd_pid()


def ksmd_cpu() -> float:
    """CPU seconds of the kernel's same-page merging thread: the work ctrd's shims ask of it
    (they mark the pages they copied) is ctrd's cost, counted with the daemon's."""
    if KSMD is None:
        return 0.0
    s = _stat(KSMD)
    return (int(s[1][11]) + int(s[1][12])) / TICK if s else 0.0


def ksm_sharing() -> int:
    try:
        with open("/sys/kernel/mm/ksm/pages_sharing") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def settle_merging(limit: float = 300.0) -> float:
    """Wait until ksmd stopped merging (pages_sharing steady over 15 s) or ``limit`` s; the
    seconds waited. A node runs its pods for hours: the idle, poll and memory figures are of
    that steady state; what the merging costs is the "ksmd after the starts" figure."""
    t0 = time.monotonic()
    last = ksm_sharing()
    while time.monotonic() - t0 < limit:
        time.sleep(15)
        now = ksm_sharing()
        if abs(now - last) <= max(50, last // 100):
            break
        last = now
    return time.monotonic() - t0


def daemon_cpu(pid: int) -> float:
    s = _stat(pid)
    return sum(int(x) for x in s[1][11:15]) / TICK if s else 0.0


class Node:
    """One daemon with N pods, driven as a kubelet would."""

    def __init__(self, kind: str, work: str, tools, tars) -> None:
        self.kind = kind
        self.d = life.LifecycleDaemon(kind, work, tools)
        self.d.start()
        self.client = life.Lifecycle(self.d, tars, host_net=True)
        self.pb, self.rt = self.client.pb, self.client.rt
        self.tree = Tree(self.d.proc.pid, self.d.sock)
        self.pods: list[str] = []
        self.errors: dict[str, str] = {}  # RPCs the daemon failed, with the last error

    def start_pod(self, n: int) -> tuple[str, float]:
        pb, c = self.pb, self.client
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"d{n}", namespace="bench", uid=f"d-{n}"),
            linux=c.pod_linux)
        t0 = time.perf_counter()
        sid = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                    timeout=300).pod_sandbox_id
        cid = self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, sandbox_config=config,
            config=pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                                      image=pb.ImageSpec(image=cri_exec.BUSYBOX),
                                      command=["sleep", "36000"], linux=c.container_linux)),
            timeout=300).container_id
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=300)
        return sid, (time.perf_counter() - t0) * 1e3

    def remove_all(self, workers: int = 8) -> float:
        pb = self.pb
        ids = [s.id for s in self.rt.ListPodSandbox(pb.ListPodSandboxRequest(),
                                                    timeout=120).items]

        def rm(sid: str) -> None:
            self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=300)
            self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid),
                                     timeout=300)

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            list(ex.map(rm, ids))
        self.pods = []
        return time.perf_counter() - t0

    def poll(self, seconds: float) -> None:
        """The kubelet's asking for ``seconds``: relist every 1 s, stats every 10 s."""
        pb = self.pb
        t0 = time.monotonic()
        tick = 0
        while time.monotonic() - t0 < seconds:
            self.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60)
            self.rt.ListContainers(pb.ListContainersRequest(), timeout=60)
            if tick % 10 == 0:
                for call, req in ((self.rt.ListContainerStats, pb.ListContainerStatsRequest()),
                                  (self.rt.ListPodSandboxStats,
                                   pb.ListPodSandboxStatsRequest())):
                    try:
                        call(req, timeout=120)
                    except grpc.RpcError as e:  # counted, the poll goes on (as the kubelet)
                        self.errors[type(req).__name__] = f"{e.code().name}: {e.details()}"
            tick += 1
            time.sleep(max(0.0, t0 + tick - time.monotonic()))

    def rpc_cost(self, name: str) -> tuple[float, float]:
        """(daemon CPU ms, wall ms) of one call over every pod, median of 3."""
        pb = self.pb
        call = {"ListContainerStats": lambda: self.rt.ListContainerStats(
                    pb.ListContainerStatsRequest(), timeout=120),
                "ListPodSandboxStats": lambda: self.rt.ListPodSandboxStats(
                    pb.ListPodSandboxStatsRequest(), timeout=120)}[name]
        cpu, wall = [], []
        for _ in range(3):
            c0, t0 = daemon_cpu(self.d.proc.pid), time.perf_counter()
            try:
                call()
            except grpc.RpcError as e:
                self.errors[name] = f"{e.code().name}: {e.details()}"
                return float("nan"), float("nan")
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((daemon_cpu(self.d.proc.pid) - c0) * 1e3)
            time.sleep(1.1)
        return statistics.median(cpu), statistics.median(wall)

    def close(self) -> None:
        try:
            self.remove_all()
        except Exception as e:  # noqa: BLE001 - keep cleaning
            print(f"cleanup {self.kind}: {e}", file=sys.stderr)
        self.client.channel.close()


def measure(node: Node, args) -> dict[str, float]:
    out: dict[str, float] = {}
    starts = []
    for n in range(args.pods):
        sid, ms = node.start_pod(n)
        node.pods.append(sid)
        starts.append(ms)
        if (n + 1) % 20 == 0:
            benchrun.log(f"{node.kind}: {n + 1} pods")
    out["pod start p50 (ms)"] = statistics.median(starts)
    time.sleep(5)  # let the start settle
    out["PSS after the starts (MiB)"] = node.tree.pss_mib()
    k0 = ksmd_cpu()
    waited = settle_merging()
    out["ksmd CPU until merged (s)"] = ksmd_cpu() - k0
    benchrun.log(f"{node.kind}: merging settled after {waited:.0f} s")
    c0, k0 = node.tree.cpu(), ksmd_cpu()
    time.sleep(args.idle)
    out[f"CPU with no calls, {args.idle:.0f} s (s)"] = node.tree.cpu() - c0 + ksmd_cpu() - k0
    c0, k0 = node.tree.cpu(), ksmd_cpu()
    node.poll(args.poll)
    ksmd = ksmd_cpu() - k0
    out[f"CPU over the {args.poll:.0f} s poll (s)"] = node.tree.cpu() - c0 + ksmd
    # ksmd is one thread for the whole host: another daemon's shims starting meanwhile (its
    # pacer sets the fast pace) show here too, so the share is printed apart
    out["  of which ksmd (s)"] = ksmd
    for rpc in ("ListContainerStats", "ListPodSandboxStats"):
        cpu, wall = node.rpc_cost(rpc)
        out[f"daemon CPU per {rpc} (ms)"] = cpu
        out[f"{rpc} wall (ms)"] = wall
    out["PSS daemon + shims + pause, steady (MiB)"] = node.tree.pss_mib()
    out["remove all (s)"] = node.remove_all()
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as ex:
        list(ex.map(lambda n: node.start_pod(args.pods + n), range(args.pods)))
    out[f"{args.parallel}-way parallel start (pods/s)"] = args.pods / (time.perf_counter() - t0)
    node.remove_all()
    for rpc, err in node.errors.items():
        benchrun.log(f"{node.kind}: {rpc} failed: {err[:200]}")
    return out


HIGHER_IS_BETTER = ("pods/s",)


def report(results: dict[str, dict[str, float]], pods: int) -> str:
    kinds = list(results)
    figures = list(next(iter(results.values())))
    lines = [f"{pods} host-network pods, one busybox sleep container each",
             f"{'figure':44}" + "".join(f"{k:>14}" for k in kinds) + "   ctrd / better"]
    for fig in figures:
        row = f"{fig:44}" + "".join(f"{results[k][fig]:14.2f}" for k in kinds)
        ref = [k for k in CONTAINERDS if k in results and results[k][fig] == results[k][fig]]
        if "ctrd" in results and ref:  # (NaN: an RPC the daemon failed: not compared)
            higher = any(h in fig for h in HIGHER_IS_BETTER)
            best = (max if higher else min)(ref, key=lambda k: results[k][fig])
            b = results[best][fig]
            ratio = (b / results["ctrd"][fig] if higher else results["ctrd"][fig] / b) \
                if b and results["ctrd"][fig] and b == b else float("nan")
            row += f"   {ratio:5.2f}x ({best})"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=110)
    ap.add_argument("--poll", type=float, default=30.0)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--daemons", default=",".join(KINDS))
    ap.add_argument("--ctr", default="ctr")
    ap.add_argument("--containerd", default="/usr/bin/containerd")
    ap.add_argument("--ctrd", default=os.path.join(os.path.dirname(sys.executable), "ctrd"))
    args = ap.parse_args()
    args.ctrd_alt, args.bytecode, args.ctrd_env = None, "cached", []
    kinds = [k for k in args.daemons.split(",") if k]
    if "containerd2" in kinds and not containerd2.available():
        ap.error(f"containerd 2.3.4 not found in {containerd2.BIN_DIR}")
    work = tempfile.mkdtemp(prefix="bench-density-", dir="/tmp")
    tools = benchrun.Tools(args, work)
    results: dict[str, dict[str, float]] = {}
    try:
        tars = cri_exec.build_images(Path(work) / "images")
        for k in kinds:
            node = Node(k, work, tools, tars)
            try:
                node.start_pod(10_000)  # warm-up (the pause image unpacked): removed below
                node.remove_all()
                results[k] = measure(node, args)
            finally:
                node.close()
            benchrun.log(f"{k}: {results.get(k)}")
        print(report(results, args.pods))
        return 0
    finally:
        tools.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
