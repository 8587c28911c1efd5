"""RemovePodSandbox: stopped first if needed, its containers removed, the pause's task,
record, snapshot and state dir; with the last pod the namespace pin dirs unmounted. An
unknown id is not an error (the kubelet retries removals)."""

from __future__ import annotations

import asyncio
import os

from ctrd import errdefs
from ctrd.cri import sandbox_record
from ctrd.cri import store as st
from ctrd.cri.helpers import cri_pb, log, rmtree
from ctrd.cri.sandbox_files import unmount_shm


class SandboxRemove:
    """Mixed into CRIRuntime."""

    async def remove_pod_sandbox(self, id_: str, keep_record: bool = False) -> None:
        """``keep_record``: leave the pod's sandbox store record (the podsandbox controller's
        Shutdown: the record is its client's to delete, as with containerd's)."""
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
        await asyncio.to_thread(unmount_shm, meta.dir)
        await asyncio.to_thread(rmtree, meta.dir)
        await asyncio.to_thread(self._delete_record, meta.id)
        if not keep_record:
            await asyncio.to_thread(sandbox_record.remove, self.md, meta.id)
        if meta.snapshot_key:
            await asyncio.to_thread(self._remove_snapshot, meta.snapshot_key)
        await asyncio.to_thread(self.image_volumes.cleanup, meta.id, True)  # and its lease
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
            for kind in ("net", "ipc", "uts", "user"):
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


class SandboxRemoveRPC:
    """Mixed into RuntimeService."""

    async def RemovePodSandbox(self, request, context):
        pb = cri_pb()
        await self.rt.remove_pod_sandbox(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()
