"""Every CRI error code as containerd 2.3.4 answers it: a matrix of bad and
out-of-order requests, sent to containerd 2.3.4 and to ctrd, which must answer each with the
same gRPC status code, and where containerd's message is what a user greps for, a message
with the same key words.

The requests: unknown, empty and hostile ids ("../../etc", "\\x00", 5000 chars) for every RPC
that takes one; starts, execs, updates and log reopens of containers in the wrong state;
creates in a stopped pod, with a missing image, a duplicate name, no metadata; pods with a
duplicate name, an unknown runtime handler, no metadata; pulls of missing images, bad
references and an unreachable registry; removal of a running container. Stops and removals
of unknown ids answer OK (the kubelet retries them).

containerd 2.3.4 runs from ``../shared/bin/containerd-2.3.4`` on its own temp root, state and
socket (:mod:`containerd2`, the ``containerd234`` fixture of tests/test_cri_compare.py with a
pause image built offline); ctrd with the CRI tests' config. Both pull the busybox test image
from the session ``registry`` over plain http. ``CTRD_ERRCODES_DUMP=<path>`` writes both
matrices (code and message of each request) as JSON for a human to read.
Skipped only if the containerd 2.3.4 binaries are absent.
"""

from __future__ import annotations

import json
import os

import grpc
import pytest

import containerd2
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import CRI, cri_config, teardown
from support.cri_compare import containerd234, pause_image  # noqa: F401 - fixtures
from support.poll import wait_until

needs_containerd = pytest.mark.skipif(not containerd2.available(),
                                      reason=f"containerd 2.3.4 not in {containerd2.BIN_DIR}")

UNKNOWN = "0" * 64
HOSTILE = {"unknown": UNKNOWN, "empty": "", "dotdot": "../../etc", "nul": "\x00",
           "long": "a" * 5000}

# Key words containerd's message holds and a user greps for: ctrd's must hold them too
# (case name -> words, compared case-insensitively). Checked against both daemons, so each
# word here is containerd's. Every NOT_FOUND answer must also say "not found".
_STATE = "container is in CONTAINER_{} state"
KEYWORDS: dict[str, tuple[str, ...]] = {
    **{f"{rpc}(empty id)": ("prefix can't be empty",) for rpc in (
        "PodSandboxStatus", "ContainerStatus", "StartContainer", "ExecSync", "Exec", "Attach",
        "PortForward", "UpdateContainerResources", "ReopenContainerLog", "ContainerStats",
        "PodSandboxStats", "CreateContainer(pod)", "StopContainer", "RemoveContainer",
        "StopPodSandbox", "RemovePodSandbox")},
    "PullImage(no such tag)": ("failed to pull and unpack image",),
    "PullImage(no such repo)": ("failed to pull and unpack image",),
    "PullImage(no such digest)": ("failed to pull and unpack image",),
    "PullImage(bad reference)": ("failed to parse image reference", "invalid reference format"),
    "PullImage(empty reference)": ("failed to parse image reference", "invalid reference format"),
    "PullImage(unreachable registry)": ("failed to pull and unpack image", "connection refused"),
    "RunPodSandbox(duplicate name)": ("failed to reserve sandbox name", "is reserved for"),
    "RunPodSandbox(unknown runtime handler)": ('no runtime for "nosuch" is configured',),
    "RunPodSandbox(no metadata)": ("sandbox config must include metadata",),
    "RunPodSandbox(no config)": ("sandbox config must include metadata",),
    "CreateContainer(duplicate name)": ("failed to reserve container name",
                                        "check if another CreateContainer request is in progress",
                                        "is reserved for"),
    "CreateContainer(missing image)": ("failed to resolve image",),
    "CreateContainer(no metadata)": ("container config must include metadata",),
    "CreateContainer(no config)": ("container config must include metadata",),
    "CreateContainer(no image)": ('failed to resolve image ""',),
    "CreateContainer(NOTREADY pod)": ("sandbox container", "is not running"),
    "StartContainer(running)": ("failed to set starting state", _STATE.format("RUNNING")),
    "StartContainer(exited)": ("failed to set starting state", _STATE.format("EXITED")),
    "StartContainer(in NOTREADY pod)": ("sandbox container", "is not running"),
    "ExecSync(empty command)": ("failed to exec in container", "args must not be empty"),
    "ExecSync(exited)": ("failed to exec in container", _STATE.format("EXITED")),
    "ExecSync(created)": ("failed to exec in container", _STATE.format("CREATED")),
    "ExecSync(timeout expires)": ("timeout 1s exceeded",),
    "ExecSync(no such binary)": ("failed to exec in container", "/nonexistent"),
    "Exec(no stream)": ("one of stdin, stdout, or stderr must be set",),
    "Exec(exited)": (_STATE.format("EXITED"),),
    "Attach(no stream)": ("one of stdin, stdout",),
    "Attach(exited)": (_STATE.format("EXITED"),),
    "Attach(created)": (_STATE.format("CREATED"),),
    "ReopenContainerLog(exited)": ("container is not running",),
    "ReopenContainerLog(created)": ("container is not running",),
    "PortForward(NOTREADY pod)": ("sandbox container is not running",),
    "PodSandboxStats(NOTREADY pod)": ("failed to get pod sandbox stats",
                                      "is not in ready state"),
}

