"""The daemon's side of the shim v2 protocol: starting a shim binary, talking ttrpc to it,
cleaning up after a dead one.

Start (containerd's runtime/v2 binary.Start): ``<shim> -namespace NS -address <grpc sock>
-publish-binary <ctrd> -id ID [-debug] start`` with the bundle as working directory,
``TTRPC_ADDRESS`` in the environment and the runtime options (a marshalled Any) on stdin; the
shim prints its ttrpc address and leaves a server running. The daemon reads the shim's log
from the FIFO ``<bundle>/log``, made and opened before the shim starts.

Cleanup of a shim that is gone: ``<shim> ... -id ID -bundle DIR delete`` prints a
DeleteResponse (the OCI runtime's state is removed; exit status 137 as containerd reports).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ctrd import errdefs
from ctrd.runtime import bootstrap
from ctrd.runtime.bootstrap import parse_start_output
from ctrd.runtime.bundle import Bundle

log = logging.getLogger("ctrd.runtime")

SERVICE = "containerd.task.v2.Task"
# The task service by the shim API version its start answered: containerd 2.x's shims
# (version 3) serve only v3, whose messages are v2's under another package name.
TASK_SERVICES = {2: SERVICE, 3: "containerd.task.v3.Task"}
NAMESPACE_KEY = "containerd-namespace-ttrpc"

# Per-call deadlines: a hung shim must fail its own calls, not hold the API. State is short
# (containerd's io.containerd.timeout.task.state is 2 s); Wait has none.
STATE_TIMEOUT = 2.0
CALL_TIMEOUT = 30.0
CREATE_TIMEOUT = 120.0
START_SHIM_TIMEOUT = 60.0
DELETE_SHIM_TIMEOUT = 30.0


def _pb():
    from ctrd.api.containerd.runtime.v2.task import shim_pb2

    return shim_pb2


def binary_name(runtime: str) -> str:
    """``io.containerd.runc.v2`` -> ``containerd-shim-runc-v2`` (containerd's rule: the last
    two dot-separated parts)."""
    parts = runtime.split(".")
    if len(parts) < 2 or not parts[-2] or not parts[-1]:
        raise errdefs.InvalidArgument(f"invalid runtime name {runtime}, correct runtime name "
                                      "should be either format like `io.containerd.runc.v1` "
                                      "or a full path to the binary")
    return f"containerd-shim-{parts[-2]}-{parts[-1]}"


def resolve_binary(name_or_path: str) -> str:
    """The shim executable for a binary name or path: a path is taken as is; a name is
    looked up next to this interpreter first (ctrd's own shim in its virtualenv), then on
    PATH. NotFound names the binary."""
    if "/" in name_or_path:
        if os.access(name_or_path, os.X_OK):
            return os.path.abspath(name_or_path)
        raise errdefs.NotFound(f"runtime binary {name_or_path}")
    here = os.path.join(os.path.dirname(sys.executable), name_or_path)
    if os.access(here, os.X_OK):
        return here
    import shutil  # here: it pulls bz2 and lzma in at import

    found = shutil.which(name_or_path)
    if found:
        return found
    raise errdefs.NotFound(f"runtime binary {name_or_path!r} not installed on system")


@dataclass
class Exit:
    pid: int
    status: int
    timestamp: Any  # google.protobuf.Timestamp


def _parse_address(address: str) -> str:
    address = address.strip()
    if address.startswith("unix://"):
        path = address[len("unix://"):]
        return "\0" + path[1:] if path.startswith("@") else path
    raise errdefs.FailedPrecondition(f"shim printed an unsupported address {address!r}")


class ShimLog:
    """Reads ``<bundle>/log`` (a FIFO the shim writes) into ctrd's log, line by line.

    Opened read-write so the FIFO never reports EOF while no shim has it open (a shim restart
    or the window before the shim opens it)."""

    def __init__(self, bundle: Bundle) -> None:
        path = bundle.file("log")
        try:
            st = os.lstat(path)
            if not stat.S_ISFIFO(st.st_mode):
                os.unlink(path)
                raise FileNotFoundError
        except FileNotFoundError:
            os.mkfifo(path, 0o700)
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._id = bundle.id
        self._buf = b""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.strip():
                log.info("shim %s: %s", self._id, line.decode(errors="replace"))
        if len(self._buf) > 1 << 16:
            self._buf = b""

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


@dataclass
class ShimCommand:
    """How to run one shim binary for one bundle."""

    binary: str
    bundle: Bundle
    address: str          # the daemon's gRPC socket
    ttrpc_address: str    # the daemon's ttrpc socket (events go there)
    debug: bool = False
    version: int = 2      # the shim API version its start answered (2, or 3 for 2.x shims)

    @property
    def publish_binary(self) -> str:
        return sys.argv[0] or "ctrd"

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "-namespace", self.bundle.namespace, "-address", self.address,
                "-publish-binary", self.publish_binary, *args]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TTRPC_ADDRESS"] = self.ttrpc_address
        env.setdefault("GOMAXPROCS", "2")  # containerd sets it for its Go shims
        return env

    async def _run(self, args: list[str], stdin: bytes | None, cwd: str | None,
                   timeout: float) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args), cwd=cwd, env=self.env(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin or b""), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise errdefs.DeadlineExceeded(f"shim {os.path.basename(self.binary)} "
                                           f"{args[-1]} for {self.bundle.id}") from None
        return proc.returncode or 0, out, err

    async def start(self, options: bytes | None) -> str:
        """Start the shim; its ttrpc socket path.

        ctrd's own shim is asked through its template directly when one runs (what its
        ``start`` command would do, without an interpreter start per task;
        bench/README.md, "Figures the code cites");
        otherwise, and for every other shim, ``<shim> ... start`` runs."""
        if os.path.basename(self.binary) == "containerd-shim-ctrd-v2":
            path = await asyncio.to_thread(self._start_via_template, options or b"")
            if path is not None:
                self.bundle.write("shim-binary-path", self.binary)
                return path
        args = ["-id", self.bundle.id] + (["-debug"] if self.debug else []) + ["start"]
        stdin = options
        if await bootstrap.speaks_bootstrap(self.binary):
            stdin = bootstrap.params(self.bundle.id, self.bundle.namespace, self.address,
                                     self.ttrpc_address, self.publish_binary, self.debug,
                                     options)
        rc, out, err = await self._run(args, stdin, self.bundle.path, START_SHIM_TIMEOUT)
        if rc != 0:
            text = (out + err).decode(errors="replace").strip()
            raise errdefs.CtrdError(f"start shim {os.path.basename(self.binary)}: {text}: "
                                    f"exit status {rc}")
        self.bundle.write("shim-binary-path", self.binary)
        address, self.version = parse_start_output(out)
        path = _parse_address(address)
        # what containerd 2.x keeps to reconnect after a restart (and which task API to use)
        await asyncio.to_thread(bootstrap.write_result, self.bundle.path, self.version,
                                address)
        return path

    def join(self, address: str, version: int) -> str:
        """Serve this bundle's task from the running shim at ``address`` (a sandbox's, of
        shim API ``version``) instead of starting one: record it as :meth:`start` does, so
        a restarted daemon reconnects; its ttrpc socket path."""
        path = _parse_address(address)
        self.version = version
        self.bundle.write("shim-binary-path", self.binary)
        bootstrap.write_result(self.bundle.path, version, address)
        return path

    def _start_via_template(self, options: bytes) -> str | None:
        """One start request to a running template of ctrd's shim; None when there is none
        (or it is retiring): the caller then runs ``start``, which also spawns one."""
        import socket

        from ctrd.runtime.shim import cli, handshake

        python = _shebang_python(self.binary)
        if python is None:
            return None
        name = cli.template_socket(self.address, python, self.binary)
        env = {os.fsencode(k): os.fsencode(v) for k, v in self.env().items()}
        request = handshake.encode_request(self.bundle.id, self.bundle.namespace,
                                           self.address, self.bundle.path, self.debug,
                                           os.getpid(), options, env)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                s.connect("\0" + name)
            except OSError:
                return None
            out = cli.exchange(s, request, START_SHIM_TIMEOUT)
        except OSError:
            return None
        finally:
            s.close()
        status, _, text = out.partition(b"\0")
        if status == b"ok":
            return _parse_address(text.decode(errors="replace"))
        if status == b"err":
            raise errdefs.CtrdError(f"start shim {os.path.basename(self.binary)}: "
                                    f"{text.decode(errors='replace')}")
        return None  # "retry" or no answer: the start command sorts it out

    async def delete(self) -> Exit:
        """Run ``delete`` for a shim that is gone; the exit it reports."""
        args = ["-id", self.bundle.id, "-bundle", self.bundle.path, "delete"]
        cwd = self.bundle.path if os.path.isdir(self.bundle.path) else None
        rc, out, err = await self._run(args, None, cwd, DELETE_SHIM_TIMEOUT)
        if rc != 0:
            raise errdefs.CtrdError(f"{os.path.basename(self.binary)} delete: "
                                    f"{err.decode(errors='replace').strip()}: exit status {rc}")
        resp = _pb().DeleteResponse()
        try:
            resp.ParseFromString(out)
        except Exception:  # noqa: BLE001 - a shim printing garbage: still clean up
            log.warning("shim %s delete printed an unreadable response", self.bundle.id)
        return Exit(resp.pid, resp.exit_status, resp.exited_at)


def _shebang_python(script: str) -> str | None:
    """The interpreter of a Python console script (its ``#!`` line), None if it has none."""
    try:
        with open(script, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].split()
    return os.fsdecode(parts[0]) if parts and b"python" in parts[0] else None


class BundleTask:
    """What every task the manager lists has: its bundle, hence its id and namespace."""

    bundle: Bundle

    @property
    def id(self) -> str:
        return self.bundle.id

    @property
    def namespace(self) -> str:
        return self.bundle.namespace


class ShimTask(BundleTask):
    """A task served by a live shim: typed calls to ``containerd.task.v2.Task``.

    ``exited`` is set (with the Exit) when the shim went away and was cleaned up; waiters
    blocked on a dead shim get that exit instead of a connection error."""

    def __init__(self, bundle: Bundle, client, runtime: str, command: ShimCommand) -> None:
        self.bundle = bundle
        self.client = client
        self.runtime = runtime
        self.command = command
        self.gone: asyncio.Future = asyncio.get_running_loop().create_future()
        self.created_pid = 0  # the init pid the shim's Create answered (0: none said)

    async def call(self, method: str, request: Any, response_type: type | None = None,
                   timeout: float | None = CALL_TIMEOUT) -> Any:
        if response_type is None:
            from google.protobuf import empty_pb2

            response_type = empty_pb2.Empty
        return await self.client.call(TASK_SERVICES.get(self.command.version, SERVICE), method,
                                      request, response_type, timeout=timeout,
                                      metadata={NAMESPACE_KEY: self.namespace})

    async def create(self, **fields: Any) -> Any:
        resp = await self.call("Create", _pb().CreateTaskRequest(id=self.id, **fields),
                               _pb().CreateTaskResponse, CREATE_TIMEOUT)
        self.created_pid = resp.pid
        return resp

    async def state(self, exec_id: str = "") -> Any:
        return await self.call("State", _pb().StateRequest(id=self.id, exec_id=exec_id),
                               _pb().StateResponse, STATE_TIMEOUT)

    async def start(self, exec_id: str = "") -> Any:
        return await self.call("Start", _pb().StartRequest(id=self.id, exec_id=exec_id),
                               _pb().StartResponse, CREATE_TIMEOUT)

    async def wait(self, exec_id: str = "") -> Any:
        """The process's exit. If the shim dies meanwhile, the init's exit from the dead-shim
        cleanup (an exec's waiter gets the same: its process died with the shim)."""
        pb = _pb()
        call = asyncio.ensure_future(
            self.call("Wait", pb.WaitRequest(id=self.id, exec_id=exec_id), pb.WaitResponse,
                      None))
        try:
            return await asyncio.shield(call)
        except errdefs.Unavailable:
            ex: Exit = await self.gone
            return pb.WaitResponse(exit_status=ex.status, exited_at=ex.timestamp)

    async def delete_process(self, exec_id: str) -> Any:
        return await self.call("Delete", _pb().DeleteRequest(id=self.id, exec_id=exec_id),
                               _pb().DeleteResponse)

    async def kill(self, signal: int, all_: bool = False, exec_id: str = "") -> None:
        await self.call("Kill", _pb().KillRequest(id=self.id, exec_id=exec_id, signal=signal,
                                                  all=all_))

    async def exec(self, exec_id: str, **fields: Any) -> None:
        await self.call("Exec", _pb().ExecProcessRequest(id=self.id, exec_id=exec_id,
                                                         **fields), timeout=CREATE_TIMEOUT)

    async def resize_pty(self, exec_id: str, width: int, height: int) -> None:
        await self.call("ResizePty", _pb().ResizePtyRequest(id=self.id, exec_id=exec_id,
                                                            width=width, height=height))

    async def close_io(self, exec_id: str, stdin: bool) -> None:
        await self.call("CloseIO", _pb().CloseIORequest(id=self.id, exec_id=exec_id,
                                                        stdin=stdin))

    async def pause(self) -> None:
        await self.call("Pause", _pb().PauseRequest(id=self.id))

    async def resume(self) -> None:
        await self.call("Resume", _pb().ResumeRequest(id=self.id))

    async def pids(self) -> Any:
        return await self.call("Pids", _pb().PidsRequest(id=self.id), _pb().PidsResponse)

    async def update(self, resources: Any, annotations: dict[str, str]) -> None:
        await self.call("Update", _pb().UpdateTaskRequest(id=self.id, resources=resources,
                                                          annotations=annotations))

    async def stats(self) -> Any:
        return await self.call("Stats", _pb().StatsRequest(id=self.id), _pb().StatsResponse)

    async def checkpoint(self, path: str, options: Any) -> None:
        await self.call("Checkpoint", _pb().CheckpointTaskRequest(id=self.id, path=path,
                                                                  options=options))

    async def shutdown(self) -> None:
        """Ask the shim to exit (it does once no task is left); the connection closing is
        the expected answer."""
        try:
            await self.call("Shutdown", _pb().ShutdownRequest(id=self.id), timeout=5.0)
        except (errdefs.Unavailable, errdefs.NotFound, errdefs.DeadlineExceeded):
            pass


async def connect(bundle: Bundle, path: str, runtime: str, command: ShimCommand,
                  on_close: Callable[[ShimTask], None]) -> ShimTask:
    from ctrd.ttrpc.client import Client

    holder: list[ShimTask] = []
    client = await Client.connect(path, on_close=lambda: holder and on_close(holder[0]))
    task = ShimTask(bundle, client, runtime, command)
    holder.append(task)
    return task
