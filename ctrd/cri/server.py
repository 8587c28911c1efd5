"""The CRI runtime's core: pod sandboxes and containers over ctrd's metadata, snapshotters and
task manager. The gRPC adapter (:mod:`ctrd.cri.service`) only converts messages.

Lifecycles (containerd 1.6's CRI is the reference for every rule below):

- RunPodSandbox: the sandbox image made sure of (pause mode); unique name reserved; a state
  dir with hostname, hosts, resolv.conf and (unless the pod uses the host's IPC) a /dev/shm
  tmpfs; network namespace pinned, and IPC/UTS too without a pause container (host ones per
  NamespaceOptions); CNI ADD; a ctrd container record (kind=sandbox); with a pause container
  or a pod init (see :mod:`ctrd.cri`) its snapshot, spec and task, started and watched (its
  exit: NOTREADY). Any failure undoes what was done. StopPodSandbox: containers killed, the
  pause/init killed, CNI DEL, namespaces released; state NOTREADY. RemovePodSandbox: stops if
  needed, removes its containers, the pause's task, record and snapshot, and the rest.
- CreateContainer: image resolved, snapshot prepared on the image's chain, OCI spec built
  (:mod:`ctrd.cri.spec`), ``ctrd_container_create`` hooks applied, record stored; state
  CREATED. StartContainer: a task through the handler's shim, the kubelet's log file written
  by the shim; RUNNING. When the task exits its shim is released at once and the status
  keeps exit code, reason (Completed, Error, OOMKilled) and time. StopContainer: the stop
  signal, the timeout, SIGKILL. RemoveContainer: forced stop, task, record, snapshot.
- At start, :meth:`CRIRuntime.load` rebuilds all of it from the records and the live tasks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal as _signal
import time
from typing import Any

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.config import CRIConfig

NAMESPACE = "k8s.io"  # where CRI objects live (ctrd.cri.images.NAMESPACE)

log = logging.getLogger("ctrd.cri")

SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
REOPEN_LOG_ANNOTATION = "io.ctrd.cri.reopen-log"
EXEC_OUTPUT_LIMIT = 16 << 20  # bytes per stream kept by ExecSync
LOAD_TIMEOUT = 10.0  # containerd's loadContainerTimeout, per container at start


def now_ns() -> int:
    return time.time_ns()


def new_id() -> str:
    # secrets.token_hex does exactly this; the secrets module (hmac, hashlib, random) is
    # not worth importing at every daemon start for it.
    return os.urandom(32).hex()


def encode_msg(msg) -> str:
    return base64.b64encode(msg.SerializeToString()).decode()


def decode_msg(cls, text: str):
    msg = cls()
    msg.ParseFromString(base64.b64decode(text))
    return msg


def _pb():
    from ctrd.api.cri.runtime.v1 import api_pb2

    return api_pb2


class CRIRuntime:
    def __init__(self, md, manager, events, config: CRIConfig, root: str, state: str,
                 hooks=None) -> None:
        from ctrd.metadata.containers import ContainerStore

        self.md = md
        self.manager = manager
        self.events = events
        self.config = config
        self.root = root
        self.state = state
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

    # --- container lifecycle events (GetContainerEvents) ----------------------------------

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
    def image_volumes(self):
        """The pods' image volumes (:mod:`ctrd.cri.image_mount`)."""
        from ctrd.cri.image_mount import ImageVolumes

        return ImageVolumes(self.md, self.state, self.snapshotter_name, self.images.find)

    def _release_image_volumes(self, pod_id: str) -> None:
        """Release the pod's image volumes that none of its remaining containers mounts."""
        from ctrd.cri.image_mount import image_mount_paths

        paths = [p for c, _ in self.records.containers_of(pod_id)
                 for p in image_mount_paths(decode_msg(_pb().ContainerConfig, c.config).mounts)]
        self.image_volumes.release_unused(pod_id, paths)

    # --- helpers --------------------------------------------------------------------------

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
            raise errdefs.NotFound(f'failed to get sandbox runtime: no runtime for "{name}" '
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

    # --- runtime status -------------------------------------------------------------------

    def status(self) -> tuple[list[tuple[str, bool, str, str]], dict[str, str]]:
        """Conditions (type, status, reason, message) and verbose info."""
        conds = [("RuntimeReady", True, "", "")]
        try:
            ns = self.cni.status()
            ok, reason, message, load = ns.ready, ns.reason, ns.message, ns.last_load_error
        except Exception as e:  # noqa: BLE001 - a broken CNI setup is a condition, not a crash
            ok, reason, message, load = False, "NetworkPluginNotReady", f"cni: {e}", str(e)
        conds.append(("NetworkReady", ok, "" if ok else reason, "" if ok else message))
        info = {"config": json.dumps({
            "containerd": {"snapshotter": self.snapshotter_name,
                           "defaultRuntimeName": self.config.containerd.default_runtime_name},
            "cni": {"binDir": self.config.cni.bin_dir, "confDir": self.config.cni.conf_dir},
            "sandboxImage": self.config.sandbox_image,
            "enableSelinux": self.config.enable_selinux,
            "streamServerAddress": self.config.stream_server_address,
            "streamServerPort": self.config.stream_server_port}),
            "golang": "n/a (ctrd is Python)", "lastCNILoadStatus": load or "OK"}
        return conds, info

    def update_runtime_config(self, pod_cidr: str) -> None:
        """Remember the node's pod CIDR; with a ``conf_template`` configured, write the CNI
        config from it (containerd's template fields .PodCIDR, .PodCIDRRanges, .Routes)."""
        if not pod_cidr or pod_cidr == self.pod_cidr:
            return
        self.pod_cidr = pod_cidr
        tmpl = self.config.cni.conf_template
        if not tmpl:
            return
        ranges = [c.strip() for c in pod_cidr.split(",") if c.strip()]
        routes = ["0.0.0.0/0" if ":" not in r else "::/0" for r in ranges]
        with open(tmpl) as f:
            text = f.read()
        text = (text.replace("{{.PodCIDR}}", ranges[0])
                .replace("{{.PodCIDRRanges}}", json.dumps(ranges)[1:-1])
                .replace("{{.Routes}}", json.dumps(routes)[1:-1]))
        os.makedirs(self.config.cni.conf_dir, exist_ok=True)
        out = os.path.join(self.config.cni.conf_dir, "10-containerd-net.conflist")
        with open(out + ".tmp", "w") as f:
            f.write(text)
        os.replace(out + ".tmp", out)

    # --- sandboxes ------------------------------------------------------------------------

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

    async def run_pod_sandbox(self, config, runtime_handler: str = "") -> str:
        md = config.metadata
        key = "pod\0" + "_".join([md.name, md.namespace, md.uid, str(md.attempt)])
        return await self._dedup(key, lambda: self._run_pod_sandbox(config, runtime_handler))

    async def _run_pod_sandbox(self, config, runtime_handler: str = "") -> str:
        pb = _pb()
        md = config.metadata
        if not md.name or not md.namespace or not md.uid:
            raise errdefs.InvalidArgument("sandbox config must include metadata with name, "
                                          "namespace and uid")
        handler_name, handler = self.handler(runtime_handler)
        pause = self._pause_kind(config)
        image = pod_init = None
        if pause == "image":
            image = await self._ensure_sandbox_image()
        elif pause == "init":
            pod_init = self._pod_init_binary()
        id_ = new_id()
        name = "_".join([md.name, md.namespace, md.uid, str(md.attempt)])
        self.records.reserve(name, id_)
        undo: list = [lambda: self.records.release(name)]
        try:
            nsopts = config.linux.security_context.namespace_options
            host_net = nsopts.network == pb.NODE
            host_ipc = nsopts.ipc == pb.NODE
            d = self._sandbox_dir(id_)
            os.makedirs(d, mode=0o711)
            undo.append(lambda: _rmtree(d))
            hostname = config.hostname or (os.uname().nodename if host_net else md.name)
            await asyncio.to_thread(_write_sandbox_files, d, config, hostname, host_net)
            if not host_ipc:
                await asyncio.to_thread(_mount_shm, d)
                undo.append(lambda: _unmount_shm(d))
            # A pause container holds the pod's IPC and UTS namespaces itself: only the
            # network namespace is pinned (CNI runs before the pause starts, as containerd).
            kinds = [] if host_net else (["net"] if pause == "image" else ["net", "uts"])
            if not host_ipc and pause != "image":
                kinds.append("ipc")
            paths: dict[str, str] = {}
            if kinds:
                paths = await asyncio.to_thread(self._make_namespaces, id_, d, hostname, kinds)
                undo.append(lambda: self._drop_namespaces(paths))
            meta = st.SandboxMeta(id=id_, name=name, config=encode_msg(config),
                                  runtime_handler=handler_name,
                                  runtime_type=handler.runtime_type,
                                  netns=paths.get("net", ""), ipc=paths.get("ipc", ""),
                                  uts=paths.get("uts", ""), dir=d, created_at=now_ns(),
                                  pause=pause)
            if image is not None:
                meta.image, meta.image_id, meta.snapshot_key = \
                    self.config.sandbox_image, image.id, id_
            status = st.SandboxStatus()
            if not host_net:
                result = await self._setup_network(meta, config)
                undo.append(lambda: self._teardown_network(meta, config))
                ips = result.get("ips", [])
                status.ip = ips[0] if ips else ""
                status.additional_ips = ips[1:]
                status.cni_result = result.get("raw", {})
                status.network_ready = True
            labels = {**_filter_labels(config.labels), st.KIND_LABEL: "sandbox"}
            if pause:
                status.pid = await self._start_pause(meta, config, handler, labels, image,
                                                     pod_init, undo)
            else:
                rec = self._container_record(id_, labels, handler.runtime_type,
                                             self.runtime_options(handler),
                                             {"ociVersion": "1.0.2"}, st.SANDBOX_EXT, meta)
                await asyncio.to_thread(self.containers.create, NAMESPACE, rec)
            self.records.add_sandbox(meta, status)
            if pause:
                self._monitor_sandbox(id_, self.manager.get(NAMESPACE, id_))
            return id_
        except BaseException:
            for fn in reversed(undo):
                try:
                    r = fn()
                    if asyncio.iscoroutine(r):
                        await r
                except Exception as e:  # noqa: BLE001 - best effort, keep undoing
                    log.warning("undo of sandbox %s: %s", id_, e)
            if not self.records.sandboxes:
                await asyncio.to_thread(self._release_pin_dirs)
            raise

    # --- the pod's own process: pause container or pod init --------------------------------

    def _pause_kind(self, config) -> str:
        """"image" with a sandbox_image configured; else "init" for a pod that asks for a
        pod-level PID namespace (its NamespaceOption present and pid POD, as the kubelet
        sends for shareProcessNamespace; a config without NamespaceOption -- never the
        kubelet's -- keeps a PID namespace per container); else "" (no process)."""
        if self.config.sandbox_image:
            return "image"
        sc = config.linux.security_context
        if sc.HasField("namespace_options") and sc.namespace_options.pid == _pb().POD:
            return "init"
        return ""

    def _pod_init_binary(self) -> str:
        from ctrd.cri import spec as cri_spec

        found = cri_spec.find_pod_init_binary()
        if found is None:
            raise errdefs.FailedPrecondition(
                "a pod-level PID namespace needs a pod init: no statically linked busybox "
                f"found at {' or '.join(cri_spec.pod_init_candidates()) or '(none)'} "
                "(install Debian's "
                "busybox-static), or configure a sandbox_image (pause container)")
        return found

    async def _ensure_sandbox_image(self):
        """The sandbox image, pulled through the CRI image pull path (the registry config)
        when it is not there; concurrent pods share one pull. Errors name the image."""
        from ctrd.cri.image_service import ImageService

        ref = self.config.sandbox_image
        img = await asyncio.to_thread(self.images.find, ref)
        if img is not None:
            return img
        fut = self._sandbox_pull
        if fut is None or fut.done():
            if self._puller is None:
                self._puller = ImageService(self.md, self.config, "")
            fut = self._sandbox_pull = asyncio.ensure_future(
                asyncio.to_thread(self._puller.pull, ref))
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.shield(fut)
        except errdefs.CtrdError as e:
            raise type(e)(f"failed to get sandbox image {errdefs.quote(ref)}: "
                          f"{e.detail}") from e
        img = await asyncio.to_thread(self.images.find, ref)
        if img is None:
            raise errdefs.NotFound(f"failed to get sandbox image {errdefs.quote(ref)}: "
                                   "not found after its pull")
        return img

    def _sandbox_facts(self, meta: st.SandboxMeta, pid: int = 0, for_pause: bool = False):
        """What the pause/init (``for_pause``) or the pod's containers join: pinned
        namespaces by path, the pause's by /proc/<pid>/ns/*."""
        from ctrd.cri import spec as cri_spec

        pb = _pb()
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
            pidns_path=pidns,
            shm_path=None if host_ipc else os.path.join(meta.dir, "shm"),
            hostname_path=os.path.join(meta.dir, "hostname"),
            hosts_path=os.path.join(meta.dir, "hosts"),
            resolv_conf_path=os.path.join(meta.dir, "resolv.conf"))

    async def _start_pause(self, meta: st.SandboxMeta, config, handler, labels: dict,
                           image, pod_init: str | None, undo: list) -> int:
        """Create the sandbox's container record (its spec, and for a pause container its
        snapshot of the sandbox image) and run it as a task through the handler's shim
        (the sandbox-id annotation groups the pod's containers into the same shim).
        Appends its undo steps to ``undo``; returns the process's pid."""
        from ctrd.cri import spec as cri_spec
        from ctrd.runtime.manager import CreateOpts
        from ctrd.snapshots.mount import mounted

        id_ = meta.id
        t0 = time.monotonic()
        sandbox = self._sandbox_facts(meta, for_pause=True)
        rootfs: list = []
        if image is not None:
            snap = self.snapshotter()
            lease = await asyncio.to_thread(self._create_lease, id_)
            undo.append(lambda: self._delete_lease(lease))
            await asyncio.to_thread(snap.prepare, NAMESPACE, id_, image.chain_id, None, lease)
            undo.append(lambda: self._remove_snapshot(id_))
            mounts = await asyncio.to_thread(snap.mounts, NAMESPACE, id_)
            rootfs = [_mount_pb(m) for m in mounts]

            def build() -> dict:
                if not cri_spec.user_needs_rootfs(cri_spec.sandbox_user(config, image.config)):
                    return cri_spec.sandbox_spec(id_, config, image.config, sandbox, None,
                                                 self.config, handler)
                with mounted(mounts, dir=self.state) as root:
                    return cri_spec.sandbox_spec(id_, config, image.config, sandbox, root,
                                                 self.config, handler)

            spec = await asyncio.to_thread(build)
        else:
            lease = ""
            spec = cri_spec.sandbox_spec(id_, config, None, sandbox, None, self.config,
                                         handler, pod_init=pod_init)
        options = self.runtime_options(handler)
        rec = self._container_record(
            id_, labels, handler.runtime_type, options, spec, st.SANDBOX_EXT, meta,
            image=meta.image, snapshot_key=meta.snapshot_key)
        await asyncio.to_thread(self.containers.create, NAMESPACE, rec)
        undo.append(lambda: self._delete_record(id_))
        if lease:
            await asyncio.to_thread(self._delete_lease, lease)
        t1 = time.monotonic()
        task = await self.manager.create(NAMESPACE, id_, CreateOpts(
            spec=json.dumps(spec).encode(), runtime=handler.runtime_type,
            runtime_options=options, rootfs=rootfs))
        undo.append(lambda: self._kill_and_delete(id_))
        t2 = time.monotonic()
        resp = await task.start()
        log.debug("sandbox %s: pause phases: snapshot+spec+record %.1f ms, task create %.1f "
                  "ms, start %.1f ms", id_, (t1 - t0) * 1000, (t2 - t1) * 1000,
                  (time.monotonic() - t2) * 1000)
        return resp.pid

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

    def _monitor_sandbox(self, id_: str, task) -> None:
        """Watch the pause/init: when it exits the sandbox is NOTREADY (its task deleted at
        once, releasing the shim unless the pod's containers still use it)."""
        ev = self._exited.setdefault(id_, asyncio.Event())
        ev.clear()

        async def watch():
            try:
                try:
                    resp = await task.wait()
                    code = resp.exit_status
                except errdefs.CtrdError as e:
                    log.warning("wait for sandbox %s: %s", id_, e)
                    code = 255
                log.info("sandbox %s: its process exited with %d; NOTREADY", id_, code)
                try:
                    await self.manager.delete(NAMESPACE, id_)
                except errdefs.CtrdError as e:
                    log.debug("delete task of sandbox %s: %s", id_, e)
                try:
                    self.records.update_sandbox(id_, state=st.SANDBOX_NOTREADY, pid=0)
                except errdefs.NotFound:
                    pass
            finally:
                self._monitors.pop(id_, None)
                ev.set()

        self._monitors[id_] = asyncio.ensure_future(watch())

    async def _stop_pause(self, meta: st.SandboxMeta) -> None:
        """SIGKILL the pause/init and wait until its watcher has seen it go."""
        try:
            task = self.manager.get(NAMESPACE, meta.id)
        except errdefs.NotFound:
            return
        ev = self._exited.get(meta.id)
        try:
            await task.kill(_signal.SIGKILL, all_=True)
        except errdefs.NotFound:
            pass
        if ev is not None and meta.id in self._monitors:
            try:
                await asyncio.wait_for(ev.wait(), 30)
                return
            except TimeoutError:
                raise errdefs.DeadlineExceeded(f"sandbox {meta.id}: its process did not exit "
                                               "after SIGKILL") from None
        await self._kill_and_delete(meta.id)

    def sandbox_info(self, meta: st.SandboxMeta, status: st.SandboxStatus) -> dict:
        """PodSandboxStatus verbose info (containerd's shape, the fields ctrd has)."""
        from google.protobuf import json_format

        ready = status.state == st.SANDBOX_READY
        return {
            "pid": status.pid, "processStatus": "running" if ready else "stopped",
            "netNamespaceClosed": not status.network_ready,
            "image": meta.image if meta.pause == "image" else "",
            "imageId": meta.image_id, "pause": meta.pause or "none",
            "snapshotKey": meta.snapshot_key,
            "snapshotter": self.snapshotter_name,
            "runtimeHandler": meta.runtime_handler, "runtimeType": meta.runtime_type,
            "netns": meta.netns, "ipcns": meta.ipc, "utsns": meta.uts,
            "cniResult": status.cni_result,
            "config": json_format.MessageToDict(self.sandbox_config(meta))}

    def _make_namespaces(self, id_: str, d: str, hostname: str, kinds: list[str]
                         ) -> dict[str, str]:
        from ctrd.cri import netns

        pns = netns.create_pod_namespaces(self._netns_base(), hostname, tuple(kinds))
        return dict(pns.paths)

    def _drop_namespaces(self, paths: dict[str, str]) -> None:
        from ctrd.cri import netns

        for p in paths.values():
            netns.remove_path(p)

    def _cni_args(self, meta: st.SandboxMeta, config) -> tuple[dict, dict]:
        from ctrd.cri import cni

        md = config.metadata
        labels = cni.pod_args(meta.id, md.namespace, md.name, md.uid)
        ports = [cni.PortMapping(p.host_port, p.container_port,
                                 {0: "tcp", 1: "udp", 2: "sctp"}.get(p.protocol, "tcp"),
                                 p.host_ip)
                 for p in config.port_mappings if p.host_port > 0]
        dns = config.dns_config
        caps = cni.capability_args(ports, dns_servers=list(dns.servers),
                                   dns_searches=list(dns.searches),
                                   dns_options=list(dns.options),
                                   pod_annotations=dict(config.annotations))
        return labels, caps

    async def _setup_network(self, meta: st.SandboxMeta, config) -> dict:
        """CNI ADD (a failed ADD has already been undone by the CNI client)."""
        import dataclasses

        labels, caps = self._cni_args(meta, config)
        result = await asyncio.to_thread(self.cni.setup, meta.id, meta.netns, labels=labels,
                                         capability_args=caps)
        ip, extra = result.pod_ips(self.config.cni.ip_pref)
        return {"ips": ([ip] if ip else []) + extra,
                "raw": {"interfaces": {k: dataclasses.asdict(v)
                                       for k, v in result.interfaces.items()},
                        "dns": [dataclasses.asdict(d) for d in result.dns],
                        "routes": [dataclasses.asdict(r) for r in result.routes]}}

    async def _teardown_network(self, meta: st.SandboxMeta, config) -> None:
        labels, caps = self._cni_args(meta, config)
        netns = meta.netns if meta.netns and os.path.exists(meta.netns) else ""
        await asyncio.to_thread(self.cni.teardown, meta.id, netns, labels=labels,
                                capability_args=caps)

    def sandbox_config(self, meta: st.SandboxMeta):
        return decode_msg(_pb().PodSandboxConfig, meta.config)

    async def stop_pod_sandbox(self, id_: str) -> None:
        """Containers killed, then the pause/init (SIGKILL), CNI DEL, namespaces released;
        NOTREADY. Safe to repeat, and on whatever is already gone."""
        meta, status = self.records.sandbox(id_)
        for cmeta, cstatus in self.records.containers_of(meta.id):
            if cstatus.state in (st.RUNNING, st.UNKNOWN):
                await self.stop_container(cmeta.id, 0)
        if meta.pause:
            await self._stop_pause(meta)
            self.records.update_sandbox(meta.id, pid=0)
        if status.network_ready:
            await self._teardown_network(meta, self.sandbox_config(meta))
            self.records.update_sandbox(meta.id, network_ready=False)
        paths = {k: p for k, p in (("net", meta.netns), ("ipc", meta.ipc), ("uts", meta.uts))
                 if p}
        if paths:
            await asyncio.to_thread(self._drop_namespaces, paths)
        await asyncio.to_thread(self.image_volumes.cleanup, meta.id)  # containerd: at stop
        self.records.update_sandbox(meta.id, state=st.SANDBOX_NOTREADY)

    async def remove_pod_sandbox(self, id_: str) -> None:
        try:
            meta, status = self.records.sandbox(id_)
        except errdefs.NotFound:
            return  # already gone: the kubelet retries removals
        if status.state == st.SANDBOX_READY or status.network_ready:
            await self.stop_pod_sandbox(meta.id)
        for cmeta, _ in self.records.containers_of(meta.id):
            await self.remove_container(cmeta.id)
        if meta.pause:
            await self._kill_and_delete(meta.id)  # a stopped pause's task, if still there
        await asyncio.to_thread(_unmount_shm, meta.dir)
        await asyncio.to_thread(_rmtree, meta.dir)
        await asyncio.to_thread(self._delete_record, meta.id)
        if meta.snapshot_key:
            await asyncio.to_thread(self._remove_snapshot, meta.snapshot_key)
        await asyncio.to_thread(self.image_volumes.cleanup, meta.id, True)
        self.records.remove_sandbox(meta.id)
        self._exited.pop(meta.id, None)
        if not self.records.sandboxes:
            await asyncio.to_thread(self._release_pin_dirs)

    def _release_pin_dirs(self) -> None:
        """With the last pod gone, unmount the (self-bind-mounted) namespace pin dirs, so a
        node without pods holds no mounts of ctrd's (they are made again with the next).
        Under the pin-dir lock, so it cannot interleave with a new pod's pin dir setup."""
        from ctrd.cri import netns
        from ctrd.snapshots.mount import unmount_all

        base = self._netns_base()
        with netns.PIN_DIR_LOCK:
            if self.records.sandboxes:
                return  # a pod came meanwhile
            for kind in ("net", "ipc", "uts"):
                d = os.path.join(base, f"{kind}ns")
                try:
                    if os.listdir(d):
                        continue
                except FileNotFoundError:
                    continue
                try:
                    unmount_all(d)
                except OSError as e:
                    log.debug("unmount %s: %s", d, e)

    # --- containers -----------------------------------------------------------------------

    async def create_container(self, sandbox_id: str, config, sandbox_config) -> str:
        smeta, _ = self.records.sandbox(sandbox_id)
        pod, md = self.sandbox_config(smeta).metadata, config.metadata
        key = "ctr\0" + "_".join([md.name, pod.name, pod.namespace, pod.uid, str(md.attempt)])
        return await self._dedup(key, lambda: self._create_container(sandbox_id, config,
                                                                      sandbox_config))

    async def _create_container(self, sandbox_id: str, config, sandbox_config) -> str:
        smeta, sstatus = self.records.sandbox(sandbox_id)
        if sstatus.state != st.SANDBOX_READY:
            raise errdefs.FailedPrecondition(f"sandbox {smeta.id} is not ready")
        md = config.metadata
        if not md.name:
            raise errdefs.InvalidArgument("container config must include metadata with name")
        pod = self.sandbox_config(smeta).metadata
        id_ = new_id()
        name = "_".join([md.name, pod.name, pod.namespace, pod.uid, str(md.attempt)])
        self.records.reserve(name, id_)
        undo: list = [lambda: self.records.release(name)]
        try:
            image = await asyncio.to_thread(self.images.find, config.image.image)
            if image is None:
                raise errdefs.NotFound(f"failed to resolve image {config.image.image!r}: "
                                       "not found")
            _, handler = self.handler(smeta.runtime_handler)
            # image volumes (Mount.image): checked, mounted, the mounts rewritten to binds
            from ctrd.cri import image_mount

            image_mount.validate(config.mounts)
            made = await asyncio.to_thread(self.image_volumes.prepare, smeta.id, config.mounts)
            undo.append(lambda: self.image_volumes.release(smeta.id, made))
            snap = self.snapshotter()
            # The new snapshot is held by a lease until the container record references it
            # (containerd's client does the same): a GC in between would collect it.
            lease = await asyncio.to_thread(self._create_lease, id_)
            undo.append(lambda: self._delete_lease(lease))
            await asyncio.to_thread(snap.prepare, NAMESPACE, id_, image.chain_id, None, lease)
            undo.append(lambda: snap.remove(NAMESPACE, id_))
            log_path = ""
            if config.log_path and sandbox_config.log_directory:
                log_path = os.path.join(sandbox_config.log_directory, config.log_path)
            spec = await asyncio.to_thread(self._build_spec, id_, smeta, config,
                                           sandbox_config, image, snap)
            cfg = image.config.get("config") if isinstance(image.config.get("config"),
                                                           dict) else {}
            meta = st.ContainerMeta(id=id_, name=name, sandbox_id=smeta.id,
                                    config=encode_msg(config), image_ref=image.id,
                                    image=config.image.image, log_path=log_path,
                                    snapshotter=self.snapshotter_name,
                                    runtime_handler=smeta.runtime_handler,
                                    stop_signal=str(cfg.get("StopSignal") or ""),
                                    created_at=now_ns())
            labels = {**_filter_labels(config.labels), st.KIND_LABEL: "container"}
            image_name = (image.repo_tags or image.repo_digests or [image.id])[0]
            rec = self._container_record(id_, labels, handler.runtime_type,
                                         self.runtime_options(handler), spec,
                                         st.CONTAINER_EXT, meta, image=image_name,
                                         snapshot_key=id_)
            await asyncio.to_thread(self.containers.create, NAMESPACE, rec)
            await asyncio.to_thread(self._delete_lease, lease)
            self.records.add_container(meta, st.ContainerStatus(state=st.CREATED))
            self._emit("created", id_, smeta.id)
            return id_
        except BaseException:
            for fn in reversed(undo):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001
                    log.warning("undo of container %s: %s", id_, e)
            raise

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

    def _build_spec(self, id_: str, smeta: st.SandboxMeta, config, sandbox_config, image,
                    snap) -> dict:
        from ctrd.cri import spec as cri_spec
        from ctrd.snapshots.mount import mounted

        _, sstatus = self.records.sandbox(smeta.id)
        if smeta.pause and not sstatus.pid:
            raise errdefs.FailedPrecondition(f"sandbox {smeta.id} has no running process")
        sandbox = self._sandbox_facts(smeta, sstatus.pid)
        _, handler = self.handler(smeta.runtime_handler)
        mounts = snap.mounts(NAMESPACE, id_)
        with mounted(mounts, dir=self.state) as rootfs:
            # With a pause container the pod's sysctls are in its spec only (containerd);
            # otherwise they go into each container's spec (runc applies them inside the
            # pod's namespaces).
            return cri_spec.container_spec(
                id_, config, sandbox_config, image.config, sandbox, rootfs, self.config,
                handler, image_name=config.image.image,
                sysctls=None if smeta.pause == "image" else cri_spec.pod_sysctls(
                    sandbox_config))

    def _task_io(self, meta: st.ContainerMeta) -> tuple[str, str]:
        """stdout/stderr URIs: the kubelet's log file, written in its format by the shim."""
        if not meta.log_path:
            return "", ""
        from urllib.parse import quote

        q = f"format=cri&max_line={self.config.max_container_log_line_size}"
        uri = f"file://{quote(meta.log_path)}?{q}"
        return uri + "&stream=stdout", uri + "&stream=stderr"

    async def start_container(self, id_: str) -> None:
        meta, status = self.records.container(id_)
        if status.state != st.CREATED:
            raise errdefs.FailedPrecondition(
                f"container {meta.id} is in {_STATE_NAMES[status.state]} state")
        smeta, sstatus = self.records.sandbox(meta.sandbox_id)
        if sstatus.state != st.SANDBOX_READY:
            raise errdefs.FailedPrecondition(f"sandbox container {smeta.id} is not running")
        from ctrd.runtime.manager import CreateOpts

        c = await asyncio.to_thread(self.containers.get, NAMESPACE, meta.id)
        config = decode_msg(_pb().ContainerConfig, meta.config)
        if meta.log_path:
            os.makedirs(os.path.dirname(meta.log_path), exist_ok=True)
        stdout, stderr = self._task_io(meta)
        stdin = ""
        if config.stdin:  # kept for attach (ctrd.cri.streaming): the shim holds a writer
            from ctrd.cri.streaming.backend import stdin_fifo

            stdin = stdin_fifo(self.state, meta.id)
            os.makedirs(os.path.dirname(stdin), mode=0o700, exist_ok=True)
            if not os.path.exists(stdin):
                os.mkfifo(stdin, 0o600)
        mounts = await asyncio.to_thread(self.snapshotter().mounts, NAMESPACE, meta.id)
        options = None
        if c.runtime.options is not None:
            from google.protobuf import any_pb2

            options = any_pb2.Any(type_url=c.runtime.options.type_url,
                                  value=c.runtime.options.value)
        opts = CreateOpts(spec=c.spec.value, runtime=c.runtime.name, runtime_options=options,
                          rootfs=[_mount_pb(m) for m in mounts], stdin=stdin,
                          stdout=stdout, stderr=stderr, terminal=config.tty)
        try:
            task = await self.manager.create(NAMESPACE, meta.id, opts)
            try:
                # taken before the start: a process that exits at once has an exit time
                # after it (an exit stamped by the shim can precede our return from start)
                started = now_ns()
                resp = await task.start()
            except BaseException:
                await self.manager.delete(NAMESPACE, meta.id)
                raise
        except errdefs.CtrdError as e:
            self.records.update_container(meta.id, state=st.EXITED, finished_at=now_ns(),
                                          exit_code=128, reason="StartError",
                                          message=str(e))
            raise
        cgroup = await asyncio.to_thread(self._memory_cgroup, resp.pid, c.spec.value, meta.id)
        self.records.update_container(meta.id, state=st.RUNNING, pid=resp.pid,
                                      started_at=started, memory_cgroup=cgroup)
        self._emit("started", meta.id, meta.sandbox_id)
        self._monitor(meta.id, task)

    def _monitor(self, id_: str, task) -> None:
        ev = self._exited.setdefault(id_, asyncio.Event())
        ev.clear()

        async def watch():
            try:
                resp = await task.wait()
                code = resp.exit_status
                finished = resp.exited_at.ToNanoseconds() or now_ns()
            except errdefs.CtrdError as e:
                log.warning("wait for container %s: %s", id_, e)
                code, finished = 255, now_ns()
            # before the delete: the runtime removes the cgroup (and its OOM count) with it
            oom = id_ in self._oom or await asyncio.to_thread(self._oom_killed, id_)
            try:
                await self.manager.delete(NAMESPACE, id_)  # release the shim at once
            except errdefs.CtrdError as e:
                log.debug("delete task of exited container %s: %s", id_, e)
            try:
                self.records.update_container(id_, state=st.EXITED, finished_at=finished,
                                              exit_code=code, pid=0,
                                              reason=_exit_reason(code, oom))
                self._emit("stopped", id_, self.records.container(id_)[0].sandbox_id)
            except errdefs.NotFound:
                pass
            finally:
                self._oom.discard(id_)
                self._monitors.pop(id_, None)
                ev.set()

        self._monitors[id_] = asyncio.ensure_future(watch())

    def _memory_cgroup(self, pid: int, spec_json: bytes, id_: str) -> str:
        """The container's memory cgroup dir: its init's (``pid``), or, when the init is
        already gone, where runc puts it per the spec's ``linux.cgroupsPath`` (cgroupfs
        driver: an absolute path from the hierarchy's root; a relative one, or none (the
        container id), under the cgroup of runc's caller, i.e. the shim's, i.e. ours)."""
        found = memory_cgroup_of(pid) if pid > 0 else ""
        if found:
            return found
        try:
            path = json.loads(spec_json).get("linux", {}).get("cgroupsPath") or id_
        except (ValueError, AttributeError):
            path = id_
        if ":" in path:
            return ""  # systemd driver: a unit, not a path
        if path.startswith("/"):
            root = "/sys/fs/cgroup/memory"
            if not os.path.isdir(root):  # v2: pure, or hybrid's unified/
                root = "/sys/fs/cgroup" if os.path.exists(
                    "/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/unified"
            return os.path.join(root, path.lstrip("/"))
        mine = memory_cgroup_of(os.getpid())
        return os.path.join(mine, os.path.basename(path)) if mine else ""

    def _oom_killed(self, id_: str) -> bool:
        """Whether the kernel's OOM killer killed a process of the container (its memory
        cgroup's oom_kill count; read before the task is deleted, which removes the
        cgroup)."""
        try:
            _, status = self.records.container(id_)
        except errdefs.NotFound:
            return False
        return bool(status.memory_cgroup) and cgroup_oom_kills(status.memory_cgroup) > 0

    async def stop_container(self, id_: str, timeout: int) -> None:
        meta, status = self.records.container(id_)
        if status.state not in (st.RUNNING, st.UNKNOWN):
            return
        ev = self._exited.setdefault(meta.id, asyncio.Event())
        try:
            task = self.manager.get(NAMESPACE, meta.id)
        except errdefs.NotFound:
            self.records.update_container(meta.id, state=st.EXITED, finished_at=now_ns(),
                                          exit_code=255, reason="Unknown")
            return
        if timeout > 0:
            sig = _signal_number(meta.stop_signal) or _signal.SIGTERM
            try:
                await task.kill(sig)
            except errdefs.NotFound:
                pass
            try:
                await asyncio.wait_for(ev.wait(), timeout)
                return
            except TimeoutError:
                pass
        try:
            await task.kill(_signal.SIGKILL, all_=True)
        except errdefs.NotFound:
            pass
        try:
            await asyncio.wait_for(ev.wait(), 30)
        except TimeoutError:
            raise errdefs.DeadlineExceeded(f"container {meta.id} did not exit after "
                                           "SIGKILL") from None

    async def remove_container(self, id_: str) -> None:
        try:
            meta, status = self.records.container(id_)
        except errdefs.NotFound:
            return
        if status.state in (st.RUNNING, st.UNKNOWN):
            await self.stop_container(meta.id, 0)
        self.records.update_container(meta.id, removing=True)
        try:
            await self.manager.delete(NAMESPACE, meta.id)
        except errdefs.NotFound:
            pass
        try:
            await asyncio.to_thread(self.containers.delete, NAMESPACE, meta.id)
        except errdefs.NotFound:
            pass
        try:
            await asyncio.to_thread(self.snapshotter().remove, NAMESPACE, meta.id)
        except errdefs.NotFound:
            pass
        _rmtree(os.path.join(self.state, "containers", meta.id))  # the stdin FIFO's dir
        self.records.remove_container(meta.id)
        await asyncio.to_thread(self._release_image_volumes, meta.sandbox_id)
        self._exited.pop(meta.id, None)
        self._emit("deleted", meta.id, meta.sandbox_id)

    async def reopen_log(self, id_: str) -> None:
        meta, status = self.records.container(id_)
        if status.state != st.RUNNING:
            raise errdefs.FailedPrecondition("container is not running")
        task = self.manager.get(NAMESPACE, meta.id)
        await task.update(None, {REOPEN_LOG_ANNOTATION: "1"})

    async def update_resources(self, id_: str, linux) -> None:
        """containerd's UpdateContainerResources: only a RUNNING or CREATED container; the
        stored spec takes the new resources, then a running task gets them; if the runtime
        refuses, the stored spec is put back (so spec and cgroup never disagree)."""
        from ctrd.cri import spec as cri_spec
        from ctrd.metadata.containers import AnyValue

        meta, status = self.records.container(id_)
        async with self._update_lock:
            if status.state not in (st.RUNNING, st.CREATED):
                raise errdefs.FailedPrecondition(
                    f"container {meta.id} is in {_STATE_NAMES[status.state]} state")
            c = await asyncio.to_thread(self.containers.get, NAMESPACE, meta.id)
            old = c.spec
            spec = json.loads(c.spec.value)
            cri_spec.apply_resources(spec, linux, self.config, cri_spec.host_facts())
            resources = spec.get("linux", {}).get("resources", {})
            c.spec = AnyValue(SPEC_TYPE, json.dumps(spec).encode())
            await asyncio.to_thread(self.containers.update, NAMESPACE, c, ["spec"])
            if status.state != st.RUNNING:
                return
            from google.protobuf import any_pb2

            try:
                task = self.manager.get(NAMESPACE, meta.id)
                await task.update(any_pb2.Any(
                    type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
                    value=json.dumps(resources).encode()), {})
            except BaseException:
                c.spec = old
                await asyncio.to_thread(self.containers.update, NAMESPACE, c, ["spec"])
                raise

    async def exec_sync(self, id_: str, cmd: list[str], timeout: int) -> tuple[bytes, bytes, int]:
        from ctrd.cri import execio
        from ctrd.cri import spec as cri_spec

        meta, status = self.records.container(id_)
        if status.state != st.RUNNING:
            raise errdefs.FailedPrecondition(f"container {meta.id} is not running")
        if not cmd:
            raise errdefs.InvalidArgument("exec command must not be empty")
        task = self.manager.get(NAMESPACE, meta.id)
        c = await asyncio.to_thread(self.containers.get, NAMESPACE, meta.id)
        process = cri_spec.exec_process(json.loads(c.spec.value), cmd, tty=False)
        exec_id = os.urandom(16).hex()
        from google.protobuf import any_pb2

        spec_any = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
            value=json.dumps(process).encode())
        async with execio.Capture(os.path.join(self.state, "exec"), exec_id,
                                  EXEC_OUTPUT_LIMIT) as io:
            await task.exec(exec_id, stdin="", stdout=io.stdout, stderr=io.stderr,
                            terminal=False, spec=spec_any)
            try:
                waiter = asyncio.ensure_future(task.wait(exec_id))
                await task.start(exec_id)
                try:
                    resp = await asyncio.wait_for(asyncio.shield(waiter),
                                                  timeout if timeout > 0 else None)
                except TimeoutError:
                    try:
                        await task.kill(_signal.SIGKILL, exec_id=exec_id)
                    except errdefs.CtrdError:
                        pass
                    await waiter
                    raise errdefs.DeadlineExceeded(
                        f"failed to exec in container: timeout {timeout}s exceeded") from None
                await io.drain(5.0)
                return io.out, io.err, resp.exit_status
            finally:
                try:
                    await task.delete_process(exec_id)
                except errdefs.CtrdError:
                    pass

    # --- restart --------------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuild sandboxes and containers from the records and the tasks the task manager
        reloaded (containerd 1.6's recover/loadContainer):

        - a sandbox is READY when its status says so and its pinned namespaces are still
          there (a reboot or a hand cleanup took them: NOTREADY; Stop/Remove still run CNI
          DEL, since ``network_ready`` stays until a teardown);
        - a container with a task takes its state from the task: RUNNING is watched again
          (also when ctrd died between the task's start and the status update), STOPPED gives
          the task's exit code and time and the task is deleted, CREATED (ctrd died during
          StartContainer) is killed and deleted and the container stays CREATED;
        - a container without a task: CREATED stays, RUNNING becomes EXITED with exit code
          255 and reason Unknown, as in containerd;
        - sandbox state dirs and status dirs no record owns (a crash in the middle of a
          RunPodSandbox or a removal) are removed, with their /dev/shm mount.

        Each container's load is bounded (a hung shim does not hold the others up)."""
        try:
            recs = await asyncio.to_thread(self.containers.list, NAMESPACE)
        except errdefs.NotFound:
            recs = []
        for c in recs:
            kind = c.labels.get(st.KIND_LABEL)
            ext = c.extensions.get(st.SANDBOX_EXT if kind == "sandbox" else st.CONTAINER_EXT)
            if kind not in ("sandbox", "container") or ext is None:
                continue
            if kind == "sandbox":
                meta = st.meta_from_ext(st.SandboxMeta, ext.value)
                if meta is None:
                    continue
                status = self.records.load_status("sandboxes", meta.id, st.SandboxStatus)
                if status is None:
                    # died between the record and its status: the network may be set up
                    status = st.SandboxStatus(state=st.SANDBOX_NOTREADY,
                                              network_ready=bool(meta.netns))
                if status.state == st.SANDBOX_READY and not await asyncio.to_thread(
                        _pins_alive, meta):
                    log.warning("sandbox %s: its namespaces are gone; NOTREADY", meta.id)
                    status.state = st.SANDBOX_NOTREADY
                self.records.add_sandbox(meta, status)
            else:
                cmeta = st.meta_from_ext(st.ContainerMeta, ext.value)
                if cmeta is None:
                    continue
                cstatus = self.records.load_status("containers", cmeta.id,
                                                   st.ContainerStatus) \
                    or st.ContainerStatus(state=st.UNKNOWN, exit_code=255, reason="Unknown")
                self.records.add_container(cmeta, cstatus)
        loads = [self._load_pause(m.id) for m, _ in list(self.records.sandboxes.values())
                 if m.pause]
        loads += [self._load_container(m.id) for m, _ in list(self.records.containers.values())]
        results = await asyncio.gather(*loads, return_exceptions=True)
        for r in results:
            if isinstance(r, Exception):
                # one container's trouble never keeps the plugin from serving the others
                log.error("loading a CRI container: %s", r, exc_info=r)
        await asyncio.to_thread(self._cleanup_orphans)

    async def _load_pause(self, id_: str) -> None:
        """A READY sandbox keeps its pause/init when its task still runs (watched again,
        its pid refreshed); otherwise the task (if any) is killed and deleted and the
        sandbox is NOTREADY."""
        from ctrd.api.containerd.types.task import task_pb2

        _, status = self.records.sandbox(id_)
        try:
            task = self.manager.get(NAMESPACE, id_)
        except errdefs.NotFound:
            if status.state == st.SANDBOX_READY or status.pid:
                log.warning("sandbox %s: its process is gone; NOTREADY", id_)
                self.records.update_sandbox(id_, state=st.SANDBOX_NOTREADY, pid=0)
            return
        try:
            ts = await asyncio.wait_for(task.state(), LOAD_TIMEOUT)
        except (errdefs.CtrdError, TimeoutError) as e:
            log.warning("sandbox %s: state of its task: %s", id_, e)
            if status.state == st.SANDBOX_READY:
                self._monitor_sandbox(id_, task)  # still watched: its shim may answer later
            return
        if status.state == st.SANDBOX_READY and ts.status in (task_pb2.RUNNING,
                                                              task_pb2.PAUSED):
            if ts.pid != status.pid:
                self.records.update_sandbox(id_, pid=ts.pid)
            self._monitor_sandbox(id_, task)
            return
        await self._kill_and_delete(id_)
        self.records.update_sandbox(id_, state=st.SANDBOX_NOTREADY, pid=0)

    async def _load_container(self, id_: str) -> None:
        from ctrd.api.containerd.types.task import task_pb2

        _, status = self.records.container(id_)
        try:
            task = self.manager.get(NAMESPACE, id_)
        except errdefs.NotFound:
            if status.state in (st.RUNNING, st.UNKNOWN):
                self.records.update_container(id_, state=st.EXITED, exit_code=255,
                                              finished_at=now_ns(), pid=0, reason="Unknown")
            return
        try:
            ts = await asyncio.wait_for(task.state(), LOAD_TIMEOUT)
        except (errdefs.CtrdError, TimeoutError) as e:
            log.warning("container %s: state of its task: %s", id_, e)
            if status.state in (st.RUNNING, st.UNKNOWN):
                # still watched: its shim may answer later
                self.records.update_container(id_, state=st.RUNNING)
                self._monitor(id_, task)
            return
        if ts.status == task_pb2.CREATED:
            try:
                await task.kill(_signal.SIGKILL, all_=True)
            except errdefs.CtrdError:
                pass
            await self._delete_task(id_)
            if status.state != st.CREATED:
                self.records.update_container(id_, state=st.EXITED, exit_code=255, pid=0,
                                              finished_at=now_ns(), reason="Unknown")
        elif ts.status == task_pb2.STOPPED:
            oom = await asyncio.to_thread(self._oom_killed, id_)
            await self._delete_task(id_)
            finished = ts.exited_at.ToNanoseconds() or now_ns()
            self.records.update_container(
                id_, state=st.EXITED, exit_code=ts.exit_status, finished_at=finished, pid=0,
                started_at=status.started_at or finished, reason=_exit_reason(ts.exit_status, oom))
        else:
            changes: dict[str, Any] = {"state": st.RUNNING}
            if status.state != st.RUNNING:
                # died after the task's start, before the status was written
                changes.update(pid=ts.pid, started_at=now_ns(), exit_code=0, reason="")
            self.records.update_container(id_, **changes)
            self._monitor(id_, task)

    async def _delete_task(self, id_: str) -> None:
        try:
            await self.manager.delete(NAMESPACE, id_)
        except errdefs.NotFound:
            pass
        except errdefs.CtrdError as e:
            log.warning("delete task of container %s: %s", id_, e)

    def _cleanup_orphans(self) -> None:
        """Remove the sandbox state dirs and status dirs that no record owns."""
        sandboxes = set(self.records.sandboxes)
        d = os.path.join(self.state, "sandboxes")
        for name in _listdir(d):
            if name not in sandboxes:
                log.info("removing orphaned sandbox dir %s", name)
                _unmount_shm(os.path.join(d, name))
                _rmtree(os.path.join(d, name))
        volumes = self.image_volumes
        for name in volumes.orphans(sandboxes):
            log.info("removing orphaned image volumes of sandbox %s", name)
            volumes.cleanup(name, delete_lease=True)
        for kind, ids in (("sandboxes", sandboxes), ("containers", set(self.records.containers))):
            for name in _listdir(os.path.join(self.root, kind)):
                if name not in ids:
                    self.records.drop_dir(kind, name)

    async def close(self) -> None:
        for t in list(self._monitors.values()):
            t.cancel()


# --- sandbox files ------------------------------------------------------------------------

SHM_SIZE = 64 << 20  # containerd's defaultShmSize


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _filter_labels(labels) -> dict[str, str]:
    return {k: v for k, v in dict(labels).items() if k != st.KIND_LABEL}


def _copy_or(path: str, fallback: str) -> str:
    try:
        with open(path) as f:
            return f.read(1 << 20)
    except OSError:
        return fallback


def _write_sandbox_files(d: str, config, hostname: str, host_net: bool) -> None:
    """hostname, hosts and resolv.conf for the pod's containers (bind-mounted by the spec)."""
    with open(os.path.join(d, "hostname"), "w") as f:
        f.write(hostname + "\n")
    with open(os.path.join(d, "hosts"), "w") as f:
        f.write(_copy_or("/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost "
                                       "ip6-localhost ip6-loopback\n"))
    dns = config.dns_config
    if dns.servers or dns.searches or dns.options:
        lines = []
        if dns.searches:
            lines.append("search " + " ".join(dns.searches))
        lines += [f"nameserver {s}" for s in dns.servers]
        if dns.options:
            lines.append("options " + " ".join(dns.options))
        text = "\n".join(lines) + "\n"
    else:
        text = _copy_or("/etc/resolv.conf", "")
    with open(os.path.join(d, "resolv.conf"), "w") as f:
        f.write(text)
    for name in ("hostname", "hosts", "resolv.conf"):
        os.chmod(os.path.join(d, name), 0o644)


def _mount_shm(d: str) -> None:
    from ctrd.snapshots.mount import mount
    from ctrd.snapshots.snapshotter import Mount

    target = os.path.join(d, "shm")
    os.makedirs(target, exist_ok=True)
    mount(Mount(type="tmpfs", source="shm",
                options=["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_SIZE}"]),
          target)


def _unmount_shm(d: str) -> None:
    from ctrd.snapshots.mount import unmount_all

    target = os.path.join(d, "shm")
    if os.path.isdir(target):
        unmount_all(target)


def _mount_pb(m) -> Any:
    from ctrd.api.containerd.types import mount_pb2

    return mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options))


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except FileNotFoundError:
        return []


