"""ExecSync: a process in the container, its output captured up to a limit, a timeout that
kills it. (Exec and Attach hand out streaming URLs: :mod:`ctrd.cri.streaming.methods`.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal as _signal

from ctrd import errdefs
from ctrd.cri import store as st
from ctrd.cri.helpers import EXEC_OUTPUT_LIMIT, NAMESPACE, cri_pb


class ContainerExec:
    """Mixed into CRIRuntime."""

    async def exec_sync(self, id_: str, cmd: list[str], timeout: int) -> tuple[bytes, bytes, int]:
        from ctrd.cri import execio
        from ctrd.cri import spec as cri_spec

        meta, status = self.records.container(id_)
        if status.state != st.RUNNING:
            raise errdefs.FailedPrecondition(f"container {meta.id} is not running")
        if not cmd:
            raise errdefs.InvalidArgument("exec command must not be empty")
        task = self.manager.get(NAMESPACE, meta.id)
        c = await asyncio.to_thread(self.containers.get, NAMESPACE, meta.id)
        process = cri_spec.exec_process(json.loads(c.spec.value), cmd, tty=False)
        exec_id = os.urandom(16).hex()
        from google.protobuf import any_pb2

        spec_any = any_pb2.Any(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
            value=json.dumps(process).encode())
        async with execio.Capture(os.path.join(self.state, "exec"), exec_id,
                                  EXEC_OUTPUT_LIMIT) as io:
            await task.exec(exec_id, stdin="", stdout=io.stdout, stderr=io.stderr,
                            terminal=False, spec=spec_any)
            try:
                waiter = asyncio.ensure_future(task.wait(exec_id))
                await task.start(exec_id)
                try:
                    resp = await asyncio.wait_for(asyncio.shield(waiter),
                                                  timeout if timeout > 0 else None)
                except TimeoutError:
                    try:
                        await task.kill(_signal.SIGKILL, exec_id=exec_id)
                    except errdefs.CtrdError:
                        pass
                    await waiter
                    raise errdefs.DeadlineExceeded(
                        f"failed to exec in container: timeout {timeout}s exceeded") from None
                await io.drain(5.0)
                return io.out, io.err, resp.exit_status
            finally:
                try:
                    await task.delete_process(exec_id)
                except errdefs.CtrdError:
                    pass


class ContainerExecRPC:
    """Mixed into RuntimeService."""

    async def ExecSync(self, request, context):
        pb = cri_pb()
        out, err, code = await self.rt.exec_sync(request.container_id, list(request.cmd),
                                                 request.timeout)
        return pb.ExecSyncResponse(stdout=out, stderr=err, exit_code=code)
