"""StopPodSandbox: the pod's containers killed, then its pause/init, CNI DEL, namespaces
released; NOTREADY. Idempotent; an unknown id is not an error (CRI contract)."""

from __future__ import annotations

import asyncio
import os

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.helpers import cri_pb


class SandboxStop:
    """Mixed into CRIRuntime."""

    async def stop_pod_sandbox(self, id_: str) -> None:
        """Containers killed, then the pause/init (SIGKILL), CNI DEL, namespaces released;
        NOTREADY. Safe to repeat, and on whatever is already gone; an unknown id is not an
        error (the CRI contract: the kubelet retries stops; containerd 2.x answers OK)."""
        try:
            meta, status = self.records.sandbox(id_)
        except errdefs.NotFound:
            return
        for cmeta, cstatus in self.records.containers_of(meta.id):
            if cstatus.state in (st.RUNNING, st.UNKNOWN):
                await self.stop_container(cmeta.id, 0)
        if meta.pause:
            await self._stop_pause(meta)
            self.records.update_sandbox(meta.id, pid=0)
        if status.network_ready:
            await self._teardown_network(meta, self.sandbox_config(meta))
            self.records.update_sandbox(meta.id, network_ready=False)
        paths = {k: p for k, p in (("net", meta.netns), ("ipc", meta.ipc), ("uts", meta.uts),
                                   ("user", meta.userns)) if p}
        if paths:
            await asyncio.to_thread(self._drop_namespaces, paths)
        await asyncio.to_thread(self.image_volumes.cleanup, meta.id)  # containerd: at stop
        self.records.update_sandbox(meta.id, state=st.SANDBOX_NOTREADY)

    async def _teardown_network(self, meta: st.SandboxMeta, config) -> None:
        labels, caps = self._cni_args(meta, config)
        netns = meta.netns if meta.netns and os.path.exists(meta.netns) else ""
        await asyncio.to_thread(self.cni.teardown, meta.id, netns, labels=labels,
                                capability_args=caps)


class SandboxStopRPC:
    """Mixed into RuntimeService."""

    async def StopPodSandbox(self, request, context):
        pb = cri_pb()
        await self.rt.stop_pod_sandbox(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()
