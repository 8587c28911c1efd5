#!/usr/bin/env python3
"""``ctr images pull`` of bench/fat through containerd 2.x's Transfer service: ctrd vs
containerd 2.3.4 (both driven by ctr 2.3.4), and containerd 1.6 with its own ctr 1.6 (a
client-side pull) as a baseline. One run, interleaved, same machine.

    sudo .venv/bin/python bench/transfer_pull.py [--repeats 1] [--ref REF]

The image is the anchor's ``bench/fat:latest`` (5 gzip layers, 178 MB; built and served by
``../shared/bench-anchor/make-images.sh`` on ``--registry``, 127.0.0.1:5077 by default; the
registry is started if nothing answers there and stopped at the end if this script started
it). Every sample: a fresh daemon (new root, state, socket), ``ctr images pull --plain-http
REF`` timed from exec to exit (fetch + unpack into overlayfs), the daemon stopped, its dir
removed (each pull checked: 5 committed snapshots). Printed: median [min..max] seconds per
daemon, the bytes the daemon wrote to storage and the CPU it used (its /proc io and stat:
what the pull costs whatever this VM's disk throttling does to the wall time), and ctrd's
ratio against the better (lower median) of the containerds. Stdlib only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import containerd2  # noqa: E402  (tests/containerd2.py: containerd 2.3.4 on temp paths)

ANCHOR = Path("/work/shared/bench-anchor/make-images.sh")
CTR16 = shutil.which("ctr") or "/usr/bin/ctr"
CONTAINERD16 = shutil.which("containerd") or "/usr/bin/containerd"


def log(msg: str) -> None:
    print(f"[transfer_pull] {msg}", file=sys.stderr, flush=True)


def registry_up(addr: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{addr}/v2/", timeout=2):
            return True
    except OSError:
        return False


def unmount_under(path: str) -> None:
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(path)]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)


class Daemon:
    def __init__(self, kind: str, base: Path) -> None:
        self.kind, self.base = kind, base
        self.proc: subprocess.Popen | None = None
        self.c2: containerd2.Containerd2 | None = None
        self.sock = str(base / "d.sock")

    @property
    def ctr(self) -> str:
        return CTR16 if self.kind == "containerd" else str(containerd2.CTR)

    def start(self) -> None:
        self.base.mkdir(parents=True)
        if self.kind == "containerd2":
            (self.base / "cni").mkdir()
            self.c2 = containerd2.Containerd2.start(self.base / "c", cni_bin_dirs=[
                str(self.base / "cni")], cni_conf_dir=str(self.base / "cni"), debug=False)
            self.sock = self.c2.address
            return
        if self.kind == "ctrd":
            argv = [sys.executable, "-m", "ctrd.cli.daemon", "--root", str(self.base / "root"),
                    "--state", str(self.base / "state"), "--address", self.sock]
        else:
            cfg = self.base / "config.toml"
            cfg.write_text(f'version = 2\nroot = "{self.base}/root"\n'
                           f'state = "{self.base}/state"\n[grpc]\naddress = "{self.sock}"\n'
                           f'[ttrpc]\naddress = "{self.sock}.ttrpc"\n'
                           'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
            argv = [CONTAINERD16, "--config", str(cfg)]
        with open(self.base / "log", "w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=str(HERE.parent))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {(self.base / 'log').read_text()}")
            if os.path.exists(self.sock) and subprocess.run(
                    [self.ctr, "--address", self.sock, "version"],
                    capture_output=True).returncode == 0:
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.kind} did not come up")

    @property
    def pid(self) -> int:
        return self.c2.proc.pid if self.c2 is not None else self.proc.pid

    def usage(self) -> tuple[float, float]:
        """(MB the daemon wrote to storage, its CPU seconds with its reaped children) so
        far: what a pull costs independent of how fast this machine's disk is today."""
        with open(f"/proc/{self.pid}/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        return int(io["write_bytes"]) / 1e6, ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.c2 is not None:
            self.c2.stop()
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        unmount_under(str(self.base))
        shutil.rmtree(self.base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--registry", default="127.0.0.1:5077")
    ap.add_argument("--ref", default="")
    ap.add_argument("--daemons", default="ctrd,containerd2,containerd")
    args = ap.parse_args()
    ref = args.ref or f"{args.registry}/bench/fat:latest"
    started_registry = False
    env = dict(os.environ, BENCH_REGISTRY=args.registry)
    if not registry_up(args.registry):
        subprocess.run(["bash", str(ANCHOR), "up"], check=True, env=env)
        started_registry = True
    work = Path(tempfile.mkdtemp(prefix="ctrd-xbench-", dir="/tmp"))
    kinds = args.daemons.split(",")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cost: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    try:
        for r in range(args.repeats):
            for kind in kinds:
                d = Daemon(kind, work / f"{kind}-{r}")
                try:
                    d.start()
                    time.sleep(0.5)
                    before = d.usage()
                    t = time.monotonic()
                    p = subprocess.run([d.ctr, "--address", d.sock, "images", "pull",
                                        "--plain-http", ref], capture_output=True, text=True,
                                       timeout=900)
                    took = time.monotonic() - t
                    if p.returncode != 0:
                        raise RuntimeError(f"pull into {kind} failed: {p.stderr[-800:]}")
                    snaps = subprocess.run([d.ctr, "--address", d.sock, "snapshots", "ls"],
                                           capture_output=True, text=True).stdout
                    if snaps.count("Committed") < 5:  # unpacked: one snapshot per layer
                        raise RuntimeError(f"{kind}: not unpacked:\n{snaps}")
                    after = d.usage()
                    cost[kind].append((after[0] - before[0], after[1] - before[1]))
                finally:
                    d.stop()
                times[kind].append(took)
                log(f"round {r + 1}: {kind} {took:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if started_registry:
            subprocess.run(["bash", str(ANCHOR), "down"], check=False, env=env)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"ctr images pull --plain-http {ref} (fetch + unpack), {args.repeats} sample(s)")
    for k, v in times.items():
        mb = statistics.median(c[0] for c in cost[k])
        cpu = statistics.median(c[1] for c in cost[k])
        print(f"  {k:12s} {med[k]:6.2f} s  [{min(v):.2f}..{max(v):.2f}]   daemon wrote "
              f"{mb:6.0f} MB, CPU {cpu:5.2f} s")
    others = [k for k in med if k != "ctrd"]
    if "ctrd" in med and others:
        best = min(others, key=med.get)
        print(f"  ctrd / {best} (the better containerd): {med['ctrd'] / med[best]:.2f}x")
        if "containerd2" in med:
            print(f"  ctrd / containerd2: {med['ctrd'] / med['containerd2']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
