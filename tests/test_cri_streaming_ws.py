"""The CRI streaming server's WebSocket side against hostile and odd clients, on a real ctrd
(the kubelet streaming package's wsstream rules as containerd 2.3.4 embeds it):

- an unknown subprotocol: 403 naming what is supported; a port-forward does not speak v5;
- a message over the size limit (1009), a bad v5 close signal (1002), a frame that breaks
  the WebSocket framing (1002): the connection is failed, the session's process is gone;
- messages for channels that do not exist or are not inputs, bad base64: dropped, the
  session goes on;
- resize garbage (not JSON, negative or too big sizes, megabytes of it): resizing stops, stdin
  still flows;
- port-forward over WebSocket: data+error channel pairs, the 2-byte port prefix, odd channels
  dropped.

After each, the daemon serves the next session.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures
from support.cri_streaming import (PodServers, channel, exit_status, netns_of, pod,  # noqa: F401
                                   ws_url)

pytestmark = pytest.mark.integration


def exec_url(pod, cmd, stdin=True, tty=False) -> str:
    return pod.cri.rt.Exec(pod.pb.ExecRequest(
        container_id=pod.ids["main"], cmd=cmd, stdin=stdin, stdout=True, stderr=not tty,
        tty=tty)).url


async def session(url: str, sub: str, send: list, timeout: float = 30):
    """(messages [(channel, data)], close code received) after sending ``send`` (bytes /
    str messages, ("raw", bytes) written on the socket unframed, ("sleep", s))."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    got: list[tuple[int, bytes]] = []
    async with connect(ws_url(url), subprotocols=[sub], max_size=None) as ws:
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
        try:
            for m in send:
                if isinstance(m, tuple) and m[0] == "sleep":
                    await asyncio.sleep(m[1])
                elif isinstance(m, tuple) and m[0] == "raw":
                    ws.transport.write(m[1])
                else:
                    await ws.send(m)
        except ConnectionClosed:
            pass
        await asyncio.wait_for(r, timeout)
        code = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None
    return got, code


def still_serving(pod) -> None:
    got, _ = asyncio.run(session(exec_url(pod, ["echo", "alive"], stdin=False),
                                 "v5.channel.k8s.io", []))
    assert channel(got, 1) == b"alive\n"
    assert json.loads(channel(got, 3))["status"] == "Success"


def no_exec_left(pod, marker: str) -> None:
    """No process of the container still runs ``marker`` (the failed session's exec)."""
    deadline = time.monotonic() + 20
    while True:
        ps = pod.cri.sh(pod.ids["main"], "ps -o args")
        if marker not in ps.replace("ps -o args", ""):
            return
        assert time.monotonic() < deadline, ps
        time.sleep(0.1)


def test_unknown_subprotocol_is_refused_with_403(pod):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def try_(url, subs):
        with pytest.raises(InvalidStatus) as ei:
            async with connect(ws_url(url), subprotocols=subs):
                pass
        return ei.value.response

    resp = asyncio.run(try_(exec_url(pod, ["true"]), ["v9.channel.k8s.io", "bogus"]))
    assert resp.status_code == 403
    assert b"requested protocol(s) are not supported" in resp.body
    assert b"v4.channel.k8s.io" in resp.body
    # port-forward speaks v4 (and none), not the remote command's v5
    pf = pod.cri.rt.PortForward(pod.pb.PortForwardRequest(pod_sandbox_id=pod.sid,
                                                          port=[80])).url
    resp = asyncio.run(try_(pf, ["v5.channel.k8s.io"]))
    assert resp.status_code == 403
    still_serving(pod)


@pytest.mark.parametrize("bad", [b"\xff", b"\xff\x00\x01", b"\xff\x05", b"\xff\xff"],
                         ids=["no-channel", "two-channels", "channel-5", "channel-255"])
def test_bad_v5_close_signal_fails_the_connection(pod, bad):
    url = exec_url(pod, ["sh", "-c", "cat; sleep 3601"])
    got, code = asyncio.run(session(url, "v5.channel.k8s.io", [b"\x00in", bad]))
    assert code == 1002
    assert not channel(got, 3)  # no status: the connection was failed, not finished
    no_exec_left(pod, "sleep 3601")
    still_serving(pod)


def test_oversized_message_fails_the_connection(pod):
    url = exec_url(pod, ["sh", "-c", "cat >/dev/null; sleep 3602"])
    got, code = asyncio.run(session(url, "v5.channel.k8s.io",
                                    [b"\x00" + b"x" * (5 << 20)]))
    assert code == 1009  # message too big
    no_exec_left(pod, "sleep 3602")
    still_serving(pod)


def test_broken_framing_fails_the_connection(pod):
    url = exec_url(pod, ["sh", "-c", "cat; sleep 3603"])
    # an unmasked client frame: a protocol error (RFC 6455 5.1)
    got, code = asyncio.run(session(url, "v5.channel.k8s.io", [("raw", b"\x82\x03\x00ab")]))
    assert code == 1002
    no_exec_left(pod, "sleep 3603")
    still_serving(pod)


