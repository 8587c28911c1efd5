"""The stop signal (Kubernetes 1.33+ ``ContainerConfig.stop_signal``, the image config's
``StopSignal``): StopContainer sends it first and SIGKILL after the timeout;
ContainerStatus.stop_signal reports it. Each container's shell traps signals and exits with
a code that names the one it got, so the exit code shows which signal arrived.
"""

from __future__ import annotations

import grpc
import pytest

from conftest import ctr
from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

# exit 41 on USR1, 42 on USR2, 43 on TERM, 44 on RTMIN+1 (35), 45 on HUP; `wait` returns
# at once when a trapped signal arrives (a foreground sleep would delay the trap)
TRAPS = ('trap "exit 41" USR1; trap "exit 42" USR2; trap "exit 43" TERM; '
         'trap "exit 44" 35; trap "exit 45" HUP; ')
SCRIPT = TRAPS + "echo ready > /tmp/ready; sleep 1000 & wait"
GRACE = 60  # seconds StopContainer waits before SIGKILL; the traps answer at once


def _pull(cri, registry, name: str) -> str:  # noqa: F811
    ref = registry.ref(name)
    r = ctr(cri.daemon.address, "-n", "k8s.io", "images", "pull", "--plain-http", ref)
    assert r.returncode == 0, r.stderr
    return ref


def _start(cri, sid, pconf, name: str, **kw) -> str:  # noqa: F811
    cid = cri.create(sid, pconf, name, ["sh", "-c", SCRIPT], **kw)
    r = cri.exec(cid, ["sh", "-c", "while [ ! -e /tmp/ready ]; do sleep 0.05; done"])
    assert r.exit_code == 0, r
    return cid


def _stop(cri, cid: str, timeout: int = GRACE):  # noqa: F811
    cri.rt.StopContainer(cri.pb.StopContainerRequest(container_id=cid, timeout=timeout))
    cs = cri.status(cid)
    assert cs.state == cri.pb.CONTAINER_EXITED, cs
    return cs


def test_stop_signal_from_config_image_and_default(cri, registry):  # noqa: F811
    pb = cri.pb
    stopsig = pb.ImageSpec(image=_pull(cri, registry, "busybox-stopsig"))
    sid, pconf = cri.run_pod("stopsig")
    cases = [
        # (name, create kwargs, reported signal, exit code)
        ("default", {}, pb.SIGTERM, 43),
        ("config", dict(stop_signal=pb.SIGUSR2), pb.SIGUSR2, 42),
        ("rtmin", dict(stop_signal=pb.SIGRTMINPLUS1), pb.SIGRTMINPLUS1, 44),
        ("image", dict(image=stopsig), pb.SIGUSR1, 41),
        # the request's signal wins over the image's
        ("both", dict(image=stopsig, stop_signal=pb.SIGHUP), pb.SIGHUP, 45),
    ]
    started = {name: _start(cri, sid, pconf, name, **kw) for name, kw, _, _ in cases}
    for name, _, signal, code in cases:
        cid = started[name]
        assert cri.status(cid).stop_signal == signal, name
        cs = _stop(cri, cid)
        assert (cs.exit_code, cs.reason) == (code, "Error"), (name, cs)
        assert cs.stop_signal == signal, name
    # created only: the status already says which signal a stop will send
    created = cri.create(sid, pconf, "created", ["true"], start=False, image=stopsig)
    assert cri.status(created).stop_signal == pb.SIGUSR1
    cri.remove_pod(sid)


def test_sigkill_after_the_timeout(cri):  # noqa: F811
    """A process that ignores its stop signal is killed once the timeout is over."""
    pb = cri.pb
    sid, pconf = cri.run_pod("ignores")
    cid = cri.create(sid, pconf, "c", ["sh", "-c", 'trap "" USR1; sleep 1000 & wait'],
                     stop_signal=pb.SIGUSR1)
    cs = _stop(cri, cid, timeout=1)
    assert cs.exit_code == 137, cs
    cri.remove_pod(sid)


def test_stop_signal_survives_a_restart(cri):  # noqa: F811
    """A restarted ctrd (kill -9) still knows each container's stop signal and user."""
    pb = cri.pb
    sid, pconf = cri.run_pod("restart")
    cid = _start(cri, sid, pconf, "c", stop_signal=pb.SIGUSR1)
    cri.restart()
    cs = cri.status(cid)
    assert cs.stop_signal == pb.SIGUSR1
    # the user ContainerStatus reports is kept with the container too
    assert (cs.user.linux.uid, cs.user.linux.gid, list(cs.user.linux.supplemental_groups)) \
        == (0, 0, [0])
    assert _stop(cri, cid).exit_code == 41
    cri.remove_pod(sid)


def test_unknown_stop_signal_refused(cri):  # noqa: F811
    pb = cri.pb
    sid, pconf = cri.run_pod("badsig")
    before = ctr(cri.daemon.address, "-n", "k8s.io", "snapshots", "ls").stdout
    for value in (99, len(pb.Signal.keys()), -1):
        with pytest.raises(grpc.RpcError) as e:
            cri.create(sid, pconf, "c", ["sleep", "1000"], stop_signal=value)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert "stop_signal" in e.value.details() and str(value) in e.value.details()
    assert cri.rt.ListContainers(pb.ListContainersRequest()).containers == []
    assert ctr(cri.daemon.address, "-n", "k8s.io", "snapshots", "ls").stdout == before
    # the name is free again
    cid = cri.create(sid, pconf, "c", ["sleep", "1000"], stop_signal=pb.SIGKILL)
    assert cri.status(cid).stop_signal == pb.SIGKILL
    assert _stop(cri, cid).exit_code == 137
    cri.remove_pod(sid)


def test_signal_names_and_numbers():
    """Every runtime.v1 Signal maps to a Linux signal and back; image spellings as moby's
    ParseSignal reads them; what a stop sends for names that are no signal."""
    import signal

    from ctrd.api.cri.runtime.v1 import api_pb2 as pb
    from ctrd.cri import stop_signal as ss
    from ctrd.errdefs import InvalidArgument

    assert list(ss.ENUM_NAMES) == [pb.Signal.Name(i) for i in range(len(pb.Signal.keys()))]
    for value in range(1, len(ss.ENUM_NAMES)):
        name = ss.from_enum(value)
        assert ss.parse(name) is not None, name
        assert ss.to_enum(name) == value, name
    assert ss.from_enum(pb.SIGRTMAXMINUS3) == "SIGRTMAX-3" and ss.parse("SIGRTMAX-3") == 61
    assert ss.parse("SIGRTMIN") == 34 and ss.parse("rtmin+15") == 49
    assert ss.parse("SIGRTMAX") == 64
    for spelling in ("SIGUSR1", "USR1", "usr1", "10"):
        assert ss.parse(spelling) == signal.SIGUSR1, spelling
        assert ss.to_enum(spelling) == pb.SIGUSR1, spelling
    assert ss.to_enum("SIGCLD") == pb.SIGCLD and ss.to_enum("17") == pb.SIGCHLD
    for bad in ("SIGNOPE", "0", "65", "-1", "", "SIG"):
        assert ss.parse(bad) is None, bad
        assert ss.number(bad) == signal.SIGTERM, bad
        assert ss.to_enum(bad) == pb.SIGTERM, bad
    assert ss.from_enum(pb.RUNTIME_DEFAULT) == ""
    with pytest.raises(InvalidArgument, match="stop_signal"):
        ss.from_enum(len(ss.ENUM_NAMES))
