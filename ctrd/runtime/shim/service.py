"""The ``containerd.task.v2.Task`` service of the shim.

Holds the shim's containers (normally one; several when a daemon groups containers into one
shim, e.g. a pod) keyed by id. Handlers run on the loop thread and call the runtime
synchronously; Wait answers later through a :class:`~ctrd.runtime.shim.server.Deferred`.
Events are queued on the :class:`~ctrd.runtime.shim.events.Publisher` in the order of the
operations that caused them (a start is always published before its exit).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

from google.protobuf import empty_pb2

from ctrd import errdefs, typeurl
from ctrd.api.containerd.events import task_pb2 as ev
from ctrd.api.containerd.runc.options import oci_pb2
from ctrd.api.containerd.runtime.v2.task import shim_pb2 as api
from ctrd.api.containerd.types.task import task_pb2 as types
from ctrd.runtime.shim import log
from ctrd.runtime.shim.events import Publisher
from ctrd.runtime.shim.loop import Loop
from ctrd.runtime.shim.process import Init, Process
from ctrd.runtime.shim.runtime import DEFAULT_ROOT, Runtime
from ctrd.runtime.shim.server import Deferred
from ctrd.runtime.shim.stdio import Stdio

_STATUS = {"created": types.CREATED, "running": types.RUNNING, "stopped": types.STOPPED,
           "paused": types.PAUSED, "deleted": types.STOPPED}
_EMPTY = empty_pb2.Empty()
LOG_DRAIN_TIMEOUT = 2.0
#: Update with this annotation (value "1") reopens the task's CRI log file instead of applying
#: resources: ctrd's CRI plugin sends it for ReopenContainerLog after the kubelet's rotation.
REOPEN_LOG_ANNOTATION = "io.ctrd.cri.reopen-log"
OPTIONS_FILE = "options.json"  # containerd's runc shim writes the same file


def _ts(msg, ns: int) -> None:
    if ns:
        msg.seconds, msg.nanos = divmod(ns, 1_000_000_000)


def options_to_json(opts: oci_pb2.Options) -> dict:
    return {f.name: v for f, v in opts.ListFields()}


def runtime_for(bundle: str, namespace: str, opts: oci_pb2.Options) -> Runtime:
    root = os.path.join(opts.root or DEFAULT_ROOT, namespace)
    return Runtime(opts.binary_name, root, os.path.join(bundle, "log.json"),
                   opts.systemd_cgroup)


def read_options(bundle: str) -> oci_pb2.Options:
    """The options a task of ``bundle`` was created with (empty if none were written)."""
    opts = oci_pb2.Options()
    try:
        with open(os.path.join(bundle, OPTIONS_FILE), "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return opts
    for k, v in (data if isinstance(data, dict) else {}).items():
        if k in oci_pb2.Options.DESCRIPTOR.fields_by_name:
            try:
                setattr(opts, k, v)
            except (TypeError, ValueError):
                pass
    return opts


class TaskService:
    """Lifecycle: built by :func:`ctrd.runtime.shim.serving.serve`; ``on_shutdown`` is called
    (from the loop) once Shutdown found no task left."""

    def __init__(self, loop: Loop, namespace: str, publisher: Publisher,
                 default_options: oci_pb2.Options | None,
                 on_shutdown: Callable[[], None]) -> None:
        self.loop = loop
        self.namespace = namespace
        self.publisher = publisher
        self.default_options = default_options or oci_pb2.Options()
        self.on_shutdown = on_shutdown
        self.containers: dict[str, Init] = {}
        #: True while something else keeps the shim alive (a sandbox it serves)
        self.keep_alive: Callable[[], bool] = lambda: False

    # -- helpers
    def _container(self, id: str) -> Init:
        c = self.containers.get(id)
        if c is None:
            raise errdefs.NotFound("container not created")
        return c

    def _process(self, id: str, exec_id: str) -> Process:
        c = self._container(id)
        if not exec_id:
            return c
        p = c.execs.get(exec_id)
        if p is None:
            raise errdefs.NotFound(f"process {exec_id} does not exist")
        return p

    def on_exit(self, pid: int, status: int) -> None:
        """From the reaper: a child exited. A process whose output goes to a CRI log is
        reported exited once its log is drained (at most :data:`LOG_DRAIN_TIMEOUT` later), so
        whoever sees the exit finds every line in the file."""
        at = time.time_ns()
        for c in self.containers.values():
            for p in (c, *c.execs.values()):
                if p.pid != pid or p.exited or p.exiting:
                    continue
                p.exiting = True
                if p is c and c.kill_all_on_exit():
                    try:
                        c.runtime.kill(c.id, signal.SIGKILL, all=True)
                    except errdefs.CtrdError as e:
                        log.debug("kill all after init exit", error=str(e))
                if p.io is not None and p.io.draining:
                    p.io.when_drained(lambda c=c, p=p: self._exited(c, p, status, at),
                                      LOG_DRAIN_TIMEOUT)
                else:
                    self._exited(c, p, status, at)
                return

    def _exited(self, c: Init, p: Process, status: int, at: int) -> None:
        p.set_exited(status, at)
        e = ev.TaskExit(container_id=c.id, id=p.id, pid=p.pid, exit_status=status)
        _ts(e.exited_at, p.exited_at)
        self.publisher.publish("/tasks/exit", e)
        log.debug("process exited", id=p.id, pid=p.pid, status=status)

    # -- the Task service
    def Create(self, r: api.CreateTaskRequest, ctx) -> api.CreateTaskResponse:
        if not r.id:
            raise errdefs.InvalidArgument("task id must not be empty")
        if r.id in self.containers:
            raise errdefs.AlreadyExists(f"task {r.id}")
        if r.checkpoint:
            raise errdefs.NotImplemented_("restore from a checkpoint is not supported")
        opts = self.default_options
        if r.HasField("options") and r.options.type_url:
            if typeurl.name_of(r.options) != oci_pb2.Options.DESCRIPTOR.full_name:
                raise errdefs.InvalidArgument(
                    f"unsupported runtime options type {r.options.type_url!r}")
            opts = typeurl.unpack(r.options, oci_pb2.Options)
        bundle = r.bundle or os.getcwd()
        if not os.path.isfile(os.path.join(bundle, "config.json")):
            raise errdefs.InvalidArgument(f"bundle {bundle}: no config.json")
        with open(os.path.join(bundle, OPTIONS_FILE), "w") as f:
            json.dump(options_to_json(opts), f)
        with open(os.path.join(bundle, "runtime"), "w") as f:
            f.write(opts.binary_name)
        stdio = Stdio(r.stdin, r.stdout, r.stderr, r.terminal)
        init = Init(self.loop, r.id, bundle, runtime_for(bundle, self.namespace, opts), stdio,
                    opts.no_pivot_root, opts.no_new_keyring)
        init.create(list(r.rootfs))
        self.containers[r.id] = init
        init.watch_cgroup(lambda: self._oom(r.id))
        self.publisher.publish("/tasks/create", ev.TaskCreate(
            container_id=r.id, bundle=bundle, rootfs=r.rootfs, pid=init.pid,
            checkpoint=r.checkpoint,
            io=ev.TaskIO(stdin=r.stdin, stdout=r.stdout, stderr=r.stderr,
                         terminal=r.terminal)))
        log.debug("task created", id=r.id, pid=init.pid, runtime=init.runtime.binary)
        return api.CreateTaskResponse(pid=init.pid)

    def Start(self, r: api.StartRequest, ctx) -> api.StartResponse:
        p = self._process(r.id, r.exec_id)
        p.start()
        if r.exec_id:
            self.publisher.publish("/tasks/exec-started", ev.TaskExecStarted(
                container_id=r.id, exec_id=r.exec_id, pid=p.pid))
        else:
            self.publisher.publish("/tasks/start", ev.TaskStart(container_id=r.id, pid=p.pid))
        return api.StartResponse(pid=p.pid)

    def Delete(self, r: api.DeleteRequest, ctx) -> api.DeleteResponse:
        p = self._process(r.id, r.exec_id)
        p.delete()
        resp = api.DeleteResponse(pid=p.pid, exit_status=p.exit_status)
        _ts(resp.exited_at, p.exited_at)
        if not r.exec_id:
            self.containers.pop(r.id, None)
            e = ev.TaskDelete(container_id=r.id, pid=p.pid, exit_status=p.exit_status, id=r.id)
            _ts(e.exited_at, p.exited_at)
            self.publisher.publish("/tasks/delete", e)
        return resp

    def Exec(self, r: api.ExecProcessRequest, ctx) -> empty_pb2.Empty:
        c = self._container(r.id)
        if not r.exec_id:
            raise errdefs.InvalidArgument("exec id must not be empty")
        c.new_exec(r.exec_id, r.spec.value, Stdio(r.stdin, r.stdout, r.stderr, r.terminal))
        self.publisher.publish("/tasks/exec-added",
                               ev.TaskExecAdded(container_id=r.id, exec_id=r.exec_id))
        return _EMPTY

    def ResizePty(self, r: api.ResizePtyRequest, ctx) -> empty_pb2.Empty:
        self._process(r.id, r.exec_id).resize(r.width, r.height)
        return _EMPTY

    def State(self, r: api.StateRequest, ctx) -> api.StateResponse:
        c = self._container(r.id)
        p = self._process(r.id, r.exec_id)
        s = p.stdio
        resp = api.StateResponse(id=p.id, bundle=c.bundle, pid=p.pid, status=_STATUS[p.status],
                                 stdin=s.stdin, stdout=s.stdout, stderr=s.stderr,
                                 terminal=s.terminal, exit_status=p.exit_status,
                                 exec_id=r.exec_id)
        _ts(resp.exited_at, p.exited_at)
        return resp

    def Pause(self, r: api.PauseRequest, ctx) -> empty_pb2.Empty:
        self._container(r.id).pause()
        self.publisher.publish("/tasks/paused", ev.TaskPaused(container_id=r.id))
        return _EMPTY

    def Resume(self, r: api.ResumeRequest, ctx) -> empty_pb2.Empty:
        self._container(r.id).resume()
        self.publisher.publish("/tasks/resumed", ev.TaskResumed(container_id=r.id))
        return _EMPTY

    def Kill(self, r: api.KillRequest, ctx) -> empty_pb2.Empty:
        self._process(r.id, r.exec_id).kill(r.signal, r.all)
        return _EMPTY

    def Pids(self, r: api.PidsRequest, ctx) -> api.PidsResponse:
        c = self._container(r.id)
        by_pid = {e.pid: e.id for e in c.execs.values() if e.pid}
        resp = api.PidsResponse()
        for pid in c.runtime.ps(c.id):
            info = resp.processes.add(pid=pid)
            if pid in by_pid:
                info.info.CopyFrom(typeurl.pack(oci_pb2.ProcessDetails(exec_id=by_pid[pid])))
        return resp

    def CloseIO(self, r: api.CloseIORequest, ctx) -> empty_pb2.Empty:
        p = self._process(r.id, r.exec_id)
        if r.stdin:
            p.close_io()
        return _EMPTY

    def Checkpoint(self, r: api.CheckpointTaskRequest, ctx) -> empty_pb2.Empty:
        raise errdefs.NotImplemented_("checkpoint is not supported by containerd-shim-ctrd-v2")

    def Update(self, r: api.UpdateTaskRequest, ctx) -> empty_pb2.Empty:
        c = self._container(r.id)
        if r.annotations.get(REOPEN_LOG_ANNOTATION) == "1":
            if c.io is None or c.exited or c.exiting:
                raise errdefs.FailedPrecondition(f"task {r.id} is not running")
            c.io.reopen_logs()
            return _EMPTY
        c.update(r.resources.value)
        return _EMPTY

    def Wait(self, r: api.WaitRequest, ctx):
        answer = Deferred()
        self._process(r.id, r.exec_id).wait().add_callback(
            lambda d: answer.resolve(self._wait_response(d.result)))
        return answer

    @staticmethod
    def _wait_response(p: Process) -> api.WaitResponse:
        resp = api.WaitResponse(exit_status=p.exit_status)
        _ts(resp.exited_at, p.exited_at)
        return resp

    def Stats(self, r: api.StatsRequest, ctx) -> api.StatsResponse:
        c = self._container(r.id)
        return api.StatsResponse(stats=c.metrics())

    def _oom(self, id: str) -> None:
        log.info("task OOM", id=id)
        self.publisher.publish("/tasks/oom", ev.TaskOOM(container_id=id))

    def Connect(self, r: api.ConnectRequest, ctx) -> api.ConnectResponse:
        c = self.containers.get(r.id)
        return api.ConnectResponse(shim_pid=os.getpid(), task_pid=c.pid if c else 0)

    def Shutdown(self, r: api.ShutdownRequest, ctx) -> empty_pb2.Empty:
        if self.containers or self.keep_alive():
            return _EMPTY  # still serving tasks or a sandbox: containerd's shims ignore it too
        self.loop.call_soon(self.on_shutdown)
        return _EMPTY
