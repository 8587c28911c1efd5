"""The blocking registry client: resolve, fetch (streaming, resumable), push.

Lifecycle: a :class:`Registry` holds configuration and auth state (one per daemon or per
pull); :meth:`Registry.resolve` turns a reference into ``(name, Descriptor)``;
:meth:`Registry.repository` gives a :class:`Repository` whose ``fetch`` returns a
:class:`BlobReader` (a file-like stream that checks size, and digest when read from offset 0,
at EOF) and whose ``push_*`` methods upload. Every request tries the host's endpoints
(:func:`ctrd.remotes.hosts.registry_hosts`) in order, retries connection errors and 5xx with
backoff, answers one 401 through the :class:`~ctrd.remotes.auth.Authorizer` and fails on a
second. Redirects are followed (at most :data:`MAX_REDIRECTS`); ``Authorization`` never
crosses to another host or scheme, and an endpoint's TLS settings (CA, client certificate,
skip_verify) never follow a redirect to another host.

Transport: :class:`~ctrd.remotes.transport.Transport` (urllib3): keep-alive connections pooled
per host and shared by every Registry of the process, proxies from ``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``NO_PROXY`` by Go's rules (containerd's), TLS contexts per endpoint.

Progress (``progress_timeout`` T, :mod:`ctrd.remotes.stall`): the response headers must be in
within T; after them, every T seconds spent waiting on the body must bring at least
``max(min_bytes, min_rate * T)`` bytes (a trickle is a stall), and an error body or the drain
of a body must end within T. Retries of a request (connection errors, timeouts, 5xx) stop
2T after its first attempt began, so a registry that never answers fails a request within
2T. A stall raises :class:`~ctrd.errdefs.DeadlineExceeded` naming the URL and "stalled".
"""

from __future__ import annotations

import hashlib
import io
import json
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Mapping

import urllib3

from ctrd.content.store import validate_digest
from ctrd.errdefs import (CtrdError, DeadlineExceeded, FailedPrecondition, InvalidArgument,
                          NotFound, Unavailable)
from ctrd.metadata.images import Descriptor
from ctrd.remotes import auth as _auth
from ctrd.remotes import hosts as _hosts
from ctrd.remotes import transport as _transport
from ctrd.remotes.reference import Reference, parse
from ctrd.remotes.stall import Guard

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX)
ACCEPT = ", ".join(MANIFEST_TYPES + ("*/*;q=0.8",))
MAX_MANIFEST = 4 << 20
MAX_ERROR_BODY = 64 << 10
MAX_REDIRECTS = 5
USER_AGENT = "ctrd/0.1"
MIN_BYTES = 1024   # per progress window: fewer is a stall ...
MIN_RATE = 16      # ... and fewer than this many bytes per second of it (a long window)
MIN_ATTEMPT = 0.5  # seconds: a retry with less time left than this is not started


class _Retryable(Exception):
    """A connection error or 5xx worth another attempt; ``timeout``: the registry did not
    answer in time (the last attempt's failure is then a DeadlineExceeded, as containerd's
    "timeout awaiting response headers" is)."""

    timeout = False


