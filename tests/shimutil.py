"""Helpers for tests of ctrd's shim (containerd-shim-ctrd-v2): finding its processes, its
mounts and sockets, and checking that nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ctrd.runtime.bootstrap import parse_start_output
from support.poll import wait_until  # noqa: F401 - for the shim tests that import it from here

SHIM = "containerd-shim-ctrd-v2"
RUNTIME = "io.containerd.ctrd.v2"
SOCKET_DIR = Path("/run/ctrd/s")


def shim_pids(marker: str = "") -> list[int]:
    """Pids of live ctrd shims (whose command line also contains ``marker``); shim templates
    (``containerd-shim-ctrd-v2 template @NAME``) are not shims: see :func:`template_pids`."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if SHIM in cmd and marker in cmd and state != "Z" and " template @" not in cmd:
            out.append(int(d))
    return out


def template_pids() -> list[int]:
    """Pids of live ctrd shim templates."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(cmd) > 2 and cmd[0].endswith(SHIM.encode()) and cmd[1] == b"template":
                out.append(int(d))
    return out


def mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def sockets() -> set[str]:
    try:
        return set(os.listdir(SOCKET_DIR))
    except FileNotFoundError:
        return set()


def stale_sockets(before: set[str]) -> set[str]:
    """Shim sockets that appeared since ``before`` and that nothing serves any more. (Live
    ones may belong to other daemons' shims: the directory is machine-wide.)"""
    import socket

    out = set()
    for name in sockets() - before:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(SOCKET_DIR / name))
        except FileNotFoundError:
            continue
        except OSError:
            out.add(name)
        finally:
            s.close()
    return out


def rss_pss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, v = line.split(":", 1)
        fields[k] = int(v.split()[0])
    return fields["Rss"], fields["Pss"]


# ----------------------------------------------------------------- driving a shim directly

SHIM_PATH = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / SHIM)


def make_rootfs(d: Path) -> Path:
    """A tiny rootfs: static busybox and a few applets (a bind mount source)."""
    (d / "bin").mkdir(parents=True)
    (d / "tmp").mkdir()
    (d / "proc").mkdir()
    (d / "dev").mkdir()
    (d / "sys").mkdir()
    import shutil

    shutil.copy("/bin/busybox", d / "bin" / "busybox")
    for a in ("sh", "echo", "cat", "sleep", "true", "ls"):
        (d / "bin" / a).symlink_to("busybox")
    return d


def make_bundle(d: Path, args: list[str], terminal: bool = False,
                annotations: dict | None = None) -> Path:
    """A bundle dir with runc's default spec running ``args`` (rootfs/ left empty: the shim
    mounts the task's rootfs there)."""
    import json
    import subprocess

    d.mkdir(parents=True)
    subprocess.run(["runc", "spec", "-b", str(d)], check=True)
    spec = json.loads((d / "config.json").read_text())
    spec["process"]["args"] = args
    spec["process"]["terminal"] = terminal
    spec["root"] = {"path": "rootfs", "readonly": False}
    if annotations:
        spec["annotations"] = annotations
    (d / "config.json").write_text(json.dumps(spec))
    (d / "rootfs").mkdir()
    os.mkfifo(d / "log")
    return d