# Where ctrd keeps its own answer because containerd 2.3.4's is a bug: case -> (ctrd's code,
# why). Asserted explicitly.
CTRD_OWN: dict[str, tuple[str, str]] = {
    # containerd hands out a streaming URL for an exec that can never start (runc refuses
    # empty args when the client connects; its ExecSync refuses the same request): ctrd
    # refuses it at the call
    "Exec(empty command)": ("INVALID_ARGUMENT", "an empty command can never run"),
    # containerd's "unexpected metrics response: []" is its internal check that the task
    # service returned one metrics entry failing for a container whose task has exited, not
    # an answer about the container; ctrd answers the stats it has (cgroup gone: no usage)
    "ContainerStats(exited)": ("OK", "stats of an exited container are an answer"),
    # containerd accepts a pod whose metadata has no name, namespace or uid (and names it
    # "_<ns>_<uid>_0"); ctrd keeps refusing it naming the field (the kubelet always sends
    # all three)
    "RunPodSandbox(metadata without name)": ("INVALID_ARGUMENT", "metadata.name is required"),
    # containerd writes -5 into the cgroup and reports runc's failure (UNKNOWN, "failed to
    # write "-5""); ctrd refuses the hostile value up front naming the field, the cgroup
    # untouched (tests/test_cri_runtime_resources.py)
    "UpdateContainerResources(negative memory)": ("INVALID_ARGUMENT",
                                                  "memory_limit_in_bytes must not be negative"),
}


@pytest.fixture
def ctrd_side(start_ctrd, tmp_root, registry, testnet):  # noqa: F811
    """ctrd with the CRI tests' config, pulling from the registry over plain http."""
    certs = tmp_root / "certs.d"
    containerd2.write_plain_http_hosts(certs, registry.address)
    testnet.write([testnet.bridge_conf(ip_masq=False)])
    config = cri_config(testnet, f'  [plugins."io.containerd.grpc.v1.cri".registry]\n'
                                 f'    config_path = "{certs}"\n')
    c = CRI(start_ctrd(config_text=config), start_ctrd, config)
    c.net = testnet
    try:
        yield c
    finally:
        teardown([c], tmp_root)


def _code(call) -> tuple[str, str]:
    """(gRPC code name, message) of ``call()``; ("OK", "") where it succeeds."""
    try:
        call()
        return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""


def _pod_config(pb, name: str, logdir: str):
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="ec-ns", uid=f"uid-{name}"),
        log_directory=logdir,
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER,
                                                 ipc=pb.POD))))


def _wait_exited(c, cid: str, timeout: float = 30.0) -> None:
    pb = c.pb
    wait_until(lambda: c.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))
               .status.state == pb.CONTAINER_EXITED, timeout, what=f"{cid} to exit")


