"""containerd.services.tasks.v1.Tasks: the container store for what to run, the runtime v2
task manager (:mod:`ctrd.runtime.manager`) for running it.

As containerd's tasks service: a task is found through its container (NotFound ``task <id> not
found`` when there is none); Wait is accepted on a CREATED task; List shows a task whose shim
does not answer within the state deadline as UNKNOWN instead of failing the whole list.
Task events come from the shims (they publish over the daemon's ttrpc socket).
"""

from __future__ import annotations

import asyncio
import logging

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from ctrd import errdefs
from ctrd.api.containerd.services.tasks.v1 import tasks_pb2 as pb
from ctrd.api.containerd.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
from ctrd.api.containerd.types import metrics_pb2
from ctrd.api.containerd.types.task import task_pb2 as task_types
from ctrd.deprecation import RUNC_OPTIONS_TASK_API_ADDRESS, RUNC_OPTIONS_TASK_API_VERSION
from ctrd.runtime.manager import CreateOpts, TaskManager
from ctrd.services.grpcutil import namespace

log = logging.getLogger("ctrd.tasks")

_EMPTY = empty_pb2.Empty()


def _any(v) -> any_pb2.Any | None:
    if v is None:
        return None
    return any_pb2.Any(type_url=v.type_url, value=v.value)


def _deprecated_endpoint(options) -> tuple[str, int]:
    """The task API endpoint runc options carried before containerd 2.3 (fields 12, 13)."""
    if options is None or options.type_url.rsplit("/", 1)[-1] != "containerd.runc.v1.Options":
        return "", 0
    from google.protobuf.message import DecodeError

    from ctrd.api.containerd.runc.options import oci_pb2

    o = oci_pb2.Options()
    try:
        o.ParseFromString(options.value)
    except DecodeError as e:
        raise errdefs.InvalidArgument(f"runc options: {e}") from None
    return o.task_api_address, o.task_api_version


