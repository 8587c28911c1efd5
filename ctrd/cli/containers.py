"""ctrctl's container commands, over containerd's gRPC API (ctrd or containerd 1.6):

    ctrctl run [-d] [--rm] [-t] [-i] [-e K=V]... [--mount SPEC]... [--net-host] [--user U]
               [--cwd DIR] [--hostname H] [--oom-score-adj N] [--runtime R]
               [--snapshotter S] IMAGE ID [ARGS...]     # or: run --name ID IMAGE [ARGS...]
    ctrctl ps [-q] [--format table|json]
    ctrctl exec [--exec-id ID] [-t] [-i] [-d] [-e K=V]... [--cwd DIR] [--user U] ID CMD...
    ctrctl kill [-s SIGNAL] [--all] [--exec-id ID] ID...
    ctrctl stop [-t SECONDS] ID...
    ctrctl rm [-f] ID...
    ctrctl logs [-f] ID
    ctrctl pause ID... / unpause ID... / top ID

``run`` follows ``ctr run``: Images/Get, the image's manifest and config from content, the
unpacked check (Snapshots/Stat of the top chain ID), then under a lease: Snapshots/Prepare
(key = ID), Snapshots/Mounts mounted read-only on a temp dir to read /etc/passwd and
/etc/group, the spec (:mod:`ctrd.oci.spec`), Containers/Create; the lease is deleted (the
container record now keeps the snapshot). Then Tasks/Create with stdio, Tasks/Wait and
Tasks/Start concurrently, signals forwarded as Tasks/Kill (``-t``: the local terminal in raw
mode, SIGWINCH forwarded as Tasks/ResizePty), ``-i``: stdin copied until EOF, then
Tasks/CloseIO. At exit: Tasks/Delete; ``--rm`` also Snapshots/Remove and Containers/Delete.
ctrctl's exit code is the task's exit status.

Stdio: in the foreground, FIFOs ctrctl creates under ``--fifo-dir`` (default
``/run/ctrctl/fifo``, env ``CTRCTL_FIFO_DIR``; see :mod:`ctrd.cli.stdio`) and removes when
done. Detached (``-d``, no ``-t``): ``stdout=stderr=file://<log>`` so the shim itself
appends the output to the log file ``$CTRCTL_LOG_DIR/<namespace>/<id>.log`` (default log
dir ``/var/log/ctrctl``): a client-side path, because ctrctl talks to ctrd and containerd
alike and neither tells a client its state dir. The path is kept in the container's label
``ctrctl/log-path``; ``logs`` reads it, ``rm`` deletes it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

import click

from ctrd import errdefs

DEFAULT_RUNTIME = "io.containerd.runc.v2"
DEFAULT_SNAPSHOTTER = "overlayfs"
DEFAULT_LOG_DIR = "/var/log/ctrctl"
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"
LOG_LABEL = "ctrctl/log-path"
SNAPSHOTTER_NS_LABEL = "containerd.io/defaults/snapshotter"
RUNTIME_NS_LABEL = "containerd.io/defaults/runtime"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RUNC_OPTIONS = "containerd.runc.v1.Options"
# signals ctr forwards to the task (all but SIGCHLD, SIGPIPE, SIGURG and those that stop us)
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")
OUTPUT_DRAIN = 5.0  # seconds to wait for a process's output to reach EOF after it exited


def _pb() -> Any:
    """The generated modules, imported on first use (ctrctl's start-up stays cheap)."""
    from types import SimpleNamespace

    from ctrd.api.containerd.services.containers.v1 import containers_pb2
    from ctrd.api.containerd.services.images.v1 import images_pb2
    from ctrd.api.containerd.services.leases.v1 import leases_pb2
    from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2
    from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2
    from ctrd.api.containerd.services.tasks.v1 import tasks_pb2
    from ctrd.api.containerd.types.task import task_pb2

    return SimpleNamespace(containers=containers_pb2, images=images_pb2, leases=leases_pb2,
                           namespaces=namespace_pb2, snapshots=snapshots_pb2,
                           tasks=tasks_pb2, task=task_pb2)


def _fail(message: str) -> click.ClickException:
    from ctrd.cli.ctrctl import CommandError

    return CommandError(message)


# -- helpers ----------------------------------------------------------------------------------

def parse_signal(text: str) -> int:
    """A signal by number (``9``) or name (``SIGKILL``, ``KILL``, ``kill``)."""
    t = text.strip().upper()
    if t.isdigit():
        n = int(t)
        if 0 < n < signal.NSIG:
            return n
    else:
        name = t if t.startswith("SIG") else "SIG" + t
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
    raise errdefs.InvalidArgument(f"unknown signal {text!r}")


def log_dir() -> str:
    return os.environ.get("CTRCTL_LOG_DIR") or DEFAULT_LOG_DIR


def log_path(namespace: str, container_id: str) -> str:
    return os.path.join(os.path.abspath(log_dir()), namespace, f"{container_id}.log")


def fifo_root(option: str | None) -> str:
    from ctrd.cli.stdio import DEFAULT_FIFO_ROOT

    return option or os.environ.get("CTRCTL_FIFO_DIR") or DEFAULT_FIFO_ROOT


def _status_name(status: int) -> str:
    from ctrd.api.containerd.types.task import task_pb2

    return task_pb2.Status.Name(status)


def _spec_of(container: Any) -> dict[str, Any]:
    try:
        return json.loads(container.spec.value) if container.spec.value else {}
    except ValueError:
        return {}


def _mounts_to_local(mounts: Sequence[Any], readonly: bool = True) -> list[Any]:
    """Snapshot mounts as ctrd Mount records, made read-only as containerd's
    tryReadonlyMounts does (and for binds too: we only read)."""
    from ctrd.snapshots.snapshotter import Mount

    out = [Mount(m.type, m.source, list(m.options)) for m in mounts]
    if readonly:
        for m in out:
            if m.type in ("overlay", "bind") and "ro" not in m.options:
                m.options.append("ro")
    return out


def _with_rootfs(mounts: Sequence[Any], fn: Callable[[str], Any]) -> Any:
    """``fn(root)`` with the snapshot ``mounts`` mounted read-only at a temp dir."""
    from ctrd.snapshots.mount import mounted

    with mounted(_mounts_to_local(mounts), prefix="ctrctl-rootfs-") as root:
        return fn(root)


def _task(c: Any, container_id: str) -> Any | None:
    """The task's Process record, or None if the container has no task."""
    pb = _pb()
    try:
        return c.tasks.Get(pb.tasks.GetRequest(container_id=container_id)).process
    except errdefs.NotFound:
        return None


class ImageInfo:
    """An image resolved for the host platform: its config and top chain ID."""

    def __init__(self, name: str, config: Any, chain_id: str, config_digest: str) -> None:
        self.name, self.config, self.chain_id = name, config, chain_id
        self.config_digest = config_digest


def resolve_image(c: Any, ref: str) -> ImageInfo:
    """Images/Get ``ref``, then its host-platform manifest and config from content."""
    from ctrd.images import manifest as m
    from ctrd.images.push import read_all
    from ctrd.oci.spec import ImageConfig

    pb = _pb()
    img = c.images.Get(pb.images.GetImageRequest(name=ref)).image
    read = lambda digest: c.read_content(digest)  # noqa: E731
    desc = m.Descriptor(img.target.media_type, img.target.digest, img.target.size)
    for _ in range(8):  # nested indexes, bounded
        if desc.media_type not in m.INDEXES:
            break
        desc = m.select(m.parse_index(read_all(read, desc), desc.media_type),
                        m.host_platform())
    if desc.media_type not in m.MANIFESTS:
        raise errdefs.InvalidArgument(f"image {ref!r}: unsupported media type "
                                      f"{desc.media_type!r}")
    man = m.parse_manifest(read_all(read, desc), desc.media_type)
    data = read_all(read, man.config, m.MAX_CONFIG)
    ids = m.diff_ids(data)
    if not ids:
        raise errdefs.InvalidArgument(f"image {ref!r} has no layers")
    return ImageInfo(img.name, ImageConfig.parse(data), m.chain_ids(ids)[-1], man.config.digest)


def _namespace_labels(c: Any) -> dict[str, str]:
    pb = _pb()
    try:
        return dict(c.namespaces.Get(pb.namespaces.GetNamespaceRequest(name=c.namespace))
                    .namespace.labels)
    except errdefs.NotFound:
        return {}


# -- running a process ------------------------------------------------------------------------

class ProcessIO:
    """How one process's stdio is wired: FIFOs + copier, a log file, or nothing."""

    def __init__(self, stdin: str = "", stdout: str = "", stderr: str = "",
                 fifos: Any = None, attach: Any = None) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.fifos, self.attach = fifos, attach

    @classmethod
    def fifo(cls, root: str, name: str, *, stdin: bool, tty: bool,
             on_stdin_eof: Callable[[], None]) -> ProcessIO:
        from ctrd.cli.stdio import Attach, FifoSet

        fifos = FifoSet.create(root, name, stdin=stdin, stdout=True, stderr=not tty)
        attach = Attach(fifos, stdin_fd=0 if stdin else None, on_stdin_eof=on_stdin_eof)
        return cls(fifos.stdin, fifos.stdout, fifos.stderr, fifos, attach)

    @classmethod
    def log_file(cls, path: str) -> ProcessIO:
        uri = "file://" + path
        return cls("", uri, uri)

    def start(self) -> None:
        if self.attach is not None:
            self.attach.start()

    def drain(self, timeout: float) -> None:
        if self.attach is not None:
            self.attach.wait_output(timeout)

    def close(self) -> None:
        if self.attach is not None:
            self.attach.close()
        if self.fifos is not None:
            self.fifos.remove()


class Foreground:
    """Wait for a started process while forwarding signals (or terminal resizes).

    Tasks/Wait runs in a thread from before Start (containerd accepts Wait on a CREATED
    task); signal handlers only queue the signal, a forwarder thread sends Tasks/Kill.
    """

    def __init__(self, c: Any, container_id: str, exec_id: str = "", tty: bool = False) -> None:
        self.c, self.cid, self.eid, self.tty = c, container_id, exec_id, tty
        self.result: queue.SimpleQueue = queue.SimpleQueue()
        self.signals: queue.SimpleQueue = queue.SimpleQueue()
        self._old: dict[int, Any] = {}
        threading.Thread(target=self._wait, daemon=True, name="wait").start()

    def _wait(self) -> None:
        pb = _pb()
        try:
            r = self.c.tasks.Wait(pb.tasks.WaitRequest(container_id=self.cid,
                                                      exec_id=self.eid), timeout=None)
            self.result.put(r.exit_status)
        except BaseException as e:  # handed to the main thread
            self.result.put(e)

    def install(self) -> None:
        """Forward signals (and SIGWINCH with -t) from now on; also sends the first resize."""
        names = list(FORWARDED) + (["SIGWINCH"] if self.tty else [])
        for name in names:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._old[sig] = signal.signal(sig, lambda s, _f: self.signals.put(s))
        threading.Thread(target=self._forward, daemon=True, name="signals").start()

    def resize(self) -> None:
        """Tasks/ResizePty to the local terminal's size now (errors ignored): called before
        Start, so the process never sees the console's initial 0x0, and again after."""
        if self.tty:
            self._send(signal.SIGWINCH)

    def _forward(self) -> None:
        while True:
            sig = self.signals.get()
            if sig is None:
                return
            self._send(sig)

    def _send(self, sig: int) -> None:
        from ctrd.cli.stdio import terminal_size

        pb = _pb()
        try:
            if sig == signal.SIGWINCH:
                size = terminal_size()
                if size is not None:
                    self.c.tasks.ResizePty(pb.tasks.ResizePtyRequest(
                        container_id=self.cid, exec_id=self.eid, width=size[0],
                        height=size[1]))
            else:
                self.c.tasks.Kill(pb.tasks.KillRequest(container_id=self.cid,
                                                       exec_id=self.eid, signal=int(sig)))
        except errdefs.CtrdError:
            pass  # the process is gone or not started yet: nothing to forward to

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        self.signals.put(None)

    def wait(self) -> int:
        """The exit status (blocks; the main thread wakes for signal handlers)."""
        while True:
            try:
                got = self.result.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(got, BaseException):
                raise got
            return int(got)


class StdinCloser:
    """Tasks/CloseIO(stdin) once the local input reached EOF *and* the process exists.

    The input is copied as soon as the shim opens the FIFO, which is during Tasks/Create or
    Tasks/Exec: short input can reach EOF before the daemon knows the process, and a CloseIO
    sent then would be refused and lost (the process would wait for input for ever). So
    whichever of :meth:`eof` and :meth:`created` comes second sends it.
    """

    def __init__(self, c: Any, container_id: str, exec_id: str = "") -> None:
        self.c, self.cid, self.eid = c, container_id, exec_id
        self._lock = threading.Lock()
        self._eof = self._created = self._sent = False

    def eof(self) -> None:
        with self._lock:
            self._eof = True
        self._maybe_send()

    def created(self) -> None:
        with self._lock:
            self._created = True
        self._maybe_send()

    def _maybe_send(self) -> None:
        with self._lock:
            if not (self._eof and self._created) or self._sent:
                return
            self._sent = True
        pb = _pb()
        try:
            self.c.tasks.CloseIO(pb.tasks.CloseIORequest(container_id=self.cid,
                                                         exec_id=self.eid, stdin=True))
        except errdefs.CtrdError:
            pass  # the process is gone: nobody to tell


def _run_foreground(c: Any, container_id: str, exec_id: str, pio: ProcessIO, tty: bool,
                    interactive: bool, start: Callable[[], None]) -> int:
    """Start (with ``start``) and wait for a process whose stdio is ``pio``; returns its
    exit status. The caller deletes it."""
    from ctrd.cli.stdio import RawTerminal

    fg = Foreground(c, container_id, exec_id, tty)
    raw = RawTerminal(0) if tty and interactive else None
    try:
        if raw is not None:
            raw.__enter__()
        fg.install()
        fg.resize()
        start()
        fg.resize()
        status = fg.wait()
        pio.drain(OUTPUT_DRAIN)
        return status
    finally:
        fg.uninstall()
        if raw is not None:
            raw.restore()


# -- run --------------------------------------------------------------------------------------

def _env_option(f: Any) -> Any:
    return click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE",
                        help="set an environment variable (a bare KEY unsets it)")(f)