def _id_calls(c, bad: str) -> dict:
    """Every RPC that takes a container, pod or image id, with ``bad`` as the id."""
    pb, rt, img = c.pb, c.rt, c.img
    return {
        "PodSandboxStatus": lambda: rt.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=bad)),
        "ContainerStatus": lambda: rt.ContainerStatus(
            pb.ContainerStatusRequest(container_id=bad)),
        "StartContainer": lambda: rt.StartContainer(pb.StartContainerRequest(container_id=bad)),
        "ExecSync": lambda: rt.ExecSync(pb.ExecSyncRequest(container_id=bad, cmd=["true"],
                                                           timeout=5)),
        "Exec": lambda: rt.Exec(pb.ExecRequest(container_id=bad, cmd=["true"], stdout=True)),
        "Attach": lambda: rt.Attach(pb.AttachRequest(container_id=bad, stdout=True)),
        "PortForward": lambda: rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=bad,
                                                                    port=[80])),
        "UpdateContainerResources": lambda: rt.UpdateContainerResources(
            pb.UpdateContainerResourcesRequest(container_id=bad,
                                               linux=pb.LinuxContainerResources(
                                                   cpu_shares=256))),
        "ReopenContainerLog": lambda: rt.ReopenContainerLog(
            pb.ReopenContainerLogRequest(container_id=bad)),
        "ContainerStats": lambda: rt.ContainerStats(pb.ContainerStatsRequest(container_id=bad)),
        "PodSandboxStats": lambda: rt.PodSandboxStats(
            pb.PodSandboxStatsRequest(pod_sandbox_id=bad)),
        "CreateContainer(pod)": lambda: rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=bad, config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="x"), image=pb.ImageSpec(image=c.image)),
            sandbox_config=_pod_config(pb, "x", ""))),
        "StopContainer": lambda: rt.StopContainer(pb.StopContainerRequest(container_id=bad,
                                                                          timeout=0)),
        "RemoveContainer": lambda: rt.RemoveContainer(
            pb.RemoveContainerRequest(container_id=bad)),
        "StopPodSandbox": lambda: rt.StopPodSandbox(pb.StopPodSandboxRequest(
            pod_sandbox_id=bad)),
        "RemovePodSandbox": lambda: rt.RemovePodSandbox(pb.RemovePodSandboxRequest(
            pod_sandbox_id=bad)),
        "RemoveImage": lambda: img.RemoveImage(pb.RemoveImageRequest(
            image=pb.ImageSpec(image=bad))),
        "ImageStatus": lambda: img.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=bad))),
    }