class TasksService(pb_grpc.TasksServicer):
    def __init__(self, containers, manager: TaskManager, warnings=None) -> None:
        self.containers = containers
        self.manager = manager
        self.warnings = warnings  # ctrd.deprecation.Deprecations, or None

    def register_grpc(self, server) -> None:
        pb_grpc.add_TasksServicer_to_server(self, server)

    async def _container(self, ns: str, id_: str):
        # One record: read on the loop (see ctrd.metadata.db), no worker-thread hop.
        return self.containers.get(ns, id_)

    async def _task(self, context, id_: str):
        ns = namespace(context)
        await self._container(ns, id_)
        try:
            return self.manager.get(ns, id_)
        except errdefs.NotFound:
            raise errdefs.NotFound(f"task {id_} not found") from None

    async def Create(self, request, context):
        ns = namespace(context)
        c = await self._container(ns, request.container_id)
        if request.HasField("checkpoint") and request.checkpoint.digest:
            raise errdefs.Unimplemented("creating a task from a checkpoint")
        if c.spec is None:
            raise errdefs.FailedPrecondition(f"container {request.container_id} has no spec")
        address, version = request.task_api_address, request.task_api_version
        old_address, old_version = _deprecated_endpoint(
            request.options if request.HasField("options") else None)
        if not address and old_address:  # as containerd 2.3.4: used, and reported
            address = old_address
            self._warn(RUNC_OPTIONS_TASK_API_ADDRESS)
        if not version and old_version:
            version = old_version
            self._warn(RUNC_OPTIONS_TASK_API_VERSION)
        opts = CreateOpts(
            spec=c.spec.value, runtime=request.runtime_path or c.runtime.name,
            runtime_options=_any(c.runtime.options),
            task_options=request.options if request.HasField("options") else None,
            rootfs=list(request.rootfs), stdin=request.stdin, stdout=request.stdout,
            stderr=request.stderr, terminal=request.terminal, sandbox_id=c.sandbox,
            task_api_address=address, task_api_version=version)
        try:
            self.manager.get(ns, request.container_id)
        except errdefs.NotFound:
            pass
        else:
            raise errdefs.AlreadyExists(f"task {request.container_id}")
        task = await self.manager.create(ns, request.container_id, opts)
        # The shim's Create answered the pid (ours and runc's do): no State round trip then.
        pid = task.created_pid or (await task.state()).pid
        return pb.CreateTaskResponse(container_id=request.container_id, pid=pid)

    def _warn(self, id_: str) -> None:
        if self.warnings is not None:
            self.warnings.emit(id_)

    async def Start(self, request, context):
        task = await self._task(context, request.container_id)
        resp = await task.start(request.exec_id)
        return pb.StartResponse(pid=resp.pid)

    async def Delete(self, request, context):
        ns = namespace(context)
        await self._task(context, request.container_id)
        exit_ = await self.manager.delete(ns, request.container_id)
        return pb.DeleteResponse(id=request.container_id, pid=exit_.pid,
                                 exit_status=exit_.status, exited_at=exit_.timestamp)

    async def DeleteProcess(self, request, context):
        task = await self._task(context, request.container_id)
        resp = await task.delete_process(request.exec_id)
        return pb.DeleteResponse(id=request.exec_id, pid=resp.pid,
                                 exit_status=resp.exit_status, exited_at=resp.exited_at)

    @staticmethod
    async def _process(task, exec_id: str = "") -> task_types.Process:
        try:
            s = await task.state(exec_id)
        except errdefs.NotFound:
            raise
        except errdefs.CtrdError as e:
            log.error("get state for %s: %s", exec_id or task.id, e)
            return task_types.Process(id=exec_id or task.id, status=task_types.UNKNOWN)
        return task_types.Process(id=exec_id or task.id, pid=s.pid, status=s.status,
                                  stdin=s.stdin, stdout=s.stdout, stderr=s.stderr,
                                  terminal=s.terminal, exit_status=s.exit_status,
                                  exited_at=s.exited_at)

    async def Get(self, request, context):
        task = await self._task(context, request.container_id)
        return pb.GetResponse(process=await self._process(task, request.exec_id))

    async def List(self, request, context):
        ns = namespace(context)

        async def one(task):
            try:
                return await self._process(task)
            except errdefs.NotFound:
                return None  # deleted meanwhile

        found = await asyncio.gather(*(one(t) for t in self.manager.list(ns)))
        return pb.ListTasksResponse(tasks=[p for p in found if p is not None])

    async def Kill(self, request, context):
        task = await self._task(context, request.container_id)
        await task.kill(request.signal, request.all, request.exec_id)
        return _EMPTY

    async def Exec(self, request, context):
        if not request.exec_id:
            raise errdefs.InvalidArgument("exec id cannot be empty")
        task = await self._task(context, request.container_id)
        await task.exec(request.exec_id, terminal=request.terminal, stdin=request.stdin,
                        stdout=request.stdout, stderr=request.stderr, spec=request.spec)
        return _EMPTY

    async def ResizePty(self, request, context):
        task = await self._task(context, request.container_id)
        await task.resize_pty(request.exec_id, request.width, request.height)
        return _EMPTY

    async def CloseIO(self, request, context):
        task = await self._task(context, request.container_id)
        if request.stdin:
            await task.close_io(request.exec_id, True)
        return _EMPTY

    async def Pause(self, request, context):
        task = await self._task(context, request.container_id)
        await task.pause()
        return _EMPTY

    async def Resume(self, request, context):
        task = await self._task(context, request.container_id)
        await task.resume()
        return _EMPTY

    async def ListPids(self, request, context):
        task = await self._task(context, request.container_id)
        resp = await task.pids()
        return pb.ListPidsResponse(processes=resp.processes)

    async def Checkpoint(self, request, context):
        raise errdefs.Unimplemented("checkpoint is not supported by ctrd yet")

    async def Update(self, request, context):
        task = await self._task(context, request.container_id)
        await task.update(request.resources, dict(request.annotations))
        return _EMPTY

    async def Metrics(self, request, context):
        ns = namespace(context)
        from ctrd import filters

        match = filters.parse_all(*request.filters) if request.filters else None
        out = []

        async def one(task):
            if match is not None and not match.match(filters.adaptor_from(
                    {"id": task.id, "namespace": ns, "runtime": task.runtime}, {})):
                return
            ts = timestamp_pb2.Timestamp()
            ts.GetCurrentTime()
            try:
                stats = await task.stats()
            except errdefs.CtrdError as e:
                if not isinstance(e, errdefs.NotFound):
                    log.error("collecting metrics for %s: %s", task.id, e)
                return
            out.append(metrics_pb2.Metric(timestamp=ts, id=task.id, data=stats.stats))

        await asyncio.gather(*(one(t) for t in self.manager.list(ns)))
        out.sort(key=lambda m: m.id)
        return pb.MetricsResponse(metrics=out)

    async def Wait(self, request, context):
        task = await self._task(context, request.container_id)
        resp = await task.wait(request.exec_id)
        return pb.WaitResponse(exit_status=resp.exit_status, exited_at=resp.exited_at)
