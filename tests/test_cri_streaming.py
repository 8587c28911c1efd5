"""CRI streaming end to end: a real ctrd with its CRI plugin, real pods (CNI bridge, runc),
and real protocol clients on the URLs Exec/Attach/PortForward hand out:

- ``kubectl`` 1.32 (client-go: WebSocket v5.channel.k8s.io, falling back to SPDY/3.1 with
  v4.channel.k8s.io; SPDY portforward.k8s.io) through :mod:`kubeapi`, a stand-in API server
  that splices kubectl's upgraded connection onto the streaming URL as the kubelet proxies it;
- the ``websockets`` client library speaking v4/v5.channel.k8s.io and the port-forward
  channel protocol;
- ``spdy_client`` (tests/): ctrd's own SPDY module on the client side, for what kubectl
  does not do (v1-v3 protocols, hostile frames).

Plus GetContainerEvents, and a leak check: 100 abandoned sessions leave no fd, exec process
or thread behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures
from support.cri_streaming import (Pod, PodServers, channel, exit_status, netns_of,  # noqa: F401
                                   pod, ws_url)
from support.poll import wait_until

pytestmark = pytest.mark.integration

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl is not installed")


# --- kubectl ---------------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("websockets", [True, False], ids=["websocket", "spdy"])
def test_kubectl_exec_output_and_exit_code(pod, websockets):
    api = pod.kube()
    r = api.kubectl("exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                    websockets=websockets)
    assert r.stdout == b"out\n"
    assert b"err\n" in r.stderr
    assert r.returncode == 3, r.stderr
    r = api.kubectl("exec", "web", "--", "echo", "hello", websockets=websockets)
    assert (r.returncode, r.stdout) == (0, b"hello\n"), r.stderr


@needs_kubectl
@pytest.mark.parametrize("websockets", [True, False], ids=["websocket", "spdy"])
def test_kubectl_exec_stdin_to_eof(pod, websockets):
    api = pod.kube()
    data = os.urandom(300_000).hex().encode()  # 600 KB: several flow-control windows
    r = api.kubectl("exec", "-i", "web", "--", "sh", "-c", "cat; echo END",
                    websockets=websockets, input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data + b"END\n"


# --- helpers ----------------------------------------------------------------------------------


async def ws_session(url: str, subprotocol: str, send: list = (), until_closed: bool = True,
                     timeout: float = 30):
    """Messages received on a WebSocket as [(channel, data)], after sending ``send`` (bytes
    messages, or ("sleep", s))."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    got: list[tuple[int, bytes]] = []
    async with connect(ws_url(url), subprotocols=[subprotocol], max_size=None,
                       open_timeout=timeout) as ws:
        assert ws.subprotocol == subprotocol

        async def reader():
            try:
                async for msg in ws:
                    if isinstance(msg, str):
                        import base64
                        got.append((ord(msg[0]) - ord("0"), base64.b64decode(msg[1:])))
                    else:
                        got.append((msg[0], bytes(msg[1:])))
            except ConnectionClosed:
                pass

        r = asyncio.ensure_future(reader())
        for m in send:
            if isinstance(m, tuple):
                await asyncio.sleep(m[1])
            else:
                await ws.send(m)
        await asyncio.wait_for(r, timeout)
    return got


# --- WebSocket clients (the websockets library) -------------------------------------------------

@pytest.mark.parametrize("sub", ["v5.channel.k8s.io", "v4.channel.k8s.io"])
def test_websocket_exec_stdin_stdout_stderr_status(pod, sub):
    pb = pod.pb
    url = pod.cri.rt.Exec(pb.ExecRequest(
        container_id=pod.ids["main"], cmd=["sh", "-c", "cat; echo err >&2; exit 7"],
        stdin=True, stdout=True, stderr=True)).url
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    send = [b"\x00hello ", b"\x00world"]
    if sub.startswith("v5"):
        send.append(b"\xff\x00")  # v5: close stdin
    got = asyncio.run(ws_session(url, sub, send, timeout=30 if sub.startswith("v5") else 5)
                      ) if sub.startswith("v5") else None
    if got is None:
        # v4 cannot half-close stdin: use a command that does not read it
        url = pod.cri.rt.Exec(pb.ExecRequest(
            container_id=pod.ids["main"], cmd=["sh", "-c", "echo hello world; echo err >&2; "
                                                           "exit 7"],
            stdin=True, stdout=True, stderr=True)).url
        got = asyncio.run(ws_session(url, sub))
    assert got[0] == (1, b"")  # the empty message on the lowest writable channel comes first
    assert channel(got, 1).replace(b"\n", b"") == b"hello world"
    assert channel(got, 2) == b"err\n"
    status = json.loads(channel(got, 3))
    assert exit_status(status) == 7
    assert status["message"].startswith("command terminated with non-zero exit code")


