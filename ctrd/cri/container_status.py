"""ContainerStatus: state, times, exit code and reason, image, mounts, log path; with
``verbose`` containerd's ``info`` JSON."""

from __future__ import annotations

import asyncio
import json

from ctrd.cri import status_info, stop_signal
from ctrd.cri import store as st
from ctrd.cri.helpers import cri_pb


class ContainerStatusRPC:
    """Mixed into RuntimeService."""

    def _container_fields(self, meta: st.ContainerMeta, status: st.ContainerStatus):
        pb = cri_pb()
        config = st.config_of(meta)
        # containerd: the ImageSpec as the kubelet sent it (user_specified_image included);
        # image_ref and image_id the image id (config digest) the container was made from
        return config, dict(id=meta.id, metadata=config.metadata,
                            image=pb.ImageSpec.FromString(config.image.SerializeToString()),
                            image_ref=meta.image_ref, image_id=meta.image_ref,
                            state=status.state,
                            created_at=meta.created_at, labels=config.labels,
                            annotations=config.annotations)

    async def ContainerStatus(self, request, context):
        pb = cri_pb()
        meta, status = self.rt.records.container(request.container_id)
        config, fields = self._container_fields(meta, status)
        # containerd: the image's first repo tag (user_specified_image not kept) and repo
        # digest when the image is still there; image_id stays the config digest
        image = await asyncio.to_thread(self.rt.images.find, meta.image_ref)
        if image is not None:
            if image.repo_tags:
                fields["image"] = pb.ImageSpec(image=image.repo_tags[0])
            if image.repo_digests:
                fields["image_ref"] = image.repo_digests[0]
        c = await asyncio.to_thread(self.rt.containers.get, "k8s.io", meta.id)
        spec = json.loads(c.spec.value)
        out = pb.ContainerStatus(
            **fields, started_at=status.started_at, finished_at=status.finished_at,
            exit_code=status.exit_code, reason=status.reason, message=status.message,
            mounts=config.mounts, log_path=meta.log_path,
            resources=status_info.container_resources(spec),
            user=pb.ContainerUser(linux=pb.LinuxContainerUser(**meta.user))
            if meta.user else None,
            stop_signal=stop_signal.to_enum(meta.stop_signal))
        resp = pb.ContainerStatusResponse(status=out)
        if request.verbose:
            resp.info["info"] = json.dumps({
                "sandboxID": meta.sandbox_id, "pid": status.pid, "removing": status.removing,
                "snapshotKey": meta.id, "snapshotter": meta.snapshotter,
                "runtimeType": c.runtime.name, "runtimeOptions": None,
                "config": status_info.go_json(config), "runtimeSpec": spec})
        return resp
