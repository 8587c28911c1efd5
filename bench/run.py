#!/usr/bin/env python3
"""ctrd vs containerd 1.6, side by side on one machine, in one run.

    sudo /work/venv/bin/python bench/run.py                       # every scenario
    sudo /work/venv/bin/python bench/run.py --only start,idle-rss --repeats 10 --json out.json
    sudo /work/venv/bin/python bench/run.py --daemons ctrd,containerd,containerd-nocri
    sudo /work/venv/bin/python bench/run.py --only start --daemons ctrd,ctrd-alt,containerd \
        --ctrd-alt /path/to/variant-script     # an idea vs the baseline, interleaved

Daemons (``--daemons``): ctrd (the console script, with its bytecode cached in a prefix dir of
the work dir: ``--bytecode``), containerd (as shipped, CRI plugin included; only root, state,
sockets, opt dir and CRI's CNI conf dir moved into the temp dir), containerd-nocri (the anchor's
config: CRI disabled), ctrd-alt (any start script with a python shebang, e.g. a variant).

Scenarios (``--only``, comma list; default all):

  start        exec of the daemon until its gRPC socket exists and until a first
               ``ctr --address SOCK version`` succeeds (same poll loop for every daemon, as
               bench-anchor/containerd-anchor.sh), fresh root/state/socket per sample; also the
               time until the daemon's "successfully booted" log line reached us, and the time
               from SIGTERM to exit.
  idle-rss     fresh daemon, answers ``ctr version``, settles 2 s: VmRSS (/proc/PID/status),
               Pss and USS (/proc/PID/smaps_rollup), threads; plus where ctrd's RSS lives
               (per mapping, from /proc/PID/smaps).
  ctr-version  ``ctr version`` round trip against an already running daemon.
  profile      ctrd only: where its start-up goes (phases, import time per phase, top imports
               by ``python -X importtime``) and the cost of bare interpreter + big imports.

Samples of the daemons are interleaved (A B A B ...), one uncounted warm-up round first.
Figures are median [min..max]; ratios are ctrd / containerd of the medians (and of the
minimums, the least noise-sensitive figure on a busy machine).

Python 3 stdlib only. Needs root (containerd). Every daemon started here is stopped (SIGTERM,
wait, SIGKILL after 10 s), mounts under the work dir are unmounted and the work dir removed,
on failure and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SCENARIOS = ("start", "idle-rss", "ctr-version", "ingest", "pull", "tasks", "profile")
KNOWN_DAEMONS = ("ctrd", "containerd", "containerd-nocri", "ctrd-alt")
TARGETS = {  # figure -> max ratio ctrd / containerd the team reports against
    "exec_to_ctr_version_ok": 2.0,
    "idle_rss": 1.3,
}
POLL = 0.002  # seconds between polls (containerd-anchor.sh: nap 0.002)
START_TIMEOUT = 60.0


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    """SIGTERM/SIGHUP: unwind through every finally, like KeyboardInterrupt."""


def _on_signal(signum, frame):
    raise Interrupted(f"signal {signum}")


# --------------------------------------------------------------------------------- /proc
def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.split()
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "VmSize") and v:
                out[k] = int(v[0])
            elif k == "Threads":
                out[k] = int(v[0])
    return out


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1])
    return out


def smaps_by_mapping(pid: int) -> list[tuple[str, int, int]]:
    """(mapping name, Rss KiB, Pss KiB), summed per name, biggest Rss first."""
    sums: dict[str, list[int]] = {}
    name = "?"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if not first.endswith(":"):  # header line: addr perms offset dev inode [path]
                parts = line.split(None, 5)
                name = parts[5].strip() if len(parts) > 5 else "[anon]"
                if name.startswith("/"):
                    name = os.path.basename(name)
                continue
            if first in ("Rss:", "Pss:"):
                s = sums.setdefault(name, [0, 0])
                s[0 if first == "Rss:" else 1] += int(line.split()[1])
    return sorted(((n, r, p) for n, (r, p) in sums.items()), key=lambda x: -x[1])


def mounts_under(path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(prefix) or mp == path:
                out.append(mp)
    return sorted(out, reverse=True)


def unmount_under(path: str) -> None:
    for mp in mounts_under(path):
        log(f"WARNING: unmounting leftover mount {mp}")
        if subprocess.run(["umount", mp], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)


KSM = "/sys/kernel/mm/ksm"


def ksm_read(name: str) -> int | None:
    try:
        with open(os.path.join(KSM, name)) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def ksm_state() -> str:
    run = ksm_read("run")
    if run is None:
        return "not available"
    return (f"run={run} pages_to_scan={ksm_read('pages_to_scan')} "
            f"sleep_millisecs={ksm_read('sleep_millisecs')}")


def ksm_settle(limit: float = 180.0) -> float:
    """With ksmd running, wait until its merging has settled: at least three full scans (a
    page is merged once it was seen unchanged), and then until a full scan adds less than 1%
    to the pages shared. Returns the seconds waited (0 when ksmd is off)."""
    if ksm_read("run") != 1:
        return 0.0
    t0 = now()
    scans, sharing = ksm_read("full_scans") or 0, ksm_read("pages_sharing") or 0
    seen = 0
    while now() - t0 < limit:
        time.sleep(0.2)
        s = ksm_read("full_scans") or 0
        if s == scans:
            continue
        scans, seen, before, sharing = s, seen + 1, sharing, ksm_read("pages_sharing") or 0
        if seen >= 3 and sharing - before <= max(before // 100, 16):
            break
    return now() - t0


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --------------------------------------------------------------------------------- daemons
class Daemon:
    """One daemon process with its own dir (root, state, socket); stderr read by a thread that
    stamps the arrival of the 'successfully booted' line."""

    BOOT_RE = {
        "ctrd": re.compile(r'msg="?ctrd successfully booted'),
        "containerd": re.compile(r"containerd successfully booted in ([0-9.]+)s"),
    }

    def __init__(self, kind: str, workdir: str, tools: "Tools", wrap: list[str] | None = None,
                 env: dict | None = None):
        self.kind = kind
        self.tools = tools
        self.dir = tempfile.mkdtemp(prefix=f"{kind}.", dir=workdir)
        self.sock = os.path.join(self.dir, "d.sock")
        self.root = os.path.join(self.dir, "root")
        self.state = os.path.join(self.dir, "state")
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.boot_at: float | None = None
        self.boot_self: float | None = None  # containerd's own "booted in" seconds
        self.t0 = 0.0
        self.wrap = wrap
        self.env = env
        self._reader: threading.Thread | None = None

    @property
    def family(self) -> str:
        return "ctrd" if self.kind.startswith("ctrd") else "containerd"

    def argv(self) -> list[str]:
        if self.family == "ctrd":
            script = self.tools.ctrd_alt if self.kind == "ctrd-alt" else self.tools.ctrd
            base = self.tools.shebang(script) + [script]
            if self.wrap:
                base = [self.tools.ctrd_python] + self.wrap
            return base + ["--root", self.root, "--state", self.state, "-a", self.sock]
        cfg = os.path.join(self.dir, "config.toml")
        lines = [
            "version = 2",
            f'root = "{self.root}"',
            f'state = "{self.state}"',
        ]
        if self.kind == "containerd-nocri":
            lines.append('disabled_plugins = ["io.containerd.grpc.v1.cri"]')
        else:
            # CRI's CNI config watcher creates its conf dir (default /etc/cni/net.d): move it
            lines += ["", '[plugins."io.containerd.grpc.v1.cri".cni]',
                      f'  conf_dir = "{os.path.join(self.dir, "cni", "net.d")}"']
        lines += [
            "",
            "[grpc]",
            f'  address = "{self.sock}"',
            "",
            "[ttrpc]",
            f'  address = "{self.sock}.ttrpc"',
            "",
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{os.path.join(self.dir, "opt")}"',
            "",
        ]
        with open(cfg, "w") as f:
            f.write("\n".join(lines))
        return [self.tools.containerd, "--config", cfg]

    def _read(self) -> None:
        pat = self.BOOT_RE[self.family]
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if self.boot_at is None:
                m = pat.search(line)
                if m:
                    self.boot_at = now()
                    if m.groups():
                        self.boot_self = float(m.group(1))
            if len(self.lines) < 2000:
                self.lines.append(line)

    def start(self) -> dict[str, float]:
        """Exec, poll the socket, then ``ctr version``; returns ms figures."""
        argv = self.argv()
        env = dict(self.tools.py_env if self.family == "ctrd" else os.environ)
        if self.env:
            env.update(self.env)
        self.t0 = now()
        if self.env is not None:
            env["BENCH_T0"] = repr(self.t0)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True, env=env)
        self.tools.live.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = self.t0 + START_TIMEOUT
        while not os.path.exists(self.sock):
            self._check_alive(deadline, "socket")
            time.sleep(POLL)
        t_sock = now()
        while not self.tools.ctr_ok(self.sock):
            self._check_alive(deadline, "ctr version")
            time.sleep(POLL)
        t_ok = now()
        out = {"exec_to_socket": (t_sock - self.t0) * 1e3,
               "exec_to_ctr_version_ok": (t_ok - self.t0) * 1e3}
        # the booted line normally arrived before ctr answered; allow the reader a moment
        for _ in range(100):
            if self.boot_at is not None:
                break
            time.sleep(0.002)
        if self.boot_at is not None:
            out["exec_to_boot_log_line"] = (self.boot_at - self.t0) * 1e3
        if self.boot_self is not None:
            out["self_reported_boot"] = self.boot_self * 1e3
        return out

    def _check_alive(self, deadline: float, what: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            time.sleep(0.05)
            tail = "\n".join(self.lines[-20:])
            raise BenchError(f"{self.kind} exited (rc {self.proc.returncode}) before {what}:"
                             f"\n{tail}")
        if now() > deadline:
            raise BenchError(f"{self.kind}: no {what} after {START_TIMEOUT:.0f} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> float | None:
        """SIGTERM, wait (SIGKILL after 10 s), unmount leftovers, remove the dir. Returns the
        ms from SIGTERM to exit (None if it had to be killed or was gone)."""
        took = None
        if self.proc is not None:
            if self.proc.poll() is None:
                t = now()
                try:
                    self.proc.send_signal(signal.SIGTERM)
                    self.proc.wait(timeout=10)
                    took = (now() - t) * 1e3
                except subprocess.TimeoutExpired:
                    log(f"WARNING: {self.kind} pid {self.proc.pid} ignored SIGTERM for 10 s: "
                        "SIGKILL")
                    self.proc.kill()
                    self.proc.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            if self in self.tools.live:
                self.tools.live.remove(self)
        unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        return took


class Tools:
    def __init__(self, args: argparse.Namespace, workdir: str):
        self.workdir = workdir
        self.live: list[Daemon] = []
        self.ctr = shutil.which(args.ctr) or args.ctr
        self.containerd = shutil.which(args.containerd) or args.containerd
        self.ctrd = args.ctrd or self._find_ctrd()
        self.ctrd_python = self.shebang(self.ctrd)[0]
        self.ctrd_alt = args.ctrd_alt
        self.ctr_tmp = os.path.join(workdir, "ctr-tmp")
        os.makedirs(self.ctr_tmp, exist_ok=True)
        self.ctr_env = dict(os.environ, TMPDIR=self.ctr_tmp)
        for name in ("CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE"):
            self.ctr_env.pop(name, None)
        # ctrd's python: by default as a deployed daemon runs, i.e. with its bytecode cached.
        # The cache goes to a prefix dir in the work dir (never into the source tree).
        self.bytecode = args.bytecode
        self.py_env = dict(os.environ)
        for kv in args.ctrd_env:
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise BenchError(f"--ctrd-env wants NAME=VALUE, not {kv!r}")
            self.py_env[k] = v
        if args.bytecode == "cached":
            self.py_env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.py_env["PYTHONPYCACHEPREFIX"] = os.path.join(workdir, "pycache")

    @staticmethod
    def _find_ctrd() -> str:
        for cand in (os.path.join(os.path.dirname(sys.executable), "ctrd"),
                     shutil.which("ctrd") or "", "/work/venv/bin/ctrd"):
            if cand and os.access(cand, os.X_OK):
                return cand
        raise BenchError("ctrd not found: pass --ctrd PATH")

    @staticmethod
    def shebang(script: str) -> list[str]:
        """The python (with its flags) a console script runs with."""
        with open(script, "rb") as f:
            first = f.readline().decode(errors="replace").strip()
        if first.startswith("#!"):
            interp = first[2:].split()
            if interp and "python" in os.path.basename(interp[0]):
                return interp
        return [sys.executable]

    def ctr_ok(self, sock: str) -> bool:
        return subprocess.run([self.ctr, "--address", sock, "version"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=self.ctr_env).returncode == 0

    def daemon(self, kind: str, **kw) -> Daemon:
        return Daemon(kind, self.workdir, self, **kw)

    def stop_all(self) -> None:
        for d in list(self.live):
            try:
                d.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                log(f"WARNING: stopping {d.kind}: {e}")


# --------------------------------------------------------------------------------- results
class Results:
    def __init__(self):
        self.samples: dict[str, dict[str, list[float]]] = {}  # figure -> daemon -> values
        self.units: dict[str, str] = {}
        self.order: list[str] = []

    def add(self, figure: str, daemon: str, value: float, unit: str) -> None:
        if figure not in self.samples:
            self.samples[figure] = {}
            self.order.append(figure)
        self.samples[figure].setdefault(daemon, []).append(value)
        self.units[figure] = unit

    def stats(self, figure: str, daemon: str) -> dict | None:
        v = self.samples.get(figure, {}).get(daemon)
        if not v:
            return None
        return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def fmt(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:.1f}"
    if unit == "KiB":
        return f"{v / 1024:.1f}"  # printed as MiB
    if unit == "MiB/s":
        return f"{v:.0f}"
    return f"{v:g}"


def print_table(res: Results, daemons: list[str], scenario_figures: list[str]) -> None:
    bases = [d for d in daemons if d != "ctrd"]
    head = ["figure", "unit"] + daemons + [f"ctrd/{b} med (min)" for b in bases
                                             if "ctrd" in daemons] + ["target"]
    rows = [head]
    for fig in scenario_figures:
        unit = res.units[fig]
        row = [fig, "MiB" if unit == "KiB" else unit]
        for d in daemons:
            s = res.stats(fig, d)
            row.append("-" if s is None else
                       f"{fmt(s['median'], unit)} [{fmt(s['min'], unit)}..{fmt(s['max'], unit)}]"
                       f" n={s['n']}")
        c = res.stats(fig, "ctrd")
        for b in bases:
            if "ctrd" not in daemons:
                continue
            s = res.stats(fig, b)
            if c is None or s is None or not s["median"] or not s["min"]:
                row.append("-")
            else:
                row.append(f"{c['median'] / s['median']:.2f} ({c['min'] / s['min']:.2f})")
        tgt = TARGETS.get(fig)
        if tgt and c is not None and "containerd" in daemons and res.stats(fig, "containerd"):
            r = c["median"] / res.stats(fig, "containerd")["median"]
            row.append(f"<= {tgt:g}x: {'met' if r <= tgt else 'MISSED'}")
        else:
            row.append("")
        rows.append(row)
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w[j]) if j < 2 else c.rjust(w[j]) for j, c in enumerate(r)))
        if i == 0:
            print("  ".join("-" * x for x in w))


# --------------------------------------------------------------------------------- scenarios
def scenario_start(tools: Tools, res: Results, daemons: list[str], repeats: int,
                   warmup: int) -> list[str]:
    figs = []
    for r in range(-warmup, repeats):
        for kind in daemons:
            d = tools.daemon(kind)
            try:
                out = d.start()
            finally:
                took = d.stop()
            if r < 0:
                continue
            if took is not None:
                out["sigterm_to_exit"] = took
            for k, v in out.items():
                res.add(k, kind, v, "ms")
                if k not in figs:
                    figs.append(k)
        if r >= 0:
            log(f"start: round {r + 1}/{repeats}: " + ", ".join(
                f"{k} {res.samples['exec_to_ctr_version_ok'][k][-1]:.1f} ms" for k in daemons))
    order = ["exec_to_socket", "exec_to_ctr_version_ok", "exec_to_boot_log_line",
             "self_reported_boot", "sigterm_to_exit"]
    return [f for f in order if f in figs]


def scenario_idle_rss(tools: Tools, res: Results, daemons: list[str], repeats: int,
                      warmup: int, settle: float) -> tuple[list[str], dict]:
    breakdown = {}
    for r in range(-warmup, repeats):
        for kind in daemons:
            d = tools.daemon(kind)
            try:
                d.start()
                time.sleep(settle)
                st = proc_status(d.pid)
                sm = smaps_rollup(d.pid)
                if r == repeats - 1:
                    breakdown[kind] = smaps_by_mapping(d.pid)
            finally:
                d.stop()
            if r < 0:
                continue
            res.add("idle_rss", kind, st["VmRSS"], "KiB")
            res.add("idle_rss_anon", kind, st.get("RssAnon", 0), "KiB")
            res.add("idle_rss_file", kind, st.get("RssFile", 0), "KiB")
            res.add("idle_pss", kind, sm.get("Pss", 0), "KiB")
            res.add("idle_uss", kind, sm.get("Private_Clean", 0) + sm.get("Private_Dirty", 0),
                    "KiB")
            res.add("idle_threads", kind, st.get("Threads", 0), "")
            res.add("idle_vsz", kind, st.get("VmSize", 0), "KiB")
        if r >= 0:
            log(f"idle-rss: round {r + 1}/{repeats}: " + ", ".join(
                f"{k} {res.samples['idle_rss'][k][-1] / 1024:.1f} MiB" for k in daemons))
    return (["idle_rss", "idle_pss", "idle_uss", "idle_rss_anon", "idle_rss_file",
             "idle_threads", "idle_vsz"], breakdown)


def scenario_ctr_version(tools: Tools, res: Results, daemons: list[str], repeats: int,
                         warmup: int) -> list[str]:
    running = []
    try:
        for kind in daemons:
            d = tools.daemon(kind)
            running.append(d)
            d.start()
        time.sleep(1)
        for r in range(-warmup, repeats):
            for d in running:
                t = now()
                if not tools.ctr_ok(d.sock):
                    raise BenchError(f"ctr version against {d.kind} failed")
                if r >= 0:
                    res.add("ctr_version_roundtrip", d.kind, (now() - t) * 1e3, "ms")
    finally:
        for d in running:
            d.stop()
    return ["ctr_version_roundtrip"]


def scenario_ingest(tools: Tools, res: Results, daemons: list[str], repeats: int,
                    warmup: int, size_mib: int, workdir: str) -> list[str]:
    """``ctr content ingest`` of one random blob from a file (stdin redirected), each sample
    on a fresh daemon; MiB/s of the whole client command (commit included)."""
    import hashlib

    blob = os.path.join(workdir, "ingest.blob")
    h = hashlib.sha256()
    with open(blob, "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(size_mib):
            block = chunk[:-8] + i.to_bytes(8, "big")
            h.update(block)
            f.write(block)
    digest = "sha256:" + h.hexdigest()
    try:
        for r in range(-warmup, repeats):
            for kind in daemons:
                d = tools.daemon(kind)
                try:
                    d.start()
                    with open(blob, "rb") as f:
                        t = now()
                        p = subprocess.run([tools.ctr, "--address", d.sock, "content", "ingest",
                                            "--expected-digest", digest, f"bench-{r}"],
                                           stdin=f, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, timeout=900)
                        took = now() - t
                    if p.returncode != 0:
                        raise BenchError(f"ingest into {kind} failed: {p.stderr.decode()}")
                finally:
                    d.stop()
                if r >= 0:
                    res.add(f"ingest_{size_mib}MiB_MiBps", kind, size_mib / took, "MiB/s")
                    res.add(f"ingest_{size_mib}MiB_time", kind, took * 1e3, "ms")
            if r >= 0:
                log(f"ingest: round {r + 1}/{repeats}: " + ", ".join(
                    f"{k} {res.samples[f'ingest_{size_mib}MiB_MiBps'][k][-1]:.0f} MiB/s"
                    for k in daemons))
    finally:
        os.unlink(blob)
    return [f"ingest_{size_mib}MiB_MiBps", f"ingest_{size_mib}MiB_time"]


def scenario_pull(tools: Tools, res: Results, daemons: list[str], repeats: int,
                  ref: str) -> list[str]:
    """``ctr images pull --plain-http REF`` (fetch + unpack) on a fresh daemon per sample;
    the daemon's peak RSS (VmHWM) over the pull next to its RSS just before it."""
    for r in range(repeats):
        for kind in daemons:
            d = tools.daemon(kind)
            try:
                d.start()
                time.sleep(0.5)
                before = proc_status(d.pid)["VmRSS"]
                t = now()
                p = subprocess.run([tools.ctr, "--address", d.sock, "images", "pull",
                                    "--plain-http", ref], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, timeout=900)
                took = now() - t
                peak = proc_status(d.pid)["VmHWM"]
                if p.returncode != 0:
                    raise BenchError(f"pull into {kind} failed: {p.stdout.decode()[-500:]}")
                unpack = None
                for line in p.stdout.decode(errors="replace").splitlines():
                    if line.startswith("done:"):
                        unpack = parse_go_duration(line.split()[1])
            finally:
                d.stop()
            res.add("pull_time", kind, took * 1e3, "ms")
            if unpack is not None:
                res.add("pull_unpack_step", kind, unpack * 1e3, "ms")
            res.add("pull_rss_before", kind, before, "KiB")
            res.add("pull_peak_rss", kind, peak, "KiB")
            if kind == "ctrd":  # ctrd's own daemon-side pull, through ctrctl
                ctrctl = os.path.join(os.path.dirname(tools.ctrd), "ctrctl")
                d = tools.daemon(kind)
                try:
                    d.start()
                    time.sleep(0.5)
                    before = proc_status(d.pid)["VmRSS"]
                    t = now()
                    p = subprocess.run([ctrctl, "--address", d.sock, "pull", "--plain-http",
                                        ref], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, timeout=900)
                    took = now() - t
                    peak = proc_status(d.pid)["VmHWM"]
                    if p.returncode != 0:
                        raise BenchError(f"ctrctl pull failed: {p.stdout.decode()[-500:]}")
                finally:
                    d.stop()
                res.add("ctrctl_pull_time", kind, took * 1e3, "ms")
                res.add("ctrctl_pull_peak_rss", kind, peak, "KiB")
                res.add("ctrctl_pull_rss_before", kind, before, "KiB")
        log(f"pull: round {r + 1}/{repeats}: " + ", ".join(
            f"{k} {res.samples['pull_time'][k][-1]:.0f} ms" for k in daemons))
    return ["pull_time", "pull_unpack_step", "pull_rss_before", "pull_peak_rss",
            "ctrctl_pull_time", "ctrctl_pull_rss_before", "ctrctl_pull_peak_rss"]