def _matrix(c, image: str, registry_address: str, logroot: str) -> dict[str, tuple[str, str]]:
    """Drive one runtime through the matrix; {case: (code, message)}."""
    pb, rt, img = c.pb, c.rt, c.img
    c.image = image
    out: dict[str, tuple[str, str]] = {}
    for what, bad in HOSTILE.items():
        for rpc, call in _id_calls(c, bad).items():
            out[f"{rpc}({what} id)"] = _code(call)
    for what, bad in (("unknown", image + "-none"), ("bad ref", "UPPER/Bad::ref"),
                      ("unknown digest", image.rsplit(":", 1)[0] + "@sha256:" + "0" * 64)):
        out[f"RemoveImage({what} image)"] = _code(lambda: img.RemoveImage(
            pb.RemoveImageRequest(image=pb.ImageSpec(image=bad))))
        out[f"ImageStatus({what} image)"] = _code(lambda: img.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image=bad))))
    repo = image.rsplit(":", 1)[0]
    for what, ref in (("no such tag", repo + ":nope"),
                      ("no such repo", f"{registry_address}/test/none:latest"),
                      ("no such digest", repo + "@sha256:" + "0" * 64),
                      ("bad reference", "UPPER/Bad::ref"), ("empty reference", ""),
                      ("unreachable registry", "127.0.0.1:1/test/busybox:latest")):
        out[f"PullImage({what})"] = _code(lambda: img.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=ref))))

    img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)))
    logdir = os.path.join(logroot, "pods")
    os.makedirs(logdir, exist_ok=True)
    # pods
    pconf = _pod_config(pb, "ec-pod", logdir)
    sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pconf)).pod_sandbox_id
    out["RunPodSandbox(duplicate name)"] = _code(lambda: rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pconf)))
    out["RunPodSandbox(unknown runtime handler)"] = _code(lambda: rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=_pod_config(pb, "ec-handler", logdir),
                                runtime_handler="nosuch")))
    out["RunPodSandbox(no metadata)"] = _code(lambda: rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(log_directory=logdir))))
    out["RunPodSandbox(no config)"] = _code(lambda: rt.RunPodSandbox(
        pb.RunPodSandboxRequest()))
    noname = _pod_config(pb, "", logdir)
    out["RunPodSandbox(metadata without name)"] = _code(lambda: rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=noname)))

    def cconf(name, command, image=image, **kw):
        return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name),
                                  image=pb.ImageSpec(image=image), command=command,
                                  log_path=f"{name}.log", **kw)

    def create(name, command, sandbox=sid, conf=pconf, **kw):
        return rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sandbox, sandbox_config=conf,
            config=cconf(name, command, **kw))).container_id

    # containers
    running = create("running", ["sleep", "3600"])
    rt.StartContainer(pb.StartContainerRequest(container_id=running))
    exited = create("exited", ["true"])
    rt.StartContainer(pb.StartContainerRequest(container_id=exited))
    _wait_exited(c, exited)
    created = create("created", ["sleep", "3600"])
    out["CreateContainer(duplicate name)"] = _code(lambda: create("running", ["true"]))
    out["CreateContainer(missing image)"] = _code(lambda: create(
        "noimg", ["true"], image=image.rsplit(":", 1)[0] + ":nope"))
    out["CreateContainer(no metadata)"] = _code(lambda: rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=sid, sandbox_config=pconf,
                                  config=pb.ContainerConfig(image=pb.ImageSpec(image=image)))))
    out["CreateContainer(no config)"] = _code(lambda: rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=sid, sandbox_config=pconf)))
    out["CreateContainer(no sandbox_config)"] = _code(lambda: rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=sid, config=cconf("nosbconf", ["true"]))))
    out["CreateContainer(no image)"] = _code(lambda: rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=sid, sandbox_config=pconf, config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="noimage")))))
    out["StartContainer(running)"] = _code(lambda: rt.StartContainer(
        pb.StartContainerRequest(container_id=running)))
    out["StartContainer(exited)"] = _code(lambda: rt.StartContainer(
        pb.StartContainerRequest(container_id=exited)))
    out["ExecSync(empty command)"] = _code(lambda: rt.ExecSync(
        pb.ExecSyncRequest(container_id=running, cmd=[], timeout=5)))
    out["ExecSync(exited)"] = _code(lambda: rt.ExecSync(
        pb.ExecSyncRequest(container_id=exited, cmd=["true"], timeout=5)))
    out["ExecSync(created)"] = _code(lambda: rt.ExecSync(
        pb.ExecSyncRequest(container_id=created, cmd=["true"], timeout=5)))
    out["ExecSync(timeout expires)"] = _code(lambda: rt.ExecSync(
        pb.ExecSyncRequest(container_id=running, cmd=["sleep", "30"], timeout=1)))
    out["ExecSync(no such binary)"] = _code(lambda: rt.ExecSync(
        pb.ExecSyncRequest(container_id=running, cmd=["/nonexistent"], timeout=5)))
    out["Exec(empty command)"] = _code(lambda: rt.Exec(
        pb.ExecRequest(container_id=running, cmd=[], stdout=True)))
    out["Exec(no stream)"] = _code(lambda: rt.Exec(
        pb.ExecRequest(container_id=running, cmd=["true"])))
    out["Exec(exited)"] = _code(lambda: rt.Exec(
        pb.ExecRequest(container_id=exited, cmd=["true"], stdout=True)))
    out["Attach(exited)"] = _code(lambda: rt.Attach(
        pb.AttachRequest(container_id=exited, stdout=True)))
    out["Attach(no stream)"] = _code(lambda: rt.Attach(
        pb.AttachRequest(container_id=running)))
    out["Attach(created)"] = _code(lambda: rt.Attach(
        pb.AttachRequest(container_id=created, stdout=True)))
    out["ReopenContainerLog(exited)"] = _code(lambda: rt.ReopenContainerLog(
        pb.ReopenContainerLogRequest(container_id=exited)))
    out["ReopenContainerLog(created)"] = _code(lambda: rt.ReopenContainerLog(
        pb.ReopenContainerLogRequest(container_id=created)))
    out["UpdateContainerResources(exited)"] = _code(lambda: rt.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(container_id=exited, linux=pb.LinuxContainerResources(
            cpu_shares=256))))
    out["UpdateContainerResources(negative memory)"] = _code(
        lambda: rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
            container_id=running, linux=pb.LinuxContainerResources(memory_limit_in_bytes=-5))))
    F, PF = pb.ContainerFilter, pb.PodSandboxFilter
    for what, bad in HOSTILE.items():
        out[f"ListContainers(filter {what} id)"] = _code(lambda: rt.ListContainers(
            pb.ListContainersRequest(filter=F(id=bad))))
        out[f"ListPodSandbox(filter {what} id)"] = _code(lambda: rt.ListPodSandbox(
            pb.ListPodSandboxRequest(filter=PF(id=bad))))
        out[f"ListContainers(filter {what} pod id)"] = _code(lambda: rt.ListContainers(
            pb.ListContainersRequest(filter=F(pod_sandbox_id=bad))))
    out["ContainerStats(exited)"] = _code(lambda: rt.ContainerStats(
        pb.ContainerStatsRequest(container_id=exited)))
    out["StopContainer(exited)"] = _code(lambda: rt.StopContainer(
        pb.StopContainerRequest(container_id=exited, timeout=0)))
    out["StopContainer(created)"] = _code(lambda: rt.StopContainer(
        pb.StopContainerRequest(container_id=created, timeout=0)))

    # a stopped (NOTREADY) pod
    sconf = _pod_config(pb, "ec-stopped", logdir)
    stopped = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=sconf)).pod_sandbox_id
    in_stopped = create("in-stopped", ["sleep", "3600"], sandbox=stopped, conf=sconf)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=stopped))
    out["CreateContainer(NOTREADY pod)"] = _code(lambda: create(
        "late", ["true"], sandbox=stopped, conf=sconf))
    out["StartContainer(in NOTREADY pod)"] = _code(lambda: rt.StartContainer(
        pb.StartContainerRequest(container_id=in_stopped)))
    out["PortForward(NOTREADY pod)"] = _code(lambda: rt.PortForward(
        pb.PortForwardRequest(pod_sandbox_id=stopped, port=[80])))
    out["PodSandboxStats(NOTREADY pod)"] = _code(lambda: rt.PodSandboxStats(
        pb.PodSandboxStatsRequest(pod_sandbox_id=stopped)))
    out["StopPodSandbox(NOTREADY pod)"] = _code(lambda: rt.StopPodSandbox(
        pb.StopPodSandboxRequest(pod_sandbox_id=stopped)))
    out["RemovePodSandbox(NOTREADY pod)"] = _code(lambda: rt.RemovePodSandbox(
        pb.RemovePodSandboxRequest(pod_sandbox_id=stopped)))
    out["RemovePodSandbox(removed pod)"] = _code(lambda: rt.RemovePodSandbox(
        pb.RemovePodSandboxRequest(pod_sandbox_id=stopped)))
    out["ContainerStatus(of removed pod)"] = _code(lambda: rt.ContainerStatus(
        pb.ContainerStatusRequest(container_id=in_stopped)))

    # last: what changes the running pod
    out["RemoveContainer(running)"] = _code(lambda: rt.RemoveContainer(
        pb.RemoveContainerRequest(container_id=running)))
    out["ContainerStatus(after RemoveContainer(running))"] = _code(
        lambda: rt.ContainerStatus(pb.ContainerStatusRequest(container_id=running)))
    out["RemoveContainer(removed)"] = _code(lambda: rt.RemoveContainer(
        pb.RemoveContainerRequest(container_id=running)))
    out["RemovePodSandbox(READY pod)"] = _code(lambda: rt.RemovePodSandbox(
        pb.RemovePodSandboxRequest(pod_sandbox_id=sid)))
    out["PodSandboxStatus(after RemovePodSandbox(READY))"] = _code(
        lambda: rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid)))
    for what, cid in (("created", created), ("exited", exited)):
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    # every pod gone before the next daemon's turn (they share the test network's leases),
    # also one a request above made where it was expected to fail
    for s in rt.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s.id))
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=s.id))
    return out


