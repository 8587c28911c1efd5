"""Recovery at start (containerd's restart.go): sandboxes and containers rebuilt from the
records and the tasks the task manager reloaded; see :meth:`Restart.load`."""

from __future__ import annotations

import asyncio
import os
import signal as _signal
from typing import Any

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.helpers import LOAD_TIMEOUT, NAMESPACE, exit_reason, listdir, log, now_ns, rmtree
from ctrd.cri.sandbox_files import unmount_shm


def pins_alive(meta: st.SandboxMeta) -> bool:
    """Whether every namespace pin of the sandbox is still a live namespace."""
    from ctrd.cri import netns

    return all(netns.is_pinned(p, kind) for kind, p in
               (("net", meta.netns), ("ipc", meta.ipc), ("uts", meta.uts),
                ("user", meta.userns)) if p)


class Restart:
    """Mixed into CRIRuntime."""

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
                        pins_alive, meta):
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
                self.attach_io.reopen(id_)
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
                started_at=status.started_at or finished, reason=exit_reason(ts.exit_status, oom))
        else:
            changes: dict[str, Any] = {"state": st.RUNNING}
            if status.state != st.RUNNING:
                # died after the task's start, before the status was written
                changes.update(pid=ts.pid, started_at=now_ns(), exit_code=0, reason="")
            self.records.update_container(id_, **changes)
            self.attach_io.reopen(id_)
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
        for name in listdir(d):
            if name not in sandboxes:
                log.info("removing orphaned sandbox dir %s", name)
                unmount_shm(os.path.join(d, name))
                rmtree(os.path.join(d, name))
        volumes = self.image_volumes
        for name in volumes.orphans(sandboxes):
            log.info("removing orphaned image volumes of sandbox %s", name)
            volumes.cleanup(name, delete_lease=True)
        # idmapped volume clones of containers that never got a record (a crash mid-create)
        orphans = [n for n in listdir(os.path.join(self.state, "containers"))
                   if n not in self.records.containers]
        if orphans:
            from ctrd.cri import userns  # only then: not at every daemon start

            for name in orphans:
                userns.release_volumes(userns.volumes_dir(self.state, name))
        for kind, ids in (("sandboxes", sandboxes), ("containers", set(self.records.containers))):
            for name in listdir(os.path.join(self.root, kind)):
                if name not in ids:
                    self.records.drop_dir(kind, name)
