"""Who a CRI container's first process is: its supplementary groups under the pod's and
container's ``SupplementalGroupsPolicy``, and the ``ContainerStatus.user`` the kubelet reads
back (Kubernetes 1.31+ ``SupplementalGroupsPolicy`` feature).

containerd 2.3.4 (``internal/cri/server/container_create_linux.go``,
``internal/cri/opts/spec_opts.go``):

- ``Merge`` (the default): the groups the image's ``/etc/group`` lists the user in, plus
  the request's ``supplemental_groups`` (where the kubelet has already put the pod's
  ``fsGroup``), plus the primary gid;
- ``Strict``: only the primary gid and the request's ``supplemental_groups``;
- any other value is refused;
- ``ContainerStatus.user.linux`` is the spec's ``process.user`` (uid, gid, additionalGids).

Pure functions over plain values; no I/O.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ctrd.errdefs import InvalidArgument
from ctrd.oci.user import MAX_ID

# runtime.v1 SupplementalGroupsPolicy, by value
MERGE, STRICT = 0, 1
POLICY_NAMES = {MERGE: "Merge", STRICT: "Strict"}


def check_policy(policy: int, where: str = "supplemental_groups_policy") -> int:
    """``policy`` if it is Merge or Strict, else InvalidArgument naming ``where``."""
    if policy not in POLICY_NAMES:
        raise InvalidArgument(f"{where} {policy} is not a known SupplementalGroupsPolicy "
                              "(Merge = 0, Strict = 1)")
    return policy


def check_groups(groups: Iterable[int], where: str = "supplemental_groups") -> list[int]:
    """The request's supplemental group ids, each in ``[0, 2**31-1]`` (runc's and
    containerd's bound), else InvalidArgument naming ``where`` and the id."""
    out = []
    for g in groups:
        if not 0 <= g <= MAX_ID:
            raise InvalidArgument(f"{where} entry {g} is out of range [0, {MAX_ID}]")
        out.append(g)
    return out


def additional_gids(policy: int, gid: int, image_gids: Iterable[int],
                    supplemental: Iterable[int]) -> list[int]:
    """``process.user.additionalGids``: sorted, without duplicates, always holding the
    primary ``gid``; ``image_gids`` (the image's ``/etc/group`` memberships) count only
    under Merge."""
    check_policy(policy)
    gids = {gid, *check_groups(supplemental)}
    if policy == MERGE:
        gids.update(image_gids)
    return sorted(gids)


def container_user(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """``ContainerUser.linux`` fields (uid, gid, supplemental_groups) from an OCI spec's
    ``process.user``, as containerd's toCRIContainerUser; {} when the spec has no process."""
    proc = (spec or {}).get("process")
    if not isinstance(proc, Mapping):
        return {}
    user = proc.get("user") or {}
    return {"uid": int(user.get("uid", 0)), "gid": int(user.get("gid", 0)),
            "supplemental_groups": [int(g) for g in user.get("additionalGids") or []]}


__all__ = ["MERGE", "STRICT", "check_policy", "check_groups", "additional_gids",
           "container_user"]
