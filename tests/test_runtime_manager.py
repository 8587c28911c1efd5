"""The runtime v2 task manager on its own (no gRPC): real shims, real runc, a real rootfs.

Shims under test: containerd's own ``containerd-shim-runc-v2`` (the reference for the
protocol) and, when installed, ctrd's ``containerd-shim-ctrd-v2``. Each test checks that no
bundle, mount or shim process outlives the task.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import containerd2
from ctrd import errdefs
from ctrd.api.containerd.types import mount_pb2
from ctrd.runtime.manager import CreateOpts, TaskManager

pytestmark = pytest.mark.integration

# Unique per run: runc's state dirs are shared machine-wide (/run/containerd/runc/<ns>).
NS = f"ctrd-test-{os.getpid()}"

SHIMS = {
    "go": "containerd-shim-runc-v2",                                 # Debian's 1.6: shim v2
    "go-2.3.4": str(containerd2.BIN_DIR / "containerd-shim-runc-v2"),  # bootstrap, task v3
    "ctrd": "containerd-shim-ctrd-v2",
}


def _shim_path(name: str) -> str | None:
    from ctrd.runtime.shimclient import resolve_binary

    try:
        return resolve_binary(name)
    except errdefs.NotFound:
        return None


@pytest.fixture(params=sorted(SHIMS))
def shim(request) -> str:
    path = _shim_path(SHIMS[request.param])
    if path is None:
        pytest.skip(f"{SHIMS[request.param]} is not installed")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    return path


def make_rootfs(base: Path) -> Path:
    """A minimal root filesystem: the host's static busybox and its applet links."""
    root = base / "image-rootfs"
    (root / "bin").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (root / d).mkdir()
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "echo", "sleep", "cat", "true", "false", "ps"):
        os.symlink("busybox", root / "bin" / applet)
    return root


def make_spec(args: list[str], tmp: Path) -> bytes:
    subprocess.run(["runc", "spec"], cwd=tmp, check=True)
    spec = json.loads((tmp / "config.json").read_text())
    (tmp / "config.json").unlink()
    spec["process"]["args"] = args
    spec["process"]["terminal"] = False
    spec["process"]["env"] = ["PATH=/bin"]
    spec["root"] = {"path": "rootfs", "readonly": False}
    return json.dumps(spec).encode()


class Env:
    def __init__(self, base: Path, shim: str) -> None:
        from ctrd.events.exchange import Exchange

        self.base = base
        self.exchange = Exchange()
        self.manager = TaskManager(str(base / "root"), str(base / "state"),
                                   str(base / "ctrd.sock"), str(base / "ctrd.sock.ttrpc"),
                                   self.exchange, shims={"test.runtime.v1": _Spec(shim)})
        self.rootfs = make_rootfs(base)
        self.ttrpc = None

    async def start(self) -> None:
        from ctrd.services.events import EventsService
        from ctrd.ttrpc.server import Server

        self.ttrpc = Server()
        EventsService(self.exchange).register_ttrpc(self.ttrpc)
        await self.ttrpc.start(str(self.base / "ctrd.sock.ttrpc"))

    async def stop(self) -> None:
        for t in self.manager.list():
            try:
                await t.kill(signal.SIGKILL, all_=True)
                await asyncio.wait_for(t.wait(), 10)  # a running task cannot be deleted
            except (errdefs.CtrdError, TimeoutError):
                pass
            try:
                await self.manager.delete(t.namespace, t.id)
            except errdefs.CtrdError:
                pass
        await self.manager.close()
        await self.ttrpc.stop(0.5)

    def opts(self, args: list[str], **kw) -> CreateOpts:
        spec_dir = self.base / "spec"
        spec_dir.mkdir(exist_ok=True)
        mounts = [mount_pb2.Mount(type="bind", source=str(self.rootfs),
                                  options=["rbind", "rw"])]
        return CreateOpts(spec=make_spec(args, spec_dir), runtime="test.runtime.v1",
                          rootfs=mounts, **kw)


