"""PodSandboxStatus: state, network (IPs while READY), namespace options, and with ``verbose``
containerd's ``info`` JSON (the fields ctrd has)."""

from __future__ import annotations

import json

from ctrd.cri import store as st
from ctrd.cri.helpers import cri_pb


class SandboxStatusCore:
    """Mixed into CRIRuntime."""

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
            linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=nsopts)))
        resp = pb.PodSandboxStatusResponse(status=out)
        if request.verbose:
            resp.info["info"] = json.dumps(self.rt.sandbox_info(meta, status))
        return resp