@pytest.mark.integration
@needs_containerd
def test_error_codes_match_containerd_2_3_4(containerd234, ctrd_side, registry,  # noqa: F811
                                            tmp_root):
    image = registry.ref("busybox")
    ref = _matrix(containerd234, image, registry.address,
                  os.path.join(str(containerd234.d.base), "logs"))
    got = _matrix(ctrd_side, image, registry.address, str(tmp_root / "logs"))
    if os.environ.get("CTRD_ERRCODES_DUMP"):
        with open(os.environ["CTRD_ERRCODES_DUMP"], "w") as f:
            json.dump({k: {"containerd": ref[k], "ctrd": got.get(k)} for k in ref}, f,
                      indent=1)
    problems = []
    for case, (code, msg) in ref.items():
        gcode, gmsg = got[case]
        if case in CTRD_OWN:
            want, why = CTRD_OWN[case]
            if gcode != want:
                problems.append(f"{case}: ctrd {gcode} ({gmsg!r}), want its own {want}: {why}")
            if code == want:
                problems.append(f"{case}: containerd now answers {code} too: drop the exception")
            continue
        if gcode != code:
            problems.append(f"{case}: containerd {code} ({msg!r}), ctrd {gcode} ({gmsg!r})")
            continue
        words = KEYWORDS.get(case, ()) + (("not found",) if code == "NOT_FOUND" else ())
        for word in words:
            if word.lower() not in msg.lower():
                problems.append(f"{case}: key word {word!r} not in containerd's {msg!r}")
            if word.lower() not in gmsg.lower():
                problems.append(f"{case}: key word {word!r} not in ctrd's {gmsg!r} "
                                f"(containerd: {msg!r})")
    assert not problems, "\n".join(problems)


