"""grpc.health.v1.Health (the standard gRPC health check), SERVING while the daemon serves."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2, health_pb2_grpc


class HealthService:
    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()

    def register_grpc(self, server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.servicer.set("", status)
