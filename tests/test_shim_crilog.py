"""The kubelet's CRI log format written by ctrd's shim (``file://PATH?format=cri&...`` stdio):
the formatter's rules (containerd's pkg/cri/io/logger.go) on their own, then a real shim and
runc: both streams into one file, long and partial lines, every line in the file when Wait
answers, reopen after the kubelet's rename, hostile URIs refused with nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime
from urllib.parse import quote

import pytest

from ctrd import errdefs
from ctrd.api.containerd.runtime.v2.task import shim_pb2 as api
from ctrd.runtime.shim.crilog import Formatter, parse_file_uri, timestamp
from shimutil import direct, mounts_under  # noqa: F401 (fixture)
from support.poll import wait_until

TS = b"2024-05-06T07:08:09.5Z"
LINE = re.compile(r"^(\S+) (stdout|stderr) ([PF]) (.*)$")


def fmt(stream: str, max_line: int, *chunks: bytes, eof: bool = True) -> list[bytes]:
    f = Formatter(stream, max_line)
    out = b"".join(f.feed(c, TS) for c in chunks)
    if eof:
        out += f.eof(TS)
    return out.splitlines()


def test_full_partial_and_split_lines():
    assert fmt("stdout", 8, b"a\n\nb\r\nc") == [
        TS + b" stdout F a", TS + b" stdout F ", TS + b" stdout F b", TS + b" stdout P c"]
    # Longer than max_line: P chunks of max_line, then F; exactly max_line is one F.
    assert fmt("stderr", 4, b"0123456789\n0123\n") == [
        TS + b" stderr P 0123", TS + b" stderr P 4567", TS + b" stderr F 89",
        TS + b" stderr F 0123"]
    # The same bytes in any chunking give the same lines.
    data = b"0123456789ab\r\nxy\n0123\r\n01234567"
    whole = fmt("stdout", 4, data)
    for cut in range(1, len(data)):
        assert fmt("stdout", 4, data[:cut], data[cut:]) == whole, cut
    assert fmt("stdout", 4, *[data[i:i + 1] for i in range(len(data))]) == whole
    # A 2*max_line line: P then F (containerd's reader: the split happens only past max_line).
    assert fmt("stdout", 4, b"abcdefgh\n") == [TS + b" stdout P abcd", TS + b" stdout F efgh"]
    # An unterminated over-long rest at EOF: P chunks only.
    assert fmt("stdout", 4, b"abcdefghij") == [
        TS + b" stdout P abcd", TS + b" stdout P efgh", TS + b" stdout P ij"]
    # No limit (-1 or 0): nothing is split.
    for unlimited in (-1, 0):
        assert fmt("stdout", unlimited, b"x" * 100000 + b"\n") == [
            TS + b" stdout F " + b"x" * 100000]
    assert fmt("stdout", 8, b"") == []


def test_timestamps_are_rfc3339nano_local_time():
    for ns in (1_700_000_000_123_456_789, 1_700_000_000_000_000_000, 1_700_000_000_120_000_000):
        s = timestamp(ns).decode()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?(Z|[+-]\d\d:\d\d)", s)
        parsed = datetime.fromisoformat(s.replace("Z", "+00:00"))
        assert int(parsed.timestamp()) == ns // 1_000_000_000
    assert b"." not in timestamp(1_700_000_000_000_000_000)
    assert re.search(rb"\.(\d+)", timestamp(1_700_000_000_120_000_000))[1] == b"12"
    assert re.search(rb"\.(\d+)", timestamp(1_700_000_000_000_000_001))[1] == b"000000001"


def test_uri_parsing():
    assert parse_file_uri("file:///a%20b/c%3Fd.log?format=cri&max_line=-1&stream=stderr") == (
        "/a b/c?d.log", {"format": "cri", "max_line": "-1", "stream": "stderr"})
    assert parse_file_uri("file:///plain/path") == ("/plain/path", {})
    with pytest.raises(errdefs.InvalidArgument):
        parse_file_uri("file:///bad%zz")


# ------------------------------------------------------------------------- through a shim

def cri_uris(path, max_line: int) -> tuple[str, str]:
    base = f"file://{quote(str(path))}?format=cri&max_line={max_line}"
    return base + "&stream=stdout", base + "&stream=stderr"


def read_log(path) -> list[tuple[str, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        assert m, f"not a CRI log line: {line!r}"
        datetime.fromisoformat(m[1].replace("Z", "+00:00"))
        out.append((m[2], m[3], m[4]))
    return out


def run_task(direct, id: str, script: str, log, max_line: int = 16384, terminal=False):
    bundle, _, shim = direct.start(id, ["sh", "-c", script], terminal=terminal)
    out, err = cri_uris(log, max_line)
    pid = shim("Create", direct.create_request(id, bundle, stdout=out,
                                               stderr="" if terminal else err,
                                               terminal=terminal)).pid
    return bundle, shim, pid


def finish(shim, id: str) -> api.WaitResponse:
    w = shim("Wait", api.WaitRequest(id=id))
    shim("Delete", api.DeleteRequest(id=id))
    shim("Shutdown", api.ShutdownRequest(id=id))
    return w


def test_both_streams_long_and_partial_lines(direct, tmp_root):
    log = tmp_root / "pods" / "p 1" / "c" / "0.log"  # the directory is created; a space in it
    script = ("echo out1; echo err1 >&2; echo 0123456789ABCDEFXYZ; "
              "echo err-long-line-here >&2; printf tail")
    _, shim, _ = run_task(direct, "both", script, log, max_line=8)
    shim("Start", api.StartRequest(id="both"))
    assert finish(shim, "both").exit_status == 0
    lines = read_log(log)
    assert [x for x in lines if x[0] == "stdout"] == [
        ("stdout", "F", "out1"), ("stdout", "P", "01234567"), ("stdout", "P", "89ABCDEF"),
        ("stdout", "F", "XYZ"), ("stdout", "P", "tail")]
    assert [x for x in lines if x[0] == "stderr"] == [
        ("stderr", "F", "err1"), ("stderr", "P", "err-long"), ("stderr", "P", "-line-he"),
        ("stderr", "F", "re")]
    assert oct(log.stat().st_mode & 0o777) == "0o640"


def test_every_line_is_in_the_file_when_wait_answers(direct, tmp_root):
    log = tmp_root / "many.log"
    script = ("i=0; while [ $i -lt 3000 ]; do echo line-$i; echo err-$i >&2; i=$((i+1)); "
              "done; exit 4")
    _, shim, _ = run_task(direct, "many", script, log)
    shim("Start", api.StartRequest(id="many"))
    w = shim("Wait", api.WaitRequest(id="many"))
    assert w.exit_status == 4
    lines = read_log(log)  # read before Delete: Wait alone guarantees it
    assert [c for s, t, c in lines if s == "stdout"] == [f"line-{i}" for i in range(3000)]
    assert [c for s, t, c in lines if s == "stderr"] == [f"err-{i}" for i in range(3000)]
    assert {t for _, t, _ in lines} == {"F"}
    shim("Delete", api.DeleteRequest(id="many"))
    shim("Shutdown", api.ShutdownRequest(id="many"))


def test_a_slow_log_never_blocks_the_shim(direct, tmp_root):
    """A writer stalled on its file (here: its lock held, as a disk that does not answer
    would) stalls the container's output pipe, not the shim: State answers, then everything
    is written once the file moves again. The "file" is a FIFO nobody reads yet, so the
    writer blocks in write(2) as on a disk that does not answer."""
    log = tmp_root / "slow.log"
    # A FIFO as the "file": nobody reads it, so the writer thread blocks in write().
    os.mkfifo(log)
    reader = os.open(log, os.O_RDONLY | os.O_NONBLOCK)
    try:
        script = "i=0; while [ $i -lt 20000 ]; do echo line-$i-padding-padding; i=$((i+1)); done"
        _, shim, pid = run_task(direct, "slow", script, log)
        shim("Start", api.StartRequest(id="slow"))
        time.sleep(1.0)
        # Pipe and FIFO are full: the container is blocked in write, the shim answers.
        for _ in range(5):
            st = shim("State", api.StateRequest(id="slow"), timeout=5)
            assert st.status == 2  # RUNNING: it cannot finish while its output is stalled
        got = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                chunk = os.read(reader, 1 << 16)
            except BlockingIOError:
                if shim("State", api.StateRequest(id="slow")).status == 3:
                    break
                time.sleep(0.01)
                continue
            if not chunk:
                break  # the shim closed the file: the stream ended
            got += chunk
        try:
            while chunk := os.read(reader, 1 << 16):
                got += chunk
        except BlockingIOError:
            pass
    finally:
        os.close(reader)
    lines = got.decode().splitlines()
    assert len(lines) == 20000
    assert lines[-1].endswith(" stdout F line-19999-padding-padding")
    finish(shim, "slow")


def test_reopen_after_rename(direct, tmp_root):
    log = tmp_root / "rot" / "0.log"
    script = ('trap "echo after; exit 0" TERM; echo before; '
              "while true; do sleep 0.1; done")
    _, shim, _ = run_task(direct, "rot", script, log)
    shim("Start", api.StartRequest(id="rot"))
    assert wait_until(lambda: log.exists() and "before" in log.read_text())
    rotated = log.with_name("0.log.20240101-000000")
    os.rename(log, rotated)
    req = api.UpdateTaskRequest(id="rot", annotations={"io.ctrd.cri.reopen-log": "1"})
    req.resources.type_url = ""  # an empty Any, as ctrd's CRI plugin sends: nothing applied
    shim("Update", req)
    assert log.exists()  # created at once
    shim("Kill", api.KillRequest(id="rot", signal=signal.SIGTERM))
    assert finish(shim, "rot").exit_status == 0
    assert read_log(rotated) == [("stdout", "F", "before")]
    assert read_log(log) == [("stdout", "F", "after")]


def test_terminal_output_goes_to_the_log_as_stdout(direct, tmp_root):
    log = tmp_root / "tty.log"
    _, shim, _ = run_task(direct, "tty", "echo hello; echo oops >&2", log, terminal=True)
    shim("Start", api.StartRequest(id="tty"))
    assert finish(shim, "tty").exit_status == 0
    assert read_log(log) == [("stdout", "F", "hello"), ("stdout", "F", "oops")]


def test_hostile_uris_are_refused_and_leave_nothing(direct, tmp_root):
    bundle, _, shim = direct.start("bad", ["true"])
    for uri, text in ((f"file://{tmp_root}/x.log?format=json", "unknown log format"),
                      (f"file://{tmp_root}/x.log?format=cri&max_line=big", "max_line"),
                      (f"file://{tmp_root}/x.log?format=cri&stream=stdin", "stream"),
                      ("file://relative.log?format=cri", "absolute"),
                      (f"file://{tmp_root}/%zz?format=cri", "escape")):
        with pytest.raises(errdefs.InvalidArgument) as e:
            shim("Create", direct.create_request("bad", bundle, stdout=uri))
        assert text in str(e.value)
        assert mounts_under(str(bundle)) == []
    # A path that cannot be created: the error names it.
    (tmp_root / "file").write_text("")
    with pytest.raises(errdefs.InvalidArgument) as e:
        shim("Create", direct.create_request(
            "bad", bundle, stdout=f"file://{tmp_root}/file/sub/x.log?format=cri"))
    assert "file/sub/x.log" in str(e.value)
    assert not (tmp_root / "x.log").exists()
    # Reopen of a task without a CRI log, then a good run.
    shim("Create", direct.create_request("bad", bundle))
    with pytest.raises(errdefs.FailedPrecondition):
        shim("Update", api.UpdateTaskRequest(id="bad",
                                             annotations={"io.ctrd.cri.reopen-log": "1"}))
    shim("Start", api.StartRequest(id="bad"))
    assert finish(shim, "bad").exit_status == 0