@dataclass
class Response:
    """A response whose body is still on the wire (read it through :meth:`read1` or
    :meth:`read_bounded`, then :meth:`close`: a connection whose body was read, or whose
    small rest can be read within ``drain_budget`` seconds, goes back to the pool).
    ``guard``: the stall rule watching its socket (disarmed at close)."""

    status: int
    headers: urllib3.HTTPHeaderDict
    url: str
    raw: urllib3.BaseHTTPResponse
    drain_budget: float = 0.0
    guard: Guard | None = None

    def header(self, name: str) -> str:
        return self.headers.get(name, "") or ""

    def header_values(self, name: str) -> list[str]:
        """Every value of a header that may come on several lines (``WWW-Authenticate``)."""
        return self.headers.getlist(name)

    def read1(self, n: int, strict: bool = False) -> bytes:
        """What has arrived of the body, up to ``n`` bytes (b"" at its end), under the
        stall rule (``strict``: this read and the ones before it in strict mode must end
        within the progress timeout). Errors: DeadlineExceeded (a stall), Unavailable."""
        g, data = self.guard, b""
        if g is not None:
            g.enter(strict)
        try:
            data = self.raw.read1(n) if n else b""
        except _transport.TimeoutErrors:
            self.abort()
            raise DeadlineExceeded(f"fetch {self.url}: no data for "
                                   f"{_backstop(self.drain_budget):g}s (transfer stalled)"
                                   ) from None
        except _transport.HTTPErrors as e:
            self.abort()
            if g is not None and g.fired:
                raise DeadlineExceeded(f"fetch {self.url}: {g.fired}") from None
            raise Unavailable(f"fetch {self.url}: {e}") from None
        finally:
            if g is not None:
                g.leave(len(data))
        if not data and g is not None and g.fired:
            self.abort()
            raise DeadlineExceeded(f"fetch {self.url}: {g.fired}")
        return data

    def read_bounded(self, limit: int, strict: bool = False) -> bytes:
        """The whole body, refused (FailedPrecondition) past ``limit`` bytes."""
        chunks, size = [], 0
        while chunk := self.read1(min(limit + 1 - size, 1 << 16), strict):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                self.abort()
                raise FailedPrecondition(f"{self.url}: response body larger than {limit} "
                                         "bytes")
        return b"".join(chunks)

    def close(self) -> None:
        g = self.guard
        if g is not None:
            g.enter(strict=True)  # the drain, if any, within the progress timeout
        try:
            _transport.release(self.raw, self.drain_budget)
        finally:
            if g is not None:
                g.leave(0)
                g.disarm()

    def abort(self) -> None:
        """Close after a failure: the connection is dropped unless the body was all read."""
        _transport.release(self.raw)
        if self.guard is not None:
            self.guard.disarm()


def _error_text(resp: Response) -> str:
    """The registry's error message (what of the body arrives within the progress
    timeout: the text only explains a failure already known)."""
    chunks: list[bytes] = []
    try:
        size = 0
        while size < MAX_ERROR_BODY and (chunk := resp.read1(MAX_ERROR_BODY - size, True)):
            chunks.append(chunk)
            size += len(chunk)
    except CtrdError:
        pass
    body = b"".join(chunks)
    resp.close()
    try:
        errs = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errs) or \
            body[:200].decode(errors="replace")
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")


