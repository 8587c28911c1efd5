"""The ``podsandbox`` sandbox controller (containerd 2.x's internal/cri/server/podsandbox): CRI
pods through the Sandbox API. The work is the CRI plugin's (:mod:`ctrd.cri`: pause
container or pod init through a shim, namespaces, CNI); this maps the controller's calls
onto it. Pods live in the CRI's namespace (``k8s.io``) whatever the caller's, as containerd's
controller (its own client in k8s.io).

- Create remembers the pod's PodSandboxConfig and runtime handler: from the request's
  ``options`` when it is a ``runtime.v1.PodSandboxConfig`` (what containerd's CRI passes),
  else from the record's ``metadata`` extension (containerd's versioned sandbox metadata
  JSON: ``Metadata.Config``, ``Metadata.RuntimeHandler``). Neither: NotFound ``failed to
  get sandbox "<id>" metadata`` (containerd's); an unreadable one: InvalidArgument naming
  what is wrong. Nothing is kept.
- Start runs the pod (RunPodSandbox's work, with the sandbox's id).
- Stop is StopPodSandbox; Shutdown is RemovePodSandbox (the pod's containers, its shim,
  mounts, namespaces and state go; an unknown id is no error, as for the CRI) but for the
  sandbox store record, which the client deletes (``ctr sandboxes rm``: Shutdown, then
  Store.Delete).
- Wait: the pod process's exit (a pod without one: until it is stopped). Status: the pod's
  state (``SANDBOX_READY`` / ``SANDBOX_NOTREADY``), pid, creation time. Metrics: the pod
  process's task stats. Platform: this host's. Update: nothing (containerd's neither).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

from ctrd import errdefs
from ctrd.metadata.sandboxes import Sandbox
from ctrd.sandbox.controller import CreateOptions, ExitStatus, Instance, Platform, Status

NAMESPACE = "k8s.io"
CONFIG_TYPE = "runtime.v1.PodSandboxConfig"
STATES = {0: "SANDBOX_READY", 1: "SANDBOX_NOTREADY"}


def pod_config(sb: Sandbox, opts: CreateOptions) -> tuple[Any, str]:
    """(PodSandboxConfig, runtime handler) of a sandbox to create; InvalidArgument names
    what is missing or unreadable."""
    from google.protobuf import json_format

    from ctrd.cri.helpers import cri_pb
    from ctrd.cri.sandbox_record import METADATA_KEY

    pb = cri_pb()
    handler = ""
    ext = sb.extensions.get(METADATA_KEY)
    meta: dict = {}
    try:
        if ext is not None:
            doc = json.loads(ext.value)
            if not isinstance(doc, dict) or doc.get("Version") != "v1":
                raise ValueError(f"unsupported version: {json.dumps(doc.get('Version'))}"
                                 if isinstance(doc, dict) else "not a JSON object")
            meta = doc.get("Metadata") or {}
            if not isinstance(meta, dict):
                raise ValueError("Metadata is not a JSON object")
            handler = str(meta.get("RuntimeHandler") or "")
        opt = opts.options
        if opt is not None and opt.type_url.rsplit("/", 1)[-1] == CONFIG_TYPE:
            config = pb.PodSandboxConfig()
            config.ParseFromString(opt.value)
            return config, handler
        if ext is None:  # containerd's words and kind
            raise errdefs.NotFound(f"failed to get sandbox {errdefs.quote(sb.id)} metadata")
        config = json_format.ParseDict(meta.get("Config") or {}, pb.PodSandboxConfig(),
                                       ignore_unknown_fields=True)
    except errdefs.NotFound:
        raise
    except (ValueError, TypeError, json_format.ParseError) as e:
        raise errdefs.InvalidArgument(f"failed to get sandbox {errdefs.quote(sb.id)} "
                                      f"metadata: {e}") from None
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError: a hostile payload
        raise errdefs.InvalidArgument(f"failed to get sandbox {errdefs.quote(sb.id)} "
                                      f"options: {type(e).__name__}: {e}") from None
    return config, handler


class PodSandboxController:
    """``cri_runtime()`` returns the CRI plugin's core (FailedPrecondition when it is not
    loaded)."""

    def __init__(self, cri_runtime: Callable[[], Any]) -> None:
        self._runtime = cri_runtime
        self._pending: dict[str, tuple[Any, str]] = {}
        self._exits: dict[str, ExitStatus] = {}

    def _pod(self, id_: str):
        rt = self._runtime()
        try:
            meta, status = rt.records.sandbox(id_)
        except errdefs.NotFound:
            raise errdefs.NotFound(f"unable to find pod sandbox with id {errdefs.quote(id_)}"
                                   ) from None
        if meta.id != id_:  # the CRI store also answers unique prefixes: not here
            raise errdefs.NotFound(f"unable to find pod sandbox with id {errdefs.quote(id_)}")
        return rt, meta, status

    async def create(self, ns: str, sb: Sandbox, opts: CreateOptions) -> None:
        from ctrd import identifiers

        identifiers.validate(sb.id)
        config, handler = pod_config(sb, opts)
        rt = self._runtime()
        try:
            rt.records.sandbox(sb.id)
        except errdefs.NotFound:
            pass
        else:
            raise errdefs.AlreadyExists(f"sandbox {sb.id} already running")
        self._pending[sb.id] = (config, handler)

    async def start(self, ns: str, id_: str) -> Instance:
        pending = self._pending.pop(id_, None)
        if pending is None:
            raise errdefs.NotFound(f"unable to find pod sandbox with id {errdefs.quote(id_)}")
        rt = self._runtime()
        await rt.run_pod_sandbox(pending[0], pending[1], sandbox_id=id_)
        _, meta, status = self._pod(id_)
        # containerd's controller answers the pod container's labels and the runtime type
        labels = {**rt.containers.get(NAMESPACE, id_).labels,
                  "oci_runtime_type": meta.runtime_type}
        return Instance(sandbox_id=id_, pid=status.pid, created_at=meta.created_at,
                        labels=labels)

    async def platform(self, ns: str, id_: str) -> Platform:
        import platform

        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(),
                                                          platform.machine())
        return Platform("linux", arch, "")

    async def stop(self, ns: str, id_: str, timeout: float | None) -> None:
        self._pending.pop(id_, None)
        await self._runtime().stop_pod_sandbox(id_)

    async def wait(self, ns: str, id_: str) -> ExitStatus:
        if id_ in self._exits:
            return self._exits[id_]
        while True:
            rt, meta, status = self._pod(id_)
            try:
                task = rt.manager.get(NAMESPACE, id_)
            except errdefs.NotFound:
                task = None
            if task is not None:
                resp = await task.wait()
                ex = ExitStatus(resp.exit_status, resp.exited_at.ToNanoseconds())
                break
            if status.state != 0:  # NOTREADY with no process left: it is over
                ex = ExitStatus(0, time.time_ns())
                break
            await asyncio.sleep(0.1)  # a pod without a process: until it is stopped
        self._exits[id_] = ex
        return ex

    async def status(self, ns: str, id_: str, verbose: bool) -> Status:
        _, meta, status = self._pod(id_)
        info: dict[str, str] = {}
        if verbose:
            info["info"] = json.dumps({"pid": status.pid, "runtimeHandler":
                                       meta.runtime_handler, "runtimeType": meta.runtime_type,
                                       "netNamespacePath": meta.netns, "config": meta.config})
        ex = self._exits.get(id_)
        return Status(sandbox_id=id_, pid=status.pid, state=STATES.get(status.state,
                                                                       "SANDBOX_UNKNOWN"),
                      info=info, created_at=meta.created_at,
                      exited_at=ex.exited_at if ex else 0)

    async def shutdown(self, ns: str, id_: str) -> None:
        self._pending.pop(id_, None)
        self._exits.pop(id_, None)
        await self._runtime().remove_pod_sandbox(id_, keep_record=True)

    async def metrics(self, ns: str, id_: str):
        from ctrd.api.containerd.types import metrics_pb2

        rt, meta, _ = self._pod(id_)
        try:
            task = rt.manager.get(NAMESPACE, id_)
        except errdefs.NotFound:
            raise errdefs.NotFound(f"sandbox {id_} has no running process") from None
        resp = await task.stats()
        m = metrics_pb2.Metric(id=id_, data=resp.stats)
        m.timestamp.GetCurrentTime()
        return m

    async def update(self, ns: str, id_: str, sandbox: Sandbox, fields: list[str]) -> None:
        return None
