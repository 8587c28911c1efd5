"""runtime.v1 RuntimeService on ctrd's socket: the gRPC side of every RPC module, put
together. Each RPC's adapter lives beside its core in the module named for it (see
:mod:`ctrd.cri`); adapters only convert messages. Errors are ctrd's vocabulary, mapped to
codes at the gRPC edge."""

from __future__ import annotations

from ctrd.api.cri.runtime.v1 import api_pb2_grpc as pb_grpc
from ctrd.cri.container_checkpoint import ContainerCheckpointRPC
from ctrd.cri.container_create import ContainerCreateRPC
from ctrd.cri.container_exec import ContainerExecRPC
from ctrd.cri.container_list import ContainerListRPC
from ctrd.cri.container_log_reopen import ContainerLogReopenRPC
from ctrd.cri.container_remove import ContainerRemoveRPC
from ctrd.cri.container_start import ContainerStartRPC
from ctrd.cri.container_stats import ContainerStatsRPC
from ctrd.cri.container_status import ContainerStatusRPC
from ctrd.cri.container_stop import ContainerStopRPC
from ctrd.cri.container_update import ContainerUpdateRPC
from ctrd.cri.core import CRIRuntime
from ctrd.cri.runtime_status_core import RuntimeStatusRPC
from ctrd.cri.sandbox_list import SandboxListRPC
from ctrd.cri.sandbox_metrics import SandboxMetricsRPC
from ctrd.cri.sandbox_remove import SandboxRemoveRPC
from ctrd.cri.sandbox_run import SandboxRunRPC
from ctrd.cri.sandbox_stats import SandboxStatsRPC
from ctrd.cri.sandbox_status import SandboxStatusRPC
from ctrd.cri.sandbox_stop import SandboxStopRPC
from ctrd.cri.sandbox_update_resources import SandboxUpdateResourcesRPC
from ctrd.cri.streaming.methods import StreamingMethods


class RuntimeService(RuntimeStatusRPC, SandboxRunRPC, SandboxStopRPC, SandboxRemoveRPC,
                     SandboxStatusRPC, SandboxListRPC, SandboxUpdateResourcesRPC,
                     ContainerCreateRPC, ContainerStartRPC,
                     ContainerStopRPC, ContainerRemoveRPC, ContainerStatusRPC, ContainerListRPC,
                     ContainerUpdateRPC, ContainerLogReopenRPC, ContainerExecRPC,
                     ContainerCheckpointRPC, ContainerStatsRPC, SandboxStatsRPC,
                     SandboxMetricsRPC, StreamingMethods, pb_grpc.RuntimeServiceServicer):
    """runtime.v1 RuntimeService over the CRI core ``self.rt``. Exec, Attach, PortForward and
    GetContainerEvents come from :class:`ctrd.cri.streaming.methods.StreamingMethods` (the
    streaming server's side)."""

    def __init__(self, runtime: CRIRuntime) -> None:
        self.rt = runtime

    def register_grpc(self, server) -> None:
        pb_grpc.add_RuntimeServiceServicer_to_server(self, server)
