"""Paths inside a root directory read as if the root were ``/`` (containerd's
fs.RootPath): shared by layer unpack (:mod:`ctrd.diff.apply`) and image file reads
(:mod:`ctrd.oci.user`). Imports nothing heavy: the CRI reads an image's /etc/passwd with it."""

from __future__ import annotations

import os
import stat

from ctrd.errdefs import InvalidArgument

MAX_LINKS = 255  # symlinks followed while resolving one path


def root_path(root: str, rel: str) -> str:
    """The real path of ``rel`` inside ``root`` with every symlink on the way, the last
    component's included, read as if ``root`` were ``/`` (containerd's fs.RootPath): the
    result never leaves ``root``. Missing components are taken as plain directories."""
    parts: list[str] = []
    todo = rel.split("/")[::-1] if rel else []
    links = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts:
                parts.pop()
            continue
        path = root + "/" + "/".join(parts + [comp])
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            parts.append(comp)
            continue
        if not stat.S_ISLNK(st.st_mode):
            parts.append(comp)
            continue
        links += 1
        if links > MAX_LINKS:
            raise InvalidArgument(f"too many levels of symbolic links resolving {rel!r}")
        target = os.readlink(path)
        if target.startswith("/"):
            parts = []
        todo.extend(target.split("/")[::-1])
    return root + "/" + "/".join(parts) if parts else root