def test_websocket_exec_tty_resize(pod):
    pb = pod.pb
    url = pod.cri.rt.Exec(pb.ExecRequest(container_id=pod.ids["main"], cmd=["sh"], tty=True,
                                         stdin=True, stdout=True)).url
    got = asyncio.run(ws_session(url, "v5.channel.k8s.io", [
        b'\x04{"Width":123,"Height":45}', ("sleep", 0.5),
        b"\x00/bin/busybox stty size; tty; exit 4\n"]))
    out = channel(got, 1)
    assert b"45 123" in out, out
    assert b"/dev/pts/" in out
    assert not channel(got, 2)
    assert exit_status(json.loads(channel(got, 3))) == 4


def test_websocket_base64_protocol(pod):
    url = pod.cri.rt.Exec(pod.pb.ExecRequest(container_id=pod.ids["main"],
                                             cmd=["echo", "b64"], stdout=True)).url
    got = asyncio.run(ws_session(url, "base64.channel.k8s.io"))
    assert channel(got, 1) == b"b64\n"
    assert channel(got, 3) == b""  # the pre-v4 protocols report only failures, as text


# --- SPDY with our own client: the older protocol versions -------------------------------------

@pytest.mark.parametrize("proto", ["v4.channel.k8s.io", "v3.channel.k8s.io",
                                   "v2.channel.k8s.io", "channel.k8s.io"])
def test_spdy_exec_protocol_versions(pod, proto):
    from spdy_client import SpdyClient

    pb = pod.pb
    url = pod.cri.rt.Exec(pb.ExecRequest(
        container_id=pod.ids["main"], cmd=["sh", "-c", "cat; echo e >&2; exit 5"],
        stdin=True, stdout=True, stderr=True)).url

    async def run():
        c = await SpdyClient.connect(url, [proto, "v9.channel.k8s.io"])
        assert c.status == 101 and c.protocol == proto
        err = c.open({"streamtype": "error"})
        sin = c.open({"streamtype": "stdin"})
        out = c.open({"streamtype": "stdout"})
        e2 = c.open({"streamtype": "stderr"})
        await c.wait_replied(sin)
        if proto != "channel.k8s.io":
            await c.write(sin, b"x" * 200_000, fin=True)
        else:
            await c.write(sin, b"", fin=True)
        res = (await c.read_all(out), await c.read_all(e2), await c.read_all(err))
        await c.close()
        return res

    out, errout, status = asyncio.run(run())
    assert out == (b"x" * 200_000 if proto != "channel.k8s.io" else b"")
    assert errout == b"e\n"
    if proto == "v4.channel.k8s.io":
        assert exit_status(json.loads(status)) == 5
    else:
        assert status.startswith(b"command terminated with non-zero exit code"), status


def test_spdy_exec_tty_resize(pod):
    from spdy_client import SpdyClient

    url = pod.cri.rt.Exec(pod.pb.ExecRequest(container_id=pod.ids["main"], cmd=["sh"],
                                             tty=True, stdin=True, stdout=True)).url

    async def run():
        c = await SpdyClient.connect(url, ["v4.channel.k8s.io"])
        err = c.open({"streamtype": "error"})
        sin = c.open({"streamtype": "stdin"})
        out = c.open({"streamtype": "stdout"})
        rs = c.open({"streamtype": "resize"})
        await c.wait_replied(rs)
        await c.write(rs, b'{"Width":90,"Height":30}{"Width":77,')
        await c.write(rs, b'"Height":22}\n')
        await asyncio.sleep(0.5)
        await c.write(sin, b"/bin/busybox stty size; exit\n")
        res = await c.read_all(out), await c.read_all(err)
        await c.close()
        return res

    out, status = asyncio.run(run())
    assert b"22 77" in out, out
    assert json.loads(status)["status"] == "Success"


