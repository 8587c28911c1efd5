"""A minimal shim that serves ``containerd.runtime.sandbox.v1.Sandbox`` over ttrpc, for testing
the daemon's ``shim`` sandbox controller against the real protocol (start command, address
answer, ttrpc calls, ``delete`` command) while no shim of ctrd's or containerd's serves the
sandbox service. Its sandbox is one real process: ``sleep`` started by StartSandbox.

    <python> tests/sandbox_shim.py -namespace NS -address A -publish-binary B -id ID start

prints ``unix://<bundle>/s.sock`` once its server (a daemonised child) listens. Calls:
Create remembers the bundle; Start runs ``sleep 1000000`` (its pid); Stop SIGKILLs it;
Wait answers its exit; Status answers ``running``/``stopped``; Shutdown (sandbox or task
service) makes the shim exit. ``delete`` prints an empty DeleteResponse.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _ts(ns: int):
    from google.protobuf import timestamp_pb2

    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(ns)
    return t


class SandboxService:
    def __init__(self, stop: asyncio.Event) -> None:
        from ctrd.api.containerd.runtime.sandbox.v1 import sandbox_pb2 as pb

        self.pb, self.stop = pb, stop
        self.proc: subprocess.Popen | None = None
        self.created = 0
        self.exit: tuple[int, int] | None = None
        self.exited = asyncio.Event()

    async def CreateSandbox(self, req, ctx):
        self.bundle = req.bundle_path
        return self.pb.CreateSandboxResponse()

    async def StartSandbox(self, req, ctx):
        self.proc = subprocess.Popen(["sleep", "1000000"])
        self.created = time.time_ns()
        asyncio.get_running_loop().run_in_executor(None, self._reap)
        return self.pb.StartSandboxResponse(pid=self.proc.pid, created_at=_ts(self.created))

    def _reap(self) -> None:
        rc = self.proc.wait()
        self.exit = (128 - rc if rc < 0 else rc, time.time_ns())
        self._loop.call_soon_threadsafe(self.exited.set)

    async def Platform(self, req, ctx):
        from ctrd.api.containerd.types import platform_pb2

        return self.pb.PlatformResponse(platform=platform_pb2.Platform(
            os="linux", architecture="amd64"))

    async def StopSandbox(self, req, ctx):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.exited.wait()
        return self.pb.StopSandboxResponse()

    async def WaitSandbox(self, req, ctx):
        await self.exited.wait()
        return self.pb.WaitSandboxResponse(exit_status=self.exit[0],
                                           exited_at=_ts(self.exit[1]))

    async def SandboxStatus(self, req, ctx):
        running = self.proc is not None and self.exit is None
        return self.pb.SandboxStatusResponse(
            sandbox_id=req.sandbox_id, pid=self.proc.pid if self.proc else 0,
            state="running" if running else "stopped", info={"shim": "sandbox_shim"},
            created_at=_ts(self.created), exited_at=_ts(self.exit[1] if self.exit else 0))

    async def PingSandbox(self, req, ctx):
        return self.pb.PingResponse()

    async def ShutdownSandbox(self, req, ctx):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        asyncio.get_running_loop().call_later(0.05, self.stop.set)
        return self.pb.ShutdownSandboxResponse()

    async def SandboxMetrics(self, req, ctx):
        from ctrd.api.containerd.types import metrics_pb2

        return self.pb.SandboxMetricsResponse(metrics=metrics_pb2.Metric(id=req.sandbox_id))


class TaskShutdown:
    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop

    async def Shutdown(self, req, ctx):
        from google.protobuf import empty_pb2

        asyncio.get_running_loop().call_later(0.05, self.stop.set)
        return empty_pb2.Empty()


async def serve(path: str, ready_fd: int) -> None:
    from ctrd.api.containerd.runtime.sandbox.v1 import sandbox_pb2
    from ctrd.api.containerd.runtime.v2.task import shim_pb2
    from ctrd.ttrpc.server import Server

    stop = asyncio.Event()
    svc = SandboxService(stop)
    svc._loop = asyncio.get_running_loop()
    server = Server()
    server.register_service(sandbox_pb2.DESCRIPTOR.services_by_name["Sandbox"], svc)
    server.register_service(shim_pb2.DESCRIPTOR.services_by_name["Task"], TaskShutdown(stop))
    await server.start(path)
    os.write(ready_fd, b"ok")
    os.close(ready_fd)
    await stop.wait()
    await server.stop(1.0)
    if svc.proc is not None and svc.proc.poll() is None:
        svc.proc.kill()
        svc.proc.wait()


def main(argv: list[str]) -> int:
    command = argv[-1]
    if command == "delete":
        from ctrd.api.containerd.runtime.v2.task import shim_pb2

        sys.stdout.buffer.write(shim_pb2.DeleteResponse(exit_status=137).SerializeToString())
        return 0
    if command != "start":
        print(f"unknown command {command}", file=sys.stderr)
        return 1
    path = os.path.join(os.getcwd(), "s.sock")
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            asyncio.run(serve(path, w))
        finally:
            os._exit(0)
    os.close(w)
    if os.read(r, 2) != b"ok":
        print("sandbox shim failed to start", file=sys.stderr)
        return 1
    sys.stdout.write(f"unix://{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