def test_lookup_by_prefix_answers_as_containerds_truncindex():
    """A unique prefix finds; no match: NotFound; an empty id or a prefix of several ids:
    Unknown (containerd's "prefix can't be empty", "Multiple IDs found with provided
    prefix"), which the kubelet must not take for "gone"."""
    from ctrd import errdefs
    from ctrd.cri.store import _lookup

    table = {"abc1": 1, "abc2": 2, "def": 3}
    assert _lookup(table, "abc1", "container") == 1
    assert _lookup(table, "d", "container") == 3
    with pytest.raises(errdefs.NotFound, match="not found"):
        _lookup(table, "x", "container")
    with pytest.raises(errdefs.Unknown, match="Multiple IDs found with provided prefix: abc"):
        _lookup(table, "abc", "container")
    e = pytest.raises(errdefs.Unknown, _lookup, table, "", "sandbox").value
    assert errdefs.to_status(e) == (errdefs.UNKNOWN, "an error occurred when try to find "
                                                     'sandbox "": prefix can\'t be empty')


def test_long_status_messages_keep_their_kind():
    """A message over the trailer bound is cut in the middle: its ": not found" end stays,
    so a client's FromGRPC still reads the kind."""
    from ctrd import errdefs
    from ctrd.services.grpcutil import MAX_MESSAGE, bounded

    msg = str(errdefs.NotFound("find container " + "a" * 5000))
    cut = bounded(msg)
    assert len(cut) <= MAX_MESSAGE and cut.endswith('a: not found') and "(truncated)" in cut
    assert isinstance(errdefs.from_status(errdefs.NOT_FOUND, cut), errdefs.NotFound)
    assert bounded("short") == "short"
