"""The ``OCIRegistry`` transfer object: a reference and how to reach its registry
(containerd 2.3.4's core/transfer/registry/registry.go, daemon side).

``RegistryResolver``: ``host_dir`` (a certs.d-layout hosts directory; empty: the local
transferrer's ``config_path``), ``default_scheme`` (``http`` for ``ctr --plain-http``),
``headers`` (sent on every registry request), ``auth_stream`` (credentials, below);
``http_debug``/``logs_stream`` are accepted and ignored (ctrd has no HTTP dump).

Credentials, as containerd: only when a registry host challenges (a 401), the daemon sends
``AuthRequest{host, reference}`` on the client's named auth stream and reads one
``AuthResponse``: ``CREDENTIALS`` -> username/secret, ``REFRESH`` -> an identity token,
``HEADER`` (a full ``Authorization`` value) and ``NONE`` -> no credentials. One question at a
time, each answered within :data:`AUTH_TIMEOUT` (a client that never answers fails the
transfer with DeadlineExceeded naming the host); the answer is kept for that host for the rest
of the transfer. An answer carries no host: it is bound to the host asked, never another.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from dataclasses import dataclass

from ctrd import errdefs, typeurl
from ctrd.api.containerd.types.transfer import registry_pb2
from ctrd.remotes.auth import Credentials

AUTH_TIMEOUT = 10.0  # seconds the client has to answer an AuthRequest
MAX_HEADERS = 64


class AuthStream:
    """host -> :class:`Credentials` through the client's auth stream (thread-safe, blocking:
    the registry client calls it from worker threads)."""

    def __init__(self, stream, reference: str, loop: asyncio.AbstractEventLoop,
                 timeout: float = AUTH_TIMEOUT) -> None:
        self._stream, self._ref, self._loop, self._timeout = stream, reference, loop, timeout
        self._lock = threading.Lock()
        self._answers: dict[str, Credentials | None] = {}

    async def _ask(self, host: str) -> registry_pb2.AuthResponse:
        await self._stream.send(typeurl.pack(registry_pb2.AuthRequest(host=host,
                                                                      reference=self._ref)))
        msg = await self._stream.recv()
        try:
            return typeurl.unpack(msg, registry_pb2.AuthResponse)
        except errdefs.InvalidArgument as e:
            raise errdefs.InvalidArgument(f"auth stream answered for {host}: {e.detail}") \
                from None

    def __call__(self, host: str) -> Credentials | None:
        with self._lock:
            if host in self._answers:
                return self._answers[host]
            fut = asyncio.run_coroutine_threadsafe(self._ask(host), self._loop)
            try:
                resp = fut.result(self._timeout)
            except (concurrent.futures.TimeoutError, TimeoutError):
                fut.cancel()
                raise errdefs.DeadlineExceeded(
                    f"no credentials for {host} from the client's auth stream within "
                    f"{self._timeout:g}s") from None
            except EOFError:
                raise errdefs.Unavailable(f"credentials for {host}: the client closed its "
                                          "auth stream") from None
            except Exception as e:  # noqa: BLE001 - a protobuf decode error, typically
                if isinstance(e, errdefs.CtrdError):
                    raise
                raise errdefs.InvalidArgument(f"credentials for {host}: bad answer on the "
                                              f"auth stream: {e}") from None
            creds = _credentials(resp)
            self._answers[host] = creds
            return creds


def _credentials(resp: registry_pb2.AuthResponse) -> Credentials | None:
    if resp.authType == registry_pb2.CREDENTIALS:
        return Credentials(resp.username, resp.secret) if resp.username or resp.secret \
            else None
    if resp.authType == registry_pb2.REFRESH:
        return Credentials(identity_token=resp.secret) if resp.secret else None
    return None  # NONE; HEADER is not sent by ctr and ctrd has no raw-header auth


@dataclass
class RegistrySource:
    """A decoded ``OCIRegistry``: the reference and a configured registry client."""

    reference: str
    registry: object  # ctrd.remotes.registry.Registry
    parsed: object    # ctrd.remotes.reference.Reference

    def __str__(self) -> str:  # as containerd's OCIRegistry.String()
        return f"OCI Registry ({self.reference})"


def open_registry(tc, obj: registry_pb2.OCIRegistry) -> RegistrySource:
    """The registry client ``obj`` describes (loop thread: it looks up the auth stream)."""
    from ctrd.remotes.reference import parse
    from ctrd.remotes.registry import Registry

    if not obj.reference:
        raise errdefs.InvalidArgument("OCIRegistry has no reference")
    parsed = parse(obj.reference)
    res = obj.resolver
    if res.default_scheme not in ("", "http", "https"):
        raise errdefs.InvalidArgument(f"default scheme {res.default_scheme!r}: "
                                      "want http or https")
    if len(res.headers) > MAX_HEADERS:
        raise errdefs.InvalidArgument(f"{len(res.headers)} resolver headers, more than "
                                      f"{MAX_HEADERS}")
    for k, v in res.headers.items():
        if not k or any(c in k for c in ":\r\n \t") or any(c in v for c in "\r\n"):
            raise errdefs.InvalidArgument(f"resolver header {k!r} is not a valid HTTP header")
    creds = None
    if res.auth_stream:
        creds = AuthStream(tc.streams.get(tc.ns, res.auth_stream), obj.reference,
                           asyncio.get_running_loop())
    registry = Registry(hosts_dir=res.host_dir or tc.config.config_path or None,
                        plain_http=res.default_scheme == "http", credentials=creds,
                        progress_timeout=tc.config.progress_timeout,
                        headers=dict(res.headers))
    return RegistrySource(obj.reference, registry, parsed)
