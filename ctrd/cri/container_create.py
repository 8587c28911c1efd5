"""CreateContainer (containerd's container_create.go): the image resolved, a snapshot prepared
on its chain under a lease, the OCI spec built (:mod:`ctrd.cri.spec`), the
``ctrd_container_create`` hooks applied, the record stored; CREATED. A retry of a create in
flight waits for it."""

from __future__ import annotations

import asyncio
import os

from ctrd import errdefs
from ctrd.cri import image_mount, stop_signal
from ctrd.cri import store as st
from ctrd.cri.helpers import NAMESPACE, cri_pb, filter_labels, log, new_id, now_ns


class ContainerCreate:
    """Mixed into CRIRuntime."""

    async def create_container(self, sandbox_id: str, config, sandbox_config) -> str:
        smeta, _ = self.records.sandbox(sandbox_id)
        pod, md = self.sandbox_config(smeta).metadata, config.metadata
        key = "ctr\0" + "_".join([md.name, pod.name, pod.namespace, pod.uid, str(md.attempt)])
        return await self._dedup(key, lambda: self._create_container(sandbox_id, config,
                                                                      sandbox_config))

    async def _create_container(self, sandbox_id: str, config, sandbox_config) -> str:
        from ctrd.cri import identity, userns  # where used: not at daemon start

        smeta, sstatus = self.records.sandbox(sandbox_id)
        if sstatus.state != st.SANDBOX_READY:
            # containerd 2.3.4's words and code (a plain error: UNKNOWN)
            raise errdefs.Unknown(f"sandbox container {errdefs.quote(smeta.id)} is not running")
        md = config.metadata
        if not config.HasField("metadata"):
            raise errdefs.Unknown("container config must include metadata")
        if not sandbox_config.HasField("metadata"):
            raise errdefs.Unknown("pod sandbox config must include metadata")
        if not md.name:
            raise errdefs.InvalidArgument("container config must include metadata with name")
        config_stop_signal = stop_signal.from_enum(config.stop_signal)
        pod = self.sandbox_config(smeta).metadata
        id_ = new_id()
        name = "_".join([md.name, pod.name, pod.namespace, pod.uid, str(md.attempt)])
        self.records.reserve(name, id_, "container")
        undo: list = [lambda: self.records.release(name)]
        try:
            ref = config.image.image
            if not ref:  # containerd 2.3.4: "...: ambiguous digest string", UNKNOWN
                raise errdefs.Unknown('failed to resolve image "": no image reference')
            image = await asyncio.to_thread(self.images.find, ref)
            if image is None:
                raise errdefs.NotFound(f"failed to resolve image {errdefs.quote(ref)}")
            _, handler = self.handler(smeta.runtime_handler)
            pu = userns.container_userns(config, self.sandbox_config(smeta))
            # image volumes (Mount.image): checked, mounted, the mounts rewritten to binds
            image_mount.validate(config.mounts)
            held = await asyncio.to_thread(self.image_volumes.prepare, smeta.id, config.mounts)
            undo.append(lambda: self.release_image_volumes(smeta.id, held))
            snap = self.snapshotter()
            # The new snapshot is held by a lease until the container record references it
            # (containerd's client does the same): a GC in between would collect it.
            lease = await asyncio.to_thread(self._create_lease, id_)
            undo.append(lambda: self._delete_lease(lease))
            await asyncio.to_thread(snap.prepare, NAMESPACE, id_, image.chain_id,
                                    userns.snapshot_labels(pu), lease)
            undo.append(lambda: snap.remove(NAMESPACE, id_))
            vdir = userns.volumes_dir(self.state, id_)
            undo.append(lambda: userns.release_volumes(vdir))
            log_path = ""
            if config.log_path and sandbox_config.log_directory:
                log_path = os.path.join(sandbox_config.log_directory, config.log_path)
            spec = await asyncio.to_thread(self._build_spec, id_, smeta, config,
                                           sandbox_config, image, snap, pu)
            cfg = image.config.get("config") if isinstance(image.config.get("config"),
                                                           dict) else {}
            meta = st.ContainerMeta(id=id_, name=name, sandbox_id=smeta.id,
                                    config={}, image_ref=image.id,
                                    image=config.image.image, log_path=log_path,
                                    snapshotter=self.snapshotter_name,
                                    runtime_handler=smeta.runtime_handler,
                                    stop_signal=config_stop_signal or str(
                                        cfg.get("StopSignal") or "").strip(),
                                    user=identity.container_user(spec),
                                    created_at=now_ns())
            st.with_config(meta, config)
            labels = {**filter_labels(config.labels), st.KIND_LABEL: "container"}
            image_name = (image.repo_tags or image.repo_digests or [image.id])[0]
            rec = self._container_record(id_, labels, handler.runtime_type,
                                         self.runtime_options(handler), spec,
                                         st.CONTAINER_EXT, meta, image=image_name,
                                         snapshot_key=id_)
            rec.sandbox = smeta.id  # containerd 2.x: Container.sandbox names the pod
            await asyncio.to_thread(self.containers.create, NAMESPACE, rec)
            await asyncio.to_thread(self._delete_lease, lease)
            self.records.add_container(meta, st.ContainerStatus(state=st.CREATED))
            self.image_volumes.settle(smeta.id, held)  # the record names them now
            self._emit("created", id_, smeta.id)
            return id_
        except BaseException:
            for fn in reversed(undo):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001
                    log.warning("undo of container %s: %s", id_, e)
            raise

    def _build_spec(self, id_: str, smeta: st.SandboxMeta, config, sandbox_config, image,
                    snap, pu=None) -> dict:
        from ctrd.cri import spec as cri_spec
        from ctrd.cri import userns
        from ctrd.snapshots.mount import mounted

        _, sstatus = self.records.sandbox(smeta.id)
        if smeta.pause and not sstatus.pid:
            raise errdefs.FailedPrecondition(f"sandbox {smeta.id} has no running process")
        sandbox = self._sandbox_facts(smeta, sstatus.pid)
        handler_name, handler = self.handler(smeta.runtime_handler)
        mounts = snap.mounts(NAMESPACE, id_)
        # runc 1.1 makes no idmapped mounts: CRI mounts with id mappings bind ctrd's clones
        vdir = userns.volumes_dir(self.state, id_)
        config, _ = userns.prepare_volumes(config, pu, vdir)
        sandbox = userns.idmap_pod_files(sandbox, pu, vdir)
        with mounted(mounts, dir=self.state) as rootfs:
            # With a pause container the pod's sysctls are in its spec only (containerd);
            # otherwise they go into each container's spec (runc applies them inside the
            # pod's namespaces).
            return cri_spec.container_spec(
                id_, config, sandbox_config, image.config, sandbox, rootfs, self.config,
                handler, image_name=image_annotation_name(config, image),
                sysctls=None if smeta.pause == "image" else cri_spec.pod_sysctls(
                    sandbox_config),
                rro_supported=self.handler_features(handler_name, handler)
                .recursive_read_only_mounts)


def image_annotation_name(config, image) -> str:
    """The ``io.kubernetes.cri.image-name`` annotation, as containerd 2.3: the kubelet's
    ``user_specified_image`` when given, else the image's first name (containerd's
    ``References[0]``, its names sorted)."""
    return config.image.user_specified_image or min(image.names, default=config.image.image)


class ContainerCreateRPC:
    """Mixed into RuntimeService."""

    async def CreateContainer(self, request, context):
        pb = cri_pb()
        id_ = await self.rt.create_container(request.pod_sandbox_id, request.config,
                                             request.sandbox_config)
        return pb.CreateContainerResponse(container_id=id_)
