"""A task's processes: the container's init (:class:`Init`) and exec'd processes
(:class:`Exec`), with containerd's states and transitions.

States: ``created`` -> ``running`` <-> ``paused`` (init only) -> ``stopped`` -> ``deleted``.
An exit (from the reaper) moves any live state to ``stopped`` and records the exit status
(128 + signal for a signalled process) and time; :meth:`Process.wait` answers then. The rules
of what each state allows follow containerd's ``pkg/process`` (``init_state.go``,
``exec_state.go``); a request that does not fit the state raises FailedPrecondition (or
NotFound for a process that already finished).
"""

from __future__ import annotations

import json
import os
import re
import time

from ctrd import errdefs
from ctrd.runtime.shim import log, mount
from ctrd.runtime.shim.loop import Loop
from ctrd.runtime.shim.paths import SOCKET_DIR
from ctrd.runtime.shim.runtime import Runtime, signal_process
from ctrd.runtime.shim.server import Deferred
from ctrd.runtime.shim.stdio import ConsoleSocket, ProcessIO, PtyCopy, Stdio

CREATED, RUNNING, PAUSED, STOPPED, DELETED = "created", "running", "paused", "stopped", \
    "deleted"
INIT_PID_FILE = "init.pid"
_EXEC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,75}")


class Process:
    """What init and exec processes share: pid, state, exit, stdio, waiters."""

    def __init__(self, loop: Loop, id: str, stdio: Stdio) -> None:
        self.loop = loop
        self.id = id
        self.stdio = stdio
        self.pid = 0
        self.status = CREATED
        self.exit_status = 0
        self.exited_at = 0  # ns since the epoch; 0 while running
        self.exiting = False  # the reaper saw it exit; its exit may wait for its log
        self.io: ProcessIO | None = None
        self.pty: PtyCopy | None = None
        self._waiters: list[Deferred] = []

    @property
    def exited(self) -> bool:
        return self.exited_at != 0

    def set_exited(self, status: int, at: int = 0) -> None:
        if self.exited:
            return
        self.exit_status, self.exited_at = status, at or time.time_ns()
        if self.status != DELETED:
            self.status = STOPPED
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.resolve(self)

    def wait(self) -> Deferred:
        d = Deferred()
        if self.exited:
            d.resolve(self)
        else:
            self._waiters.append(d)
        return d

    def close_io(self) -> None:
        if self.io is not None:
            self.io.close_stdin()

    def resize(self, width: int, height: int) -> None:
        if self.pty is not None:
            self.pty.resize(width, height)

    def _open_io(self, run) -> None:
        """Open stdio, run the runtime command ``run(stdio_fds, console_path)``, set up the pty
        copy; on failure close everything opened."""
        io = ProcessIO(self.stdio, self.loop)
        console = None
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            if self.stdio.terminal:
                console = ConsoleSocket(SOCKET_DIR)
                run((devnull, devnull, devnull), console.path)
                master = console.receive_master()
                self.pty = PtyCopy(self.loop, master, io)
            else:
                run(io.runtime_fds(devnull), "")
                io.handed_over(self.loop)
        except BaseException:
            io.close()
            raise
        finally:
            os.close(devnull)
            if console is not None:
                console.close()
        self.io = io

    def _release_io(self) -> None:
        if self.pty is not None:
            self.pty.close()
            self.pty = None
        if self.io is not None:
            self.io.close()
            self.io = None


def _read_pid(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError) as e:
        raise errdefs.CtrdError(f"failed to retrieve OCI runtime container pid: {e}") from None


