"""The shim template: one pre-imported, ``gc.freeze()``-d process per daemon address that forks
shim servers on request, so a shim costs a ``fork`` instead of an interpreter start plus
imports, and the shims share the template's pages (interpreter, modules, protobuf classes)
copy-on-write.

Protocol (``start`` -> template), over the abstract unix socket ``@ctrd-shim-template-<hash>``
(:func:`ctrd.runtime.shim.cli.template_socket`; abstract, so a dead template leaves no file and
a new one can bind at once): one request per connection, the client shuts down its side after
sending; fields NUL-separated: ``ctrd-shim-start/1``, id, namespace, daemon address, bundle,
debug (``0``/``1``), the daemon's pid, the runtime options (hex of the marshalled Any), then
``KEY=VALUE`` environment entries (the shim's environment: ``start``'s). Answer: ``ok\\0ADDRESS``,
``err\\0MESSAGE``, or ``retry`` (this template's code changed on disk: it stops accepting and
the client starts a new one).

For a request the template picks the shim's socket by the task's group (containerd's runc shim
rule: the ``io.containerd.runc.v2.group`` or ``io.kubernetes.cri.sandbox-id`` annotation of the
bundle's spec, else the task id). A live shim already serving that socket is reused (a pod's
containers share one shim); otherwise the template binds it, writes ``<bundle>/address``, forks
the shim server (new session, the request's environment, cwd = bundle, stdio on /dev/null, its
command line rewritten to ``containerd-shim-ctrd-v2 -namespace NS -id ID -address ADDR``) and
answers.

Lifecycle: started by the first ``start`` that finds none (in its own session, so it survives
the daemon); reaps its shims; exits once it has had no shim and no request for
:data:`IDLE_EXIT` seconds. A dead template does not affect running shims (they are ordinary
processes, reparented to init); the next ``start`` starts a new one. Its command line is
``containerd-shim-ctrd-v2 template @<socket>`` (no daemon address: it is not any daemon's shim),
with `` retired`` appended once its code changed on disk (it then only waits for its shims).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import socket
import struct
import sys
import time

from ctrd.runtime.shim import handshake, paths

PROTOCOL = handshake.TEMPLATE_PROTOCOL
IDLE_EXIT = 3.0  # seconds; CTRD_SHIM_TEMPLATE_IDLE overrides it (read at start)
GROUP_LABELS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")


# --- the process title --------------------------------------------------------------------

def set_title(args: list[str]) -> None:
    """Rewrite this process's command line (``/proc/PID/cmdline``) in place: the argv area
    the kernel shows keeps its size; the text is cut to fit and the rest is NUL. Written
    through ``/proc/self/mem`` (no privilege needed, unlike PR_SET_MM; cheaper for a forked
    shim than a ctypes call). Best effort."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if size <= 1:
        return
    raw = b"\0".join(os.fsencode(a) for a in args)[:size - 1]
    try:
        fd = os.open("/proc/self/mem", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.pwrite(fd, raw + b"\0" * (size - len(raw)), start)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- requests ------------------------------------------------------------------------------

class Request:
    __slots__ = ("id", "namespace", "address", "bundle", "debug", "daemon_pid", "options",
                 "env")

    def __init__(self, data: bytes) -> None:
        parts = data.split(b"\0")
        if len(parts) < 8 or parts[0] != PROTOCOL:
            raise ValueError("not a ctrd shim start request")
        self.id, self.namespace, self.address, self.bundle = (
            p.decode("utf-8", "surrogateescape") for p in parts[1:5])
        self.debug = parts[5] == b"1"
        self.daemon_pid = int(parts[6] or 0)
        self.options = bytes.fromhex(parts[7].decode())
        self.env: dict[bytes, bytes] = {}
        for kv in parts[8:]:
            k, eq, v = kv.partition(b"=")
            if eq and k:
                self.env[k] = v


def group_of(bundle: str, id: str) -> str:
    """The shim group of a task: its spec's grouping annotation, else its id."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            annotations = json.load(f).get("annotations") or {}
    except (OSError, ValueError, AttributeError):
        return id
    for label in GROUP_LABELS:
        v = annotations.get(label) if isinstance(annotations, dict) else None
        if isinstance(v, str) and v:
            return v
    return id


# --- the template ----------------------------------------------------------------------------

_PREWARM = (
    "_thread", "signal", "termios", "google.protobuf.any_pb2", "ctrd.typeurl",
    "ctrd.api.containerd.runc.options.oci_pb2", "ctrd.runtime.shim.crilog",
    "ctrd.runtime.shim.events", "ctrd.runtime.shim.ksm", "ctrd.runtime.shim.log",
    "ctrd.runtime.shim.loop", "ctrd.runtime.shim.mount", "ctrd.runtime.shim.paths",
    "ctrd.runtime.shim.process", "ctrd.runtime.shim.reaper", "ctrd.runtime.shim.runtime",
    "ctrd.runtime.shim.server", "ctrd.runtime.shim.service", "ctrd.runtime.shim.stdio",
    "ctrd.runtime.cgroups", "re", "ctrd.snapshots.idmap",
    "ctrd.api.cgroups.stats.v1.metrics_pb2", "ctrd.api.cgroups.v2.stats.metrics_pb2",
    "ctrd.api.containerd.runtime.bootstrap.v1.bootstrap_pb2",  # BootstrapParams, read per shim
)


_runtime = _serving = None  # the modules a forked shim runs (set by _prewarm: no import after fork)


def _prewarm() -> None:
    """Import and initialise everything a shim server uses, so forked shims share it."""
    import importlib

    from google.protobuf.message_factory import GetMessageClass

    from ctrd.runtime.shim import mount

    for name in _PREWARM:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - termios on odd platforms
            pass
    from ctrd.runtime.shim import runtime, serving
    from ctrd.runtime.shim.server import method_classes

    global _runtime, _serving, _fork
    _runtime, _serving, _fork = runtime, serving, _libc_fork()

    for service in serving.SERVICES:
        for m in service.methods:
            GetMessageClass(m.output_type)
        method_classes(service)
    mount._lib()


def _fingerprint() -> dict[str, int]:
    """mtimes of the ctrd modules loaded: a template whose code changed on disk retires."""
    base = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    out = {}
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None) or ""
        if f.startswith(base + os.sep + "ctrd" + os.sep):
            try:
                out[f] = os.stat(f).st_mtime_ns
            except OSError:
                out[f] = -1
    return out


def _changed(fp: dict[str, int]) -> bool:
    for f, mtime in fp.items():
        try:
            if os.stat(f).st_mtime_ns != mtime:
                return True
        except OSError:
            if mtime != -1:
                return True
    return False


class Template:
    def __init__(self, listener: socket.socket, name: str, idle: float) -> None:
        self.listener: socket.socket | None = listener
        self.idle = idle
        self.name = name
        self.children: set[int] = set()
        self.last = time.monotonic()
        self.fingerprint = _fingerprint()

    def run(self) -> None:
        while True:
            self._reap()
            if self.listener is None and not self.children:
                return
            if not self.children and time.monotonic() - self.last > self.idle:
                self._retire()
                return
            if self.listener is None:
                time.sleep(0.2)
                continue
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, InterruptedError):
                continue
            self.last = time.monotonic()
            with conn:
                self._serve(conn)
            self.last = time.monotonic()

    def _retire(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def _reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)

    def _serve(self, conn: socket.socket) -> None:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            if struct.unpack("3i", creds)[1] != os.getuid():
                return
            conn.settimeout(5.0)
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
                if len(data) > 4 << 20:
                    raise ValueError("request too large")
            if _changed(self.fingerprint):
                conn.sendall(b"retry")
                self._retire()
                set_title(["containerd-shim-ctrd-v2", "template", "@" + self.name, "retired"])
                return
            r = Request(bytes(data))
            reply = b"ok\0" + handshake.start_answer(self._start(conn, r), r.options)
        except Exception as e:  # noqa: BLE001 - every failure is the client's answer
            reply = b"err\0" + str(e).encode(errors="replace")
        try:
            conn.sendall(reply)
        except OSError:
            pass

    def _start(self, conn: socket.socket, r: Request) -> str:
        if not r.id:
            raise ValueError("shim id cannot be empty")
        if not os.path.isdir(r.bundle):
            raise ValueError(f"bundle {r.bundle}: not a directory")
        # Read before the fork: the shim then runs no import of the options' modules.
        options = handshake.read_options(r.options)
        address = paths.socket_address(r.address, r.namespace, group_of(r.bundle, r.id))
        path = address.removeprefix("unix://")
        listener = paths.listen(path)
        paths.write_address(r.bundle, address)
        if listener is None:
            return address  # the group's shim is alive: it serves this task too
        try:
            pid = _fork()
        except BaseException:
            listener.close()
            os.unlink(path)
            raise
        if pid == 0:
            code = 1
            try:
                conn.close()
                if self.listener is not None:
                    self.listener.close()
                _child(r, listener, path, options)
                code = 0
            finally:
                os._exit(code)
        listener.close()
        self.children.add(pid)
        return address


def _libc_fork():
    """fork(2) without CPython's after-fork work in the child.

    ``os.fork`` runs ``PyOS_AfterFork_Child`` in the child: it rebuilds the thread and
    interpreter states and runs every ``os.register_at_fork`` callback (threading's, random's),
    which writes ~0.45 MiB of pages the child would otherwise share with the template. None
    of it is needed here: the template has one thread, holds no lock across the call (the GIL
    stays held: PyDLL), and a shim starts no thread and installs its own signal handling.
    ``os.fork`` where libc's is not reachable."""
    try:
        f = ctypes.PyDLL(None, use_errno=True).fork
    except (OSError, AttributeError):  # pragma: no cover - no dlopen(NULL)
        return os.fork
    f.restype, f.argtypes = ctypes.c_int, []

    def fork() -> int:
        pid = f()
        if pid < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return pid

    return fork


_fork = os.fork  # _prewarm swaps in _libc_fork()


def _child(r: Request, listener: socket.socket, path: str, options) -> None:
    os.setsid()
    os.chdir(r.bundle)
    _runtime.set_environ(r.env)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    set_title(["containerd-shim-ctrd-v2", "-namespace", r.namespace, "-id", r.id,
               "-address", r.address])
    if r.daemon_pid:
        _serving.adjust_oom_score(r.daemon_pid)
    ttrpc_address = r.env.get(b"TTRPC_ADDRESS", b"").decode("utf-8", "surrogateescape")
    _serving.serve(r.id, r.namespace, r.bundle, listener, path, ttrpc_address,
                  options, r.debug)


def main(name: str) -> int:
    """Run the template on the abstract socket ``name`` (its text after the leading NUL)."""
    idle = float(os.environ.get("CTRD_SHIM_TEMPLATE_IDLE", IDLE_EXIT))
    set_title(["containerd-shim-ctrd-v2", "template", "@" + name])
    os.chdir("/")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.bind("\0" + name)
    except OSError:
        s.close()
        return 0  # another template got there first: the client talks to it
    s.listen(128)
    # Bound before importing: clients queue on the socket meanwhile.
    _prewarm()
    s.settimeout(0.5)
    t = Template(s, name, idle)
    gc.collect()
    gc.freeze()  # the imported world stays out of the shims' collections (and CoW-shared)
    try:
        t.run()
    finally:
        t._retire()
    return 0