@pytest.mark.parametrize("sub", ["v5.channel.k8s.io", "v4.channel.k8s.io",
                                 "base64.channel.k8s.io"])
def test_odd_channels_and_bad_base64_are_dropped(pod, sub):
    b64 = "base64" in sub
    if b64:
        send = ["9AAAA", "3eA==", "1eA==", "0!!!not base64!!!", "0aGVsbG8K",
                "\x00x", "/YQ=="]  # channel 9, error, stdout, garbage, "hello\n", ...
    else:
        send = [b"\x07seven", b"\x03err", b"\x01out", b"\x02err", b"\x04resize", b"\xfe",
                b"", b"\x00hello\n"]
    if sub.startswith("v5"):
        send.append(b"\xff\x00")
        cmd = ["sh", "-c", "cat; echo done"]
    else:
        cmd = ["sh", "-c", "head -n1; echo done"]  # no half-close before v5
    got, code = asyncio.run(session(exec_url(pod, cmd), sub, send))
    assert channel(got, 1) == b"hello\ndone\n", got
    assert not channel(got, 2)
    if sub.startswith(("v4", "v5")):
        assert json.loads(channel(got, 3))["status"] == "Success"
    else:
        assert channel(got, 3) == b""
    assert code == 1000


def test_resize_garbage_stops_resizing_stdin_still_flows(pod):
    url = exec_url(pod, ["sh"], tty=True)
    junk = [b"\x04" + b"{" * 70_000] * 20  # 1.4 MB that never becomes a value
    send = [b'\x04{"Width":120,"Height":40}', ("sleep", 0.3),
            b'\x04{"Width":-1,"Height":99}', b'\x04{"Width":77,"Height":22}', *junk,
            ("sleep", 0.3), b"\x00/bin/busybox stty size; exit 3\n"]
    got, code = asyncio.run(session(url, "v5.channel.k8s.io", send))
    out = channel(got, 1)
    assert b"40 120" in out, out  # the last size before the garbage
    assert exit_status(json.loads(channel(got, 3))) == 3


@pytest.mark.parametrize("garbage", [b"not json", b'{"Width":70000,"Height":1}', b"[1,2]",
                                     b'{"Width":"80","Height":24}', b'{"Width":1.5}'])
def test_resize_values_refused_as_the_kubelet_does(pod, garbage):
    url = exec_url(pod, ["sh"], tty=True)
    send = [b'\x04{"width":91,"height":31}', ("sleep", 0.3), b"\x04" + garbage,
            b'\x04{"Width":50,"Height":10}', ("sleep", 0.3),
            b"\x00/bin/busybox stty size; exit\n"]
    got, _ = asyncio.run(session(url, "v5.channel.k8s.io", send))
    out = channel(got, 1)
    assert b"31 91" in out, out  # Go's json matches names case-insensitively
    assert b"10 50" not in out
    assert json.loads(channel(got, 3))["status"] == "Success"


@pytest.mark.parametrize("sub", ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
def test_websocket_port_forward_pairs_and_odd_channels(pod, sub):
    servers = PodServers(netns_of(pod.cri, pod.sid), [7101, 7102])
    try:
        url = pod.cri.rt.PortForward(pod.pb.PortForwardRequest(
            pod_sandbox_id=pod.sid, port=[7101, 7102])).url
        if "base64" in sub:
            import base64

            def m(ch, data):
                return chr(ord("0") + ch) + base64.b64encode(data).decode()
        else:
            def m(ch, data):
                return bytes([ch]) + data
        send = [m(1, b"to-error"), m(3, b"to-error"), m(9, b"nine"), m(0, b"abc"),
                m(2, b"xyz"), ("sleep", 1.5)]
        got = asyncio.run(_pf(url, sub, send))
    finally:
        servers.close()
    firsts = {}
    for c, d in got:
        firsts.setdefault(c, d)
    assert firsts == {0: (7101).to_bytes(2, "little"), 1: (7101).to_bytes(2, "little"),
                      2: (7102).to_bytes(2, "little"), 3: (7102).to_bytes(2, "little")}
    assert channel(got, 0)[2:] == b"7101:ABC"
    assert channel(got, 2)[2:] == b"7102:XYZ"
    assert channel(got, 1)[2:] == b"" and channel(got, 3)[2:] == b""
    still_serving(pod)


async def _pf(url: str, sub: str, send: list):
    """Port-forward messages received while ``send`` is sent (v4 has no half-close: the
    client closes after the sleeps)."""
    from websockets.asyncio.client import connect

    got = []
    async with connect(ws_url(url), subprotocols=[sub]) as ws:
        async def reader():
            import base64

            async for msg in ws:
                if isinstance(msg, str):
                    got.append((ord(msg[0]) - ord("0"), base64.b64decode(msg[1:])))
                else:
                    got.append((msg[0], bytes(msg[1:])))

        r = asyncio.ensure_future(reader())
        for x in send:
            if isinstance(x, tuple):
                await asyncio.sleep(x[1])
            else:
                await ws.send(x)
        r.cancel()
    return got