class _Spec:
    def __init__(self, binary: str) -> None:
        self.binary, self.options = binary, {}


def run(coro):
    return asyncio.run(coro)


def _no_leftovers(base: Path) -> None:
    state = base / "state"
    left = [str(p) for p in state.rglob("*")] if state.exists() else []
    assert left == [] or all(Path(p).is_dir() and not any(Path(p).iterdir())
                             for p in left), left
    with open("/proc/self/mountinfo") as f:
        assert str(base) not in f.read()


def _fifo(base: Path, name: str) -> str:
    path = base / name
    os.mkfifo(path)
    return str(path)


def test_run_to_exit_status_and_delete(tmp_path, shim):
    env = Env(tmp_path, shim)

    async def main():
        await env.start()
        try:
            out = tmp_path / "out"
            out_fifo = _fifo(tmp_path, "stdout")
            reader = os.open(out_fifo, os.O_RDONLY | os.O_NONBLOCK)
            err_fifo = _fifo(tmp_path, "stderr")
            err_reader = os.open(err_fifo, os.O_RDONLY | os.O_NONBLOCK)
            sub = env.exchange.subscribe('topic~="/tasks/"')
            task = await env.manager.create(NS, "c1", env.opts(
                ["sh", "-c", "echo hello; exit 7"], stdout=out_fifo, stderr=err_fifo))
            st = await task.state()
            assert st.status == 1  # CREATED
            waiter = asyncio.ensure_future(task.wait())
            await task.start()
            resp = await asyncio.wait_for(waiter, 30)
            assert resp.exit_status == 7
            data = b""
            deadline = time.monotonic() + 5
            while b"\n" not in data and time.monotonic() < deadline:
                try:
                    data += os.read(reader, 4096)
                except BlockingIOError:
                    await asyncio.sleep(0.02)
            os.close(reader)
            os.close(err_reader)
            out.write_bytes(data)
            assert data == b"hello\n"
            assert (await task.state()).status == 3  # STOPPED
            ex = await env.manager.delete(NS, "c1")
            assert ex.status == 7
            with pytest.raises(errdefs.NotFound):
                env.manager.get(NS, "c1")
            topics = []
            while True:
                try:
                    ev = await asyncio.wait_for(sub.__anext__(), 2)
                except TimeoutError:
                    break
                topics.append(ev.topic)
                if ev.topic == "/tasks/delete":
                    break
            sub.close()
            assert topics[:4] == ["/tasks/create", "/tasks/start", "/tasks/exit",
                                  "/tasks/delete"], topics
        finally:
            await env.stop()

    run(main())
    _no_leftovers(tmp_path)


def test_create_failure_leaves_nothing(tmp_path, shim):
    env = Env(tmp_path, shim)

    async def main():
        await env.start()
        try:
            with pytest.raises(errdefs.CtrdError) as e:
                await env.manager.create(NS, "bad", env.opts(["/no/such/binary"]))
            assert "no/such/binary" in str(e.value) or "exec" in str(e.value)
            assert env.manager.list() == []
        finally:
            await env.stop()

    run(main())
    _no_leftovers(tmp_path)


