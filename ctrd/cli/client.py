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
"""

from __future__ import annotations

import os
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
            mod = importlib.import_module(f"ctrd.api.containerd.services.{module}")
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
