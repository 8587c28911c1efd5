"""A small synchronous client for ctrd's (and containerd's) gRPC API, for ctrctl and scripts.

Lifecycle: construct a :class:`Client` (no I/O yet: the channel connects on the first call),
call methods on its service properties (``client.namespaces.List(req)``), then ``close()`` it
or use it as a context manager. Every call carries the client's namespace (and lease, if
set) as containerd's gRPC metadata and a default timeout; errors come back as
:mod:`ctrd.errdefs` errors, never as ``grpc.RpcError``:

    with Client("/run/ctrd/ctrd.sock", namespace="k8s.io") as c:
        resp = c.namespaces.List(namespace_pb2.ListNamespacesRequest())

``grpc`` and the generated stubs are imported on first use, so importing this module (and
starting ctrctl) stays cheap for commands that never reach the daemon.

Beyond the raw stubs, a few helpers drive containerd's multi-message protocols:
:meth:`Client.writer` (a Content.Write session, :class:`WriteSession`),
:meth:`Client.read_content` (a blob as a stream of chunks) and :meth:`Client.collect_garbage`
(a synchronous garbage collection through a throwaway lease).
"""

from __future__ import annotations

import collections
import os
import queue
import random
import time
from typing import TYPE_CHECKING, Any, Iterator

from ctrd import errdefs

if TYPE_CHECKING:  # typed access to the stubs without importing them at start-up
    import grpc

    from ctrd.api.containerd.services.containers.v1.containers_pb2_grpc import ContainersStub
    from ctrd.api.containerd.services.content.v1.content_pb2_grpc import ContentStub
    from ctrd.api.containerd.services.diff.v1.diff_pb2_grpc import DiffStub
    from ctrd.api.containerd.services.events.v1.events_pb2_grpc import EventsStub
    from ctrd.api.containerd.services.images.v1.images_pb2_grpc import ImagesStub
    from ctrd.api.containerd.services.introspection.v1.introspection_pb2_grpc import (
        IntrospectionStub,
    )
    from ctrd.api.containerd.services.leases.v1.leases_pb2_grpc import LeasesStub
    from ctrd.api.containerd.services.namespaces.v1.namespace_pb2_grpc import NamespacesStub
    from ctrd.api.containerd.services.snapshots.v1.snapshots_pb2_grpc import SnapshotsStub
    from ctrd.api.containerd.services.tasks.v1.tasks_pb2_grpc import TasksStub
    from ctrd.api.containerd.services.version.v1.version_pb2_grpc import VersionStub

DEFAULT_ADDRESS = "/run/ctrd/ctrd.sock"
DEFAULT_NAMESPACE = "default"
DEFAULT_TIMEOUT = 30.0  # seconds, for unary calls; streams run until they end
NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
MAX_MESSAGE_SIZE = 16 << 20  # containerd's defaults.DefaultMaxRecvMsgSize / SendMsgSize
WRITE_CHUNK = 1 << 20  # bytes per Content.Write message, as ctr (containerd's copy buffer)
WRITE_WINDOW = 4  # WRITE messages in flight before waiting for their answers (bounds memory)
GC_EXPIRE_LABEL = "containerd.io/gc.expire"

# service property -> (stub module under ctrd.api.containerd.services, stub class)
_SERVICES: dict[str, tuple[str, str]] = {
    "containers": ("containers.v1.containers_pb2_grpc", "ContainersStub"),
    "content": ("content.v1.content_pb2_grpc", "ContentStub"),
    "diff": ("diff.v1.diff_pb2_grpc", "DiffStub"),
    "events": ("events.v1.events_pb2_grpc", "EventsStub"),
    "images": ("images.v1.images_pb2_grpc", "ImagesStub"),
    "introspection": ("introspection.v1.introspection_pb2_grpc", "IntrospectionStub"),
    "leases": ("leases.v1.leases_pb2_grpc", "LeasesStub"),
    "namespaces": ("namespaces.v1.namespace_pb2_grpc", "NamespacesStub"),
    "snapshots": ("snapshots.v1.snapshots_pb2_grpc", "SnapshotsStub"),
    "tasks": ("tasks.v1.tasks_pb2_grpc", "TasksStub"),
    "version": ("version.v1.version_pb2_grpc", "VersionStub"),
    # ctrd's own services (full module paths)
    "transfer": ("ctrd.api.ctrd.v1.images_pb2_grpc", "TransferStub"),
}