def test_shim_killed_reports_exit_and_cleans_up(tmp_path, shim):
    env = Env(tmp_path, shim)

    async def main():
        await env.start()
        try:
            task = await env.manager.create(NS, "victim", env.opts(["sleep", "1000"]))
            await task.start()
            shim_pid = (await task.call("Connect", __import__(
                "ctrd.api.containerd.runtime.v2.task.shim_pb2", fromlist=["x"]
            ).ConnectRequest(id="victim"), __import__(
                "ctrd.api.containerd.runtime.v2.task.shim_pb2", fromlist=["x"]
            ).ConnectResponse)).shim_pid
            init_pid = (await task.state()).pid
            waiter = asyncio.ensure_future(task.wait())
            os.kill(shim_pid, signal.SIGKILL)
            resp = await asyncio.wait_for(waiter, 30)
            assert resp.exit_status == 137
            for _ in range(100):  # the cleanup runs in the background
                t = env.manager.get(NS, "victim")
                if t is not task:
                    break
                await asyncio.sleep(0.05)
            st = await t.state()
            assert (st.status, st.exit_status) == (3, 137)  # STOPPED, reported until deleted
            assert (await env.manager.delete(NS, "victim")).status == 137
            assert env.manager.list() == []
            for _ in range(100):
                if not os.path.exists(f"/proc/{init_pid}"):
                    break
                await asyncio.sleep(0.05)
            assert not os.path.exists(f"/proc/{init_pid}"), "container process outlived cleanup"
        finally:
            await env.stop()

    run(main())
    _no_leftovers(tmp_path)


def test_reload_after_daemon_restart(tmp_path, shim):
    env = Env(tmp_path, shim)

    async def first():
        await env.start()
        task = await env.manager.create(NS, "keep", env.opts(["sleep", "1000"]))
        await task.start()
        await env.manager.close()  # the daemon goes away; the shim stays
        await env.ttrpc.stop(0.5)

    run(first())
    env2 = Env(tmp_path / "x", shim) if False else env

    async def second():
        await env2.start()
        try:
            await env2.manager.load()
            t = env2.manager.get(NS, "keep")
            assert (await t.state()).status == 2  # RUNNING
            waiter = asyncio.ensure_future(t.wait())
            await t.kill(signal.SIGKILL)
            assert (await asyncio.wait_for(waiter, 30)).exit_status == 137
            await env2.manager.delete(NS, "keep")
        finally:
            await env2.stop()

    run(second())
    _no_leftovers(tmp_path)


def test_unknown_runtime_is_a_clear_error(tmp_path):
    env = Env(tmp_path, "/bin/true")

    async def main():
        opts = env.opts(["true"])
        opts.runtime = "io.containerd.nosuch.v9"
        with pytest.raises(errdefs.NotFound) as e:
            await env.manager.create(NS, "x", opts)
        assert "containerd-shim-nosuch-v9" in str(e.value)
        opts.runtime = "bad"
        with pytest.raises(errdefs.InvalidArgument):
            await env.manager.create(NS, "x", opts)

    run(main())
    _no_leftovers(tmp_path)


# What a broken shim's ``start`` may print, and what ctrd says about it.
BAD_STARTS = [
    (r"printf '\010\377\377\377\377\377\022\001'", "unreadable start answer"),
    ("echo '{\"version\": 9, \"address\": \"unix:///x\", \"protocol\": \"ttrpc\"}'",
     "unsupported shim version (9)"),
    ("echo '{\"version\": 3, \"address\": \"vsock://3:1024\", \"protocol\": \"grpc\"}'",
     "unsupported shim protocol 'grpc'"),
    ("printf '\010\003\022\011tcp://x:1\032\005ttrpc'", "unsupported address 'tcp://x:1'"),
    ("echo unix://BASE/nothing.sock", "nothing.sock"),
    ("head -c 2000000 /dev/zero; exit 0", "unreadable start answer"),
    ("echo broken >&2; exit 3", "broken"),
]


@pytest.mark.parametrize("script,message", BAD_STARTS)
def test_shims_answering_start_with_garbage(tmp_path, script, message):
    """Hostile bootstrap answers: a clear error naming the problem, nothing left (bundle,
    bootstrap.json, processes), the manager still working."""
    shim = tmp_path / "bad-shim"
    shim.write_text("#!/bin/sh\n[ \"$1\" = -info ] && exit 0\n"
                    "case \"$*\" in *start*) cat >/dev/null; "
                    + script.replace("BASE", str(tmp_path)) + ";; *) exit 0;; esac\n")
    shim.chmod(0o755)
    env = Env(tmp_path, str(shim))

    async def main():
        await env.start()
        try:
            with pytest.raises(errdefs.CtrdError) as e:
                await env.manager.create(NS, "bad", env.opts(["true"]))
            assert message in str(e.value), str(e.value)[:300]
            assert env.manager.list() == []
        finally:
            await env.stop()

    run(main())
    _no_leftovers(tmp_path)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _cmd_has(p, str(shim))]


