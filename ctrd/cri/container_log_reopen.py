"""ReopenContainerLog: the shim reopens the kubelet's log file (after the kubelet rotated it)."""

from __future__ import annotations

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.helpers import NAMESPACE, REOPEN_LOG_ANNOTATION, cri_pb


class ContainerLogReopen:
    """Mixed into CRIRuntime."""

    async def reopen_log(self, id_: str) -> None:
        meta, status = self.records.container(id_)
        if status.state != st.RUNNING:
            raise errdefs.FailedPrecondition("container is not running")
        task = self.manager.get(NAMESPACE, meta.id)
        await task.update(None, {REOPEN_LOG_ANNOTATION: "1"})


class ContainerLogReopenRPC:
    """Mixed into RuntimeService."""

    async def ReopenContainerLog(self, request, context):
        pb = cri_pb()
        await self.rt.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()
