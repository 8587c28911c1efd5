"""ctrd's CRI answers against containerd 2.3.4's, side by side on one machine.

Both daemons run at once: containerd 2.3.4 (``../shared/bin/containerd-2.3.4``, its runc shim
on PATH, its own temp root/state/socket, ``version = 4`` config, a pause image built offline
and pushed to the test registry as its pinned sandbox image) and ctrd (the CRI tests' config).
Both pull the busybox test image through PullImage from the session ``registry`` over plain
http (``certs.d/<host>/hosts.toml``), both use the test's CNI bridge network. Then the same
pod and container configs go to both, and every answer is compared field by field
(:mod:`fielddiff`): which fields are populated, and the values that must agree (state,
metadata, labels, annotations, mounts, reason, exit code, image spec and ref forms, log path
shape...). ids, times and IPs are compared for presence only. The verbose ``info`` JSONs are
compared by their top-level keys.

One assertion at the end lists every differing field. Fields known to be worked on
elsewhere (ContainerStatus.user, stop_signal, image ids, user_specified_image, runtime
handler features, stats) are compared all the same; their lines name the owner.
Skipped only if the containerd 2.3.4 binaries are absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

import containerd2
import fielddiff as fd
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri_compare import _pod_config, containerd234, ctrd_cri, pause_image  # noqa: F401
from support.poll import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not containerd2.available(),
                                 reason=f"containerd 2.3.4 not in {containerd2.BIN_DIR}")]


# Paths worked on elsewhere: their differences are listed with this note.
OWNERS = {
    "*container_filesystems*": "(e) ImageFsInfo.container_filesystems",
    "Stop*(unknown id)": "(lead) idempotent Stop of an unknown id: on main (84e9ad0)",
    "status.conditions*": "(lead) ContainerdHasNoDeprecationWarnings: on main (1d70a09)",
    "*status.user*": "(d) ContainerStatus.user",
    "*status.stop_signal": "(d) stop signal",
    "*image_id": "(e) consistent image ids",
    "*image.user_specified_image": "(e) image ids / user_specified_image",
    "*image.image_ref": "(e) image ids / user_specified_image",
    "runtime_handlers*": "(lead/c/d) runtime handler features",
    "features*": "(lead/d) RuntimeFeatures",
}


# Keys of PodSandboxStatus's verbose info that ctrd adds to containerd's (tests and tools
# read them): its pinned namespaces (containerd has the netns path only, inside
# sandboxMetadata.NetNSPath), which pod process it runs and the pause image's id.
CTRD_ONLY_INFO_KEYS = ("netns", "ipcns", "utsns", "userns", "pause", "imageId")
# Nested keys whose sets depend on the software, not the answer's shape: the spec
# (tests/test_cri_spec.py compares specs), the CNI plugins' own interfaces.
INFO_KEYS_NOT_COMPARED = ("runtimeSpec", "cniResult.Interfaces",
                          "sandboxMetadata.Metadata")


# PodSandboxStatus info in pause mode: top-level values populated alike (not their insides)
INFO_PRESENCE = fd.Rules(ignore=["*.*"])


def _mask(bases: list[str]):
    """Normaliser: each daemon's own dir -> <base>, 64-hex ids -> <hex>, IPv4 -> <ip>."""
    def norm(v):
        if isinstance(v, (dict, list)):
            return json.loads(norm(json.dumps(v, sort_keys=True)))
        if not isinstance(v, str):
            return v
        for b in bases:
            v = v.replace(b, "<base>")
        v = re.sub(r"[0-9a-f]{64}", "<hex>", v)
        return re.sub(r"\b\d+\.\d+\.\d+\.\d+\b", "<ip>", v)
    return norm


def _container_config(pb, image, name: str, command: list[str], hostdir: str, **kw):
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=2),
        image=image if isinstance(image, pb.ImageSpec) else pb.ImageSpec(image=image),
        command=command,
        envs=[pb.KeyValue(key="GREETING", value="hi"), pb.KeyValue(key="EMPTY", value="")],
        mounts=[pb.Mount(container_path="/data", host_path=hostdir, readonly=True),
                pb.Mount(container_path="/rw", host_path=hostdir,
                         propagation=pb.PROPAGATION_PRIVATE)],
        labels={"role": name}, annotations={"io.example/c": name},
        log_path=f"{name}/2.log", **kw)


