"""What a runtime's shim says about itself: the runtime plugin's answer to
Introspection.PluginInfo (containerd 2.3.4's ``getRuntimeInfo``: run ``<shim> -info`` with the
options Any on stdin, read a ``containerd.types.RuntimeInfo`` from stdout).

Contract: the request is a ``containerd.types.RuntimeRequest`` Any (another type is
NotImplemented, as containerd's "unknown request type"); a shim that fails, hangs past
:data:`INFO_TIMEOUT` or prints garbage is an error naming the shim and its stderr.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ctrd import errdefs

RUNTIME_INFO_TYPE = "containerd.types.RuntimeInfo"
DEFAULT_RUNTIME = "io.containerd.runc.v2"
INFO_TIMEOUT = 30.0
MAX_INFO_SIZE = 4 << 20


async def runtime_info(binary_for, request: Any) -> Any:
    """The RuntimeInfo Any for ``request``; ``binary_for(runtime)`` resolves a shim binary."""
    from google.protobuf import any_pb2
    from google.protobuf.message import DecodeError

    from ctrd import typeurl
    from ctrd.api.containerd.types import introspection_pb2 as ipb

    if typeurl.name_of(request) != ipb.RuntimeRequest.DESCRIPTOR.full_name:
        raise errdefs.NotImplemented_(f"unknown request type {request.type_url}")
    try:
        req = typeurl.unpack(request, ipb.RuntimeRequest)
    except DecodeError as e:
        raise errdefs.InvalidArgument(f"runtime request: {e}") from None
    try:
        binary = binary_for(req.runtime_path or DEFAULT_RUNTIME)
    except errdefs.CtrdError as e:
        raise errdefs.NotFound(f"failed to resolve runtime path: {e.detail}") from None
    stdin = req.options.SerializeToString() if req.HasField("options") else b""
    proc = await asyncio.create_subprocess_exec(
        binary, "-info", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), INFO_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise errdefs.DeadlineExceeded(f"{binary} -info: no answer in {INFO_TIMEOUT:.0f}s") \
            from None
    if proc.returncode != 0:
        raise errdefs.Unknown(f"failed to run [{binary} -info]: exit status "
                              f"{proc.returncode} (stderr: {err.decode(errors='replace')!r})")
    info = ipb.RuntimeInfo()
    try:
        if len(out) > MAX_INFO_SIZE:
            raise DecodeError("too large")
        info.ParseFromString(out)
    except DecodeError:
        raise errdefs.Unknown(f"failed to unmarshal stdout from [{binary} -info] into "
                              "RuntimeInfo") from None
    return any_pb2.Any(type_url=RUNTIME_INFO_TYPE, value=info.SerializeToString())
