"""ListContainers: the containers by creation time, filtered in the core
(:meth:`ContainerList.list_containers`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctrd.cri import store as st
from ctrd.cri.helpers import batches, cri_pb


@dataclass
class ContainerFilter:
    """runtime.v1 ContainerFilter (and ContainerStatsFilter: no state): id and pod id
    prefixes, a state, labels that must all match."""

    id: str = ""
    sandbox_id: str = ""
    state: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def matches(self, meta: st.ContainerMeta, status: st.ContainerStatus) -> bool:
        if self.id and not meta.id.startswith(self.id):
            return False
        if self.sandbox_id and not meta.sandbox_id.startswith(self.sandbox_id):
            return False
        if self.state is not None and self.state != status.state:
            return False
        return st.labels_match(self.labels, st.config_of(meta).labels)


class ContainerList:
    """Mixed into CRIRuntime."""

    def list_containers(self, f: ContainerFilter | None = None
                        ) -> list[tuple[st.ContainerMeta, st.ContainerStatus]]:
        """The containers that ``f`` selects (all without one), oldest first."""
        out = [(m, s) for m, s in list(self.records.containers.values())
               if f is None or f.matches(m, s)]
        out.sort(key=lambda ms: ms[0].created_at)
        return out


class ContainerListRPC:
    """Mixed into RuntimeService."""

    def _containers(self, request) -> list:
        pb = cri_pb()
        f = None
        if request.HasField("filter"):
            rf = request.filter
            f = ContainerFilter(id=rf.id, sandbox_id=rf.pod_sandbox_id,
                                labels=dict(rf.label_selector),
                                state=rf.state.state if rf.HasField("state") else None)
        return [pb.Container(pod_sandbox_id=meta.sandbox_id,
                             **self._container_fields(meta, status)[1])
                for meta, status in self.rt.list_containers(f)]

    async def ListContainers(self, request, context):
        return cri_pb().ListContainersResponse(containers=self._containers(request))

    async def StreamContainers(self, request, context):
        """ListContainers in batches (see StreamPodSandboxes)."""
        pb = cri_pb()
        for part in batches(self._containers(request)):
            yield pb.StreamContainersResponse(containers=part)