def _create_container(c: Any, ref: str, cid: str, *, snapshotter: str, runtime: str,
                      opts: Any, labels: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """Snapshot, spec and container record, as ctr's NewContainer; returns the container's
    rootfs mounts and spec. On failure nothing is left behind."""
    from ctrd.cli.client import GC_EXPIRE_LABEL
    from ctrd.oci.spec import generate
    from ctrd.typeurl import OCI_SPEC

    pb = _pb()
    info = resolve_image(c, ref)
    try:
        c.snapshots.Stat(pb.snapshots.StatSnapshotRequest(snapshotter=snapshotter,
                                                          key=info.chain_id))
    except errdefs.NotFound:
        raise errdefs.FailedPrecondition(
            f"image {ref!r} is not unpacked for snapshotter {snapshotter!r} (pull it with "
            "ctrctl pull, or ctr images pull, which unpack)") from None
    lease_id = f"ctrctl-run-{os.urandom(6).hex()}"
    expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 24 * 3600))
    c.leases.Create(pb.leases.CreateRequest(id=lease_id, labels={GC_EXPIRE_LABEL: expire}))
    leased = c.with_namespace(c.namespace, lease=lease_id)
    prepared = False
    try:
        mounts = leased.snapshots.Prepare(pb.snapshots.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=cid, parent=info.chain_id)).mounts
        prepared = True
        spec = _with_rootfs(mounts, lambda root: generate(c.namespace, cid, info.config,
                                                          root, opts))
        all_labels = {**info.config.labels,
                      STOP_SIGNAL_LABEL: info.config.stop_signal or "SIGTERM", **labels}
        runtime_pb = pb.containers.Container.Runtime(name=runtime)
        if runtime == DEFAULT_RUNTIME:  # as ctr: empty runc options, bare type URL
            runtime_pb.options.type_url = RUNC_OPTIONS
        container = pb.containers.Container(
            id=cid, image=info.name, labels=all_labels, runtime=runtime_pb,
            snapshotter=snapshotter, snapshot_key=cid)
        container.spec.type_url = OCI_SPEC
        container.spec.value = json.dumps(spec).encode()
        leased.containers.Create(pb.containers.CreateContainerRequest(container=container))
    except BaseException:
        if prepared:
            try:
                c.snapshots.Remove(pb.snapshots.RemoveSnapshotRequest(snapshotter=snapshotter,
                                                                      key=cid))
            except errdefs.CtrdError:
                pass
        raise
    finally:
        try:
            c.leases.Delete(pb.leases.DeleteRequest(id=lease_id))
        except errdefs.CtrdError:
            pass
    return mounts, spec


