"""RemoveContainer: a forced stop, then its task, record, snapshot and state dir. An unknown id
is not an error."""

from __future__ import annotations

import asyncio
import os

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.helpers import NAMESPACE, cri_pb, rmtree


class ContainerRemove:
    """Mixed into CRIRuntime."""

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
        self.attach_io.close(meta.id)
        from ctrd.cri import userns  # where used: not at daemon start

        # idmapped volume clones detached first: the tree below holds them
        await asyncio.to_thread(userns.release_volumes, userns.volumes_dir(self.state, meta.id))
        rmtree(os.path.join(self.state, "containers", meta.id))  # the stdio FIFOs' dir
        self.records.remove_container(meta.id)
        await asyncio.to_thread(self.release_image_volumes, meta.sandbox_id)
        self._exited.pop(meta.id, None)
        self._emit("deleted", meta.id, meta.sandbox_id)


class ContainerRemoveRPC:
    """Mixed into RuntimeService."""

    async def RemoveContainer(self, request, context):
        pb = cri_pb()
        await self.rt.remove_container(request.container_id)
        return pb.RemoveContainerResponse()
