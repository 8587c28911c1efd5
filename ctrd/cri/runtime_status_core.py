"""Runtime-level calls' core: the conditions and verbose info of Status, UpdateRuntimeConfig
(the node's pod CIDR, the CNI config template); and their gRPC side (Version, Status,
RuntimeConfig, UpdateRuntimeConfig). The feature and handler rules: :mod:`runtime_status`."""

from __future__ import annotations

import asyncio
import json
import os

from ctrd.cri.helpers import cri_pb, log


class RuntimeStatusCore:
    """Mixed into CRIRuntime."""

    def status(self) -> tuple[list[tuple[str, bool, str, str]], dict[str, str], list]:
        """Conditions (type, status, reason, message), verbose info and the runtime handlers
        (:func:`runtime_status.runtime_handlers`). Blocking: the first call probes each
        handler's runtime (``runc features``) and the kernel's user namespaces."""
        from ctrd.cri import runtime_status as rs
        from ctrd.cri import status_info

        conds = [("RuntimeReady", True, "", "")]
        try:
            ns = self.cni.status()
            ok, reason, message, load = ns.ready, ns.reason, ns.message, ns.last_load_error
        except Exception as e:  # noqa: BLE001 - a broken CNI setup is a condition, not a crash
            ok, reason, message, load = False, "NetworkPluginNotReady", f"cni: {e}", str(e)
        conds.append(("NetworkReady", ok, "" if ok else reason, "" if ok else message))
        conds.append(rs.deprecation_condition(self.deprecations(),
                                                self.config.ignore_deprecation_warnings))
        info = {"config": json.dumps({
            "containerd": {"snapshotter": self.snapshotter_name,
                           "defaultRuntimeName": self.config.containerd.default_runtime_name},
            "cni": {"binDir": self.config.cni.bin_dir, "confDir": self.config.cni.conf_dir},
            "sandboxImage": self.config.sandbox_image,
            "enableSelinux": self.config.enable_selinux,
            "streamServerAddress": self.config.stream_server_address,
            "streamServerPort": self.config.stream_server_port}),
            "golang": "n/a (ctrd is Python)", "lastCNILoadStatus": load or "OK",
            "lastCNILoadStatus.default": load or "OK"}
        try:
            info["cniconfig"] = json.dumps(status_info.cni_config_info(self.cni))
        except Exception as e:  # noqa: BLE001 - as go-cni: logged, the answer still given
            log.warning("cni config info: %s", e)
        return conds, info, rs.runtime_handlers(self.config, self.handler_features)

    def update_runtime_config(self, pod_cidr: str) -> None:
        """Remember the node's pod CIDR; with a ``conf_template`` configured, write the CNI
        config from it (containerd's template fields .PodCIDR, .PodCIDRRanges, .Routes)."""
        if not pod_cidr or pod_cidr == self.pod_cidr:
            return
        self.pod_cidr = pod_cidr
        tmpl = self.config.cni.conf_template
        if not tmpl:
            return
        ranges = [c.strip() for c in pod_cidr.split(",") if c.strip()]
        routes = ["0.0.0.0/0" if ":" not in r else "::/0" for r in ranges]
        with open(tmpl) as f:
            text = f.read()
        text = (text.replace("{{.PodCIDR}}", ranges[0])
                .replace("{{.PodCIDRRanges}}", json.dumps(ranges)[1:-1])
                .replace("{{.Routes}}", json.dumps(routes)[1:-1]))
        os.makedirs(self.config.cni.conf_dir, exist_ok=True)
        out = os.path.join(self.config.cni.conf_dir, "10-containerd-net.conflist")
        with open(out + ".tmp", "w") as f:
            f.write(text)
        os.replace(out + ".tmp", out)


class RuntimeStatusRPC:
    """Mixed into RuntimeService (``self.rt``: the core)."""

    async def Version(self, request, context):
        pb = cri_pb()
        from ctrd import __version__

        return pb.VersionResponse(version="0.1.0", runtime_name=RUNTIME_NAME,
                                  runtime_version=__version__,
                                  runtime_api_version=RUNTIME_API_VERSION)

    async def Status(self, request, context):
        pb = cri_pb()
        conds, info, handlers = await asyncio.to_thread(self.rt.status)
        resp = pb.StatusResponse(status=pb.RuntimeStatus(conditions=[
            pb.RuntimeCondition(type=t, status=s, reason=r, message=m)
            for t, s, r, m in conds]), features=pb.RuntimeFeatures(
                supplemental_groups_policy=True, user_namespaces_host_network=True))
        for h in handlers:
            resp.runtime_handlers.add(name=h.name, features=pb.RuntimeHandlerFeatures(
                recursive_read_only_mounts=h.features.recursive_read_only_mounts,
                user_namespaces=h.features.user_namespaces))
        if request.verbose:
            resp.info.update(info)
        return resp

    async def RuntimeConfig(self, request, context):
        pb = cri_pb()
        from ctrd.cri import runtime_status as rs

        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(
            cgroup_driver=rs.cgroup_driver(self.rt.config)))

    async def UpdateRuntimeConfig(self, request, context):
        pb = cri_pb()
        await asyncio.to_thread(self.rt.update_runtime_config,
                                request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()


RUNTIME_NAME = "ctrd"
RUNTIME_API_VERSION = "v1"
