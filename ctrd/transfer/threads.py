"""Worker threads for transfer operations that the client may abandon."""

from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[[], T], on_cancel: Callable[[], None]) -> T:
    """Run ``fn`` in a worker thread. If the awaiting task is cancelled (the client went
    away), call ``on_cancel`` (which must make ``fn`` stop soon: a flag it checks, a stream
    it reads failing), wait for the thread to end, then cancel on: the caller's cleanup
    (a lease, a spool file) runs after the worker's last write, never beside it."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        on_cancel()
        await asyncio.wait({fut})
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation is what the caller reports
        raise
