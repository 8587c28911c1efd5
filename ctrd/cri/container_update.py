"""UpdateContainerResources: the spec's resources changed, then the running task's."""

from __future__ import annotations

import asyncio
import json

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.helpers import NAMESPACE, SPEC_TYPE, cri_pb


class ContainerUpdate:
    """Mixed into CRIRuntime."""

    async def update_resources(self, id_: str, linux) -> None:
        """containerd 2.3.4's UpdateContainerResources: in any state, the stored spec takes the
        new resources (a container not running gets them when it starts, or keeps them as its
        record); then a running task gets them -- a task already gone is no error. If the
        runtime refuses, the stored spec is put back (so spec and cgroup never disagree)."""
        from ctrd.cri import spec as cri_spec
        from ctrd.metadata.containers import AnyValue

        meta, status = self.records.container(id_)
        async with self._update_lock:
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
            except errdefs.NotFound:
                return  # the task exited meanwhile: the spec is the record (as containerd)
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
