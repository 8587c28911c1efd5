"""The HTTP transport under the registry client: urllib3 connection pools, TLS per endpoint,
proxies from the environment.

Lifecycle: one :class:`Transport` serves many :class:`~ctrd.remotes.registry.Registry`
objects (:func:`default_transport` is the process's; a Registry may be given its own). It
keeps a pool of keep-alive connections per (scheme, host, port, TLS settings) and one per
proxy, so the requests of a pull, and of the pulls after it, to one registry reuse their TCP
(and TLS) connections, as Go's ``http.Transport`` under containerd does. Pools are
thread-safe; at most :data:`POOL_SIZE` idle connections are kept per host (more may be open
at once: the extra ones are closed after use), and at most :data:`MAX_POOLS` pools (least
recently used ones are closed).

:meth:`Transport.open` sends one request and returns the urllib3 response with its body
still on the wire; the caller reads it and calls :func:`release` (a fully read body gives its
connection back to the pool; a partly read one closes it). Nothing here retries, follows
redirects, decodes a ``Content-Encoding`` or adds credentials: the registry client decides.

Proxies (:mod:`ctrd.remotes.proxy`, Go's rules): an https request to a proxied host goes
through an HTTP ``CONNECT`` tunnel, an http request is forwarded in absolute form; a proxy
URL's ``user:password`` is sent as ``Proxy-Authorization: Basic``. ``socks5`` proxies are
refused (:class:`~ctrd.errdefs.InvalidArgument`): urllib3 needs PySocks for them.

TLS: an endpoint's ``ca`` files are trusted on top of the system's, its ``client`` pairs are
presented, ``skip_verify`` turns verification off (no warning is printed for it: the
operator asked). Contexts are cached by those settings and the files' (inode, size, mtime),
so a rewritten certificate takes effect on the next request.
"""

from __future__ import annotations

import base64
import os
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict
from typing import Mapping

import urllib3
import urllib3.connection
from urllib3.exceptions import InsecureRequestWarning

from ctrd.errdefs import InvalidArgument
from ctrd.remotes.proxy import ProxyConfig
from ctrd.remotes.stall import Guard

POOL_SIZE = 10      # idle connections kept per host (Go's MaxIdleConns is 10)
MAX_POOLS = 32
MAX_TLS_CONTEXTS = 32
DRAIN_LIMIT = 64 << 10  # a body this small left unread is read to keep its connection

# skip_verify is an explicit choice in hosts.toml; urllib3 would warn on every request.
urllib3.disable_warnings(InsecureRequestWarning)

# Errors of a request or a body read: urllib3's (it wraps socket and http.client errors in
# them) and plain OSError for the rest.
HTTPErrors = (urllib3.exceptions.HTTPError, OSError)
TimeoutErrors = (urllib3.exceptions.TimeoutError, TimeoutError)


def is_timeout(e: BaseException) -> bool:
    """Whether a transport error is a timeout (urllib3's NewConnectionError, a refused or
    unresolvable connection, subclasses its ConnectTimeoutError: it is not one)."""
    return isinstance(e, TimeoutErrors) and \
        not isinstance(e, urllib3.exceptions.NewConnectionError)


_local = threading.local()  # the Guard of the request this thread is sending


class _Guarded:
    """A connection that arms the sending thread's :class:`~ctrd.remotes.stall.Guard` on
    its socket while it waits for the response headers (a trickle of header bytes is a
    stall too: the socket timeout alone restarts on every byte)."""

    def getresponse(self):  # type: ignore[no-untyped-def]
        guard: Guard | None = getattr(_local, "guard", None)
        if guard is None or self.sock is None:
            return super().getresponse()
        guard.attach(self.sock)
        guard.enter(strict=True)
        try:
            return super().getresponse()
        finally:
            guard.leave(0)


