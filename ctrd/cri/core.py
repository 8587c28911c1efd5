"""The CRI plugin's core object (containerd's criService, internal/cri/server/service.go):
its state and the helpers every RPC module uses. Each RPC's own work is a mixin in the
module named for it (:mod:`ctrd.cri` lists them); :class:`CRIRuntime` puts them together.
Usable without gRPC: the gRPC adapters (:mod:`ctrd.cri.service`) only convert messages."""

from __future__ import annotations

import asyncio
import json
import os
import signal as _signal
from typing import Any

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.config import CRIConfig
from ctrd.cri.container_create import ContainerCreate
from ctrd.cri.container_exec import ContainerExec
from ctrd.cri.container_list import ContainerList
from ctrd.cri.container_log_reopen import ContainerLogReopen
from ctrd.cri.container_remove import ContainerRemove
from ctrd.cri.container_start import ContainerStart
from ctrd.cri.container_stop import ContainerStop
from ctrd.cri.container_update import ContainerUpdate
from ctrd.cri.helpers import NAMESPACE, RUNC_OPTIONS_TYPE, SPEC_TYPE, cri_pb, now_ns
from ctrd.cri.image_mount import ContainerImageMounts
from ctrd.cri.podsandbox import PodProcess
from ctrd.cri.restart import Restart
from ctrd.cri.runtime_status_core import RuntimeStatusCore
from ctrd.cri.sandbox_list import SandboxList
from ctrd.cri.sandbox_remove import SandboxRemove
from ctrd.cri.sandbox_run import SandboxRun
from ctrd.cri.sandbox_status import SandboxStatusCore
from ctrd.cri.sandbox_stop import SandboxStop
from ctrd.cri.sandbox_update_resources import SandboxUpdateResources