# --- attach -------------------------------------------------------------------------------------

CHAT = ("echo started; while read l; do echo got:$l; echo warn:$l >&2; done; echo bye")


@needs_kubectl
@pytest.mark.parametrize("websockets", [True, False], ids=["websocket", "spdy"])
def test_kubectl_attach_stdin_once(cri, websockets):
    p = Pod(cri, "chat")
    try:
        cid = p.add("chat", ["sh", "-c", CHAT], stdin=True, stdin_once=True)
        api = p.kube()
        r = api.kubectl("attach", "-i", "chat", "-c", "chat", websockets=websockets,
                        input=b"hello\nworld\n")
        assert r.returncode == 0, r.stderr
        assert b"got:hello\ngot:world\n" in r.stdout, (r.stdout, r.stderr)
        assert b"bye\n" in r.stdout
        assert b"warn:hello" in r.stderr
        assert b"started" not in r.stdout  # attach shows output from the attach on
        cs = cri.wait_exited(cid)
        assert (cs.state, cs.exit_code) == (cri.pb.CONTAINER_EXITED, 0)
    finally:
        p.close()


def test_attach_without_stdin_once_keeps_container_stdin_open(cri):
    p = Pod(cri, "keep")
    try:
        cid = p.add("keep", ["sh", "-c", CHAT], stdin=True)
        pb = cri.pb
        for word in (b"one", b"two"):
            url = cri.rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True,
                                                 stderr=True)).url
            got = _attach_once(url, word)
            assert b"got:" + word in channel(got, 1), got
        assert cri.status(cid).state == pb.CONTAINER_RUNNING  # a detach is no EOF
    finally:
        p.close()


def _attach_once(url: str, word: bytes):
    """Attach, send a line, see its echo, go away (the container keeps running)."""
    async def run():
        from websockets.asyncio.client import connect

        got = []
        async with connect(ws_url(url), subprotocols=["v5.channel.k8s.io"]) as ws:
            await ws.send(b"\x00" + word + b"\n")
            deadline = time.monotonic() + 20
            while b"got:" + word not in b"".join(d for c, d in got if c == 1):
                assert time.monotonic() < deadline, got
                msg = await asyncio.wait_for(ws.recv(), 20)
                got.append((msg[0], bytes(msg[1:])))
        return got
    return asyncio.run(run())


