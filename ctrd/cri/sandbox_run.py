"""RunPodSandbox (containerd's sandbox_run.go): a unique name reserved; a state dir with
hostname, hosts, resolv.conf and (unless the pod uses the host's IPC) a /dev/shm tmpfs; the
network namespace pinned, and IPC/UTS too without a pause container (host ones per
NamespaceOptions); CNI ADD; a ctrd container record (kind=sandbox); with a pause container
or a pod init (:mod:`podsandbox`) its task, started and watched. Any failure undoes what
was done. A retry of a create in flight waits for it (``_dedup``)."""

from __future__ import annotations

import asyncio
import os

from ctrd import errdefs
from ctrd.cri import sandbox_record
from ctrd.cri import store as st
from ctrd.cri.helpers import (
    NAMESPACE,
    cri_pb,
    filter_labels,
    log,
    new_id,
    now_ns,
    rmtree,
)
from ctrd.cri.sandbox_files import mount_shm, unmount_shm, write_sandbox_files


class SandboxRun:
    """Mixed into CRIRuntime."""

    async def run_pod_sandbox(self, config, runtime_handler: str = "",
                              sandbox_id: str = "") -> str:
        """``sandbox_id``: the id a Sandbox API client chose (the podsandbox controller; its
        sandbox store record is the client's); none: a new one, and the pod's record is
        written here (:mod:`ctrd.cri.sandbox_record`)."""
        md = config.metadata
        key = "pod\0" + "_".join([md.name, md.namespace, md.uid, str(md.attempt)])
        return await self._dedup(key, lambda: self._run_pod_sandbox(config, runtime_handler,
                                                                    sandbox_id))

    async def _run_pod_sandbox(self, config, runtime_handler: str = "",
                               sandbox_id: str = "") -> str:
        pb = cri_pb()
        md = config.metadata
        if not config.HasField("metadata"):  # containerd 2.3.4: a plain error, UNKNOWN
            raise errdefs.Unknown("sandbox config must include metadata")
        if not md.name or not md.namespace or not md.uid:
            raise errdefs.InvalidArgument("sandbox config must include metadata with name, "
                                          "namespace and uid")
        from ctrd.cri import identity, userns  # where used: not at daemon start

        identity.check_policy(config.linux.security_context.supplemental_groups_policy)
        identity.check_groups(config.linux.security_context.supplemental_groups)
        handler_name, handler = self.handler(runtime_handler)
        pause = self._pause_kind(config)
        image = pod_init = None
        if pause == "image":
            image = await self._ensure_sandbox_image()
        elif pause == "init":
            pod_init = self._pod_init_binary()
        id_ = sandbox_id or new_id()
        name = "_".join([md.name, md.namespace, md.uid, str(md.attempt)])
        self.records.reserve(name, id_)
        undo: list = [lambda: self.records.release(name)]
        try:
            nsopts = config.linux.security_context.namespace_options
            pu = userns.pod_userns(config)
            host_net = nsopts.network == pb.NODE
            host_ipc = nsopts.ipc == pb.NODE
            d = self._sandbox_dir(id_)
            os.makedirs(d, mode=0o711)
            undo.append(lambda: rmtree(d))
            # No hostname in the config: the node's, as containerd (os.Hostname()), also
            # for a pod with its own UTS namespace (a pod name is often no valid hostname).
            hostname = config.hostname or os.uname().nodename
            await asyncio.to_thread(write_sandbox_files, d, config, hostname, host_net)
            if not host_ipc:
                await asyncio.to_thread(mount_shm, d)
                undo.append(lambda: unmount_shm(d))
            # A pause container holds the pod's IPC and UTS namespaces itself: only the
            # network namespace is pinned (CNI runs before the pause starts, as containerd).
            kinds = [] if host_net else (["net"] if pause == "image" else ["net", "uts"])
            if not host_ipc and pause != "image":
                kinds.append("ipc")
            paths: dict[str, str] = {}
            if kinds or pu:
                paths = await asyncio.to_thread(self._make_namespaces, id_, d, hostname, kinds,
                                                pu)
                undo.append(lambda: self._drop_namespaces(paths))
            meta = st.SandboxMeta(id=id_, name=name, config={},
                                  runtime_handler=runtime_handler,  # as asked (containerd)
                                  runtime_type=handler.runtime_type,
                                  netns=paths.get("net", ""), ipc=paths.get("ipc", ""),
                                  uts=paths.get("uts", ""), userns=paths.get("user", ""),
                                  dir=d, created_at=now_ns(),
                                  pause=pause)
            st.with_config(meta, config)
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
            labels = {**filter_labels(config.labels), st.KIND_LABEL: "sandbox"}
            if pause:
                status.pid = await self._start_pause(meta, config, handler, labels, image,
                                                     pod_init, undo)
            else:
                rec = self._container_record(id_, labels, handler.runtime_type,
                                             self.runtime_options(handler),
                                             {"ociVersion": "1.0.2"}, st.SANDBOX_EXT, meta)
                await asyncio.to_thread(self.containers.create, NAMESPACE, rec)
            if not sandbox_id:
                await asyncio.to_thread(sandbox_record.add, self.md, meta,
                                        self.runtime_options(handler), status.ip,
                                        status.additional_ips)
                undo.append(lambda: sandbox_record.remove(self.md, id_))
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


class SandboxRunRPC:
    """Mixed into RuntimeService."""

    async def RunPodSandbox(self, request, context):
        pb = cri_pb()
        id_ = await self.rt.run_pod_sandbox(request.config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=id_)