class _HTTPConnection(_Guarded, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Guarded, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


def _stat_key(path: str) -> tuple:
    try:
        st = os.stat(path)
        return path, st.st_ino, st.st_size, st.st_mtime_ns
    except OSError:
        return path, None  # load_verify_locations reports the error


def _proxy_headers(proxy: str) -> dict[str, str]:
    u = urllib.parse.urlsplit(proxy)
    if u.username is None:
        return {}
    raw = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


class Transport:
    """Connection pools, TLS contexts and proxy choice; see the module doc.

    ``environ``: where proxy settings are read (default: ``os.environ`` at construction,
    as Go reads them once per process)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.proxies = ProxyConfig.from_environ(os.environ if environ is None else environ)
        self._direct = urllib3.PoolManager(num_pools=MAX_POOLS, maxsize=POOL_SIZE, block=False)
        self._direct.pool_classes_by_scheme = _POOL_CLASSES
        self._via: dict[str, urllib3.ProxyManager] = {}
        self._contexts: OrderedDict[tuple, ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()

    def tls_context(self, ca: tuple[str, ...] = (), client: tuple[tuple[str, str], ...] = (),
                    skip_verify: bool = False) -> ssl.SSLContext:
        """The (cached) context for these settings; see the module doc."""
        key = (tuple(_stat_key(p) for p in ca),
               tuple((_stat_key(c), _stat_key(k) if k else None) for c, k in client),
               skip_verify)
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is not None:
                self._contexts.move_to_end(key)
                return ctx
        ctx = ssl.create_default_context()
        for path in ca:
            ctx.load_verify_locations(cafile=path)
        for cert, keyfile in client:
            ctx.load_cert_chain(cert, keyfile or None)
        if skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        with self._lock:
            self._contexts[key] = ctx
            while len(self._contexts) > MAX_TLS_CONTEXTS:
                self._contexts.popitem(last=False)
        return ctx

    def _manager(self, url: str) -> tuple[urllib3.PoolManager, bool]:
        """(pool manager for ``url``, whether the request goes out in absolute form)."""
        proxy = self.proxies.proxy_for(url)
        if proxy is None:
            return self._direct, False
        if not proxy.startswith(("http://", "https://")):
            raise InvalidArgument(f"proxy {proxy!r} for {url}: only http and https proxies "
                                  "are supported")
        with self._lock:
            m = self._via.get(proxy)
            if m is None:
                m = urllib3.ProxyManager(proxy, num_pools=MAX_POOLS, maxsize=POOL_SIZE,
                                         block=False, proxy_headers=_proxy_headers(proxy))
                m.pool_classes_by_scheme = _POOL_CLASSES
                self._via[proxy] = m
        return m, urllib.parse.urlsplit(url).scheme == "http"

    def open(self, method: str, url: str, headers: Mapping[str, str], body=None, *,
             tls: ssl.SSLContext | None = None, connect_timeout: float = 30.0,
             read_timeout: float = 30.0, guard: Guard | None = None
             ) -> urllib3.BaseHTTPResponse:
        """Send ``method url`` and return once the response headers are in.

        ``read_timeout`` bounds every socket read, of the headers and later of the body;
        ``connect_timeout`` the TCP connect and TLS handshake. ``guard``: armed on the
        connection's socket for the headers (and the body: the caller disarms it when done),
        so a trickle fails too. Raises urllib3's errors (:data:`HTTPErrors`;
        :data:`TimeoutErrors` for a timeout; a fired guard shows as a connection error: look
        at ``guard.fired``)."""
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise InvalidArgument(f"unsupported URL {url!r}")
        manager, absolute = self._manager(url)
        kw = {"ssl_context": tls or self.tls_context()} if u.scheme == "https" else None
        pool = manager.connection_from_url(url, pool_kwargs=kw)
        target = url if absolute else (u.path or "/") + (f"?{u.query}" if u.query else "")
        _local.guard = guard
        try:
            return pool.urlopen(method, target, body=body, headers=dict(headers),
                                retries=False, redirect=False, assert_same_host=False,
                                preload_content=False, decode_content=False,
                                release_conn=False,
                                timeout=urllib3.Timeout(connect=connect_timeout,
                                                        read=read_timeout))
        finally:
            _local.guard = None

    def clear(self) -> None:
        """Close every pooled connection (in-flight responses keep theirs)."""
        self._direct.clear()
        with self._lock:
            for m in self._via.values():
                m.clear()


def release(resp: urllib3.BaseHTTPResponse, budget: float = 0.0) -> None:
    """Done with ``resp``: its connection goes back to the pool when the body was read to
    the end, or when a small rest of it (:data:`DRAIN_LIMIT`) is read now, for at most
    ``budget`` seconds (plus one socket wait); else the connection is closed."""
    if not resp.closed and budget > 0 and resp.length_remaining is not None and \
            resp.length_remaining <= DRAIN_LIMIT:
        deadline = time.monotonic() + budget
        try:
            while resp.read1(DRAIN_LIMIT) and time.monotonic() < deadline:
                pass
        except HTTPErrors:
            pass
    if not resp.closed:
        resp.close()  # closes the connection too: it cannot carry another request
    resp.release_conn()


_default: Transport | None = None
_default_lock = threading.Lock()


def default_transport() -> Transport:
    """The process's transport (created at first use, proxies read from the environment
    then)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Transport()
        return _default
