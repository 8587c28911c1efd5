"""An asyncio ttrpc client: many concurrent unary calls over one unix socket connection.

Lifecycle: ``await Client.connect(path)``, :meth:`Client.call` any number of times (calls are
multiplexed by stream id), :meth:`Client.close`. When the connection drops, pending and later
calls fail with ``Unavailable`` and ``on_close`` (if given) is called once, unless the
drop was our own :meth:`Client.close`.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

from ctrd import errdefs
from ctrd.api.ttrpc import ttrpc_pb2
from ctrd.ttrpc import framing


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_close: Callable[[], None] | None = None) -> None:
        self._reader, self._writer = reader, writer
        self._on_close = on_close
        self._ids = itertools.count(1, 2)
        self._pending: dict[int, asyncio.Future] = {}
        self._closed: errdefs.CtrdError | None = None
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, path: str, on_close: Callable[[], None] | None = None) -> "Client":
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as e:
            raise errdefs.Unavailable(f"ttrpc: connect {path}: {e.strerror or e}") from None
        return cls(reader, writer, on_close)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def call(self, service: str, method: str, request: Any, response_type: type,
                   timeout: float | None = None,
                   metadata: dict[str, str] | None = None) -> Any:
        if self._closed is not None:
            raise self._closed
        sid = next(self._ids)
        req = ttrpc_pb2.Request(service=service, method=method,
                                payload=request.SerializeToString(),
                                timeout_nano=int(timeout * 1e9) if timeout else 0)
        for k, v in (metadata or {}).items():
            req.metadata.add(key=k, value=v)
        fut = asyncio.get_running_loop().create_future()
        self._pending[sid] = fut
        try:
            self._writer.write(framing.encode(sid, framing.TYPE_REQUEST,
                                              req.SerializeToString()))
            resp = await (asyncio.wait_for(fut, timeout) if timeout else fut)
        except TimeoutError:
            raise errdefs.DeadlineExceeded(f"ttrpc: {service}/{method}") from None
        finally:
            self._pending.pop(sid, None)
        if resp.status.code != errdefs.OK:
            raise errdefs.from_status(resp.status.code, resp.status.message)
        out = response_type()
        out.ParseFromString(resp.payload)
        return out

    async def _read_loop(self) -> None:
        decoder = framing.Decoder()
        try:
            while data := await self._reader.read(1 << 16):
                for frame in decoder.feed(data):
                    fut = self._pending.get(frame.stream_id)
                    if fut is None or fut.done():
                        continue
                    if isinstance(frame, framing.OversizedFrame):
                        fut.set_exception(errdefs.CtrdError(
                            f"ttrpc: response of {frame.length} bytes is too large"))
                        continue
                    resp = ttrpc_pb2.Response()
                    try:
                        resp.ParseFromString(frame.payload)
                    except Exception:  # noqa: BLE001
                        fut.set_exception(errdefs.CtrdError("ttrpc: malformed response"))
                        continue
                    fut.set_result(resp)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if self._closed is None:
                self._fail_all(errdefs.Unavailable("ttrpc: connection closed"))
                if self._on_close is not None:
                    self._on_close()

    def _fail_all(self, err: errdefs.CtrdError) -> None:
        self._closed = err
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)

    async def close(self) -> None:
        if self._closed is None:
            self._closed = errdefs.Unavailable("ttrpc: client closed")
        self._writer.close()
        self._reader_task.cancel()
        try:
            await self._reader_task
        except asyncio.CancelledError:
            pass
        self._fail_all(self._closed)