# --- port-forward -------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("websockets", [True, False], ids=["default", "spdy"])
def test_kubectl_port_forward_several_ports(pod, websockets):
    servers = PodServers(netns_of(pod.cri, pod.sid), [8080, 9090])
    api = pod.kube()
    proc = subprocess.Popen(api.kubectl_argv("port-forward", "web", ":8080", ":9090"),
                            env=api.kubectl_env(websockets), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        local = {}
        while len(local) < 2:
            line = proc.stdout.readline().decode()
            assert line, proc.stderr.read()
            if line.startswith("Forwarding from 127.0.0.1:"):
                lp, rp = line.split("127.0.0.1:")[1].split(" -> ")
                local[int(rp)] = int(lp)
        for rport, lport in local.items():
            for i in range(3):  # several connections per port
                with socket.create_connection(("127.0.0.1", lport), timeout=20) as c:
                    c.sendall(b"ping%d" % i)
                    c.shutdown(socket.SHUT_WR)
                    got = b""
                    while True:
                        d = c.recv(65536)
                        if not d:
                            break
                        got += d
                assert got == f"{rport}:PING{i}".encode()
    finally:
        proc.terminate()
        proc.wait(10)
        servers.close()


def test_websocket_port_forward(pod):
    servers = PodServers(netns_of(pod.cri, pod.sid), [7001, 7002])
    try:
        url = pod.cri.rt.PortForward(pod.pb.PortForwardRequest(
            pod_sandbox_id=pod.sid, port=[7001, 7002, 7003])).url
        got = _ws_port_forward(url)
        # the first message of every channel is its port, little endian
        firsts = {}
        for c, d in got:
            firsts.setdefault(c, d)
        assert firsts == {0: b"\x59\x1b", 1: b"\x59\x1b", 2: b"\x5a\x1b", 3: b"\x5a\x1b",
                          4: b"\x5b\x1b", 5: b"\x5b\x1b"}
        data = {c: b"".join(d for cc, d in got if cc == c)[2:] for c in range(6)}
        assert data[0].startswith(b"7001:ABC")
        assert data[2].startswith(b"7002:XYZ")
        assert b"failed to connect to localhost:7003" in data[5], data[5]
        assert b"connection refused" in data[5]
    finally:
        servers.close()


def _ws_port_forward(url: str):
    """Send on ports 0 and 1's data channels, read for a while (a v4 WebSocket has no
    half-close), then close."""
    async def run():
        from websockets.asyncio.client import connect

        got = []
        async with connect(ws_url(url), subprotocols=["v4.channel.k8s.io"]) as ws:
            await ws.send(b"\x00abc")
            await ws.send(b"\x02xyz")
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                got.append((msg[0], bytes(msg[1:])))
        return got
    return asyncio.run(run())


# --- the URL rules and hostile clients ------------------------------------------------------------

def test_streaming_requests_validated_and_tokens_single_use(pod):
    import grpc

    from spdy_client import SpdyClient

    pb, rt = pod.pb, pod.cri.rt
    cid = pod.ids["main"]
    bad = [
        (pb.ExecRequest(container_id=cid, cmd=["true"], tty=True, stdout=True, stderr=True),
         grpc.StatusCode.INVALID_ARGUMENT, "tty and stderr"),
        (pb.ExecRequest(container_id=cid, cmd=["true"]), grpc.StatusCode.INVALID_ARGUMENT,
         "one of stdin, stdout, or stderr"),
        (pb.ExecRequest(container_id="nope", cmd=["true"], stdout=True),
         grpc.StatusCode.NOT_FOUND, ""),
    ]
    for req, code, text in bad:
        with pytest.raises(grpc.RpcError) as e:
            rt.Exec(req)
        assert e.value.code() == code and text in e.value.details(), e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        rt.PortForward(pb.PortForwardRequest(pod_sandbox_id="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    stopped = pod.add("done", ["true"])
    pod.cri.wait_exited(stopped)
    with pytest.raises(grpc.RpcError) as e:
        rt.Attach(pb.AttachRequest(container_id=stopped, stdout=True))
    assert e.value.code() == grpc.StatusCode.UNKNOWN  # containerd 2.3.4's: a plain error
    assert "CONTAINER_EXITED" in e.value.details()

    url = rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url

    async def http(u, protocols, upgrade="SPDY/3.1"):
        c = await SpdyClient.connect(u, protocols, upgrade)
        if c.status == 101:
            await c.close()
        return c

    async def run():
        # an unknown token: 404; the token under another method's path: 404 and used up
        # (the kubelet's cache consumes before it checks the kind)
        assert (await http(url + "x", ["v4.channel.k8s.io"])).status == 404
        wrong = url.replace("/exec/", "/attach/")
        assert (await http(wrong, ["v4.channel.k8s.io"])).status == 404
        assert (await http(url, ["v4.channel.k8s.io"])).status == 404
        # no protocol in common: 403 and the accepted list; the token is used up
        u1 = rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
        c = await http(u1, ["v99.channel.k8s.io"])
        assert c.status == 403 and b"unable to negotiate protocol" in c.body
        assert (await http(u1, ["v4.channel.k8s.io"])).status == 404
        # not an upgrade: 400
        u2 = rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
        c = await http(u2, ["v4.channel.k8s.io"], upgrade="")
        assert c.status == 400 and b"missing upgrade headers" in c.body
        # garbage instead of SPDY frames: the connection is closed, the daemon serves on
        u3 = rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
        c = await SpdyClient.connect(u3, ["v4.channel.k8s.io"])
        c.send_raw(b"\x80\x07\x00\x01" + b"\xff" * 60)  # SPDY/7 control frame
        await asyncio.wait_for(c.closed.wait(), 10)
        await c.close()

    asyncio.run(run())
    assert pod.cri.exec(cid, ["echo", "alive"]).stdout == b"alive\n"


def test_too_many_in_flight_urls_are_resource_exhausted(pod):
    """The kubelet's request cache (in containerd) holds at most 1000 unused URLs; one more
    is RESOURCE_EXHAUSTED with its own message, for every kind of URL, until a token is used.
    Real tokens, all 1000: they cost a gRPC call each."""
    import grpc

    from spdy_client import SpdyClient

    pb, rt = pod.pb, pod.cri.rt
    cid = pod.ids["main"]
    exec_req = pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)
    urls = [rt.Exec(exec_req).url for _ in range(999)]
    urls.append(rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.sid, port=[80])).url)
    assert len(set(urls)) == 1000
    for call in (lambda: rt.Exec(exec_req),
                 lambda: rt.Attach(pb.AttachRequest(container_id=cid, stdout=True)),
                 lambda: rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.sid))):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.details() == "maximum number of in-flight requests exceeded"
    # validation still comes first: a bad request is refused for what is wrong with it
    with pytest.raises(grpc.RpcError) as e:
        rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def use(u):  # consumes the token (no protocol in common: 403)
        c = await SpdyClient.connect(u, ["v99.channel.k8s.io"])
        assert c.status == 403

    # a used token makes room for exactly one more; the daemon serves on
    asyncio.run(use(urls[0]))
    url = rt.Exec(exec_req).url
    assert url not in urls
    with pytest.raises(grpc.RpcError) as e:
        rt.Exec(exec_req)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert pod.cri.exec(cid, ["echo", "alive"]).stdout == b"alive\n"
    assert rt.Version(pb.VersionRequest()).runtime_name