def _wait_exited(c, cid: str, timeout: float = 30.0):
    pb = c.pb

    def status():
        return c.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status

    wait_until(lambda: status().state == pb.CONTAINER_EXITED, timeout)
    return status()


def _scenario(c, image: str, base: str, hostdir: str, pause: str = "") -> dict:
    """Drive one runtime through the comparison scenario; every answer, by name."""
    pb = c.pb
    out: dict = {}
    out["Status"] = c.rt.Status(pb.StatusRequest(verbose=True))
    out["Version"] = c.rt.Version(pb.VersionRequest(version="v1"))
    out["RuntimeConfig"] = _answer(lambda: c.rt.RuntimeConfig(pb.RuntimeConfigRequest()))
    pulled = c.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image))).image_ref
    out["PullImage"] = pb.PullImageResponse(image_ref=pulled)
    out["ImageStatus"] = c.img.ImageStatus(pb.ImageStatusRequest(
        image=pb.ImageSpec(image=image), verbose=True))
    out["ImageStatus(by id)"] = c.img.ImageStatus(pb.ImageStatusRequest(
        image=pb.ImageSpec(image=pulled)))
    out["ImageFsInfo"] = c.img.ImageFsInfo(pb.ImageFsInfoRequest())
    out["ListImages[busybox]"] = [i for i in c.img.ListImages(pb.ListImagesRequest()).images
                                  if image in i.repo_tags]
    logdir = os.path.join(base, "pods", "cmp-ns_cmp-pod_cmp-uid")
    os.makedirs(logdir, exist_ok=True)
    pconf = _pod_config(pb, logdir)
    sid = c.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pconf)).pod_sandbox_id
    out["PodSandboxStatus(ready)"] = c.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id=sid, verbose=True))
    if pause:  # pulled for the first pod
        out["ImageStatus(pause)"] = c.img.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=pause)))
    out["ListPodSandbox"] = list(c.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items)

    def create(name, command, image=image, **kw):
        return c.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, sandbox_config=pconf,
            config=_container_config(pb, image, name, command, hostdir, **kw))).container_id

    def cstatus(cid):
        return c.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True))

    ns_pid = pb.LinuxContainerSecurityContext(namespace_options=pb.NamespaceOption(
        network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))
    main = create("main", ["sleep", "3600"], linux=pb.LinuxContainerConfig(
        security_context=ns_pid,
        resources=pb.LinuxContainerResources(cpu_shares=512, cpu_period=100000,
                                             cpu_quota=50000, memory_limit_in_bytes=64 << 20,
                                             oom_score_adj=500)))
    out["ContainerStatus(created)"] = cstatus(main)
    c.rt.StartContainer(pb.StartContainerRequest(container_id=main))
    out["ContainerStatus(running)"] = cstatus(main)
    # what the container sees: env, hostname, the read-only and read-write mounts, user
    for name, cmd in (("env", "echo $GREETING; echo ${EMPTY-unset}"), ("hostname", "hostname"),
                      ("ro mount", "touch /data/x"), ("rw mount", "touch /rw/y && rm /rw/y"),
                      ("id", "id"), ("pid 1", "cat /proc/1/cmdline"),
                      ("oom_score_adj", "cat /proc/self/oom_score_adj")):
        r = c.rt.ExecSync(pb.ExecSyncRequest(container_id=main, cmd=["sh", "-c", cmd],
                                             timeout=20))
        out[f"ExecSync({name})"] = pb.ExecSyncResponse(
            stdout=r.stdout, stderr=r.stderr.replace(b"/rw/", b"<rw>/"), exit_code=r.exit_code)
    failing = create("failing", ["sh", "-c", "echo bye; exit 3"])
    c.rt.StartContainer(pb.StartContainerRequest(container_id=failing))
    _wait_exited(c, failing)
    out["ContainerStatus(exit 3)"] = cstatus(failing)
    done = create("done", ["true"])
    c.rt.StartContainer(pb.StartContainerRequest(container_id=done))
    _wait_exited(c, done)
    out["ContainerStatus(exit 0)"] = cstatus(done)
    # as the kubelet creates containers: the image by the id PullImage answered, the name
    # the pod spec gave as user_specified_image
    kubelet = create("kubelet", ["sleep", "3600"],
                     image=pb.ImageSpec(image=pulled, user_specified_image=image))
    out["ContainerStatus(kubelet-style image)"] = cstatus(kubelet)
    F = pb.ContainerFilter
    for name, f in (("running", F(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))),
                    ("exited", F(state=pb.ContainerStateValue(state=pb.CONTAINER_EXITED))),
                    ("label role=main", F(label_selector={"role": "main"})),
                    ("pod id prefix", F(pod_sandbox_id=sid[:12])),
                    ("id prefix", F(id=main[:12]))):
        got = c.rt.ListContainers(pb.ListContainersRequest(filter=f)).containers
        out[f"ListContainers(filter {name}) names"] = {"names": sorted(
            x.metadata.name for x in got)}
    PF = pb.PodSandboxFilter
    for name, f in (("ready", PF(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))),
                    ("label app=cmp", PF(label_selector={"app": "cmp"})),
                    ("label app=none", PF(label_selector={"app": "none"})),
                    ("id prefix", PF(id=sid[:12]))):
        got = c.rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=f)).items
        out[f"ListPodSandbox(filter {name}) names"] = {"names": sorted(
            x.metadata.name for x in got)}
    listed = {x.metadata.name: x for x in
              c.rt.ListContainers(pb.ListContainersRequest()).containers}
    for name in ("main", "failing", "done", "kubelet"):
        out[f"ListContainers[{name}]"] = listed.get(name)
    c.rt.StopContainer(pb.StopContainerRequest(container_id=main, timeout=2))
    out["ContainerStatus(stopped)"] = cstatus(main)
    c.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
    out["PodSandboxStatus(notready)"] = c.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(
        pod_sandbox_id=sid, verbose=True))
    out["ListPodSandbox(notready)"] = list(c.rt.ListPodSandbox(
        pb.ListPodSandboxRequest()).items)
    out["ContainerStatus(after pod stop)"] = cstatus(done)
    c.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))

    # a host-network pod, and a pod whose config has no Linux section at all (never the
    # kubelet's, but a valid request: its namespace options are left unset in the answer)
    for what, linux in (("host network", pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(
                network=pb.NODE, pid=pb.CONTAINER, ipc=pb.POD)))), ("no linux", None)):
        conf = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(
            name=f"cmp-{what.replace(' ', '-')}", namespace="cmp-ns", uid=f"uid-{what[:4]}"),
            log_directory=logdir, linux=linux)
        psid = c.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=conf)).pod_sandbox_id
        out[f"PodSandboxStatus({what})"] = c.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(
            pod_sandbox_id=psid, verbose=True))
        c.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=psid))
        c.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=psid))

    out["Errors"] = _error_codes(c, image, pconf)
    return out