def _cmd_has(pid: str, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False


def test_configured_runtime_options_are_defaults_under_the_containers():
    """A runtime's options from the config (Go field names, as containerd's configs) fill
    what the container's own runc options leave unset; bad config values name the runtime."""
    from google.protobuf import any_pb2

    from ctrd.api.containerd.runc.options import oci_pb2

    class Spec:
        binary, options = "containerd-shim-ctrd-v2", {"BinaryName": "crun", "Root": "/r"}

    m = TaskManager("/nonexistent", "/nonexistent", "a", "b", None, shims={"x.y.v2": Spec()})
    given = any_pb2.Any(type_url="containerd.runc.v1.Options",
                        value=oci_pb2.Options(root="/mine").SerializeToString())
    out = oci_pb2.Options()
    out.ParseFromString(m._with_defaults("x.y.v2", given).value)
    assert (out.binary_name, out.root) == ("crun", "/mine")
    out.ParseFromString(m._with_defaults("x.y.v2", None).value)
    assert (out.binary_name, out.root) == ("crun", "/r")
    assert m._with_defaults("other.v2", given) is given
    Spec.options = {"BinaryName": 7}
    bad = TaskManager("/n", "/n", "a", "b", None, shims={"x.y.v2": Spec()})
    with pytest.raises(errdefs.InvalidArgument) as e:
        bad._with_defaults("x.y.v2", None)
    assert "x.y.v2" in str(e.value)


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def test_task_api_address_joins_a_running_shim(tmp_path):
    """CreateTaskRequest.task_api_address (containerd 2.3): the task is created in the shim
    serving that task API (shim API 3) instead of a shim of its own; bad addresses are clear
    errors that leave nothing."""
    from ctrd.runtime import bootstrap

    shim = _shim_path("containerd-shim-ctrd-v2")
    if shim is None or shutil.which("runc") is None:
        pytest.skip("ctrd's shim or runc is not installed")
    env = Env(tmp_path, shim)

    async def main():
        await env.start()
        try:
            first = await env.manager.create(NS, "first", env.opts(["sleep", "1000"]))
            await first.start()
            address, version = bootstrap.read_result(first.bundle.path)
            assert version == 3  # a fresh manager's first task: BootstrapParams, answered 3
            for bad, kind, text in [
                (address, errdefs.InvalidArgument, "<protocol>+<unix|vsock|tcp>"),
                ("grpc+vsock://3:1024", errdefs.NotImplemented_, "'grpc'"),
                (f"ttrpc+unix://{tmp_path}/nothing.sock", errdefs.CtrdError, "nothing.sock"),
            ]:
                with pytest.raises(kind) as e:
                    await env.manager.create(NS, "bad", env.opts(
                        ["true"], task_api_address=bad, task_api_version=3))
                assert text in str(e.value), str(e.value)
                assert not (tmp_path / "state" / NS / "bad").exists()
            joined = await env.manager.create(NS, "joined", env.opts(
                ["sleep", "1000"], task_api_address="ttrpc+" + address, task_api_version=3))
            pid = (await joined.start()).pid
            assert _ppid(pid) == _ppid((await first.state()).pid)  # one shim for both
            # version 2 (a shim that serves one task): a shim of its own, as containerd does
            own = await env.manager.create(NS, "own", env.opts(
                ["sleep", "1000"], task_api_address="ttrpc+" + address, task_api_version=2))
            own_pid = (await own.start()).pid
            assert _ppid(own_pid) != _ppid(pid)
        finally:
            await env.stop()

    run(main())
    _no_leftovers(tmp_path)