def test_get_container_events_in_order(cri):
    pb = cri.pb
    got = []
    call = cri.rt.GetContainerEvents(pb.GetEventsRequest())
    ready = threading.Event()

    def collect():
        ready.set()
        try:
            for ev in call:
                got.append(ev)
        except Exception:  # noqa: BLE001 - cancelled at the end
            pass

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    ready.wait()
    time.sleep(0.5)  # the stream is open on the server
    sid, pconf = cri.run_pod("ev")
    cid = cri.create(sid, pconf, "c", ["sh", "-c", "sleep 0.5"])
    cri.wait_exited(cid)
    cri.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    wait_until(lambda: len([e for e in got if e.container_id == cid]) >= 4, 20)
    call.cancel()
    t.join(10)
    mine = [e for e in got if e.container_id == cid]
    assert [e.container_event_type for e in mine] == [
        pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT,
        pb.CONTAINER_DELETED_EVENT]
    assert [e.created_at for e in mine] == sorted(e.created_at for e in mine)
    assert all(e.pod_sandbox_status.id == sid for e in mine)
    assert mine[0].pod_sandbox_status.state == pb.SANDBOX_READY
    assert [s.state for s in mine[1].containers_statuses] == [pb.CONTAINER_RUNNING]
    stopped = mine[2].containers_statuses[0]
    assert (stopped.id, stopped.state, stopped.exit_code) == (cid, pb.CONTAINER_EXITED, 0)
    assert not mine[3].containers_statuses  # deleted: no longer listed


# --- leaks ---------------------------------------------------------------------------------------

def _daemon_counts(cri, cid: str) -> tuple[int, int, int]:
    from conftest import ctr

    pid = cri.daemon.proc.pid
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    r = ctr(cri.daemon.address, "-n", "k8s.io", "tasks", "ps", cid)
    assert r.returncode == 0, r.stderr
    procs = len([ln for ln in r.stdout.splitlines()[1:] if ln.strip()])
    return fds, threads, procs