def _answer(call):
    """The response, or ``{"error": <gRPC code>}`` (compared like any answer)."""
    import grpc

    try:
        return call()
    except grpc.RpcError as e:
        return {"error": e.code().name}


def _error_codes(c, image: str, pconf) -> dict:
    """The gRPC code of calls on unknown ids and images (OK where the call succeeds)."""
    import grpc

    pb = c.pb
    calls = {
        "ContainerStatus(unknown id)": lambda: c.rt.ContainerStatus(
            pb.ContainerStatusRequest(container_id="0" * 64)),
        "PodSandboxStatus(unknown id)": lambda: c.rt.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id="0" * 64)),
        "StopContainer(unknown id)": lambda: c.rt.StopContainer(
            pb.StopContainerRequest(container_id="0" * 64)),
        "RemoveContainer(unknown id)": lambda: c.rt.RemoveContainer(
            pb.RemoveContainerRequest(container_id="0" * 64)),
        "StopPodSandbox(unknown id)": lambda: c.rt.StopPodSandbox(
            pb.StopPodSandboxRequest(pod_sandbox_id="0" * 64)),
        "RemovePodSandbox(unknown id)": lambda: c.rt.RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id="0" * 64)),
        "CreateContainer(unknown pod)": lambda: c.rt.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id="0" * 64, sandbox_config=pconf,
                                      config=pb.ContainerConfig(
                                          metadata=pb.ContainerMetadata(name="x"),
                                          image=pb.ImageSpec(image=image)))),
        "ImageStatus(unknown image)": lambda: c.img.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image=image + "-none"))),
        "RemoveImage(unknown image)": lambda: c.img.RemoveImage(
            pb.RemoveImageRequest(image=pb.ImageSpec(image=image + "-none"))),
        "PullImage(no such tag)": lambda: c.img.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=image.rsplit(":", 1)[0] + ":nope"))),
        "ExecSync(unknown id)": lambda: c.rt.ExecSync(
            pb.ExecSyncRequest(container_id="0" * 64, cmd=["true"], timeout=5)),
    }
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = "OK"
        except grpc.RpcError as e:
            out[name] = e.code().name
    return out


