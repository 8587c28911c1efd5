"""RuntimeService methods of the streaming side (mixed into
:class:`ctrd.cri.service.RuntimeService`, whose ``self.rt`` is the CRI core)."""

from __future__ import annotations

from ctrd import errdefs


class StreamingMethods:
    async def Exec(self, request, context):
        raise errdefs.NotImplemented_("streaming exec is not implemented yet")

    async def Attach(self, request, context):
        raise errdefs.NotImplemented_("attach is not implemented yet")

    async def PortForward(self, request, context):
        raise errdefs.NotImplemented_("port-forward is not implemented yet")