def _delete_task(c: Any, container_id: str) -> Any | None:
    pb = _pb()
    try:
        return c.tasks.Delete(pb.tasks.DeleteTaskRequest(container_id=container_id))
    except errdefs.NotFound:
        return None


def _remove_container(c: Any, container: Any) -> None:
    """Snapshots/Remove, Containers/Delete, and the log file ctrctl made for it."""
    pb = _pb()
    if container.snapshotter and container.snapshot_key:
        try:
            c.snapshots.Remove(pb.snapshots.RemoveSnapshotRequest(
                snapshotter=container.snapshotter, key=container.snapshot_key))
        except errdefs.NotFound:
            pass
    c.containers.Delete(pb.containers.DeleteContainerRequest(id=container.id))
    _remove_log(c.namespace, container)


def _remove_log(namespace: str, container: Any) -> None:
    """Delete the log file named by the container's label, only if it looks like one ctrctl
    made (``.../<namespace>/<id>.log``, a regular file): a label is not a licence to
    delete any path."""
    import stat as st

    path = container.labels.get(LOG_LABEL, "")
    if not path or os.path.basename(path) != f"{container.id}.log" or \
            os.path.basename(os.path.dirname(path)) != namespace:
        return
    try:
        if st.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _get_container(c: Any, cid: str) -> Any:
    pb = _pb()
    return c.containers.Get(pb.containers.GetContainerRequest(id=cid)).container


