"""CRI UpdatePodSandboxResources (Kubernetes 1.33+), as containerd 2.3.4 does it
(internal/cri/server/sandbox_update_resources.go).

What containerd does: find the sandbox (NotFound otherwise), hand the new ``overhead`` and
``resources`` to NRI plugins, record both in the sandbox's status (as ``ContainerResources``
with only ``linux`` set), persist them as the sandbox extension ``updated-resources`` (so a
restart recovers them), tell the sandbox controller, and answer ok. No cgroup is changed: the
kubelet resizes the pod cgroup itself, and NRI plugins may act on the notification. The
recorded values show in verbose PodSandboxStatus ``info`` as ``overhead`` / ``resources``.

ctrd has no NRI, so the call records and persists (in the sandbox's status file, which a
restarted daemon reads back) and reports them the same way. Unlike containerd, ctrd checks
the values first, since they end up in a file and in every verbose status:
:class:`~ctrd.errdefs.InvalidArgument` naming the field for a negative size or period, an
``oom_score_adj`` outside [-1000, 1000], a ``unified`` key that is not a cgroup file name, a
string with a NUL, an empty hugepage size, or a field larger than :data:`MAX_FIELD_BYTES`
serialized. A refused request changes nothing.
"""

from __future__ import annotations

from typing import Any

from ctrd import errdefs

MAX_FIELD_BYTES = 64 << 10  # far above any real resources message (a few hundred bytes)

_NON_NEGATIVE = ("cpu_period", "cpu_shares", "memory_limit_in_bytes")


def check_resources(field: str, r) -> None:
    """Raise InvalidArgument naming ``field.<sub field>`` for a hostile LinuxContainerResources."""
    size = r.ByteSize()
    if size > MAX_FIELD_BYTES:
        raise errdefs.InvalidArgument(f"{field} is {size} bytes, more than {MAX_FIELD_BYTES}")
    for name in _NON_NEGATIVE:
        v = getattr(r, name)
        if v < 0:
            raise errdefs.InvalidArgument(f"{field}.{name} {v} must not be negative")
    if r.memory_swap_limit_in_bytes < -1:
        raise errdefs.InvalidArgument(
            f"{field}.memory_swap_limit_in_bytes {r.memory_swap_limit_in_bytes} must be -1 "
            "(unlimited) or more")
    if r.cpu_quota < -1:
        raise errdefs.InvalidArgument(
            f"{field}.cpu_quota {r.cpu_quota} must be -1 (unlimited) or more")
    if not -1000 <= r.oom_score_adj <= 1000:
        raise errdefs.InvalidArgument(
            f"{field}.oom_score_adj {r.oom_score_adj} is outside [-1000, 1000]")
    for name in ("cpuset_cpus", "cpuset_mems"):
        if "\x00" in getattr(r, name):
            raise errdefs.InvalidArgument(f"{field}.{name} contains a NUL byte")
    for i, h in enumerate(r.hugepage_limits):
        if not h.page_size or "\x00" in h.page_size or "/" in h.page_size:
            raise errdefs.InvalidArgument(
                f"{field}.hugepage_limits[{i}].page_size {h.page_size!r} is not a page size")
    for k, v in r.unified.items():
        if not k or "/" in k or "\x00" in k or k in (".", "..") or "." not in k:
            raise errdefs.InvalidArgument(
                f"{field}.unified key {k[:64]!r} is not a cgroup file name")
        if "\x00" in v:
            raise errdefs.InvalidArgument(f"{field}.unified[{k[:64]!r}] contains a NUL byte")


def resources_json(linux) -> dict[str, Any]:
    """A LinuxContainerResources as containerd's Go JSON shows ``ContainerResources``:
    ``{"linux": {...}}`` with proto field names, numbers as numbers, zero values left out."""
    from ctrd.cri import status_info

    return {"linux": status_info.go_json(linux)}


class SandboxUpdateResources:
    """Mixed into CRIRuntime."""

    def update_pod_sandbox_resources(self, id_: str, overhead, resources) -> None:
        """Record ``overhead`` / ``resources`` (LinuxContainerResources or None: unset) on
        sandbox ``id_``: NotFound for an unknown id, InvalidArgument for hostile values
        (nothing recorded then). An unset one is recorded as ``{}`` (containerd's
        ``ContainerResources{Linux: nil}`` in JSON). Blocking (the status file)."""
        meta, _ = self.records.sandbox(id_)
        if overhead is not None:
            check_resources("overhead", overhead)
        if resources is not None:
            check_resources("resources", resources)
        self.records.update_sandbox(
            meta.id,
            overhead=resources_json(overhead) if overhead is not None else {},
            resources=resources_json(resources) if resources is not None else {})


class SandboxUpdateResourcesRPC:
    """Mixed into RuntimeService."""

    async def UpdatePodSandboxResources(self, request, context):
        import asyncio

        from ctrd.cri.helpers import cri_pb

        await asyncio.to_thread(
            self.rt.update_pod_sandbox_resources, request.pod_sandbox_id,
            request.overhead if request.HasField("overhead") else None,
            request.resources if request.HasField("resources") else None)
        return cri_pb().UpdatePodSandboxResourcesResponse()


def info_fields(status) -> dict[str, Any]:
    """The ``overhead`` / ``resources`` keys of verbose PodSandboxStatus info, present once
    UpdatePodSandboxResources recorded them (containerd's ``omitempty``)."""
    out = {}
    for key in ("overhead", "resources"):
        v = getattr(status, key, None)
        if v is not None:
            out[key] = v
    return out
