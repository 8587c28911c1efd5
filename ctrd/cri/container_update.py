"""UpdateContainerResources: the spec's resources changed, then the running task's."""

from __future__ import annotations

import asyncio
import json

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.helpers import NAMESPACE, SPEC_TYPE, STATE_NAMES, cri_pb


class ContainerUpdate:
    """Mixed into CRIRuntime."""

    async def update_resources(self, id_: str, linux) -> None:
        """containerd's UpdateContainerResources: only a RUNNING or CREATED container; the
        stored spec takes the new resources, then a running task gets them; if the runtime
        refuses, the stored spec is put back (so spec and cgroup never disagree)."""
        from ctrd.cri import spec as cri_spec
        from ctrd.metadata.containers import AnyValue

        meta, status = self.records.container(id_)
        async with self._update_lock:
            if status.state not in (st.RUNNING, st.CREATED):
                raise errdefs.FailedPrecondition(
                    f"container {meta.id} is in {STATE_NAMES[status.state]} state")
            c = await asyncio.to_thread(self.containers.get, NAMESPACE, meta.id)
            old = c.spec
            spec = json.loads(c.spec.value)
            cri_spec.apply_resources(spec, linux, self.config, cri_spec.host_facts())
            resources = spec.get("linux", {}).get("resources", {})
            c.spec = AnyValue(SPEC_TYPE, json.dumps(spec).encode())
            await asyncio.to_thread(self.containers.update, NAMESPACE, c, ["spec"])
            if status.state != st.RUNNING:
                return
            from google.protobuf import any_pb2

            try:
                task = self.manager.get(NAMESPACE, meta.id)
                await task.update(any_pb2.Any(
                    type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
                    value=json.dumps(resources).encode()), {})
            except BaseException:
                c.spec = old
                await asyncio.to_thread(self.containers.update, NAMESPACE, c, ["spec"])
                raise


class ContainerUpdateRPC:
    """Mixed into RuntimeService."""

    async def UpdateContainerResources(self, request, context):
        pb = cri_pb()
        await self.rt.update_resources(request.container_id, request.linux)
        return pb.UpdateContainerResourcesResponse()
