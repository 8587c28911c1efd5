"""StopContainer: the stop signal, the timeout, SIGKILL. Idempotent; an unknown id is not an
error (CRI contract)."""

from __future__ import annotations

import asyncio

from ctrd import errdefs
from ctrd.cri import stop_signal
from ctrd.cri import store as st
from ctrd.cri.helpers import NAMESPACE, cri_pb, now_ns


class ContainerStop:
    """Mixed into CRIRuntime."""

    async def stop_container(self, id_: str, timeout: int) -> None:
        """The stop signal, ``timeout`` seconds, SIGKILL. Idempotent: a stopped container or
        an unknown id is not an error (the CRI contract; containerd 2.x answers OK)."""
        try:
            meta, status = self.records.container(id_)
        except errdefs.NotFound:
            return
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
            sig = stop_signal.number(meta.stop_signal)
            try:
                await task.kill(sig)
            except errdefs.NotFound:
                pass
            try:
                await asyncio.wait_for(ev.wait(), timeout)
                return
            except TimeoutError:
                pass
        await self._sigkill_and_await(task, ev, f"container {meta.id}")


class ContainerStopRPC:
    """Mixed into RuntimeService."""

    async def StopContainer(self, request, context):
        pb = cri_pb()
        await self.rt.stop_container(request.container_id, request.timeout)
        return pb.StopContainerResponse()
