"""containerd 2.3.4 (the reference binaries in ``../shared/bin/containerd-2.3.4``) as a CRI
runtime on temp paths, for side-by-side comparisons (tests/test_cri_compare.py) and benches
(bench/cri_lifecycle.py). Stdlib only, no pytest.

    d = Containerd2.start(base, cni_bin_dirs=[...], cni_conf_dir=..., sandbox_image=...,
                          plain_http=["127.0.0.1:5000"])
    ...  # d.address is the gRPC socket (CRI included)
    d.stop()

Everything the daemon writes by default outside ``base`` is moved into it: root, state, gRPC
and ttrpc sockets, the ``opt`` dir, CNI conf dir, NRI (disabled: it would listen on
/var/run/nri), the registry hosts dir (``certs.d``), the image verifier's dir. The daemon runs
in its own session, its shim (``containerd-shim-runc-v2``) found first on PATH; :meth:`stop`
SIGTERMs it (SIGKILL to its group after a timeout). Pods are the caller's to remove before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN_DIR = Path(__file__).resolve().parents[2] / "shared" / "bin" / "containerd-2.3.4"
if not BIN_DIR.is_dir():  # a worktree under /work/wt/<name>: shared is /work/shared
    BIN_DIR = Path("/work/shared/bin/containerd-2.3.4")
CONTAINERD = BIN_DIR / "containerd"
CTR = BIN_DIR / "ctr"
CRICTL = BIN_DIR.parent / "crictl-1.36.0" / "crictl"


def available() -> bool:
    return os.access(CONTAINERD, os.X_OK) and os.access(BIN_DIR / "containerd-shim-runc-v2",
                                                        os.X_OK)


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def config_text(base: Path, *, cni_bin_dirs: list[str], cni_conf_dir: str,
                sandbox_image: str = "", extra_runtime: str = "") -> str:
    """A ``version = 4`` config with every default path moved under ``base``."""
    sandbox = f"    [plugins.'io.containerd.cri.v1.images'.pinned_images]\n" \
              f"      sandbox = '{sandbox_image}'\n" if sandbox_image else ""
    return f"""version = 4
root = '{base}/root'
state = '{base}/state'
imports = []

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
{sandbox}    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '{base}/certs.d'
  [plugins.'io.containerd.cri.v1.runtime']
    disable_apparmor = true
    # no CAP_SYS_RESOURCE in the test environment: the pause container's -998 would fail
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_cdi = false
{extra_runtime}    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = {_toml_list(cni_bin_dirs)}
      conf_dir = '{cni_conf_dir}'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{base}/opt'
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '{base}/image-verifier'
  [plugins.'io.containerd.server.v1.grpc']
    address = '{base}/c.sock'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '{base}/c.sock.ttrpc'
"""


def write_plain_http_hosts(certs_d: Path, host: str) -> None:
    """``certs.d/<host>/hosts.toml``: pull from ``host`` over plain http."""
    d = certs_d / host
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(f'server = "http://{host}"\n'
                                  f'[host."http://{host}"]\n'
                                  '  capabilities = ["pull", "resolve"]\n')


@dataclass
class Containerd2:
    """A running containerd 2.3.4: its process, socket and log."""

    proc: subprocess.Popen
    base: Path
    address: str
    log: Path
    env: dict = field(default_factory=dict)

    @classmethod
    def start(cls, base: Path, *, cni_bin_dirs: list[str], cni_conf_dir: str,
              sandbox_image: str = "", plain_http: list[str] = (), timeout: float = 60.0,
              extra_runtime: str = "", debug: bool = True,
              path_first: tuple[str, ...] = ()) -> "Containerd2":
        """``path_first``: directories put on PATH before containerd 2.3.4's own (where
        it looks for shim binaries by runtime name)."""
        base = Path(base)
        base.mkdir(parents=True, exist_ok=True)
        for h in plain_http:
            write_plain_http_hosts(base / "certs.d", h)
        (base / "certs.d").mkdir(exist_ok=True)
        cfg = base / "config.toml"
        cfg.write_text(config_text(base, cni_bin_dirs=cni_bin_dirs, cni_conf_dir=cni_conf_dir,
                                   sandbox_image=sandbox_image, extra_runtime=extra_runtime))
        env = dict(os.environ, PATH=":".join([*path_first, str(BIN_DIR),
                                              os.environ.get("PATH", "")]))
        log = base / "log"
        argv = [str(CONTAINERD), "--config", str(cfg)]
        if debug:
            argv += ["--log-level", "debug"]
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        d = cls(proc, base, str(base / "c.sock"), log, env)
        try:
            d.wait_ready(timeout)
        except BaseException:
            d.stop()
            raise
        return d

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def ctr(self, *args: str, namespace: str = "k8s.io",
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(CTR), "--address", self.address, "-n", namespace, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def wait_ready(self, timeout: float) -> None:
        """Until ``ctr version`` answers and the CRI plugin logged that it serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited {self.proc.returncode}:\n"
                                   + self.read_log()[-5000:])
            if os.path.exists(self.address) and self.ctr("version", timeout=10).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"containerd did not come up in {timeout}s:\n"
                           + self.read_log()[-5000:])

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._unmount_all()
        return self.proc.returncode

    def _unmount_all(self) -> None:
        """containerd 2.3.4 leaves mounts of its own under ``base`` when it exits (its mount
        manager's temporary mounts, ``state/io.containerd.mount-manager.v1.bolt/t/...``, made
        for ``ctr images mount``): unmount them, deepest first, so the base can be removed."""
        prefix = str(self.base) + "/"
        with open("/proc/self/mountinfo") as f:
            points = [ln.split(" ")[4] for ln in f]
        for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