# ----------------------------------------------------------------------------------- tasks
def _shim_pids(d: Daemon) -> list[int]:
    """Shim processes serving ``d``: started with ``-address <d.sock>``."""
    needle = d.sock.encode()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and b"containerd-shim" in os.path.basename(argv[0]) + (
                argv[1] if len(argv) > 1 else b"") and needle in argv:
            out.append(int(name))
    # A shim process the shims were forked from (ctrd's shim template) is part of their cost.
    for pid in list(out):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{ppid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid not in out and argv and b"containerd-shim" in os.path.basename(argv[0]):
            out.append(ppid)
    return out


def _ctr(tools: Tools, d: Daemon, *args: str, check: bool = True,
         timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([tools.ctr, "--address", d.sock, *args], capture_output=True,
                       text=True, env=tools.ctr_env, timeout=timeout)
    if check and r.returncode != 0:
        raise BenchError(f"ctr {' '.join(args)} against {d.kind}: {r.stderr.strip()}")
    return r


def _remove_tasks(tools: Tools, d: Daemon) -> None:
    ids = _ctr(tools, d, "tasks", "ls", "-q", check=False).stdout.split()
    for t in ids:
        _ctr(tools, d, "tasks", "kill", "-s", "SIGKILL", t, check=False)
    for t in ids:
        for _ in range(100):
            if _ctr(tools, d, "tasks", "rm", "-f", t, check=False).returncode == 0:
                break
            time.sleep(0.05)
    for c in _ctr(tools, d, "containers", "ls", "-q", check=False).stdout.split():
        _ctr(tools, d, "containers", "rm", c, check=False)


def _busybox_archive(workdir: str) -> str:
    path = os.path.join(workdir, "busybox.tar")
    if not os.path.exists(path):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts",
                              "busybox-image")
        subprocess.run([sys.executable, script, path, "localhost/bench/busybox:latest"],
                       check=True, capture_output=True)
    return path


def scenario_tasks(tools: Tools, res: Results, daemons: list[str], repeats: int,
                   workdir: str, counts_text: str) -> list[str]:
    """Per daemon: `ctr run --rm IMG true` latency (sequential), the time until 20
    concurrently started containers all run, and shim memory per running container (PSS,
    RSS) with N containers running `sleep`: PSS 2 s after the last start (``_2s``: before
    ksmd merged anything, i.e. as on a host without ksmd) and once ksmd's merging settled."""
    image = "localhost/bench/busybox:latest"
    archive = _busybox_archive(workdir)
    counts = [int(c) for c in counts_text.split(",") if c.strip()]
    figs = ["run_rm_true", "start_20_concurrent"]
    for n in counts:
        figs += [f"shim_pss_per_ctr_{n}_2s", f"shim_pss_per_ctr_{n}", f"shim_rss_per_ctr_{n}"]
    for kind in daemons:
        d = tools.daemon(kind)
        try:
            d.start()
            _ctr(tools, d, "images", "import", archive)
            for i in range(-1, repeats):  # one warm-up
                t0 = now()
                _ctr(tools, d, "run", "--rm", image, f"rm{i + 1}", "true")
                if i >= 0:
                    res.add("run_rm_true", kind, (now() - t0) * 1000, "ms")
            log(f"tasks: {kind}: run --rm true p50 "
                f"{res.stats('run_rm_true', kind)['median']:.0f} ms")
            t0 = now()
            procs = [subprocess.Popen([tools.ctr, "--address", d.sock, "run", "-d", image,
                                       f"c20-{i}", "sleep", "1000"], env=tools.ctr_env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for i in range(20)]
            for p in procs:
                if p.wait(timeout=120) != 0:
                    raise BenchError(f"{kind}: concurrent run failed: "
                                     f"{p.stderr.read().decode().strip()}")
            while True:
                rows = _ctr(tools, d, "tasks", "ls").stdout.splitlines()[1:]
                if sum(1 for r in rows if r.split()[-1] == "RUNNING") >= 20:
                    break
                if now() - t0 > 120:
                    raise BenchError(f"{kind}: 20 containers did not all run in 120 s")
                time.sleep(0.01)
            res.add("start_20_concurrent", kind, (now() - t0) * 1000, "ms")
            _remove_tasks(tools, d)
            for n in counts:
                for i in range(n):
                    _ctr(tools, d, "run", "-d", image, f"m{n}-{i}", "sleep", "1000")
                time.sleep(2.0)  # settle
                pids = _shim_pids(d)
                pss = sum(smaps_rollup(p).get("Pss", 0) for p in pids) / 1024
                res.add(f"shim_pss_per_ctr_{n}_2s", kind, pss / n, "MiB")
                waited = ksm_settle()  # same wait for both daemons
                if waited:
                    log(f"tasks: {kind}: waited {waited:.1f} s for ksmd's merging to settle")
                pids = _shim_pids(d)
                if not pids:
                    raise BenchError(f"{kind}: no shim processes found")
                pss = sum(smaps_rollup(p).get("Pss", 0) for p in pids) / 1024
                rss = sum(smaps_rollup(p).get("Rss", 0) for p in pids) / 1024
                res.add(f"shim_pss_per_ctr_{n}", kind, pss / n, "MiB")
                res.add(f"shim_rss_per_ctr_{n}", kind, rss / n, "MiB")
                log(f"tasks: {kind}: {n} containers, {len(pids)} shim processes, "
                    f"PSS {pss / n:.2f} MiB/ctr, RSS {rss / n:.2f} MiB/ctr")
                _remove_tasks(tools, d)
        finally:
            try:
                _remove_tasks(tools, d)
            finally:
                d.stop()
    return figs


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration as ctr prints it (``7.86s``, ``49.5ms``, ``1m2.5s``)."""
    import re

    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|µs|us|ns|h|m|s)",
                                                              text))


# --------------------------------------------------------------------------------- profile
# Runs inside ctrd's python, in place of the ``ctrd`` console script: stamps phases of the
# start-up (monotonic clock, comparable with the harness's), counts the time spent in imports
# per phase, then runs ctrd's main() unchanged.  Writes JSON to $BENCH_PROFILE_OUT at boot.
PROFILE_WRAPPER = r'''
import time
_now = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)
T_MAIN = _now()
import builtins, importlib, os, sys
if os.environ.get("BENCH_TRACEMALLOC"):
    import tracemalloc
    tracemalloc.start(1)

T0 = float(os.environ["BENCH_T0"])
def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

marks = [("exec", T0, 0), ("interpreter ready (python + site + .pth)", T_MAIN, _rss())]
imp = {"t": 0.0, "depth": 0, "n": 0}
phase_imports = []           # import seconds accumulated at each mark
calls = {}                   # label -> [seconds, count]
patched = set()

def mark(name):
    marks.append((name, _now(), _rss()))
    phase_imports.append(imp["t"])

_orig_import = builtins.__import__
_orig_import_module = importlib.import_module

def _timed_import(fn):
    def wrapper(*a, **k):
        if imp["depth"]:
            return fn(*a, **k)
        imp["depth"] = 1
        t = _now()
        try:
            return fn(*a, **k)
        finally:
            imp["t"] += _now() - t
            imp["depth"] = 0
            imp["n"] += 1
            _maybe_patch()
    return wrapper

def _timed(owner, attr, label, is_async=False):
    fn = getattr(owner, attr)
    if is_async:
        async def w(*a, **k):
            t = _now()
            try:
                return await fn(*a, **k)
            finally:
                c = calls.setdefault(label, [0.0, 0]); c[0] += _now() - t; c[1] += 1
    else:
        def w(*a, **k):
            t = _now()
            try:
                return fn(*a, **k)
            finally:
                c = calls.setdefault(label, [0.0, 0]); c[0] += _now() - t; c[1] += 1
    setattr(owner, attr, w)

def _maybe_patch():
    m = sys.modules
    if "grpc.aio" not in patched and "grpc.aio._server" in m and "grpc.aio" in m:
        patched.add("grpc.aio")
        _timed(m["grpc.aio"], "server", "grpc.aio.server() (creates the core server)")
        S = m["grpc.aio._server"].Server
        _timed(S, "add_insecure_port", "grpc add_insecure_port (bind)")
        _timed(S, "start", "grpc server.start()", True)
    if "ttrpc" not in patched and "ctrd.ttrpc.server" in m:
        patched.add("ttrpc")
        _timed(m["ctrd.ttrpc.server"].Server, "start", "ttrpc server.start()", True)
    if "reg" not in patched and "ctrd.plugins.registry" in m:
        patched.add("reg")
        R = m["ctrd.plugins.registry"].Registry
        d0, l0 = R.discover, R.load
        def discover(self, *a, **k):
            mark("-> Registry.discover")
            try:
                return d0(self, *a, **k)
            finally:
                mark("discover: entry points + pluggy hooks")
        async def load(self, *a, **k):
            mark("-> Registry.load")
            try:
                return await l0(self, *a, **k)
            finally:
                mark("load: plugin configs + init functions")
        R.discover, R.load = discover, load
    if "daemon" not in patched and "ctrd.daemon" in m:
        patched.add("daemon")
        D = m["ctrd.daemon"].Daemon
        s0, st0 = D.start, D._start
        async def start(self, *a, **k):
            mark("cli: argparse, config, logging, import ctrd.daemon")
            return await s0(self, *a, **k)
        async def _start(self, *a, **k):
            mark("Daemon.start: dirs + lock")
            await st0(self, *a, **k)
            mark("servers: create, register, bind, start, hooks, booted log")
            _dump()
        D.start, D._start = start, _start

def _group(fn):
    if "/site-packages/" in fn:
        return fn.split("/site-packages/", 1)[1].split("/")[0].replace(".py", "")
    if "/ctrd/api/" in fn:
        return "ctrd.api (generated)"
    if "/ctrd/" in fn:
        return "ctrd"
    if "/python3." in fn and "/lib/" in fn:
        rest = fn.split("/lib/python3.", 1)[1].split("/", 1)
        top = rest[1].split("/")[0].replace(".py", "") if len(rest) > 1 else "?"
        return "stdlib " + top
    return fn

def _dump():
    out = {"marks": marks, "phase_imports": phase_imports, "import_calls": imp["n"],
           "calls": calls, "modules": len(sys.modules)}
    if os.environ.get("BENCH_TRACEMALLOC"):
        snap = tracemalloc.take_snapshot()
        groups = {}
        for st in snap.statistics("filename"):
            g = _group(st.traceback[0].filename)
            groups[g] = groups.get(g, 0) + st.size
        ren = {"<frozen importlib._bootstrap_external>":
               "importlib: unmarshalled module code (.pyc -> code objects)",
               "<frozen importlib._bootstrap>": "importlib: module objects, specs, dicts"}
        out["tracemalloc"] = sorted(((ren.get(g, g), v) for g, v in groups.items()),
                                    key=lambda x: -x[1])
        out["tracemalloc_total"] = sum(groups.values())
    pyc = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__cached__", None)
        try:
            size = os.path.getsize(path) if path else 0
        except OSError:
            size = 0
        if not size:
            continue
        top = name.split(".")[0]
        if name.startswith("ctrd.api."):
            top = "ctrd.api (generated)"
        elif name.startswith("google.protobuf"):
            top = "google.protobuf"
        e = pyc.setdefault(top, [0, 0])
        e[0] += size
        e[1] += 1
    out["pyc"] = sorted(pyc.items(), key=lambda x: -x[1][0])
    import json
    with open(os.environ["BENCH_PROFILE_OUT"], "w") as f:
        json.dump(out, f)

builtins.__import__ = _timed_import(_orig_import)
importlib.import_module = _timed_import(_orig_import_module)
sys.argv = sys.argv[1:]  # argv[0] = the ctrd console script
# what the console script does (it imports re first)
import re
from ctrd.cli.daemon import main
sys.exit(main())
'''


def parse_importtime(text: str) -> list[tuple[str, int, int, int]]:
    """(module, self us, cumulative us, depth) in the order python -X importtime prints them."""
    out = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3:
            continue
        raw = parts[2].rstrip()
        depth = (len(raw) - len(raw.lstrip(" ")) - 1) // 2
        out.append((raw.strip(), int(parts[0]), int(parts[1]), depth))
    return out


def scenario_profile(tools: Tools, res: Results, repeats: int, warmup: int) -> dict:
    prof: dict = {}
    wrapper = os.path.join(tools.workdir, "profile_wrapper.py")
    with open(wrapper, "w") as f:
        f.write(PROFILE_WRAPPER)

    # 1. phases, several runs, medians
    runs = []
    for r in range(-warmup, repeats):
        out = os.path.join(tools.workdir, "profile.json")
        d = tools.daemon("ctrd", wrap=[wrapper, tools.ctrd],
                         env={"BENCH_PROFILE_OUT": out})
        try:
            fig = d.start()
            rss = proc_status(d.pid)["VmRSS"]
        finally:
            d.stop()
        if r < 0:
            continue
        with open(out) as f:
            data = json.load(f)
        os.unlink(out)
        data["ctr_ok"] = fig["exec_to_ctr_version_ok"] / 1e3 + data["marks"][0][1]
        data["rss_at_ready"] = rss
        runs.append(data)
    names = [m[0] for m in runs[0]["marks"]]
    # phase i runs from mark i-1 to mark i; phase_imports[j] was taken at mark j+2 (the first
    # two marks are set before any import is timed).  A "->" mark ends the phase before it.
    merged = []
    for i in range(1, len(names)):
        dur = [(r["marks"][i][1] - r["marks"][i - 1][1]) * 1e3 for r in runs]
        imps = [((r["phase_imports"][i - 2] if i >= 2 else 0)
                 - (r["phase_imports"][i - 3] if i >= 3 else 0)) * 1e3 for r in runs]
        label = names[i]
        if label.startswith("->"):
            label = "Daemon._start: import grpc/grpc.aio, grpcutil, ttrpc server" \
                if "discover" in label else "between discover and load"
        rss = [r["marks"][i][2] - r["marks"][i - 1][2] for r in runs]
        merged.append((label, statistics.median(dur), statistics.median(imps),
                       statistics.median(rss)))
    tail = [(r["ctr_ok"] - r["marks"][-1][1]) * 1e3 for r in runs]
    merged.append(("booted -> first ctr version ok (ctr client + poll)",
                   statistics.median(tail), 0.0, None))
    total = [(r["ctr_ok"] - r["marks"][0][1]) * 1e3 for r in runs]
    prof["phases"] = merged
    prof["phase_runs"] = len(runs)
    prof["total_ms"] = statistics.median(total)
    prof["import_ms_total"] = statistics.median(
        [r["phase_imports"][-1] * 1e3 for r in runs])
    prof["calls"] = {k: statistics.median([r["calls"].get(k, [0, 0])[0] * 1e3 for r in runs])
                     for k in runs[0]["calls"]}
    prof["modules"] = runs[0]["modules"]
    prof["rss_at_ready_kib"] = statistics.median([r["rss_at_ready"] for r in runs])

    # 1b. one run with tracemalloc: Python-level allocations alive at boot, by package
    out = os.path.join(tools.workdir, "profile.json")
    d = tools.daemon("ctrd", wrap=[wrapper, tools.ctrd],
                     env={"BENCH_PROFILE_OUT": out, "BENCH_TRACEMALLOC": "1"})
    try:
        d.start()
    finally:
        d.stop()
    with open(out) as f:
        data = json.load(f)
    os.unlink(out)
    prof["tracemalloc"] = data.get("tracemalloc", [])
    prof["pyc"] = data.get("pyc", [])
    prof["tracemalloc_total"] = data.get("tracemalloc_total", 0)

    # 2. python -X importtime of the real console script; per-module medians over the runs
    per: dict[str, list[tuple[int, int]]] = {}
    first: list[tuple[str, int]] = []
    for r in range(max(1, repeats)):
        d = tools.daemon("ctrd", wrap=["-X", "importtime", tools.ctrd])
        try:
            d.start()
        finally:
            d.stop()
        for name, self_us, cum, depth in parse_importtime("\n".join(d.lines)):
            if name not in per:
                per[name] = []
                first.append((name, depth))
            per[name].append((self_us, cum))
    prof["importtime_runs"] = max(1, repeats)
    prof["importtime"] = [(n, statistics.median(x[0] for x in per[n]),
                           statistics.median(x[1] for x in per[n]), depth)
                          for n, depth in first]

    # 3. floors: interpreter alone and the big imports, as separate processes
    probes = [
        ("python -c pass (venv, site)", "pass"),
        ("python -S -c pass (no site)", None),
        ("import asyncio", "import asyncio"),
        ("import logging, dataclasses, pathlib, typing", "import logging, dataclasses, pathlib, typing"),
        ("import google.protobuf (upb) + message_factory",
         "import google.protobuf.message_factory"),
        ("import grpc", "import grpc"),
        ("import grpc.aio", "import grpc, grpc.aio"),
        ("import asyncio, grpc.aio, protobuf (the stack)",
         "import asyncio, grpc.aio, google.protobuf.message_factory"),
        ("import pluggy", "import pluggy"),
        ("import lmdb", "import lmdb"),
        ("import ctrd.daemon", "import ctrd.daemon"),
        ("import ctrd.plugins.builtin + services",
         "import ctrd.daemon, ctrd.plugins.builtin, ctrd.services.namespaces, "
         "ctrd.services.introspection, ctrd.services.version, ctrd.services.health, "
         "ctrd.metadata.db, ctrd.metadata.namespaces, ctrd.events.exchange, "
         "ctrd.services.grpcutil, ctrd.ttrpc.server, grpc.aio"),
    ]
    probe = ("import sys, time\n_t = time.perf_counter()\nexec(sys.argv[1])\n"
             "_d = time.perf_counter() - _t\n"
             "with open('/proc/self/status') as f:\n"
             " m = dict(l.split()[:2] for l in f if l.startswith(('VmRSS', 'RssAnon')))\n"
             "print(_d * 1e3, m['VmRSS:'], m['RssAnon:'])\n")
    floor: dict[str, dict] = {}
    for r in range(-warmup, max(3, repeats)):
        for label, code in probes:
            if code is None:
                argv = [tools.ctrd_python, "-S", "-c", probe, "pass"]
            else:
                argv = [tools.ctrd_python, "-c", probe, code]
            t = now()
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=tools.workdir, env=tools.py_env)
            el = (now() - t) * 1e3
            if p.returncode != 0:
                floor.setdefault(label, {})["error"] = p.stderr.decode()[-300:]
                continue
            if r < 0:
                continue
            e = floor.setdefault(label, {"ms": [], "imp": [], "rss": [], "anon": []})
            imp_ms, rss, anon = p.stdout.split()[-3:]
            e["ms"].append(el)
            e["imp"].append(float(imp_ms))
            e["rss"].append(float(rss))
            e["anon"].append(float(anon))
    prof["floor"] = [(label, statistics.median(floor[label]["ms"]),
                      statistics.median(floor[label]["imp"]),
                      statistics.median(floor[label]["rss"]),
                      statistics.median(floor[label]["anon"]))
                     for label, _ in probes if "ms" in floor.get(label, {})]
    return prof


def print_profile(prof: dict | None, breakdown: dict) -> None:
    for kind, rows in breakdown.items():
        print()
        tot = sum(r[1] for r in rows)
        print(f"## idle {kind}: RSS by mapping (last sample; total {tot / 1024:.1f} MiB)")
        for name, rss, pss in rows[:12]:
            print(f"  {name[:56]:<56} Rss {rss / 1024:6.1f} MiB  Pss {pss / 1024:6.1f} MiB")
    if prof is None:
        return
    print()
    print(f"## ctrd start-up: where the time goes (profile wrapper, median of "
          f"{prof['phase_runs']} runs)")
    print(f"{'phase':<64} {'ms':>7} {'of which imports':>17} {'VmRSS +MiB':>11}")
    for label, ms, im, rss in prof["phases"]:
        print(f"{label:<64} {ms:7.1f} {im:17.1f} "
              f"{'' if rss is None else f'{rss / 1024:+.1f}':>11}")
    print(f"{'total exec -> ctr version ok (wrapper adds its own overhead)':<64} "
          f"{prof['total_ms']:7.1f} {prof['import_ms_total']:17.1f}")
    for k, v in prof["calls"].items():
        print(f"  call: {k:<58} {v:7.1f}")
    print(f"  modules in sys.modules at boot: {prof['modules']};  VmRSS when ready: "
          f"{prof['rss_at_ready_kib'] / 1024:.1f} MiB")

    imps = prof["importtime"]
    if imps:
        total_self = sum(i[1] for i in imps)
        print()
        print(f"## python -X importtime of `ctrd` (per-module medians of "
              f"{prof['importtime_runs']} runs; {len(imps)} modules, sum of self "
              f"{total_self / 1e3:.1f} ms; importtime itself inflates times)")
        by_pkg: dict[str, list[int]] = {}
        for name, self_us, _, _ in imps:
            top = name.split(".")[0]
            if name.startswith("ctrd.api."):
                top = "ctrd.api (generated pb2)"
            elif name.startswith("google.protobuf"):
                top = "google.protobuf"
            elif top == "ctrd":
                top = "ctrd (own code)"
            e = by_pkg.setdefault(top, [0, 0])
            e[0] += self_us
            e[1] += 1
        print("by package (sum of self time):")
        for pkg, (us, n) in sorted(by_pkg.items(), key=lambda x: -x[1][0])[:16]:
            print(f"  {pkg:<36} {us / 1e3:7.1f} ms  {n:4d} modules")
        print("top-level imports by cumulative time (depth 0 = imported by ctrd's code path):")
        tops = [i for i in imps if i[3] == 0]
        for name, _, cum, _ in sorted(tops, key=lambda x: -x[2])[:14]:
            print(f"  {name:<56} {cum / 1e3:7.1f} ms")
        print("heaviest single modules (self time):")
        for name, s, cum, _ in sorted(imps, key=lambda x: -x[1])[:14]:
            print(f"  {name:<56} {s / 1e3:7.1f} ms (cumulative {cum / 1e3:.1f})")
    if prof.get("floor"):
        print()
        print("## floors: fresh processes of ctrd's python, median: wall exec->exit, the "
              "import statement alone, VmRSS and RssAnon after it")
        print(f"  {'probe':<48} {'wall ms':>8} {'import ms':>10} {'RSS MiB':>8} {'anon MiB':>9}")
        for label, ms, im, rss, anon in prof["floor"]:
            print(f"  {label:<48} {ms:8.1f} {im:10.1f} {rss / 1024:8.1f} {anon / 1024:9.1f}")
    if prof.get("tracemalloc"):
        print()
        print(f"## Python allocations alive at boot (tracemalloc, one run): "
              f"{prof['tracemalloc_total'] / 1048576:.1f} MiB, by where they were allocated")
        for g, size in prof["tracemalloc"][:12]:
            print(f"  {g[:64]:<64} {size / 1048576:6.2f} MiB")
    if prof.get("pyc"):
        tot = sum(v[0] for _, v in prof["pyc"])
        n = sum(v[1] for _, v in prof["pyc"])
        print()
        print(f"## bytecode loaded at boot, by package (.pyc bytes of the {n} modules that have "
              f"one: {tot / 1048576:.1f} MiB; code objects in memory take ~1.5-2x)")
        for g, (size, cnt) in prof["pyc"][:14]:
            print(f"  {g[:40]:<40} {size / 1024:7.0f} KiB  {cnt:4d} modules")


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"comma list of scenarios ({','.join(SCENARIOS)}); default all")
    ap.add_argument("--repeats", type=int, default=20, help="samples per daemon for start and "
                    "ctr-version (default 20)")
    ap.add_argument("--rss-repeats", type=int, default=5, help="idle-rss samples per daemon "
                    "(default 5)")
    ap.add_argument("--profile-repeats", type=int, default=5, help="profile wrapper runs "
                    "(default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (default 1)")
    ap.add_argument("--settle", type=float, default=2.0, help="idle-rss settle seconds (2)")
    ap.add_argument("--daemons", default="ctrd,containerd",
                    help="comma list of " + ",".join(KNOWN_DAEMONS) + " (default "
                    "ctrd,containerd; containerd-nocri: CRI plugin disabled, as the anchor)")
    ap.add_argument("--ctrd", help="ctrd console script (default: next to this python, PATH, "
                    "/work/venv/bin/ctrd)")
    ap.add_argument("--ctrd-alt", metavar="SCRIPT", help="a second ctrd start script (python "
                    "shebang, same flags as ctrd) measured as daemon 'ctrd-alt': try a variant "
                    "interleaved with the baseline, e.g. --daemons ctrd,ctrd-alt,containerd")
    ap.add_argument("--containerd", default="containerd")
    ap.add_argument("--ctr", default="ctr")
    ap.add_argument("--bytecode", choices=("cached", "as-is"), default="cached",
                    help="ctrd's .pyc: cached (default; PYTHONPYCACHEPREFIX in the work dir, "
                    "primed before measuring: a deployed daemon's steady state) or as-is (inherit "
                    "the environment, e.g. PYTHONDONTWRITEBYTECODE=1: ctrd's own modules are "
                    "compiled at every start)")
    ap.add_argument("--ctrd-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for ctrd (and the profile's python), repeatable; "
                    "e.g. MALLOC_ARENA_MAX=2 to try an idea")
    ap.add_argument("--json", help="write samples, summary and profile to this file")
    ap.add_argument("--pull-ref", default="127.0.0.1:5000/bench/fat:latest",
                    help="image of the pull scenario (serve it first: "
                    "../shared/bench-anchor/make-images.sh)")
    ap.add_argument("--pull-repeats", type=int, default=3)
    ap.add_argument("--ingest-mib", type=int, default=1024,
                    help="blob size of the ingest scenario in MiB (default 1024)")
    ap.add_argument("--ingest-repeats", type=int, default=3,
                    help="samples per daemon of the ingest scenario (default 3)")
    ap.add_argument("--task-repeats", type=int, default=15,
                    help="tasks scenario: sequential `run --rm true` samples (default 15)")
    ap.add_argument("--task-counts", default="10,50",
                    help="tasks scenario: running-container counts for shim memory "
                    "(default 10,50)")
    args = ap.parse_args(argv)

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenario(s): {', '.join(bad)}")
    daemons = [s.strip() for s in args.daemons.split(",") if s.strip()]
    if [d for d in daemons if d not in KNOWN_DAEMONS] or len(set(daemons)) != len(daemons):
        ap.error(f"--daemons: choose from {', '.join(KNOWN_DAEMONS)}")
    if "ctrd-alt" in daemons and not args.ctrd_alt:
        ap.error("--daemons ctrd-alt needs --ctrd-alt SCRIPT")
    if os.geteuid() != 0:
        print("run as root (containerd needs it)", file=sys.stderr)
        return 2

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    workdir = tempfile.mkdtemp(prefix="ctrd-bench.")
    tools = None
    rc = 0
    res = Results()
    meta = {}
    prof = None
    breakdown: dict = {}
    figs_by_scenario: dict[str, list[str]] = {}
    try:
        tools = Tools(args, workdir)
        for t in (tools.ctr, tools.containerd):
            if not shutil.which(t):
                raise BenchError(f"missing tool: {t}")

        def version(cmd):
            try:
                return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      timeout=30).stdout.decode().strip().splitlines()[0]
            except Exception as e:  # noqa: BLE001
                return f"? ({e})"
        with open("/proc/meminfo") as f:
            memtotal = int(f.readline().split()[1])
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": f"{platform.system()} {platform.release()} {platform.machine()}, "
                    f"{os.cpu_count()} cpus, {memtotal / 1048576:.1f} GiB",
            "containerd": version([tools.containerd, "--version"]),
            "ctrd": version([tools.ctrd_python, tools.ctrd, "--version"]) + f" ({tools.ctrd})",
            "ctrd_python": version([tools.ctrd_python, "-VV"]),
            "ctrd_env": " ".join(args.ctrd_env) or "-",
            "ksm": ksm_state(),
            "loadavg_start": loadavg(),
            "repeats": args.repeats, "rss_repeats": args.rss_repeats, "warmup": args.warmup,
            "daemons": daemons, "scenarios": only,
        }
        for k, v in meta.items():
            log(f"{k}: {v}")

        meta["bytecode"] = args.bytecode + (
            f" (PYTHONDONTWRITEBYTECODE={os.environ['PYTHONDONTWRITEBYTECODE']!r} in the "
            "environment)" if args.bytecode == "as-is" and
            os.environ.get("PYTHONDONTWRITEBYTECODE") else "")
        for kind in ("ctrd", "ctrd-alt"):
            if kind in daemons or (kind == "ctrd" and "profile" in only):
                log(f"priming: one uncounted {kind} start (fills the bytecode cache)")
                d = tools.daemon(kind)
                try:
                    d.start()
                finally:
                    d.stop()
        for sc in only:
            la = loadavg()
            log(f"scenario {sc} (loadavg {la})")
            if sc == "start":
                figs_by_scenario[sc] = scenario_start(tools, res, daemons, args.repeats,
                                                      args.warmup)
            elif sc == "idle-rss":
                figs_by_scenario[sc], breakdown = scenario_idle_rss(
                    tools, res, daemons, args.rss_repeats, args.warmup, args.settle)
            elif sc == "ctr-version":
                figs_by_scenario[sc] = scenario_ctr_version(tools, res, daemons, args.repeats,
                                                            args.warmup)
            elif sc == "ingest":
                figs_by_scenario[sc] = scenario_ingest(tools, res, daemons, args.ingest_repeats,
                                                       0, args.ingest_mib, workdir)
            elif sc == "pull":
                figs_by_scenario[sc] = scenario_pull(tools, res, daemons, args.pull_repeats,
                                                     args.pull_ref)
            elif sc == "tasks":
                figs_by_scenario[sc] = scenario_tasks(tools, res, daemons, args.task_repeats,
                                                      workdir, args.task_counts)
            elif sc == "profile":
                prof = scenario_profile(tools, res, args.profile_repeats, args.warmup)
            meta[f"loadavg_{sc}"] = f"{la} -> {loadavg()}"
        meta["loadavg_end"] = loadavg()
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except Interrupted as e:
        log(f"interrupted ({e})")
        rc = 143
    except BenchError as e:
        log(f"ERROR: {e}")
        rc = 1
    finally:
        # clean-up must not be cut short by a second Ctrl-C
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        if tools is not None:
            tools.stop_all()
        unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, old)

    if figs_by_scenario or prof:
        print()
        print(f"# ctrd vs containerd  {meta.get('date', '')}  {meta.get('host', '')}")
        for k in ("containerd", "ctrd", "ctrd_python", "bytecode", "ctrd_env", "ksm"):
            if k in meta:
                print(f"# {k}: {meta[k]}")
        print("# loadavg: " + ";  ".join(f"{k[8:]} {v}" for k, v in meta.items()
                                          if k.startswith("loadavg_")))
        print("# figures: median [min..max] n; ratios ctrd/X of medians (of minimums); "
              "times ms, memory MiB")
        if "containerd" in daemons:
            print("# containerd runs as shipped (CRI plugin loaded), only paths moved")
        for sc, figs in figs_by_scenario.items():
            print()
            print(f"## {sc}")
            print_table(res, daemons, figs)
        print_profile(prof, breakdown)
    if args.json and (figs_by_scenario or prof):
        summary = {f: {d: res.stats(f, d) for d in daemons if res.stats(f, d)}
                   for f in res.order}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "units": res.units, "samples": res.samples,
                       "summary": summary, "profile": prof,
                       "rss_by_mapping": breakdown}, f, indent=1)
        log(f"wrote {args.json}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
