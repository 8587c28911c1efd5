"""Tag: an ``ImageStore`` image under the names of another ``ImageStore`` (containerd 2.3.4's
core/transfer/local/tag.go; ``ctr images tag SRC DST`` without ``--local``).

The source's record is looked up by name (NotFound if absent); its target is stored under the
destination's name(s) by :meth:`ctrd.transfer.imagestore.ImageDest.store`: created, or when
the name exists replaced whole — so over the Transfer API a tag always moves an existing name
(ctr's ``--force`` only matters with ``--local``), and the new record carries the
destination's labels, not the source's. No progress events; ``/images/create`` or
``/images/update`` events as the Images service publishes them.
"""

from __future__ import annotations

import asyncio

from ctrd import errdefs
from ctrd.transfer import imagestore


async def tag(tc, src, dst) -> None:
    source = imagestore.decode(src)
    dest = imagestore.decode(dst)
    if not source.name:
        raise errdefs.InvalidArgument("tag: the source image store names no image")
    img = await asyncio.to_thread(tc.md.images.get, tc.ns, source.name)
    stored = await asyncio.to_thread(dest.store, tc.md, tc.ns, img.target)
    imagestore.publish(tc, stored)
