"""Image volumes: a CRI ``Mount`` with ``image`` set (Kubernetes' ImageVolume, the kubelet's
``image`` volume source) is an OCI image mounted read-only into a container.

As containerd 2.3's ``internal/cri/server/container_image_mount.go``:

- the image must already be there (the kubelet pulls it first): it is resolved locally by id
  or reference; a missing one is ``NotFound`` reading ``failed to mount image volume:
  ImageVolumeMountFailed: failed to resolve image "<ref>": not found``;
- one volume per pod and image, at ``<cri state>/image-volumes/<pod id>/<manifest hex>``
  (the image record's target digest): a
  snapshot keyed by that path on the image's chain id, held by the lease named after the pod
  (so GC keeps the image's layers while the pod exists, also if the image's names are
  removed), mounted there; a second container of the pod that mounts the same image reuses
  it;
- the CRI mount is rewritten to a read-only bind of that path (``host_path`` set, as
  ContainerStatus then reports it), or of ``image_sub_path`` inside it, which must be a
  directory inside the image: ``..`` or a symlink leading out of it is refused;
- everything is unmounted and the snapshots removed at StopPodSandbox (containerd), and the
  pod's lease deleted at RemovePodSandbox.

Where ctrd differs, and why:

- the snapshot is a *view* (read-only overlay of the layers, no upper dir) rather than
  containerd's active snapshot with a ``volatile`` upper dir: the volume is read-only in the
  container either way, a view also keeps the host side read-only and costs no upper/work
  dirs;
- a container removal also releases the volumes no other container of its pod still names
  (containerd waits for the pod's stop): a kubelet that removes a container gets its mounts
  back at once, and a later container of the pod mounts the image again;
- a failure after the volume was mounted (a refused ``image_sub_path``) unmounts it again
  (containerd 2.3.4 leaves that mount until the pod stops);
- bad requests are ``InvalidArgument`` naming the field (containerd answers ``Unknown``):
  ``host_path`` set, ``readonly`` false, ``image_sub_path`` absolute, escaping, not a
  directory, missing, or given without ``image``.

The logic works on paths and ctrd's metadata; no gRPC here.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import posixpath
import stat
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from ctrd import errdefs

log = logging.getLogger("ctrd.cri")

IMAGE_VOLUME_DIR = "image-volumes"
# containerd's crierrors.ErrImageVolumeMountFailed, which kubelets look for in the message
MOUNT_FAILED = "ImageVolumeMountFailed"
NAMESPACE = "k8s.io"
# One volume is shared by a pod's containers: its mount/unmount and the check whether it is
# mounted must not interleave (two creates of one pod, or a create and a removal).
_LOCK = threading.RLock()
# pod id -> volume path -> how many creates in flight use it (not yet in the records, so a
# removal's release must count them: the kubelet's container GC runs beside its pod syncs)
_HELD: dict[str, dict[str, int]] = {}


def is_image_mount(m: Any) -> bool:
    """True for a CRI Mount that asks for an image volume (``image.image`` non-empty)."""
    return m.HasField("image") and bool(m.image.image)


def _failed(kind: type[errdefs.CtrdError], detail: str) -> errdefs.CtrdError:
    return kind(f"failed to mount image volume: {MOUNT_FAILED}: {detail}")


def validate(mounts: Iterable[Any]) -> None:
    """Refuse bad image-volume fields before anything is made (InvalidArgument naming the
    field). Mounts without ``image`` pass, unless they carry ``image_sub_path``."""
    for m in mounts:
        where = f"mount {m.container_path!r}"
        if not is_image_mount(m):
            if m.image_sub_path:
                raise errdefs.InvalidArgument(f"{where}: image_sub_path {m.image_sub_path!r} "
                                              "is set without image")
            continue
        ref = m.image.image
        if m.host_path:
            raise errdefs.InvalidArgument(f"{where}: host_path must be empty for an image "
                                          f"volume (image {ref!r})")
        if not m.readonly:
            raise errdefs.InvalidArgument(f"{where}: readonly must be true for an image "
                                          f"volume (image {ref!r})")
        if "\0" in ref:
            raise errdefs.InvalidArgument(f"{where}: image.image may not contain NUL")
        sub = m.image_sub_path
        if sub:
            if "\0" in sub:
                raise errdefs.InvalidArgument(f"{where}: image_sub_path may not contain NUL")
            if sub.startswith("/"):
                raise errdefs.InvalidArgument(f"{where}: image_sub_path {sub!r} must be a "
                                              "relative path")
            if posixpath.normpath(sub).split("/")[0] == "..":
                raise errdefs.InvalidArgument(f"{where}: image_sub_path {sub!r} escapes the "
                                              "image")


# --- openat2(RESOLVE_BENEATH): a path inside a tree, symlinks followed but never out of it ----

_SYS_OPENAT2 = 437  # the same number on every architecture (new syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def _open_beneath(root_fd: int, path: str) -> int:
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, root_fd, os.fsencode(path), ctypes.byref(how),
                       ctypes.sizeof(how))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fd


def resolve_sub_path(mount_point: str, sub: str, where: str = "mount") -> str:
    """The host path of directory ``sub`` inside ``mount_point`` (containerd's
    ensureImageSubPath, ``os.OpenInRoot``): symlinks are followed only while they stay inside
    (an absolute one, or ``..`` past the top, is refused), and it must be a directory.
    Returns the resolved path (no symlink left in it for the bind mount to follow)."""
    root = os.open(mount_point, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = _open_beneath(root, sub)
        except OSError as e:
            why = {errno.EXDEV: "escapes the image",
                   errno.ENOENT: "does not exist in the image",
                   errno.ELOOP: "has too many levels of symbolic links"}.get(
                e.errno, e.strerror)
            raise errdefs.InvalidArgument(f"{where}: image_sub_path {sub!r} {why}") from None
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise errdefs.InvalidArgument(f"{where}: image_sub_path {sub!r} is not a "
                                              "directory (only directory sub paths are "
                                              "supported)")
            path = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(root)
    base = os.path.realpath(mount_point)
    if path != base and not path.startswith(base.rstrip("/") + "/"):
        raise errdefs.InvalidArgument(f"{where}: image_sub_path {sub!r} escapes the image")
    return path


# --- the volumes of a pod -------------------------------------------------------------------

@dataclass
class ImageVolumes:
    """The image volumes under the CRI plugin's state dir ``state``, over metadata ``md``,
    snapshots in ``snapshotter`` (a metadata snapshotter of ``md``), images found with
    ``find(ref) -> CRIImage | None``. All methods block (run them in a thread)."""

    md: Any
    state: str
    snapshotter_name: str
    find: Any

    def base_dir(self, pod_id: str) -> str:
        return os.path.join(self.state, IMAGE_VOLUME_DIR, pod_id)

    def host_path(self, pod_id: str, digest: str) -> str:
        return os.path.join(self.base_dir(pod_id), digest.split(":", 1)[-1])

    def _target_digest(self, img: Any) -> str:
        """The digest of the image record's target (manifest or index), as containerd names
        the volume's directory; the image id if no record can be read."""
        for name in [img.id] + [n for n in img.names if n != img.id]:
            try:
                return self.md.images.get(NAMESPACE, name).target.digest
            except errdefs.NotFound:
                continue
        return img.id

    def _snapshotter(self):
        s = self.md.snapshotters.get(self.snapshotter_name)
        if s is None:
            raise errdefs.FailedPrecondition(f"snapshotter {self.snapshotter_name} was not "
                                             "loaded")
        return s

    def _ensure_lease(self, pod_id: str) -> None:
        try:
            self.md.leases.create(NAMESPACE, pod_id)
        except errdefs.AlreadyExists:
            pass

    def prepare(self, pod_id: str, mounts: Iterable[Any]) -> list[str]:
        """Mount the image volumes ``mounts`` ask for (CRI Mount messages, rewritten in place
        to read-only binds of the volumes) and hold them; returns the volume paths held, which
        the caller passes to :meth:`settle` once its container is in the records (or has
        failed: then it releases what no container uses). On error, what this call mounted is
        undone and nothing is held. Call :func:`validate` first."""
        with _LOCK:
            used = self._prepare(pod_id, mounts)
            held = _HELD.setdefault(pod_id, {})
            for t in used:
                held[t] = held.get(t, 0) + 1
            return used

    def settle(self, pod_id: str, held: Iterable[str]) -> None:
        """Drop the holds :meth:`prepare` took."""
        with _LOCK:
            h = _HELD.get(pod_id, {})
            for t in held:
                if h.get(t, 0) > 1:
                    h[t] -= 1
                else:
                    h.pop(t, None)
            if not h:
                _HELD.pop(pod_id, None)

    def _prepare(self, pod_id: str, mounts: Iterable[Any]) -> list[str]:
        from ctrd.snapshots.mount import is_mountpoint, mount_all

        made: list[str] = []
        used: list[str] = []
        try:
            for m in mounts:
                if not is_image_mount(m):
                    continue
                ref = m.image.image
                img = self.find(ref)
                if img is None:
                    raise _failed(errdefs.NotFound, f"failed to resolve image "
                                                    f"{errdefs.quote(ref)}")
                target = self.host_path(pod_id, self._target_digest(img))
                if not (os.path.isdir(target) and is_mountpoint(target)):
                    snap = self._snapshotter()
                    self._ensure_lease(pod_id)
                    try:
                        views = snap.view(NAMESPACE, target, img.chain_id,
                                          {"io.cri-containerd.image-volume": img.id}, pod_id)
                    except errdefs.AlreadyExists:  # made before a crash: mount it again
                        views = snap.mounts(NAMESPACE, target)
                    except errdefs.NotFound:
                        raise _failed(errdefs.FailedPrecondition,
                                      f"image {errdefs.quote(ref)} is not unpacked into "
                                      f"snapshotter {self.snapshotter_name}") from None
                    made.append(target)
                    os.makedirs(target, 0o755, exist_ok=True)
                    try:
                        mount_all(views, target)
                    except OSError as e:
                        raise _failed(errdefs.CtrdError, f"failed to mount image volume "
                                                         f"component {target!r}: {e}") from e
                used.append(target)
                path = target
                if m.image_sub_path:
                    path = resolve_sub_path(target, m.image_sub_path,
                                            f"mount {m.container_path!r}")
                m.host_path = path
        except BaseException:
            self.release(pod_id, made)
            raise
        return used

    def release(self, pod_id: str, targets: Iterable[str]) -> None:
        """Unmount volumes ``targets`` (paths under the pod's dir), remove their snapshots and
        directories. Safe on what is already gone."""
        with _LOCK:
            self._release(pod_id, list(targets))

    def _release(self, pod_id: str, targets: list[str]) -> None:
        from ctrd.snapshots.mount import unmount_all

        for target in targets:
            try:
                unmount_all(target)
            except OSError as e:
                log.warning("image volume %s: unmount: %s", target, e)
                continue  # keep its snapshot: its layers are still in use
            try:
                self._snapshotter().remove(NAMESPACE, target, pod_id)
            except errdefs.NotFound:
                pass
            except errdefs.CtrdError as e:
                log.warning("image volume %s: remove snapshot: %s", target, e)
            try:
                os.rmdir(target)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("image volume %s: %s", target, e)
        try:
            os.rmdir(self.base_dir(pod_id))
        except OSError:
            pass  # not there, or other volumes still in it

    def volumes(self, pod_id: str) -> list[str]:
        """The volume paths of pod ``pod_id`` that exist on disk."""
        base = self.base_dir(pod_id)
        try:
            return [os.path.join(base, n) for n in sorted(os.listdir(base))]
        except FileNotFoundError:
            return []

    def release_unused(self, pod_id: str, in_use: Iterable[str]) -> None:
        """Release the pod's volumes that no path of ``in_use`` (the ``host_path`` of the
        pod's remaining containers' image mounts) lies in and no create in flight holds."""
        with _LOCK:
            self._release_unused(pod_id, list(in_use))

    def _release_unused(self, pod_id: str, in_use: list[str]) -> None:
        used = set(_HELD.get(pod_id, {}))
        for p in in_use:
            for v in self.volumes(pod_id):
                if p == v or p.startswith(v + "/"):
                    used.add(v)
        self._release(pod_id, [v for v in self.volumes(pod_id) if v not in used])

    def cleanup(self, pod_id: str, delete_lease: bool = False) -> None:
        """Release every volume of the pod (containerd's cleanupImageMounts at StopPodSandbox)
        and, with ``delete_lease`` (RemovePodSandbox), the pod's lease."""
        self.release(pod_id, self.volumes(pod_id))
        if delete_lease:
            try:
                self.md.leases.delete(NAMESPACE, pod_id)
            except errdefs.NotFound:
                pass

    def orphans(self, pods: set[str]) -> list[str]:
        """Pod ids with an image-volume dir but no record (a crash during a removal)."""
        try:
            names = os.listdir(os.path.join(self.state, IMAGE_VOLUME_DIR))
        except FileNotFoundError:
            return []
        return [n for n in names if n not in pods]


def image_mount_paths(mounts: Iterable[Any]) -> list[str]:
    """The host paths of the image-volume mounts of a (rewritten) container config."""
    return [m.host_path for m in mounts if is_image_mount(m) and m.host_path]


class ContainerImageMounts:
    """Mixed into CRIRuntime: the pods' image volumes over its metadata, CRI state dir,
    snapshotter and image index."""

    @functools.cached_property
    def image_volumes(self) -> ImageVolumes:
        # one per runtime; the image index is only built when a volume needs an image (the
        # start-up cleanup of orphaned volumes must not build it)
        return ImageVolumes(self.md, self.state, self.snapshotter_name,
                            lambda ref: self.images.find(ref))

    def release_image_volumes(self, pod_id: str, held: Iterable[str] = ()) -> None:
        """Drop ``held`` (a failed create's holds), then release the pod's image volumes
        that none of its remaining containers mounts."""
        from ctrd.cri import store as st

        self.image_volumes.settle(pod_id, held)
        paths = [p for c, _ in self.records.containers_of(pod_id)
                 for p in image_mount_paths(st.config_of(c).mounts)]
        self.image_volumes.release_unused(pod_id, paths)