def run_cmd(g: Any, image: str, container_id: str, args: tuple[str, ...], detach: bool,
            rm: bool, tty: bool, interactive: bool, env: tuple[str, ...],
            mounts: tuple[str, ...], net_host: bool, runtime: str | None,
            snapshotter: str | None, user: str | None, cwd: str, hostname: str,
            labels: tuple[str, ...], read_only: bool, fifo_dir: str | None,
            oom_score_adj: int | None = None) -> int:
    from ctrd.oci.spec import RunOptions, parse_mount

    if detach and rm:
        raise click.UsageError("--detach and --rm cannot be used together")
    if detach and (tty or interactive):
        raise click.UsageError("--detach cannot be used with -t or -i: a detached container "
                               "writes its output to the log (see `ctrctl logs`)")
    pb = _pb()
    c = g.client()
    ns_labels = None
    if snapshotter is None or runtime is None:
        ns_labels = _namespace_labels(c)
    snapshotter = snapshotter or (ns_labels or {}).get(SNAPSHOTTER_NS_LABEL) or \
        os.environ.get("CONTAINERD_SNAPSHOTTER") or DEFAULT_SNAPSHOTTER
    runtime = runtime or (ns_labels or {}).get(RUNTIME_NS_LABEL) or DEFAULT_RUNTIME
    from ctrd.cli.ctrctl import parse_labels

    extra = parse_labels(labels)
    logfile = log_path(c.namespace, container_id) if detach else ""
    if logfile:
        extra[LOG_LABEL] = logfile
    opts = RunOptions(args=list(args), env=list(env), cwd=cwd, user=user, tty=tty,
                      hostname=hostname, net_host=net_host,
                      mounts=[parse_mount(m) for m in mounts], readonly_rootfs=read_only,
                      oom_score_adj=oom_score_adj)
    rootfs, _spec = _create_container(c, image, container_id, snapshotter=snapshotter,
                                      runtime=runtime, opts=opts, labels=extra)
    pio: ProcessIO | None = None
    closer = StdinCloser(c, container_id)
    task_created = started_detached = False
    try:
        if detach:
            os.makedirs(os.path.dirname(logfile), mode=0o755, exist_ok=True)
            pio = ProcessIO.log_file(logfile)
        else:
            pio = ProcessIO.fifo(fifo_root(fifo_dir), container_id, stdin=interactive, tty=tty,
                                 on_stdin_eof=closer.eof)
        pio.start()
        c.tasks.Create(pb.tasks.CreateTaskRequest(
            container_id=container_id, rootfs=rootfs, stdin=pio.stdin, stdout=pio.stdout,
            stderr=pio.stderr, terminal=tty))
        task_created = True
        closer.created()
        if detach:
            c.tasks.Start(pb.tasks.StartRequest(container_id=container_id))
            started_detached = True
            return 0
        status = _run_foreground(
            c, container_id, "", pio, tty, interactive,
            lambda: c.tasks.Start(pb.tasks.StartRequest(container_id=container_id)))
        _delete_task(c, container_id)
        task_created = False
        return status
    finally:
        if task_created and not started_detached:
            # failed or interrupted in the foreground: don't leave a running task behind
            try:
                c.tasks.Kill(pb.tasks.KillRequest(container_id=container_id,
                                                  signal=signal.SIGKILL, all=True))
                _wait_exit(c, container_id, 10.0)
            except errdefs.CtrdError:
                pass
            try:
                _delete_task(c, container_id)
            except errdefs.CtrdError:
                pass
        if pio is not None and not detach:
            pio.close()
        if rm:
            try:
                _remove_container(c, _get_container(c, container_id))
            except errdefs.NotFound:
                pass


