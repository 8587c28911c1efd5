"""The pod's own process (see :mod:`ctrd.cri`, Sandbox modes): a pause container of
``sandbox_image`` or ctrd's minimal pod init holding a shared PID namespace, run as a task
with the sandbox's id in the pod's shim, watched (its exit: NOTREADY) and stopped with the
pod (containerd's internal/cri/server/podsandbox)."""

from __future__ import annotations

import asyncio
import json
import time

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.helpers import NAMESPACE, cri_pb, log, mount_pb


class PodProcess:
    """Mixed into CRIRuntime."""

    def _pause_kind(self, config) -> str:
        """"image" with a sandbox_image configured; else "init" for a pod that asks for a
        pod-level PID namespace (its NamespaceOption present and pid POD, as the kubelet
        sends for shareProcessNamespace; a config without NamespaceOption -- never the
        kubelet's -- keeps a PID namespace per container); else "" (no process)."""
        if self.config.sandbox_image:
            return "image"
        sc = config.linux.security_context
        if sc.HasField("namespace_options") and sc.namespace_options.pid == cri_pb().POD:
            return "init"
        return ""

    def _pod_init_binary(self) -> str:
        from ctrd.cri import spec as cri_spec

        found = cri_spec.find_pod_init_binary()
        if found is None:
            raise errdefs.FailedPrecondition(
                "a pod-level PID namespace needs a pod init: no statically linked busybox "
                f"found at {' or '.join(cri_spec.pod_init_candidates()) or '(none)'} "
                "(install Debian's "
                "busybox-static), or configure a sandbox_image (pause container)")
        return found

    async def _ensure_sandbox_image(self):
        """The sandbox image, pulled through the CRI image pull path (the registry config)
        when it is not there; concurrent pods share one pull. Errors name the image."""
        from ctrd.cri.image_service import ImageService

        ref = self.config.sandbox_image
        img = await asyncio.to_thread(self.images.find, ref)
        if img is not None:
            return img
        fut = self._sandbox_pull
        if fut is None or fut.done():
            if self._puller is None:
                self._puller = ImageService(self.md, self.config, "")
            fut = self._sandbox_pull = asyncio.ensure_future(
                asyncio.to_thread(self._puller.pull, ref))
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.shield(fut)
        except errdefs.CtrdError as e:
            raise type(e)(f"failed to get sandbox image {errdefs.quote(ref)}: "
                          f"{e.detail}") from e
        img = await asyncio.to_thread(self.images.find, ref)
        if img is None:
            raise errdefs.NotFound(f"failed to get sandbox image {errdefs.quote(ref)}: "
                                   "not found after its pull")
        return img

    async def _start_pause(self, meta: st.SandboxMeta, config, handler, labels: dict,
                           image, pod_init: str | None, undo: list) -> int:
        """Create the sandbox's container record (its spec, and for a pause container its
        snapshot of the sandbox image) and run it as a task through the handler's shim
        (the sandbox-id annotation groups the pod's containers into the same shim).
        Appends its undo steps to ``undo``; returns the process's pid."""
        from ctrd.cri import spec as cri_spec
        from ctrd.cri import userns
        from ctrd.runtime.manager import CreateOpts
        from ctrd.snapshots.mount import mounted

        id_ = meta.id
        t0 = time.monotonic()
        sandbox = self._sandbox_facts(meta, for_pause=True)
        rootfs: list = []
        if image is not None:
            snap = self.snapshotter()
            lease = await asyncio.to_thread(self._create_lease, id_)
            undo.append(lambda: self._delete_lease(lease))
            await asyncio.to_thread(snap.prepare, NAMESPACE, id_, image.chain_id,
                                    userns.snapshot_labels(sandbox.userns), lease)
            undo.append(lambda: self._remove_snapshot(id_))
            mounts = await asyncio.to_thread(snap.mounts, NAMESPACE, id_)
            rootfs = [mount_pb(m) for m in mounts]

            def build() -> dict:
                if not cri_spec.user_needs_rootfs(cri_spec.sandbox_user(config, image.config)):
                    return cri_spec.sandbox_spec(id_, config, image.config, sandbox, None,
                                                 self.config, handler)
                with mounted(mounts, dir=self.state) as root:
                    return cri_spec.sandbox_spec(id_, config, image.config, sandbox, root,
                                                 self.config, handler)

            spec = await asyncio.to_thread(build)
        else:
            lease = ""
            spec = cri_spec.sandbox_spec(id_, config, None, sandbox, None, self.config,
                                         handler, pod_init=pod_init)
        options = self.runtime_options(handler)
        rec = self._container_record(
            id_, labels, handler.runtime_type, options, spec, st.SANDBOX_EXT, meta,
            image=meta.image, snapshot_key=meta.snapshot_key)
        await asyncio.to_thread(self.containers.create, NAMESPACE, rec)
        undo.append(lambda: self._delete_record(id_))
        if lease:
            await asyncio.to_thread(self._delete_lease, lease)
        t1 = time.monotonic()
        task = await self.manager.create(NAMESPACE, id_, CreateOpts(
            spec=json.dumps(spec).encode(), runtime=handler.runtime_type,
            runtime_options=options, rootfs=rootfs))
        undo.append(lambda: self._kill_and_delete(id_))
        t2 = time.monotonic()
        resp = await task.start()
        log.debug("sandbox %s: pause phases: snapshot+spec+record %.1f ms, task create %.1f "
                  "ms, start %.1f ms", id_, (t1 - t0) * 1000, (t2 - t1) * 1000,
                  (time.monotonic() - t2) * 1000)
        return resp.pid

    def _monitor_sandbox(self, id_: str, task) -> None:
        """Watch the pause/init: when it exits the sandbox is NOTREADY (its task deleted at
        once, releasing the shim unless the pod's containers still use it)."""
        ev = self._exited.setdefault(id_, asyncio.Event())
        ev.clear()

        async def watch():
            try:
                try:
                    resp = await task.wait()
                    code = resp.exit_status
                except errdefs.CtrdError as e:
                    log.warning("wait for sandbox %s: %s", id_, e)
                    code = 255
                log.info("sandbox %s: its process exited with %d; NOTREADY", id_, code)
                try:
                    await self.manager.delete(NAMESPACE, id_)
                except errdefs.CtrdError as e:
                    log.debug("delete task of sandbox %s: %s", id_, e)
                try:
                    self.records.update_sandbox(id_, state=st.SANDBOX_NOTREADY, pid=0)
                except errdefs.NotFound:
                    pass
            finally:
                self._monitors.pop(id_, None)
                ev.set()

        self._monitors[id_] = asyncio.ensure_future(watch())

    async def _stop_pause(self, meta: st.SandboxMeta) -> None:
        """SIGKILL the pause/init and wait until its watcher has seen it go."""
        try:
            task = self.manager.get(NAMESPACE, meta.id)
        except errdefs.NotFound:
            return
        ev = self._exited.get(meta.id)
        if ev is not None and meta.id in self._monitors:
            await self._sigkill_and_await(task, ev, f"sandbox {meta.id}: its process")
            return
        await self._kill_and_delete(meta.id)  # unwatched: kill, wait and delete here
