"""CRI attach (and exec -i) as crictl 1.36, client-go's WebSocket and SPDY executors and our own
clients drive it, against a real ctrd: containerd 2.3.4's ContainerIO.Attach semantics.

- a running ``sh`` with stdin (no tty): a line written to the attach stream is run and its
  output comes back on the attach stdout -- with and without a log file (without one the
  daemon reads the container's output FIFOs, :mod:`ctrd.cri.streaming.attach_io`), several
  attaches in a row, also after a restart of ctrd;
- stdin EOF: detaches (the container and its stdin stay) unless ``stdin_once`` without a tty,
  which closes the container's stdin (``sh`` exits);
- a tty ``sh``: input, output, resize;
- an attach without stdin lasts until the container stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time

import pytest

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures
from support.cri_streaming import channel, ws_url

pytestmark = pytest.mark.integration

CRICTL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "bin",
                      "crictl-1.36.0", "crictl")
if not os.path.exists(CRICTL):
    CRICTL = "/work/shared/bin/crictl-1.36.0/crictl"
needs_crictl = pytest.mark.skipif(not os.access(CRICTL, os.X_OK),
                                  reason="crictl 1.36 is not in ../shared/bin")


def shell(cri, name: str, log: bool = True, **kw) -> str:
    """A pod with one running ``sh`` reading its stdin (stdin=True unless told)."""
    kw.setdefault("stdin", True)
    sid, pconf = cri.run_pod(name, log_directory=str(cri.logdir / name))
    if log:
        kw["log_path"] = f"{name}.log"
    return cri.create(sid, pconf, name, ["sh"], **kw)


class Crictl:
    """One ``crictl`` command with its stdin a pipe, its stdout collected by a thread."""

    def __init__(self, cri, *args: str) -> None:
        self.proc = subprocess.Popen(
            [CRICTL, "--runtime-endpoint", "unix://" + cri.daemon.address, "--timeout", "60s",
             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = bytearray()
        self.err = b""
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        while True:
            data = self.proc.stdout.read1(65536)
            with self._cond:
                if not data:
                    self._cond.notify_all()
                    return
                self.out += data
                self._cond.notify_all()

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_output(self, want: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        with self._cond:
            while want not in self.out:
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None or want in self.out, (
                    bytes(self.out), self.proc.poll(), self.proc.stderr.read()
                    if self.proc.poll() is not None else b"")
                self._cond.wait(min(left, 0.5) if left > 0 else 0.1)
            return bytes(self.out)

    def finish(self, timeout: float = 30) -> int:
        """Close its stdin; its exit code (killed after ``timeout``)."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"crictl did not exit after its stdin's EOF: {bytes(self.out)}")
        finally:
            self._t.join(5)
            self.err = self.proc.stderr.read()
            self.proc.stderr.close()
            self.proc.stdout.close()
        return rc


# --- crictl -------------------------------------------------------------------------------

@needs_crictl
@pytest.mark.parametrize("transport", ["spdy", "websocket"])
@pytest.mark.parametrize("log", [True, False], ids=["log-file", "no-log-file"])
def test_crictl_attach_stdin_to_running_sh(cri, transport, log):
    """``echo hello`` into an attached ``sh`` prints ``hello``; stdin EOF
    detaches (no stdin_once), so the next attach finds the same shell."""
    cid = shell(cri, "sh", log=log)
    for n in range(3):
        c = Crictl(cri, "attach", "-i", f"--transport={transport}", cid)
        try:
            c.send(f"echo hello{n}\n".encode())
            out = c.wait_output(f"hello{n}\n".encode())
        finally:
            rc = c.finish()
        assert rc == 0, (rc, c.err)
        assert out.startswith(f"hello{n}\n".encode()), out  # only output from now on
        assert cri.status(cid).state == cri.pb.CONTAINER_RUNNING  # a detach is no EOF
    assert cri.sh(cid, "echo $$") != ""


@needs_crictl
def test_crictl_attach_stdin_once_closes_container_stdin(cri):
    cid = shell(cri, "once", log=False, stdin_once=True)
    c = Crictl(cri, "attach", "-i", cid)
    c.send(b"echo first; echo to-err >&2\n")
    c.wait_output(b"first\n")
    assert c.finish() == 0, c.err
    assert b"to-err" in c.err
    cs = cri.wait_exited(cid)  # stdin closed: sh read EOF and exited
    assert (cs.state, cs.exit_code) == (cri.pb.CONTAINER_EXITED, 0)


