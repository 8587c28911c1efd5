"""The ``containerd.runtime.sandbox.v1.Sandbox`` service of ctrd's shim.

containerd 2.3.4's own ``containerd-shim-runc-v2`` does not serve this service (its pods go
through the pause-container controller); containerd's ``shim`` sandbox controller calls it
on shims that do (``plugins/sandbox/controller.go``): CreateSandbox right after the shim's
start, StartSandbox, then Platform / SandboxStatus / PingSandbox / WaitSandbox while
containers come and go through the same shim's task API, StopSandbox, ShutdownSandbox (after
which the controller deletes the shim's bundle).

What a sandbox is here: a group of tasks held by one shim process. There is no VM or pause
container behind it: the shim itself is the sandbox's process (its pid is the sandbox pid),
the tasks created in the shim are its containers. Contract:

- CreateSandbox: ``sandbox_id`` a valid identifier, ``bundle_path`` an existing directory;
  one sandbox per id (AlreadyExists). State ``created``.
- StartSandbox: ``created`` -> ``running``; pid and creation time answered. Starting a
  running sandbox is FailedPrecondition.
- StopSandbox: every task of the shim is killed (SIGKILL to all its processes; with
  ``timeout_secs`` SIGTERM first, SIGKILL after the timeout), the sandbox is ``stopped`` with
  exit status 0 and its waiters answered. Stopping a stopped sandbox is a no-op.
- WaitSandbox: answers when the sandbox is stopped (at once if it is).
- SandboxStatus: ``SANDBOX_READY`` while running, ``SANDBOX_NOTREADY`` otherwise (the CRI
  state names containerd's controllers report); ``verbose`` adds the bundle and netns paths.
- ShutdownSandbox: stops the sandbox if needed, forgets it, and lets the shim exit once it
  holds no task (the shim's ``address`` file and socket go with it).
- SandboxMetrics: the cgroup metrics of the shim's cgroup.
- Any other id is NotFound.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ctrd import errdefs, identifiers
from ctrd.api.containerd.runtime.sandbox.v1 import sandbox_pb2 as api
from ctrd.api.containerd.types import metrics_pb2, platform_pb2
from ctrd.runtime.shim import log
from ctrd.runtime.shim.loop import Loop
from ctrd.runtime.shim.server import Deferred

READY = "SANDBOX_READY"
NOT_READY = "SANDBOX_NOTREADY"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
         "i686": "386", "i386": "386"}


def host_platform() -> platform_pb2.Platform:
    """The platform of the host the shim runs on (containerd's ``platforms.DefaultSpec``)."""
    machine = os.uname().machine
    arch = _ARCH.get(machine, machine)
    variant = {"arm64": "v8", "arm": "v7" if machine == "armv7l" else "v6"}.get(arch, "")
    return platform_pb2.Platform(os="linux", architecture=arch, variant=variant)


def _ts(msg, ns: int) -> None:
    if ns:
        msg.seconds, msg.nanos = divmod(ns, 1_000_000_000)


@dataclass
class Sandbox:
    id: str
    bundle: str
    netns: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    state: str = "created"       # created | running | stopped
    created_at: int = 0          # ns since the epoch
    exited_at: int = 0
    exit_status: int = 0
    waiters: list[Deferred] = field(default_factory=list)


class SandboxService:
    """``tasks`` is the shim's :class:`~ctrd.runtime.shim.service.TaskService` (its
    containers are the sandbox's); ``on_shutdown`` is called (from the loop) when a
    ShutdownSandbox leaves the shim with nothing to serve."""

    def __init__(self, loop: Loop, tasks, on_shutdown: Callable[[], None]) -> None:
        self.loop = loop
        self.tasks = tasks
        self.on_shutdown = on_shutdown
        self.sandboxes: dict[str, Sandbox] = {}
        self._kill_timers: list = []

    @property
    def active(self) -> bool:
        """True while a sandbox lives here: the shim must not exit with its last task."""
        return bool(self.sandboxes)

    def _get(self, id: str) -> Sandbox:
        sb = self.sandboxes.get(id)
        if sb is None:
            raise errdefs.NotFound(f"sandbox {id!r} not found")
        return sb

    # -- the Sandbox service
    def CreateSandbox(self, r: api.CreateSandboxRequest, ctx) -> api.CreateSandboxResponse:
        identifiers.validate(r.sandbox_id)
        if r.sandbox_id in self.sandboxes:
            raise errdefs.AlreadyExists(f"sandbox {r.sandbox_id!r} already exists")
        bundle = r.bundle_path or os.getcwd()
        if not os.path.isabs(bundle) or not os.path.isdir(bundle):
            raise errdefs.InvalidArgument(f"sandbox bundle {bundle!r} is not a directory")
        if r.netns_path and not os.path.isabs(r.netns_path):
            raise errdefs.InvalidArgument(f"netns path {r.netns_path!r} is not absolute")
        self.sandboxes[r.sandbox_id] = Sandbox(r.sandbox_id, bundle, r.netns_path,
                                               dict(r.annotations))
        log.debug("sandbox created", id=r.sandbox_id, bundle=bundle)
        return api.CreateSandboxResponse()

    def StartSandbox(self, r: api.StartSandboxRequest, ctx) -> api.StartSandboxResponse:
        sb = self._get(r.sandbox_id)
        if sb.state != "created":
            raise errdefs.FailedPrecondition(f"sandbox {sb.id!r} is {sb.state}, not created")
        sb.state, sb.created_at = "running", time.time_ns()
        resp = api.StartSandboxResponse(pid=os.getpid())
        _ts(resp.created_at, sb.created_at)
        log.debug("sandbox started", id=sb.id)
        return resp

    def Platform(self, r: api.PlatformRequest, ctx) -> api.PlatformResponse:
        self._get(r.sandbox_id)
        return api.PlatformResponse(platform=host_platform())

    def StopSandbox(self, r: api.StopSandboxRequest, ctx) -> api.StopSandboxResponse:
        sb = self._get(r.sandbox_id)
        if sb.state == "stopped":
            return api.StopSandboxResponse()
        if r.timeout_secs:
            self._kill_tasks(signal.SIGTERM)
            self._kill_timers.append(
                self.loop.call_later(float(r.timeout_secs), self._kill_tasks, signal.SIGKILL))
        else:
            self._kill_tasks(signal.SIGKILL)
        self._stopped(sb)
        return api.StopSandboxResponse()

    def WaitSandbox(self, r: api.WaitSandboxRequest, ctx):
        sb = self._get(r.sandbox_id)
        if sb.state == "stopped":
            return self._wait_response(sb)
        answer = Deferred()
        sb.waiters.append(answer)
        return answer

    def SandboxStatus(self, r: api.SandboxStatusRequest, ctx) -> api.SandboxStatusResponse:
        sb = self._get(r.sandbox_id)
        resp = api.SandboxStatusResponse(
            sandbox_id=sb.id, pid=os.getpid() if sb.state == "running" else 0,
            state=READY if sb.state == "running" else NOT_READY)
        _ts(resp.created_at, sb.created_at)
        _ts(resp.exited_at, sb.exited_at)
        if r.verbose:
            resp.info.update({"bundle": sb.bundle, "netns": sb.netns,
                              "tasks": ",".join(sorted(self.tasks.containers))})
        return resp

    def PingSandbox(self, r: api.PingRequest, ctx) -> api.PingResponse:
        self._get(r.sandbox_id)
        return api.PingResponse()

    def ShutdownSandbox(self, r: api.ShutdownSandboxRequest,
                        ctx) -> api.ShutdownSandboxResponse:
        sb = self._get(r.sandbox_id)
        if sb.state != "stopped":
            self._kill_tasks(signal.SIGKILL)
            self._stopped(sb)
        del self.sandboxes[sb.id]
        if not self.sandboxes and not self.tasks.containers:
            self.loop.call_soon(self.on_shutdown)
        log.debug("sandbox shut down", id=sb.id)
        return api.ShutdownSandboxResponse()

    def SandboxMetrics(self, r: api.SandboxMetricsRequest,
                       ctx) -> api.SandboxMetricsResponse:
        self._get(r.sandbox_id)
        from ctrd.runtime import cgroups

        try:
            data = cgroups.load(os.getpid()).metrics_any()
        except errdefs.NotFound as e:
            raise errdefs.NotImplemented_(f"sandbox {r.sandbox_id}: no cgroup: {e}") from None
        m = metrics_pb2.Metric(id=r.sandbox_id, data=data)
        _ts(m.timestamp, time.time_ns())
        return api.SandboxMetricsResponse(metrics=m)

    # -- helpers
    def _kill_tasks(self, sig: int) -> None:
        for c in list(self.tasks.containers.values()):
            if c.exited or c.exiting or c.status not in ("running", "paused", "created"):
                continue
            try:
                c.kill(sig, True)
            except errdefs.CtrdError as e:
                log.debug("sandbox stop: kill", id=c.id, error=str(e))

    def _stopped(self, sb: Sandbox) -> None:
        sb.state, sb.exited_at, sb.exit_status = "stopped", time.time_ns(), 0
        waiters, sb.waiters = sb.waiters, []
        for w in waiters:
            w.resolve(self._wait_response(sb))
        log.debug("sandbox stopped", id=sb.id)

    @staticmethod
    def _wait_response(sb: Sandbox) -> api.WaitSandboxResponse:
        resp = api.WaitSandboxResponse(exit_status=sb.exit_status)
        _ts(resp.exited_at, sb.exited_at)
        return resp
