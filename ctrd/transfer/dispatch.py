"""Which operation moves which source to which destination (containerd 2.3.4's local
transferrer: an image fetcher to an image storer is a pull, an image getter to a pusher a
push, to an exporter an export, to a storer a tag; an importer to a storer an import, to an
export stream an echo).

An operation is named "module:function" and imported on first use, so the daemon pays for
the pull pipeline only when something is pulled, and so each operation lives in its own
module. The function is ``async def op(tc: TransferContext, src, dst) -> None``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Awaitable, Callable

from google.protobuf import message

from ctrd import errdefs
from ctrd.transfer.objects import kind

OPERATIONS: dict[tuple[str, str], str] = {
    ("OCIRegistry", "ImageStore"): "ctrd.transfer.pull:pull",
    ("ImageStore", "OCIRegistry"): "ctrd.transfer.push:push",
    ("ImageStore", "ImageStore"): "ctrd.transfer.tag:tag",
    ("ImageStore", "ImageExportStream"): "ctrd.transfer.exports:export_archive",
    ("ImageImportStream", "ImageStore"): "ctrd.transfer.imports:import_archive",
    ("ImageImportStream", "ImageExportStream"): "ctrd.transfer.imports:echo",
}

Operation = Callable[..., Awaitable[None]]


def operation(src: message.Message, dst: message.Message, src_url: str,
              dst_url: str) -> Operation:
    target = OPERATIONS.get((kind(src), kind(dst)))
    if target is None:
        raise errdefs.NotImplemented_(
            f"method Transfer not implemented for {src_url} to {dst_url}")
    module, _, func = target.partition(":")
    if importlib.util.find_spec(module) is None:  # an operation not built yet
        raise errdefs.NotImplemented_(
            f"method Transfer not implemented for {src_url} to {dst_url} "
            f"(ctrd has no {module})")
    return getattr(importlib.import_module(module), func)