class EventSink:
    """A ttrpc server (ctrd.ttrpc, asyncio, in a thread) that records what shims forward to
    ``Events/Forward``, and the place to make ttrpc calls to a shim from synchronous tests.
    Lifecycle: ``EventSink(path)``, use, :meth:`close`."""

    def __init__(self, path: str) -> None:
        import asyncio
        import threading

        self.path = path
        self.envelopes: list = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self.call_async(self._start())

    async def _start(self):
        from ctrd.api.containerd.services.ttrpc.events.v1 import events_pb2
        from ctrd.ttrpc.server import Server
        from google.protobuf import empty_pb2

        sink = self

        class Events:
            async def Forward(self, req, ctx):
                sink.envelopes.append(req.envelope)
                return empty_pb2.Empty()

        s = Server()
        s.register_service(events_pb2.DESCRIPTOR.services_by_name["Events"], Events())
        await s.start(self.path)
        return s

    def call_async(self, coro, timeout: float = 60):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def topics(self) -> list[str]:
        return [e.topic for e in self.envelopes]

    def close(self) -> None:
        self.call_async(self.server.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class ShimClient:
    """Synchronous calls to a shim's Task service through an :class:`EventSink`'s loop."""

    SERVICE = "containerd.task.v2.Task"

    def __init__(self, sink: EventSink, address: str, namespace: str) -> None:
        from ctrd.ttrpc.client import Client

        self.sink, self.namespace = sink, namespace
        self.client = sink.call_async(Client.connect(address.removeprefix("unix://")))

    def __call__(self, method: str, request, timeout: float = 30):
        from ctrd.api.containerd.runtime.v2.task import shim_pb2

        out = shim_pb2.DESCRIPTOR.services_by_name["Task"].methods_by_name[method].output_type
        from google.protobuf.message_factory import GetMessageClass

        return self.sink.call_async(self.client.call(
            self.SERVICE, method, request, GetMessageClass(out), timeout=timeout,
            metadata={"containerd-namespace-ttrpc": self.namespace}), timeout + 5)

    def close(self) -> None:
        self.sink.call_async(self.client.close())


# ------------------------------------------- a shim started and called by the test itself

class Direct:
    def __init__(self, base) -> None:
        self.base = base
        self.fake_daemon = str(base / "daemon.sock")  # only hashed into the shim's socket name
        self.rootfs = make_rootfs(base / "rootfs-src")
        self.runc_root = str(base / "runc")
        self.sink = EventSink(str(base / "events.sock"))
        self.ns = "shimtest"
        self.bundles: list = []
        self.clients: list[ShimClient] = []

    def start(self, id: str, args: list[str], terminal: bool = False, stdin_opts: bytes = b"",
              events: str | None = None, env: dict | None = None,
              annotations: dict | None = None):
        bundle = make_bundle(self.base / "bundles" / id, args, terminal, annotations)
        self.bundles.append(bundle)
        env = dict(os.environ, TTRPC_ADDRESS=self.sink.path if events is None else events,
                   **(env or {}))
        r = subprocess.run([SHIM_PATH, "-namespace", self.ns, "-address", self.fake_daemon,
                            "-publish-binary", "/nonexistent", "-id", id, "-debug", "start"],
                           cwd=bundle, input=stdin_opts, capture_output=True, env=env,
                           timeout=30)
        assert r.returncode == 0, r.stderr.decode()
        # a bare address, or a BootstrapResult when stdin_opts are BootstrapParams (2.3's)
        address, _ = parse_start_output(r.stdout)
        assert address.startswith("unix:///run/ctrd/s/")
        assert (bundle / "address").read_text() == address
        c = ShimClient(self.sink, address, self.ns)
        self.clients.append(c)
        return bundle, address, c

    def create_request(self, id: str, bundle, binary: str = "", **kw):
        from ctrd.api.containerd.runc.options import oci_pb2
        from ctrd.api.containerd.runtime.v2.task import shim_pb2 as api
        from ctrd.api.containerd.types import mount_pb2
        from ctrd.typeurl import pack

        req = api.CreateTaskRequest(id=id, bundle=str(bundle), **kw)
        req.rootfs.append(mount_pb2.Mount(type="bind", source=str(self.rootfs),
                                          options=["rbind", "ro"]))
        req.options.CopyFrom(pack(oci_pb2.Options(binary_name=binary, root=self.runc_root)))
        return req

    def close(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self.sink.close()


@pytest.fixture
def direct(tmp_root):
    before = sockets()
    d = Direct(tmp_root)
    try:
        yield d
        assert wait_until(lambda: not shim_pids(d.fake_daemon)), "shim still running"
        assert mounts_under(str(tmp_root)) == []
        assert stale_sockets(before) == set()
    finally:
        for pid in shim_pids(d.fake_daemon):
            os.kill(pid, signal.SIGKILL)
        for b in d.bundles:
            subprocess.run(["runc", "--root", os.path.join(d.runc_root, d.ns), "delete",
                            "--force", b.name], capture_output=True)
        for m in reversed(mounts_under(str(tmp_root))):
            subprocess.run(["umount", "-l", m], capture_output=True)
        for s in stale_sockets(before):
            os.unlink(f"/run/ctrd/s/{s}")
        d.close()