async def _abandon(kind: str, url: str) -> None:
    """Open a session of ``kind`` on ``url``, get it going, vanish without a goodbye."""
    from websockets.asyncio.client import connect

    from spdy_client import SpdyClient

    if kind in ("ws-exec", "ws-attach", "ws-pf"):
        sub = "v4.channel.k8s.io" if kind == "ws-pf" else "v5.channel.k8s.io"
        ws = await connect(ws_url(url), subprotocols=[sub])
        if kind == "ws-pf":
            await ws.send(b"\x00hello")
        else:
            await ws.send(b"\x00line\n")
        await asyncio.wait_for(ws.recv(), 20)
        ws.transport.abort()
        return
    c = await SpdyClient.connect(url, ["v4.channel.k8s.io" if kind != "spdy-pf"
                                       else "portforward.k8s.io"])
    assert c.status == 101, c.body
    if kind == "spdy-exec":
        c.open({"streamtype": "error"})
        sin = c.open({"streamtype": "stdin"})
        out = c.open({"streamtype": "stdout"})
        c.open({"streamtype": "stderr"})
        await c.write(sin, b"some input\n")
        while not c.data.get(out):  # mid-stream: output is flowing
            await asyncio.sleep(0.02)
    elif kind == "spdy-pf":
        c.open({"streamtype": "error", "port": "7101", "requestid": "1"})
        d = c.open({"streamtype": "data", "port": "7101", "requestid": "1"})
        await c.write(d, b"abc")
        while not c.data.get(d):
            await asyncio.sleep(0.02)
    elif kind == "spdy-idle":
        c.open({"streamtype": "error"})  # never all the streams it asked for
    c.abort()


def test_abandoned_sessions_leak_nothing(cri):
    p = Pod(cri, "leak")
    servers = None
    try:
        cid = p.add("main", ["sh", "-c", "while read l; do echo $l; done; sleep 3600"],
                    stdin=True)
        servers = PodServers(netns_of(cri, p.sid), [7101])
        pb = cri.pb
        loop_cmd = ["sh", "-c", "while true; do echo tick; read x; done"]

        def url(kind: str) -> str:
            if kind in ("ws-exec", "spdy-exec", "spdy-idle", "token"):
                return cri.rt.Exec(pb.ExecRequest(container_id=cid, cmd=loop_cmd, stdin=True,
                                                  stdout=True, stderr=True)).url
            if kind == "ws-attach":
                return cri.rt.Attach(pb.AttachRequest(container_id=cid, stdin=True,
                                                      stdout=True, stderr=True)).url
            return cri.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=p.sid,
                                                            port=[7101])).url

        kinds = ["ws-exec", "spdy-exec", "ws-attach", "ws-pf", "spdy-pf", "spdy-idle",
                 "token"]

        def round_(n: int) -> None:
            batch = [kinds[i % len(kinds)] for i in range(n)]
            urls = [(k, url(k)) for k in batch]

            async def run():
                for i in range(0, len(urls), 10):
                    await asyncio.gather(*(_abandon(k, u) for k, u in urls[i:i + 10]
                                           if k != "token"))
            asyncio.run(run())

        def settled(base) -> tuple[int, int, int]:
            deadline = time.monotonic() + 60
            while True:
                now = _daemon_counts(cri, cid)
                if all(a <= b for a, b in zip(now, base)) or time.monotonic() > deadline:
                    return now
                time.sleep(0.5)

        # warm up with the same load: the streaming server starts, and the daemon's thread
        # pool grows to what this concurrency needs (it never shrinks: not a leak)
        round_(100)
        base = settled((10 ** 6, 10 ** 6, 1))
        round_(100)
        after = settled(base)
        assert after[0] <= base[0], f"fds: {base[0]} -> {after[0]}"
        # The default executor may still grow toward its cap (min(32, cpus + 4)) on a loaded
        # machine; a leak would be one thread per session (+100).
        grow = min(32, (os.cpu_count() or 1) + 4)
        assert after[1] <= base[1] + grow, f"threads: {base[1]} -> {after[1]}"
        assert after[2] == 1, f"exec processes left: {after[2] - 1}"
        state = cri.daemon.state / "io.containerd.grpc.v1.cri"
        assert not os.listdir(state / "exec") if (state / "exec").exists() else True
        assert cri.status(cid).state == pb.CONTAINER_RUNNING
    finally:
        if servers is not None:
            servers.close()
        p.close()