_UNSET: Any = object()


class ConnectionFailed(errdefs.Unavailable):
    """The daemon could not be reached at all (no socket, nobody listening, no permission).

    Still an :class:`~ctrd.errdefs.Unavailable`, but its message is written for a person and
    does not end in ``": unavailable"``.
    """

    def __init__(self, address: str, reason: str = "is the daemon running?") -> None:
        super().__init__(f"cannot connect to ctrd at {address}")
        self.address = address
        self.reason = reason
        self.args = (f"cannot connect to ctrd at {address}: {reason}",)


def socket_path(address: str) -> str:
    """The absolute socket path of ``address`` (a path, ``unix:PATH`` or ``unix://PATH``)."""
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            address = address[len(prefix):]
            break
    if not address:
        raise errdefs.InvalidArgument("address must not be empty")
    return os.path.abspath(address)


class Client:
    """A connection to one daemon, with a namespace, an optional lease and a default timeout.

    ``timeout`` is in seconds; ``None`` or ``0`` means unary calls wait as long as it takes.
    :meth:`with_namespace` gives a client for another namespace on the same connection.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, namespace: str = DEFAULT_NAMESPACE,
                 timeout: float | None = DEFAULT_TIMEOUT, lease: str | None = None) -> None:
        self.address = socket_path(address)
        self.namespace = namespace
        self.timeout = timeout or None
        self.lease = lease
        self._channel: grpc.Channel | None = None
        self._stubs: dict[str, _Service] = {}
        self._owner = True

    # -- lifecycle --------------------------------------------------------------------

    @property
    def channel(self) -> grpc.Channel:
        """The underlying gRPC channel (created on first use)."""
        if self._channel is None:
            import grpc

            self._channel = grpc.insecure_channel(f"unix:{self.address}", options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
                ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
                ("grpc.enable_http_proxy", 0),
                ("grpc.default_authority", "localhost"),
            ])
        return self._channel

    def close(self) -> None:
        if self._channel is not None and self._owner:
            self._channel.close()
        self._channel = None
        self._stubs.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def with_namespace(self, namespace: str, lease: str | None = _UNSET) -> Client:
        """A client for ``namespace`` sharing this one's connection (closing it is a no-op)."""
        other = Client.__new__(Client)
        other.address, other.timeout = self.address, self.timeout
        other.namespace = namespace
        other.lease = self.lease if lease is _UNSET else lease
        other._channel, other._stubs, other._owner = self.channel, {}, False
        return other

    # -- services ---------------------------------------------------------------------

    def _service(self, name: str) -> Any:
        svc = self._stubs.get(name)
        if svc is None:
            import importlib

            module, cls = _SERVICES[name]
            mod = importlib.import_module(
                module if module.startswith("ctrd.") else f"ctrd.api.containerd.services.{module}")
            svc = self._stubs[name] = _Service(self, name, getattr(mod, cls)(self.channel))
        return svc

    @property
    def containers(self) -> ContainersStub:
        return self._service("containers")

    @property
    def content(self) -> ContentStub:
        return self._service("content")

    @property
    def diff(self) -> DiffStub:
        return self._service("diff")

    @property
    def events(self) -> EventsStub:
        return self._service("events")

    @property
    def transfer(self) -> Any:
        """ctrd.v1.Transfer (daemon-side pull with progress)."""
        return self._service("transfer")

    @property
    def images(self) -> ImagesStub:
        return self._service("images")

    @property
    def introspection(self) -> IntrospectionStub:
        return self._service("introspection")

    @property
    def leases(self) -> LeasesStub:
        return self._service("leases")

    @property
    def namespaces(self) -> NamespacesStub:
        return self._service("namespaces")

    @property
    def snapshots(self) -> SnapshotsStub:
        return self._service("snapshots")

    @property
    def tasks(self) -> TasksStub:
        return self._service("tasks")

    @property
    def version(self) -> VersionStub:
        return self._service("version")

    # -- protocol helpers ---------------------------------------------------------------

    def writer(self, ref: str, total: int = 0, expected: str = "",
               wait: float | None = _UNSET) -> WriteSession:
        """Open (or resume) the ingest ``ref``: a :class:`WriteSession` whose first STAT is
        done, so ``session.offset`` is what the daemon already holds for ``ref``.

        ``total``/``expected`` announce the size and digest (0/"" if unknown). A ref another
        writer holds (Unavailable, "locked") is retried with backoff for up to ``wait``
        seconds (default: the client's timeout), as containerd's ``content.OpenWriter``.
        Raises :class:`ctrd.errdefs.AlreadyExists` if ``expected`` is already present.
        """
        wait = self.timeout if wait is _UNSET else wait
        deadline = None if wait is None else time.monotonic() + wait
        delay = 0.016
        while True:
            session = WriteSession(self, ref)
            try:
                session.stat(total=total, expected=expected)
                return session
            except errdefs.Unavailable as e:
                session.close()
                if isinstance(e, ConnectionFailed) or (
                        deadline is not None and time.monotonic() + delay > deadline):
                    raise
            except BaseException:
                session.close()
                raise
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)

    def read_content(self, digest: str, offset: int = 0, size: int = 0) -> Iterator[bytes]:
        """The bytes of blob ``digest`` from ``offset`` (``size`` 0: to the end), as the
        daemon's chunks (1 MiB each from ctrd): never the whole blob in memory.

        Raises :class:`ctrd.errdefs.CtrdError` if the daemon skips or repeats bytes.
        """
        from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

        at = offset
        for resp in self.content.Read(pb.ReadContentRequest(digest=digest, offset=offset,
                                                            size=size)):
            if resp.offset != at:
                raise errdefs.CtrdError(f"read of {digest}: got offset {resp.offset}, "
                                       f"expected {at}")
            at += len(resp.data)
            yield resp.data

    def collect_garbage(self, labels: dict[str, str] | None = None) -> tuple[str, float]:
        """Run a garbage collection now and wait for it; returns (lease id, seconds taken).

        containerd has no GC call; deleting a lease with ``sync`` makes the daemon collect
        before it answers. So: create a throwaway lease ``ctrctl-gc-<random>`` (expiring in
        an hour, in case we die before deleting it) and delete it with sync. The lease is
        created in the client's namespace, which, as for any object, creates the namespace
        if it does not exist yet.
        """
        from datetime import datetime, timedelta, timezone

        from ctrd.api.containerd.services.leases.v1 import leases_pb2 as pb

        lease_id = f"ctrctl-gc-{os.urandom(6).hex()}"
        expire = datetime.now(timezone.utc) + timedelta(hours=1)
        lease_labels = {GC_EXPIRE_LABEL: expire.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        **(labels or {})}
        started = time.monotonic()
        self.leases.Create(pb.CreateRequest(id=lease_id, labels=lease_labels))
        self.leases.Delete(pb.DeleteRequest(id=lease_id, sync=True))
        return lease_id, time.monotonic() - started

    # -- calls ------------------------------------------------------------------------

    def metadata(self) -> list[tuple[str, str]]:
        """The gRPC metadata every call carries."""
        md = [(NAMESPACE_HEADER, self.namespace)]
        if self.lease:
            md.append((LEASE_HEADER, self.lease))
        return md

    def error(self, err: grpc.RpcError, method: str = "",
              timeout: float | None = None) -> errdefs.CtrdError:
        """The :mod:`ctrd.errdefs` error for a failed call."""
        import grpc

        code: grpc.StatusCode = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details: str = (err.details() if hasattr(err, "details") else "") or ""
        if code == grpc.StatusCode.UNAVAILABLE and _is_connect_failure(details):
            return ConnectionFailed(self.address, _connect_reason(details))
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
            # grpc's own deadline, not a daemon error: say what timed out
            within = f" within {timeout:g}s" if timeout else ""
            return errdefs.DeadlineExceeded(
                f"no reply from ctrd to {method or 'a call'}{within} (see --timeout)")
        if code == grpc.StatusCode.UNIMPLEMENTED and details == "Method not found!":
            # grpc's own answer for a service that is not registered (e.g. its plugin failed)
            return errdefs.NotImplemented_(
                f"the daemon does not serve {method or 'this call'} (see the plugins' status)")
        return errdefs.from_status(code.value[0], details)