def _pins_alive(meta: st.SandboxMeta) -> bool:
    """Whether every namespace pin of the sandbox is still a live namespace."""
    from ctrd.cri import netns

    return all(netns.is_pinned(p, kind) for kind, p in
               (("net", meta.netns), ("ipc", meta.ipc), ("uts", meta.uts)) if p)


def _exit_reason(code: int, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    return "Completed" if code == 0 else "Error"


_STATE_NAMES = {st.CREATED: "CONTAINER_CREATED", st.RUNNING: "CONTAINER_RUNNING",
                st.EXITED: "CONTAINER_EXITED", st.UNKNOWN: "CONTAINER_UNKNOWN"}


def _signal_number(name: str) -> int:
    """A stop signal as images spell it (SIGTERM, TERM, 15); 0 when unknown."""
    name = name.strip().upper()
    if not name:
        return 0
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    return int(getattr(_signal, name, 0))


def memory_cgroup_of(pid: int, mountpoint: str = "/sys/fs/cgroup") -> str:
    """The directory of ``pid``'s memory cgroup: the v1 memory controller's, else the v2
    unified one; "" when it cannot be read (the process is gone)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    v2 = ""
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return os.path.join(mountpoint, "memory", path.lstrip("/"))
        if hid == "0" and controllers == "":
            v2 = path
    if v2:
        # pure v2 is mounted at the mountpoint; a hybrid host has it under unified/
        hybrid = not os.path.exists(os.path.join(mountpoint, "cgroup.controllers"))
        base = os.path.join(mountpoint, "unified") if hybrid else mountpoint
        return os.path.join(base, v2.lstrip("/"))
    return ""


def cgroup_oom_kills(cgroup_dir: str) -> int:
    """How many processes the kernel's OOM killer killed in ``cgroup_dir``: ``oom_kill`` of
    memory.oom_control (v1) or memory.events (v2); 0 when unknown."""
    for name in ("memory.oom_control", "memory.events"):
        try:
            with open(os.path.join(cgroup_dir, name)) as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return 0