def _runtime_has_idmap(runtime: str = "runc") -> bool:
    """Whether ``runtime features`` says it makes idmapped mounts (containerd's test for
    advertising user namespaces)."""
    r = subprocess.run([runtime, "features"], capture_output=True, text=True)
    try:
        ext = json.loads(r.stdout).get("linux", {}).get("mountExtensions") or {}
    except ValueError:
        return False
    return bool((ext.get("idmap") or {}).get("enabled"))


def _rules(bases: list[str]) -> fd.Rules:
    norm = _mask(bases)
    return fd.Rules(
        ignore=[
            # ids, times and IPs: presence only (the default) -- but their values differ
            # by nature, so nothing else is asked of them. The verbose info is compared by
            # its keys (key_diff), not here.
            "info", "*info", "*info.*",
            # the daemons' own config, CNI state and go version: not the same software
            "Status.info*",
            # containerd samples the snapshotter's usage every stats_collect_period (10 s):
            # 0 until then; whether the values are there is compared, not what they are
            "*used_bytes.value", "*inodes_used.value",
            # the runtime's own name and version
            "runtime_name", "runtime_version", "version",
            # ctrd differs on purpose: it makes a user-namespaced pod's idmapped mounts
            # itself, so it runs them with runc 1.1; containerd 2.3.4 asks the runtime for
            # idmapped mounts (runc >= 1.2). Asserted on its own in the test.
            "runtime_handlers*.features.user_namespaces",
            # containerd's deprecation condition is its own policy (cgroup v1, its config
            # keys); the condition itself is compared (type, status) below
            "status.conditions[ContainerdHasNoDeprecationWarnings].message",
            "status.conditions[ContainerdHasNoDeprecationWarnings].reason",
            "status.conditions[ContainerdHasNoDeprecationWarnings].status",
        ],
        norm=[("*log_path", norm), ("*host_path", norm), ("*image.image", norm),
              ("*image_ref", norm), ("*repo_digests", norm), ("*repo_tags", norm),
              ("*.message", norm), ("*spec.image", norm)],
        values=["*state", "*metadata.*", "*labels", "*annotations", "*reason", "*exit_code",
                "*mounts[]*", "*mounts#", "*conditions#", "*conditions[]*", "*runtime_handler",
                "runtime_handlers*", "features*", "*namespaces.options*", "*user_specified_image",
                "*readonly", "*propagation", "*uid.value", "*username", "*pinned",
                "*stop_signal", "*user*", "*containers_statuses#", "*additional_ips#",
                "*#", "*spec.runtime_handler", "*spec.annotations"],
        keys={"status.conditions": "type", "runtime_handlers": "name",
              "status.mounts": "container_path", "mounts": "container_path"},
        owners=OWNERS)