def _is_connect_failure(details: str) -> bool:
    # grpc-core's texts when no connection could be made to the socket at all
    return ("failed to connect to all addresses" in details
            or "Connection refused" in details or "No such file or directory" in details)


def _connect_reason(details: str) -> str:
    if "Permission denied" in details:
        return "permission denied (are you root, or in the socket's group?)"
    if "No such file or directory" in details or "Connection refused" in details:
        return "is the daemon running?"
    # something answered, but not a gRPC server (e.g. the ttrpc socket): show grpc's reason
    return details.partition("last error: ")[2] or details


class WriteSession:
    """One ``Content.Write`` stream: containerd's ingest protocol, from the client's side.

    Each request is answered with the writer's offset. The first message carries the ref;
    :meth:`stat` sends it (:meth:`Client.writer` does this for you). :meth:`write` sends
    WRITE messages at :attr:`offset` without waiting for each answer (up to
    ``WRITE_WINDOW`` in flight, each answer checked); :meth:`commit` waits for them all,
    then commits. Setting :attr:`offset` before the first write chooses where writing
    starts: the daemon's offset continues (resume), 0 starts the ingest over (the daemon
    truncates). Errors are :mod:`ctrd.errdefs` errors; after one the session is dead.

        with client.writer("my-ref", total=n) as w:
            w.offset = 0                    # or keep w.offset to resume
            for chunk in chunks:
                w.write(chunk)
            digest = w.commit(total=n, expected=d)
    """

    def __init__(self, client: Client, ref: str, window: int = WRITE_WINDOW) -> None:
        self.client = client
        self.ref = ref
        self.window = max(1, window)
        self.offset = 0          #: where the next WRITE goes
        self.digest = ""         #: the daemon's digest of what it holds, as last reported
        self.status: Any = None  #: the answer to the first STAT (offset, total, started_at...)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: collections.deque[int] = collections.deque()
        self._responses: Iterator[Any] | None = None
        self._first = True

    def _request_iter(self) -> Iterator[Any]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def _send(self, req: Any) -> None:
        if self._first:
            req.ref = self.ref
            self._first = False
        if self._responses is None:
            self._responses = self.client.content.Write(self._request_iter())
        self._requests.put(req)

    def _recv(self) -> Any:
        assert self._responses is not None
        try:
            resp = next(self._responses)
        except StopIteration:
            raise errdefs.CtrdError(f"write session for {self.ref}: the daemon ended it "
                                  "without an answer") from None
        if resp.digest:
            self.digest = resp.digest
        return resp

    def stat(self, total: int = 0, expected: str = "") -> Any:
        """Ask for the ingest's status (the first call also announces total/expected); sets
        :attr:`offset` to the daemon's offset and returns the response."""
        from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

        self._drain()
        self._send(pb.WriteContentRequest(action=pb.STAT, total=total, expected=expected))
        resp = self._recv()
        self.offset = resp.offset
        if self.status is None:
            self.status = resp
        return resp

    def write(self, data: bytes) -> None:
        """Send ``data`` at :attr:`offset` (at most ``MAX_MESSAGE_SIZE`` minus framing)."""
        from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

        self._send(pb.WriteContentRequest(action=pb.WRITE, offset=self.offset, data=data))
        self.offset += len(data)
        self._pending.append(self.offset)
        while len(self._pending) > self.window:
            self._ack()

    def _ack(self) -> None:
        want = self._pending.popleft()
        got = self._recv().offset
        if got != want:
            raise errdefs.CtrdError(f"write session for {self.ref}: the daemon is at offset "
                                   f"{got}, expected {want} (short write)")

    def _drain(self) -> None:
        while self._pending:
            self._ack()

    def commit(self, total: int = 0, expected: str = "",
               labels: dict[str, str] | None = None) -> str:
        """Wait for outstanding writes, then COMMIT (``total``/``expected`` checked by the
        daemon when non-zero); returns the committed digest. AlreadyExists means the blob
        was there already (:attr:`digest` names it)."""
        from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

        self._drain()
        self._send(pb.WriteContentRequest(action=pb.COMMIT, offset=self.offset, total=total,
                                          expected=expected, labels=labels or {}))
        resp = self._recv()
        if total and resp.offset != total:
            raise errdefs.FailedPrecondition(f"unexpected size: {resp.offset} != {total}")
        if expected and resp.digest != expected:
            raise errdefs.FailedPrecondition(f"unexpected digest: {resp.digest} != "
                                             f"{expected}")
        self.offset = resp.offset
        return resp.digest

    def close(self) -> None:
        """End the stream (an uncommitted ingest stays on the daemon, resumable)."""
        self._requests.put(None)
        responses, self._responses = self._responses, None
        if responses is not None and hasattr(responses, "close"):
            responses.close()  # cancels the call

    def __enter__(self) -> WriteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Service:
    """A stub whose methods add the client's metadata and timeout and raise errdefs errors."""

    def __init__(self, client: Client, name: str, stub: Any) -> None:
        self._client = client
        self._name = name
        self._stub = stub

    def __getattr__(self, method: str) -> _Method:
        mc = getattr(self._stub, method)  # AttributeError for an unknown method
        m = _Method(self._client, mc, f"{self._name}.{method}")
        setattr(self, method, m)
        return m

    def __repr__(self) -> str:
        return f"<{self._name} service of {self._client.address}>"


class _Method:
    def __init__(self, client: Client, multicallable: Any, name: str) -> None:
        import grpc

        self._client = client
        self._mc = multicallable
        self._name = name
        self._streaming_response = isinstance(
            multicallable, (grpc.UnaryStreamMultiCallable, grpc.StreamStreamMultiCallable))

    def __call__(self, request: Any, *, timeout: float | None = _UNSET,
                 metadata: list[tuple[str, str]] | None = None) -> Any:
        """Call the method; ``timeout`` overrides the client's (unary calls only by default)."""
        import grpc

        if timeout is _UNSET:
            timeout = None if self._streaming_response else self._client.timeout
        md = self._client.metadata() + list(metadata or ())
        try:
            result = self._mc(request, timeout=timeout, metadata=md)
        except grpc.RpcError as e:
            raise self._client.error(e, self._name, timeout) from None
        if self._streaming_response:
            return self._iterate(result, timeout)
        return result

    def _iterate(self, stream: Iterator[Any], timeout: float | None) -> Iterator[Any]:
        import grpc

        try:
            yield from stream
        except grpc.RpcError as e:
            raise self._client.error(e, self._name, timeout) from None
        finally:
            if hasattr(stream, "cancel"):
                stream.cancel()  # a consumer that stops early ends the call