class BlobReader:
    """A fetched manifest or blob, as a binary stream. At EOF the byte count must equal the
    descriptor's size (less ``offset``); read from offset 0 the digest must match too. Any
    mismatch is :class:`FailedPrecondition`; a stall is :class:`DeadlineExceeded`."""

    def __init__(self, resp: Response, desc: Descriptor, offset: int, skip: int = 0) -> None:
        self._resp, self.desc, self.offset = resp, desc, offset
        self._remaining = desc.size - offset if desc.size >= 0 else None
        self._hash = hashlib.new(desc.digest.split(":")[0]) if offset == 0 else None
        self._done = False
        if resp.guard is not None and self._remaining is not None:
            resp.guard.remaining = self._remaining + skip
        while skip:  # the server ignored Range: drop what we already have
            n = len(self._raw_read(min(skip, 1 << 16)))
            if n == 0:
                raise FailedPrecondition(f"{resp.url}: body ended before offset {offset}")
            skip -= n

    def _raw_read(self, n: int) -> bytes:
        # read1: what has arrived (up to n); the guard measures the waits and the bytes.
        return self._resp.read1(n)

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        if n is None or n < 0:
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        if self._remaining is not None:
            n = min(n, self._remaining + 1)  # +1 notices a too-long body
        data = self._raw_read(n) if n else b""
        if self._remaining is not None:
            self._remaining -= len(data)
            if self._remaining < 0:
                self._resp.abort()
                raise FailedPrecondition(f"fetch {self._resp.url}: more than the expected "
                                         f"{self.desc.size} bytes")
        if self._hash is not None:
            self._hash.update(data)
        if not data or self._remaining == 0:
            self._finish()
        return data

    def _finish(self) -> None:
        self._done = True
        if self._remaining is not None and self._remaining > 0:
            self._resp.abort()
            raise FailedPrecondition(f"fetch {self._resp.url}: body ended after "
                                     f"{self.desc.size - self.offset - self._remaining} of "
                                     f"{self.desc.size - self.offset} bytes")
        if self._hash is not None:
            got = f"{self._hash.name}:{self._hash.hexdigest()}"
            if got != self.desc.digest:
                self._resp.abort()
                raise FailedPrecondition(f"fetch {self._resp.url}: digest mismatch: got {got}, "
                                         f"expected {self.desc.digest}")

    def close(self) -> None:
        self._resp.close()

    def __enter__(self) -> "BlobReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Registry:
    """Registry client configuration and auth state; see the module doc.

    ``hosts_dir``: containerd's ``certs.d`` directory. ``plain_http``: default endpoints use
    http. ``credentials``: host -> :class:`~ctrd.remotes.auth.Credentials` (mapping or
    function; None: none). ``headers``: sent on every request (a host's hosts.toml headers
    win). ``retries``: extra attempts per endpoint on connection errors and
    5xx, ``backoff`` seconds doubling.
    ``progress_timeout``/``min_bytes``/``min_rate``: the stall rule (module doc).
    ``transport``: connection pools and proxies (default: the process's).
    """

    def __init__(self, *, hosts_dir: str | None = None, plain_http: bool = False,
                 credentials: _auth.CredentialsFunc | Mapping[str, _auth.Credentials] | None = None,
                 retries: int = 3, backoff: float = 0.2, connect_timeout: float = 30.0,
                 progress_timeout: float = 30.0, min_bytes: int = MIN_BYTES,
                 min_rate: float = MIN_RATE,
                 user_agent: str = USER_AGENT, headers: Mapping[str, str] | None = None,
                 transport: _transport.Transport | None = None) -> None:
        self.hosts_dir, self.plain_http = hosts_dir, plain_http
        if isinstance(credentials, Mapping):
            table = {_auth.normalize_host(k): v for k, v in credentials.items()}
            creds: _auth.CredentialsFunc = lambda h: table.get(_auth.normalize_host(h))  # noqa
        else:
            creds = credentials or (lambda h: None)
        self.authorizer = _auth.Authorizer(creds, self._fetch_token)
        self.retries, self.backoff = retries, backoff
        self.connect_timeout, self.progress_timeout = connect_timeout, progress_timeout
        self.min_bytes, self.min_rate, self.user_agent = min_bytes, min_rate, user_agent
        self.headers = dict(headers or {})
        self.transport = transport or _transport.default_transport()

    # --- transport --------------------------------------------------------------------------

    def endpoints(self, host: str, capability: str) -> list[_hosts.Endpoint]:
        eps = [e for e in _hosts.registry_hosts(host, self.hosts_dir,
                                                default_scheme="http" if self.plain_http else "")
               if e.can(capability)]
        if not eps:
            raise NotFound(f"no endpoint of {host} can {capability}")
        return eps

    def _ssl(self, ep: _hosts.Endpoint | None) -> ssl.SSLContext:
        if ep is None:
            return self.transport.tls_context()
        return self.transport.tls_context(ep.ca, ep.client, ep.skip_verify)

    def _guard(self, url: str, timeout: float) -> Guard:
        return Guard(timeout, max(self.min_bytes, self.min_rate * self.progress_timeout), url)

    def _send(self, method: str, url: str, headers: dict[str, str], body=None,
              ep: _hosts.Endpoint | None = None, timeout: float | None = None) -> Response:
        """One request, following redirects (Authorization dropped across hosts); the
        connect and the headers each within ``timeout`` (default: the progress timeout)."""
        timeout = self.progress_timeout if timeout is None else timeout
        first_host = _auth.host_of(url)
        for _ in range(MAX_REDIRECTS + 1):
            u = urllib.parse.urlsplit(url)
            if u.scheme not in ("http", "https"):
                raise InvalidArgument(f"unsupported URL scheme in {url!r}")
            tls = self._ssl(ep if _auth.host_of(url) == first_host else None) \
                if u.scheme == "https" else None
            guard = self._guard(url, timeout)
            try:
                raw = self.transport.open(method, url, headers, body, tls=tls,
                                          connect_timeout=min(self.connect_timeout, timeout),
                                          read_timeout=_backstop(timeout), guard=guard)
            except _transport.HTTPErrors as e:
                guard.disarm()
                if guard.fired:
                    err = _Retryable(f"{method} {url}: response headers: {guard.fired}")
                    err.timeout = True
                else:
                    err = _Retryable(f"{method} {url}: {_reason(e)}")
                    err.timeout = _transport.is_timeout(e)
                raise err from None
            guard.remaining = raw.length_remaining  # a short body needs no more than itself
            resp = Response(raw.status, raw.headers, url, raw, self.progress_timeout, guard)
            location = raw.headers.get("Location")
            if raw.status in (301, 302, 303, 307, 308) and location:
                new = urllib.parse.urljoin(url, location)
                resp.close()
                if _auth.host_of(new) != _auth.host_of(url) or \
                        urllib.parse.urlsplit(new).scheme != u.scheme:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                if raw.status == 303:
                    method, body = "GET", None
                url = new
                continue
            return resp
        raise Unavailable(f"{method} {url}: more than {MAX_REDIRECTS} redirects")

    def _fetch_token(self, req: _auth.TokenRequest) -> tuple[int, bytes]:
        headers = {"User-Agent": self.user_agent, **req.headers}
        try:
            resp = self._send(req.method, req.url, headers, req.body)
        except _Retryable as e:
            raise Unavailable(f"token request: {e}") from None
        try:
            return resp.status, resp.read_bounded(_auth.MAX_TOKEN_RESPONSE)
        finally:
            resp.close()

    def request(self, ep: _hosts.Endpoint, method: str, path: str, *,
                headers: Mapping[str, str] | None = None, scopes: Iterable[str] = (),
                body: bytes | BinaryIO | None = None, url: str | None = None) -> Response:
        """``method`` ``ep.base_url + path`` (or ``url``) with auth, retries and one answer to
        a 401. Non-2xx answers other than 401/5xx are returned for the caller to judge."""
        url = url or ep.base_url + path
        scopes = tuple(scopes)
        authorized_once = False
        attempt = 0
        # Retries stop 2T after the first attempt: a registry that never answers fails the
        # request within twice the progress timeout, not (retries + 1) times it.
        deadline = time.monotonic() + 2 * self.progress_timeout

        def retry_in(delay: float) -> float | None:
            """The timeout of a retry after ``delay`` seconds (None: no retry)."""
            left = deadline - time.monotonic() - delay
            if attempt >= self.retries or left < min(MIN_ATTEMPT, self.progress_timeout):
                return None
            return min(self.progress_timeout, left)

        timeout = self.progress_timeout
        while True:
            h = {"User-Agent": self.user_agent, **self.headers}
            for k, vs in ep.header:
                h[k] = ", ".join(vs)
            h.update(headers or {})
            a = self.authorizer.authorize(ep.host, scopes)
            if a:
                h["Authorization"] = a
            try:
                resp = self._send(method, url, h, body, ep, timeout)
            except _Retryable as e:
                delay = self.backoff * 2 ** attempt
                nxt = retry_in(delay)
                if nxt is None or (body is not None and not isinstance(body, bytes)):
                    raise (DeadlineExceeded if e.timeout else Unavailable)(str(e)) from None
                attempt += 1
                time.sleep(delay)
                timeout = nxt
                continue
            if resp.status == 401:
                detail = resp.header_values("WWW-Authenticate")
                text = _error_text(resp)
                if authorized_once:
                    raise _auth.Unauthorized(f"{method} {url}: 401 again after authenticating: "
                                             f"{text}")
                self.authorizer.challenged(ep.host, detail)
                authorized_once = True
                continue
            delay = self.backoff * 2 ** attempt
            if resp.status >= 500 and (body is None or isinstance(body, bytes)) and \
                    (nxt := retry_in(delay)) is not None:
                resp.close()
                attempt += 1
                time.sleep(delay)
                timeout = nxt
                continue
            return resp

    def _each(self, host: str, capability: str, fn: Callable[[_hosts.Endpoint], object]):
        """``fn`` on each endpoint until one answers (NotFound or Unavailable: next one)."""
        last: CtrdError | None = None
        for ep in self.endpoints(host, capability):
            try:
                return fn(ep)
            except (NotFound, Unavailable) as e:
                last = e
        assert last is not None
        raise last

    # --- resolve ----------------------------------------------------------------------------

    def resolve(self, ref: str | Reference) -> tuple[str, Descriptor]:
        """The manifest (or index) ``ref`` names: ``(normalized name, Descriptor)``."""
        r = parse(ref) if isinstance(ref, str) else ref
        scope = _auth.repository_scope(r.repository, "pull")
        obj = r.digest or r.tag

        def one(ep: _hosts.Endpoint) -> tuple[str, Descriptor]:
            path = f"/{r.repository}/manifests/{obj}"
            for method in ("HEAD", "GET"):
                resp = self.request(ep, method, path, headers={"Accept": ACCEPT}, scopes=[scope])
                if resp.status == 404:
                    resp.close()
                    raise NotFound(f"{r}: not found at {ep.base_url}")
                if resp.status == 405 and method == "HEAD":
                    resp.close()
                    continue
                if resp.status != 200:
                    raise Unavailable(f"{method} {resp.url}: HTTP {resp.status}: "
                                      f"{_error_text(resp)}")
                mt = resp.header("Content-Type").split(";")[0].strip()
                dgst = resp.header("Docker-Content-Digest")
                length = resp.header("Content-Length")
                if method == "HEAD":
                    resp.close()
                    if not dgst and not r.digest or not length:
                        continue  # the GET below tells us
                    size = int(length)
                else:
                    data = resp.read_bounded(MAX_MANIFEST)
                    resp.close()
                    alg = (r.digest or dgst or "sha256:").split(":")[0]
                    if alg not in ("sha256", "sha512"):
                        raise FailedPrecondition(f"{resp.url}: unsupported digest {dgst!r}")
                    computed = f"{alg}:{hashlib.new(alg, data).hexdigest()}"
                    if dgst and dgst != computed:
                        raise FailedPrecondition(f"{resp.url}: Docker-Content-Digest {dgst} "
                                                 f"does not match the body ({computed})")
                    dgst, size = computed, len(data)
                    if mt in ("", "application/json", "application/octet-stream", "text/plain"):
                        try:
                            mt = json.loads(data).get("mediaType") or ""
                        except (ValueError, AttributeError):
                            mt = ""
                dgst = dgst or r.digest
                validate_digest(dgst)
                if r.digest and dgst != r.digest:
                    raise FailedPrecondition(f"{r}: registry {ep.host} answered with digest "
                                             f"{dgst}")
                if mt not in MANIFEST_TYPES:
                    raise FailedPrecondition(f"{r}: unsupported manifest media type {mt!r} "
                                             f"from {ep.host}")
                return str(r), Descriptor(mt, dgst, size)
            raise FailedPrecondition(f"{r}: {ep.host} gave no digest or size")

        return self._each(r.host, "resolve", one)

    def repository(self, ref: str | Reference) -> "Repository":
        return Repository(self, parse(ref) if isinstance(ref, str) else ref)