@needs_crictl
@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_crictl_exec_interactive(cri, transport):
    sid, pconf = cri.run_pod("ex")
    cid = cri.create(sid, pconf, "ex", ["sleep", "3600"])
    data = os.urandom(100_000).hex().encode()
    r = subprocess.run([CRICTL, "--runtime-endpoint", "unix://" + cri.daemon.address,
                        "exec", "-i", f"--transport={transport}", cid, "sh", "-c",
                        "cat; echo END"], input=data, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data + b"END\n"
    # and a line at a time into an interactive shell
    c = Crictl(cri, "exec", "-i", f"--transport={transport}", cid, "sh")
    c.send(b"echo one\n")
    c.wait_output(b"one\n")
    c.send(b"echo two; exit 3\n")
    c.wait_output(b"two\n")
    assert c.finish() == 1, c.err  # crictl reports a non-zero exit as its error
    assert b"command terminated with exit code 3" in c.err


# --- our clients: WebSocket (v5, v4, base64) and SPDY --------------------------------------

class WsAttach:
    """An attach over WebSocket (the ``websockets`` client), messages collected."""

    def __init__(self, url: str, sub: str) -> None:
        self.url, self.sub = url, sub
        self.got: list[tuple[int, bytes]] = []

    async def __aenter__(self):
        from websockets.asyncio.client import connect

        self._cm = connect(ws_url(self.url), subprotocols=[self.sub], max_size=None)
        self.ws = await self._cm.__aenter__()
        assert self.ws.subprotocol == self.sub
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc):
        self._reader.cancel()
        await self._cm.__aexit__(*exc)

    async def _read(self) -> None:
        import base64

        from websockets.exceptions import ConnectionClosed

        try:
            async for msg in self.ws:
                if isinstance(msg, str):
                    self.got.append((ord(msg[0]) - ord("0"), base64.b64decode(msg[1:])))
                else:
                    self.got.append((msg[0], bytes(msg[1:])))
        except ConnectionClosed:
            pass

    async def send(self, ch: int, data: bytes) -> None:
        if "base64" in self.sub:
            import base64

            await self.ws.send(chr(ord("0") + ch) + base64.b64encode(data).decode())
        else:
            await self.ws.send(bytes([ch]) + data)

    async def wait_for(self, ch: int, want: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while want not in channel(self.got, ch):
            assert time.monotonic() < deadline and not self._reader.done(), self.got
            await asyncio.sleep(0.02)
        return channel(self.got, ch)

    async def closed(self, timeout: float = 20) -> list:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.got


def attach_url(cri, cid: str, stdin=True, stdout=True, stderr=True, tty=False) -> str:
    return cri.rt.Attach(cri.pb.AttachRequest(container_id=cid, stdin=stdin, stdout=stdout,
                                              stderr=stderr and not tty, tty=tty)).url


@pytest.mark.parametrize("sub", ["v5.channel.k8s.io", "v4.channel.k8s.io",
                                 "v4.base64.channel.k8s.io", "channel.k8s.io",
                                 "base64.channel.k8s.io"])
@pytest.mark.parametrize("log", [True, False], ids=["log-file", "no-log-file"])
def test_websocket_attach_input_and_output(cri, sub, log):
    cid = shell(cri, "ws", log=log)

    async def run():
        for n in range(2):  # two attaches in a row, each going away without EOF
            async with WsAttach(attach_url(cri, cid), sub) as a:
                await a.send(0, f"echo out{n}; echo err{n} >&2\n".encode())
                await a.wait_for(1, f"out{n}\n".encode())
                await a.wait_for(2, f"err{n}\n".encode())
                assert a.got[0] == (1, b"")  # the lowest writable channel's empty message
        if sub.startswith("v5"):
            # v5: (255, 0) closes stdin: without stdin_once the client detaches
            async with WsAttach(attach_url(cri, cid), sub) as a:
                await a.send(0, b"echo last\n")
                await a.wait_for(1, b"last\n")
                await a.ws.send(b"\xff\x00")
                got = await a.closed()
            status = json.loads(channel(got, 3))
            assert status["status"] == "Success", status

    asyncio.run(run())
    assert cri.status(cid).state == cri.pb.CONTAINER_RUNNING


def test_websocket_attach_stdin_once_no_tty(cri):
    """stdin_once: the close signal closes the container's stdin; the output still flows
    until the container stopped, then the session ends with Success."""
    cid = shell(cri, "once", log=False, stdin_once=True)

    async def run():
        async with WsAttach(attach_url(cri, cid), "v5.channel.k8s.io") as a:
            await a.send(0, b"trap 'echo bye' EXIT; echo hi\n")
            await a.wait_for(1, b"hi\n")
            await a.ws.send(b"\xff\x00")
            got = await a.closed()
        return got

    got = asyncio.run(run())
    assert channel(got, 1) == b"hi\nbye\n"
    assert json.loads(channel(got, 3))["status"] == "Success"
    cs = cri.wait_exited(cid)
    assert (cs.state, cs.exit_code) == (cri.pb.CONTAINER_EXITED, 0)


@pytest.mark.parametrize("log", [True, False], ids=["log-file", "no-log-file"])
def test_websocket_attach_tty_input_output_resize(cri, log):
    """A tty sh: input echoed through the terminal, resize reaches it, and with stdin_once a
    tty client's stdin EOF only detaches (containerd keeps the container's stdin)."""
    cid = shell(cri, "tty", log=log, tty=True, stdin_once=True)

    async def run():
        async with WsAttach(attach_url(cri, cid, tty=True), "v5.channel.k8s.io") as a:
            await a.send(4, b'{"Width":101,"Height":33}')
            await a.send(0, b"echo $((6*7)); /bin/busybox stty size\n")
            await a.wait_for(1, b"42")
            await a.wait_for(1, b"33 101")
            await a.ws.send(b"\xff\x00")
            got = await a.closed()
        assert not channel(got, 2)
        async with WsAttach(attach_url(cri, cid, tty=True), "v5.channel.k8s.io") as a:
            await a.send(0, b"echo again-$((1+1))\n")
            await a.wait_for(1, b"again-2")

    asyncio.run(run())
    assert cri.status(cid).state == cri.pb.CONTAINER_RUNNING


@pytest.mark.parametrize("log", [True, False], ids=["log-file", "no-log-file"])
def test_spdy_attach_input_output_and_detach(cri, log):
    from spdy_client import SpdyClient

    cid = shell(cri, "spdy", log=log)

    async def one(n: int):
        c = await SpdyClient.connect(attach_url(cri, cid), ["v4.channel.k8s.io"])
        assert c.status == 101
        err = c.open({"streamtype": "error"})
        sin = c.open({"streamtype": "stdin"})
        out = c.open({"streamtype": "stdout"})
        e2 = c.open({"streamtype": "stderr"})
        await c.wait_replied(e2)
        await c.write(sin, f"echo s{n}; echo e{n} >&2\n".encode())
        deadline = time.monotonic() + 20
        while (f"s{n}\n".encode() not in bytes(c.data.get(out, b""))
               or f"e{n}\n".encode() not in bytes(c.data.get(e2, b""))):
            assert time.monotonic() < deadline, c.data
            await asyncio.sleep(0.02)
        await c.write(sin, b"", fin=True)  # stdin EOF: detach
        status = await c.read_all(err)
        await c.close()
        return json.loads(status)

    for n in range(3):
        assert asyncio.run(one(n))["status"] == "Success"
    assert cri.status(cid).state == cri.pb.CONTAINER_RUNNING


def test_attach_without_stdin_lasts_until_the_container_stops(cri):
    sid, pconf = cri.run_pod("ticker")
    cid = cri.create(sid, pconf, "ticker", ["sh", "-c",
                                            "read l; echo got:$l; echo e:$l >&2; exit 4"],
                     stdin=True)

    async def run():
        async with WsAttach(attach_url(cri, cid, stdin=False), "v5.channel.k8s.io") as reader:
            # another client writes the line; the first one sees the output, then the end
            async with WsAttach(attach_url(cri, cid), "v5.channel.k8s.io") as writer:
                await writer.send(0, b"word\n")
                await writer.wait_for(1, b"got:word\n")
            got = await reader.closed()
        return got

    got = asyncio.run(run())
    assert channel(got, 1) == b"got:word\n"
    assert channel(got, 2) == b"e:word\n"
    assert json.loads(channel(got, 3))["status"] == "Success"
    assert cri.wait_exited(cid).exit_code == 4


def test_attach_to_log_less_container_after_ctrd_restart(cri):
    cid = shell(cri, "rs", log=False)

    async def once(word: str):
        async with WsAttach(attach_url(cri, cid), "v5.channel.k8s.io") as a:
            await a.send(0, f"echo {word}\n".encode())
            await a.wait_for(1, f"{word}\n".encode())

    asyncio.run(once("before"))
    stdin = cri.daemon.state / "io.containerd.grpc.v1.cri" / "containers" / cid / "stdin"

    def while_down():
        # output written while no ctrd reads waits in the FIFO (no EPIPE, no dead shell)
        fd = os.open(stdin, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"echo while-down\n")
        finally:
            os.close(fd)
        time.sleep(0.2)  # not a timing assert: gives sh the chance to write into the FIFO

    cri.restart(before_start=while_down)
    assert cri.status(cid).state == cri.pb.CONTAINER_RUNNING
    asyncio.run(once("after"))


@needs_crictl
@pytest.mark.parametrize("log", [True, False], ids=["log-file", "no-log-file"])
def test_crictl_attach_tty(cri, log):
    """``crictl attach -it`` on its own terminal (a pty made here) to a tty ``sh``: a command
    typed there runs and its output comes back; ``exit`` ends the container and crictl."""
    import pty

    cid = shell(cri, "ttysh", log=log, tty=True)
    master, slave = pty.openpty()
    proc = subprocess.Popen([CRICTL, "--runtime-endpoint", "unix://" + cri.daemon.address,
                             "attach", "-i", "-t", cid], stdin=slave, stdout=slave,
                            stderr=subprocess.PIPE, close_fds=True)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        sent = False
        while b"sum=42" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, (seen, proc.poll())
            if not sent:
                time.sleep(0.5)  # not asserted: lets crictl put its terminal in raw mode
                os.write(master, b"echo sum=$((40+2))\r")
                sent = True
            import select

            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        os.write(master, b"exit\r")
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        os.close(master)
    assert b"sum=42" in seen
    cs = cri.wait_exited(cid)
    assert (cs.state, cs.exit_code) == (cri.pb.CONTAINER_EXITED, 0)
