"""ListPodSandbox: the pods by creation time, filtered in the core
(:meth:`SandboxList.list_sandboxes`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctrd.cri import store as st
from ctrd.cri.helpers import batches, cri_pb


@dataclass
class SandboxFilter:
    """runtime.v1 PodSandboxFilter: an id prefix, a state, labels that must all match."""

    id: str = ""
    state: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def matches(self, meta: st.SandboxMeta, status: st.SandboxStatus) -> bool:
        if self.id and not meta.id.startswith(self.id):
            return False
        if self.state is not None and self.state != status.state:
            return False
        return st.labels_match(self.labels, st.config_of(meta).labels)


class SandboxList:
    """Mixed into CRIRuntime."""

    def list_sandboxes(self, f: SandboxFilter | None = None
                       ) -> list[tuple[st.SandboxMeta, st.SandboxStatus]]:
        """The pods that ``f`` selects (all without one), oldest first."""
        out = [(m, s) for m, s in list(self.records.sandboxes.values())
               if f is None or f.matches(m, s)]
        out.sort(key=lambda ms: ms[0].created_at)
        return out


class SandboxListRPC:
    """Mixed into RuntimeService."""

    def _pod_sandboxes(self, request) -> list:
        pb = cri_pb()
        f = None
        if request.HasField("filter"):
            rf = request.filter
            f = SandboxFilter(id=rf.id, labels=dict(rf.label_selector),
                              state=rf.state.state if rf.HasField("state") else None)
        return [pb.PodSandbox(**self._sandbox_pb(meta, status)[1])
                for meta, status in self.rt.list_sandboxes(f)]

    async def ListPodSandbox(self, request, context):
        return cri_pb().ListPodSandboxResponse(items=self._pod_sandboxes(request))

    async def StreamPodSandboxes(self, request, context):
        """ListPodSandbox in batches (Kubernetes 1.36's streaming list; containerd 2.3
        answers UNIMPLEMENTED, so kubelets fall back to the List call)."""
        pb = cri_pb()
        for part in batches(self._pod_sandboxes(request)):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=part)
