"""runtime.v1 RuntimeService on ctrd's socket: converts CRI messages to and from the core in
:mod:`ctrd.cri.server`. Errors are ctrd's vocabulary (mapped to codes at the gRPC edge)."""

from __future__ import annotations

import asyncio
import json

from ctrd.api.cri.runtime.v1 import api_pb2 as pb
from ctrd.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc
from ctrd.cri import store as st
from ctrd.cri.server import CRIRuntime, decode_msg
from ctrd.cri.stats_methods import StatsMethods
from ctrd.cri.streaming.methods import StreamingMethods

RUNTIME_NAME = "ctrd"
RUNTIME_API_VERSION = "v1"


class RuntimeService(StatsMethods, StreamingMethods, pb_grpc.RuntimeServiceServicer):
    """runtime.v1 RuntimeService. Exec, Attach, PortForward and GetContainerEvents come from
    :class:`ctrd.cri.streaming.methods.StreamingMethods` (the streaming server's side), the
    stats calls from :class:`ctrd.cri.stats_methods.StatsMethods`."""

    def __init__(self, runtime: CRIRuntime) -> None:
        self.rt = runtime

    def register_grpc(self, server) -> None:
        pb_grpc.add_RuntimeServiceServicer_to_server(self, server)

    # --- runtime --------------------------------------------------------------------------

    async def Version(self, request, context):
        from ctrd import __version__

        return pb.VersionResponse(version="0.1.0", runtime_name=RUNTIME_NAME,
                                  runtime_version=__version__,
                                  runtime_api_version=RUNTIME_API_VERSION)

    async def Status(self, request, context):
        conds, info = await asyncio.to_thread(self.rt.status)
        resp = pb.StatusResponse(status=pb.RuntimeStatus(conditions=[
            pb.RuntimeCondition(type=t, status=s, reason=r, message=m)
            for t, s, r, m in conds]))
        for name, h in self.rt.config.containerd.runtimes.items():
            resp.runtime_handlers.add(name=name, features=pb.RuntimeHandlerFeatures(
                recursive_read_only_mounts=False, user_namespaces=False))
        if request.verbose:
            resp.info.update(info)
        return resp

    async def UpdateRuntimeConfig(self, request, context):
        await asyncio.to_thread(self.rt.update_runtime_config,
                                request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()

    # --- sandboxes ------------------------------------------------------------------------

    async def RunPodSandbox(self, request, context):
        id_ = await self.rt.run_pod_sandbox(request.config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=id_)

    async def StopPodSandbox(self, request, context):
        await self.rt.stop_pod_sandbox(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request, context):
        await self.rt.remove_pod_sandbox(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    def _sandbox_pb(self, meta: st.SandboxMeta, status: st.SandboxStatus):
        config = self.rt.sandbox_config(meta)
        return config, dict(
            id=meta.id, metadata=config.metadata,
            state=pb.SANDBOX_READY if status.state == st.SANDBOX_READY else pb.SANDBOX_NOTREADY,
            created_at=meta.created_at, labels=config.labels, annotations=config.annotations,
            runtime_handler=meta.runtime_handler)

    async def PodSandboxStatus(self, request, context):
        meta, status = self.rt.records.sandbox(request.pod_sandbox_id)
        config, fields = self._sandbox_pb(meta, status)
        nsopts = config.linux.security_context.namespace_options
        out = pb.PodSandboxStatus(
            **fields,
            network=pb.PodSandboxNetworkStatus(
                ip=status.ip if status.state == st.SANDBOX_READY else "",
                additional_ips=[pb.PodIP(ip=ip) for ip in status.additional_ips]
                if status.state == st.SANDBOX_READY else []),
            linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(
                # as given: containerd leaves options unset when the config has none
                options=nsopts if config.linux.security_context.HasField(
                    "namespace_options") else None)))
        resp = pb.PodSandboxStatusResponse(status=out)
        if request.verbose:
            spec = await asyncio.to_thread(self._spec_of, meta.id) if meta.pause else None
            resp.info["info"] = json.dumps(self.rt.sandbox_info(meta, status, spec))
        return resp

    def _spec_of(self, id_: str) -> dict | None:
        """The OCI spec of container record ``id_`` in k8s.io (None: no such record)."""
        from ctrd import errdefs

        try:
            return json.loads(self.rt.containers.get("k8s.io", id_).spec.value)
        except errdefs.NotFound:
            return None

    async def ListPodSandbox(self, request, context):
        f = request.filter if request.HasField("filter") else None
        items = []
        for meta, status in list(self.rt.records.sandboxes.values()):
            config, fields = self._sandbox_pb(meta, status)
            if f is not None:
                if f.id and not meta.id.startswith(f.id):
                    continue
                if f.HasField("state") and f.state.state != fields["state"]:
                    continue
                if not st.labels_match(f.label_selector, config.labels):
                    continue
            items.append(pb.PodSandbox(**fields))
        items.sort(key=lambda s: s.created_at)
        return pb.ListPodSandboxResponse(items=items)

    # --- containers -----------------------------------------------------------------------

    async def CreateContainer(self, request, context):
        id_ = await self.rt.create_container(request.pod_sandbox_id, request.config,
                                             request.sandbox_config)
        return pb.CreateContainerResponse(container_id=id_)

    async def StartContainer(self, request, context):
        await self.rt.start_container(request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(self, request, context):
        await self.rt.stop_container(request.container_id, request.timeout)
        return pb.StopContainerResponse()

    async def RemoveContainer(self, request, context):
        await self.rt.remove_container(request.container_id)
        return pb.RemoveContainerResponse()

    def _container_fields(self, meta: st.ContainerMeta, status: st.ContainerStatus):
        config = decode_msg(pb.ContainerConfig, meta.config)
        return config, dict(id=meta.id, metadata=config.metadata,
                            image=pb.ImageSpec(image=config.image.image),
                            image_ref=meta.image_ref, state=status.state,
                            created_at=meta.created_at, labels=config.labels,
                            annotations=config.annotations)

    async def ListContainers(self, request, context):
        f = request.filter if request.HasField("filter") else None
        out = []
        for meta, status in list(self.rt.records.containers.values()):
            config, fields = self._container_fields(meta, status)
            if f is not None:
                if f.id and not meta.id.startswith(f.id):
                    continue
                if f.HasField("state") and f.state.state != status.state:
                    continue
                if f.pod_sandbox_id and not meta.sandbox_id.startswith(f.pod_sandbox_id):
                    continue
                if not st.labels_match(f.label_selector, config.labels):
                    continue
            out.append(pb.Container(pod_sandbox_id=meta.sandbox_id, **fields))
        out.sort(key=lambda c: c.created_at)
        return pb.ListContainersResponse(containers=out)

    async def ContainerStatus(self, request, context):
        meta, status = self.rt.records.container(request.container_id)
        config, fields = self._container_fields(meta, status)
        image = await asyncio.to_thread(self.rt.images.find, meta.image_ref)
        if image is not None:
            if image.repo_tags:
                fields["image"] = pb.ImageSpec(image=image.repo_tags[0])
            if image.repo_digests:
                fields["image_ref"] = image.repo_digests[0]
        from ctrd.cri import status_info

        c = await asyncio.to_thread(self.rt.containers.get, "k8s.io", meta.id)
        spec = json.loads(c.spec.value)
        out = pb.ContainerStatus(
            **fields, started_at=status.started_at, finished_at=status.finished_at,
            exit_code=status.exit_code, reason=status.reason, message=status.message,
            mounts=config.mounts, log_path=meta.log_path,
            resources=status_info.container_resources(spec))
        resp = pb.ContainerStatusResponse(status=out)
        if request.verbose:
            resp.info["info"] = json.dumps({
                "sandboxID": meta.sandbox_id, "pid": status.pid, "removing": status.removing,
                "snapshotKey": meta.id, "snapshotter": meta.snapshotter,
                "runtimeType": c.runtime.name, "runtimeOptions": None,
                "config": status_info.go_json(config), "runtimeSpec": spec})
        return resp

    async def UpdateContainerResources(self, request, context):
        await self.rt.update_resources(request.container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(self, request, context):
        await self.rt.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    async def ExecSync(self, request, context):
        out, err, code = await self.rt.exec_sync(request.container_id, list(request.cmd),
                                                 request.timeout)
        return pb.ExecSyncResponse(stdout=out, stderr=err, exit_code=code)

