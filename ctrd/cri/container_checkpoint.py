"""CheckpointContainer: not supported. containerd checkpoints through CRIU (the forensic
container checkpointing of Kubernetes, alpha); ctrd has no CRIU path, so it answers with an
error that says so instead of the generic UNIMPLEMENTED "Method not found"."""

from __future__ import annotations

from ctrd import errdefs


class ContainerCheckpointRPC:
    """Mixed into RuntimeService."""

    async def CheckpointContainer(self, request, context):
        self.rt.records.container(request.container_id)  # an unknown id: NotFound first
        raise errdefs.NotImplemented_("CheckpointContainer: checkpointing containers (CRIU) "
                                      "is not supported by ctrd")
