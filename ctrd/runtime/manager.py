"""The runtime v2 task manager: one shim per task, started, tracked, reloaded and cleaned up.

Contract:
- :meth:`TaskManager.create` makes the bundle, starts the runtime's shim binary, asks it to
  create the task; any failure undoes all of it (shim told to delete and shut down, bundle
  removed) and names the cause.
- :meth:`TaskManager.delete` deletes the task in its shim, shuts the shim down and removes
  the bundle; the exit it returns is the shim's.
- A shim that goes away on its own (killed, crashed) is cleaned up as containerd does: its
  ``delete`` command runs, ``/tasks/exit`` and ``/tasks/delete`` are published with the exit it
  reports, the bundle (and the rootfs mount in it) is removed, the task disappears.
- :meth:`TaskManager.load` at daemon start reconnects to the shims of the bundles under the
  state dir (running containers stay controllable) and cleans up those whose shim is gone;
  all bundles are handled concurrently, so many dead shims do not add up serial timeouts.

Runtime names resolve to shim binaries with containerd's rule (``io.containerd.<x>.<v>`` ->
``containerd-shim-<x>-<v>``), except the names in the ``shims`` config map, which ctrd serves
with the binary (and default options) given there: by default ``io.containerd.runc.v2``
(what ``ctr`` sends) runs through ctrd's own shim, ``containerd-shim-ctrd-v2``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ctrd import errdefs
from ctrd.runtime import bootstrap, shimclient
from ctrd.runtime.bundle import Bundle, load_bundles, new_bundle
from ctrd.runtime.shimclient import Exit, ShimCommand, ShimTask

log = logging.getLogger("ctrd.runtime")

CTRD_SHIM = "containerd-shim-ctrd-v2"
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"


def parse_runc_options(fields: dict, where: str, ignore_unknown: bool = False):
    """containerd.runc.v1.Options from a config table. containerd's configs spell the keys as
    Go fields (BinaryName); protobuf's own names (binary_name) are accepted too. A bad value
    (or, unless ``ignore_unknown``, an unknown key) is InvalidArgument naming ``where``."""
    import re

    from google.protobuf import json_format

    from ctrd.api.containerd.runc.options import oci_pb2

    names = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower() if k[:1].isupper() else k: v
             for k, v in fields.items()}
    try:
        return json_format.ParseDict(names, oci_pb2.Options(),
                                     ignore_unknown_fields=ignore_unknown)
    except json_format.ParseError as e:
        raise errdefs.InvalidArgument(f"{where}: {e}") from None


@dataclass
class CreateOpts:
    """What a task is created from (the container's record plus the Tasks/Create request)."""

    spec: bytes                      # OCI spec JSON (the container's spec Any value)
    runtime: str                     # runtime name (or a path to a shim binary)
    runtime_options: Any = None      # the container's runtime options (an Any) or None
    task_options: Any = None         # Tasks/Create options (an Any) or None: win over the above
    rootfs: list = field(default_factory=list)   # containerd.types.Mount messages
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    checkpoint: str = ""
    sandbox_id: str = ""             # the container's sandbox (Container.sandbox)
    task_api_address: str = ""       # CreateTaskRequest's: a task API to create the task in
    task_api_version: int = 0


def _ts_now():
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class TaskManager:
    def __init__(self, root: str, state: str, address: str, ttrpc_address: str, events,
                 shims: dict[str, Any] | None = None, debug: bool = False,
                 pacer: Any = None) -> None:
        """``shims`` maps runtime names to objects with ``binary`` and ``options`` (a dict of
        containerd.runc.v1.Options fields: defaults for containers that do not set them);
        ``pacer`` (a :class:`ctrd.runtime.ksmpace.KsmPacer`) hears of every shim started."""
        self.root = root
        self.state = state
        for d in (root, state):
            # containerd's task manager: 0711, so a user-namespaced container's root can
            # reach its bundle (config.json, rootfs/) below
            if os.path.isdir(d):
                os.chmod(d, 0o711)
        self.address = address
        self.ttrpc_address = ttrpc_address
        self.events = events
        self.shims: dict[str, tuple[str, dict]] = {"io.containerd.runc.v2": (CTRD_SHIM, {})}
        for name, spec in (shims or {}).items():
            self.shims[name] = (spec.binary or CTRD_SHIM, dict(spec.options))
        self.debug = debug
        self.pacer = pacer
        self._tasks: dict[tuple[str, str], ShimTask] = {}
        self._creating: set[tuple[str, str]] = set()
        self._logs: dict[tuple[str, str], shimclient.ShimLog] = {}
        self._closing: set[tuple[str, str]] = set()
        self._finishing: dict[tuple[str, str], asyncio.Future] = {}
        self._parsed_defaults: dict[str, Any] = {}  # runtime -> its default Options
        # (namespace, sandbox id) -> the (address, shim API version) of the shim serving that
        # sandbox, None when no shim does; set by the shim sandbox controller when it is built
        self.sandbox_endpoint: Any = None

    # --- lookup ---------------------------------------------------------------------------

    def get(self, namespace: str, id_: str) -> ShimTask:
        t = self._tasks.get((namespace, id_))
        if t is None:
            raise errdefs.NotFound(f"task {id_}")
        return t

    def list(self, namespace: str | None = None) -> list[ShimTask]:
        return [t for (ns, _), t in sorted(self._tasks.items())
                if namespace is None or ns == namespace]

    def binary_for(self, runtime: str) -> str:
        if runtime in self.shims:
            return shimclient.resolve_binary(self.shims[runtime][0])
        if "/" in runtime:
            return shimclient.resolve_binary(runtime)
        return shimclient.resolve_binary(shimclient.binary_name(runtime))

    async def plugin_info(self, request: Any) -> Any:
        """Introspection.PluginInfo's extra: the shim's RuntimeInfo (:mod:`.runtime_info`)."""
        from ctrd.runtime.runtime_info import runtime_info

        return await runtime_info(self.binary_for, request)

    def _with_defaults(self, runtime: str, given: Any) -> Any:
        """The runtime options a shim gets: the configured defaults for ``runtime`` under the
        fields the container (or the create request) set."""
        if not self.shims.get(runtime, (None, {}))[1]:
            return given
        if given is not None and given.type_url.rsplit("/", 1)[-1] != RUNC_OPTIONS_TYPE:
            return given  # another shim's options: not ours to merge
        from google.protobuf import any_pb2

        merged = self._default_options(runtime)
        if given is not None:
            merged.MergeFromString(given.value)
        return any_pb2.Any(type_url=given.type_url if given is not None else RUNC_OPTIONS_TYPE,
                           value=merged.SerializeToString())

    def _default_options(self, runtime: str):
        """A fresh copy of ``runtime``'s configured options (parsed once)."""
        cached = self._parsed_defaults.get(runtime)
        if cached is None:
            cached = self._parsed_defaults[runtime] = parse_runc_options(
                self.shims[runtime][1], f"options of runtime {runtime}")
        out = type(cached)()
        out.CopyFrom(cached)
        return out

    # --- create / delete ------------------------------------------------------------------

    async def create(self, namespace: str, id_: str, opts: CreateOpts) -> ShimTask:
        key = (namespace, id_)
        if key in self._tasks or key in self._creating:
            raise errdefs.AlreadyExists(f"task {id_}")
        self._creating.add(key)
        try:
            await self._wait_finishing(key)  # the previous task of this id is still going
            binary = self.binary_for(opts.runtime)
            bundle = await asyncio.to_thread(new_bundle, self.root, self.state, namespace,
                                             id_, opts.spec)
            try:
                task = await self._start(bundle, binary, opts)
            except BaseException:
                await asyncio.to_thread(bundle.delete)
                raise
            self._tasks[key] = task
            return task
        finally:
            self._creating.discard(key)

    def _task_endpoint(self, namespace: str, opts: CreateOpts) -> tuple[str, int] | None:
        """Where a task goes instead of a shim of its own, as containerd 2.x's shim manager
        decides: the task API the request names (``<protocol>+<address>``), else the shim of
        the container's sandbox; only a shim of API version 3 or later serves more than one
        task (an older one gets its own shim, also for a sandboxed container)."""
        if opts.task_api_address:
            protocol, plus, address = opts.task_api_address.partition("+")
            if not plus:
                raise errdefs.InvalidArgument(
                    "the scheme of sandbox address should be in the form of "
                    "<protocol>+<unix|vsock|tcp>, i.e. ttrpc+unix or grpc+vsock")
            if protocol != "ttrpc":
                raise errdefs.NotImplemented_(f"unsupported shim protocol {protocol!r}")
            endpoint = (address, opts.task_api_version)
        elif opts.sandbox_id and self.sandbox_endpoint is not None:
            endpoint = self.sandbox_endpoint(namespace, opts.sandbox_id)
        else:
            return None
        if endpoint is None or endpoint[1] < 3:
            return None
        return endpoint

    async def _start(self, bundle: Bundle, binary: str, opts: CreateOpts) -> ShimTask:
        key = (bundle.namespace, bundle.id)
        topts = opts.task_options if opts.task_options is not None else opts.runtime_options
        topts = self._with_defaults(opts.runtime, topts)
        cmd = ShimCommand(binary, bundle, self.address, self.ttrpc_address, self.debug)
        endpoint = self._task_endpoint(bundle.namespace, opts)
        self._logs[key] = shimclient.ShimLog(bundle)
        t0 = time.monotonic()
        try:
            if endpoint is None:
                path = await cmd.start(topts.SerializeToString() if topts is not None else None)
                if self.pacer is not None:
                    self.pacer.started()
            else:  # the sandbox's shim serves this task too: no shim of its own
                path = await asyncio.to_thread(cmd.join, *endpoint)
            t1 = time.monotonic()
            task = await shimclient.connect(bundle, path, opts.runtime, cmd, self._shim_closed)
        except BaseException:
            self._close_log(key)
            raise
        t2 = time.monotonic()
        try:
            await task.create(bundle=bundle.path, rootfs=opts.rootfs, terminal=opts.terminal,
                              stdin=opts.stdin, stdout=opts.stdout, stderr=opts.stderr,
                              checkpoint=opts.checkpoint, options=topts)
        except BaseException:
            await self._teardown(task)
            raise
        log.debug("task %s: shim start %.1f ms, connect %.1f ms, create %.1f ms", bundle.id,
                  (t1 - t0) * 1000, (t2 - t1) * 1000, (time.monotonic() - t2) * 1000)
        return task

    async def _teardown(self, task: ShimTask) -> None:
        """Undo a task whose create failed: delete in the shim, shut it down, drop the log."""
        key = (task.namespace, task.id)
        self._closing.add(key)
        try:
            try:
                await task.call("Delete", shimclient._pb().DeleteRequest(id=task.id),
                                shimclient._pb().DeleteResponse)
            except errdefs.CtrdError as e:
                log.debug("delete of failed task %s: %s", task.id, e)
            await task.shutdown()
            await task.client.close()
            # The shim's own cleanup command also removes runtime state a half-done create
            # may have left (a runc container whose stdio setup failed).
            try:
                await task.command.delete()
            except errdefs.CtrdError as e:
                log.debug("cleanup of failed task %s: %s", task.id, e)
            if not task.gone.done():
                task.gone.set_result(Exit(0, 255, _ts_now()))
        finally:
            self._closing.discard(key)
            self._close_log(key)

    async def delete(self, namespace: str, id_: str) -> Exit:
        """Delete the task in its shim, stop the shim, remove the bundle."""
        key = (namespace, id_)
        task = self.get(namespace, id_)
        if isinstance(task, DeadTask):
            self._tasks.pop(key, None)
            self._publish(namespace, "/tasks/delete", id_, task.exit)
            return task.exit
        self._closing.add(key)
        try:
            pb = shimclient._pb()
            try:
                resp = await task.call("Delete", pb.DeleteRequest(id=id_), pb.DeleteResponse)
            except errdefs.Unavailable:
                # The shim died under us: its cleanup gives the exit.
                exit_ = await self._cleanup_dead(task, publish=True)
                self._tasks.pop(key, None)
                self._publish(namespace, "/tasks/delete", id_, exit_)
            else:
                exit_ = Exit(resp.pid, resp.exit_status, resp.exited_at)
                self._tasks.pop(key, None)
                # The task is gone for every client now; stopping the shim and removing the
                # bundle need not hold the caller (a create of the same id waits for it).
                self._closing.add(key)
                self._finishing[key] = asyncio.ensure_future(self._finish(task, key))
            if not task.gone.done():
                task.gone.set_result(exit_)
            return exit_
        finally:
            if key not in self._finishing:
                self._closing.discard(key)

    async def _finish(self, task: ShimTask, key: tuple[str, str]) -> None:
        """After a delete: shut the shim down, drop its connection and log, remove the
        bundle (and the rootfs mount point in it)."""
        try:
            await task.shutdown()
            await task.client.close()
            self._close_log(key)
            try:
                await asyncio.to_thread(task.bundle.delete)
            except OSError as e:
                log.error("removing bundle %s: %s", task.bundle.path, e)
        finally:
            self._closing.discard(key)
            self._finishing.pop(key, None)

    async def _wait_finishing(self, key: tuple[str, str] | None = None) -> None:
        pending = [t for k, t in list(self._finishing.items()) if key is None or k == key]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # --- shims that go away ---------------------------------------------------------------

    def _shim_closed(self, task: ShimTask) -> None:
        key = (task.namespace, task.id)
        if key in self._closing or self._tasks.get(key) is not task:
            return
        log.warning("shim of task %s/%s went away; cleaning up", task.namespace, task.id)
        asyncio.ensure_future(self._cleanup_dead(task, publish=True))

    async def _cleanup_dead(self, task: ShimTask, publish: bool) -> Exit:
        """Clean up after ``task``'s shim went away; the task stays listed as STOPPED (a
        :class:`DeadTask`) until it is deleted, so clients see its exit."""
        key = (task.namespace, task.id)
        self._closing.add(key)
        try:
            exit_ = await self._delete_shim(task.command)
            self._close_log(key)
            if self._tasks.get(key) is task:
                self._tasks[key] = DeadTask(task.bundle, exit_, task.runtime)
            if publish:
                self._publish(task.namespace, "/tasks/exit", task.id, exit_)
            if not task.gone.done():
                task.gone.set_result(exit_)
            return exit_
        finally:
            self._closing.discard(key)

    async def _delete_shim(self, cmd: ShimCommand) -> Exit:
        """Run the shim's ``delete`` for a gone shim and remove its bundle; never raises for
        a broken shim (the bundle goes anyway): the exit is the shim's or 137."""
        try:
            exit_ = await cmd.delete()
        except errdefs.CtrdError as e:
            log.warning("cleanup of dead shim for %s: %s", cmd.bundle.id, e)
            exit_ = Exit(0, 128 + 9, _ts_now())
        if not exit_.timestamp.seconds:
            exit_.timestamp = _ts_now()
        try:
            await asyncio.to_thread(cmd.bundle.delete)
        except OSError as e:
            log.error("removing bundle %s: %s", cmd.bundle.path, e)
        return exit_

    def _publish(self, namespace: str, topic: str, id_: str, exit_: Exit) -> None:
        """``/tasks/exit`` or ``/tasks/delete`` on behalf of a shim that cannot any more."""
        if self.events is None:
            return
        from ctrd.api.containerd.events import task_pb2

        if topic == "/tasks/exit":
            event = task_pb2.TaskExit(container_id=id_, id=id_, pid=exit_.pid,
                                      exit_status=exit_.status, exited_at=exit_.timestamp)
        else:
            event = task_pb2.TaskDelete(container_id=id_, pid=exit_.pid,
                                        exit_status=exit_.status, exited_at=exit_.timestamp)
        self.events.publish(namespace, topic, event)

    def _close_log(self, key: tuple[str, str]) -> None:
        lg = self._logs.pop(key, None)
        if lg is not None:
            lg.close()

    # --- daemon start and stop --------------------------------------------------------------

    async def load(self) -> None:
        """Reconnect to the shims of every bundle under the state dir; clean up the rest."""
        bundles = await asyncio.to_thread(load_bundles, self.state)
        if bundles:
            await asyncio.gather(*(self._load_one(b) for b in bundles))

    async def _load_one(self, bundle: Bundle) -> None:
        key = (bundle.namespace, bundle.id)
        binary = bundle.read("shim-binary-path") or ""
        cmd = ShimCommand(binary, bundle, self.address, self.ttrpc_address, self.debug)
        address = bundle.read("address")
        try:
            saved = await asyncio.to_thread(bootstrap.read_result, bundle.path)
        except errdefs.CtrdError as e:
            log.warning("bundle %s: %s", bundle.path, e)
            saved = None
        if saved is not None:  # containerd 2.x's record: the address and the task API
            address, cmd.version = saved
        if not binary or not os.access(binary, os.X_OK):
            log.warning("bundle %s has no usable shim binary; removing it", bundle.path)
            await asyncio.to_thread(bundle.delete)
            return
        task = None
        if address:
            try:
                path = shimclient._parse_address(address)
                task = await asyncio.wait_for(
                    shimclient.connect(bundle, path, "", cmd, self._shim_closed), 5.0)
                await task.call("Connect", shimclient._pb().ConnectRequest(id=bundle.id),
                                shimclient._pb().ConnectResponse, shimclient.STATE_TIMEOUT)
            except (errdefs.CtrdError, OSError, TimeoutError) as e:
                log.info("shim of %s/%s is gone (%s): cleaning up", bundle.namespace,
                         bundle.id, e)
                if task is not None:
                    self._closing.add(key)
                    await task.client.close()
                    self._closing.discard(key)
                task = None
        if task is None:
            exit_ = await self._delete_shim(cmd)
            self._publish(bundle.namespace, "/tasks/exit", bundle.id, exit_)
            self._tasks[key] = DeadTask(bundle, exit_, "")
            return
        self._tasks[key] = task
        try:
            self._logs[key] = shimclient.ShimLog(bundle)
        except OSError as e:
            log.debug("shim log of %s: %s", bundle.id, e)

    async def close(self) -> None:
        """Daemon stop: finish the deletions under way, drop the connections; the shims
        and their tasks keep running."""
        await self._wait_finishing()
        if self.pacer is not None:
            self.pacer.close()
        for key, task in list(self._tasks.items()):
            self._closing.add(key)
            await task.client.close()
            self._close_log(key)
        self._tasks.clear()


class DeadTask(shimclient.BundleTask):
    """A task whose shim is gone (killed, crashed, or found dead at daemon start): reported
    STOPPED with the exit the shim's cleanup gave, until it is deleted. Everything it held
    (rootfs mount, bundle, runtime state) is already released."""

    def __init__(self, bundle: Bundle, exit_: Exit, runtime: str) -> None:
        self.bundle, self.exit, self.runtime = bundle, exit_, runtime

    def _no_process(self, exec_id: str = ""):
        return errdefs.NotFound(f"process {exec_id}" if exec_id else "process already finished")

    async def state(self, exec_id: str = "") -> Any:
        if exec_id:
            raise self._no_process(exec_id)
        pb = shimclient._pb()
        from ctrd.api.containerd.types.task import task_pb2

        return pb.StateResponse(id=self.id, bundle=self.bundle.path, pid=self.exit.pid,
                                status=task_pb2.STOPPED, exit_status=self.exit.status,
                                exited_at=self.exit.timestamp)

    async def wait(self, exec_id: str = "") -> Any:
        if exec_id:
            raise self._no_process(exec_id)
        return shimclient._pb().WaitResponse(exit_status=self.exit.status,
                                             exited_at=self.exit.timestamp)

    async def kill(self, signal: int, all_: bool = False, exec_id: str = "") -> None:
        raise self._no_process(exec_id)

    async def delete_process(self, exec_id: str) -> Any:
        raise self._no_process(exec_id)

    async def pids(self) -> Any:
        return shimclient._pb().PidsResponse()

    async def stats(self) -> Any:
        raise errdefs.NotFound(f"task {self.id} has exited")

    async def _stopped(self, *args: Any, **kw: Any) -> None:
        raise errdefs.FailedPrecondition(f"task {self.id} has exited (its shim is gone)")

    start = exec = pause = resume = update = _stopped

    async def resize_pty(self, exec_id: str, width: int, height: int) -> None:
        raise self._no_process(exec_id)

    async def close_io(self, exec_id: str, stdin: bool) -> None:
        raise self._no_process(exec_id)