class CRIState:
    """State and shared helpers of the CRI core (mixed into CRIRuntime)."""

    def __init__(self, md, manager, events, config: CRIConfig, root: str, state: str,
                 hooks=None) -> None:
        from ctrd.metadata.containers import ContainerStore

        self.md = md
        self.manager = manager
        self.events = events
        self.config = config
        self.root = root
        self.state = state
        if os.path.isdir(state):
            # containerd's CRI state dir is 0711: a user-namespaced pod's root reaches its
            # files (hosts, resolv.conf, shm) and ctrd's idmapped volume clones below it
            os.chmod(state, 0o711)
        self.hooks = hooks
        self.containers = ContainerStore(md.db)
        self.records = st.Records(root)
        self._images = None
        self.pod_cidr = ""
        self._monitors: dict[str, asyncio.Task] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._oom: set[str] = set()
        self._update_lock = asyncio.Lock()
        self._cni = None
        self._event_queues: set[asyncio.Queue] = set()
        self._inflight: dict[str, asyncio.Future] = {}  # name -> its create in flight
        self._sandbox_pull: asyncio.Future | None = None  # the sandbox image's pull
        self._puller = None  # an ImageService for that pull (built on first use)
        from ctrd.cri.streaming.attach_io import Relays

        self.attach_io = Relays(state)  # log-less containers' output, for attach
        self._features: dict[str, Any] = {}  # handler name -> its probed features

    def subscribe_container_events(self, maxsize: int = 1000) -> asyncio.Queue:
        """A queue of (kind, container id, sandbox id, time ns) for every lifecycle change,
        kind one of created, started, stopped, deleted, in order. A subscriber that does not
        keep up loses the oldest entries (never blocks the runtime)."""
        q: asyncio.Queue = asyncio.Queue(maxsize)
        self._event_queues.add(q)
        return q

    def unsubscribe_container_events(self, q: asyncio.Queue) -> None:
        self._event_queues.discard(q)

    def _emit(self, kind: str, container_id: str, sandbox_id: str) -> None:
        item = (kind, container_id, sandbox_id, now_ns())
        for q in list(self._event_queues):
            if q.full():
                try:
                    q.get_nowait()
                except asyncio.QueueEmpty:
                    pass
            q.put_nowait(item)

    @property
    def images(self):
        """The image index, built on first use (its imports are not needed to start)."""
        if self._images is None:
            from ctrd.cri.images import ImageIndex

            self._images = ImageIndex(self.md)
        return self._images

    @property
    def snapshotter_name(self) -> str:
        return self.config.containerd.snapshotter

    def snapshotter(self):
        s = self.md.snapshotters.get(self.snapshotter_name)
        if s is None:
            raise errdefs.FailedPrecondition(f"snapshotter {self.snapshotter_name} was not "
                                             "loaded")
        return s

    def handler(self, name: str):
        name = name or self.config.containerd.default_runtime_name
        h = self.config.containerd.runtimes.get(name)
        if h is None:
            # a plain error in containerd 2.3.4 (UNKNOWN), not a NotFound
            raise errdefs.Unknown(f'failed to get sandbox runtime: no runtime for "{name}" '
                                  'is configured')
        return name, h

    def runtime_options(self, handler) -> Any:
        """The handler's options as a containerd.runc.v1.Options Any (runc-type shims), None
        when it has none. Keys runc's options do not have are ignored, as containerd does."""
        if not handler.options:
            return None
        from google.protobuf import any_pb2

        from ctrd.runtime.manager import parse_runc_options

        opts = parse_runc_options(handler.options, "runtime options", ignore_unknown=True)
        return any_pb2.Any(type_url=RUNC_OPTIONS_TYPE, value=opts.SerializeToString())

    @property
    def cni(self):
        if self._cni is None:
            from ctrd.cri.cni import CNI

            c = self.config.cni
            # lo is brought up when ctrd pins the netns: no loopback plugin run per pod
            self._cni = CNI(bin_dirs=[d for d in c.bin_dir.split(":") if d],
                            conf_dir=c.conf_dir, max_conf_num=c.max_conf_num,
                            cache_dir=os.path.join(self.state, "cni-cache"), loopback=False)
        return self._cni

    def _container_record(self, id_: str, labels: dict, runtime_type: str, options,
                          spec: dict, ext_key: str, meta, image: str = "",
                          snapshot_key: str = ""):
        from ctrd.metadata.containers import AnyValue, Container, Runtime
        from ctrd.services.containers import run_create_hooks

        ext_type, ext_value = st.meta_to_ext(meta)
        c = Container(
            id=id_, labels=labels,
            runtime=Runtime(runtime_type, AnyValue(options.type_url, options.value)
                            if options is not None else None),
            spec=AnyValue(SPEC_TYPE, json.dumps(spec).encode()), image=image,
            snapshotter=self.snapshotter_name if snapshot_key else "",
            snapshot_key=snapshot_key, extensions={ext_key: AnyValue(ext_type, ext_value)})
        return run_create_hooks(self.hooks, NAMESPACE, c)

    # The daemon's deprecation registry (ctrd.deprecation.Deprecations), set by the plugin.
    deprecation_source = None

    def deprecations(self) -> dict[str, str]:
        """Deprecation warnings ({id: message}) for the ``ContainerdHasNoDeprecationWarnings``
        condition: every one the daemon has reported (Introspection.Server's)."""
        src = self.deprecation_source
        return src.as_dict() if src is not None else {}

    def handler_features(self, name: str, handler) -> Any:
        """A handler's runtime.v1 RuntimeHandlerFeatures (probed once, kept)."""
        from ctrd.cri import runtime_status as rs

        hit = self._features.get(name)
        if hit is None:
            from ctrd.cri import runtime_features, userns

            shim = getattr(self.manager, "shims", {}).get(handler.runtime_type, ("", {}))
            # user namespaces: ctrd makes the idmapped mounts itself (runc 1.1 cannot),
            # so any runc-type handler can run them where the kernel can
            hit = self._features[name] = rs.HandlerFeatures(
                recursive_read_only_mounts=runtime_features.recursive_read_only_supported(
                    handler, shim[1]),
                user_namespaces=userns.supported())
        return hit

    def _sandbox_dir(self, id_: str) -> str:
        return os.path.join(self.state, "sandboxes", id_)

    def _netns_base(self) -> str:
        from ctrd.cri import netns

        return netns.netns_base_dir(self.state, self.config.netns_mounts_under_state_dir)

    async def _dedup(self, key: str, create) -> str:
        """Run ``create()`` for the object named ``key``; a second create of the same name
        while the first is in flight waits for it and answers with its id (a kubelet retry
        after a timeout), or -- when the first failed -- makes its own attempt. A create of a
        name that exists (not in flight) still fails with "name reserved", as containerd."""
        fut = self._inflight.get(key)
        if fut is not None:
            try:
                return await asyncio.shield(fut)
            except Exception:  # noqa: BLE001 - the first attempt failed: try again
                pass
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight[key] = fut
        try:
            id_ = await create()
            fut.set_result(id_)
            return id_
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e if isinstance(e, Exception)
                                  else errdefs.Canceled("the first create was canceled"))
            raise
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]

    def _sandbox_facts(self, meta: st.SandboxMeta, pid: int = 0, for_pause: bool = False):
        """What the pause/init (``for_pause``) or the pod's containers join: pinned
        namespaces by path, the pause's by /proc/<pid>/ns/*."""
        from ctrd.cri import spec as cri_spec
        from ctrd.cri import userns

        pb = cri_pb()
        nsopts = self.sandbox_config(meta).linux.security_context.namespace_options
        host_net, host_ipc = nsopts.network == pb.NODE, nsopts.ipc == pb.NODE
        ipc, uts, pidns = meta.ipc or None, meta.uts or None, None
        if not for_pause:
            proc = f"/proc/{pid}/ns"
            if meta.pause == "image" and pid:
                ipc = None if host_ipc else f"{proc}/ipc"
                uts = None if host_net else f"{proc}/uts"
            if meta.pause and pid and nsopts.pid != pb.NODE:
                pidns = f"{proc}/pid"
        return cri_spec.SandboxFacts(
            id=meta.id, netns_path=meta.netns or None, ipcns_path=ipc, utsns_path=uts,
            pidns_path=pidns, userns_path=meta.userns or None,
            userns=userns.pod_userns(self.sandbox_config(meta)) if meta.userns else None,
            shm_path=None if host_ipc else os.path.join(meta.dir, "shm"),
            hostname_path=os.path.join(meta.dir, "hostname"),
            hosts_path=os.path.join(meta.dir, "hosts"),
            resolv_conf_path=os.path.join(meta.dir, "resolv.conf"))

    def _make_namespaces(self, id_: str, d: str, hostname: str, kinds: list[str],
                         pu=None) -> dict[str, str]:
        from ctrd.cri import netns, userns

        if pu is not None:  # the pod's own user namespace, the others created inside it
            return userns.create_pod_namespaces(self._netns_base(), hostname, kinds, pu)

        pns = netns.create_pod_namespaces(self._netns_base(), hostname, tuple(kinds))
        return dict(pns.paths)

    def _drop_namespaces(self, paths: dict[str, str]) -> None:
        from ctrd.cri import netns

        for p in paths.values():
            netns.remove_path(p)

    def _remove_snapshot(self, key: str) -> None:
        try:
            self.snapshotter().remove(NAMESPACE, key)
        except errdefs.NotFound:
            pass

    def _delete_record(self, id_: str) -> None:
        try:
            self.containers.delete(NAMESPACE, id_)
        except errdefs.NotFound:
            pass

    async def _sigkill_and_await(self, task, exited: asyncio.Event, what: str) -> None:
        """SIGKILL every process of ``task`` and wait until its watcher set ``exited``;
        DeadlineExceeded naming ``what`` when it does not within 30 s."""
        try:
            await task.kill(_signal.SIGKILL, all_=True)
        except errdefs.NotFound:
            pass
        try:
            await asyncio.wait_for(exited.wait(), 30)
        except TimeoutError:
            raise errdefs.DeadlineExceeded(f"{what} did not exit after SIGKILL") from None

    async def _kill_and_delete(self, id_: str) -> None:
        """Kill the task ``id_`` (all its processes) and delete it; gone is fine."""
        try:
            task = self.manager.get(NAMESPACE, id_)
        except errdefs.NotFound:
            return
        try:
            await task.kill(_signal.SIGKILL, all_=True)
        except errdefs.CtrdError:
            pass
        try:
            await asyncio.wait_for(task.wait(), 30)
        except (errdefs.CtrdError, TimeoutError):
            pass
        try:
            await self.manager.delete(NAMESPACE, id_)
        except errdefs.NotFound:
            pass

    def _create_lease(self, id_: str) -> str:
        import datetime

        from ctrd.metadata.leases import GC_EXPIRE

        lease = f"cri-create-{id_}"
        expire = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
        self.md.leases.create(NAMESPACE, lease,
                              {GC_EXPIRE: expire.strftime("%Y-%m-%dT%H:%M:%SZ")})
        return lease

    def _delete_lease(self, lease: str) -> None:
        try:
            self.md.leases.delete(NAMESPACE, lease)
        except errdefs.NotFound:
            pass

    def sandbox_config(self, meta: st.SandboxMeta):
        return st.config_of(meta)

    async def close(self) -> None:
        for t in list(self._monitors.values()):
            t.cancel()


class CRIRuntime(CRIState, RuntimeStatusCore, SandboxRun, PodProcess, SandboxStop,
                 SandboxRemove, SandboxStatusCore, SandboxList, SandboxUpdateResources,
                 ContainerCreate,
                 ContainerStart, ContainerStop, ContainerRemove, ContainerList,
                 ContainerUpdate, ContainerLogReopen, ContainerExec, Restart,
                 ContainerImageMounts):
    """The CRI core: pod sandboxes and containers over ctrd's metadata, snapshotters and task
    manager (state in :class:`CRIState`, each RPC's work in the mixin of its module)."""
