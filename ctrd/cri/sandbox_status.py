"""PodSandboxStatus: state, network (IPs while READY), namespace options, and with ``verbose``
containerd's ``info`` JSON (the fields ctrd has)."""

from __future__ import annotations

import asyncio
import json

from ctrd.cri import store as st
from ctrd.cri.helpers import cri_pb


class SandboxStatusCore:
    """Mixed into CRIRuntime."""

    def sandbox_info(self, meta: st.SandboxMeta, status: st.SandboxStatus,
                     runtime_spec: dict | None = None) -> dict:
        """PodSandboxStatus verbose info: containerd 2.3.4's keys (``runtimeSpec``: the pod
        process's spec, None without one), plus ctrd's own: ``imageId``, ``pause``, the
        pinned ``netns``/``ipcns``/``utsns``."""
        from ctrd.cri import sandbox_update_resources, status_info

        ready = status.state == st.SANDBOX_READY
        config = status_info.go_json(self.sandbox_config(meta))
        cni_result = status_info.cni_result_info(status.cni_result)
        info = {
            # containerd 2.3.4 after StopPodSandbox: "deleted" (its pause task is gone)
            "pid": status.pid, "processStatus": "running" if ready else "deleted",
            # containerd: false for a host-network pod (no netns to close)
            "netNamespaceClosed": bool(meta.netns) and not status.network_ready,
            "image": meta.image if meta.pause == "image" else "",
            "imageId": meta.image_id, "pause": meta.pause or "none",
            "snapshotKey": meta.snapshot_key,
            "snapshotter": self.snapshotter_name,
            "runtimeType": meta.runtime_type, "runtimeOptions": None,
            "netns": meta.netns, "ipcns": meta.ipc, "utsns": meta.uts, "userns": meta.userns,
            "cniResult": cni_result, "config": config, "runtimeSpec": runtime_spec,
            "sandboxMetadata": status_info.sandbox_metadata(meta, status, config, cni_result)}
        if meta.runtime_handler:  # containerd: omitempty
            info["runtimeHandler"] = meta.runtime_handler
        info.update(sandbox_update_resources.info_fields(status))  # once recorded
        return info


class SandboxStatusRPC:
    """Mixed into RuntimeService."""

    def _sandbox_pb(self, meta: st.SandboxMeta, status: st.SandboxStatus):
        pb = cri_pb()
        config = self.rt.sandbox_config(meta)
        return config, dict(
            id=meta.id, metadata=config.metadata,
            state=pb.SANDBOX_READY if status.state == st.SANDBOX_READY else pb.SANDBOX_NOTREADY,
            created_at=meta.created_at, labels=config.labels, annotations=config.annotations,
            runtime_handler=meta.runtime_handler)

    async def PodSandboxStatus(self, request, context):
        pb = cri_pb()
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