class Init(Process):
    """The container's init process; also the container itself (rootfs, runtime, execs)."""

    def __init__(self, loop: Loop, id: str, bundle: str, runtime: Runtime, stdio: Stdio,
                 no_pivot: bool = False, no_new_keyring: bool = False) -> None:
        super().__init__(loop, id, stdio)
        self.bundle = bundle
        self.runtime = runtime
        self.rootfs = ""
        self.no_pivot, self.no_new_keyring = no_pivot, no_new_keyring
        self.execs: dict[str, Exec] = {}
        self.cgroup = None   # ctrd.runtime.cgroups.Cgroup, found from the init's pid
        self.oom = None      # its OOM watcher, on the loop while the task lives

    def watch_cgroup(self, on_oom) -> None:
        """Find the container's cgroup (by its init's pid) and watch it for OOM kills:
        ``on_oom()`` runs on the loop for each. A task without one (or a host without a
        memory controller) just has no metrics and no OOM events."""
        from ctrd.runtime import cgroups

        try:
            self.cgroup = cgroups.load(self.pid)
        except (errdefs.CtrdError, OSError) as e:
            log.warning("no cgroup for task", id=self.id, error=str(e))
            return
        try:
            self.oom = self.cgroup.oom_watcher()
        except (errdefs.CtrdError, OSError) as e:
            log.warning("cannot watch for OOM", id=self.id, error=str(e))
            return
        w = self.oom

        def readable() -> None:
            if w.oom_happened():
                on_oom()
            if w.gone:
                self.unwatch_cgroup()

        self.loop.add_reader(w.fileno(), readable)

    def unwatch_cgroup(self) -> None:
        if self.oom is not None:
            self.loop.remove_reader(self.oom.fileno())
            self.oom.close()
            self.oom = None

    def metrics(self):
        """The cgroup's metrics in an Any (containerd's v1/v2 Metrics)."""
        if self.cgroup is None:
            raise errdefs.NotImplemented_(f"task {self.id}: cgroup does not exist")
        return self.cgroup.metrics_any()

    def create(self, rootfs_mounts) -> None:
        """Mount the rootfs, open stdio, ``runtime create``; on failure nothing is left."""
        if rootfs_mounts:
            self.rootfs = os.path.join(self.bundle, "rootfs")
            os.makedirs(self.rootfs, mode=0o711, exist_ok=True)
            try:
                mount.mount_all(rootfs_mounts, self.rootfs)
            except OSError as e:
                raise errdefs.CtrdError(f"failed to mount rootfs component: {e}") from None
        pid_file = os.path.join(self.bundle, INIT_PID_FILE)
        try:
            self._open_io(lambda fds, console: self.runtime.create(
                self.id, self.bundle, pid_file, fds, console, self.no_pivot,
                self.no_new_keyring))
            self.pid = _read_pid(pid_file)
        except BaseException:
            self._release_io()
            try:
                self.runtime.delete(self.id, force=True)
            except errdefs.CtrdError as e:
                log.warning("cleanup after a failed create", error=str(e))
            if self.rootfs:
                mount.unmount_all(self.rootfs)
            raise

    def start(self) -> None:
        if self.status != CREATED:
            raise errdefs.FailedPrecondition(f"cannot start a {self.status} process")
        if self.exited:
            raise errdefs.FailedPrecondition("cannot start a process that exited")
        self.runtime.start(self.id)
        if self.status == CREATED:
            self.status = RUNNING

    def kill(self, sig: int, all: bool) -> None:
        if self.status == DELETED:
            raise errdefs.NotFound("process already finished")
        self.runtime.kill(self.id, sig, all)

    def pause(self) -> None:
        if self.status != RUNNING:
            raise errdefs.FailedPrecondition(f"cannot pause task in {self.status} state")
        self.runtime.pause(self.id)
        self.status = PAUSED

    def resume(self) -> None:
        if self.status != PAUSED:
            raise errdefs.FailedPrecondition(f"cannot resume task in {self.status} state")
        self.runtime.resume(self.id)
        if not self.exited:
            self.status = RUNNING

    def update(self, resources_json: bytes) -> None:
        if self.status in (STOPPED, DELETED):
            raise errdefs.FailedPrecondition(f"cannot update a {self.status} task")
        path = os.path.join(self.bundle, ".update-resources.json")
        with open(path, "wb") as f:
            f.write(resources_json)
        try:
            self.runtime.update(self.id, path)
        finally:
            os.unlink(path)

    def delete(self) -> None:
        if self.status in (RUNNING, PAUSED):
            raise errdefs.FailedPrecondition("cannot delete a running process")
        if self.status == DELETED:
            raise errdefs.NotFound(f"process {self.id} already deleted")
        err = None
        try:
            self.runtime.delete(self.id)
        except errdefs.CtrdError as e:
            err = e
        self.unwatch_cgroup()
        self._release_io()
        if self.rootfs:
            try:
                mount.unmount_all(self.rootfs)
            except OSError as e:
                log.warning("failed to cleanup rootfs mount", error=str(e))
                err = err or errdefs.CtrdError(f"failed rootfs umount: {e}")
        if err is not None:
            raise err
        self.status = DELETED

    def kill_all_on_exit(self) -> bool:
        """containerd's ShouldKillAllOnExit: unless the container has its own new PID
        namespace, its other processes are killed when init exits."""
        try:
            with open(os.path.join(self.bundle, "config.json"), "rb") as f:
                spec = json.load(f)
            for ns in (spec.get("linux") or {}).get("namespaces") or []:
                if ns.get("type") == "pid" and not ns.get("path"):
                    return False
        except (OSError, ValueError, AttributeError):
            pass
        return True

    def new_exec(self, exec_id: str, spec_json: bytes, stdio: Stdio) -> "Exec":
        if not _EXEC_ID.fullmatch(exec_id):
            raise errdefs.InvalidArgument(f"exec id {exec_id!r}: must match "
                                          f"{_EXEC_ID.pattern}")
        if exec_id in self.execs:
            raise errdefs.AlreadyExists(f"id {exec_id}")
        if self.status in (STOPPED, DELETED) or self.exited:
            raise errdefs.FailedPrecondition("cannot exec in a stopped state")
        try:
            spec = json.loads(spec_json)
        except ValueError as e:
            raise errdefs.InvalidArgument(f"exec {exec_id}: process spec: {e}") from None
        if not isinstance(spec, dict):
            raise errdefs.InvalidArgument(f"exec {exec_id}: process spec is not an object")
        spec["terminal"] = stdio.terminal
        e = Exec(self.loop, exec_id, self, spec, stdio)
        self.execs[exec_id] = e
        return e