# -- stop / kill / rm -------------------------------------------------------------------------

def _wait_exit(c: Any, container_id: str, timeout: float, exec_id: str = "") -> int | None:
    """The exit status if the process exits within ``timeout`` seconds, else None."""
    pb = _pb()
    try:
        return c.tasks.Wait(pb.tasks.WaitRequest(container_id=container_id, exec_id=exec_id),
                            timeout=timeout).exit_status
    except errdefs.DeadlineExceeded:
        return None
    except errdefs.CtrdError as e:  # grpc's own deadline text
        if "deadline" in str(e).lower():
            return None
        raise


def stop_container(c: Any, cid: str, timeout: float) -> bool:
    """The stop signal (label, default SIGTERM), ``timeout`` seconds, then SIGKILL to every
    process; then the task is deleted. False if there was no running task."""
    pb = _pb()
    container = _get_container(c, cid)
    proc = _task(c, cid)
    if proc is None:
        return False
    if proc.status != pb.task.STOPPED:
        if proc.status == pb.task.PAUSED:  # a paused task cannot act on the signal
            c.tasks.Resume(pb.tasks.ResumeTaskRequest(container_id=cid))
        sig = parse_signal(container.labels.get(STOP_SIGNAL_LABEL) or "SIGTERM")
        c.tasks.Kill(pb.tasks.KillRequest(container_id=cid, signal=sig))
        if _wait_exit(c, cid, timeout) is None:
            c.tasks.Kill(pb.tasks.KillRequest(container_id=cid, signal=signal.SIGKILL,
                                              all=True))
            if _wait_exit(c, cid, 30.0) is None:
                raise errdefs.DeadlineExceeded(f"container {cid!r} did not exit after SIGKILL")
    _delete_task(c, cid)
    return True