def _dump(path: str, ref: dict, got: dict) -> None:
    from google.protobuf import json_format

    def js(v):
        if isinstance(v, list):
            return [js(x) for x in v]
        if isinstance(v, dict):
            return v
        return None if v is None else json_format.MessageToDict(v)
    with open(path, "w") as f:
        json.dump({k: {"containerd": js(ref[k]), "ctrd": js(got[k])} for k in ref}, f,
                  indent=1, sort_keys=True)


def _info_json(resp) -> dict | None:
    if not hasattr(resp, "info") or "info" not in resp.info:
        return None
    return json.loads(resp.info["info"])


def test_cri_answers_match_containerd_2_3_4(ctrd_cri, containerd234, registry, tmp_root):
    """ctrd_cri: ctrd's default (no pause container) and its pause mode, each against
    containerd 2.3.4 (always with its pause container)."""
    image = registry.ref("busybox")
    hostdir = tempfile.mkdtemp(prefix="ctrd-cmp-host-", dir="/tmp")
    try:
        ref_base = str(containerd234.d.base)
        ctrd_base = str(tmp_root / "ctrd")
        pause = containerd234.pause if ctrd_cri.mode == "pause" else ""
        ref = _scenario(containerd234, image, os.path.join(ref_base, "logs"), hostdir, pause)
        got = _scenario(ctrd_cri, image, os.path.join(ctrd_base, "logs"), hostdir, pause)
    finally:
        shutil.rmtree(hostdir, ignore_errors=True)
    if os.environ.get("CTRD_CMP_DUMP"):  # both sides' answers, for a human to read
        _dump(os.environ["CTRD_CMP_DUMP"], ref, got)
    rules = _rules([ref_base, ctrd_base])
    from ctrd.cri import userns

    want_userns = userns.supported()
    assert {h.name: h.features.user_namespaces for h in got["Status"].runtime_handlers} == {
        h.name: want_userns for h in ref["Status"].runtime_handlers}
    if not _runtime_has_idmap():
        assert not any(h.features.user_namespaces for h in ref["Status"].runtime_handlers)
    diffs: list[fd.Diff] = []
    for where, a in ref.items():
        b = got[where]
        if isinstance(a, list) or isinstance(b, list):
            a_items = a if isinstance(a, list) else [a]
            b_items = b if isinstance(b, list) else [b]
            if len(a_items) != len(b_items):
                diffs.append(fd.Diff(where, "#", len(a_items), len(b_items), "items"))
            for i, (x, y) in enumerate(zip(a_items, b_items)):
                diffs += fd.diff(f"{where}[{i}]", x, y, rules)
            continue
        if a is None or b is None:
            if (a is None) != (b is None):
                diffs.append(fd.Diff(where, "", a is not None, b is not None, "present"))
            continue
        exact = where in ("Errors", "RuntimeConfig") or where.startswith("ExecSync") or (
            where.startswith("List") and isinstance(a, dict))
        found = fd.diff(where, a, b, fd.Rules(values=["*"], owners=OWNERS) if exact else rules)
        if where == "RuntimeConfig":
            for d in found:
                d.owner = d.owner or "(lead) RuntimeConfig: on main (1d70a09)"
        diffs += found
        ia, ib = _info_json(a), _info_json(b)
        if ia is not None or ib is not None:
            diffs += fd.key_diff(where, ia or {}, ib or {}, owners=OWNERS, depth=2,
                                 ignore=CTRD_ONLY_INFO_KEYS + INFO_KEYS_NOT_COMPARED)
            if ctrd_cri.mode == "pause" and where.startswith("PodSandboxStatus"):
                # with a pause container ctrd's pod info is populated as containerd's (its
                # pid, image, snapshot, spec); without one those are empty by design
                diffs += fd.diff(f"{where} info", {k: v for k, v in (ia or {}).items()
                                                   if k not in CTRD_ONLY_INFO_KEYS},
                                 {k: v for k, v in (ib or {}).items()
                                  if k not in CTRD_ONLY_INFO_KEYS}, INFO_PRESENCE)
    # Status's verbose info keys (config, cniconfig, golang, lastCNILoadStatus...)
    diffs += fd.key_diff("Status", dict(ref["Status"].info), dict(got["Status"].info),
                         owners=OWNERS)
    assert not diffs, fd.report(diffs)