class Exec(Process):
    def __init__(self, loop: Loop, id: str, parent: Init, spec: dict, stdio: Stdio) -> None:
        super().__init__(loop, id, stdio)
        self.parent = parent
        self.spec = spec

    def start(self) -> None:
        if self.status != CREATED:
            raise errdefs.FailedPrecondition(f"cannot start a {self.status} process")
        if self.parent.status not in (CREATED, RUNNING):
            raise errdefs.FailedPrecondition(f"cannot exec in a {self.parent.status} task")
        base = os.path.join(self.parent.bundle, f".exec-{self.id}")
        spec_path, pid_file = base + ".json", base + ".pid"
        try:
            with open(spec_path, "w") as f:
                json.dump(self.spec, f)
            self._open_io(lambda fds, console: self.parent.runtime.exec(
                self.parent.id, spec_path, pid_file, fds, console))
            self.pid = _read_pid(pid_file)
        finally:
            for p in (spec_path, pid_file):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        self.status = RUNNING

    def kill(self, sig: int, all: bool) -> None:
        if self.status == CREATED:
            raise errdefs.FailedPrecondition("process not created")
        if self.exited or self.status in (STOPPED, DELETED):
            raise errdefs.NotFound("process already finished")
        signal_process(self.pid, sig)

    def delete(self) -> None:
        if self.status == RUNNING and not self.exited:
            raise errdefs.FailedPrecondition("cannot delete a running process")
        self._release_io()
        self.status = DELETED
        self.parent.execs.pop(self.id, None)