# -- registration -----------------------------------------------------------------------------

def register(group: click.Group) -> None:
    """Add the container commands to ``group`` (ctrctl's main group)."""
    from ctrd.cli.ctrctl import Duration, format_option, quiet_option

    pass_obj = click.pass_obj

    @group.command("run", context_settings={"allow_interspersed_args": False})
    @click.option("-d", "--detach", is_flag=True,
                  help="start it and return; output goes to the log (ctrctl logs)")
    @click.option("--rm", is_flag=True, help="delete the container when it exits")
    @click.option("-t", "--tty", is_flag=True, help="allocate a terminal")
    @click.option("-i", "--interactive", is_flag=True, help="copy stdin to the process")
    @_env_option
    @click.option("--mount", "mounts", multiple=True, metavar="SPEC",
                  help="add a mount, as ctr: type=bind,src=/a,dst=/b,options=rbind:ro")
    @click.option("--net-host", is_flag=True, help="use the host's network namespace")
    @click.option("--runtime", default=None,
                  help=f"runtime name (default: the namespace's, else {DEFAULT_RUNTIME})")
    @click.option("--snapshotter", default=None,
                  help=f"snapshotter (default: the namespace's, $CONTAINERD_SNAPSHOTTER, "
                       f"else {DEFAULT_SNAPSHOTTER})")
    @click.option("-u", "--user", default=None, metavar="USER[:GROUP]",
                  help="user to run as (default: the image's)")
    @click.option("--cwd", default="", metavar="DIR", help="working directory")
    @click.option("--hostname", default="", help="the container's hostname")
    @click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
                  help="container label")
    @click.option("--read-only", is_flag=True, help="read-only root file system")
    @click.option("--fifo-dir", default=None, metavar="DIR",
                  help="where the stdio FIFOs go [env CTRCTL_FIFO_DIR; /run/ctrctl/fifo]")
    @click.option("--name", default=None, metavar="ID",
                  help="the container's ID, for docker habits: run --name ID IMAGE [ARGS...]")
    @click.option("--oom-score-adj", type=click.IntRange(-1000, 1000), default=None,
                  help="OOM score adjustment (never below ours without CAP_SYS_RESOURCE)")
    @click.argument("image")
    @click.argument("rest", nargs=-1, type=click.UNPROCESSED, metavar="ID [ARGS...]")
    @pass_obj
    @click.pass_context
    def run(ctx: click.Context, g: Any, image: str, rest: tuple[str, ...], name: str | None,
            **kw: Any) -> None:
        """Create a container ID from IMAGE and run it: ARGS replace the image's Cmd.

        As ctr: `run IMAGE ID [ARGS...]`; with --name ID the ID is not repeated. The exit
        code is the container's. In the foreground, signals are forwarded to it; with -t
        the terminal is raw and resizes are forwarded; with -i stdin is copied until EOF.
        -d starts it and returns (its output: `ctrctl logs ID`).
        """
        if name is None:
            if not rest:
                raise click.UsageError("a container ID is required: run IMAGE ID [ARGS...] "
                                       "(or run --name ID IMAGE [ARGS...])")
            name, rest = rest[0], rest[1:]
        ctx.exit(run_cmd(g, image, name, rest, **kw))

    @group.command("ps")
    @quiet_option("container ids")
    @format_option
    @pass_obj
    def ps(g: Any, quiet: bool, fmt: str) -> None:
        """List containers with their task's status and pid."""
        from ctrd.cli.output import print_json, print_table

        pb = _pb()
        c = g.client()
        found = sorted(c.containers.List(pb.containers.ListContainersRequest()).containers,
                       key=lambda x: x.id)
        if quiet:
            for x in found:
                click.echo(x.id)
            return
        tasks = {t.id: t for t in c.tasks.List(pb.tasks.ListTasksRequest()).tasks}
        records = []
        for x in found:
            t = tasks.get(x.id)
            records.append({"id": x.id, "image": x.image, "runtime": x.runtime.name,
                            "command": _spec_of(x).get("process", {}).get("args", []),
                            "status": _status_name(t.status) if t else "",
                            "pid": t.pid if t else 0})
        if fmt == "json":
            print_json(records)
            return
        print_table(["CONTAINER", "IMAGE", "COMMAND", "STATUS", "PID"],
                    [[r["id"], r["image"] or "-", _shorten(" ".join(r["command"])) or "-",
                      r["status"] or "-", str(r["pid"]) if r["pid"] else "-"]
                     for r in records])

    @group.command("exec", context_settings={"allow_interspersed_args": False})
    @click.option("--exec-id", default="", help="the process's id (default: random)")
    @click.option("-t", "--tty", is_flag=True, help="allocate a terminal")
    @click.option("-i", "--interactive", is_flag=True, help="copy stdin to the process")
    @click.option("-d", "--detach", is_flag=True, help="start it and return (no stdio)")
    @_env_option
    @click.option("--cwd", default="", metavar="DIR", help="working directory")
    @click.option("-u", "--user", default="", metavar="USER[:GROUP]", help="user to run as")
    @click.option("--fifo-dir", default=None, metavar="DIR",
                  help="where the stdio FIFOs go [env CTRCTL_FIFO_DIR; /run/ctrctl/fifo]")
    @click.argument("container_id", metavar="ID")
    @click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED,
                    metavar="CMD [ARGS...]")
    @pass_obj
    @click.pass_context
    def exec_(ctx: click.Context, g: Any, container_id: str, args: tuple[str, ...],
              exec_id: str, tty: bool, interactive: bool, detach: bool,
              env: tuple[str, ...], cwd: str, user: str, fifo_dir: str | None) -> None:
        """Run CMD in the running container ID; the exit code is CMD's."""
        from ctrd.oci.spec import exec_process

        if detach and (tty or interactive):
            raise click.UsageError("--detach cannot be used with -t or -i")
        pb = _pb()
        c = g.client()
        container = _get_container(c, container_id)
        exec_id = exec_id or f"exec-{os.urandom(6).hex()}"
        spec = _spec_of(container)

        def make(root: str | None) -> dict[str, Any]:
            return exec_process(spec, args, tty=tty, cwd=cwd, env=env, user=user, rootfs=root)

        if user and not all(p.isdigit() for p in user.split(":")) and container.snapshot_key:
            mounts = c.snapshots.Mounts(pb.snapshots.MountsRequest(
                snapshotter=container.snapshotter, key=container.snapshot_key)).mounts
            process = _with_rootfs(mounts, make)
        else:
            process = make(None)
        closer = StdinCloser(c, container_id, exec_id)
        pio = ProcessIO() if detach else ProcessIO.fifo(
            fifo_root(fifo_dir), exec_id, stdin=interactive, tty=tty,
            on_stdin_eof=closer.eof)
        req = pb.tasks.ExecProcessRequest(container_id=container_id, exec_id=exec_id,
                                          stdin=pio.stdin, stdout=pio.stdout,
                                          stderr=pio.stderr, terminal=tty)
        req.spec.type_url = PROCESS_TYPE_URL
        req.spec.value = json.dumps(process).encode()
        created = False
        try:
            pio.start()
            c.tasks.Exec(req)
            created = True
            closer.created()
            start = lambda: c.tasks.Start(pb.tasks.StartRequest(  # noqa: E731
                container_id=container_id, exec_id=exec_id))
            if detach:
                start()
                created = False
                click.echo(exec_id)
                return
            status = _run_foreground(c, container_id, exec_id, pio, tty, interactive, start)
        finally:
            if created:
                try:
                    c.tasks.DeleteProcess(pb.tasks.DeleteProcessRequest(
                        container_id=container_id, exec_id=exec_id))
                except errdefs.CtrdError:
                    pass
            pio.close()
        ctx.exit(status)

    @group.command("kill")
    @click.option("-s", "--signal", "sig", default="SIGTERM", show_default=True,
                  help="signal name or number")
    @click.option("-a", "--all", "all_", is_flag=True, help="every process of the task")
    @click.option("--exec-id", default="", help="an exec'd process instead of the task")
    @click.argument("ids", nargs=-1, required=True, metavar="ID...")
    @pass_obj
    def kill(g: Any, sig: str, all_: bool, exec_id: str, ids: tuple[str, ...]) -> None:
        """Send a signal to containers' tasks."""
        pb = _pb()
        signum = parse_signal(sig)
        c = g.client()
        for cid in ids:
            c.tasks.Kill(pb.tasks.KillRequest(container_id=cid, exec_id=exec_id,
                                              signal=signum, all=all_))

    @group.command("stop")
    @click.option("-t", "--timeout", type=Duration(), default="10s", show_default=True,
                  help="how long to wait after the stop signal before SIGKILL")
    @click.argument("ids", nargs=-1, required=True, metavar="ID...")
    @pass_obj
    def stop(g: Any, timeout: float, ids: tuple[str, ...]) -> None:
        """Stop containers: their stop signal (image's, default SIGTERM), then SIGKILL after
        the timeout; the task is deleted (the container and its log stay). Prints each ID."""
        c = g.client()
        for cid in ids:
            stop_container(c, cid, timeout)
            click.echo(cid)

    @group.command("rm")
    @click.option("-f", "--force", is_flag=True, help="kill a running task first (SIGKILL)")
    @click.argument("ids", nargs=-1, required=True, metavar="ID...")
    @pass_obj
    def rm(g: Any, force: bool, ids: tuple[str, ...]) -> None:
        """Delete containers, their snapshots and logs; prints each ID. A container with a
        running task needs -f."""
        pb = _pb()
        c = g.client()
        for cid in ids:
            container = _get_container(c, cid)
            proc = _task(c, cid)
            if proc is not None:
                if proc.status != pb.task.STOPPED:
                    if not force:
                        raise errdefs.FailedPrecondition(
                            f"container {cid!r} has a {_status_name(proc.status).lower()} "
                            "task: stop it first, or use rm -f")
                    if proc.status == pb.task.PAUSED:
                        c.tasks.Resume(pb.tasks.ResumeTaskRequest(container_id=cid))
                    c.tasks.Kill(pb.tasks.KillRequest(container_id=cid,
                                                      signal=signal.SIGKILL, all=True))
                    if _wait_exit(c, cid, 30.0) is None:
                        raise errdefs.DeadlineExceeded(f"{cid}: task did not exit after "
                                                       "SIGKILL")
                _delete_task(c, cid)
            _remove_container(c, container)
            click.echo(cid)

    @group.command("logs")
    @click.option("-f", "--follow", is_flag=True, help="keep printing until the task exits")
    @click.argument("container_id", metavar="ID")
    @pass_obj
    def logs(g: Any, follow: bool, container_id: str) -> None:
        """Print the output of a container run with -d (its log file)."""
        c = g.client()
        container = _get_container(c, container_id)
        path = container.labels.get(LOG_LABEL)
        if not path:
            raise errdefs.NotFound(f"container {container_id!r} has no log (only containers "
                                   "run with -d have one)")
        out = sys.stdout.buffer
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            if not follow:
                return
            f = None
        try:
            while True:
                if f is None:
                    try:
                        f = open(path, "rb")
                    except FileNotFoundError:
                        pass
                while f is not None:
                    chunk = f.read(1 << 16)
                    if not chunk:
                        break
                    out.write(chunk)
                out.flush()
                if not follow:
                    return
                proc = _task(c, container_id)
                if proc is None or proc.status == _pb().task.STOPPED:
                    follow = False  # one last read for what came before the exit
                    continue
                time.sleep(0.2)
        finally:
            if f is not None:
                f.close()

    @group.command("pause")
    @click.argument("ids", nargs=-1, required=True, metavar="ID...")
    @pass_obj
    def pause(g: Any, ids: tuple[str, ...]) -> None:
        """Freeze containers' tasks (cgroup freezer)."""
        pb = _pb()
        c = g.client()
        for cid in ids:
            c.tasks.Pause(pb.tasks.PauseTaskRequest(container_id=cid))

    @group.command("unpause")
    @click.argument("ids", nargs=-1, required=True, metavar="ID...")
    @pass_obj
    def unpause(g: Any, ids: tuple[str, ...]) -> None:
        """Thaw paused tasks."""
        pb = _pb()
        c = g.client()
        for cid in ids:
            c.tasks.Resume(pb.tasks.ResumeTaskRequest(container_id=cid))

    @group.command("top")
    @format_option
    @click.argument("container_id", metavar="ID")
    @pass_obj
    def top(g: Any, fmt: str, container_id: str) -> None:
        """The processes of a container's task (pids on the host, command lines from
        /proc when ctrctl runs on the same host)."""
        from ctrd.cli.output import print_json, print_table

        pb = _pb()
        c = g.client()
        procs = c.tasks.ListPids(pb.tasks.ListPidsRequest(container_id=container_id)).processes
        records = [{"pid": p.pid, "command": _cmdline(p.pid)} for p in procs]
        if fmt == "json":
            print_json(records)
            return
        print_table(["PID", "COMMAND"], [[str(r["pid"]), r["command"] or "-"]
                                         for r in records])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return ""
    return " ".join(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)


def _shorten(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
