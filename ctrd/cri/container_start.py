"""StartContainer: a task through the handler's shim, the kubelet's log file written by the
shim; RUNNING, and watched: when the task exits its shim is released at once and the status
keeps exit code, reason (Completed, Error, OOMKilled) and time."""

from __future__ import annotations

import asyncio
import json
import os

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.helpers import (
    NAMESPACE,
    STATE_NAMES,
    cgroup_oom_kills,
    cri_pb,
    exit_reason,
    log,
    memory_cgroup_of,
    mount_pb,
    now_ns,
)


class ContainerStart:
    """Mixed into CRIRuntime."""

    async def start_container(self, id_: str) -> None:
        meta, status = self.records.container(id_)
        if status.state != st.CREATED:
            # containerd 2.3.4's words and code (plain errors: UNKNOWN)
            raise errdefs.Unknown(
                f"failed to set starting state for container {errdefs.quote(meta.id)}: "
                f"container is in {STATE_NAMES[status.state]} state")
        smeta, sstatus = self.records.sandbox(meta.sandbox_id)
        if sstatus.state != st.SANDBOX_READY:
            raise errdefs.Unknown(f"sandbox container {errdefs.quote(smeta.id)} is not running")
        from ctrd.runtime.manager import CreateOpts

        # single-record LMDB reads on the loop: they never wait for a writer, and a thread
        # hop costs more than the read (as the containerd services' Get calls do)
        c = self.containers.get(NAMESPACE, meta.id)
        config = st.config_of(meta)
        if meta.log_path:
            os.makedirs(os.path.dirname(meta.log_path), exist_ok=True)
        stdout, stderr = self._task_io(meta)
        stdin = ""
        if config.stdin:  # kept for attach (ctrd.cri.streaming): the shim holds a writer
            from ctrd.cri.streaming.backend import stdin_fifo

            stdin = stdin_fifo(self.state, meta.id)
            os.makedirs(os.path.dirname(stdin), mode=0o700, exist_ok=True)
            if not os.path.exists(stdin):
                os.mkfifo(stdin, 0o600)
        if not meta.log_path:  # no log file to follow: attach reads the output's FIFOs
            relay = self.attach_io.open(meta.id, config.tty)
            stdout, stderr = relay.stdout_path, relay.stderr_path
        mounts = self.snapshotter().mounts(NAMESPACE, meta.id)
        options = None
        if c.runtime.options is not None:
            from google.protobuf import any_pb2

            options = any_pb2.Any(type_url=c.runtime.options.type_url,
                                  value=c.runtime.options.value)
        opts = CreateOpts(spec=c.spec.value, runtime=c.runtime.name, runtime_options=options,
                          rootfs=[mount_pb(m) for m in mounts], stdin=stdin,
                          stdout=stdout, stderr=stderr, terminal=config.tty)
        try:
            task = await self.manager.create(NAMESPACE, meta.id, opts)
            try:
                # taken before the start: a process that exits at once has an exit time
                # after it (an exit stamped by the shim can precede our return from start)
                started = now_ns()
                resp = await task.start()
            except BaseException:
                await self.manager.delete(NAMESPACE, meta.id)
                raise
        except errdefs.CtrdError as e:
            self.attach_io.close(meta.id)
            self.records.update_container(meta.id, state=st.EXITED, finished_at=now_ns(),
                                          exit_code=128, reason="StartError",
                                          message=str(e))
            raise
        self.records.update_container(meta.id, state=st.RUNNING, pid=resp.pid,
                                      started_at=started)
        self._emit("started", meta.id, meta.sandbox_id)
        # the memory cgroup (for OOM kills at exit) is looked up by the watcher, after the
        # answer: not on StartContainer's path
        self._monitor(meta.id, task, cgroup_of=(resp.pid, c.spec.value))

    def _task_io(self, meta: st.ContainerMeta) -> tuple[str, str]:
        """stdout/stderr URIs: the kubelet's log file, written in its format by the shim."""
        if not meta.log_path:
            return "", ""
        from urllib.parse import quote

        q = f"format=cri&max_line={self.config.max_container_log_line_size}"
        uri = f"file://{quote(meta.log_path)}?{q}"
        return uri + "&stream=stdout", uri + "&stream=stderr"

    def _monitor(self, id_: str, task, cgroup_of: tuple[int, bytes] | None = None) -> None:
        """Watch the container's task until it exits; then its exit code, reason and time
        are recorded and the task deleted (its shim released). ``cgroup_of`` (init pid,
        spec): first record the container's memory cgroup (a fresh start)."""
        ev = self._exited.setdefault(id_, asyncio.Event())
        ev.clear()

        async def watch():
            if cgroup_of is not None:
                cgroup = await asyncio.to_thread(self._memory_cgroup, *cgroup_of, id_)
                try:
                    self.records.update_container(id_, memory_cgroup=cgroup)
                except errdefs.NotFound:
                    pass
            try:
                resp = await task.wait()
                code = resp.exit_status
                finished = resp.exited_at.ToNanoseconds() or now_ns()
            except errdefs.CtrdError as e:
                log.warning("wait for container %s: %s", id_, e)
                code, finished = 255, now_ns()
            # before the delete: the runtime removes the cgroup (and its OOM count) with it
            oom = id_ in self._oom or await asyncio.to_thread(self._oom_killed, id_)
            try:
                await self.manager.delete(NAMESPACE, id_)  # release the shim at once
            except errdefs.CtrdError as e:
                log.debug("delete task of exited container %s: %s", id_, e)
            try:
                self.records.update_container(id_, state=st.EXITED, finished_at=finished,
                                              exit_code=code, pid=0,
                                              reason=exit_reason(code, oom))
                self._emit("stopped", id_, self.records.container(id_)[0].sandbox_id)
            except errdefs.NotFound:
                pass
            finally:
                self._oom.discard(id_)
                self._monitors.pop(id_, None)
                ev.set()

        self._monitors[id_] = asyncio.ensure_future(watch())

    def _memory_cgroup(self, pid: int, spec_json: bytes, id_: str) -> str:
        """The container's memory cgroup dir: its init's (``pid``), or, when the init is
        already gone, where runc puts it per the spec's ``linux.cgroupsPath`` (cgroupfs
        driver: an absolute path from the hierarchy's root; a relative one, or none (the
        container id), under the cgroup of runc's caller, i.e. the shim's, i.e. ours)."""
        found = memory_cgroup_of(pid) if pid > 0 else ""
        if found:
            return found
        try:
            path = json.loads(spec_json).get("linux", {}).get("cgroupsPath") or id_
        except (ValueError, AttributeError):
            path = id_
        if ":" in path:
            return ""  # systemd driver: a unit, not a path
        if path.startswith("/"):
            root = "/sys/fs/cgroup/memory"
            if not os.path.isdir(root):  # v2: pure, or hybrid's unified/
                root = "/sys/fs/cgroup" if os.path.exists(
                    "/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/unified"
            return os.path.join(root, path.lstrip("/"))
        mine = memory_cgroup_of(os.getpid())
        return os.path.join(mine, os.path.basename(path)) if mine else ""

    def _oom_killed(self, id_: str) -> bool:
        """Whether the kernel's OOM killer killed a process of the container (its memory
        cgroup's oom_kill count; read before the task is deleted, which removes the
        cgroup)."""
        try:
            _, status = self.records.container(id_)
        except errdefs.NotFound:
            return False
        return bool(status.memory_cgroup) and cgroup_oom_kills(status.memory_cgroup) > 0


class ContainerStartRPC:
    """Mixed into RuntimeService."""

    async def StartContainer(self, request, context):
        pb = cri_pb()
        await self.rt.start_container(request.container_id)
        return pb.StartContainerResponse()