class Repository:
    """Fetch from and push to one repository (``ref.host``/``ref.repository``)."""

    def __init__(self, registry: Registry, ref: Reference) -> None:
        self.registry, self.ref = registry, ref
        self._pull = _auth.repository_scope(ref.repository, "pull")
        self._push = _auth.repository_scope(ref.repository, "pull", "push")

    def fetch(self, desc: Descriptor, offset: int = 0) -> BlobReader:
        """Stream ``desc`` (manifest or blob) from byte ``offset`` on."""
        validate_digest(desc.digest)
        if offset < 0 or (desc.size >= 0 and offset > desc.size):
            raise InvalidArgument(f"offset {offset} outside 0..{desc.size}")
        kind = "manifests" if desc.media_type in MANIFEST_TYPES else "blobs"
        reg = self.registry

        def one(ep: _hosts.Endpoint) -> BlobReader:
            headers = {"Accept": ACCEPT if kind == "manifests" else "*/*"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            path = f"/{self.ref.repository}/{kind}/{desc.digest}"
            resp = reg.request(ep, "GET", path, headers=headers, scopes=[self._pull])
            if resp.status == 404:
                resp.close()
                raise NotFound(f"{desc.digest}: not found in {ep.host}/{self.ref.repository}")
            if resp.status == 416 and offset == desc.size:
                resp.close()
                return BlobReader(_EmptyResponse(resp), desc, offset)
            if resp.status not in (200, 206):
                raise Unavailable(f"GET {resp.url}: HTTP {resp.status}: {_error_text(resp)}")
            skip = offset if resp.status == 200 else 0
            return BlobReader(resp, desc, offset, skip)

        return reg._each(self.ref.host, "pull", one)

    def fetch_manifest(self, desc: Descriptor, max_size: int = MAX_MANIFEST) -> bytes:
        """The whole of a small object (manifest, index, config), verified; bounded."""
        if desc.size > max_size:
            raise FailedPrecondition(f"{desc.digest}: size {desc.size} exceeds {max_size}")
        with self.fetch(desc) as r:
            return r.read()

    # --- push -------------------------------------------------------------------------------

    def _push_each(self, fn):
        return self.registry._each(self.ref.host, "push", fn)

    def blob_exists(self, desc: Descriptor) -> bool:
        def one(ep):
            resp = self.registry.request(ep, "HEAD", f"/{self.ref.repository}/blobs/{desc.digest}",
                                         scopes=[self._push])
            resp.close()
            return resp.status == 200
        return self._push_each(one)

    def push_blob(self, desc: Descriptor, data: BinaryIO | bytes, *,
                  mount_from: str | None = None, chunk_size: int = 0) -> bool:
        """Upload a blob (no-op if present). ``mount_from``: a repository on the same registry
        to mount it from. ``chunk_size`` > 0: PATCH chunks, else one PUT. Returns True if
        bytes were sent."""
        validate_digest(desc.digest)
        reg, repo = self.registry, self.ref.repository
        if self.blob_exists(desc):
            return False

        def one(ep):
            scopes = [self._push] + ([_auth.repository_scope(mount_from)] if mount_from else [])
            q = f"?mount={desc.digest}&from={urllib.parse.quote(mount_from)}" if mount_from else ""
            resp = reg.request(ep, "POST", f"/{repo}/blobs/uploads/{q}", scopes=scopes,
                               headers={"Content-Length": "0"}, body=b"")
            if resp.status == 201 and mount_from:
                resp.close()
                return False
            if resp.status != 202:
                raise Unavailable(f"POST {resp.url}: HTTP {resp.status}: {_error_text(resp)}")
            resp.close()
            location = urllib.parse.urljoin(resp.url, resp.header("Location"))
            src = data
            if isinstance(src, bytes):
                src = io.BytesIO(src)
            if chunk_size > 0:
                sent = 0
                while chunk := src.read(chunk_size):
                    resp = reg.request(ep, "PATCH", "", url=location, scopes=scopes, body=chunk,
                                       headers={"Content-Type": "application/octet-stream",
                                                "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
                                                "Content-Length": str(len(chunk))})
                    if resp.status != 202:
                        raise Unavailable(f"PATCH {resp.url}: HTTP {resp.status}: "
                                          f"{_error_text(resp)}")
                    resp.close()
                    sent += len(chunk)
                    location = urllib.parse.urljoin(resp.url, resp.header("Location"))
                put_body, length = b"", 0
            else:
                put_body, length = src, desc.size
            sep = "&" if "?" in location else "?"
            resp = reg.request(ep, "PUT", "", url=f"{location}{sep}digest={desc.digest}",
                               scopes=scopes, body=put_body,
                               headers={"Content-Type": "application/octet-stream",
                                        "Content-Length": str(length)})
            if resp.status != 201:
                raise FailedPrecondition(f"PUT {resp.url}: HTTP {resp.status}: "
                                         f"{_error_text(resp)}")
            resp.close()
            return True

        return self._push_each(one)

    def manifest_exists(self, desc: Descriptor, tag: str = "") -> bool:
        """Whether ``tag`` (or the digest) already names exactly ``desc`` (containerd's
        pusher asks this before a PUT and answers "already exists")."""
        def one(ep):
            resp = self.registry.request(
                ep, "HEAD", f"/{self.ref.repository}/manifests/{tag or desc.digest}",
                scopes=[self._push], headers={"Accept": ACCEPT})
            resp.close()
            return resp.status == 200 and resp.header("Docker-Content-Digest") == desc.digest
        try:
            return self._push_each(one)
        except NotFound:
            return False

    def push_manifest(self, desc: Descriptor, data: bytes, tag: str = "") -> None:
        """PUT a manifest or index by ``tag`` (or by its digest)."""
        validate_digest(desc.digest)
        if len(data) != desc.size or \
                "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest and \
                desc.digest.startswith("sha256:"):
            raise InvalidArgument(f"{desc.digest}: data does not match the descriptor")

        def one(ep):
            resp = self.registry.request(
                ep, "PUT", f"/{self.ref.repository}/manifests/{tag or desc.digest}",
                scopes=[self._push], body=data,
                headers={"Content-Type": desc.media_type, "Content-Length": str(len(data))})
            if resp.status != 201:
                raise FailedPrecondition(f"PUT {resp.url}: HTTP {resp.status}: "
                                         f"{_error_text(resp)}")
            resp.close()
        self._push_each(one)


class _EmptyResponse:
    """A fetch from offset == size: nothing left to read (the 416's connection is
    released at once)."""

    guard = None

    def __init__(self, resp: Response) -> None:
        self.url = resp.url
        resp.close()

    def read1(self, n: int, strict: bool = False) -> bytes:
        return b""

    def close(self) -> None:
        pass

    abort = close


def _backstop(timeout: float) -> float:
    """The socket timeout under a guard of ``timeout``: later than the guard fires (its
    message says more), there for a socket the guard cannot watch."""
    return timeout * 1.25 + 0.5


def _reason(e: BaseException) -> str:
    """The message of a transport error without urllib3's object reprs."""
    r = getattr(e, "reason", None)  # NewConnectionError, ProxyError, ...
    if isinstance(e, urllib3.exceptions.NewConnectionError):
        return str(e).split(": ", 1)[-1]
    if r is not None and r is not e and not isinstance(r, str):
        return _reason(r)
    return str(e)
