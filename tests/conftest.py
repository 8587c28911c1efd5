"""Shared fixtures: real daemons (ctrd and containerd 1.6) on temp roots, and the real ``ctr``.

Every daemon started here is stopped (SIGTERM, then SIGKILL) and its temp dirs removed in
teardown, whether the test passed or not.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# support/ holds the fixtures and helpers that were in test modules (whose asserts pytest
# rewrites): rewritten too, so their failures explain themselves as before.
pytest.register_assert_rewrite("support")

ROOT = os.geteuid() == 0
CTR = shutil.which("ctr")
CONTAINERD = shutil.which("containerd")
CTR16 = CTR  # Debian's ctr 1.6; CTR is whichever the test runs with (fixture ctr_client)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in item.keywords and not ROOT:
            item.add_marker(pytest.mark.skip(reason="integration tests need root"))


@dataclass
class Proc:
    """A daemon under test: its process, paths and log."""

    proc: subprocess.Popen
    address: str
    root: Path
    state: Path
    log: Path
    env: dict = field(default_factory=dict)

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: nothing survives
                self.proc.wait()
        return self.proc.returncode


def ctrd_command() -> list[str]:
    return [sys.executable, "-m", "ctrd.cli.daemon"]


def wait_for_socket(p: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {p.proc.returncode}:\n{p.read_log()}")
        if os.path.exists(p.address):
            if CTR is None or ctr(p.address, "version").returncode == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"daemon did not come up in {timeout}s:\n{p.read_log()}")


def ctr(address: str, *args: str, namespace: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    import conftest

    cmd = [conftest.CTR, "--address", address]
    if namespace:
        cmd += ["--namespace", namespace]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tmp_root():
    """A short temp dir (unix socket paths are limited to 108 bytes)."""
    d = tempfile.mkdtemp(prefix="ctrd-test-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def launch_ctrd(base: Path, config_text: str | None = None, env: dict | None = None,
                wait: bool = True, extra_args: list[str] | None = None,
                root: Path | None = None, log_name: str = "log") -> Proc:
    """Start ctrd with its root, state and socket under ``base`` (in its own session, so a
    SIGKILL of the group leaves nothing); wait until ``ctr version`` answers. The caller
    stops it (:meth:`Proc.stop`), also when the test fails."""
    base.mkdir(parents=True, exist_ok=True)
    root_dir = root or base / "root"
    p_env = dict(os.environ, **(env or {}))
    args = ctrd_command() + ["--root", str(root_dir), "--state", str(base / "state"),
                             "--address", str(base / "ctrd.sock"), "--log-level", "debug"]
    if config_text is not None:
        (base / "config.toml").write_text(config_text)
        args += ["--config", str(base / "config.toml")]
    args += extra_args or []
    log = base / log_name
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=p_env,
                                start_new_session=True)
    p = Proc(proc, str(base / "ctrd.sock"), root_dir, base / "state", log, p_env)
    if wait:
        try:
            wait_for_socket(p)
        except BaseException:
            p.stop()
            raise
    return p


@pytest.fixture
def start_ctrd(tmp_root):
    """Factory: start a ctrd daemon; ``start_ctrd(config_text=..., env=..., wait=True)``."""
    started: list[Proc] = []

    def start(config_text: str | None = None, env: dict | None = None, wait: bool = True,
              name: str = "ctrd", extra_args: list[str] | None = None,
              root: Path | None = None) -> Proc:
        p = launch_ctrd(tmp_root / name, config_text, env, wait=False, extra_args=extra_args,
                        root=root, log_name=f"log.{len(started)}")
        started.append(p)
        if wait:
            wait_for_socket(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture(params=["ctr-1.6", "ctr-2.3.4"])
def ctr_client(request, monkeypatch):
    """Runs the test once with each real ``ctr``: Debian's 1.6 and containerd 2.3.4's (from
    ``../shared/bin``). :func:`ctr` (and ``conftest.CTR``) use that one for the test; the
    ``containerd`` fixture then starts the matching reference daemon."""
    import conftest
    import containerd2

    if request.param == "ctr-2.3.4":
        if not containerd2.available():
            pytest.skip(f"containerd 2.3.4 is not in {containerd2.BIN_DIR}")
        monkeypatch.setattr(conftest, "CTR", str(containerd2.CTR))
    elif CTR16 is None:
        pytest.skip("ctr is not installed (apt-get install containerd)")
    return request.param


@pytest.fixture
def ctrd(start_ctrd) -> Proc:
    return start_ctrd()


@pytest.fixture
def containerd(request, tmp_root):
    """The reference: containerd 1.6 from Debian, paths moved under a temp dir; containerd
    2.3.4 when the test runs with ctr 2.3.4 (fixture :func:`ctr_client`)."""
    if "ctr_client" in request.fixturenames and \
            request.getfixturevalue("ctr_client") == "ctr-2.3.4":
        yield from _containerd2(tmp_root)
        return
    if CONTAINERD is None:
        pytest.skip("containerd is not installed (apt-get install containerd)")
    base = tmp_root / "containerd"
    base.mkdir()
    cfg = base / "config.toml"
    cfg.write_text(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                   f'[grpc]\naddress = "{base}/c.sock"\n'
                   f'[ttrpc]\naddress = "{base}/c.sock.ttrpc"\n')
    log = base / "log"
    # The venv's bin dir first on PATH: containerd finds shim binaries there
    # (containerd-shim-ctrd-v2 for runtime io.containerd.ctrd.v2).
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    with open(log, "w") as out:
        proc = subprocess.Popen([CONTAINERD, "--config", str(cfg)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    p = Proc(proc, str(base / "c.sock"), base / "root", base / "state", log, env)
    try:
        wait_for_socket(p, timeout=30)
        yield p
    finally:
        p.stop()


def _containerd2(tmp_root):
    import containerd2

    base = tmp_root / "containerd2"
    d = containerd2.Containerd2.start(base, cni_bin_dirs=["/usr/lib/cni"],
                                      cni_conf_dir=str(base / "net.d"))
    p = Proc(d.proc, d.address, base / "root", base / "state", d.log, d.env)
    try:
        yield p
    finally:
        d.stop()


@pytest.fixture
def c2(tmp_root):
    """containerd 2.3.4 (tests/containerd2.py) on paths under tmp_root, stopped after."""
    import containerd2

    if not containerd2.available():
        pytest.skip(f"containerd 2.3.4 is not at {containerd2.BIN_DIR}")
    d = containerd2.Containerd2.start(tmp_root / "c2", cni_bin_dirs=["/opt/cni/bin"],
                                      cni_conf_dir=str(tmp_root / "c2" / "net.d"))
    yield d
    d.stop()


@pytest.fixture(scope="session")
def registry():
    """A local plain-HTTP registry (Debian's docker-registry on 127.0.0.1:<free port>) holding
    the test images of :mod:`images` (built offline, deterministic digests):
    ``registry.address``, ``registry.ref("busybox")`` -> "127.0.0.1:PORT/test/busybox:latest",
    ``registry.digest(name)``, ``registry.pushed[name]`` (the :class:`images.Image`).
    Stopped and its temp dir removed at the end of the session, also on failure."""
    import images

    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    base = Path(tempfile.mkdtemp(prefix="ctrd-registry-", dir="/tmp"))
    reg = None
    try:
        built = images.build_images(base / "layouts")
        reg = images.Registry.start(base / "registry")
        for image in built.values():
            reg.push(image)
        yield reg
    finally:
        if reg is not None:
            reg.stop()
        shutil.rmtree(base, ignore_errors=True)
